"""A big model's outputs and zipped size are computed in a child process (`studio _outputs`), so
the window's process has no Python running beside onnxruntime to hand the GIL to (the window froze
50-110 ms at a time while BERT-base was measured). Small models run in-process; CHILD_OVER is
lowered here so tiny models take the child's path, and every number must equal the in-process one.
Every child here is a real process."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from studio.core import convert, evaluate, outputs_child
from studio.core.data import random_inputs
from studio.core.errors import Cancelled, StudioError
from studio.core.evaluate import measure_steps
from studio.core.io import load
from studio.core.training import drain
from tests.core.multi_io_models import cases, export_onnx
from tests.core.test_calibration_child import _children

ROOT = Path(__file__).resolve().parents[2]
def test_only_the_window_runs_big_models_in_a_child(monkeypatch):
    """The command line keeps one process (its memory goal: the child's session came on top of
    its copy of the model); the window turns the child on for models over CHILD_OVER."""
    monkeypatch.setattr(outputs_child, "ENABLED", False)
    assert not outputs_child.wanted(1 << 40)
    monkeypatch.setattr(outputs_child, "ENABLED", True)
    assert outputs_child.wanted(outputs_child.CHILD_OVER + 1) and not outputs_child.wanted(outputs_child.CHILD_OVER)


NUMBERS = ("size_bytes", "zip_bytes", "parameters", "nonzeros", "macs", "samples", "quality", "quality_label",
           "agreement", "cosine", "classifier")


def _measured(model, data, child_over, monkeypatch):
    monkeypatch.setattr(outputs_child, "ENABLED", True)  # as the window sets it
    monkeypatch.setattr(outputs_child, "CHILD_OVER", child_over)
    keep: dict = {}
    m = drain(measure_steps(model, data, keep=keep, is_reference=True))
    return m, keep["outputs"]


def _same(here, there):
    (m, outs), (n, theirs) = here, there
    for name in NUMBERS:
        assert getattr(m, name) == getattr(n, name), name
    assert m.fidelity == n.fidelity
    assert len(outs) == len(theirs)
    for a, b in zip(outs, theirs):
        assert a.dtype == b.dtype and np.array_equal(a, b)


@pytest.mark.parametrize("name", list(cases()))
def test_several_inputs_and_outputs_measure_the_same_in_the_child(tmp_path, name, monkeypatch):
    """Every model shape of the multi-io corpus (int64 ids, a constant input, a state on axis 1,
    three outputs, a dict of outputs), opened as the window opens it: the child's outputs, size,
    zip and quality equal the in-process ones."""
    module, args, names, dynamic, flags = cases()[name]
    model = load(export_onnx(module, args, names, dynamic, tmp_path / f"{name}.onnx", dynamo=False), isolate=True)
    if flags:  # the sizes and values a user gives with --input
        model = model.with_signature(model.io.with_overrides(flags[1::2]))
    data = random_inputs(model.input_shape, 40, model.signature)
    here = _measured(model, data, 1 << 40, monkeypatch)
    there = _measured(model, data, 0, monkeypatch)
    _same(here, there)
    assert len(here[1]) == len(onnx.load(str(tmp_path / f"{name}.onnx")).graph.output)
    assert not _children("_outputs")


def _two_in_two_out(path: Path, batch: int | str = "batch") -> Path:
    """x [batch, 256] and z [batch, 256] -> (x @ W + z, relu(x @ W @ W2)): W, W2 256x256 floats (256 KB
    each: big enough to stay in the file when the window opens it, and to be mapped from it)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((256, 256)).astype(np.float32), "W")  # raw bytes, as exporters write
    w2 = numpy_helper.from_array(rng.standard_normal((256, 256)).astype(np.float32), "W2")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "z"], ["sum"]),
             helper.make_node("MatMul", ["h", "W2"], ["g"]), helper.make_node("Relu", ["g"], ["act"])]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 256]),
                                             helper.make_tensor_value_info("z", TensorProto.FLOAT, [batch, 256])],
                              [helper.make_tensor_value_info("sum", TensorProto.FLOAT, [batch, 256]),
                               helper.make_tensor_value_info("act", TensorProto.FLOAT, [batch, 256])], [w, w2])
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_tensors_left_in_the_users_file_are_mapped_by_the_child_and_measure_the_same(tmp_path, monkeypatch):
    model = load(_two_in_two_out(tmp_path / "two.onnx"), isolate=True)
    assert model.lazy is not None  # the window's load: the weights still in the file
    data = random_inputs(model.input_shape, 300, model.signature)
    here = _measured(model, data, 1 << 40, monkeypatch)
    views = []
    monkeypatch.setattr(evaluate, "mapped_view", lambda *a: views.append(convert.mapped_view(*a)) or views[-1])
    there = _measured(model, data, 0, monkeypatch)
    _same(here, there)
    assert len(views) == 1 and not views[0].exists()  # the child ran on the view; it went with the scratch folder
    assert len(there[1]) == 2 and there[0].zip_bytes > 0
    assert model.lazy is not None  # nothing read into the model


def test_the_child_reports_progress_and_a_cancel_kills_it(tmp_path):
    """A batch pinned to 1 (512 calls): progress comes from the child as it runs; a cancel after
    the first report kills it at once and nothing is left running."""
    path = _two_in_two_out(tmp_path / "pinned.onnx", batch=1)
    x = random_inputs((1, 256), 4000, load(path).signature).x_test
    stopped = threading.Event()
    seen = []
    steps = outputs_child.outputs_steps(path, None, x, zipped=True, stop=stopped.is_set)
    with pytest.raises(Cancelled):
        for kind, fraction in steps:
            seen.append((kind, fraction))
            if not stopped.is_set():
                stopped.set()
                began = time.perf_counter()
    assert seen[0][0] == "ran" and 0 < seen[0][1] < 0.5
    assert time.perf_counter() - began < 1.0 and not _children("_outputs")


@pytest.mark.parametrize("steps_of", [outputs_child.outputs_steps, outputs_child.outputs])
def test_a_closed_generator_kills_the_child(tmp_path, steps_of):
    path = _two_in_two_out(tmp_path / "pinned.onnx", batch=1)
    x = random_inputs((1, 256), 4000, load(path).signature).x_test
    steps = steps_of(path, None, x)
    next(steps)
    assert _children("_outputs")
    steps.close()
    assert not _children("_outputs")


def test_outputs_gives_what_an_in_process_run_gives(tmp_path):
    """outputs(): the child's run in convert.iter_session_all's shape (fractions, then the outputs),
    as the INT8 pass's float reference and comparisons take it."""
    path = _two_in_two_out(tmp_path / "two.onnx")
    x = random_inputs((1, 256), 3000, load(path).signature).x_test  # 600 samples: 3 batches
    child_steps, local_steps = outputs_child.outputs(path, None, x), convert.iter_session_all(convert.session(path), x)
    there, here = drain(child_steps), drain(local_steps)
    assert len(there) == len(here) == 2
    for a, b in zip(there, here):
        np.testing.assert_array_equal(a, b)
    fractions = list(outputs_child.outputs(path, None, x))
    # as in-process, to the 4 decimals the child prints
    assert fractions == pytest.approx(list(convert.iter_session_all(convert.session(path), x)), abs=1e-4)
    assert len(fractions) == 2 and 0 < fractions[0] < fractions[1] < 1


def test_onnxruntime_refusing_the_model_is_one_line(tmp_path):
    (tmp_path / "broken.onnx").write_bytes(b"\x08\x07not a model at all")
    with pytest.raises(StudioError) as raised:
        drain(outputs_child.outputs_steps(tmp_path / "broken.onnx", None, np.zeros((4, 3), np.float32)))
    assert "\n" not in str(raised.value) and "onnxruntime" in str(raised.value)
    assert not isinstance(raised.value, Cancelled) and not _children("_outputs")


def test_the_outputs_child_does_not_import_torch_or_qt_and_runs_below_its_parent(tmp_path):
    """Its start is part of every big model's measurement: onnxruntime and numpy only, also where
    it counts the MACs. It runs at a lower CPU priority than the process that started it
    (child.lower_priority)."""
    from studio.core import child
    from studio.core.graph import input_sizes
    from studio.core.stats import count_macs

    path = _two_in_two_out(tmp_path / "two.onnx")
    model = load(path)
    x = random_inputs((1, 256), 8, model.signature).x_test
    layout = child.write_samples(x, tmp_path / "s.npz")
    request = {"model": str(path), "whole": str(path), "samples": str(tmp_path / "s.npz"), "layout": layout,
               "zipped": False, "reply": str(tmp_path / "reply.json"),
               "macs": {"input_shape": model.input_shape, "sizes": input_sizes(model)}}
    (tmp_path / "request.json").write_text(json.dumps(request))
    code = ("import os, sys; from studio.cli import main; main(['_outputs', sys.argv[1]]); "
            "print('torch' in sys.modules, 'PySide6' in sys.modules, os.getpriority(os.PRIO_PROCESS, 0))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "request.json")], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    here = os.getpriority(os.PRIO_PROCESS, 0)
    assert done.stdout.strip().splitlines()[-1] == f"False False {min(19, here + child.NICE)}"
    answer = json.loads((tmp_path / "reply.json").read_text())
    assert answer == {"names": ["sum", "act"], "zip_bytes": None, "macs": count_macs(model)} and answer["macs"] > 0
    assert np.load(tmp_path / "out1.npy").shape == (len(x), 256)


def test_a_cancelled_measurement_kills_its_child(tmp_path, monkeypatch):
    """The window's cancel during a big model's measurement: Cancelled, the child gone at once."""
    monkeypatch.setattr(outputs_child, "ENABLED", True)
    monkeypatch.setattr(outputs_child, "CHILD_OVER", 0)
    model = load(_two_in_two_out(tmp_path / "pinned.onnx", batch=1), isolate=True)
    data = random_inputs(model.input_shape, 4000, model.signature)
    cancel = threading.Event()
    with pytest.raises(Cancelled):
        for fraction, message in measure_steps(model, data, cancel=cancel, is_reference=True):
            if message.startswith("quality on") and fraction > 0.3 and not cancel.is_set():
                assert _children("_outputs")
                cancel.set()
                began = time.perf_counter()
    assert time.perf_counter() - began < 1.0 and not _children("_outputs")
