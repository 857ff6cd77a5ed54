"""The command line, run as a user runs it: a real `studio` process."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from studio.core.data import digits


def studio(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "studio", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"})


@pytest.mark.slow
def test_demo_meets_its_promise(tmp_path):
    """Issue 2's bar: pruned + INT8 demo CNN >= 10x smaller zipped, within 1 point, ONNX runs."""
    result = studio("demo", "--out", str(tmp_path), "--json", "--rounds", "3")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report == json.loads((tmp_path / "report.json").read_text())
    first, last = report["stages"][0], report["stages"][-1]
    for stage in report["stages"]:
        assert {"name", "quality", "size_bytes", "zip_bytes", "latency_ms"} <= stage.keys()
    assert first["zip_bytes"] / last["zip_bytes"] >= 10
    assert first["quality"] - last["quality"] <= 0.01
    (exported,) = report["exports"]
    assert {"path", "format", "verified", "max_abs_diff"} <= exported.keys() and exported["verified"]
    sess = ort.InferenceSession(exported["path"], providers=["CPUExecutionProvider"])
    data = digits()
    out = sess.run(None, {sess.get_inputs()[0].name: data.x_test})[0]
    assert abs((out.argmax(1) == data.y_test).mean() - last["quality"]) < 1e-9  # the table's number is the file's


def test_run_with_a_recipe_on_npz_data(tmp_path):
    data = digits()
    np.savez(tmp_path / "d.npz", x=data.x_test.reshape(-1, 64), y=data.y_test)
    (tmp_path / "r.yaml").write_text("studio_recipe: 1\npasses:\n  - id: prune.magnitude\n    sparsity: 0.5\n")
    result = studio("run", "demo:mlp", "--recipe", str(tmp_path / "r.yaml"), "--data", str(tmp_path / "d.npz"),
                    "--out", str(tmp_path / "out"), "--rounds", "1", "--batches", "1")
    assert result.returncode == 0, result.stderr
    assert "prune.magnitude" in result.stdout and "accuracy" in result.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["data"] == "d" and len(report["stages"]) == 2
    assert report["stages"][1]["measurement"]["samples"] == 72  # 20 % of the 360 samples given


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "demo:cnn", "--recipe", "missing.yaml"], "cannot read recipe"),
        (["inspect", "no/such/model.onnx"], "no/such/model.onnx"),
        (["export", "demo:cnn", "--format", "tiff", "--out", "x.tiff"], "unknown export format"),
        (["run", "demo:cnn", "--recipe", "r.yaml", "--data", "nowhere"], "unknown data"),
    ],
)
def test_errors_are_one_line_and_nonzero(tmp_path, args, message):
    (tmp_path / "r.yaml").write_text("passes: []\n")
    result = studio(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_ctrl_c_stops_cleanly_and_writes_nothing(tmp_path):
    (tmp_path / "r.yaml").write_text("passes:\n  - id: prune.magnitude\n    fine_tune_epochs: 200\n")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "studio", "run", "demo:cnn", "--recipe", str(tmp_path / "r.yaml"),
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a shell's background job (`make test &`) ignores SIGINT and children
                            # inherit that; a user's terminal does not: start as a terminal would
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    line = ""
    while "fine-tune" not in line and time.time() < deadline:  # wait until the pass is training
        line = proc.stderr.readline()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, f"signal sent after: {line!r}; stderr: {err[-1500:]!r}"
    assert "cancelled" in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_export_command_writes_a_verified_file(tmp_path):
    result = studio("export", "demo:mlp", "--format", "onnx_int8", "--data", "digits", "--out", str(tmp_path / "m.onnx"), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["verified"] and Path(info["path"]).is_file()


HOSTILE_RECIPES = Path(__file__).resolve().parents[1] / "hostile" / "recipes"


@pytest.mark.parametrize("name", ["billion_laughs.yaml", "duplicate_option.yaml", "bad_regex_ignore.yaml",
                                  "version_string.yaml", "enabled_quoted_no.yaml", "number_as_text.yaml"])
def test_hostile_recipes_exit_2_with_one_line(tmp_path, name):
    """Issue "Hostile files stay harmless": `studio run x.onnx --recipe bad.yaml` refuses the
    recipe in one line naming the file (the billion laughs used to hang here)."""
    import onnx
    import yaml
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 2), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [weight])
    onnx.save(helper.make_model(graph), tmp_path / "x.onnx")
    expected = yaml.safe_load((HOSTILE_RECIPES / "expected.yaml").read_text())[name]
    result = studio("run", str(tmp_path / "x.onnx"), "--recipe", str(HOSTILE_RECIPES / name),
                    "--out", str(tmp_path / "out"), timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith(f"studio: error: {name}: {expected}")
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == "" and not (tmp_path / "out").exists()


def test_a_model_path_alone_means_the_window(monkeypatch, tmp_path):
    """`studio model.onnx` opens the window on it (as a file manager's 'open with' does)."""
    from studio import cli

    model = tmp_path / "m.onnx"
    model.write_bytes(b"\x08\x07")
    opened = []
    monkeypatch.setattr(cli, "cmd_gui", lambda args: opened.append(args.model) or 0)
    assert cli.main([str(model)]) == 0 and opened == [str(model)]
    assert cli.main(["gui", str(model)]) == 0 and opened == [str(model)] * 2


@pytest.mark.slow
def test_run_exports_the_stage_the_recipe_ships(tmp_path):
    """`ship: fastest`: the exported file is the fastest measured stage (pruned float), not the
    slower last one (dynamic INT8 turns convs into ConvInteger)."""
    import onnx

    (tmp_path / "r.yaml").write_text("studio_recipe: 1\nship: fastest\nmax_drop: 100.0\npasses:\n"
                                     "  - id: prune.structured\n    ratio: 0.5\n  - id: quantize.int8_dynamic\n")
    result = studio("run", "demo:cnn", "--recipe", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"),
                    "--rounds", "3", "--batches", "1", "64")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["shipped"]["stage"] == 1 and "fastest at batch 64" in report["shipped"]["why"]
    assert "shipped: stage 1 prune.structured" in result.stdout
    (exported,) = report["exports"]
    ops = {n.op_type for n in onnx.load(exported["path"]).graph.node}
    assert "Conv" in ops and "ConvInteger" not in ops and exported["verified"]
