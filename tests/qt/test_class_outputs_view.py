"""What the window shows for models whose class scores are not a single [batch, C] output: the
Results tab and the chart say 'position agreement' for CTC-like [N, T, C] softmax, and on a
multi-output model (MTCNN R-Net's box + face probability) which output the agreement is of."""

import torch

from tests.core.multi_io_models import export_onnx
from tests.core.test_class_outputs import CTCHead, RNetLike
from tests.qt.test_inputs_panel import open_file, run_done

PASS = "quantize.fp16"


def _run(w, qtbot, path):
    open_file(w, qtbot, path)
    box = w.recipe_panel.data_box
    box.setCurrentIndex(box.findData("random"))  # no labels: agreement with the original
    box.activated.emit(box.currentIndex())  # what a pick in the combo box sends
    assert w.session.data_spec == "random"
    w.recipe_panel.add_pass(PASS)
    w.jobs.run_recipe()
    return run_done(w, qtbot)


def test_sequence_class_scores_show_position_agreement(window, qtbot, tmp_path):
    torch.manual_seed(0)
    path = export_onnx(CTCHead(), (torch.randn(2, 1, 4, 16),), ["x"], {}, tmp_path / "ctc.onnx", dynamo=False)
    run = _run(window, qtbot, path)
    assert all(s.measurement.quality_label == "position agreement" for s in run.stages)
    cell = window.results.model.item(1, 2)
    assert cell.text().endswith("% position agreement")
    assert "compared position by position" in cell.toolTip()
    axis = window.chart.plot.getAxis("left")
    assert axis.labelText.startswith("position agreement") and axis.percent


def test_multi_output_model_says_which_output_is_judged(window, qtbot, tmp_path):
    torch.manual_seed(0)
    path = export_onnx(RNetLike(), (torch.randn(2, 3, 12, 12),), ["x"], {}, tmp_path / "rnet.onnx", dynamo=False)
    run = _run(window, qtbot, path)
    m = run.stages[1].measurement
    face = m.class_output
    assert m.quality_label == "agreement" and face == list(m.fidelity)[1]  # the face probability, not the box
    assert f"output '{face}' of 2 (its rows are probability distributions)" in window.results.model.item(1, 2).toolTip()
    assert any(f"agreement of output '{face}'" in tip for *_, tip in window.chart.points)
