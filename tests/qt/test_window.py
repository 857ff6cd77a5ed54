"""The real window, driven as a user would: real core, real workers, real files."""

import hashlib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from PySide6.QtCore import Qt

from studio.core.data import digits
from studio.core.recipe import Recipe, RecipeStep


def weights_digest(module) -> str:
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def test_first_start_shows_open_demo(window):
    assert window.stack.currentIndex() == 0  # the welcome page
    assert window.demo_button.isVisible()
    assert "demo" in window.demo_button.text().lower()


def test_demo_select_run_choose_export(demo, qtbot, tmp_path):
    w = demo
    assert w.stack.currentIndex() == 1
    assert set(w.graph_view.items) >= {"conv1", "conv2", "fc1", "fc2"}
    # select a layer in the graph: the inspector shows it
    qtbot.mouseClick(w.graph_view.canvas.viewport(), Qt.LeftButton,
                     pos=w.graph_view.canvas.mapFromScene(w.graph_view.items["fc1"].pos()))
    qtbot.waitUntil(lambda: w.session.selected_layers == ["fc1"], timeout=5000)
    assert "fc1" in w.inspector.title.text() and "(128, 1024)" in w.inspector.title.text()
    qtbot.waitUntil(lambda: w.inspector.image.image is not None, timeout=10_000)
    assert w.inspector.image.image.shape == (128, 1024)

    # two passes from the registry, one option edited in the form, targets from the selection
    w.recipe_panel.add_pass("prune.magnitude")
    w.recipe_panel.form.set_value("sparsity", 0.7)
    w.recipe_panel.add_pass("quantize.int8_static")
    assert [s.id for s in w.session.recipe.passes] == ["prune.magnitude", "quantize.int8_static"]
    assert w.session.recipe.passes[0].options == {"sparsity": 0.7}

    w.actions_["run"].trigger()
    qtbot.waitUntil(lambda: len(w.session.runs) == 1, timeout=90_000)
    run = w.session.runs[0]
    assert len(run.stages) == 3
    # one point per stage, the same numbers as the results table
    assert len(w.chart.scatter.points()) == 3
    assert w.results.model.rowCount() == 3
    q = sorted(float(p.pos().y()) for p in w.chart.scatter.points())
    assert q == sorted(s.measurement.quality for s in run.stages)
    # hover tips name the recipe and the numbers
    p2 = next(p for p in w.chart.scatter.points() if p.data()[1] == 2)
    tip = w.chart._tip(x=p2.pos().x(), y=p2.pos().y(), data=p2.data())
    assert "prune.magnitude(sparsity=0.7) → quantize.int8_static" in tip and "accuracy" in tip
    # another footprint: the x values become the measured batch-1 latencies
    w.chart.axis.setCurrentIndex(w.chart.axis.findData("latency_b1"))
    xs = sorted(p.pos().x() for p in w.chart.scatter.points())
    assert xs == sorted(s.measurement.latency_ms[1] for s in run.stages)
    # the parameter distribution shows one bar per weight tensor
    assert len(w.distribution.param_bars.opts["height"]) == 4
    # the pruned stage really has zeros where the chart says so
    assert run.stages[1].measurement.nonzeros < 0.5 * run.stages[0].measurement.nonzeros

    # click the INT8 point on the chart: graph, inspector and compare show that variant
    point = next(p for p in w.chart.scatter.points() if p.data()[1] == 2)
    w.chart.scatter.sigClicked.emit(w.chart.scatter, [point], None)
    qtbot.waitUntil(lambda: w.session.current.index == 2, timeout=30_000)
    assert w.session.current.model.framework == "onnx"
    assert w.session.selected_layers == ["/fc1/Gemm"]  # the selection followed the layer
    assert "int8" in w.inspector.title.text()
    assert w.compare.table.rowCount() == 4
    assert "int8" in w.compare.table.item(2, 8).text()

    # export it, then read the file back in onnxruntime
    dialog = w.export_selected()
    dialog.format.setCurrentIndex(dialog.format.findData("onnx"))
    target = tmp_path / "chosen.onnx"
    dialog.path.setText(str(target))
    dialog.export_button.click()
    qtbot.waitUntil(lambda: dialog.result is not None, timeout=60_000)
    assert dialog.result.verified and "verified" in dialog.status.text()
    sess = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    d = digits()
    x = d.shaped(d.x_test, (1, 1, 8, 8)).astype(np.float32)
    out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    accuracy = float((out.argmax(1) == d.y_test).mean())
    assert abs(accuracy - run.stages[2].measurement.accuracy) < 1e-9
    dialog.close()

    # the HTML report embeds the chart
    report = w.save_report(str(tmp_path / "report.html"))
    text = report.read_text()
    assert "data:image/png;base64," in text and run.id in text


def test_cancel_leaves_model_untouched(demo, qtbot):
    w = demo
    before = weights_digest(w.session.model.obj)
    obj = w.session.model.obj
    w.session.set_recipe(Recipe([RecipeStep("prune.magnitude", {"sparsity": 0.9, "fine_tune_epochs": 200})]))
    w.jobs.run_recipe()
    # wait until the pass itself is working (fine-tuning), then cancel with Esc
    qtbot.waitUntil(lambda: w.log_panel.status.text().startswith("step 2/"), timeout=60_000)
    w.actions_["cancel"].trigger()
    qtbot.waitUntil(lambda: not w.tasks.running("run"), timeout=30_000)
    assert "cancelled" in w.log_panel.status.text()
    assert w.session.runs == []
    assert len(w.chart.scatter.points()) == 0
    assert w.session.model.obj is obj and weights_digest(obj) == before
    assert w.recipe_panel.run_button.isEnabled()


def test_bad_file_shows_reason(window, qtbot, tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07not really a protobuf" * 10)
    window.open_path(str(bad))
    qtbot.waitUntil(lambda: window.error_box is not None and window.error_box.isVisible(), timeout=30_000)
    box = window.error_box
    assert "broken.onnx" in box.text() or "onnx" in box.text().lower()
    assert "\n" not in box.text()  # one line; details on demand
    assert box.detailedText()
    box.done(0)
    assert window.session.model is None and window.stack.currentIndex() == 0


def test_pickled_module_asks_for_trust(window, qtbot, tmp_path):
    from studio.core import zoo

    path = tmp_path / "whole.pt"
    torch.save(zoo.build("mlp"), path)  # a whole pickled module: loading it runs code
    window.open_path(str(path))
    qtbot.waitUntil(lambda: window.trust_box is not None and window.trust_box.isVisible(), timeout=30_000)
    assert window.session.model is None
    window.trust_box.button(window.trust_box.StandardButton.Yes).click()
    qtbot.waitUntil(lambda: window.session.model is not None, timeout=30_000)
    assert window.session.model.framework == "torch"
    assert str(path.resolve()) in window.recent()


def test_recipe_from_selection_saved_and_loaded(demo, qtbot, tmp_path):
    w = demo
    w.graph_view.select("conv2")
    w.recipe_panel.add_pass("prune.magnitude")
    w.recipe_panel.apply_to_selection()
    assert w.session.recipe.passes[0].options["targets"] == ["conv2"]
    w.recipe_panel.add_pass("quantize.fp16")
    w.recipe_panel.list.setCurrentRow(1)
    w.recipe_panel.move(-1)
    w.recipe_panel.list.item(1).setCheckState(Qt.Unchecked)
    assert [s.id for s in w.session.recipe.passes] == ["quantize.fp16", "prune.magnitude"]
    assert not w.session.recipe.passes[1].enabled
    path = tmp_path / "r.yaml"
    w.save_recipe(str(path))
    w.session.set_recipe(Recipe([]))
    w.load_recipe(str(path))
    loaded = w.session.recipe.passes
    assert [(s.id, s.enabled) for s in loaded] == [("quantize.fp16", True), ("prune.magnitude", False)]
    assert loaded[1].options["targets"] == ["conv2"]
    assert w.recipe_panel.list.count() == 2


def test_settings_remember_recent_and_geometry(window, qtbot, tmp_path):
    window.move(40, 30)
    window.resize(701, 501)
    size = window.size()  # what the window really took (the offscreen screen and docks bound it)
    dock_visible = window.docks["distribution"].toggleViewAction().isChecked()
    window.docks["log"].hide()
    window._add_recent(str(tmp_path / "a.onnx"))
    window.close()
    from studio.qt.main_window import MainWindow

    again = MainWindow()
    qtbot.addWidget(again)
    again.show()
    try:
        assert str((tmp_path / "a.onnx").resolve()) in again.recent()
        assert again.recent_menu.actions()
        assert again.size() == size
        assert again.docks["log"].isHidden() and not again.docks["recipe"].isHidden()
        assert again.docks["distribution"].toggleViewAction().isChecked() == dock_visible
    finally:
        again.shutdown()


def test_drop_a_model_file_opens_it(window, qtbot, tmp_path):
    from PySide6.QtCore import QMimeData, QPoint, QPointF, QUrl
    from PySide6.QtGui import QDragEnterEvent, QDropEvent
    from PySide6.QtWidgets import QApplication

    from studio.core import zoo
    from studio.core.convert import to_onnx_proto

    path = tmp_path / "dropped.onnx"
    import onnx

    onnx.save(to_onnx_proto(zoo.load("mlp")), str(path))
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    # what a drag from a file manager delivers: enter (the window accepts model files), then drop
    enter = QDragEnterEvent(QPoint(50, 50), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)
    QApplication.sendEvent(window, enter)
    assert enter.isAccepted()
    drop = QDropEvent(QPointF(50, 50), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)
    assert QApplication.sendEvent(window, drop)
    qtbot.waitUntil(lambda: window.session.model is not None or window.error_box is not None, timeout=30_000)
    assert window.error_box is None, window.error_box.text()
    assert window.session.model.framework == "onnx" and window.session.model.name == "dropped"
    assert any(n.op in ("Gemm", "MatMul") for n in window.session.original.graph.nodes)
    assert str(path.resolve()) in window.recent()


def test_random_data_measures_agreement(demo, qtbot):
    w = demo
    w.recipe_panel.add_pass("quantize.fp16")
    w.session.set_data_spec("random")
    w.jobs.run_recipe()
    qtbot.waitUntil(lambda: len(w.session.runs) == 1, timeout=60_000)
    m = w.session.runs[0].stages[1].measurement
    assert m.accuracy is None and m.quality_label == "agreement" and m.agreement > 0.9
    quality_cell = w.results.model.item(1, 2).text()
    assert "agreement" in quality_cell


def test_a_hostile_recipe_is_refused_in_one_line_and_keeps_the_recipe(window):
    """Recipe > Load of a crafted file: a one-line error box, the recipe as it was (the billion
    laughs used to hang the window); a shipped recipe then loads."""
    root = Path(__file__).resolve().parents[2]
    window.session.set_recipe(Recipe([RecipeStep("quantize.fp16", {})]))
    window.load_recipe(str(root / "tests" / "hostile" / "recipes" / "billion_laughs.yaml"))
    assert window.error_box.text().startswith("billion_laughs.yaml: line 4: anchors and aliases")
    assert "\n" not in window.error_box.text()
    window.error_box.close()
    assert [s.id for s in window.session.recipe.passes] == ["quantize.fp16"]
    window.load_recipe(str(root / "recipes" / "demo.yaml"))
    assert [s.id for s in window.session.recipe.passes] == ["prune.magnitude", "quantize.int8_static"]
