"""The model's inputs in the window: the Data panel lists them (name, dtype, dynamic dims, id
range), sizes and constants set there reach the run (as --input does on the command line), a
dim nobody set is asked for before a run starts (cancel starts nothing), and a labelled run
draws each stage's confusion matrix in the Results tab."""

import numpy as np
import pytest
from PySide6.QtWidgets import QDialogButtonBox

from tests.core.multi_io_models import cases, export_onnx

PASS = "quantize.int8_static"  # (quantize.fp16 of this tiny BERT crashes onnxruntime: see the report)


@pytest.fixture(scope="module")
def bert_file(tmp_path_factory):
    """Token ids + attention mask whose sequence length the file leaves open (one name, 'seq',
    for both inputs); ids index a 50-row embedding."""
    module, args, names, _, _ = cases()["tiny_bert"]
    path = tmp_path_factory.mktemp("bert") / "tiny_bert.onnx"
    dynamic = {"input_ids": {1: "seq"}, "attention_mask": {1: "seq"}}
    return export_onnx(module, args, names, dynamic, path, dynamo=False)


def open_file(w, qtbot, path):
    w.open_path(str(path))
    qtbot.waitUntil(lambda: w.session.model is not None and not w.tasks.running("load"), timeout=60_000)


def run_done(w, qtbot, runs=1):
    qtbot.waitUntil(lambda: not w.tasks.running("run") and (len(w.session.runs) == runs or bool(w.recipe_panel.error.text())),
                    timeout=120_000)
    assert len(w.session.runs) == runs, w.recipe_panel.error.text()
    return w.session.runs[-1]


def check_run(run):
    assert [s.index for s in run.stages] == [0, 1]
    for s in run.stages:
        m = s.measurement
        assert m is not None and m.quality_label == "agreement"  # random inputs, class scores
        assert m.samples > 0 and m.quality > 0.9
    assert run.stages[0].measurement.quality == pytest.approx(1.0)  # the original against itself


def test_the_panel_lists_every_input_with_its_dynamic_dims(window, qtbot, bert_file):
    w = window
    open_file(w, qtbot, bert_file)
    panel = w.recipe_panel.inputs
    t = panel.table
    assert t.rowCount() == 2
    assert [t.item(r, 0).text() for r in range(2)] == ["input_ids", "attention_mask"]
    assert t.item(0, 1).text() == "[N, seq] int64 in [0, 50)"  # ids index the 50-row embedding
    assert t.item(0, 1).toolTip() == "input_ids: int64 [batch, seq] in [0, 50)"
    assert t.item(1, 1).text() == "[N, seq] int64"
    assert panel.editors["input_ids"].placeholderText() == "1,SEQ"
    assert panel.status.text() == "2 inputs · unset: seq (asked at Run)"
    assert w.session.data_spec == "random"  # digits cannot feed token ids
    assert w.recipe_panel.data_box.currentData() == "random"  # and the combo says so
    for key in ("prune.magnitude", "cluster.kmeans", "quantize.int8_static"):
        w.recipe_panel.add_pass(key)  # each pass draws its option form
    qtbot.wait(50)
    hint = w.minimumSizeHint()
    assert hint.width() <= 1280 and hint.height() <= 768, hint  # still fits a laptop
    w.open_demo("cnn")  # a model the digits fit: back to them
    qtbot.waitUntil(lambda: w.session.data_spec == "digits", timeout=60_000)


@pytest.mark.slow
def test_a_size_set_in_the_panel_reaches_the_run_and_is_remembered(window, qtbot, bert_file):
    w = window
    open_file(w, qtbot, bert_file)
    panel = w.recipe_panel.inputs
    panel.editors["input_ids"].setText("1,10")  # as --input input_ids:1,10; 'seq' sizes the mask too
    panel.editors["input_ids"].editingFinished.emit()
    assert "all sized" in panel.status.text()
    w.recipe_panel.add_pass(PASS)
    w.jobs.run_recipe()
    assert w.size_dialog is None  # nothing left to ask
    run = run_done(w, qtbot)
    check_run(run)
    sized = run.stages[0].model.io
    assert [s.shape[1] for s in sized.inputs] == [10, 10]
    assert w.recipe_panel.error.text() == ""
    # the Results table names the measure
    quality = w.results.model.item(0, 2).text()
    assert quality.endswith("agreement"), quality
    # remembered for this file: reopening it fills the (new) editors from the settings
    old = panel.editors["input_ids"]
    assert w.settings.value(w.inputs_key) == ["input_ids:1,10"]
    generation = w.session.generation
    w.open_path(str(bert_file))
    qtbot.waitUntil(lambda: w.session.generation > generation and not w.tasks.running("load"), timeout=60_000)
    assert panel.editors["input_ids"] is not old
    assert panel.texts() == {"input_ids": "1,10"}


def test_a_bad_setting_is_one_line_and_starts_nothing(window, qtbot, bert_file):
    w = window
    open_file(w, qtbot, bert_file)
    panel = w.recipe_panel.inputs
    panel.editors["attention_mask"].setText("1,2,3")  # three dims for a two-dim input
    panel.editors["attention_mask"].editingFinished.emit()
    w.recipe_panel.add_pass(PASS)
    w.jobs.run_recipe()
    assert "has 2 dims, not 3" in w.recipe_panel.error.text()
    assert "\n" not in w.recipe_panel.error.text()
    assert not w.tasks.running("run") and w.size_dialog is None


@pytest.mark.slow
def test_an_unset_dim_is_asked_for_then_the_run_goes(window, qtbot, bert_file):
    w = window
    open_file(w, qtbot, bert_file)
    w.recipe_panel.add_pass(PASS)
    w.jobs.run_recipe()
    qtbot.waitUntil(lambda: w.size_dialog is not None and w.size_dialog.isVisible(), timeout=5000)
    assert not w.tasks.running("run")  # nothing starts while the question is open
    dialog = w.size_dialog
    assert list(dialog.dims) == ["seq"]  # one question for the dim both inputs share
    box = dialog.findChild(type(dialog.dims["seq"]), "dim_seq")
    assert box.value() == 32  # a suggestion, shown
    box.setValue(10)  # the exporter traced the attention's reshapes at the example's length
    dialog.buttons.button(QDialogButtonBox.Ok).click()
    assert not dialog.isVisible()
    run = run_done(w, qtbot)
    check_run(run)
    assert [s.shape[1] for s in run.stages[1].model.io.inputs] == [10, 10]
    assert w.recipe_panel.inputs.texts() == {"input_ids": "1,10", "attention_mask": "1,10"}


def test_cancelling_the_question_starts_no_run(window, qtbot, bert_file):
    w = window
    open_file(w, qtbot, bert_file)
    w.recipe_panel.add_pass(PASS)
    w.jobs.run_recipe()
    qtbot.waitUntil(lambda: w.size_dialog is not None and w.size_dialog.isVisible(), timeout=5000)
    w.size_dialog.buttons.button(QDialogButtonBox.Cancel).click()
    qtbot.wait(200)
    assert not w.tasks.running("run") and w.session.runs == []
    assert w.recipe_panel.inputs.texts() == {}  # nothing was set
    assert w.settings.value(w.inputs_key) is None


def test_a_constant_input_is_pinned_from_the_panel(window, qtbot, tmp_path):
    """A scalar setting (a sample rate) is asked as a value; pinned, the run feeds it as is."""
    w = window
    module, args, names, dynamic, _ = cases()["audio_state"]
    path = export_onnx(module, args, names, dynamic, tmp_path / "vad.onnx", dynamo=False)
    open_file(w, qtbot, path)
    w.recipe_panel.add_pass(PASS)
    w.jobs.run_recipe()
    qtbot.waitUntil(lambda: w.size_dialog is not None and w.size_dialog.isVisible(), timeout=5000)
    dialog = w.size_dialog
    assert list(dialog.texts) == ["sr"] and not dialog.dims
    dialog.buttons.button(QDialogButtonBox.Ok).click()  # empty: refused, the dialog stays
    assert dialog.isVisible() and "--input sr=VALUE" in dialog.error.text()
    dialog.texts["sr"].setText("16000")
    dialog.buttons.button(QDialogButtonBox.Ok).click()
    run = run_done(w, qtbot)
    assert w.recipe_panel.inputs.texts()["sr"] == "=16000"
    sr = run.stages[0].model.io.input("sr")
    assert sr.is_constant and int(sr.value) == 16000
    for s in run.stages:
        assert s.measurement.quality_label == "cosine"  # not class scores: output fidelity
    assert w.results.model.item(1, 2).text().endswith("cosine")
    assert w.chart.plot.getAxis("left").labelText.startswith("cosine")
    assert w.chart.plot.getAxis("left").tickStrings([0.999, 1.0], 1, 0.001) == ["0.999", "1.000"]


def test_the_confusion_matrix_of_a_labelled_run(demo, qtbot):
    w = demo
    assert w.session.data_spec == "digits"
    w.recipe_panel.add_pass(PASS)
    w.jobs.run_recipe()
    run = run_done(w, qtbot)
    w.tabs.setCurrentWidget(w.results)
    view = w.results.confusion
    for index in (0, 1):
        w.results.view.clicked.emit(w.results.proxy.index(index, 0))
        m = run.stages[index].measurement
        assert view.matrix.shape == (10, 10)
        assert view.matrix.sum() == m.samples  # every held-out sample, once
        assert np.trace(view.matrix) / m.samples == pytest.approx(m.accuracy)
        assert view.plot.isVisible() and f"run {run.id} · {run.stages[index].label}" in view.title.text()
    assert len(view.texts) == np.count_nonzero(view.matrix)  # counts written in the cells
    assert view.plot.getAxis("left").labelText == "true class"
    assert view.plot.getAxis("bottom").labelText == "predicted class"
    assert view.tip_at(3, 3).startswith(f"true 3, predicted 3: {view.matrix[3, 3]} samples")


def test_exporting_the_original_asks_its_sizes_then_verifies(window, qtbot, bert_file, tmp_path):
    """Export checks the written file by running it: an unsized dim is asked first, like Run."""
    import onnxruntime as ort

    w = window
    open_file(w, qtbot, bert_file)
    assert w.export_selected() is None
    qtbot.waitUntil(lambda: w.size_dialog is not None and w.size_dialog.isVisible(), timeout=5000)
    w.size_dialog.dims["seq"].setValue(10)
    w.size_dialog.buttons.button(QDialogButtonBox.Ok).click()
    qtbot.waitUntil(lambda: w.export_dialog is not None and w.export_dialog.isVisible(), timeout=5000)
    dialog = w.export_dialog
    dialog.format.setCurrentIndex(dialog.format.findData("onnx"))
    target = tmp_path / "bert-out.onnx"
    dialog.path.setText(str(target))
    dialog.export_button.click()
    qtbot.waitUntil(lambda: dialog.result is not None or "failed" in dialog.status.text(), timeout=60_000)
    assert dialog.result is not None and dialog.result.verified, dialog.status.text()
    sess = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask"]
    dialog.close()
