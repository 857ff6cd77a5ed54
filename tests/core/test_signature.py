"""The one description of a model's inputs and outputs: found from ONNX, TorchScript and
torch.export files, sized by --input, and used to feed, calibrate, measure and verify."""

import zipfile

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from studio.core import io
from studio.core.convert import run_session_all, session
from studio.core.data import open_data
from studio.core.errors import StudioError
from studio.core.evaluate import Measurement, fidelity, measure, quality_from_outputs
from studio.core.export import verify
from studio.core.model import Model
from studio.core.passes import Context, create
from studio.core.signature import Inputs, Signature, TensorSpec, from_onnx, from_torchscript
from studio.core.training import drain
from tests.core.multi_io_models import cases, export_onnx, trace

CASES = cases()


@pytest.fixture(scope="module")
def bert_onnx(tmp_path_factory):
    module, args, names, dynamic, _ = CASES["tiny_bert"]
    return export_onnx(module, args, names, dynamic, tmp_path_factory.mktemp("bert") / "bert.onnx", dynamo=False)


def test_onnx_signature_finds_token_ids_and_every_output(bert_onnx, tmp_path):
    sig = io.load(bert_onnx).io
    ids, mask = sig.inputs
    assert (ids.name, ids.dtype, ids.shape, ids.value_range) == ("input_ids", "int64", ("batch", 10), (0, 50))
    assert (mask.dtype, mask.value_range) == ("int64", None)  # a mask, not ids: {0, 1}
    module, args, names, dynamic, _ = CASES["three_heads"]
    three = io.load(export_onnx(module, args, names, dynamic, tmp_path / "three.onnx", dynamo=False))
    assert [o.shape for o in three.io.outputs] == [("batch", 2, 12, 12), ("batch", 4, 12, 12), ("batch", 10, 12, 12)]
    x = three.example_inputs(3)
    outs = run_session_all(session(three.obj), x)
    assert [o.shape for o in outs] == [(3, 2, 12, 12), (3, 4, 12, 12), (3, 10, 12, 12)]


def test_random_samples_keep_each_inputs_dtype_and_range(bert_onnx):
    sig = io.load(bert_onnx).io
    x = sig.random(300)
    assert x.arrays["input_ids"].dtype == np.int64 and x.arrays["input_ids"].shape == (300, 10)
    assert x.arrays["input_ids"].min() >= 0 and x.arrays["input_ids"].max() == 49
    assert set(np.unique(x.arrays["attention_mask"])) == {0, 1}


def test_overrides_size_dynamic_dims_share_symbols_and_pin_constants():
    sig = Signature([TensorSpec("a", "float32", ("batch", "seq", 8)), TensorSpec("m", "int64", ("batch", "seq")),
                     TensorSpec("sr", "int64", ())])
    assert sig.problems()[0] == "input 'a' has dynamic dims [batch, seq, 8]: give them with --input a:1,SEQ,8 (numbers)"
    sized = sig.with_overrides(["a:4,7,8", "sr=16000"])
    assert sized.input("a").shape == ("batch", 7, 8)  # the batch axis stays free
    assert sized.input("m").shape == ("batch", 7)  # same symbol: sized too
    assert sized.input("sr").value.dtype == np.int64 and int(sized.input("sr").value) == 16000
    assert sized.problems() == [] and sig.problems()  # the original is left as it was
    x = sized.random(5)
    assert x.arrays["a"].shape == (5, 7, 8) and x.constants == {"sr": 16000}
    for bad, message in [("b:1,2", "has no input 'b'; its inputs: a, m, sr"), ("a:1,2", "has 3 dims, not 2"),
                         ("a:1,x,8", "expected numbers"), ("a", "takes NAME:D0,D1,... or NAME=VALUE")]:
        with pytest.raises(StudioError, match=message):
            sig.with_overrides([bad])


def test_inputs_split_keeps_samples_aligned(tmp_path, bert_onnx):
    model = io.load(bert_onnx)
    ids = np.arange(500 * 10).reshape(500, 10) % 50
    mask = (np.arange(500)[:, None] * np.ones((1, 10), np.int64))  # row i holds i
    np.savez(tmp_path / "d.npz", input_ids=ids, attention_mask=mask)
    data = open_data(str(tmp_path / "d.npz"), model.input_shape, signature=model.io)
    assert isinstance(data.x_test, Inputs) and len(data.x_test) == 100 and len(data.x_train) == 400
    rows = data.x_test.arrays["attention_mask"][:, 0]
    assert np.array_equal(data.x_test.arrays["input_ids"], ids[rows])  # the same samples in every input
    np.savez(tmp_path / "missing.npz", input_ids=ids)
    with pytest.raises(StudioError, match="has no array 'attention_mask'"):
        open_data(str(tmp_path / "missing.npz"), model.input_shape, signature=model.io)


def test_int8_calibration_feeds_token_ids_as_int64(bert_onnx):
    model = io.load(bert_onnx)
    data = open_data("random", signature=model.io)
    result = drain(create("quantize.int8_static").apply(model, Context(data=data)))
    q = result.model.obj
    assert any(n.op_type == "DequantizeLinear" for n in q.graph.node)
    assert [i.type.tensor_type.elem_type for i in q.graph.input] == [TensorProto.INT64, TensorProto.INT64]
    m = measure(result.model, data, run_session_all(session(model.obj), data.x_test))
    assert m.quality_label == "agreement" and m.quality > 0.9 and m.samples == 256


def test_fidelity_numbers():
    ref = np.ones((4, 100), np.float32)
    same = fidelity(ref, ref.copy())
    assert same == {"cosine": 1.0, "snr_db": 200.0, "max_abs": 0.0}
    noisy = fidelity(ref + 0.1, ref)  # noise power 0.01 of signal 1: 20 dB
    assert noisy["snr_db"] == pytest.approx(20.0) and noisy["max_abs"] == pytest.approx(0.1)
    flipped = fidelity(-ref, ref)
    assert flipped["cosine"] == pytest.approx(-1.0)


def test_labels_give_precision_recall_f1_and_confusion():
    scores = np.eye(3, dtype=np.float32)[[0, 0, 1, 2, 2, 2]]  # predictions 0 0 1 2 2 2
    labels = np.array([0, 1, 1, 2, 2, 0])
    m = Measurement()
    quality_from_outputs(m, [scores], labels, [scores])
    assert m.quality_label == "accuracy" and m.accuracy == pytest.approx(4 / 6)
    assert m.confusion == [[1, 0, 1], [1, 1, 0], [0, 0, 2]]
    assert m.precision == pytest.approx((1 / 2 + 1 + 2 / 3) / 3)
    assert m.recall == pytest.approx((1 / 2 + 1 / 2 + 1) / 3)
    m = Measurement()
    quality_from_outputs(m, [np.ones((6, 4, 5, 5), np.float32)], labels, [np.ones((6, 4, 5, 5), np.float32)])
    assert m.quality_label == "cosine" and m.accuracy is None and m.quality_text == "1.0000"


def _two_output_model(k2: float):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", 4]) for n in ("a", "b")]
    inits = [helper.make_tensor("k1", TensorProto.FLOAT, [], [1.0]), helper.make_tensor("k2", TensorProto.FLOAT, [], [k2])]
    nodes = [helper.make_node("Mul", ["x", "k1"], ["a"]), helper.make_node("Mul", ["x", "k2"], ["b"])]
    graph = helper.make_graph(nodes, "g", [x], outs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_verification_compares_every_output(tmp_path):
    model = Model(_two_output_model(2.0), "onnx", name="two", signature=from_onnx(_two_output_model(2.0)))
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    onnx.save(_two_output_model(2.0), str(good))
    onnx.save(_two_output_model(2.5), str(bad))  # the first output is right, the second is not
    assert verify(model, good, "onnx", x).verified
    result = verify(model, bad, "onnx", x)
    assert not result.verified and "over 2 outputs" in result.message


def test_torchscript_shapes_come_from_the_file_and_its_pickle_runs_nothing(tmp_path):
    module, args, names, dynamic, _ = CASES["tiny_bert"]
    path = trace(module, args, tmp_path / "bert.pt")
    model = io.load(path)
    assert [(s.name, s.dtype, s.shape, s.value_range) for s in model.io.inputs] == [
        ("input_ids", "int64", ("batch", 10), (0, 50)), ("attention_mask", "int64", ("batch", 10), None)]
    # a traced_inputs.pkl that would run code if unpickled normally is refused, nothing runs
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(evil, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("traced_inputs.pkl"):
                data = b"cos\nsystem\n(V touch " + str(marker).encode() + b"\ntR."
            dst.writestr(item, data)
    loaded = torch.jit.load(str(evil))
    assert from_torchscript(evil, loaded) is None and not marker.exists()


def test_torch_export_program_signature(tmp_path):
    module, args, names, dynamic, _ = CASES["dict_outputs"]
    program = torch.export.export(module.eval(), args, dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(tmp_path / "d.pt2"))
    model = io.load(tmp_path / "d.pt2")
    assert [s.shape for s in model.io.inputs] == [("batch", 12)]
    assert [s.shape for s in model.io.outputs] == [("batch", 6), ("batch", 2)]


def test_a_state_is_batched_along_the_axis_that_shares_the_batch_symbol():
    """Like Silero VAD's state [2, batch, 128]: its samples run along axis 1, the axis named like
    x's batch; nothing to ask for, and the next state comes back with its samples gathered."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    state = helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "n", 3])
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4]),
            helper.make_tensor_value_info("new_state", TensorProto.FLOAT, [2, "n", 3])]
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    nodes = [helper.make_node("Add", ["x", "one"], ["y"]), helper.make_node("Add", ["state", "one"], ["new_state"])]
    proto = helper.make_model(helper.make_graph(nodes, "g", [x, state], outs, [one]),
                              opset_imports=[helper.make_opsetid("", 17)])
    sig = from_onnx(proto)
    assert sig.problems() == [] and sig.input("state").batch_axis == 1
    model = Model(proto, "onnx", name="vad", signature=sig.with_overrides(["state:2,1,3"]))
    assert model.io.input("state").shape == (2, "n", 3)  # the given 1 is the batch: stays free
    data = open_data("random", model.input_shape, signature=model.io)
    assert data.x_test.arrays["state"].shape == (256, 2, 3) and data.x_test.arrays["x"].shape == (256, 4)
    outputs = run_session_all(session(proto), data.x_test, batch_size=100)
    np.testing.assert_allclose(outputs[1], data.x_test.arrays["state"] + 1)  # samples first, in order
    m = measure(model, data, run_session_all(session(proto), data.x_test))
    assert m.quality == pytest.approx(1.0) and set(m.fidelity) == {"y", "new_state"}
    assert m.fidelity["new_state"] == {"cosine": 1.0, "snr_db": 200.0, "max_abs": 0.0}


def test_the_input_hint_names_unnamed_or_odd_dims_by_position():
    """PP-OCR's inputs: [-1, 3, "?", "?"] and [-1, 3, "p2o.DynamicDimension.1", ...]: the hint
    said x:1,3,?,? and x:1,3,P2O.DYNAMICDIMENSION.1,... ; now x:1,3,D2,D3."""
    odd = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, "?", "p2o.DynamicDimension.1"])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 3, "?", "p2o.DynamicDimension.1"])
    proto = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [odd], [out]),
                              opset_imports=[helper.make_opsetid("", 17)])
    problem = from_onnx(proto).problems()[0]
    assert problem.endswith("give them with --input x:1,3,D2,D3 (numbers)"), problem
