"""The weight passes on ONNX models directly (no torch): models exported with both torch
exporters (dynamo=True, opset 18+, and dynamo=False), weights stored as Constant nodes, layers in
an If subgraph. Every result runs in a real onnxruntime session; the input model never changes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from studio.core import onnx_weights as ow
from studio.core.errors import StudioError
from studio.core.model import ONNX, TORCH, Model
from studio.core.passes.base import Context
from studio.core.passes.registry import create
from tests.core import onnx_models as om
from tests.core.test_pass_common import run

EXPORTS = [(kind, dynamo) for kind in ("conv", "mlp", "transformer") for dynamo in (False, True)]


@pytest.fixture(scope="module")
def exported():
    """Exports made once per module (the dynamo exporter takes seconds per model)."""
    cache = {}

    def get(kind, dynamo, fold=True):
        key = (kind, dynamo, fold)
        if key not in cache:
            cache[key] = om.export(kind, dynamo, fold)
        return cache[key]

    return get


def weights_of(model: Model) -> dict[str, np.ndarray]:
    return {w.tensor_name: w.array() for w in ow.layer_weights(model.obj)}


def apply(pass_id: str, model: Model, **options):
    """Run the pass and check the contract every weight pass keeps: the input is unchanged and
    the result is an ONNX model onnxruntime runs, with the output shape of the input model."""
    before = model.obj.SerializeToString()
    result = run(create(pass_id, **options), model, Context())
    assert model.obj.SerializeToString() == before, "the pass changed its input model"
    assert result.model.framework == ONNX
    onnx.checker.check_model(result.model.obj)
    x = model.example_input(5)
    out = om.run(result.model, x)
    ref = om.run(model, x)
    assert out.shape == ref.shape and np.isfinite(out).all()
    return result, out, ref


@pytest.mark.slow
@pytest.mark.parametrize("kind,dynamo", EXPORTS)
def test_magnitude_prune_on_onnx(exported, kind, dynamo):
    model = exported(kind, dynamo)
    result, out, ref = apply("prune.magnitude", model, sparsity=0.6)
    after = weights_of(result.model)
    total = sum(a.size for a in after.values())
    zeros = sum(int((a == 0).sum()) for a in after.values())
    assert abs(zeros / total - 0.6) < 0.01  # global threshold over the chosen weights
    assert not any(w.startswith("nothing changed") for w in result.warnings)
    assert not np.allclose(out, ref)
    per_layer, _, _ = apply("prune.magnitude", model, sparsity=0.6, scope="per_layer")
    assert per_layer.layers and all(abs(r["sparsity"] - 0.6) < 0.02 for r in per_layer.layers.values())
    # sparsity 0 changes nothing and says so
    same, out0, ref0 = apply("prune.magnitude", model, sparsity=0.0)
    assert np.array_equal(out0, ref0)
    assert any(w.startswith("nothing changed") for w in same.warnings)


@pytest.mark.slow
@pytest.mark.parametrize("kind,dynamo", EXPORTS)
def test_nm_and_cluster_on_onnx(exported, kind, dynamo):
    from studio.core.passes.nm import check_pattern

    model = exported(kind, dynamo)
    result, _, _ = apply("prune.nm", model)
    changed = {w.tensor_name: w for w in ow.layer_weights(result.model.obj)}
    for name, record in result.layers.items():
        w = changed[record["initializer"]]
        assert check_pattern(w.array(), 2, 4, w.input_axis), name
    clustered, out, ref = apply("cluster.kmeans", model, bits=3)
    for w in ow.layer_weights(clustered.model.obj):
        assert len(np.unique(w.array())) <= 8
    assert np.abs(out - ref).max() < 0.5 * np.abs(ref).max()  # 8 shared values still approximate the layer


@pytest.mark.slow
@pytest.mark.parametrize("kind,dynamo", EXPORTS)
def test_lowrank_on_onnx(exported, kind, dynamo):
    model = exported(kind, dynamo)
    result, out, ref = apply("lowrank.svd", model, rank_by="ratio", rank_ratio=0.25)
    done = {n: r for n, r in result.layers.items() if r["factorized"]}
    assert done and all(r["parameters"] < r["parameters_before"] for r in done.values())
    ops_before = sum(1 for n in model.obj.graph.node if n.op_type in ("Conv", "Gemm", "MatMul"))
    ops_after = sum(1 for n in result.model.obj.graph.node if n.op_type in ("Conv", "Gemm", "MatMul"))
    assert ops_after == ops_before + len(done)
    # keeping (almost) all the energy reproduces the model: the factors are exact where kept
    exact, out_e, ref_e = apply("lowrank.svd", model, rank_by="energy", energy=0.999999)
    kept_all = not any(r["factorized"] for r in exact.layers.values())
    assert kept_all or np.abs(out_e - ref_e).max() < 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("dynamo", [False, True])
def test_fold_batchnorm_on_onnx(exported, dynamo):
    model = exported("bn", dynamo, fold=False)
    assert any(n.op_type == "BatchNormalization" for n in model.obj.graph.node)
    result, out, ref = apply("fold.batchnorm", model)
    assert not any(n.op_type == "BatchNormalization" for n in result.model.obj.graph.node)
    assert len(result.layers) == 1
    assert np.abs(out - ref).max() < 1e-4
    # an export that already folded it: nothing to do, and the stage says so
    folded, out2, ref2 = apply("fold.batchnorm", exported("bn", dynamo))
    assert not folded.layers and any(w.startswith("nothing changed") for w in folded.warnings)
    assert np.array_equal(out2, ref2)


@pytest.mark.parametrize("dynamo", [False, True])
def test_fold_batchnorm_after_linear_on_onnx(dynamo):
    """BatchNorm1d after a Linear (a Gemm) folds into the Gemm's weight rows and bias."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10)).eval()
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    model = Model(om.export_module(net, (1, 16), dynamo, fold=False), ONNX, (1, 16))
    assert any(n.op_type == "BatchNormalization" for n in model.obj.graph.node)
    result, out, ref = apply("fold.batchnorm", model)
    assert [r["op"] for r in result.layers.values()] == ["Gemm"]
    assert not any(n.op_type == "BatchNormalization" for n in result.model.obj.graph.node)
    assert np.abs(out - ref).max() < 1e-5


def test_targets_match_onnx_and_torch_names():
    """Targets name the ONNX node, the torch module it came from, its weight or an op type."""
    model = om.export("conv", dynamo=False)
    by_module = run(create("prune.magnitude", sparsity=0.5, targets=["fc"]), model, Context())
    assert list(by_module.layers) == ["/fc/Gemm"]
    by_op = run(create("prune.magnitude", sparsity=0.5, targets=["Linear"]), model, Context())
    assert list(by_op.layers) == ["/fc/Gemm"]
    ignored = run(create("prune.magnitude", sparsity=0.5, ignore=["re:c\\d"]), model, Context())
    assert list(ignored.layers) == ["/fc/Gemm"]
    by_weight = run(create("cluster.kmeans", targets=["c2.weight"]), model, Context())
    assert list(by_weight.layers) == ["/c2/Conv"]
    with pytest.raises(ValueError, match="matches the targets"):
        run(create("prune.magnitude", targets=["nothing_here"]), model, Context())


@pytest.mark.slow
def test_targets_match_dynamo_module_names(exported):
    """The dynamo exporter names nodes node_linear_1 and may rename weights (val_12); the torch
    module path in its metadata still finds the layer."""
    model = exported("transformer", True)
    result = run(create("prune.magnitude", sparsity=0.5, targets=["block.linear1", "head"]), model, Context())
    assert len(result.layers) == 2
    names = {w.name: w for w in ow.layer_weights(model.obj)}
    assert all("block.linear1" in names[n].aliases or "head" in names[n].aliases for n in result.layers)


def test_constant_node_weights():
    """Weights stored as Constant nodes (Paddle's layout) are found, changed in place, counted."""
    from studio.core import stats
    from studio.core.graph import build_graph

    model = om.as_constants(om.export("mlp", dynamo=False))
    assert not any(i.data_type == onnx.TensorProto.FLOAT for i in model.obj.graph.initializer)
    params, _ = stats.parameter_count(model)
    assert params == 16 * 32 + 32 + 32 * 32 + 32 + 32 * 10 + 10
    assert build_graph(model).total_parameters == params
    assert len(stats.layer_stats(model)) == 3
    for pass_id, options in [("prune.magnitude", {"sparsity": 0.5}), ("prune.nm", {}), ("cluster.kmeans", {}),
                             ("lowrank.svd", {"rank_by": "ratio", "rank_ratio": 0.25})]:
        result, out, ref = apply(pass_id, model, **options)
        assert len(result.layers) == 3, pass_id
        assert not np.allclose(out, ref), pass_id
    pruned, _, _ = apply("prune.magnitude", model, sparsity=0.5)
    assert not any(i.data_type == onnx.TensorProto.FLOAT for i in pruned.model.obj.graph.initializer)  # still Constants
    assert stats.parameter_count(pruned.model)[1] < params * 0.6


def test_if_subgraph_weights():
    """Layers inside an If's branches: the graph shows them, stats count them, passes change them."""
    from studio.core import stats
    from studio.core.graph import build_graph

    model = om.if_model()
    graph = build_graph(model)
    branch_params = 2 * (16 * 32 + 32 + 32 * 10)
    assert graph.total_parameters == branch_params
    assert {n.op for n in graph.layers()} == {"Gemm"} and len(graph.layers()) == 4
    assert "/then/fc2/Gemm" in graph.node("branch").inputs
    assert stats.parameter_count(model)[0] == branch_params
    assert len(stats.layer_stats(model)) == 4
    for pass_id, options in [("prune.magnitude", {"sparsity": 0.5}), ("prune.nm", {}), ("cluster.kmeans", {}),
                             ("lowrank.svd", {"rank_by": "ratio", "rank_ratio": 0.25})]:
        result, out, ref = apply(pass_id, model, **options)
        assert len(result.layers) == 4, pass_id
        assert not np.allclose(out, ref), pass_id
    only_then = run(create("prune.magnitude", sparsity=0.5, targets=["re:^/then/"]), model, Context())
    assert sorted(only_then.layers) == ["/then/fc1/Gemm", "/then/fc2/Gemm"]


def test_fine_tune_on_onnx_converts_and_says_so(digits_data):
    """Fine-tuning an ONNX model is done on its torch conversion, never skipped silently."""
    import torch

    torch.manual_seed(0)  # digits are 64 features
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)).eval()
    model = Model(om.export_module(net, (1, 64)), ONNX, (1, 64), name="digits-mlp")
    result = run(create("prune.magnitude", sparsity=0.5, fine_tune_epochs=1), model, Context(data=digits_data))
    assert result.model.framework == TORCH
    assert any("onnx2torch" in w for w in result.warnings)
    weights = [p.detach().numpy() for p in result.model.obj.parameters() if p.dim() == 2]
    assert sum(int((w == 0).sum()) for w in weights) >= 0.49 * sum(w.size for w in weights)  # zeros kept
    clustered = run(create("cluster.kmeans", bits=3, fine_tune_epochs=1), model, Context(data=digits_data))
    assert clustered.model.framework == TORCH
    assert all(len(np.unique(p.detach().numpy())) <= 8 for p in clustered.model.obj.parameters() if p.dim() == 2)


def test_fine_tune_on_unconvertible_onnx_is_one_line(digits_data):
    model = om.if_model()
    with pytest.raises(StudioError) as err:
        run(create("lowrank.svd", fine_tune_epochs=1, rank_by="ratio"), model, Context(data=digits_data))
    message = str(err.value)
    assert "\n" not in message and "fine_tune_epochs to 0" in message and "If (opset 17)" in message


def test_packed_file_holds_subgraph_weights(tmp_path):
    """The packed export stores the clustered weights of an If's branches too, and restores them."""
    from studio.core.packed import pack, unpack

    result = run(create("cluster.kmeans", bits=3), om.if_model(), Context())
    info = pack(result.model, tmp_path / "if.studio")
    assert info["tensors"] == 4
    restored = Model(unpack(tmp_path / "if.studio"), ONNX, (1, 16))
    x = restored.example_input(3)
    assert np.array_equal(om.run(restored, x), om.run(result.model, x))


def test_magnitude_sensitivity_on_onnx(demo_cnn, digits_data):
    """Per-layer pruning sensitivity runs on the ONNX model's weights; layers are graph nodes."""
    from studio.core.convert import to_onnx_model
    from studio.core.graph import build_graph
    from studio.core.sensitivity import prune_sensitivity
    from studio.core.training import drain

    model = to_onnx_model(demo_cnn)
    torch_result = drain(prune_sensitivity(demo_cnn, digits_data, ratios=(0.0, 0.9)))
    result = drain(prune_sensitivity(model, digits_data, ratios=(0.0, 0.9)))
    graph = build_graph(model)
    assert result.layers and all(name in graph for name in result.layers)
    assert np.allclose(result.quality[:, 0], result.baseline)  # ratio 0 changes nothing
    # the same rule on the same weights: the same qualities as the torch model's layers, in order
    assert np.allclose(sorted(result.quality[:, 1]), sorted(torch_result.quality[:, 1]), atol=0.02)


def test_weight_pass_after_quantizer_says_why(demo_cnn, digits_data):
    # every layer INT8 (keep_slow_float may time the stem conv faster float, and a float layer may be pruned)
    quantized = run(create("quantize.int8_static", calibration_samples=32, keep_slow_float=False), demo_cnn,
                    Context(data=digits_data)).model
    with pytest.raises(ValueError, match="before the quantizer"):
        run(create("prune.magnitude"), quantized, Context())
    result = run(create("lowrank.svd"), quantized, Context())
    assert any(w.startswith("nothing changed") for w in result.warnings)


def test_second_run_changes_nothing_and_says_so(demo_mlp):
    """N:M and clustering applied twice: the second run finds nothing to do and warns (torch and ONNX)."""
    from studio.core.convert import to_onnx_model

    for model in (demo_mlp, to_onnx_model(demo_mlp)):
        for pass_id in ("prune.nm", "cluster.kmeans"):
            once = run(create(pass_id), model, Context()).model
            twice = run(create(pass_id), once, Context())
            assert any(w.startswith("nothing changed") for w in twice.warnings), (model.framework, pass_id)
            first = run(create(pass_id), model, Context())
            assert not any(w.startswith("nothing changed") for w in first.warnings), (model.framework, pass_id)


@pytest.mark.slow
def test_constant_node_weights_of_a_dynamo_transformer(exported):
    model = om.as_constants(exported("transformer", True))
    for pass_id, options in [("prune.magnitude", {"sparsity": 0.5}), ("lowrank.svd", {"rank_by": "ratio"})]:
        result, out, ref = apply(pass_id, model, **options)
        assert len(result.layers) == 6, pass_id  # embed, attention in/out, two feed-forward, head
        assert not np.allclose(out, ref)


def test_quantized_layer_in_a_subgraph_counts_its_weight_not_its_scales():
    """A DequantizeLinear -> MatMul inside an If branch: the parameter count walks the branch's
    nodes like the graph builder does, so the per-channel scales and zero points are not weights
    there either (the count once looked for quantization nodes in the main graph only)."""
    from onnx import TensorProto, helper, numpy_helper

    from studio.core import stats
    from studio.core.graph import build_graph

    q = numpy_helper.from_array(np.arange(-8, 8, dtype=np.int8).reshape(4, 4), "w_q")
    scale = numpy_helper.from_array(np.full(4, 0.1, np.float32), "w_scale")
    zero = numpy_helper.from_array(np.zeros(4, np.int8), "w_zero")
    branch = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], name="dq", axis=1),
         helper.make_node("MatMul", ["input", "w"], ["then_out"], name="/then/fc/MatMul")],
        "then", [], [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, ["N", 4])],
        initializer=[q, scale, zero])
    other = helper.make_graph([helper.make_node("Identity", ["input"], ["else_out"], name="same")], "else", [],
                              [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, ["N", 4])])
    cond = helper.make_node("Constant", [], ["cond"], name="cond", value=helper.make_tensor("c", TensorProto.BOOL, [], [True]))
    graph = helper.make_graph(
        [cond, helper.make_node("If", ["cond"], ["output"], name="branch", then_branch=branch, else_branch=other)],
        "qdq-in-if", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 4])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    model = Model(proto, ONNX, (1, 4), name="qdq-in-if")
    assert om.run(model, np.ones((2, 4), np.float32)).shape == (2, 4)  # a real model onnxruntime runs
    assert stats.parameter_count(model) == (16, 15)  # the int8 weight (one zero), no scales
    assert build_graph(model).total_parameters == 16
