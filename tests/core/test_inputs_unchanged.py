"""Nothing lost: every registered pass and every export format, run on a tiny torch model and on
a tiny ONNX model, leaves the input model exactly as it was (weights, structure, serialized bytes).
A pass or format that refuses a framework must say so in one StudioError line; that is recorded
and accepted, but the input must be unchanged either way."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from studio.core import edge, export, pipeline
from studio.core.convert import to_onnx_proto
from studio.core.data import Data
from studio.core.errors import StudioError
from studio.core.model import ONNX, TORCH, Model
from studio.core.passes import all_passes
from studio.core.recipe import Recipe, RecipeStep
from studio.core.training import drain

# the least work each pass needs to run (few epochs, few calibration samples)
FAST_OPTIONS = {
    "cluster.kmeans": {"iterations": 3},
    "distill.kd": {"epochs": 1},
    "finetune": {"epochs": 1},
    "quantize.int8_static": {"calibration_samples": 16},
}


class TinyNet(nn.Module):
    """Conv + BatchNorm + Linear: something for every pass (channels to prune, a norm to fold,
    a matrix to factor, a MatMul for weight-only)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc1 = nn.Linear(8 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def tiny_torch() -> Model:
    torch.manual_seed(0)
    module = TinyNet()
    with torch.no_grad():  # BatchNorm statistics that are not the identity, so folding changes numbers
        module.bn.running_mean.uniform_(-0.5, 0.5)
        module.bn.running_var.uniform_(0.5, 2.0)
    return Model(module.eval(), TORCH, (1, 1, 8, 8), name="tiny", meta={"note": ["kept"]})


def tiny_onnx() -> Model:
    torch_model = tiny_torch()
    return Model(to_onnx_proto(torch_model), ONNX, (1, 1, 8, 8), name="tiny-onnx", format="onnx",
                 meta={"note": ["kept"]})


MODELS = {"torch": tiny_torch, "onnx": tiny_onnx}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((160, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 160)
    return Data("tiny", x[:128], x[128:], y[:128], y[128:])


def snapshot(model: Model) -> tuple:
    """Everything a pass could change in place, as plain bytes and strings."""
    if model.framework == ONNX:
        body = model.obj.SerializeToString()
    else:
        state = model.obj.state_dict()
        body = (repr(model.obj), [(k, str(v.dtype), tuple(v.shape), v.detach().cpu().numpy().tobytes())
                                  for k, v in state.items()])
    return model.framework, model.input_shape, model.format, repr(model.meta), body


def assert_one_line_refusal(exc: StudioError, refusals: list, what: str) -> None:
    message = str(exc)
    assert message and "\n" not in message and "Traceback" not in message, message
    refusals.append(f"{what}: {message}")


# ---------------------------------------------------------------------------------------- passes
@pytest.mark.slow
@pytest.mark.parametrize("framework", list(MODELS))
def test_every_pass_leaves_its_input_unchanged(framework, data):
    model = MODELS[framework]()
    before = snapshot(model)
    ran, refused = [], []
    for pass_id in all_passes():
        recipe = Recipe([RecipeStep(pass_id, dict(FAST_OPTIONS.get(pass_id, {})))])
        try:
            result = drain(pipeline.run(model, recipe, data, measure_stages=False))
        except StudioError as exc:
            assert_one_line_refusal(exc, refused, pass_id)
        else:
            assert result.stages[-1].model is not model and result.stages[-1].model.obj is not model.obj
            ran.append(pass_id)
        assert snapshot(model) == before, f"{pass_id} changed its {framework} input"
    print(f"\n{framework}: ran {ran}; refused {refused}")
    # refusals are for passes that do not take this framework, never a failure in disguise
    takes = {pid for pid, cls in all_passes().items() if framework in cls.frameworks}
    assert takes <= set(ran), f"passes that take {framework} models failed: {refused}"


# --------------------------------------------------------------------------------------- exports
@pytest.mark.slow
@pytest.mark.parametrize("framework", list(MODELS))
def test_every_export_leaves_its_input_unchanged(framework, data, tmp_path):
    model = MODELS[framework]()
    before = snapshot(model)
    written, refused = [], []
    for fmt in export.FORMATS:
        path = tmp_path / export.default_name(model, fmt)
        try:
            result = drain(export.export(model, path, fmt, data=data))
        except StudioError as exc:
            assert_one_line_refusal(exc, refused, fmt)
            assert not path.exists()
        else:
            assert result.verified, f"{fmt}: {result.message}"
            written.append(fmt)
        assert snapshot(model) == before, f"export {fmt} changed its {framework} input"
    print(f"\n{framework}: wrote {written}; refused {refused}")
    torch_only = {fmt for fmt, (_, _, needs_torch) in export.FORMATS.items() if needs_torch}
    not_installed = {fmt for fmt in export.FORMATS if edge.missing(fmt)}  # the LiteRT converter: not in make setup
    assert set(written) == set(export.FORMATS) - (torch_only if framework == "onnx" else set()) - not_installed
    # every file written, nothing else (no temporaries left)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        export.default_name(model, fmt) for fmt in written)


@pytest.mark.parametrize("framework", list(MODELS))
def test_fp16_export_reports_the_real_difference(framework, tmp_path):
    """FP16 rounding changes the outputs by ~1e-3 on random weights: the verification must see
    it, which it only does when it compares against the float32 model it was given."""
    model = MODELS[framework]()
    before = snapshot(model)
    result = drain(export.export(model, tmp_path / "m.onnx", "onnx_fp16"))
    assert result.verified and result.max_abs_diff > 1e-5, result.message
    assert snapshot(model) == before


def test_cli_fp16_export_of_an_onnx_file_reports_the_real_difference(tmp_path):
    """`studio export X.onnx --format onnx_fp16` once compared the FP16 file with itself (the
    pass had converted the loaded model in place) and printed 'max abs diff 0.00e+00'."""
    import json
    import os
    import subprocess
    import sys

    import onnxruntime as ort

    src, out = tmp_path / "tiny.onnx", tmp_path / "tiny-fp16.onnx"
    src.write_bytes(tiny_onnx().obj.SerializeToString())
    before = src.read_bytes()
    done = subprocess.run([sys.executable, "-m", "studio", "export", str(src), "--format", "onnx_fp16",
                           "--out", str(out), "--json", "--quiet"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert src.read_bytes() == before
    # the difference the studio reports is the one onnxruntime shows between the two files
    x = Model(None, ONNX, (1, 1, 8, 8)).example_input(export.VERIFY_SAMPLES)
    runs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (src, out)]
    fp32, fp16 = (s.run(None, {s.get_inputs()[0].name: x})[0] for s in runs)
    real = float(np.abs(fp32 - fp16.astype(np.float32)).max())
    assert real > 1e-5
    assert info["max_abs_diff"] == pytest.approx(real, rel=1e-3), info["message"]


# --------------------------------------------------------------- analyses and measurements
@pytest.mark.slow
@pytest.mark.parametrize("framework", list(MODELS))
def test_sensitivity_and_measuring_leave_the_input_unchanged(framework, data):
    from studio.core import sensitivity

    model = MODELS[framework]()
    before = snapshot(model)
    runs = [sensitivity.quant_sensitivity(model, data, calibration_samples=16)]
    if framework == "torch":
        runs += [sensitivity.prune_sensitivity(model, data, ratios=(0.5,), method=m) for m in ("magnitude", "structured")]
    for gen in runs:
        drain(gen)
        assert snapshot(model) == before
    drain(pipeline.run(model, Recipe([]), data, latency_batches=(1,), latency_rounds=1))
    assert snapshot(model) == before
