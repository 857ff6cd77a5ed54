"""ONNX -> torch for graphs onnx2torch cannot take as they are, once the user's shapes and
constants are known (issue 7, held-out models): an If on a pinned input (Silero VAD's sample
rate), a rank lost in a Reshape to a computed shape (PP-OCR's recognizer), a reflect Pad of a
2-D signal, and a file exported with a fixed batch of 1 (ultralytics' YOLO). Real onnxruntime
sessions; every conversion is compared with onnxruntime inside onnx_to_torch."""

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from studio.core.convert import predict_all, to_onnx_proto
from studio.core.errors import StudioError
from studio.core.io import load
from studio.core.model import ONNX, Model
from studio.core.passes.onnx_torch import onnx_to_torch, specialized
from studio.core.signature import from_onnx
from studio.core.training import train
from tests.corpus.models import cases, write


def _model(proto, items=(), name="m"):
    sig = from_onnx(proto).with_overrides(list(items))
    return Model(proto, ONNX, name=name, signature=sig)


def test_if_on_a_pinned_input_folds_and_converts(tmp_path):
    """VadState written by the legacy exporter from torch.jit.script: an If on `sr`. With
    `--input sr=16000` the If is replaced by the branch it takes and the model converts (its
    outputs match onnxruntime's, checked inside); without the pin, the refusal names the If and
    says which --input makes it fold."""
    case = cases()["vad_state"]
    path = tmp_path / "vad.onnx"
    write(case, "legacy", path)
    proto = onnx.load(str(path))
    assert any(n.op_type == "If" for n in proto.graph.node)
    folded = specialized(proto, _model(proto, ["sr=16000"]).io)
    assert not any(n.op_type == "If" for n in folded.graph.node)
    assert [i.name for i in folded.graph.input] == [i.name for i in proto.graph.input]  # sr stays, unused
    converted = onnx_to_torch(_model(proto, ["sr=16000"], "vad"))
    audio, state = np.random.default_rng(0).standard_normal((2, 3, 64)).astype(np.float32)[0], \
        np.random.default_rng(1).standard_normal((2, 3, 16)).astype(np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for sr in (16000, 8000):  # the other rate takes the other branch: the pinned one differs there
        want = sess.run(None, {"audio": audio, "state": state, "sr": np.array(sr, dtype=np.int64)})
        with torch.no_grad():
            ours = converted.obj(torch.from_numpy(audio), torch.from_numpy(state), torch.tensor(sr))
        close = all(np.allclose(o.numpy(), w, atol=1e-5) for o, w in zip(ours, want))
        assert close == (sr == 16000)
    with pytest.raises(StudioError, match=r"If \(opset .*--input NAME=VALUE"):
        onnx_to_torch(_model(proto, [], "vad"))


def _computed_reshape_bn():
    """x [N, 4, 6, 6] -> Reshape(x, Concat(Slice(Shape(x), 0, 1 + 1), [-1])) -> BatchNorm: the
    Slice's end is computed, so onnx's shape inference loses the Reshape's rank and onnx2torch's
    BatchNorm cannot tell its spatial rank (PP-OCR's recognizer)."""
    rng = np.random.default_rng(0)
    c = [helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in (("zero", 0), ("one", 1), ("minus", -1))]
    bn = [helper.make_tensor(n, TensorProto.FLOAT, [4], a) for n, a in
          (("scale", rng.uniform(0.5, 1.5, 4)), ("bias", rng.uniform(-1, 1, 4)), ("mean", rng.uniform(-1, 1, 4)),
           ("var", rng.uniform(0.5, 2, 4)))]
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Add", ["one", "one"], ["two"]),
             helper.make_node("Slice", ["s", "zero", "two"], ["head"]),
             helper.make_node("Concat", ["head", "minus"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["r"]),
             helper.make_node("BatchNormalization", ["r", "scale", "bias", "mean", "var"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], c + bn)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])


def test_rank_lost_in_a_computed_reshape_converts_with_the_shape_pinned(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # onnxruntime's symbolic inference saves scratch files into the cwd
    proto = _computed_reshape_bn()
    with pytest.raises(StudioError, match="BatchNormalization"):
        onnx_to_torch(_unfoldable(proto))
    converted = onnx_to_torch(_model(proto, ["x:1,4,6,6"], "bn"))  # checked against onnxruntime inside
    assert converted.is_torch
    assert not list(tmp_path.iterdir())


def _unfoldable(proto):
    """The model with its h and w left free: nothing to specialize, so onnx2torch's own refusal."""
    return Model(proto, ONNX, (1, 4, 6, 6), name="bn")


def test_reflect_pad_of_a_2d_signal_converts():
    """Pad(reflect) of [batch, samples] (Silero VAD's STFT): onnx2torch dropped the pads of the
    first two axes assuming 4-D input and failed."""
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], mode="reflect"), helper.make_node("Relu", ["p"], ["y"])]
    pads = helper.make_tensor("pads", TensorProto.INT64, [4], [0, 3, 0, 5])
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 24])], [pads])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    converted = onnx_to_torch(Model(proto, ONNX, (1, 16), name="pad"))  # checked against onnxruntime inside
    x = torch.randn(2, 16)
    with torch.no_grad():
        y = converted.obj(x)
    assert torch.allclose(y, torch.relu(torch.nn.functional.pad(x, (3, 5), mode="reflect")))


def test_a_file_with_batch_1_converts(tmp_path):
    """A file exported without a dynamic batch that reshapes to [1, ...] (ultralytics' YOLO export:
    [1, 4, 16, 8400] before its DFL): the conversion check runs at that batch, not at 2."""

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 1)

        def forward(self, x):
            return self.conv(x).view(1, 2, 4, 16).softmax(1)

    path = tmp_path / "b1.onnx"
    torch.onnx.export(Head().eval(), (torch.randn(1, 3, 4, 4),), str(path), dynamo=False)
    model = load(path)
    converted = onnx_to_torch(model)
    assert converted.is_torch and converted.meta["fixed_batch"] == 1
    assert predict_all(converted, np.zeros((5, 3, 4, 4), np.float32))[0].shape == (5, 2, 4, 16)  # 5 calls of 1
    # training (fine-tune, distillation) takes batches of that size too, also in a copy
    student = copy.deepcopy(converted.obj)
    x = np.random.default_rng(1).standard_normal((6, 3, 4, 4)).astype(np.float32)
    target = torch.zeros(6, 2, 4, 16)  # a softmax over 2 cannot reach 0: the loss never vanishes
    before = next(student.parameters()).detach().clone()
    list(train(student, x, None, 1, loss_fn=lambda m, args, yb, idx: ((m(*args) - target[idx]) ** 2).mean()))
    assert not torch.equal(before, next(student.parameters()).detach())
    # measured and exported like the file: at its batch (the export ran the module at batch 2)
    proto = to_onnx_proto(converted)
    x = np.random.default_rng(0).standard_normal((1, 3, 4, 4)).astype(np.float32)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = ref.run(None, {ref.get_inputs()[0].name: x})[0]
    assert np.allclose(got, want, atol=1e-5)


def test_distillation_of_a_batch_1_file(tmp_path):
    """distill.kd on a file exported with batch 1 (its probe ran the student at batch 2 and ended
    with a raw RuntimeError on ultralytics' YOLO export)."""
    from studio.core.data import random_inputs
    from studio.core.passes.base import Context
    from studio.core.passes.registry import create
    from tests.core.test_pass_common import run

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 1)

        def forward(self, x):
            return self.conv(x).view(1, 2, 4, 16).softmax(1)

    path = tmp_path / "b1.onnx"
    torch.onnx.export(Head().eval(), (torch.randn(1, 3, 4, 4),), str(path), dynamo=False)
    model = load(path)
    data = random_inputs((1, 3, 4, 4), count=40)
    result = run(create("distill.kd", width=0.5, epochs=1), model, Context(data=data))
    assert result.model.is_torch


def test_int8_static_quantizes_the_branch_of_a_pinned_input(tmp_path):
    """Silero VAD keeps every layer inside If branches chosen by its `sr` input, which
    onnxruntime's quantizer does not enter: static INT8 quantized nothing. With sr pinned it
    quantizes the graph specialized for sr=16000, compares it with the original on the same
    inputs, and says the file only computes that branch; without the pin the If stays float."""
    from studio.core.convert import run_session_all, session
    from studio.core.data import random_inputs
    from studio.core.passes.base import Context
    from studio.core.passes.registry import create
    from tests.core.test_pass_common import run

    path = tmp_path / "vad.onnx"
    write(cases()["vad_state"], "legacy", path)
    proto = onnx.load(str(path))
    pinned = _model(proto, ["sr=16000"], "vad")
    data = random_inputs(None, count=200, signature=pinned.io)
    result = run(create("quantize.int8_static", calibration_samples=50, remedies=False), pinned, Context(data=data))
    graph = result.model.obj.graph
    assert result.layers and any(n.op_type == "QuantizeLinear" for n in graph.node)
    assert not any(n.op_type == "If" for n in graph.node)
    assert "graph specialized for sr=16000" in result.summary
    assert any("computes the branch of those values whatever it is given" in w for w in result.warnings)
    # the INT8 file against the original, on the same inputs (sr fed to both)
    x = data.x_test
    want = run_session_all(session(proto), x)
    got = run_session_all(session(result.model.obj), x)
    assert all(np.corrcoef(g.ravel(), w.ravel())[0, 1] > 0.95 for g, w in zip(got, want))

    plain = run(create("quantize.int8_static", calibration_samples=50, remedies=False), _model(proto, [], "vad"),
                Context(data=random_inputs(None, count=200, signature=_model(proto, ["sr=16000"]).io)))
    assert any(n.op_type == "If" for n in plain.model.obj.graph.node)  # its layers inside stay float
    assert len(plain.layers) < len(result.layers) and "specialized" not in plain.summary


def test_macs_of_a_graph_with_if_count_the_pinned_branch(tmp_path):
    """MACs of a graph whose layers sit in If branches: with sr pinned, the branch sr takes, the
    same as the graph specialized for sr (what the INT8 stage is); without a pin, every branch
    summed, and the note says which."""
    from studio.core.inspect import summary
    from studio.core.stats import macs_counted

    path = tmp_path / "vad.onnx"
    write(cases()["vad_state"], "legacy", path)
    proto = onnx.load(str(path))
    pinned = _model(proto, ["sr=16000"], "vad")
    macs, note = macs_counted(pinned)
    folded = specialized(proto, pinned.io)
    assert not any(n.op_type == "If" for n in folded.graph.node)
    assert macs_counted(_model(folded, ["sr=16000"])) == (macs, "")  # the same computation, the same MACs
    assert note == "MACs of the If branches the pinned inputs (sr=16000) take"
    plain, plain_note = macs_counted(_model(proto, [], "vad"))
    assert plain - macs == 64 * 16  # the other branch's Linear(64, 16) too
    assert "sum every branch" in plain_note
    info = summary(pinned)
    assert info["macs"] == macs and note in info["macs_note"]
