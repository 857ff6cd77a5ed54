"""The INT8 pass's calibration runs in a child process for a big model (the window froze 50-180 ms
at onnxruntime's augment_graph saves and its compute_data / save_tensors_data on BERT-base): the
same ranges file as in-process, the same progress per batch, a cancel or a closed progress
generator kills the child and leaves no file behind, a hang ends at its time budget, and the child
does not import torch. Every child here is a real `studio _quantize` process."""

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

from studio.core import zoo
from studio.core.convert import run_session_all, session, to_onnx_proto
from studio.core.data import random_inputs
from studio.core.errors import Cancelled, StudioError
from studio.core import child
from studio.core.passes import quantize_child
from studio.core.passes.base import Context
from studio.core.passes.quantize import (Setting, _graph_facts, _pre_process, _reporting, _Trial, calibrate,
                                         input_metas)
from studio.core.signature import Inputs

ROOT = Path(__file__).resolve().parents[2]


def _children(verb: str = "_quantize") -> list[str]:
    """Command lines of this process's live `studio VERB` children (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            state = stat.rsplit(")", 1)[1].split()[0]
            line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
        if parent == os.getpid() and state != "Z" and verb in line:
            found.append(line)
    return found


def _trial(tmp_path, name="cnn", samples=32, batch=8):
    """A _Trial as the pass builds it, its scratch folder tmp_path/out (empty), the model's files beside."""
    model = zoo.load(name)
    proto = to_onnx_proto(model)
    onnx.save_model(proto, str(tmp_path / "fp32.onnx"))
    pre, pre_proto = _pre_process(tmp_path / "fp32.onnx", tmp_path / "pre.onnx")
    data = random_inputs(model.input_shape, samples + 8)
    x = data.shaped(data.x_train, model.input_shape)
    reference = run_session_all(session(str(tmp_path / "fp32.onnx")), x[samples:])
    (tmp_path / "out").mkdir()
    trial = _Trial(proto, tmp_path / "out" / "int8.onnx", pre, pre_proto.graph, _graph_facts(pre_proto), [],
                   x[:samples], x[samples:], reference, None, Context(data=data))
    trial.batch = batch
    return trial, Setting("uint8", True, "minmax", samples)


def _ranges(path: Path) -> dict:
    """The calibration cache's ranges, every number as written. (Its tensors' order is that of a
    set of names, which differs between two processes: the bytes do, in-process too.)"""
    ranges = json.loads(path.read_text())["data"]
    assert len(ranges) > 3 and all(len(r["lowest"]["data"]) == 1 for r in ranges.values())
    return ranges


def _request(trial, cache, augmented, streams=1):
    return {"pre": str(trial.pre), "op_types": sorted(trial.facts.quantizable), "augmented": str(augmented),
            "method": "minmax", "streams": streams, "batch": trial.batch, "cache": str(cache),
            "metas": [[m.name, m.dtype] for m in input_metas(trial.proto)]}


@pytest.mark.parametrize("streams", [1, 2])
def test_the_child_writes_the_ranges_made_in_process_and_reports_each_batch(tmp_path, streams):
    trial, _ = _trial(tmp_path)
    here, there = [], []
    calibrate(trial.pre, sorted(trial.facts.quantizable), tmp_path / "a.onnx", "minmax", streams,
              input_metas(trial.proto), trial.x_pool, trial.batch, tmp_path / "here.json",
              report=lambda d, t: here.append((d, t)))
    quantize_child.ranges_in_child(_request(trial, tmp_path / "child.json", tmp_path / "b.onnx", streams),
                                   trial.x_pool, lambda d, t: there.append((d, t)))
    assert _ranges(tmp_path / "child.json") == _ranges(tmp_path / "here.json")
    assert there == here == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]  # once a batch, counting up


def test_a_big_model_is_calibrated_in_the_child_with_the_same_ranges(tmp_path, monkeypatch):
    """Through _Trial.ranges: a model over CHILD_OVER (lowered here, so the small CNN counts as big)
    is calibrated in the child, the same file as the in-process calibration of a small one."""
    trial, setting = _trial(tmp_path)
    reports = []
    path = trial.ranges(setting, lambda d, t: reports.append((d, t)))
    assert trial.calibrated[("minmax", 32)]["child"] is False
    here = _ranges(path)
    path.unlink()
    trial.calibrated.clear()
    monkeypatch.setattr(quantize_child, "CHILD_OVER", 0)
    child_reports = []
    assert trial.ranges(setting, lambda d, t: child_reports.append((d, t))) == path
    assert trial.calibrated[("minmax", 32)]["child"] is True
    assert _ranges(path) == here
    assert child_reports == reports == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no augmented model left
    assert not _children()


def test_named_inputs_and_constants_reach_the_child_as_they_are(tmp_path):
    """Samples of several named inputs (signature.Inputs, a constant among them) go to the child
    in an .npz read without pickles; the child feeds the same batches."""
    x = Inputs({"ids": np.arange(40 * 6, dtype=np.int64).reshape(40, 6) % 7,
                "state": np.random.default_rng(0).standard_normal((40, 2, 3)).astype(np.float32)},
               {"rate": np.array(16000)}, {"state": 1})
    child.write_samples(x, tmp_path / "s.npz")
    layout = child.write_samples(x, tmp_path / "s.npz")
    back = child.read_samples(tmp_path / "s.npz", json.loads(json.dumps(layout)))
    assert back.names == x.names and back.axes == x.axes
    for name in x.arrays:
        assert back.arrays[name].dtype == x.arrays[name].dtype and np.array_equal(back.arrays[name], x.arrays[name])
    assert np.array_equal(back.constants["rate"], x.constants["rate"])
    plain = np.ones((5, 3), np.float32)
    assert child.write_samples(plain, tmp_path / "p.npz") == {}
    assert np.array_equal(child.read_samples(tmp_path / "p.npz", {}), plain)
    np.savez(tmp_path / "o.npz", x=np.array([{"a": 1}], dtype=object))  # a pickle is never read
    with pytest.raises(ValueError):
        child.read_samples(tmp_path / "o.npz", {})


def test_a_cancel_kills_the_calibration_child_and_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(quantize_child, "CHILD_OVER", 0)
    trial, setting = _trial(tmp_path, samples=256, batch=1)  # 256 batches: still calibrating at the cancel
    cancelled_at = []

    def report(done, total):
        if done == 1 and not cancelled_at:
            trial.context.cancel_event.set()
            cancelled_at.append(time.perf_counter())

    with pytest.raises(Cancelled):
        trial.ranges(setting, report)
    assert time.perf_counter() - cancelled_at[0] < 0.5  # killed, not waited out
    assert not _children()
    assert list((tmp_path / "out").iterdir()) == []  # no ranges, no augmented model


def test_a_closed_progress_generator_kills_the_child(tmp_path, monkeypatch):
    """The window drops a job's progress generator (closed, no cancel set): the try's child dies."""
    monkeypatch.setattr(quantize_child, "CHILD_OVER", 0)
    trial, setting = _trial(tmp_path, samples=256, batch=1)
    steps = _reporting(lambda report: trial.run(setting, "as configured", report), 0.2, 0.1,
                       trial.context.check_cancelled)
    for _fraction, message in steps:
        if message.startswith("calibrating: batch 3/"):
            break
    assert _children()
    began = time.perf_counter()
    steps.close()
    assert time.perf_counter() - began < 2.0
    assert not _children() and not trial.context.cancel_event.is_set()
    assert list((tmp_path / "out").iterdir()) == []


def test_a_closed_generator_or_cancel_kills_the_quantize_child_too(tmp_path):
    trial, setting = _trial(tmp_path)
    cache = trial.ranges(setting)
    abandoned = threading.Event()
    threading.Timer(0.2, abandoned.set).start()
    request = {"input": str(trial.pre), "output": str(tmp_path / "q.onnx"), "cache": str(cache), "per_channel": True,
               "reduce_range": False, "activations": "uint8", "op_types": None, "nodes_to_exclude": [],
               "method": "minmax"}
    began = time.perf_counter()
    with pytest.raises(Cancelled):
        quantize_child.quantize_in_child(request, None, 1 << 20, abandoned)
    assert time.perf_counter() - began < 1.0 and not _children()


def test_a_child_past_its_time_budget_is_stopped(tmp_path):
    trial, _ = _trial(tmp_path)
    began = time.perf_counter()
    with pytest.raises(StudioError, match="budget") as raised:
        quantize_child.ranges_in_child(_request(trial, tmp_path / "r.json", tmp_path / "a.onnx"), trial.x_pool,
                                       seconds=0.3)
    assert "\n" not in str(raised.value) and not isinstance(raised.value, Cancelled)
    assert time.perf_counter() - began < 2.0 and not _children()
    # the budget grows with the work: BERT-base's weights and 256 samples get far more than the CNN's
    assert child.budget(434 << 20, 256, 300 << 20) > 10 * child.budget(1 << 20, 32, 1 << 20) / 2
    assert child.budget(434 << 20) > child.START_S + 600


def test_an_error_in_the_calibration_child_is_one_line(tmp_path):
    trial, _ = _trial(tmp_path)
    (tmp_path / "broken.onnx").write_bytes(b"\x08\x07not a model at all")
    request = {**_request(trial, tmp_path / "r.json", tmp_path / "a.onnx"), "pre": str(tmp_path / "broken.onnx")}
    with pytest.raises(StudioError) as raised:
        quantize_child.ranges_in_child(request, trial.x_pool)
    assert "\n" not in str(raised.value) and str(raised.value) and not isinstance(raised.value, Cancelled)
    assert not (tmp_path / "r.json").exists()


def test_the_calibration_child_does_not_import_torch(tmp_path):
    trial, _ = _trial(tmp_path)
    layout = child.write_samples(trial.x_pool, tmp_path / "s.npz")
    request = {**_request(trial, tmp_path / "r.json", tmp_path / "a.onnx"), "task": "ranges",
               "samples": str(tmp_path / "s.npz"), "layout": layout, "reply": str(tmp_path / "reply.json")}
    (tmp_path / "request.json").write_text(json.dumps(request))
    code = ("import sys; from studio.cli import main; main(['_quantize', sys.argv[1]]); "
            "print('torch' in sys.modules, 'PySide6' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "request.json")], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False False"
    assert json.loads((tmp_path / "reply.json").read_text()) == {} and (tmp_path / "r.json").exists()


def test_a_model_of_named_int64_inputs_quantizes_the_same_through_the_child(tmp_path, monkeypatch):
    """A tiny BERT (token ids and a mask, int64) through the whole pass: calibrated, quantized and
    compared with the float stage in the children (CHILD_OVER lowered) it gives the model and the
    score the in-process pass gives."""
    from studio.core import outputs_child
    from studio.core.io import load
    from studio.core.passes.registry import create
    from studio.core.training import drain
    from tests.core.multi_io_models import cases, export_onnx

    module, args, names, dynamic, _ = cases()["tiny_bert"]
    model = load(export_onnx(module, args, names, dynamic, tmp_path / "bert.onnx", dynamo=False))
    data = random_inputs(model.input_shape, 64, model.signature)
    assert isinstance(data.x_train, Inputs) and data.x_train.arrays["input_ids"].dtype == np.int64
    results = []
    for child_over in (quantize_child.CHILD_OVER, 0):
        monkeypatch.setattr(quantize_child, "CHILD_OVER", child_over)
        monkeypatch.setattr(outputs_child, "CHILD_OVER", child_over)
        monkeypatch.setattr(outputs_child, "ENABLED", child_over == 0)
        pass_ = create("quantize.int8_static", calibration_samples=16, validation_samples=16, remedies=False,
                       keep_slow_float=False)
        results.append(drain(pass_.apply(model, Context(data=data))))
    (here, there) = results
    assert [t["calibration"]["child"] for t in (here.tries[0], there.tries[0])] == [False, True]
    assert here.tries[0]["calibration"]["samples"] == there.tries[0]["calibration"]["samples"] == 16
    assert here.layers and here.layers == there.layers and here.tries[0]["score"] == there.tries[0]["score"]
    assert there.model.obj.SerializeToString() == here.model.obj.SerializeToString()
    assert not _children()


def test_a_histogram_calibration_in_process_prints_nothing_on_stdout(tmp_path, capfd):
    """onnxruntime's histogram calibrators print their steps ("Collecting tensor data and making
    histogram ...") with print(): in-process they went to stdout, into `studio run --json`'s
    JSON (a search's best recipe with percentile calibration failed to replay). They go to stderr."""
    trial, _ = _trial(tmp_path)
    calibrate(trial.pre, sorted(trial.facts.quantizable), tmp_path / "a.onnx", "percentile", 1,
              input_metas(trial.proto), trial.x_pool, trial.batch, tmp_path / "here.json")
    out, err = capfd.readouterr()
    assert len(json.loads((tmp_path / "here.json").read_text())) > 3 and out == ""
    assert "histogram" in err
