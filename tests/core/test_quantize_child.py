"""onnxruntime's quantize_static runs in a child process for the INT8 pass's tries (the window's
UI thread froze while it held the GIL): the INT8 file is the one it writes in-process, an error
comes back in one line, and a cancel ends the child."""

import threading
import time

import onnx
import pytest

from studio.core import zoo
from studio.core.convert import to_onnx_proto
from studio.core.data import random_inputs
from studio.core.errors import Cancelled, StudioError
from studio.core.passes.base import Context
from studio.core.passes.quantize import _calibrator, _graph_facts, _pre_process, calibration_reader
from studio.core.passes.quantize_child import load_written, quantize_file, quantize_in_child


def _prepared(tmp_path, name="cnn"):
    """A pre-processed float model and a min-max calibration cache of it, as the pass makes them."""
    from onnxruntime.quantization.calibrate import save_tensors_data

    model = zoo.load(name)
    proto = to_onnx_proto(model)
    onnx.save_model(proto, str(tmp_path / "fp32.onnx"))
    pre, pre_proto = _pre_process(tmp_path / "fp32.onnx", tmp_path / "pre.onnx")
    data = random_inputs(model.input_shape, 16)
    x = data.shaped(data.x_train, model.input_shape)
    calibrator = _calibrator(pre, sorted(_graph_facts(pre_proto).quantizable), tmp_path / "augmented.onnx", "minmax")
    calibrator.collect_data(calibration_reader(proto, x, 8, Context(data=data)))
    save_tensors_data(calibrator.compute_data(), tmp_path / "ranges.json")
    return pre, tmp_path / "ranges.json"


def _request(pre, cache, out, **changes):
    return {"input": str(pre), "output": str(out), "cache": str(cache), "per_channel": True, "reduce_range": False,
            "activations": "uint8", "op_types": None, "nodes_to_exclude": [], "method": "minmax", **changes}


def test_the_child_writes_the_bytes_quantize_static_writes_in_process(tmp_path):
    pre, cache = _prepared(tmp_path)
    for changes in ({}, {"activations": "int8", "per_channel": False, "reduce_range": True}):
        quantize_file(_request(pre, cache, tmp_path / "here.onnx", **changes))
        answer = quantize_in_child(_request(pre, cache, tmp_path / "child.onnx", **changes))
        assert answer["weights"] == []
        here = (tmp_path / "here.onnx").read_bytes()
        assert len(here) > 1000 and (tmp_path / "child.onnx").read_bytes() == here
        # the model read back without a whole parse here: the big weights from the file, one at a time
        assert answer["located"] and answer["skeleton"] and len(answer["skeleton"]) < len(here)
        proto = load_written(tmp_path / "child.onnx", answer)
        assert proto.SerializeToString() == onnx.load(str(tmp_path / "child.onnx")).SerializeToString()
        assert any(n.op_type == "DequantizeLinear" for n in proto.graph.node)


def test_an_error_in_the_child_is_one_line(tmp_path):
    pre, cache = _prepared(tmp_path)
    (tmp_path / "broken.onnx").write_bytes(b"\x08\x07not a model at all")
    with pytest.raises(StudioError) as raised:
        quantize_in_child(_request(tmp_path / "broken.onnx", cache, tmp_path / "out.onnx"))
    assert "\n" not in str(raised.value) and str(raised.value)
    assert not (tmp_path / "out.onnx").exists()


def test_a_cancel_kills_the_child(tmp_path):
    pre, cache = _prepared(tmp_path)
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()  # the child is still importing onnxruntime (~1 s)
    began = time.perf_counter()
    with pytest.raises(Cancelled):
        quantize_in_child(_request(pre, cache, tmp_path / "out.onnx"), cancel)
    assert time.perf_counter() - began < 1.0  # not waited out
    time.sleep(3)  # a child still alive would have written its model by now
    assert not (tmp_path / "out.onnx").exists()


def test_a_small_model_is_quantized_here_and_a_big_one_in_the_child(tmp_path):
    """The child's start (its imports: 1-2 s) is paid only where the GIL matters: weights over
    CHILD_OVER bytes, counted from the model (the pre-processed file keeps them in a sidecar, so
    its own size says nothing). Either way the same file and the same answer's weights."""
    from studio.core.convert import weight_bytes
    from studio.core.passes import quantize_child

    pre, cache = _prepared(tmp_path)
    small = weight_bytes(onnx.load(str(pre)))
    assert 0 < small < quantize_child.CHILD_OVER
    here = quantize_child.quantize(_request(pre, cache, tmp_path / "here.onnx"), small)
    assert "located" not in here and here["weights"] == []  # no child: no skeleton sent
    child = quantize_child.quantize(_request(pre, cache, tmp_path / "child.onnx"), quantize_child.CHILD_OVER + 1)
    assert child["located"] and child["weights"] == []
    assert (tmp_path / "child.onnx").read_bytes() == (tmp_path / "here.onnx").read_bytes()
    proto = load_written(tmp_path / "here.onnx", here)
    assert proto.SerializeToString() == onnx.load(str(tmp_path / "here.onnx")).SerializeToString()


def test_the_debug_model_is_made_in_a_child_as_in_process(tmp_path):
    """The last INT8 remedy's qdq_loss_debug model (every activation an output) is made in a child
    for a big model (its load with shape inference and its save held the GIL 624 and 236 ms on
    BERT-base's INT8 model): the same file as in-process; a broken model fails in one line."""
    from studio.core.passes.quantize_child import CHILD_OVER, augment_for_debug

    pre, cache = _prepared(tmp_path)
    quantize_file(_request(pre, cache, tmp_path / "int8.onnx"))
    augment_for_debug(tmp_path / "int8.onnx", tmp_path / "here.onnx", weights=0)
    augment_for_debug(tmp_path / "int8.onnx", tmp_path / "child.onnx", weights=CHILD_OVER + 1)
    # the same model (onnxruntime names its Reshapes by the clock and adds outputs in a set's order,
    # which differs between processes): the same outputs, the same values for them
    import numpy as np

    from studio.core.convert import session

    here, child = session(tmp_path / "here.onnx"), session(tmp_path / "child.onnx")
    names = sorted(o.name for o in here.get_outputs())
    assert names == sorted(o.name for o in child.get_outputs())
    assert len(names) > len(onnx.load(str(tmp_path / "int8.onnx")).graph.output)
    first = here.get_inputs()[0]
    feed = {first.name: np.random.default_rng(0).standard_normal([d if isinstance(d, int) else 2 for d in first.shape])
            .astype(np.float32)}
    got_here = dict(zip([o.name for o in here.get_outputs()], here.run(None, feed)))
    got_child = dict(zip([o.name for o in child.get_outputs()], child.run(None, feed)))
    for name in names:
        np.testing.assert_array_equal(got_here[name], got_child[name])
    (tmp_path / "broken.onnx").write_bytes(b"\x08\x07not a model at all")
    with pytest.raises(StudioError) as raised:
        augment_for_debug(tmp_path / "broken.onnx", tmp_path / "out.onnx", weights=CHILD_OVER + 1)
    assert "\n" not in str(raised.value)


def test_the_window_pre_processes_a_big_model_in_a_child_as_in_process(tmp_path, monkeypatch):
    """In the window (outputs_child on) a big model's pre-processing, onnxruntime's graph optimizer,
    runs in a child: building and freeing BERT-base's session froze the window. The same graph and
    the same weights as in-process; no session kept (the float reference runs in a child too); a
    cancel stops it instead of falling back to the unprocessed model; a graph the optimizer
    refuses falls back to the model as given, as in-process."""
    from studio.core import outputs_child

    proto = to_onnx_proto(zoo.load("cnn"))
    onnx.save_model(proto, str(tmp_path / "fp32.onnx"))
    (tmp_path / "here").mkdir()
    (tmp_path / "child").mkdir()
    kept: dict = {}
    here, here_proto = _pre_process(tmp_path / "fp32.onnx", tmp_path / "here" / "pre.onnx", kept, weights=10**9)
    assert here == tmp_path / "here" / "pre.onnx" and "session" in kept  # (outputs_child off: in-process)
    monkeypatch.setattr(outputs_child, "ENABLED", True)
    monkeypatch.setattr(outputs_child, "CHILD_OVER", 0)
    kept = {}
    child, child_proto = _pre_process(tmp_path / "fp32.onnx", tmp_path / "child" / "pre.onnx", kept, weights=10**6)
    assert child == tmp_path / "child" / "pre.onnx" and kept == {}
    assert child_proto.SerializeToString() == here_proto.SerializeToString()
    assert (tmp_path / "child" / "pre.onnx.data").read_bytes() == (tmp_path / "here" / "pre.onnx.data").read_bytes()
    assert any(p.key == "onnx.quant.pre_process" for p in onnx.load(str(child), load_external_data=False).metadata_props)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        _pre_process(tmp_path / "fp32.onnx", tmp_path / "cancelled.onnx", {}, weights=10**6, cancel=cancel)
    proto.graph.node[0].op_type = "NoSuchOp"  # onnx reads it, onnxruntime refuses it
    onnx.save_model(proto, str(tmp_path / "odd.onnx"))
    odd, odd_proto = _pre_process(tmp_path / "odd.onnx", tmp_path / "odd-pre.onnx", {}, weights=10**6)
    assert odd == tmp_path / "odd.onnx" and odd_proto.graph.node[0].op_type == "NoSuchOp"
    assert not (tmp_path / "odd-pre.onnx").exists()
