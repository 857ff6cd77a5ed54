"""Training passes on models with several inputs and with integer (token id) inputs: fine-tuning,
distillation and the recovery fine-tune inside pruning passes feed every input in its own dtype
(ids stay int64 for the embedding), in the order of the model's inputs; distillation feeds the
teacher and the narrowed student the same samples. Labels train the first output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from studio.core import io
from studio.core.convert import predict_all, run_session_all, session, to_onnx_proto
from studio.core.data import Data
from studio.core.errors import StudioError
from studio.core.model import TORCH, Model
from studio.core.passes.base import Context
from studio.core.passes.registry import create
from studio.core.signature import Inputs, Signature, TensorSpec
from tests.core.multi_io_models import TinyBert, TwoInputs, export_onnx
from tests.core.test_pass_common import run, same_state, state


def two_inputs_data(n: int = 600) -> Data:
    """x [8] and z [4] floats; the class (of 5) is a fixed linear rule of both, so a model that
    saw only one input could not learn it."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 8)).astype(np.float32)
    z = rng.standard_normal((n, 4)).astype(np.float32)
    y = (x @ rng.standard_normal((8, 5)) + 2 * z @ rng.standard_normal((4, 5))).argmax(1).astype(np.int64)
    cut = n * 4 // 5
    return Data("rule", Inputs({"x": x[:cut], "z": z[:cut]}), Inputs({"x": x[cut:], "z": z[cut:]}), y[:cut], y[cut:])


TWO_SIG = Signature([TensorSpec("x", "float32", ("batch", 8)), TensorSpec("z", "float32", ("batch", 4))])
BERT_SIG = Signature([TensorSpec("input_ids", "int64", ("batch", 10), value_range=(0, 50)),
                      TensorSpec("attention_mask", "int64", ("batch", 10), value_range=(0, 2))])


def two_inputs_model() -> Model:
    torch.manual_seed(0)
    return Model(TwoInputs().eval(), TORCH, name="two-inputs", signature=TWO_SIG)


def bert_data(n: int = 500) -> Data:
    """Token ids in [0, 50) and a 0/1 mask (int64 both); the class is the third of the vocabulary
    that most of the unmasked tokens fall in."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, size=(n, 10)).astype(np.int64)
    mask = (rng.random((n, 10)) < 0.8).astype(np.int64)
    mask[:, 0] = 1
    counts = np.stack([((ids // 17 == k) & (mask == 1)).sum(1) for k in range(3)], 1)
    y = counts.argmax(1).astype(np.int64)
    cut = n * 4 // 5
    return Data("ids", Inputs({"input_ids": ids[:cut], "attention_mask": mask[:cut]}),
                Inputs({"input_ids": ids[cut:], "attention_mask": mask[cut:]}), y[:cut], y[cut:])


def accuracy(model: Model, data: Data) -> float:
    return float((predict_all(model, data.x_test)[0].argmax(1) == data.y_test).mean())


def runs_in_onnxruntime(model: Model, x: Inputs) -> None:
    """The stage's ONNX takes every input in its own dtype and gives what the torch model gives."""
    ours = predict_all(model, x)
    # eval-mode attention takes torch's fused fast path, which the TorchScript exporter cannot
    # export (the studio then falls back to the slower dynamo exporter): keep it off here
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        proto = to_onnx_proto(model)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    sess = session(proto)
    assert [i.name for i in sess.get_inputs()] == model.io.names
    theirs = run_session_all(sess, x)
    for a, b in zip(ours, theirs):
        assert np.abs(a - b).max() < 1e-4


def test_finetune_feeds_both_inputs_and_learns_a_rule_of_both():
    model, data = two_inputs_model(), two_inputs_data()
    before_state, before = state(model), accuracy(model, data)
    result = run(create("finetune", epochs=15, learning_rate=1e-2), model, Context(data=data))
    assert same_state(before_state, state(model))  # the input model is untouched
    after = accuracy(result.model, data)
    assert after > before + 0.25 and after > 0.6, (before, after)
    runs_in_onnxruntime(result.model, data.x_test)


def test_finetune_token_ids_stay_integers_for_the_embedding():
    torch.manual_seed(0)
    model = Model(TinyBert().eval(), TORCH, name="tiny-bert", signature=BERT_SIG)
    data = bert_data(400)
    before = accuracy(model, data)
    emb = model.obj.emb.weight.detach().clone()
    result = run(create("finetune", epochs=6, learning_rate=1e-2, batch_size=16), model, Context(data=data))
    after = accuracy(result.model, data)
    assert not torch.equal(emb, result.model.obj.emb.weight)  # the embedding itself was trained
    assert after > before + 0.15 and after > 0.65, (before, after)
    assert result.model.io.inputs[0].dtype == "int64"
    runs_in_onnxruntime(result.model, data.x_test)


def test_finetune_of_an_onnx_model_with_two_inputs(tmp_path):
    """The ONNX file (legacy exporter) is converted with onnx2torch; its forward takes x, z in
    the file's input order and the stage is a torch model that exports with both again."""
    torch.manual_seed(0)
    module = TwoInputs().eval()
    path = export_onnx(module, (torch.randn(2, 8), torch.randn(2, 4)), ["x", "z"], {}, tmp_path / "two.onnx", False)
    model, data = io.load(path), two_inputs_data()
    assert model.io.names == ["x", "z"]
    before = accuracy(model, data)
    result = run(create("finetune", epochs=15, learning_rate=1e-2), model, Context(data=data))
    assert result.model.framework == TORCH
    assert accuracy(result.model, data) > before + 0.25
    runs_in_onnxruntime(result.model, data.x_test)


def test_distill_feeds_teacher_and_student_the_same_tuple():
    """A narrowed student of a two-input teacher learns the teacher's outputs on (x, z) pairs:
    fed anything else (one input, or other samples than the teacher's) it could not match them."""
    from studio.core.passes.distill import DistillConfig, build_student

    teacher, data = two_inputs_model(), two_inputs_data()
    unlabelled = Data("rule", data.x_train, data.x_test)
    cfg = {"width": 0.5, "epochs": 30, "learning_rate": 1e-2, "reinit": True}
    untrained, _ = build_student(teacher, DistillConfig(**cfg))
    result = run(create("distill.kd", **cfg), teacher, Context(data=unlabelled))
    student = result.model.obj
    assert student.a.out_features == 8 and student.b.out_features == 8  # narrowed, both inputs kept
    assert result.model.io.names == ["x", "z"]
    want = predict_all(teacher, data.x_test)[0]
    got = predict_all(result.model, data.x_test)[0]
    start = predict_all(teacher.with_obj(untrained), data.x_test)[0]
    agree = float((got.argmax(1) == want.argmax(1)).mean())
    assert agree > 0.7 and agree > float((start.argmax(1) == want.argmax(1)).mean()) + 0.3
    assert ((got - want) ** 2).mean() < 0.4 * ((start - want) ** 2).mean()
    runs_in_onnxruntime(result.model, data.x_test)


def test_distill_with_token_ids_and_labels():
    torch.manual_seed(0)
    teacher = Model(TinyBert().eval(), TORCH, name="tiny-bert", signature=BERT_SIG)
    data = bert_data(300)
    result = run(create("distill.kd", width=0.5, epochs=2, alpha=0.5), teacher, Context(data=data))
    assert "soft loss only" not in result.summary  # the labels were used, on the first output
    assert result.layers["student"]["parameters"] < result.layers["student"]["teacher_parameters"]
    runs_in_onnxruntime(result.model, data.x_test)


def test_a_student_that_cannot_take_the_inputs_is_refused_in_one_line():
    teacher, data = two_inputs_model(), two_inputs_data()
    with pytest.raises(StudioError) as info:
        run(create("distill.kd", student="zoo", name="mlp", epochs=1), teacher, Context(data=data))
    message = str(info.value)
    assert "\n" not in message and "x, z" in message and "'narrow'" in message


@pytest.mark.parametrize("pass_id, options", [
    ("prune.structured", {"ratio": 0.5, "importance": "taylor"}),
    ("prune.magnitude", {"sparsity": 0.7}),
    ("prune.nm", {}),
    ("lowrank.svd", {"rank_ratio": 0.5}),
    ("cluster.kmeans", {"bits": 2, "iterations": 3}),
])
def test_recovery_fine_tune_inside_pruning_passes(pass_id, options):
    """fine_tune_epochs > 0 trains the pruned two-input model on both inputs: better than the
    same pass without it, and what pruning zeroed stays zero (clustering trains its centroids
    only: its weights keep at most 2^bits values)."""
    model, data = two_inputs_model(), two_inputs_data()
    plain = run(create(pass_id, **options), model, Context(data=data))
    tuned = run(create(pass_id, **options, fine_tune_epochs=15, learning_rate=1e-2), model, Context(data=data))
    if pass_id == "cluster.kmeans":
        assert not same_state(state(plain.model), state(tuned.model))
        assert accuracy(tuned.model, data) > accuracy(plain.model, data)
        for layer in (tuned.model.obj.a, tuned.model.obj.b, tuned.model.obj.head):
            assert torch.unique(layer.weight).numel() <= 4
    else:
        assert accuracy(tuned.model, data) > accuracy(plain.model, data) + 0.1
    if pass_id in ("prune.magnitude", "prune.nm"):
        for (_, a), (_, b) in zip(plain.model.obj.named_parameters(), tuned.model.obj.named_parameters()):
            if a.dim() == 2:
                assert torch.equal(a == 0, b == 0)
    runs_in_onnxruntime(tuned.model, data.x_test)


def test_recovery_fine_tune_of_an_onnx_model_with_token_ids(tmp_path):
    """prune.magnitude changes the ONNX graph, then converts it (onnx2torch) and fine-tunes on
    int64 ids and mask; the pruned zeros stay zero."""
    torch.manual_seed(0)
    module = TinyBert().eval()
    args = (torch.randint(0, 50, (2, 10)), torch.ones(2, 10, dtype=torch.long))
    path = export_onnx(module, args, ["input_ids", "attention_mask"], {}, tmp_path / "bert.onnx", False)
    model, data = io.load(path), bert_data(300)
    assert [s.dtype for s in model.io.inputs] == ["int64", "int64"]
    result = run(create("prune.magnitude", sparsity=0.5, fine_tune_epochs=1), model, Context(data=data))
    assert result.model.framework == TORCH
    zeros = [float((p == 0).float().mean()) for p in result.model.obj.parameters() if p.dim() == 2]
    assert zeros and max(zeros) >= 0.45
    runs_in_onnxruntime(result.model, data.x_test)
