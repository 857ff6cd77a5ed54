"""ONNX files whose batch axis is pinned (torch.onnx.export without dynamic_axes, the common
case): calibration, measurement and latency at other batch sizes must still work."""

import numpy as np
import onnx
import torch

from studio.core import io, zoo
from studio.core.convert import fixed_batch, session
from studio.core.data import digits
from studio.core.pipeline import run
from studio.core.training import drain
from studio.core.recipe import Recipe, RecipeStep


def fixed_batch_file(tmp_path, batch=1):
    m = zoo.load("cnn")
    path = tmp_path / f"cnn-b{batch}.onnx"
    torch.onnx.export(m.obj.eval(), (torch.randn(batch, 1, 8, 8),), str(path), dynamo=False)
    return path


def test_fixed_batch_is_found(tmp_path):
    proto = onnx.load(str(fixed_batch_file(tmp_path, 2)))
    assert fixed_batch(proto) == 2 and fixed_batch(session(proto)) == 2
    from studio.core.convert import to_onnx_proto

    dynamic = to_onnx_proto(zoo.load("cnn"))
    assert fixed_batch(dynamic) is None and fixed_batch(session(dynamic)) is None


def test_int8_run_on_a_batch_1_file(tmp_path):
    model = io.load(str(fixed_batch_file(tmp_path)))
    assert model.framework == "onnx"
    recipe = Recipe([RecipeStep("quantize.int8_static", {"calibration_samples": 10})])
    result = drain(run(model, recipe, digits(), latency_batches=(1, 8), latency_rounds=2))
    int8 = result.stages[1]
    assert int8.measurement.accuracy > 0.9
    assert any(n.op_type == "QuantizeLinear" for n in int8.model.obj.graph.node)
    for stage in result.stages:  # batch 8 timed as 8 calls of the pinned batch 1
        lat = stage.measurement.latency_ms
        assert set(lat) == {1, 8} and lat[8] > lat[1] > 0
    assert np.isfinite([s.measurement.latency_ms[8] for s in result.stages]).all()


def _batch4_file(tmp_path):
    """A classifier exported with its batch fixed at 4 whose graph also reshapes to [4, ...]
    (so its torch conversion takes only batches of 4, like ultralytics' YOLO at batch 1)."""

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.fc = torch.nn.Linear(4 * 8 * 8, 10)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).view(4, 4 * 8 * 8))

    path = tmp_path / "b4.onnx"
    torch.onnx.export(Net().eval(), (torch.randn(4, 1, 8, 8),), str(path), dynamo=False)
    return path


def test_a_batch_4_file_measures_every_sample(tmp_path):
    """Batch fixed at 4, 10 held-out samples: the last partial batch (2) is padded with repeated
    samples and their outputs dropped, in onnxruntime and in the torch conversion; fine-tuning
    drops its last partial batch and the stage says how many samples an epoch used."""
    from studio.core.convert import predict_all, run_session_all
    from studio.core.data import Data
    from studio.core.passes.onnx_torch import onnx_to_torch

    path = _batch4_file(tmp_path)
    model = io.load(str(path))
    assert fixed_batch(model.obj) == 4
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 1, 8, 8)).astype(np.float32)
    ref = ort_rows(path, x)
    got = run_session_all(session(model.obj), x)[0]
    assert got.shape == (10, 10) and np.allclose(got, ref, atol=1e-5)
    converted = onnx_to_torch(model)
    assert converted.meta["fixed_batch"] == 4
    assert np.allclose(predict_all(converted, x)[0], ref, atol=1e-4)  # 3 calls, the last one padded

    data = Data("b4", rng.standard_normal((10, 1, 8, 8)).astype(np.float32), x,
                rng.integers(0, 10, 10), rng.integers(0, 10, 10))
    recipe = Recipe([RecipeStep("finetune", {"epochs": 1})])
    result = drain(run(model, recipe, data, latency_batches=(1,), latency_rounds=1))
    tuned = result.stages[1]
    assert "each epoch trained on 8 of the 10 training samples" in tuned.summary
    assert any("last partial batch of 2 dropped" in w for w in tuned.warnings)
    assert tuned.measurement.agreement is not None  # measured on all 10 held-out samples
    assert len(predict_all(tuned.model, x)[0]) == 10


def ort_rows(path, x):
    """Sample by sample through onnxruntime: each sample repeated to fill the batch of 4."""
    sess = session(onnx.load(str(path)))
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: np.repeat(x[i:i + 1], 4, axis=0)})[0][:1] for i in range(len(x))])


def test_streams_give_the_same_outputs_in_order(tmp_path):
    """A pinned-batch model's calls run side by side (iter_session_all's streams): the same outputs,
    in the samples' order, as one call at a time; an odd last batch is cut back; a cancel stops it."""
    import threading

    import pytest

    from studio.core.convert import iter_session_all
    from studio.core.errors import Cancelled

    sess = session(str(fixed_batch_file(tmp_path, 2)))
    x = np.random.default_rng(0).standard_normal((37, 1, 8, 8)).astype(np.float32)
    one = drain(iter_session_all(sess, x, streams=1))
    steps = iter_session_all(sess, x, streams=3)
    fractions = []
    while True:
        try:
            fractions.append(next(steps))
        except StopIteration as stop:
            many = stop.value
            break
    assert len(many) == len(one) and many[0].shape == (37, 10)
    assert np.array_equal(many[0], one[0])  # bit for bit: the same calls on the same inputs
    assert fractions == sorted(fractions) and 0 < fractions[0] and fractions[-1] < 1
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        drain(iter_session_all(sess, x, cancel=stop, streams=2))


def test_calibration_read_ahead_gives_the_same_ranges(tmp_path):
    """Static INT8 on a pinned-batch file calibrates with calls side by side (_Ahead): the ranges
    are those of onnxruntime's own one-at-a-time collection (to float32 rounding: its session runs
    a conv on the machine's cores, ours on one thread a call, and a split sum rounds differently)."""
    from onnxruntime.quantization.calibrate import CalibrationDataReader

    from studio.core.passes.quantize import _Ahead, _calibrator

    path = fixed_batch_file(tmp_path, 1)
    x = np.random.default_rng(1).standard_normal((9, 1, 8, 8)).astype(np.float32)
    name = session(str(path)).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{name: x[i:i + 1]} for i in range(len(x))])

        def get_next(self):
            return next(self.items, None)

    ranges = []
    for streams in (1, 2):
        cal = _calibrator(path, ["Conv", "Gemm", "MatMul"], tmp_path / f"aug{streams}.onnx", "minmax", streams)
        reader = Reader()
        if streams > 1:
            reader = cal.infer_session = _Ahead(cal.infer_session, reader, streams)
        cal.collect_data(reader)
        if streams > 1:
            reader.close()
        ranges.append({k: tuple(np.asarray(v.range_value).tolist()) for k, v in cal.compute_data().data.items()})
    assert ranges[0] and ranges[0].keys() == ranges[1].keys()
    for k, (low, high) in ranges[0].items():
        assert np.allclose(low, ranges[1][k][0], rtol=1e-5, atol=1e-6)
        assert np.allclose(high, ranges[1][k][1], rtol=1e-5, atol=1e-6)


def test_write_model_writes_the_bytes_of_save_model(tmp_path):
    """convert.write_model streams a model a tensor at a time (measure's scratch file, the INT8
    pass's, a large model's session): the file is byte for byte onnx.save_model's, so the sizes
    and zipped sizes measured on it are those of the file a user ships."""
    from studio.core import convert
    from studio.core.convert import to_onnx_proto, weight_bytes, write_model

    proto = to_onnx_proto(zoo.load("cnn"))
    proto.doc_string = "fields after the graph, too"
    proto.metadata_props.add(key="k", value="v")
    saved = tmp_path / "saved.onnx"
    onnx.save_model(proto, str(saved))
    old = convert.WRITE_WHOLE_UNDER
    convert.WRITE_WHOLE_UNDER = 0  # the streamed path for a small model
    try:
        write_model(proto, tmp_path / "streamed.onnx")
    finally:
        convert.WRITE_WHOLE_UNDER = old
    assert (tmp_path / "streamed.onnx").read_bytes() == saved.read_bytes()
    assert 0 < weight_bytes(proto) <= saved.stat().st_size


def _big_tensor_model():
    """A model with tensors over write_model's slice size (4 MB): float32 and float16, one with a
    field after raw_data (doc_string), and a small one."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    emb = numpy_helper.from_array(rng.random((3000, 512), dtype=np.float32), "emb")  # 6 MB
    emb.doc_string = "a field after raw_data"
    half = numpy_helper.from_array(rng.random((2100, 1024)).astype(np.float16), "half")  # 4.3 MB
    small = numpy_helper.from_array(np.ones(4, np.float32), "small")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["emb", "ids"], ["y"]), helper.make_node("Gather", ["half", "ids"], ["z"])],
        "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None), helper.make_tensor_value_info("z", TensorProto.FLOAT16, None)],
        initializer=[small, emb, half])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.doc_string = "after the graph"
    model.metadata_props.add(key="k", value="v")
    return model


def test_write_model_writes_big_tensors_as_save_model_does(tmp_path, monkeypatch):
    """The raw bytes of a tensor over 4 MB are written by write_model itself (their length from
    the dims, in slices: protobuf held the GIL for the whole tensor to size and serialize it):
    the file is onnx.save_model's byte for byte; a tensor whose raw bytes do not match its dims
    is written as protobuf writes it; so is a model whose tensors are external data."""
    from studio.core import convert
    from studio.core.convert import write_model

    monkeypatch.setattr(convert, "WRITE_WHOLE_UNDER", 0)  # the streamed path for a 10 MB model
    model = _big_tensor_model()
    onnx.save_model(model, str(tmp_path / "saved.onnx"))
    write_model(model, tmp_path / "written.onnx")
    assert (tmp_path / "written.onnx").read_bytes() == (tmp_path / "saved.onnx").read_bytes()
    assert session(str(tmp_path / "written.onnx")).run(None, {"ids": np.array([0, 5, 2099])})[0].shape == (3, 512)

    model.graph.initializer[1].raw_data = model.graph.initializer[1].raw_data[:-4]  # shorter than its dims say
    onnx.save_model(model, str(tmp_path / "saved.onnx"))
    write_model(model, tmp_path / "written.onnx")
    assert (tmp_path / "written.onnx").read_bytes() == (tmp_path / "saved.onnx").read_bytes()

    # external data: the model's tensors point into a sidecar, one of them read back into the proto
    from onnx.external_data_helper import load_external_data_for_tensor

    onnx.save_model(_big_tensor_model(), str(tmp_path / "ext.onnx"), save_as_external_data=True,
                    location="ext.onnx.data", size_threshold=1024)
    external = onnx.load(str(tmp_path / "ext.onnx"), load_external_data=False)
    assert [t.data_location for t in external.graph.initializer] == [0, 1, 1]
    load_external_data_for_tensor(external.graph.initializer[2], str(tmp_path))
    external.graph.initializer[2].data_location = onnx.TensorProto.DEFAULT
    del external.graph.initializer[2].external_data[:]
    onnx.save_model(external, str(tmp_path / "saved-ext.onnx"))
    write_model(external, tmp_path / "written-ext.onnx")
    assert (tmp_path / "written-ext.onnx").read_bytes() == (tmp_path / "saved-ext.onnx").read_bytes()
    assert session(str(tmp_path / "written-ext.onnx")).run(None, {"ids": np.array([1, 2, 3])})[1].shape == (3, 1024)


def test_model_bytes_counts_as_bytesize(tmp_path):
    """convert.model_bytes counts part by part (upb's ByteSize serializes the whole model): the same number."""
    from studio.core import convert
    from studio.core.convert import model_bytes, to_onnx_proto

    proto = to_onnx_proto(zoo.load("cnn"))
    proto.metadata_props.add(key="k", value="v" * 300)  # a length over one varint byte
    old = convert.WRITE_WHOLE_UNDER
    convert.WRITE_WHOLE_UNDER = 0
    try:
        assert model_bytes(proto) == proto.ByteSize()
    finally:
        convert.WRITE_WHOLE_UNDER = old


def test_int8_calibration_at_a_fixed_batch_says_what_it_used(tmp_path):
    """Batch fixed at 4, 10 calibration samples: calibration runs whole batches (8 samples), and
    the stage says so in one warning; 3 samples are repeated to fill one batch."""
    from studio.core.data import Data
    from studio.core.passes.base import Context
    from studio.core.passes.quantize import calibration_padding
    from studio.core.passes.registry import create
    from tests.core.test_pass_common import run as run_pass

    model = io.load(str(_batch4_file(tmp_path)))
    rng = np.random.default_rng(0)
    data = Data("b4", rng.standard_normal((40, 1, 8, 8)).astype(np.float32),
                rng.standard_normal((8, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, 40), rng.integers(0, 10, 8))
    result = run_pass(create("quantize.int8_static", calibration_samples=10, remedies=False), model, Context(data=data))
    assert result.layers
    note = "the file fixes the batch at 4: calibration used 8 of the 10 samples (the last partial batch of 2 dropped)"
    assert note in result.warnings
    assert calibration_padding(3, 4) == "the file fixes the batch at 4: calibration had 3 samples, 1 repeated to fill the batch"
    assert calibration_padding(8, 4) is None and calibration_padding(7, None) is None
