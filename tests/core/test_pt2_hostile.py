"""Crafted .pt2 archives never run code: each trick below runs its payload when torch loads the
file itself, and the studio refuses it in one line with the payload not run."""

import contextlib
import io
import os
import subprocess
import sys

import pytest
import torch

from studio.core.io import LoadError, load
from tests.hostile.pt2_archives import TRICKS, write_tiny_program


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pt2src")
    return {False: write_tiny_program(folder / "static.pt2"), True: write_tiny_program(folder / "dyn.pt2", True)}


def crafted(sources, tmp_path, trick):
    build, needs_dynamic, _, _ = TRICKS[trick]
    marker = tmp_path / f"{trick}.ran"
    return build(sources[needs_dynamic], tmp_path / f"{trick}.pt2", marker), marker


@pytest.mark.parametrize("trick", [t for t, (_, _, runs, _) in TRICKS.items() if runs])
def test_each_trick_runs_code_in_plain_torch(sources, tmp_path, trick):
    """Proof that the crafted files are real attacks (if torch closes a hole, this says so)."""
    path, marker = crafted(sources, tmp_path, trick)
    with contextlib.suppress(Exception), contextlib.redirect_stderr(io.StringIO()):
        torch.export.load(str(path)).module()(torch.randn(2, 3, 16, 16))
    assert marker.exists()


@pytest.mark.parametrize("trick", [t for t, (*_, refused) in TRICKS.items() if refused])
def test_the_studio_refuses_each_trick_in_one_line(sources, tmp_path, trick):
    path, marker = crafted(sources, tmp_path, trick)
    with pytest.raises(LoadError) as err:
        load(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(path.name) and "refused" in message
    assert not marker.exists()


@pytest.mark.parametrize("trick", [t for t, (*_, refused) in TRICKS.items() if not refused])
def test_harmless_tricks_open_and_run_without_the_payload(sources, tmp_path, trick):
    """Guards code is Python from the file: the studio never compiles it, even when the model runs."""
    path, marker = crafted(sources, tmp_path, trick)
    model = load(path)
    model.obj(torch.randn(2, 3, 16, 16))
    assert not marker.exists()


@pytest.mark.parametrize("dynamic", [False, True])
def test_plain_programs_still_load_and_match(sources, dynamic):
    model = load(sources[dynamic])
    program = torch.export.load(str(sources[dynamic]))
    x = torch.randn(3 if dynamic else 2, 3, 24 if dynamic else 16, 16)  # batch and height are dynamic
    torch.testing.assert_close(model.obj(x), program.module()(x))
    assert model.format == "torch.export" and model.input_shape == (1, 3, 16, 16)


def test_forced_weights_only_is_restored_after_loading(sources):
    before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    load(sources[False])
    assert os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") == before


@pytest.mark.slow
@pytest.mark.parametrize("command, trick", [("inspect", "pickled_weight"), ("inspect", "shape_expression"),
                                            ("run", "sample_inputs"), ("export", "opaque_constant")])
def test_cli_refuses_in_one_line_and_runs_nothing(sources, tmp_path, command, trick):
    path, marker = crafted(sources, tmp_path, trick)
    args = {"inspect": [str(path)],
            "run": [str(path), "--recipe", "recipes/int8.yaml", "--data", "random", "--out", str(tmp_path / "o")],
            "export": [str(path), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]}[command]
    result = subprocess.run([sys.executable, "-m", "studio", command, *args], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "refused" in lines[0], result.stderr
    assert not marker.exists()
