"""Per-layer statistics, weight matrices, parameter and MAC counts: checked against numpy on the
real weights, the same numbers from the torch model and from its ONNX export, and INT8 QDQ
weights dequantized back to (nearly) the float weights with zeros kept exact."""

import numpy as np
import pytest
import torch

from studio.core import stats
from studio.core.convert import to_onnx_model
from studio.core.model import Model


@pytest.fixture(scope="module")
def pruned_cnn(demo_cnn):
    """The demo CNN with every other weight of conv2 and 90 % of fc1 set to exactly zero."""
    model = demo_cnn.copy()
    with torch.no_grad():
        model.obj.conv2.weight.view(-1)[::2] = 0
        w = model.obj.fc1.weight
        w[w.abs() < w.abs().flatten().kthvalue(int(0.9 * w.numel())).values] = 0
    return model


def test_stats_match_numpy_on_every_weight(pruned_cnn):
    layers = {s.tensor: s for s in stats.layer_stats(pruned_cnn, bins=32)}
    assert set(layers) == {"conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"}
    for name, s in layers.items():
        w = dict(pruned_cnn.obj.named_parameters())[name].detach().numpy()
        assert s.shape == w.shape and s.numel == w.size and s.dtype == "float32"
        assert s.nonzeros == np.count_nonzero(w)
        assert s.sparsity == pytest.approx(1 - np.count_nonzero(w) / w.size)
        assert (s.min, s.max) == (pytest.approx(w.min()), pytest.approx(w.max()))
        assert s.mean == pytest.approx(w.mean(), abs=1e-6) and s.std == pytest.approx(w.std(), rel=1e-4)
        assert len(s.hist_counts) == 32 and len(s.hist_edges) == 33 and s.hist_counts.sum() == w.size
        np.testing.assert_array_equal(s.hist_counts, np.histogram(w, bins=s.hist_edges)[0])
    assert layers["conv2.weight"].sparsity == pytest.approx(0.5)
    assert layers["fc1.weight"].sparsity == pytest.approx(0.9, abs=0.01)
    assert layers["fc1.weight"].name == "fc1" and layers["fc1.weight"].op == "Linear"


def test_parameter_count_and_macs_agree_between_torch_and_onnx(pruned_cnn):
    onnx_model = to_onnx_model(pruned_cnn)
    expected_nonzeros = sum(int(np.count_nonzero(p.detach().numpy())) for p in pruned_cnn.obj.parameters())
    assert stats.parameter_count(pruned_cnn) == (151_306, expected_nonzeros)
    assert stats.parameter_count(onnx_model) == (151_306, expected_nonzeros)
    assert stats.count_macs(pruned_cnn) == stats.count_macs(onnx_model) == 1_330_432


def test_weight_matrix_is_the_layer_weight_with_one_row_per_output(pruned_cnn):
    w = pruned_cnn.obj.conv2.weight.detach().numpy()
    heat = stats.weight_matrix(pruned_cnn, "conv2")
    assert heat.shape == (64, 32 * 9)
    np.testing.assert_array_equal(heat, w.reshape(64, -1))
    onnx_model = to_onnx_model(pruned_cnn)
    # the same matrix from the ONNX node (Gemm keeps torch's (out, in) layout)
    np.testing.assert_array_equal(stats.weight_matrix(onnx_model, "/conv2/Conv"), heat)
    np.testing.assert_array_equal(stats.weight_matrix(onnx_model, "/fc1/Gemm"),
                                  pruned_cnn.obj.fc1.weight.detach().numpy())
    with pytest.raises(KeyError):
        stats.weight_matrix(pruned_cnn, "no_such_layer")


def test_int8_weights_are_dequantized_per_channel_with_exact_zeros(pruned_cnn, digits_data):
    from studio.core.passes import Context, create
    from studio.core.training import drain

    # remedies off: this checks the symmetric per-channel 8-bit weights as configured (a remedy
    # may pick 7-bit weights or per-tensor scales when the first try loses more than max_drop)
    # (keep_slow_float off: every layer INT8, none timed faster float)
    int8 = drain(create("quantize.int8_static", calibration_samples=32, remedies=False, keep_slow_float=False)
                 .apply(pruned_cnn, Context(data=digits_data))).model
    by_tensor = {s.name: s for s in stats.layer_stats(int8)}
    assert {s.dtype for s in by_tensor.values()} == {"int8"}
    w = pruned_cnn.obj.conv2.weight.detach().numpy().reshape(64, -1)
    heat = stats.weight_matrix(int8, "/conv2/Conv")
    assert heat.shape == w.shape and heat.dtype == np.float32
    assert np.array_equal(heat == 0, w == 0) or ((heat == 0) & (w != 0)).mean() < 0.01  # tiny weights may round to 0
    assert (heat[w == 0] == 0).all(), "a pruned weight came back non-zero"
    # symmetric per-channel int8: the error of each row is at most half its step (max|w| / 127)
    step = np.abs(w).max(axis=1, keepdims=True) / 127
    assert (np.abs(heat - w) <= step * 0.51 + 1e-7).all()


def test_constant_and_empty_weights_do_not_break_the_histogram():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    with torch.no_grad():
        net[0].weight.zero_()
        net[1].weight.fill_(0.25)
    zero, const = stats.layer_stats(Model(net.eval(), "torch", (1, 4)), bins=8)
    assert zero.sparsity == 1.0 and zero.nonzeros == 0 and zero.hist_counts.sum() == 12
    assert const.min == const.max == 0.25 and const.hist_counts.sum() == 6 and const.std == 0


def test_large_tensors_are_subsampled_but_keep_exact_counts():
    net = torch.nn.Sequential(torch.nn.Linear(2000, 1500))  # 3M weights
    with torch.no_grad():
        net[0].weight.view(-1)[::3] = 0
    s = stats.layer_stats(Model(net.eval(), "torch", (1, 2000)), max_samples=100_000)[0]
    w = net[0].weight.detach().numpy()
    assert s.numel == w.size and s.nonzeros == np.count_nonzero(w)  # counts are exact...
    assert s.hist_counts.sum() == 100_000  # ...the histogram is drawn from a sample
    assert s.min == pytest.approx(w.min()) and s.max == pytest.approx(w.max())
    assert s.std == pytest.approx(w.std(), rel=1e-4)
    # the sample sees the zero pattern as it is (a stride of 30 would have seen only zeros)
    zero_bin = np.searchsorted(s.hist_edges, 0.0, side="right") - 1
    assert 0.32 < s.hist_counts[zero_bin] / 100_000 < 0.37


def test_fp16_stage_of_a_paddle_style_export_counts_the_same_macs():
    """Paddle writes a free batch as -1 and free sizes as "?"; the float16 converter copies that
    shape onto the Cast it appends after the conv that reads it. Shape inference then stopped at
    the Cast and every layer read as 1x1: the FP16 stage of PP-OCR's classifier showed 131.9x
    fewer MACs than the original, and a warning about the saving."""
    from onnx import TensorProto, helper, numpy_helper

    from studio.core.passes.base import Context
    from studio.core.passes.registry import create
    from tests.core.test_pass_common import run

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["h"], pads=[1, 1, 1, 1], name="conv"),
         helper.make_node("Relu", ["h"], ["y"], name="relu")],
        "paddle_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, "?", "?"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 8, "?", "?"])],
        [weight])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    proto.ir_version = 7
    model = Model(proto, "onnx", input_shape=(1, 3, 16, 16))
    expected = 8 * 3 * 9 * 16 * 16
    assert stats.count_macs(model) == expected
    half = run(create("quantize.fp16"), model, Context()).model
    assert [n.op_type for n in half.obj.graph.node][0] != "Cast"  # the converter's order, kept
    assert stats.count_macs(half) == expected
