"""The Sensitivity tab, driven on the real window: real core, real workers, the demo CNN."""

import numpy as np
from PySide6.QtCore import QPointF, Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

from studio.core.recipe import Recipe
from studio.core.sensitivity import sensitive_layers
from studio.qt.views.sensitivity import NO_DATA, drop_colour, drop_scale
from tests.qt.test_window import weights_digest


def cell_pos(view, row: int, col: int):
    """Where the centre of a heatmap cell is on the plot's viewport, once the axes are laid out
    for the new tick labels. That layout takes several posted requests, more of them on a busy
    machine (a click at the first answer once missed the row): wait until the answer holds still."""
    def where():
        QApplication.processEvents()
        return view.plot.mapFromScene(view.image.mapToScene(QPointF(col + 0.5, row + 0.5)))

    last, steady = where(), 0
    for _ in range(100):
        QTest.qWait(20)
        now = where()
        steady = steady + 1 if now == last else 0
        if steady >= 3:
            break
        last = now
    return last


def ticks(view, axis: str) -> list[str]:
    return [text for _, text in view.plot.getAxis(axis)._tickLevels[0]]


def test_prune_sensitivity_heatmap_select_colour_exclude(demo, qtbot, tmp_path):
    w = demo
    view = w.sensitivity_view
    w.tabs.setCurrentWidget(view)
    w.recipe_panel.add_pass("prune.magnitude")
    w.recipe_panel.add_pass("quantize.int8_static")  # the selected pass: not the kind measured
    before = weights_digest(w.session.model.obj)

    view.ratios.setText("0.5, 2")
    qtbot.mouseClick(view.run_button, Qt.LeftButton)
    assert "between 0 and 1" in view.error.text() and not w.tasks.running()

    view.ratios.setText("0.5, 0.9")
    qtbot.mouseClick(view.run_button, Qt.LeftButton)
    assert not view.run_button.isEnabled() and not w.recipe_panel.run_button.isEnabled()
    assert view.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: w.session.sensitivity is not None, timeout=60_000)
    qtbot.waitUntil(lambda: not w.tasks.running("run"), timeout=10_000)
    assert view.run_button.isEnabled() and not view.cancel_button.isEnabled() and view.error.text() == ""
    assert "sensitivity of 4 layers done" in w.log_panel.status.text()
    assert weights_digest(w.session.model.obj) == before

    # the heatmap: one row per layer, one column per ratio, colour = drop in points
    r = w.session.sensitivity
    assert r.kind == "prune" and r.layers == ["conv1", "conv2", "fc1", "fc2"] and r.ratios == [0.5, 0.9]
    img = view.image.image
    assert img.shape == (4, 2)
    np.testing.assert_allclose(img, 100 * (r.baseline - r.quality))
    assert img[0, 1] > 5 and img[0, 1] > img[0, 0]  # conv1 at 90 % costs several points
    assert ticks(view, "left") == r.layers and ticks(view, "bottom") == ["50%", "90%"]
    assert view.colour_bar.levels() == (0.0, drop_scale(r))
    assert [t.textItem.toPlainText() for t in view.texts] == [f"{d:+.1f}" for d in img.flatten()]
    assert "4 layers" in view.summary.text() and "baseline accuracy" in view.summary.text()

    # hovering a cell shows its numbers
    vb = view.plot.getPlotItem().getViewBox()
    qtbot.mouseMove(view.plot.viewport(), cell_pos(view, 0, 1))
    qtbot.waitUntil(lambda: "conv1" in vb.toolTip(), timeout=5000)
    assert "pruned 90%" in vb.toolTip() and f"{img[0, 1]:+.2f} points" in vb.toolTip()

    # clicking a row selects that layer everywhere
    qtbot.mouseClick(view.plot.viewport(), Qt.LeftButton, pos=cell_pos(view, 2, 0))
    qtbot.waitUntil(lambda: w.session.selected_layers == ["fc1"], timeout=5000)
    assert w.graph_view.items["fc1"].isSelected()
    assert "fc1" in w.inspector.title.text()
    assert view.chosen.isVisible() and view.chosen.rect().y() == 2

    # the graph coloured by sensitivity: each layer's worst drop, grey without data
    w.tabs.setCurrentWidget(w.graph_view)
    w.graph_view.colour.setCurrentIndex(w.graph_view.colour.findData("sensitivity"))
    top = drop_scale(r)
    for i, name in enumerate(r.layers):
        assert w.graph_view.items[name].fill == drop_colour(img[i].max(), top)
    assert w.graph_view.items["conv1"].fill != w.graph_view.items["fc1"].fill
    others = [it for name, it in w.graph_view.items.items() if name not in r.layers]
    assert others and all(it.fill.name() == NO_DATA for it in others)
    assert "points" in w.graph_view.legend.text()
    assert "sensitivity: worst drop" in w.graph_view.items["conv1"].toolTip()

    # exclude: the layers over the threshold go into the prune pass's ignore list, and the YAML
    w.tabs.setCurrentWidget(view)
    view.max_drop.setValue(1.0)
    view.at_ratio.setCurrentIndex(view.at_ratio.findData(0.9))
    expected = sensitive_layers(r, max_drop=0.01, ratio=0.9)
    assert expected and view.preview.text().endswith(", ".join(expected))
    qtbot.mouseClick(view.exclude_button, Qt.LeftButton)
    prune, quant = w.session.recipe.passes
    assert prune.options["ignore"] == expected
    assert "ignore" not in quant.options
    assert w.recipe_panel.list.currentRow() == 0  # the changed pass, its form showing the list
    assert w.recipe_panel.form.values()["ignore"] == expected
    path = tmp_path / "r.yaml"
    w.save_recipe(str(path))
    assert Recipe.load(path).passes[0].options["ignore"] == expected


def test_quant_sensitivity_colours_torch_layers(demo, qtbot):
    w = demo
    view = w.sensitivity_view
    w.tabs.setCurrentWidget(view)
    view.kind.setCurrentIndex(view.kind.findData("int8"))
    assert not view.ratios.isEnabled()
    view.run_button.click()
    qtbot.waitUntil(lambda: w.session.sensitivity is not None, timeout=60_000)
    qtbot.waitUntil(lambda: not w.tasks.running("run"), timeout=10_000)
    r = w.session.sensitivity
    assert r.kind == "quant" and view.image.image.shape == (4, 1)
    assert ticks(view, "bottom") == ["kept in float"] and not view.at_ratio.isVisible()
    # ONNX node names ("/fc1/Gemm") map to the torch graph's layers
    w.graph_view.colour.setCurrentIndex(w.graph_view.colour.findData("sensitivity"))
    assert all(w.graph_view.items[n].fill.name() != NO_DATA for n in ("conv1", "conv2", "fc1", "fc2"))
    qtbot.mouseClick(view.plot.viewport(), Qt.LeftButton, pos=cell_pos(view, 3, 0))
    qtbot.waitUntil(lambda: w.session.selected_layers == ["fc2"], timeout=5000)
    # no quantize pass in the recipe: excluding adds one that carries the list
    view.max_drop.setValue(-100)  # every layer counts
    view.exclude_button.click()
    (step,) = w.session.recipe.passes
    assert step.id == "quantize.int8_static" and step.options["ignore"] == r.layers


def test_cancel_sensitivity_leaves_model_untouched(demo, qtbot):
    w = demo
    view = w.sensitivity_view
    obj = w.session.model.obj
    before = weights_digest(obj)
    view.ratios.setText(", ".join(f"{x / 100:.2f}" for x in range(2, 99, 2)))  # 49 ratios: long enough
    view.run_button.click()
    qtbot.waitUntil(lambda: " at " in w.log_panel.status.text(), timeout=60_000)
    w.actions_["cancel"].trigger()
    qtbot.waitUntil(lambda: not w.tasks.running("run"), timeout=30_000)
    assert "sensitivity analysis cancelled" in w.log_panel.status.text()
    assert w.session.sensitivity is None and view.image.image is None
    assert not view.exclude_button.isEnabled()
    assert w.session.model.obj is obj and weights_digest(obj) == before
    assert view.run_button.isEnabled() and w.recipe_panel.run_button.isEnabled()
