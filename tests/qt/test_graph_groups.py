"""Real graphs stay readable: a ResNet-18-style network (built here, BasicBlock written out) and
its ONNX export open with their module groups closed; a click opens a group; Find (a layer or a
weight name) opens the group around its match, selects it and centres it; the zoom keys and the
overview map move the view."""

import onnx
import pytest
import torch
from PySide6.QtCore import QPoint, Qt
from torch import nn

from studio.core.graph import build_graph
from studio.core.graph.from_onnx import graph_from_onnx
from studio.core.graph.groups import Grouping, module_of, onnx_path, weight_module
from studio.core.model import Model


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18(nn.Module):
    def __init__(self, width=8, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = width
        for i, c in enumerate((width, 2 * width, 4 * width, 8 * width)):
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, c, 1 if i == 0 else 2), BasicBlock(c, c)))
            cin = c
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


SHAPE = (1, 3, 64, 64)
TOP = {"group:layer1", "group:layer2", "group:layer3", "group:layer4"}


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return ResNet18().eval()


@pytest.fixture(scope="module")
def resnet_onnx(resnet, tmp_path_factory):
    path = tmp_path_factory.mktemp("groups") / "resnet18.onnx"
    with torch.no_grad():  # the TorchScript exporter: scoped names, BatchNorm folded into Conv
        torch.onnx.export(resnet, (torch.randn(*SHAPE),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"])
    return path


# -- the grouping itself (no Qt) ---------------------------------------------------------
def test_module_paths_from_torch_and_onnx_names():
    assert onnx_path("/layer2/layer2.0/downsample/downsample.0/Conv") == ("layer2", "0", "downsample", "0")
    assert onnx_path("/layer1/layer1.0/layer1.0.conv1/Conv") == ("layer1", "0", "conv1")
    assert onnx_path("/fc/Gemm") == ("fc",) and onnx_path("Conv_12") == ()
    assert module_of("/layer1/layer1.0/conv1/Conv") == module_of("layer1.0.conv1") == "layer1.0.conv1"
    assert weight_module("layer2.0.downsample.0.weight") == "layer2.0.downsample.0"
    assert weight_module("layer2.0") is None and weight_module("conv1") is None


def test_groups_of_the_torch_graph_and_its_onnx_export(resnet, resnet_onnx):
    torch_graph = build_graph(Model(resnet, "torch", SHAPE, name="resnet"))
    onnx_graph = graph_from_onnx(onnx.load(str(resnet_onnx)), SHAPE)
    for graph, conv in ((torch_graph, "layer2.0.conv1"), (onnx_graph, "/layer2/layer2.0/conv1/Conv")):
        g = Grouping.of(graph)
        assert len(graph.nodes) > 30
        assert g.default_expanded() == set()
        closed = g.visible_keys(set())
        assert TOP <= set(closed) and len(closed) <= 12  # the stem, four groups, the head
        assert g.path[conv] == ("layer2", "0")
        # opening layer2 shows its two blocks; the edges join the boxes in a chain
        opened = g.visible({("layer2",)})
        keys = [n.name for n in opened.nodes]
        assert {"group:layer2.0", "group:layer2.1"} <= set(keys) and "group:layer2" not in keys
        assert ("group:layer2.0", "group:layer2.1") in opened.edges()
        assert ("group:layer1", "group:layer2.0") in opened.edges()
        box = opened.node("group:layer2.0")
        assert box.parameters == sum(graph.node(m).parameters for m in g.members[("layer2", "0")]) > 0
        assert g.summary(("layer2",)).startswith(("10 layers", "5 layers"))  # 5 convs; torch adds the BatchNorms
    # torch.fx's residual `add` lives in the block its first input comes from
    assert Grouping.of(torch_graph).path["add_2"] == ("layer2", "0")
    assert graph.nodes[0].inputs == [] and all(n.name in graph for n in graph.nodes)  # the graph is untouched


# -- the window --------------------------------------------------------------------------
def open_torch(window, qtbot, module):
    from studio.qt.main_window import prepare_variant

    window.session.set_model(prepare_variant(Model(module, "torch", SHAPE, name="resnet")))
    qtbot.waitUntil(lambda: bool(window.graph_view.groups))


def open_onnx(window, qtbot, path):
    window.open_path(str(path))
    qtbot.waitUntil(lambda: window.session.model is not None and bool(window.graph_view.groups)
                    and not window.tasks.running(), timeout=60_000)


def centred(view, name) -> bool:
    canvas = view.canvas
    seen = canvas.mapToScene(canvas.viewport().rect()).boundingRect()
    pos = view.items[name].scenePos()
    return seen.contains(pos) and abs(pos.x() - seen.center().x()) < 60 and abs(pos.y() - seen.center().y()) < 60


@pytest.mark.parametrize("kind", ["torch", "onnx"])
def test_collapsed_click_to_open_and_find(window, qtbot, resnet, resnet_onnx, kind):
    w = window
    view = w.graph_view
    w.resize(1280, 800)
    if kind == "torch":
        open_torch(w, qtbot, resnet)
        conv, down = "layer2.0.conv1", "layer2.0.downsample.0"
    else:
        open_onnx(w, qtbot, resnet_onnx)
        conv, down = "/layer2/layer2.0/conv1/Conv", "/layer2/layer2.0/downsample/downsample.0/Conv"
    assert set(view.groups) == TOP
    assert not any("layer" in name for name in view.items)  # nothing inside a group is drawn

    # a click on layer2 opens it one level: its two blocks
    item = view.groups["group:layer2"]
    view.canvas.centerOn(item)
    qtbot.mouseClick(view.canvas.viewport(), Qt.LeftButton, pos=view.canvas.mapFromScene(item.scenePos()))
    assert {"group:layer2.0", "group:layer2.1"} <= set(view.groups) and "group:layer2" not in view.groups
    # a double click on a block closes layer2 again
    block = view.groups["group:layer2.0"]
    view.canvas.centerOn(block)
    qtbot.mouseDClick(view.canvas.viewport(), Qt.LeftButton, pos=view.canvas.mapFromScene(block.scenePos()))
    assert set(view.groups) == TOP
    # a real double click starts with a click, which opens a closed block: the double click undoes
    # that and closes layer2 around it
    view.expand(("layer2",))
    block = view.groups["group:layer2.1"]
    view.canvas.centerOn(block)
    at = view.canvas.mapFromScene(block.scenePos())
    qtbot.mouseClick(view.canvas.viewport(), Qt.LeftButton, pos=at)
    assert "group:layer2.1" not in view.groups  # opened
    qtbot.mouseDClick(view.canvas.viewport(), Qt.LeftButton, pos=at)
    assert set(view.groups) == TOP and not view.expanded

    # Find a layer: its group opens, it is selected, zoomed to and centred
    view.fit()
    view.search.setText("layer2.0.conv1")
    view.search.returnPressed.emit()
    qtbot.waitUntil(lambda: w.session.selected_layers == [conv])
    assert ("layer2", "0") in view.expanded and view.items[conv].isSelected()
    assert view.canvas.transform().m11() >= 1.0 and centred(view, conv)
    assert "group:layer3" in view.groups  # only the way to the match was opened

    # Find a weight name (the ONNX export folded and renamed it: found by its module)
    view.collapse_all()
    qtbot.waitUntil(lambda: set(view.groups) == TOP)
    view.search.setText("layer2.0.downsample.0.weight")
    view.search.returnPressed.emit()
    qtbot.waitUntil(lambda: w.session.selected_layers == [down])
    assert view.items[down].isSelected() and centred(view, down)

    # no match: one line, nothing changes
    view.search.setText("no-such-layer")
    view.search.returnPressed.emit()
    assert "no layer or weight matches" in view.info.text() and w.session.selected_layers == [down]


def test_zoom_keys_and_the_overview(window, qtbot, resnet):
    w = window
    w.resize(1280, 800)
    open_torch(w, qtbot, resnet)
    view = w.graph_view
    view.expand_all()
    qtbot.waitUntil(lambda: not view.groups and len(view.items) > 60)
    canvas = view.canvas
    w.tabs.setCurrentWidget(view)
    canvas.setFocus()
    scale = canvas.transform().m11()
    qtbot.keyClick(canvas, Qt.Key_Equal, Qt.ControlModifier)  # Ctrl+=, through the View menu's action
    assert canvas.transform().m11() == pytest.approx(scale * 1.25)
    qtbot.keyClick(canvas, Qt.Key_Minus, Qt.ControlModifier)
    qtbot.keyClick(canvas, Qt.Key_Minus, Qt.ControlModifier)
    assert canvas.transform().m11() == pytest.approx(scale / 1.25)
    for _ in range(4):
        w.actions_["zoom_in"].trigger()
    assert canvas.transform().m11() == pytest.approx(scale * 1.25 ** 3)
    w.actions_["fit"].trigger()
    assert canvas.transform().m11() == pytest.approx(scale)
    assert not canvas.overview.isVisible()  # the whole graph is in sight: no map needed

    # zoomed in, the overview in the corner shows where the view is; a click there moves it
    for _ in range(5):
        w.actions_["zoom_in"].trigger()
    overview = canvas.overview
    qtbot.waitUntil(overview.isVisible)  # drawn once the view settled
    assert not overview.pixmap.isNull()
    assert canvas.viewport().geometry().contains(overview.geometry())
    before = canvas.mapToScene(canvas.viewport().rect().center())
    target = QPoint(overview.width() // 2, overview.height() * 3 // 4)  # the lower part of the graph
    qtbot.mouseClick(overview, Qt.LeftButton, pos=target)
    after = canvas.mapToScene(canvas.viewport().rect().center())
    wanted = overview.scene_point(target)
    assert abs(after.y() - before.y()) > 200
    assert abs(after.y() - wanted.y()) < 50 and abs(after.x() - wanted.x()) < 50
