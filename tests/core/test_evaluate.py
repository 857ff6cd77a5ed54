import zipfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from studio.core.convert import to_onnx_proto
from studio.core.evaluate import count_parameters, measure, measure_latency, zipped_size
from studio.core.model import Model
from studio.core.training import drain


def test_sizes_are_the_bytes_of_the_shipped_file(demo_cnn, digits_data, tmp_path):
    proto = to_onnx_proto(demo_cnn)
    m = measure(demo_cnn, digits_data, proto=proto)
    path = tmp_path / "m.onnx"
    onnx.save_model(proto, str(path))
    assert m.size_bytes == path.stat().st_size
    with zipfile.ZipFile(tmp_path / "m.zip", "w", zipfile.ZIP_DEFLATED, compresslevel=6) as z:
        z.write(path, "model.onnx")
    assert m.zip_bytes == (tmp_path / "m.zip").stat().st_size
    assert m.parameters == sum(p.numel() for p in demo_cnn.obj.parameters())


def test_accuracy_matches_an_independent_count(demo_cnn, digits_data):
    m = measure(demo_cnn, digits_data)
    logits = demo_cnn.obj(__import__("torch").from_numpy(digits_data.x_test)).detach().numpy()
    assert m.accuracy == float((logits.argmax(1) == digits_data.y_test).mean())
    assert 0.97 < m.accuracy <= 1.0 and m.top5 >= m.accuracy


def test_quantization_scales_are_not_parameters():
    w = numpy_helper.from_array(np.array([[1, 0], [0, -3]], np.int8), "w_q")
    scale = numpy_helper.from_array(np.array(0.5, np.float32), "w_scale")
    zp = numpy_helper.from_array(np.array(0, np.int8), "w_zp")
    shape = numpy_helper.from_array(np.array([2, 2], np.int64), "shape")
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"]),
             helper.make_node("MatMul", ["x", "w"], ["y0"]),
             helper.make_node("Reshape", ["y0", "shape"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])], [w, scale, zp, shape])
    assert count_parameters(helper.make_model(graph)) == (4, 2)


def test_zipped_size_of_zeros_is_small():
    assert zipped_size(bytes(1_000_000)) < 5_000 < zipped_size(np.random.default_rng(0).bytes(1_000_000)) - 900_000


def test_latency_measures_a_bigger_model_as_slower(demo_mlp):
    import torch

    small = to_onnx_proto(demo_mlp)
    big_net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 2048), torch.nn.Linear(2048, 10))
    big = to_onnx_proto(Model(big_net.eval(), "torch", (1, 64)))
    small_ms, big_ms = drain(measure_latency([small, big], (1, 64), batches=(16,), rounds=3))
    assert big_ms[16] > 3 * small_ms[16]
