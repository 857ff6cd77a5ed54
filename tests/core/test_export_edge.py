"""Exports for phones and boards: onnxruntime's ORT format (ORT Mobile), each file loaded back
in its own runtime and compared with the stage it came from."""

import numpy as np
import onnxruntime as ort
import pytest

from studio.core import export
from studio.core.convert import predict, to_onnx_model
from studio.core.training import drain


def ort_session(path):
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.load_model_format", "ORT")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def test_ort_format_from_a_torch_stage_runs_in_onnxruntime(demo_cnn, digits_data, tmp_path):
    path = tmp_path / export.default_name(demo_cnn, "ort")
    assert path.suffix == ".ort"
    result = drain(export.export(demo_cnn, path, "ort", data=digits_data))
    assert result.verified and result.agreement == 1.0, result.message
    assert result.max_abs_diff < 1e-4
    # onnxruntime's flatbuffer (file identifier "ORTM" at byte 4), not an ONNX protobuf
    assert path.read_bytes()[4:8] == b"ORTM"
    assert list(tmp_path.iterdir()) == [path], "a temporary file was left behind"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # found by its suffix
    out = sess.run(None, {sess.get_inputs()[0].name: digits_data.x_test})[0]
    want = predict(demo_cnn, digits_data.x_test)
    assert np.abs(out - want).max() < 1e-4


def test_ort_format_from_an_onnx_stage_under_any_name(demo_mlp, tmp_path):
    onnx_stage = to_onnx_model(demo_mlp)
    path = tmp_path / "phone-model.bin"  # onnxruntime would take this for ONNX by its name
    result = drain(export.export(onnx_stage, path, "ort"))
    assert result.verified, result.message
    sess = ort_session(path)
    x = demo_mlp.example_input(8)
    assert np.abs(sess.run(None, {sess.get_inputs()[0].name: x})[0] - predict(demo_mlp, x)).max() < 1e-4


def test_ort_format_keeps_an_int8_stage_int8(demo_mlp, digits_data, tmp_path):
    int8 = drain(export.export(demo_mlp, tmp_path / "m.onnx", "onnx_int8", data=digits_data))
    assert int8.verified
    from studio.core.io import load

    stage = load(tmp_path / "m.onnx")
    result = drain(export.export(stage, tmp_path / "m.ort", "ort", data=digits_data))
    assert result.verified, result.message
    # INT8 weights stay INT8: the ORT file is about as small as the INT8 ONNX, a quarter of float
    float_ort = drain(export.export(demo_mlp, tmp_path / "f.ort", "ort"))
    assert result.size_bytes < 0.45 * float_ort.size_bytes


@pytest.mark.slow  # a whole studio process: torch and onnxruntime imported afresh
def test_studio_export_format_ort_on_the_command_line(tmp_path):
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "cnn.ort"
    result = subprocess.run([sys.executable, "-m", "studio", "export", "demo:cnn", "--format", "ort", "--out", str(out),
                             "--json", "-q"], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["format"] == "ort" and report["verified"] and report["size_bytes"] == out.stat().st_size
    sess = ort_session(out)
    assert sess.get_inputs()[0].shape[1:] == [1, 8, 8]
