"""A graph with thousands of nodes (BERT-export size) opens in seconds and redraws quickly."""

import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from studio.core.graph import Graph, Node
from studio.qt.layout import LARGE, layout


def big_onnx(path, blocks=1000, width=16):
    """blocks x (MatMul, Add, Relu) with a skip connection every 4 blocks: 3000+ nodes."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    prev, skip = "x", "x"
    for i in range(blocks):
        w = numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32) * 0.1, f"w{i}")
        inits.append(w)
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"], name=f"block{i}/MatMul"))
        other = skip if i % 4 == 3 else f"m{i}"
        nodes.append(helper.make_node("Add", [f"m{i}", other], [f"a{i}"], name=f"block{i}/Add"))
        nodes.append(helper.make_node("Relu", [f"a{i}"], [f"r{i}"], name=f"block{i}/Relu"))
        prev = f"r{i}"
        if i % 4 == 3:
            skip = prev
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))


def test_depth_layout_is_layered_and_fast():
    nodes = [Node("n0", "Input")] + [Node(f"n{i}", "Add", [f"n{i - 1}"] + ([f"n{i - 3}"] if i > 3 else []))
                                    for i in range(1, 5000)]
    t = time.perf_counter()
    pos = layout(Graph(nodes))
    assert time.perf_counter() - t < 2.0
    assert len(pos) == 5000
    # every edge points downwards: a top-to-bottom layered drawing
    assert all(pos[a][1] < pos[b][1] for b_node in nodes for a in b_node.inputs for b in [b_node.name])


def test_small_graph_uses_sugiyama_layers():
    nodes = [Node("a", "In"), Node("b", "Conv", ["a"]), Node("c", "Conv", ["a"]), Node("d", "Add", ["b", "c"])]
    pos = layout(Graph(nodes))
    assert pos["a"][1] < pos["b"][1] == pos["c"][1] < pos["d"][1]
    assert pos["b"][0] != pos["c"][0]


def test_window_opens_a_3000_node_onnx_in_seconds(window, qtbot, tmp_path):
    path = tmp_path / "big.onnx"
    big_onnx(path)
    t = time.perf_counter()
    window.open_path(str(path))
    qtbot.waitUntil(lambda: window.session.model is not None, timeout=60_000)
    opened = time.perf_counter() - t
    view = window.graph_view
    # it opens with its 1000 `blockN` module groups closed: one box per block
    assert len(view.groups) == 1000 and not view.items
    assert opened < 20, f"opening took {opened:.1f} s"
    canvas = view.canvas
    canvas.resize(1200, 800)
    t = time.perf_counter()
    assert not canvas.viewport().grab().isNull()
    assert time.perf_counter() - t < 1.0
    # every group open: 3000+ boxes, laid out on a worker
    view.expand_all()
    qtbot.waitUntil(lambda: len(view.items) >= 3000, timeout=60_000)
    items = view.items
    assert len(items) >= 3000 > LARGE and not view.groups
    # a full redraw of the fitted (zoomed far out) view and of a close-up stay cheap
    for zoom in (None, 1.0):
        if zoom:
            canvas.resetTransform()
            canvas.centerOn(items["block500/Add"])
        t = time.perf_counter()
        image = canvas.viewport().grab()
        assert time.perf_counter() - t < 1.0
        assert not image.isNull()
    # Find opens the closed group of its match
    view.collapse_all()
    qtbot.waitUntil(lambda: len(view.groups) == 1000)
    view.search.setText("block999/relu")
    view.find_next()
    qtbot.waitUntil(lambda: window.session.selected_layers == ["block999/Relu"], timeout=20_000)
    assert "block999/Relu" in view.items and len(view.groups) == 999
