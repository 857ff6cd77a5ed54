"""The export dialog writes the phone and board formats (ORT Mobile), verified."""

import onnxruntime as ort


def test_export_dialog_writes_a_verified_ort_file(demo, qtbot, tmp_path):
    dialog = demo.export_selected()
    index = dialog.format.findData("ort")
    assert index >= 0, "the ORT format is not offered"
    dialog.format.setCurrentIndex(index)
    assert dialog.path.text().endswith(".ort")  # the default name follows the format
    target = tmp_path / "phone.ort"
    dialog.path.setText(str(target))
    dialog.export_button.click()
    qtbot.waitUntil(lambda: dialog.result is not None, timeout=60_000)
    assert dialog.result.verified and "verified" in dialog.status.text()
    assert target.read_bytes()[4:8] == b"ORTM"
    sess = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    assert sess.get_outputs()[0].shape[-1] == 10
    dialog.close()
