"""ONNX graphs that would hang or exhaust C++ code are refused when loaded, in one line and fast."""

import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from studio.core.io import LoadError, load
from studio.core.io.onnx_io import MAX_NODES

OPSET = [helper.make_opsetid("", 18), helper.make_opsetid("local", 1)]


def vi(name):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 4])


def save(tmp_path, graph, functions=(), name="m.onnx"):
    model = helper.make_model(graph, opset_imports=OPSET, functions=list(functions))
    path = tmp_path / name
    onnx.save(model, path)
    return path


def function_bomb(depth: int):
    """f0 = Relu; f_k calls f_{k-1} twice: 2^depth nodes once inlined."""
    functions = [helper.make_function("local", "f0", ["x"], ["y"], [helper.make_node("Relu", ["x"], ["y"])], OPSET[:1])]
    for k in range(1, depth + 1):
        nodes = [helper.make_node(f"f{k - 1}", ["x"], ["t"], domain="local"),
                 helper.make_node(f"f{k - 1}", ["t"], ["y"], domain="local")]
        functions.append(helper.make_function("local", f"f{k}", ["x"], ["y"], nodes, OPSET))
    graph = helper.make_graph([helper.make_node(f"f{depth}", ["x"], ["y"], domain="local")], "g", [vi("x")], [vi("y")])
    return graph, functions


def test_a_function_bomb_is_refused_before_shape_inference(tmp_path):
    path = save(tmp_path, *function_bomb(40))
    start = time.perf_counter()
    with pytest.raises(LoadError, match=r"over 300,000 nodes once its functions are inlined.*refused"):
        load(path)
    assert time.perf_counter() - start < 5


def test_small_local_functions_still_load_and_run(tmp_path):
    import onnxruntime as ort

    path = save(tmp_path, *function_bomb(3))
    model = load(path)
    sess = ort.InferenceSession(model.obj.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.array([[-1, 2, -3, 4]], np.float32)
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], np.maximum(x, 0))


def test_a_recursive_function_is_refused(tmp_path):
    f = helper.make_function("local", "loop", ["x"], ["y"], [helper.make_node("loop", ["x"], ["y"], domain="local")], OPSET)
    graph = helper.make_graph([helper.make_node("loop", ["x"], ["y"], domain="local")], "g", [vi("x")], [vi("y")])
    with pytest.raises(LoadError, match="'loop' calls itself"):
        load(save(tmp_path, graph, [f]))


def test_a_cycle_is_refused_at_load(tmp_path):
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="first"), helper.make_node("Relu", ["a"], ["b"], name="second")]
    graph = helper.make_graph(nodes, "g", [vi("x")], [vi("b")])
    with pytest.raises(LoadError, match=r"cycle through node '(first|second)'"):
        load(save(tmp_path, graph))


def test_a_node_consuming_its_own_output_is_a_cycle(tmp_path):
    graph = helper.make_graph([helper.make_node("Add", ["x", "y"], ["y"], name="self")], "g", [vi("x")], [vi("y")])
    with pytest.raises(LoadError, match="cycle through node 'self'"):
        load(save(tmp_path, graph))


def test_a_cycle_inside_an_if_branch_is_refused(tmp_path):
    body = helper.make_graph([helper.make_node("Add", ["x", "z"], ["z"], name="inner")], "then", [], [vi("z")])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["w"])], "else", [], [vi("w")])
    cond = helper.make_tensor("c", TensorProto.BOOL, [], [True])
    node = helper.make_node("If", ["c"], ["y"], then_branch=body, else_branch=other)
    graph = helper.make_graph([node], "g", [vi("x")], [vi("y")], initializer=[cond])
    with pytest.raises(LoadError, match="cycle through node 'inner'"):
        load(save(tmp_path, graph))


@pytest.mark.slow
def test_too_many_nodes_are_refused_fast(tmp_path):
    n = MAX_NODES + 1
    nodes = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"]) for i in range(n)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info(f"t{n}", TensorProto.FLOAT, [1])])
    path = save(tmp_path, graph)
    start = time.perf_counter()
    with pytest.raises(LoadError, match="over 300,000 nodes"):
        load(path)
    assert time.perf_counter() - start < 30
