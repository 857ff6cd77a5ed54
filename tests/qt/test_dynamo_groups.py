"""ONNX from torch's dynamo exporter names its nodes `node_Conv_12`: the module path is in each
node's metadata (`pkg.torch.onnx.name_scopes`, `namespace`). The graph reads it, so a dynamo
export groups into layer1 ▸ 0 ▸ conv1 like the TorchScript export, and Find works on it."""

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from studio.core.graph.from_onnx import SCOPES, graph_from_onnx
from studio.core.graph.groups import Grouping, module_of

from .test_graph_groups import SHAPE, TOP, ResNet18, centred


def _node(op, inputs, output, name, **meta):
    n = helper.make_node(op, inputs, [output], name=name)
    for k, v in meta.items():
        n.metadata_props.add(key=k, value=v)
    return n


def test_module_paths_from_dynamo_metadata_and_hostile_metadata():
    w = helper.make_tensor("layer1.0.conv1.weight", TensorProto.FLOAT, [2, 2, 1, 1], [1.0, 0.0, 0.0, 1.0])
    nodes = [
        # a Conv that swallowed its BatchNorm: the BN's scope, the conv's weight
        _node("Conv", ["x", "layer1.0.conv1.weight"], "a", "node_Conv_3",
              **{SCOPES: "['', 'layer1', 'layer1.0', 'layer1.0.bn1', '_native_batch_norm_legit_no_training']"}),
        _node("Relu", ["a"], "b", "node_relu_1", **{SCOPES: "['', 'layer1', 'layer1.0', 'layer1.0.relu', 'relu_1']"}),
        _node("Add", ["b", "x"], "c", "node_add", **{SCOPES: "['', 'layer1', 'layer1.0', 'add']"}),
        # the older key only
        _node("Relu", ["c"], "d", "node_relu_2",
              namespace=": Net/layer1: torch.nn.modules.container.Sequential/layer1.1: Block/layer1.1.relu: "
                        "torch.nn.modules.activation.ReLU/relu_2: aten.relu.default"),
        # hostile or odd metadata: ignored, never evaluated as code
        _node("Relu", ["d"], "e", "node_relu_3", **{SCOPES: "__import__('os').system('false')"}),
        _node("Relu", ["e"], "f", "node_relu_4", **{SCOPES: "[" * 5000}),
        _node("Relu", ["f"], "y", "node_relu_5", **{SCOPES: "[1, 2, 3]"}),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])
    proto = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w]))
    graph = graph_from_onnx(proto, (1, 2, 4, 4))
    modules = {n.name: n.module for n in graph.nodes}
    assert modules == {"node_Conv_3": "layer1.0.conv1", "node_relu_1": "layer1.0.relu", "node_add": "layer1.0",
                       "node_relu_2": "layer1.1.relu", "node_relu_3": "", "node_relu_4": "", "node_relu_5": ""}
    assert module_of(graph.node("node_Conv_3")) == "layer1.0.conv1"
    g = Grouping.of(graph)
    assert g.path["node_Conv_3"] == g.path["node_add"] == ("layer1", "0")
    assert g.path["node_relu_3"] == ()


@pytest.fixture(scope="module")
def dynamo_onnx(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("dynamo") / "resnet18_dynamo.onnx"
    program = torch.onnx.export(ResNet18().eval(), (torch.randn(*SHAPE),), dynamo=True, verbose=False)
    program.save(str(path), external_data=False)
    return path


@pytest.mark.slow  # the dynamo exporter takes seconds even for a small network
def test_dynamo_export_groups_and_finds_like_the_torchscript_export(window, qtbot, dynamo_onnx):
    proto = onnx.load(str(dynamo_onnx))
    assert all("/" not in n.name for n in proto.graph.node)  # names say nothing of the modules
    w = window
    w.resize(1280, 800)
    view = w.graph_view
    w.open_path(str(dynamo_onnx))
    qtbot.waitUntil(lambda: w.session.model is not None and bool(view.groups) and not w.tasks.running(),
                    timeout=60_000)
    assert set(view.groups) == TOP

    view.fit()
    view.search.setText("layer2.0.conv1")
    view.search.returnPressed.emit()
    qtbot.waitUntil(lambda: bool(w.session.selected_layers))
    conv = w.session.selected_layers[0]
    node = w.session.current.graph.node(conv)
    assert node.op == "Conv" and node.module == "layer2.0.conv1" and "layer2.0.conv1.weight" in node.param_names
    assert ("layer2", "0") in view.expanded and centred(view, conv)
    assert "group:layer3" in view.groups

    view.collapse_all()
    qtbot.waitUntil(lambda: set(view.groups) == TOP)
    view.search.setText("layer2.0.downsample.0.weight")
    view.search.returnPressed.emit()
    qtbot.waitUntil(lambda: w.session.selected_layers != [conv])
    down = w.session.current.graph.node(w.session.selected_layers[0])
    assert down.module == "layer2.0.downsample.0" and centred(view, down.name)
