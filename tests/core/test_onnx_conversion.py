"""ONNX -> torch for the passes that train or restructure: exports of torch's default (dynamo,
opset 18-20) exporter convert; what cannot convert says which op, opset and node. TorchScript
models run every pass through their ONNX export and say so."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

from studio.core.convert import predict, to_onnx_proto
from studio.core.data import Data
from studio.core.errors import StudioError
from studio.core.model import ONNX, TORCH, Model
from studio.core.passes.base import Context
from studio.core.passes.onnx_torch import onnx_to_torch
from studio.core.passes.registry import create
from tests.core import onnx_models as om
from tests.core.test_pass_common import run


def labelled(shape, n=128, classes=10) -> Data:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, *shape[1:])).astype(np.float32)
    y = rng.integers(0, classes, n)
    return Data("random-labelled", x, x[:32], y, y[:32])


class NewOps(nn.Module):
    """Ops the dynamo exporter writes at opset 18-20: Split (num_outputs), Gelu, ReduceMean/Max
    with axes as an input, Pad, LayerNormalization."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)

    def forward(self, x):
        a, b = torch.split(x, 5, dim=1)
        y = nn.functional.gelu(self.fc(x)) + nn.functional.pad(x, (0, 0))
        return self.norm(y).mean(-1, keepdim=True) + y.amax(-1, keepdim=True) + a.sum(1, keepdim=True) + b[:, :1]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["conv", "transformer"])
def test_dynamo_exports_convert(kind):
    model = om.export(kind, dynamo=True)
    assert model.obj.opset_import[0].version >= 18
    converted = onnx_to_torch(model)
    x = model.example_input(4)
    assert np.abs(predict(converted, x) - om.run(model, x)).max() < 1e-4
    # every torch stage is measured on its ONNX export: the batch axis must stay free
    again = Model(to_onnx_proto(converted), ONNX, model.input_shape)
    for batch in (1, 5):
        x = model.example_input(batch)
        assert np.abs(om.run(again, x) - om.run(model, x)).max() < 1e-4


@pytest.mark.slow
def test_opset_18_to_20_ops_convert():
    torch.manual_seed(0)
    proto = om.export_module(NewOps().eval(), (1, 8), dynamo=True)
    ops = {n.op_type for n in proto.graph.node}
    assert {"Split", "Gelu", "ReduceMean", "ReduceMax"} <= ops
    model = Model(proto, ONNX, (1, 8), name="new-ops")
    x = model.example_input(3)
    assert np.abs(predict(onnx_to_torch(model), x) - om.run(model, x)).max() < 1e-4


@pytest.mark.slow
def test_structured_and_finetune_on_dynamo_onnx():
    conv = om.export("conv", dynamo=True)
    data = labelled(conv.input_shape)
    before = conv.obj.SerializeToString()
    result = run(create("prune.structured", ratio=0.5, round_to=1), conv, Context(data=data))
    assert result.model.framework == TORCH and conv.obj.SerializeToString() == before
    params = sum(p.numel() for p in result.model.obj.parameters())
    assert params < 0.75 * sum(p.numel() for p in onnx_to_torch(conv).obj.parameters())
    assert predict(result.model, conv.example_input(3)).shape == (3, 10)
    assert any("onnx2torch" in w for w in result.warnings)

    block = om.export("transformer", dynamo=True)
    tuned = run(create("finetune", epochs=1), block, Context(data=labelled(block.input_shape)))
    assert tuned.model.framework == TORCH and any("onnx2torch" in w for w in tuned.warnings)
    x = block.example_input(3)
    assert not np.allclose(predict(tuned.model, x), om.run(block, x))  # it trained


def test_unconvertible_op_names_op_opset_and_node():
    with pytest.raises(StudioError) as err:
        onnx_to_torch(om.if_model())
    message = str(err.value)
    assert "If (opset 17), node 'branch'" in message and "prune.magnitude" in message and "\n" not in message


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    from studio.core.io import load

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ts") / "net.pt"
    torch.jit.save(torch.jit.script(om.ConvNet(bn=True).eval()), str(path))
    return load(path, input_shape=(1, 1, 8, 8))


@pytest.mark.parametrize("pass_id,options,framework", [
    ("prune.magnitude", {"sparsity": 0.5}, ONNX), ("prune.nm", {}, ONNX), ("cluster.kmeans", {}, ONNX),
    ("lowrank.svd", {"rank_by": "ratio", "rank_ratio": 0.25}, ONNX), ("fold.batchnorm", {}, ONNX),
    ("prune.structured", {"round_to": 1}, TORCH), ("finetune", {"epochs": 1}, TORCH),
    ("distill.kd", {"epochs": 1}, TORCH),
])
def test_torchscript_every_pass(scripted, pass_id, options, framework, tmp_path, monkeypatch):
    """Before: no layer found (magnitude, N:M), 0 of 0 layers (low-rank), nothing removed
    (structured), "can't optimize a non-leaf Tensor" (finetune, distill). Now each runs through
    the ONNX export, says so, and leaves no scratch file in the working folder."""
    assert scripted.format == "torchscript"
    monkeypatch.chdir(tmp_path)
    data = labelled(scripted.input_shape)
    x = scripted.example_input(4)
    reference = predict(scripted, x)
    result = run(create(pass_id, **options), scripted, Context(data=data))
    assert result.model.framework == framework
    assert any("TorchScript" in w for w in result.warnings)
    assert np.array_equal(predict(scripted, x), reference)  # the input model is unchanged
    out = om.run(result.model, x) if framework == ONNX else predict(result.model, x)
    assert out.shape == reference.shape and np.isfinite(out).all()
    if pass_id == "prune.structured":
        assert sum(p.numel() for p in result.model.obj.parameters()) < sum(p.numel() for p in scripted.obj.parameters())
    if pass_id in ("prune.magnitude", "lowrank.svd"):
        assert result.layers
    assert os.listdir(tmp_path) == []


def test_new_attribute_an_old_converter_would_ignore_is_refused():
    """Resize-18 with antialias=1 must not silently convert as Resize-13 (which has no antialias)."""
    from onnx import TensorProto, helper

    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 0.5, 0.5])
    node = helper.make_node("Resize", ["input", "", "scales"], ["output"], name="shrink", mode="linear", antialias=1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 1, 4, 4])],
                              initializer=[scales])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(StudioError, match="Resize \\(opset 18\\), node 'shrink': attribute antialias=1"):
        onnx_to_torch(Model(proto, ONNX, (1, 1, 8, 8), name="resize"))
