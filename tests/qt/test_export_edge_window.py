"""The export dialog writes the phone and board formats (ORT Mobile, ExecuTorch, LiteRT),
verified; a format whose runtime is not installed is shown, greyed, with what to install."""

import numpy as np
import onnxruntime as ort
import pytest

from studio.core import edge, export


def export_with(dialog, qtbot, fmt, target):
    dialog.result = None
    index = dialog.format.findData(fmt)
    assert index >= 0, f"{fmt} is not offered"
    dialog.format.setCurrentIndex(index)
    assert dialog.path.text().endswith(target.suffix)  # the default name follows the format
    dialog.path.setText(str(target))
    dialog.export_button.click()
    qtbot.waitUntil(lambda: dialog.result is not None, timeout=300_000)
    assert dialog.result.verified and "verified" in dialog.status.text()


@pytest.mark.slow  # an ExecuTorch lowering
def test_export_dialog_writes_verified_ort_and_pte_files(demo, qtbot, tmp_path):
    dialog = demo.export_selected()
    # every format is listed; the ones this machine cannot write are greyed, with the pip line
    model = dialog.format.model()
    for fmt in export.FORMATS:
        i = dialog.format.findData(fmt)
        assert i >= 0, fmt
        assert model.item(i).isEnabled() == (edge.missing(fmt) is None), fmt
    missing = {edge.missing(f) for f in export.FORMATS} - {None}
    assert dialog.hint.isVisibleTo(dialog) == bool(missing)
    assert all(why in dialog.hint.text() for why in missing)

    target = tmp_path / "phone.ort"
    export_with(dialog, qtbot, "ort", target)
    assert target.read_bytes()[4:8] == b"ORTM"
    sess = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    assert sess.get_outputs()[0].shape[-1] == 10

    if edge.missing("pte") is None:
        import torch
        from executorch.runtime import Runtime

        target = tmp_path / "board.pte"
        export_with(dialog, qtbot, "pte", target)
        data = target.read_bytes()  # the buffer and the program must outlive the method (SIGSEGV in a CI run)
        program = Runtime.get().load_program(data)
        method = program.load_method("forward")
        x = demo.session.current.model.example_input(1)
        want = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        assert np.abs(method.execute([torch.tensor(x)])[0].numpy() - want).max() < 1e-4
    dialog.close()
