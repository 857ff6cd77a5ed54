"""Exports for phones and boards: onnxruntime's ORT format (ORT Mobile), ExecuTorch `.pte`
(XNNPACK) and LiteRT `.tflite`, each file loaded back in its own runtime and compared with the
stage it came from. ExecuTorch and the LiteRT runtime come with the `edge` extra (make setup);
the LiteRT converter (litert-torch) is installed by make setup from packaging/litert-converter.txt."""

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
                             "--json", "-q"], capture_output=True, text=True, timeout=300, check=False,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["format"] == "ort" and report["verified"] and report["size_bytes"] == out.stat().st_size
    sess = ort_session(out)
    assert sess.get_inputs()[0].shape[1:] == [1, 8, 8]


def pte_outputs(path, x):
    import torch
    from executorch.runtime import Runtime

    data = path.read_bytes()  # the buffer and the program must outlive the method
    program = Runtime.get().load_program(data)
    method = program.load_method("forward")
    out = np.concatenate([method.execute([torch.tensor(x[i:i + 1])])[0].numpy() for i in range(len(x))])
    del method, program
    return out


@pytest.mark.slow  # two lowerings to XNNPACK
def test_executorch_float_and_int8_from_a_torch_stage(demo_mlp, digits_data, tmp_path):
    pytest.importorskip("executorch.runtime")
    x = digits_data.shaped(digits_data.x_test[:32], demo_mlp.input_shape)
    want = predict(demo_mlp, x)
    path = tmp_path / export.default_name(demo_mlp, "pte")
    result = drain(export.export(demo_mlp, path, "pte", data=digits_data))
    assert result.verified and result.max_abs_diff < 1e-4, result.message
    assert path.read_bytes()[4:8] == b"ET12"  # ExecuTorch's flatbuffer
    assert np.abs(pte_outputs(path, x) - want).max() < 1e-4

    path8 = tmp_path / export.default_name(demo_mlp, "pte_int8")
    assert path8.name.endswith("-int8.pte")
    result8 = drain(export.export(demo_mlp, path8, "pte_int8", data=digits_data))
    assert result8.verified and result8.agreement >= 0.95, result8.message
    got = pte_outputs(path8, x)
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9
    assert 0 < np.abs(got - want).max()  # really quantized, not the float program again
    assert result8.size_bytes < 0.4 * result.size_bytes  # int8 weights
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, path8.name])


@pytest.mark.slow
def test_executorch_from_an_onnx_stage_goes_through_onnx2torch(demo_mlp, tmp_path):
    pytest.importorskip("executorch.runtime")
    onnx_stage = to_onnx_model(demo_mlp)
    path = tmp_path / "mlp.pte"
    result = drain(export.export(onnx_stage, path, "pte"))
    assert result.verified, result.message
    x = demo_mlp.example_input(4)
    assert np.abs(pte_outputs(path, x) - predict(onnx_stage, x)).max() < 1e-4


def test_int8_for_a_phone_needs_data(demo_mlp, tmp_path):
    from studio.core.errors import StudioError

    with pytest.raises(StudioError, match="calibrates on data"):
        drain(export.export(demo_mlp, tmp_path / "m.pte", "pte_int8"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt, says", [
    ("tflite", "pip install --no-deps -r packaging/litert-converter.txt"),
    ("pte", "compression-studio[edge]"),
])
def test_a_missing_runtime_is_one_line_saying_what_to_install(demo_mlp, tmp_path, monkeypatch, fmt, says):
    import sys

    from studio.core import edge
    from studio.core.errors import StudioError

    for module in edge.NEEDS[fmt][:2]:  # as if not installed: import finds nothing
        monkeypatch.setitem(sys.modules, module, None)
    assert says in edge.missing(fmt)
    with pytest.raises(StudioError) as caught:
        drain(export.export(demo_mlp, tmp_path / f"m.{fmt}", fmt))
    assert "\n" not in str(caught.value) and says in str(caught.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_litert_float_and_int8_run_in_the_litert_interpreter(demo_cnn, digits_data, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    x = digits_data.shaped(digits_data.x_test[:16], demo_cnn.input_shape)
    want = predict(demo_cnn, x)
    sizes = {}
    for fmt in ("tflite", "tflite_int8"):
        path = tmp_path / export.default_name(demo_cnn, fmt)
        result = drain(export.export(demo_cnn, path, fmt, data=digits_data))
        assert result.verified and result.agreement >= 0.95, result.message
        assert path.read_bytes()[4:8] == b"TFL3"  # LiteRT's flatbuffer
        sizes[fmt] = result.size_bytes
        if fmt == "tflite":  # float: same numbers in the plain interpreter
            runner = Interpreter(model_path=str(path)).get_signature_runner()
            got = np.concatenate([runner(args_0=x[i:i + 1])["output_0"] for i in range(len(x))])
            assert np.abs(got - want).max() < 1e-4
    assert sizes["tflite_int8"] < 0.4 * sizes["tflite"]


def test_run_refuses_an_export_it_cannot_write_before_the_run(tmp_path, capsys):
    from pathlib import Path

    from studio import cli

    recipe = Path(__file__).resolve().parents[2] / "recipes" / "demo.yaml"
    code = cli.main(["run", "demo:mlp", "--recipe", str(recipe), "--export", "onnx", "nosuch",
                     "--out", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown export format 'nosuch'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing ran, nothing was written


@pytest.mark.timeout(1200)  # beside another worker on 2 cores these lowerings neared the 300 s default
@pytest.mark.parametrize("fmt", [pytest.param("pte", marks=pytest.mark.slow), "tflite"])  # pte: ~40 s lowering
def test_a_yolov8_file_at_batch_1_exports_for_a_phone(tmp_path, fmt):
    """ultralytics' YOLOv8 export (opset 18, batch fixed at 1) at toy size: onnx2torch's Split,
    Reshape, Resize and Slice read their sizes from tensors at run time, which torch.export
    refused ("data-dependent expression u0"); the shapes are made static for the phone formats
    and the written file runs in its own runtime and matches onnxruntime."""
    import warnings

    import torch

    from studio.core.data import random_inputs
    from studio.core.io import load
    from tests.corpus.models import YoloV8

    path = tmp_path / "yolo.onnx"
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(YoloV8().eval(), (torch.randn(1, 3, 32, 32),), str(path), dynamo=False, opset_version=18)
    model = load(path)
    data = random_inputs(model.input_shape, count=12)
    result = drain(export.export(model, tmp_path / f"yolo.{fmt}", fmt, data=data))
    assert result.verified and result.max_abs_diff < 1e-3, result.message
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = data.x_test[:2]
    want = np.concatenate([sess.run(None, {sess.get_inputs()[0].name: x[i:i + 1]})[0] for i in range(2)])
    from studio.core import edge

    got = (edge.pte_outputs if fmt == "pte" else edge.tflite_outputs)(tmp_path / f"yolo.{fmt}", model, x)[0]
    assert got.shape == (2, 7, 80) and np.allclose(got, want, atol=1e-3)


@pytest.mark.slow  # calibration and a LiteRT conversion: about a minute alone, over 300 s beside another worker
@pytest.mark.timeout(1200)
def test_a_yolov8_file_exports_as_int8_tflite_with_its_dfl_softmax_in_float(tmp_path):
    """The DFL head's softmax (over the box bins): quantized, LiteRT refused the file at load
    ("output->params.scale not near 1.f / 256", SOFTMAX failed to prepare); kept float with the
    ops that read it, the INT8 file loads and matches the float model."""
    import warnings

    import torch

    from studio.core.data import random_inputs
    from studio.core.io import load
    from tests.corpus.models import YoloV8

    path = tmp_path / "yolo.onnx"
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(YoloV8().eval(), (torch.randn(1, 3, 32, 32),), str(path), dynamo=False, opset_version=18)
    model = load(path)
    result = drain(export.export(model, tmp_path / "yolo.tflite", "tflite_int8", data=random_inputs(model.input_shape, count=40)))
    assert result.verified, result.message


def test_a_recurrent_state_on_axis_1_exports_for_a_phone(tmp_path):
    """The corpus' Silero-like VadState with sr pinned: its state [2, batch, 16] is read with
    Gathers of one index and Squeezes whose axes are inputs (numbers torch.export cannot read
    from tensors), and its next state comes back with the sample on axis 1; written as .tflite
    and verified sample by sample against onnxruntime. The result warns that the file computes
    only the pinned branch."""
    from studio.core.data import random_inputs
    from studio.core.io import load
    from tests.corpus.models import cases, write

    path = tmp_path / "vad.onnx"
    write(cases()["vad_state"], "legacy", path)
    model = load(path)
    model = model.with_signature(model.io.with_overrides(["sr=16000"]))
    data = random_inputs(None, count=12, signature=model.io)
    result = drain(export.export(model, tmp_path / "vad.tflite", "tflite", data=data))
    assert result.verified and result.max_abs_diff < 1e-4, result.message
    # the file computes only the branch of sr=16000, said in the INT8 stage's words
    from studio.core.passes.onnx_torch import pinned_branch_warning

    assert result.warnings == [pinned_branch_warning(model.io, "the file", "export the original")]
    assert "sr=16000" in result.message and "whatever it is given" in result.message


def test_litert_refusing_an_int8_op_is_one_line_naming_it():
    """What LiteRT said of an INT8 file whose softmax was quantized (YOLOv8n's DFL softmax, before
    softmax stayed float): one line, the op, the way out."""
    said = ("the written file does not run: tflite/kernels/activations.cc:560 output->params.scale not near "
            "1.f / 256 (0.000245 != 0.003906)Node number 248 (SOFTMAX) failed to prepare.")
    line = export._litert_refusal("tflite_int8", said)
    assert line == ("LiteRT refuses the INT8 file: its SOFTMAX op is quantized with parameters its kernel does not "
                    "take; export tflite (float) or pte_int8 instead")
    assert export._litert_refusal("tflite", said) is None and export._litert_refusal("tflite_int8", "shape") is None
