"""Tiny ONNX models for the ONNX-native pass tests (no tests here): torch modules exported with
both exporters (dynamo=True, opset 18+, and the TorchScript-based dynamo=False), and layouts
built with onnx.helper: weights as Constant nodes, layers inside an If subgraph."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from studio.core.model import ONNX, Model
from tests.core.test_pass_common import TinyTransformer


class ConvNet(nn.Module):
    def __init__(self, bn=False):
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8) if bn else nn.Identity()
        self.c2 = nn.Conv2d(8, 16, 3)
        self.fc = nn.Linear(16 * 6 * 6, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.c2(torch.relu(self.bn(self.c1(x))))).flatten(1))


def mlp():
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))


def bn_net():
    net = ConvNet(bn=True)
    with torch.no_grad():  # running statistics far from 0/1, so a wrong fold shows
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
        net.bn.weight.uniform_(0.5, 1.5)
        net.bn.bias.uniform_(-0.5, 0.5)
    return net


BUILDERS = {
    "conv": (lambda: ConvNet(), (1, 1, 8, 8)),
    "mlp": (mlp, (1, 16)),
    "bn": (bn_net, (1, 1, 8, 8)),
    "transformer": (TinyTransformer, (1, 8, 16)),
}


def export(kind: str, dynamo: bool, fold: bool = True) -> Model:
    """One of BUILDERS exported to ONNX; fold=False keeps BatchNormalization nodes (both
    exporters fold eval-mode batch norms into the convs by default)."""
    build, shape = BUILDERS[kind]
    torch.manual_seed(0)
    proto = export_module(build().eval(), shape, dynamo, fold)
    return Model(proto, ONNX, shape, name=f"{kind}-{'dynamo' if dynamo else 'legacy'}")


def export_module(module, shape, dynamo: bool = False, fold: bool = True):
    """A torch module as an onnx.ModelProto with a dynamic batch axis."""
    x = torch.randn(2, *shape[1:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            program = torch.onnx.export(module, (x,), dynamo=True, external_data=False, optimize=fold, verbose=False,
                                        dynamic_shapes=({0: torch.export.Dim("batch")},))
            return onnx.load_from_string(program.model_proto.SerializeToString())
        buffer = io.BytesIO()
        extra = {} if fold else {"do_constant_folding": False, "training": torch.onnx.TrainingMode.PRESERVE}
        torch.onnx.export(module, (x,), buffer, dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                          **extra)
        return onnx.load_from_string(buffer.getvalue())


def as_constants(model: Model) -> Model:
    """The same model with every float initializer stored as a Constant node (Paddle's layout)."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model.obj)
    graph = proto.graph
    moved = [i for i in graph.initializer if i.data_type == TensorProto.FLOAT]
    constants = [helper.make_node("Constant", [], [i.name], name=f"const_{k}", value=i) for k, i in enumerate(moved)]
    names = {i.name for i in moved}
    keep = [i for i in graph.initializer if i.name not in names]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    inputs = [i for i in graph.input if i.name not in names]
    del graph.input[:]
    graph.input.extend(inputs)
    nodes = constants + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(proto)
    return Model(proto, ONNX, model.input_shape, name=model.name + "-constants")


def if_model() -> Model:
    """input [N, 16] -> If(constant true) whose branches are two-layer Gemm MLPs holding their
    own weights (subgraph initializers) -> [N, 10]."""
    rng = np.random.default_rng(0)

    def branch(tag: str):
        w1 = numpy_helper.from_array(rng.standard_normal((32, 16)).astype(np.float32) * 0.3, f"{tag}.fc1.weight")
        b1 = numpy_helper.from_array(rng.standard_normal(32).astype(np.float32) * 0.1, f"{tag}.fc1.bias")
        w2 = numpy_helper.from_array(rng.standard_normal((10, 32)).astype(np.float32) * 0.3, f"{tag}.fc2.weight")
        nodes = [
            helper.make_node("Gemm", ["input", w1.name, b1.name], [f"{tag}_h"], name=f"/{tag}/fc1/Gemm", transB=1),
            helper.make_node("Relu", [f"{tag}_h"], [f"{tag}_r"], name=f"/{tag}/relu/Relu"),
            helper.make_node("Gemm", [f"{tag}_r", w2.name], [f"{tag}_out"], name=f"/{tag}/fc2/Gemm", transB=1),
        ]
        out = helper.make_tensor_value_info(f"{tag}_out", TensorProto.FLOAT, ["N", 10])
        return helper.make_graph(nodes, tag, [], [out], initializer=[w1, b1, w2])

    cond = helper.make_node("Constant", [], ["cond"], name="cond", value=helper.make_tensor("c", TensorProto.BOOL, [], [True]))
    if_node = helper.make_node("If", ["cond"], ["output"], name="branch", then_branch=branch("then"),
                               else_branch=branch("else"))
    graph = helper.make_graph([cond, if_node], "if-model",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 10])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return Model(proto, ONNX, (1, 16), name="if-model")


def run(model: Model, x: np.ndarray) -> np.ndarray:
    """The model's output in a real onnxruntime session."""
    from studio.core.convert import run_session, session

    return run_session(session(model.obj), x)
