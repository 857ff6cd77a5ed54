"""Quantization beyond the basics: static INT8 calibration methods, layers kept in float by
pattern, weight-only INT4/INT8, batch-norm folding."""

import numpy as np
import pytest
import torch
from torch import nn

from studio.core.convert import predict, run_session, session, to_onnx_model
from studio.core.errors import Cancelled
from studio.core.passes.base import Context
from studio.core.passes.registry import create
from tests.core.test_pass_common import onnx_matches, resnet_model, run, same_state, state, transformer_model


def ops(proto):
    return [n.op_type for n in proto.graph.node]


def quantized_weight_nodes(proto):
    """Names of Conv/Gemm/MatMul nodes whose weight comes through a DequantizeLinear."""
    dq = {n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    return {n.name for n in proto.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] in dq}


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_static_calibration_methods(demo_cnn, digits_data, method):
    result = run(create("quantize.int8_static", method=method, calibration_samples=64), demo_cnn,
                 Context(data=digits_data))
    assert "QuantizeLinear" in ops(result.model.obj)
    x = digits_data.shaped(digits_data.x_test, demo_cnn.input_shape)
    assert (predict(result.model, x).argmax(1) == digits_data.y_test).mean() > 0.9


@pytest.mark.parametrize("choice", ["uint8", "int8", "auto"])
def test_static_activation_type(demo_cnn, digits_data, choice):
    from onnx import TensorProto

    from studio.core.passes.quantize import activation_type

    # keep_slow_float off: the stem conv (one input channel) may be timed faster float, and then the input
    # is not quantized (test_int8_remedies.py::test_narrow_conv_is_timed_in_float)
    result = run(create("quantize.int8_static", calibration_samples=64, activations=choice, keep_slow_float=False),
                 demo_cnn, Context(data=digits_data))
    proto = result.model.obj
    inits = {i.name: i for i in proto.graph.initializer}
    # the zero point of the first activation QuantizeLinear (the input) carries the type
    first = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == proto.graph.input[0].name)
    want = activation_type(choice)
    assert inits[first.input[2]].data_type == {"uint8": TensorProto.UINT8, "int8": TensorProto.INT8}[want]
    assert f"{want} activations" in result.summary
    x = digits_data.shaped(digits_data.x_test, demo_cnn.input_shape)
    assert (predict(result.model, x).argmax(1) == digits_data.y_test).mean() > 0.95


def test_static_ignore_pattern_keeps_layers_float(demo_cnn, digits_data):
    before = state(demo_cnn)
    everything = run(create("quantize.int8_static", calibration_samples=64, keep_slow_float=False), demo_cnn,
                     Context(data=digits_data))  # (the stem conv could be timed faster float: not this test's point)
    assert quantized_weight_nodes(everything.model.obj) == {"/conv1/Conv", "/conv2/Conv", "/fc1/Gemm", "/fc2/Gemm"}
    # by torch layer name, by re: pattern and by op type
    for ignore, floats in ((["fc2"], {"/fc2/Gemm"}), (["re:^/?conv"], {"/conv1/Conv", "/conv2/Conv"}),
                           (["Gemm"], {"/fc1/Gemm", "/fc2/Gemm"})):
        result = run(create("quantize.int8_static", calibration_samples=64, ignore=ignore, keep_slow_float=False),
                     demo_cnn, Context(data=digits_data))
        assert quantized_weight_nodes(result.model.obj) == {"/conv1/Conv", "/conv2/Conv", "/fc1/Gemm", "/fc2/Gemm"} - floats, ignore
        assert set(result.layers) == quantized_weight_nodes(result.model.obj)
    assert same_state(before, state(demo_cnn))


@pytest.mark.parametrize("bits,tolerance", [(4, 0.25), (8, 0.02)])
def test_weight_only_on_mlp(demo_mlp, digits_data, bits, tolerance):
    result = run(create("quantize.weight_only", bits=bits), demo_mlp, Context())
    proto = result.model.obj
    assert ops(proto).count("MatMulNBits") == 3 and "Gemm" not in ops(proto)
    assert all(r["dtype"] == f"int{bits}" for r in result.layers.values())
    x = digits_data.shaped(digits_data.x_test, demo_mlp.input_shape)
    ours, ref = run_session(session(proto), x), predict(demo_mlp, x)
    assert (ours.argmax(1) == ref.argmax(1)).mean() > 1 - tolerance / 2
    assert np.abs(ours - ref).max() / np.abs(ref).max() < tolerance
    assert (ours.argmax(1) == digits_data.y_test).mean() > 0.9
    # smaller than float32 on disk
    assert len(proto.SerializeToString()) < len(to_onnx_model(demo_mlp).obj.SerializeToString()) * (0.2 if bits == 4 else 0.35)


def test_weight_only_transformer_and_ignore():
    model = transformer_model()
    result = run(create("quantize.weight_only", bits=8, ignore=["head"]), model, Context())
    names = set(result.layers)
    assert names and not any("head" in n for n in names)
    x = model.example_input(4)
    assert np.abs(run_session(session(result.model.obj), x) - predict(model, x)).max() < 0.05


def test_weight_only_on_onnx_and_conv_warning(demo_cnn):
    result = run(create("quantize.weight_only"), to_onnx_model(demo_cnn), Context())
    assert ops(result.model.obj).count("MatMulNBits") == 2 and ops(result.model.obj).count("Conv") == 2
    assert any("Conv layers stay float32" in w for w in result.warnings)


def shared_and_branch_weights():
    """Two Gemms reading one weight (as a dynamo export can), then an If whose branches read
    weights stored in the main graph (a scripted gate)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def w(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.2, name)

    def branch(name, weight):
        return helper.make_graph([helper.make_node("MatMul", ["h", weight], [f"y_{name}"])], name, [],
                                 [helper.make_tensor_value_info(f"y_{name}", TensorProto.FLOAT, None)])

    nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["h1"], transB=1),
             helper.make_node("Gemm", ["x", "W", "b"], ["h2"], transB=1),
             helper.make_node("Add", ["h1", "h2"], ["h"]),
             helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=branch("then", "V"), else_branch=branch("else", "U"))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16])],
                              [w("W", 64, 32), w("b", 64), w("V", 64, 16), w("U", 64, 16),
                               numpy_helper.from_array(np.array(0, np.float32), "zero")])
    return onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_weight_only_keeps_shared_and_branch_weights_valid():
    """Two Gemms sharing a weight got two initializers of one name, and weights only If branches
    read were dropped: both made invalid files (found by the model corpus)."""
    import onnx

    from studio.core.model import ONNX, Model

    proto = shared_and_branch_weights()
    model = Model(proto, ONNX, (1, 32), name="gates")
    result = run(create("quantize.weight_only", bits=8), model, Context())
    out = result.model.obj
    onnx.checker.check_model(out, full_check=True)
    assert ops(out).count("MatMulNBits") == 2 and "Gemm" not in ops(out)
    branches = [n for g in out.graph.node if g.op_type == "If" for a in g.attribute for n in a.g.node]
    assert [n.op_type for n in branches] == ["MatMulNBits", "MatMulNBits"]  # their weights too
    for sign in (1, -1):  # both branches run
        x = sign * np.abs(np.random.default_rng(1).standard_normal((4, 32))).astype(np.float32)
        ours, ref = run_session(session(out), x), run_session(session(proto), x)
        assert np.abs(ours - ref).max() < 0.05 * np.abs(ref).max()


class GatedMLP(nn.Module):
    """Linear layers as the TorchScript exporter writes them (Gemm, transB=1): one layer used
    twice (two Gemms reading one weight) and, scripted, an If whose branches hold Gemms reading
    main-graph weights."""

    def __init__(self):
        super().__init__()
        self.fc1, self.shared = nn.Linear(32, 64), nn.Linear(64, 64)
        self.fc2, self.fc3 = nn.Linear(64, 16), nn.Linear(64, 16)

    def forward(self, x):
        h = self.shared(torch.relu(self.shared(torch.relu(self.fc1(x)))))
        if bool(x.sum() > 0):
            return self.fc2(h)
        return self.fc3(h)


def stored_bytes(proto):
    from studio.core import onnx_weights as ow

    return sum(ow.read(t).nbytes for t in ow.tensors(proto).values())


def test_weight_only_gemm_rewrite_on_torch_export(tmp_path):
    """The Gemm -> MatMul rewrite is onnxruntime's own: on a torch export the rewritten model
    gives the same outputs in onnxruntime, keeps no untransposed copy of a weight, and the
    MatMuls keep the Gemms' names, so an ignore entry "fc1" still keeps fc1 float."""
    import onnx

    from studio.core import io, onnx_weights as ow
    from studio.core.convert import onnx_copy
    from studio.core.passes.quant_extra import gemm_to_matmul

    torch.manual_seed(0)
    path = tmp_path / "gated.onnx"
    torch.onnx.export(torch.jit.script(GatedMLP().eval()), (torch.randn(2, 32),), str(path), dynamo=False,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    model = io.load(path)
    gemms = {n.name for n, _ in ow.nodes(model.obj.graph) if n.op_type == "Gemm"}
    assert gemms == {"/fc1/Gemm", "/shared/Gemm", "/shared_1/Gemm", "/fc2/Gemm", "/fc3/Gemm"}
    proto = onnx_copy(model)
    assert gemm_to_matmul(proto) == 5
    onnx.checker.check_model(proto, full_check=True)
    matmuls = {n.name for n, _ in ow.nodes(proto.graph) if n.op_type == "MatMul"}
    assert matmuls == gemms and "Gemm" not in {n.op_type for n, _ in ow.nodes(proto.graph)}
    read = {i for n, _ in ow.nodes(proto.graph) for i in n.input}
    assert set(ow.tensors(proto)) <= read  # no weight left that nothing reads
    assert stored_bytes(proto) == stored_bytes(model.obj)  # each weight once, transposed instead of as well
    result = run(create("quantize.weight_only", bits=8, ignore=["fc1"]), model, Context())
    out = result.model.obj
    onnx.checker.check_model(out, full_check=True)
    assert sorted(result.layers) == ["/fc2/Gemm_Q8", "/fc3/Gemm_Q8", "/shared/Gemm_Q8", "/shared_1/Gemm_Q8"]
    fc1 = [n for n, _ in ow.nodes(out.graph) if n.name == "/fc1/Gemm"]
    assert [n.op_type for n in fc1] == ["MatMul"] and ow.tensors(out)[fc1[0].input[1]].data_type == onnx.TensorProto.FLOAT
    assert not run(create("quantize.weight_only", ignore=["Gemm"]), model, Context()).layers  # by op type, as exported
    rng = np.random.default_rng(1)
    for sign in (1, -1):  # both branches
        x = sign * np.abs(rng.standard_normal((4, 32))).astype(np.float32)
        ref = run_session(session(model.obj), x)
        assert np.abs(run_session(session(proto), x) - ref).max() < 1e-5
        assert np.abs(run_session(session(out), x) - ref).max() < 0.02 * np.abs(ref).max()


def test_gemm_rewrite_empty_bias_and_shared_dynamic_weight():
    """Two cases onnxruntime's rewrite alone gets wrong: an empty bias input ("") became an Add
    reading "", and two Gemms transposing one graph input both wrote "<B>_Transposed"."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from studio.core.passes.quant_extra import gemm_to_matmul

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W")
    x, b = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3] if n == "x" else [4, 3]) for n in "xB")
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])
    empty_bias = helper.make_graph([helper.make_node("Gemm", ["x", "W", ""], ["y"], transB=1, name="g")], "g", [x],
                                   [y], [w])
    shared = helper.make_graph([helper.make_node("Gemm", ["x", "B"], ["h1"], transB=1, name="g1"),
                                helper.make_node("Gemm", ["x", "B"], ["h2"], transB=1, name="g2"),
                                helper.make_node("Add", ["h1", "h2"], ["y"])], "g", [x, b], [y])
    feeds = {"x": rng.standard_normal((2, 3)).astype(np.float32), "B": rng.standard_normal((4, 3)).astype(np.float32)}
    for graph in (empty_bias, shared):
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        ours = onnx.ModelProto()
        ours.CopyFrom(proto)
        assert gemm_to_matmul(ours) == len(graph.node) - (graph is shared)
        onnx.checker.check_model(ours, full_check=True)
        assert "Gemm" not in ops(ours)
        names = {i.name for i in graph.input}
        ref = session(proto).run(None, {k: v for k, v in feeds.items() if k in names})[0]
        got = session(ours).run(None, {k: v for k, v in feeds.items() if k in names})[0]
        assert np.abs(got - ref).max() < 1e-6


def test_fold_batchnorm_resnet():
    model = resnet_model()
    before = state(model)
    result = run(create("fold.batchnorm"), model, Context())
    assert same_state(before, state(model))
    m = result.model.obj
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in m.modules())
    assert len(result.layers) == 9  # stem, 3 x 2 in blocks, 2 shortcuts
    x = model.example_input(8)
    assert np.abs(predict(result.model, x) - predict(model, x)).max() < 1e-4
    onnx_matches(result.model)


def test_cancel_leaves_input(demo_cnn, digits_data):
    model = resnet_model()
    before = state(model)
    for pass_id, m in (("fold.batchnorm", model), ("quantize.weight_only", model)):
        context = Context(data=digits_data)
        context.cancel_event.set()
        with pytest.raises(Cancelled):
            run(create(pass_id), m, context)
    assert same_state(before, state(model))


class GridUp(nn.Module):
    """An upsample (Resize with its scales in a Constant node) and a float arange grid (Range)
    added to it, as detection heads do: float16 made both inputs float16, an invalid graph."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x):
        h = self.up(self.conv(x))
        return h + torch.arange(h.shape[-1], dtype=h.dtype)


def test_fp16_keeps_resize_scales_and_range_float32(tmp_path):
    import onnx

    from studio.core import io

    torch.manual_seed(0)
    path = tmp_path / "grid.onnx"
    torch.onnx.export(GridUp().eval(), (torch.randn(2, 3, 8, 8),), str(path), dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    model = io.load(path)
    assert {"Resize", "Range"} <= {n.op_type for n in model.obj.graph.node}
    result = run(create("quantize.fp16"), model, Context())
    out = result.model.obj
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in out.graph.initializer)  # the conv went float16
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
    ours, ref = run_session(session(out), x), run_session(session(model.obj), x)
    assert ours.shape == (3, 4, 16, 16) and np.abs(ours - ref).max() < 0.02


def test_static_keeps_onnxruntimes_per_tensor_notes_off_the_terminal(caplog):
    """onnxruntime warns on the root logger for each 1-D weight per-channel cannot apply to (a
    LayerNorm's scale): 75 lines through the progress bar on a BERT. The pass drops those lines
    only; the logger is as it was afterwards."""
    import logging

    from studio.core.data import random_inputs

    model = transformer_model()
    data = random_inputs(model.input_shape, count=64)
    with caplog.at_level(logging.WARNING):
        result = run(create("quantize.int8_static", calibration_samples=32, remedies=False, keep_slow_float=False),
                     model, Context(data=data))
    assert "QuantizeLinear" in ops(result.model.obj)
    assert not [r for r in caplog.records if "out-of-range for weight" in r.getMessage()]
    assert logging.getLogger().filters == []
    logging.getLogger().warning("Axis 1 is out-of-range for weight 'w' with rank 1")  # the filter is gone
    assert [r for r in caplog.records if "out-of-range for weight" in r.getMessage()]


def test_static_on_an_opset_11_model_writes_a_model_that_loads():
    """PP-OCR's Paddle exports are opset 11: onnxruntime put per-channel DequantizeLinear nodes
    (with `axis`, opset 13) into the opset 11 graph and the result did not load ("Unrecognized
    attribute: axis for operator DequantizeLinear"). The pass converts to opset 13 first."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from studio.core.data import open_data
    from studio.core.model import Model

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "fc")]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["h"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["p"]),
         helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("MatMul", ["f", "fc"], ["y"])],
        "opset11", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    proto.ir_version = 7
    model = Model(proto, "onnx", input_shape=(1, 3, 8, 8))
    data = open_data("random", model.input_shape, signature=model.io)
    result = run(create("quantize.int8_static", calibration_samples=32, remedies=False), model, Context(data=data))
    out = result.model.obj
    assert "DequantizeLinear" in ops(out)
    assert any("opset 11: converted to opset 13" in w for w in result.warnings)
    x = rng.standard_normal((5, 3, 8, 8)).astype(np.float32)
    assert run_session(session(out), x).shape == (5, 4)  # it loads and runs
    onnx.checker.check_model(out)


def test_histogram_remedies_are_skipped_when_their_activations_would_not_fit():
    """onnxruntime's percentile/entropy calibrators hold every activation of every sample: on
    PP-OCRv4's detector (166 MiB a sample) the remedy took 20 GB and the kernel killed the run.
    Those remedies are tried only for as many samples as fit the memory budget."""
    from studio.core.passes.quantize import Setting, _graph_facts, _remedies, histogram_samples

    model = to_onnx_model(resnet_model())
    proto = model.obj
    per_gib = histogram_samples(proto, model.input_shape, budget=1 << 30)
    assert per_gib >= 256  # a small net: the usual 256 samples fit
    few = histogram_samples(proto, model.input_shape, budget=(1 << 30) * 10 // per_gib)
    assert 5 <= few <= 20
    first = Setting(activations="uint8", per_channel=True, method="minmax", samples=256)
    labels = [r(first) for r in _remedies(_graph_facts(proto), 1024, few)]
    assert not any(step and "calibration" in step[0] and "samples" not in step[0] for step in labels)
    labels = [r(first) for r in _remedies(_graph_facts(proto), 1024)]
    assert any(step and step[0] == "percentile calibration" for step in labels)


def test_calibration_calls_take_fewer_samples_when_their_activations_are_large():
    """PP-OCRv4 det at 320x320 (166 MiB of activations a sample) peaked at 12 GB RSS calibrating
    32 samples a call; a call now holds at most half the histogram budget. Small nets keep 32."""
    from studio.core.passes.quantize import calibration_batch, histogram_samples

    model = to_onnx_model(resnet_model())
    per_gib = histogram_samples(model.obj, model.input_shape, budget=1 << 30)
    assert calibration_batch(histogram_samples(model.obj, model.input_shape)) == 32
    assert calibration_batch(histogram_samples(model.obj, model.input_shape, budget=(1 << 30) * 12 // per_gib)) == 6
    assert calibration_batch(1) == 1 and calibration_batch(12, pinned=4) == 4


def test_calibration_session_without_the_memory_pattern_gives_onnxruntimes_ranges(tmp_path):
    """The calibrator's session runs without onnxruntime's memory pattern (on BERT-base it kept a
    block of every tensor of a call beside the first call's: 995 MB resident, 806 MB without):
    the ranges are bit for bit those of onnxruntime's own calibrator on the same batches."""
    import onnx
    from onnxruntime.quantization.calibrate import CalibrationDataReader, create_calibrator

    from studio.core.passes.quantize import _calibrator

    model = to_onnx_model(resnet_model())
    path = tmp_path / "fp32.onnx"
    onnx.save_model(model.obj, str(path))
    name = model.obj.graph.input[0].name
    x = np.random.default_rng(0).standard_normal((6, *model.input_shape[1:])).astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{name: x[i:i + 2]} for i in range(0, len(x), 2)])

        def get_next(self):
            return next(self.items, None)

    ops = ["Conv", "Gemm", "MatMul"]
    ours = _calibrator(path, ops, tmp_path / "ours.onnx", "minmax")
    assert ours.infer_session.get_session_options().enable_mem_pattern is False
    stock = create_calibrator(path, ops, augmented_model_path=str(tmp_path / "stock.onnx"))
    ranges = []
    for cal in (ours, stock):
        cal.collect_data(Reader())
        ranges.append({k: np.asarray(v.range_value) for k, v in cal.compute_data().data.items()})
    assert ranges[0] and ranges[0].keys() == ranges[1].keys()
    assert all(np.array_equal(ranges[0][k], ranges[1][k]) for k in ranges[0])
