"""onnxruntime segfaulted building a session for the float16 form of a tiny BERT export, which
killed the studio (and the window): the pass now checks the session in a child and refuses."""

import os
import subprocess
import sys

import pytest

from tests.core.multi_io_models import cases, export_onnx


@pytest.mark.slow
def test_fp16_of_a_tiny_bert_is_refused_not_a_crash(tmp_path):
    module, args, names, dynamic, _ = cases()["tiny_bert"]
    model = export_onnx(module, args, names, dynamic, tmp_path / "bert.onnx", dynamo=False)
    (tmp_path / "fp16.yaml").write_text("studio_recipe: 1\npasses:\n  - id: quantize.fp16\n")
    result = subprocess.run(
        [sys.executable, "-m", "studio", "run", str(model), "--recipe", str(tmp_path / "fp16.yaml"),
         "--data", "random", "--input", "input_ids:1,10", "--input", "attention_mask:1,10", "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode in (0, 2), result.stderr  # never a signal (-11 / 139)
    if result.returncode == 2:
        errors = [line for line in result.stderr.splitlines() if line.startswith("studio: error")]
        assert len(errors) == 1 and "float16 model is not usable" in errors[0], result.stderr
