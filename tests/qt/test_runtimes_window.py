"""The recipe panel's "Latency" checkboxes (ORT, ExecuTorch, LiteRT) choose the runtimes a run
times each stage on (core/runtimes.py): onnxruntime always, ExecuTorch and LiteRT when ticked (greyed with what to
install where missing); "RAM" adds each stage's inference RAM on those runtimes. The choice is kept in the
settings and reaches the Results table."""

import pytest
from PySide6.QtCore import Qt

from studio.core import stage_table


def test_the_runtimes_ticked_are_what_the_job_measures_and_are_remembered(window, qtbot):
    w = window
    boxes = w.recipe_panel.runtime_boxes
    assert list(boxes) == ["ort", "pte", "tflite"]
    assert boxes["ort"].isChecked() and not boxes["ort"].isEnabled()  # always measured
    for name in ("pte", "tflite"):  # installed here (make setup), off by default
        assert boxes[name].isEnabled() and not boxes[name].isChecked()
        assert "seconds per stage" in boxes[name].toolTip()
    assert w.jobs.runtimes == ("ort",)
    qtbot.mouseClick(boxes["tflite"], Qt.LeftButton)  # a real click on the checkbox
    qtbot.mouseClick(boxes["pte"], Qt.LeftButton)
    assert w.jobs.runtimes == ("ort", "pte", "tflite")
    qtbot.mouseClick(boxes["tflite"], Qt.LeftButton)
    assert w.jobs.runtimes == ("ort", "pte")
    assert not w.recipe_panel.ram_box.isChecked() and not w.jobs.measure_ram  # RAM: off by default
    qtbot.mouseClick(w.recipe_panel.ram_box, Qt.LeftButton)
    assert w.jobs.measure_ram

    w.close()  # the settings keep the choice
    from studio.qt.main_window import MainWindow

    again = MainWindow()
    qtbot.addWidget(again)
    try:
        assert again.recipe_panel.runtime_boxes["pte"].isChecked() and again.jobs.runtimes == ("ort", "pte")
        assert not again.recipe_panel.runtime_boxes["tflite"].isChecked()
        assert again.recipe_panel.ram_box.isChecked() and again.jobs.measure_ram
        again.recipe_panel.runtime_boxes["pte"].setChecked(False)
        assert again.jobs.runtimes == ("ort",) and again.settings.value("runtimes") in ("ort", ["ort"])
    finally:
        again.shutdown()


@pytest.mark.slow  # ExecuTorch imported and a program lowered from a fresh start: ~25 s here
def test_ticking_executorch_adds_its_column_to_results(window, qtbot):
    w = window
    w.open_demo("mlp")
    qtbot.waitUntil(lambda: w.session.model is not None, timeout=60_000)
    qtbot.mouseClick(w.recipe_panel.runtime_boxes["pte"], Qt.LeftButton)
    qtbot.mouseClick(w.recipe_panel.ram_box, Qt.LeftButton)  # and the RAM of each stage on both
    w.jobs.latency_batches = (1,)
    w.recipe_panel.add_pass("quantize.fp16")  # an ONNX FP16 stage: onnx2torch cannot take it, so one export
    qtbot.mouseClick(w.recipe_panel.run_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: len(w.session.runs) == 1, timeout=120_000)

    run = w.session.runs[0]
    assert run.runtimes == ("ort", "pte")
    heads = [w.results.model.horizontalHeaderItem(i).text() for i in range(w.results.model.columnCount())]
    column = heads.index("ms, batch 1, ExecuTorch (XNNPACK)")
    assert "x faster, batch 1, ExecuTorch (XNNPACK)" in heads
    assert not any("LiteRT" in h for h in heads)  # not ticked: not measured
    assert w.results.model.item(0, column).text() == stage_table.rows(run)[0]["pte_ms_1"].text != stage_table.NONE
    assert w.results.model.item(1, column).text() == stage_table.NONE  # and its warning says why:
    assert any(x.startswith("ExecuTorch (XNNPACK) not measured: ") for x in run.stages[1].warnings)
    ram = heads.index("RAM to run")
    assert run.stages[0].measurement.ram_bytes > 0 and run.stages[0].measurement.runtime_ram_bytes["pte"] > 0
    assert w.results.model.item(0, ram).text() == stage_table.rows(run)[0]["ram"].text
    assert "RAM to run, ExecuTorch (XNNPACK)" in heads
