"""A scripted (not traced) TorchScript file, like silero_vad.jit: `forward(self, x: Tensor,
sr: int)`. It records no input shapes, but forward's schema names every argument and its type:
the tensor is an input the user sizes, the int a setting pinned with --input sr=16000 and passed
to forward as a Python number (a tensor there fails: 'Expected a value of type int')."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from studio.core import io
from studio.core.convert import predict_all, run_session_all, session, to_onnx_proto
from studio.core.errors import StudioError
from studio.core.signature import torch_args

ROOT = Path(__file__).resolve().parents[2]


class ScriptedVad(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc16, self.enc8, self.out = nn.Linear(64, 16), nn.Linear(32, 16), nn.Linear(16, 1)

    def forward(self, x: torch.Tensor, sr: int) -> torch.Tensor:
        if sr == 16000:
            h = self.enc16(x)
        else:
            h = self.enc8(x[:, :32])
        return torch.sigmoid(self.out(torch.relu(h)))


class Gain(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, gain: float = 2.0, flags: list[int] | None = None) -> torch.Tensor:
        return self.lin(x) * gain


class Remembers(nn.Module):
    """Keeps the first rate it saw (Silero keeps its context and state so): its code does not
    convert to ONNX with either exporter."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 2)
        self.seen: int = 0

    def forward(self, x: torch.Tensor, sr: int) -> torch.Tensor:
        if not bool(self.seen):
            self.seen = sr
        return self.lin(x) * float(self.seen) / 16000.0


def save_script(module, path: Path) -> Path:
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(module.eval()), str(path))
    return path


def test_forward_schema_gives_inputs_and_python_scalars(tmp_path):
    torch.manual_seed(0)
    path = save_script(ScriptedVad(), tmp_path / "vad.pt")
    model = io.load(path)
    sig = model.io
    assert sig.names == ["x", "sr"]
    assert [(s.dtype, s.shape, s.python_scalar) for s in sig.inputs] == [("float32", None, False), ("int64", (), True)]
    assert sig.problems() == ["input 'x' has no recorded shape: give it with --input x:D0,D1,...",
                              "input 'sr' is a scalar int64 (a setting, not data): give its value with --input sr=VALUE"]
    model = model.with_signature(sig.with_overrides(["x:1,64", "sr=16000"]))
    x = model.example_inputs(5)
    args = torch_args(x, model.io)
    assert isinstance(args[1], int) and args[1] == 16000
    expected = model.obj(torch.from_numpy(x.arrays["x"]), 16000).detach().numpy()
    np.testing.assert_allclose(predict_all(model, x)[0], expected, atol=1e-6)
    proto = to_onnx_proto(model)  # the scripted graph keeps sr as an int64 input its If reads
    assert [i.name for i in proto.graph.input] == ["x", "sr"]
    np.testing.assert_allclose(run_session_all(session(proto), x)[0], expected, atol=1e-5)
    other = model.with_signature(model.io.with_overrides(["sr=8000"]))
    assert not np.allclose(predict_all(other, other.example_inputs(5))[0], expected)  # the value reaches forward


def test_scalar_defaults_are_pinned_and_later_defaults_left_to_forward(tmp_path):
    model = io.load(save_script(Gain(), tmp_path / "gain.pt"))
    assert model.io.names == ["x", "gain"]
    assert model.io.input("gain").describe() == "gain: float64 = 2.0"
    assert model.io.problems() == ["input 'x' has no recorded shape: give it with --input x:D0,D1,..."]


def test_a_module_whose_code_does_not_export_says_what_to_open_instead(tmp_path):
    model = io.load(save_script(Remembers(), tmp_path / "r.pt"))
    model = model.with_signature(model.io.with_overrides(["x:1,8", "sr=16000"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(StudioError) as err:
            to_onnx_proto(model)
    assert "ONNX export failed" in str(err.value) and "open an ONNX export of the model instead" in str(err.value)


def studio(*args):
    return subprocess.run([sys.executable, "-m", "studio", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})


@pytest.mark.slow
def test_cli_inspect_run_and_export_of_a_scripted_file(tmp_path):
    path = save_script(ScriptedVad(), tmp_path / "vad.pt")
    r = studio("inspect", str(path))
    assert r.returncode == 0, r.stderr
    assert "input  x: float32 ?" in r.stdout and "input  sr: int64 []" in r.stdout
    assert "--input sr=VALUE" in r.stdout
    flags = ["--input", "x:1,64", "--input", "sr=16000"]
    r = studio("run", str(path), *flags, "--recipe", str(ROOT / "recipes" / "int8.yaml"), "--data", "random",
               "--out", str(tmp_path / "out"), "--rounds", "1", "--batches", "1", "--no-ram", "-q")
    assert r.returncode == 0, r.stderr
    assert "verified" in r.stdout
    r = studio("export", str(path), *flags, "--format", "ort", "--data", "random", "--out", str(tmp_path / "v.ort"))
    assert r.returncode == 0, r.stderr
    assert "verified: max abs diff" in r.stdout
