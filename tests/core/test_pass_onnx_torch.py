import numpy as np
import pytest
from onnx import TensorProto, helper

from studio.core.convert import predict, to_onnx_model
from studio.core.errors import StudioError
from studio.core.model import ONNX, Model
from studio.core.passes.onnx_torch import onnx_to_torch
from tests.core.test_pass_common import resnet_model


def test_resnet_onnx_to_torch_matches():
    onnx_model = to_onnx_model(resnet_model())
    converted = onnx_to_torch(onnx_model)
    assert converted.is_torch and converted.meta["converted_from"] == "onnx"
    x = onnx_model.example_input(4)
    assert np.abs(predict(converted, x) - predict(onnx_model, x)).max() < 1e-4
    # a real torch module: it trains
    assert any(p.requires_grad for p in converted.obj.parameters())


def test_unsupported_op_says_so():
    node = helper.make_node("Hardmax", ["input"], ["output"], axis=1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 4])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(StudioError, match="cannot convert this ONNX model to torch"):
        onnx_to_torch(Model(proto, ONNX, (1, 4), name="hardmax"))


def test_matmul_by_a_weight_becomes_linear_with_its_bias():
    """x @ W + b (how exporters write a Linear on 3-D input) converts to one nn.Linear whose
    weight and bias are trainable parameters; a weight two products share stays one buffer (two
    Linear copies would drift apart in training) and is reported."""
    import torch
    from torch import nn

    from studio.core.passes.onnx_torch import constant_matmuls

    rng = np.random.default_rng(0)
    w1, b1, w2 = (rng.standard_normal(s).astype(np.float32) for s in ((4, 6), (6,), (6, 4)))
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["p"]),
             helper.make_node("MatMul", ["r", "w2"], ["q"]), helper.make_node("Mul", ["p", "q"], ["y"])]
    inits = [helper.make_tensor(n, TensorProto.FLOAT, a.shape, a.ravel()) for n, a in (("w1", w1), ("b1", b1), ("w2", w2))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model = Model(proto, ONNX, (1, 3, 4), name="matmuls")
    converted = onnx_to_torch(model)  # compared with onnxruntime inside
    linears = [m for m in converted.obj.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1 and linears[0].bias is not None
    assert torch.allclose(linears[0].weight, torch.from_numpy(w1.T)) and torch.allclose(linears[0].bias, torch.from_numpy(b1))
    assert len(constant_matmuls(converted.obj)) == 2
    trainable = sorted(tuple(p.shape) for p in converted.obj.parameters() if p.requires_grad)
    assert trainable == [(6,), (6, 4)]
    x = model.example_input(5)
    assert np.abs(predict(converted, x) - predict(model, x)).max() < 1e-4
