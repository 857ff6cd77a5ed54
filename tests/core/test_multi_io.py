"""Models with several inputs and outputs, integer token ids, dynamic sizes and constant inputs,
through the real command line: `studio inspect`, then `studio run --recipe recipes/int8.yaml
--data random` (quantize with calibration on every input, measure every stage, export and
verify every output)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.core.multi_io_models import cases, export_onnx, trace

ROOT = Path(__file__).resolve().parents[2]
RECIPE = str(ROOT / "recipes" / "int8.yaml")
CASES = cases()
# what quality means per model: class scores -> agreement, anything else -> output fidelity
QUALITY = {"two_inputs": "agreement", "tiny_bert": "agreement", "three_heads": "cosine",
           "dict_outputs": "agreement", "dynamic_hw": "cosine", "audio_state": "cosine"}
# dict_outputs' ONNX export names its outputs linear_1/linear_2 (or numbers): logits [N, 6] and box
# [N, 2] are then indistinguishable, so output fidelity; TorchScript keeps the key 'logits'
ONNX_QUALITY = QUALITY | {"dict_outputs": "cosine"}
OUTPUTS = {"two_inputs": 1, "tiny_bert": 1, "three_heads": 3, "dict_outputs": 2, "dynamic_hw": 1, "audio_state": 2}


def studio(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "studio", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def check_run(model_file: Path, name: str, out: Path, quality: dict = QUALITY):
    module, args, names, dynamic, flags = CASES[name]
    r = studio("run", str(model_file), "--recipe", RECIPE, "--data", "random", *flags, "--out", str(out),
               "--rounds", "1", "--batches", "1", "4", "-q")
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    stages = report["stages"]
    assert [s["name"] for s in stages] == ["original", "quantize.int8_static"]
    for s in stages:
        m = s["measurement"]
        assert m["quality_label"] == quality[name]
        assert len(m["fidelity"]) == OUTPUTS[name]  # every output compared with the original's
        assert m["samples"] == 256  # agreement on random weights needs 256+ held-out inputs
        assert set(m["latency_ms"]) == {"1", "4"}
    base, int8 = stages[0]["measurement"], stages[1]["measurement"]
    assert base["quality"] == pytest.approx(1.0)  # the original against itself
    assert all(f["max_abs"] == 0 for f in base["fidelity"].values())
    assert 0.9 <= int8["quality"] <= 1.0
    for f in int8["fidelity"].values():
        assert f["cosine"] > 0.99 and f["snr_db"] > 15
    assert any(v["dtype"] == "int8" for v in stages[1]["layers"].values())
    (export,) = report["exports"]
    assert export["verified"], export["message"]
    # the shipped file runs in onnxruntime with every input in its own dtype
    sess = ort.InferenceSession(export["path"], providers=["CPUExecutionProvider"])
    assert len(sess.get_outputs()) == OUTPUTS[name]
    types = {i.name: i.type for i in sess.get_inputs()}
    if name == "tiny_bert":
        assert all(t == "tensor(int64)" for t in types.values())
    assert f"{quality[name]}:" in r.stdout  # the table says which measure the numbers are
    html = (out / "report.html").read_text()
    assert f"<th>{quality[name]}</th>" in html
    if OUTPUTS[name] > 1 or quality[name] == "cosine":  # each output's fidelity, the original's exact
        assert "Output fidelity against the original model" in html
        assert html.count("<td>exact</td>") == OUTPUTS[name]
    return report


@pytest.mark.slow
@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
@pytest.mark.parametrize("name", list(CASES))
def test_onnx_model_runs_int8_end_to_end(tmp_path, name, dynamo):
    module, args, names, dynamic, flags = CASES[name]
    path = export_onnx(module, args, names, dynamic, tmp_path / f"{name}.onnx", dynamo)
    r = studio("inspect", str(path))
    assert r.returncode == 0, r.stderr
    for n in names:
        assert f"input  {n}:" in r.stdout
    if name == "tiny_bert":  # ids drawn from the embedding table's rows, found in the graph
        assert "input  input_ids: int64 [batch, 10] in [0, 50)" in r.stdout
    check_run(path, name, tmp_path / "out", ONNX_QUALITY)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_traced_torchscript_needs_no_input_shape(tmp_path, name):
    module, args, names, dynamic, flags = CASES[name]
    path = trace(module, args, tmp_path / f"{name}.pt")
    r = studio("inspect", str(path))
    assert r.returncode == 0, r.stderr
    for n, a in zip(names, args):
        dims = ", ".join(["batch", *map(str, a.shape[1:])]) if a.dim() else ""
        assert f"input  {n}: {str(a.dtype).replace('torch.', '')} [{dims}]" in r.stdout
    check_run(path, name, tmp_path / "out")


def test_dynamic_dims_and_scalars_are_named_not_guessed(tmp_path):
    module, args, names, dynamic, _ = CASES["dynamic_hw"]
    path = export_onnx(module, args, names, dynamic, tmp_path / "dyn.onnx", dynamo=False)
    r = studio("run", str(path), "--recipe", RECIPE, "--data", "random", "--out", str(tmp_path / "o"))
    assert r.returncode == 2
    assert r.stderr.strip() == ("studio: error: input 'x' has dynamic dims [batch, 3, h, w]: "
                                "give them with --input x:1,3,H,W (numbers)")
    assert not (tmp_path / "o" / "report.json").exists()
    module, args, names, dynamic, _ = CASES["audio_state"]
    path = export_onnx(module, args, names, dynamic, tmp_path / "audio.onnx", dynamo=False)
    r = studio("run", str(path), "--recipe", RECIPE, "--data", "random", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "input 'sr' is a scalar int64" in r.stderr and "--input sr=VALUE" in r.stderr
    r = studio("inspect", str(path), "--input", "nope=3")
    assert r.returncode == 2 and "has no input 'nope'; its inputs: audio, state, sr" in r.stderr


@pytest.mark.slow
def test_npz_with_one_array_per_input_and_labels(tmp_path):
    """A .npz keyed by input names (first axis = samples) with labels: accuracy plus macro
    precision/recall/F1 and a confusion matrix per stage; int64 ids stay int64."""
    module, args, names, dynamic, _ = CASES["tiny_bert"]
    path = export_onnx(module, args, names, dynamic, tmp_path / "bert.onnx", dynamo=False)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 50, size=(400, 10))
    mask = np.ones((400, 10), np.int64)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"input_ids": ids, "attention_mask": mask})[0].argmax(1)
    y[:40] = (y[:40] + 1) % 3  # 10 % wrong: accuracy 90 % exactly
    np.savez(tmp_path / "tokens.npz", input_ids=ids, attention_mask=mask, y=y)
    out = tmp_path / "out"
    r = studio("run", str(path), "--recipe", RECIPE, "--data", str(tmp_path / "tokens.npz"), "--out", str(out),
               "--rounds", "1", "--batches", "1", "-q")
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "report.json").read_text())["stages"][0]["measurement"]
    assert m["quality_label"] == "accuracy" and m["samples"] == 80
    confusion = np.array(m["confusion"])
    assert confusion.shape == (3, 3) and confusion.sum() == 80
    assert m["accuracy"] == pytest.approx(np.trace(confusion) / 80)
    assert 0 < m["f1"] <= 1 and 0 < m["precision"] <= 1 and 0 < m["recall"] <= 1
    html = (out / "report.html").read_text()
    assert "F1 (macro)" in html and "<th>accuracy</th>" in html
