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
