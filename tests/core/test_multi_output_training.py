"""Training passes on models with several outputs (detection heads, a dict of logits and boxes):
distillation learns every output, fine-tuning trains the output the labels are class ids of
(the first, as measurement reads it) and says so, and refuses in one line when that output has
no classes. Also: a converted model whose re-export baked its batch in still runs at any batch."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from studio.core.convert import run_session_all, session, to_onnx_proto
from studio.core.data import Data
from studio.core.errors import StudioError
from studio.core.model import ONNX, TORCH, Model
from studio.core.passes.base import Context
from studio.core.passes.distill import DistillConfig, build_student
from studio.core.passes.registry import create
from studio.core.training import predict_outputs
from tests.core.multi_io_models import DictOut, ThreeHeads
from tests.core.test_pass_common import run, same_state, state


def cosine(a, b) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).mean())


def three_heads() -> Model:
    torch.manual_seed(0)
    return Model(ThreeHeads().eval(), TORCH, (1, 3, 12, 12), name="three-heads")


def dict_model() -> tuple[Model, Data]:
    """DictOut ('logits' [N, 6] then 'box' [N, 2]) and data labelled by a fixed linear rule."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 12)).astype(np.float32)
    y = (x @ rng.standard_normal((12, 6))).argmax(1).astype(np.int64)
    return Model(DictOut().eval(), TORCH, (1, 12), name="dict-out"), Data("rule", x[:500], x[500:], y[:500], y[500:])


def test_distill_learns_every_output_of_a_detection_head():
    teacher = three_heads()
    before = state(teacher)
    x = np.random.default_rng(1).standard_normal((160, 3, 12, 12)).astype(np.float32)
    data = Data("random", x[:128], x[128:])
    cfg = {"width": 0.5, "epochs": 4, "learning_rate": 1e-2}
    untrained, _ = build_student(teacher, DistillConfig(**cfg))
    result = run(create("distill.kd", **cfg), teacher, Context(data=data))
    assert same_state(before, state(teacher))
    student = result.model.obj
    assert student.body.out_channels == 4  # narrowed; the three heads keep their outputs
    assert [student.prob.out_channels, student.box.out_channels, student.marks.out_channels] == [2, 4, 10]
    assert "3 outputs learned" in result.summary and "cosine" in result.summary
    outputs = result.layers["student"]["outputs"]
    assert len(outputs) == 3 and all(o["loss"].startswith("MSE") for o in outputs.values())
    # on held-out inputs the student is closer to the teacher over all heads, the last one too
    # (half the channels cannot match every head at once: one may get a little worse)
    want = predict_outputs(teacher.obj, data.x_test)
    got, start = predict_outputs(student, data.x_test), predict_outputs(untrained, data.x_test)
    error = [[float(((o - w) ** 2).mean() / w.var()) for o, w in zip(outs, want)] for outs in (start, got)]
    assert sum(error[1]) < 0.8 * sum(error[0]) and error[1][2] < error[0][2]
    assert all(cosine(g, w) > 0.9 for g, w in zip(got, want))
    # the student's ONNX file gives all three outputs
    proto = to_onnx_proto(result.model)
    outs = run_session_all(session(proto), data.x_test[:5])
    assert [o.shape for o in outs] == [o[:5].shape for o in got]
    for o, g in zip(outs, got):
        assert np.abs(o - g[:5]).max() < 1e-4


def test_distill_and_finetune_use_labels_on_the_first_output():
    model, data = dict_model()
    distilled = run(create("distill.kd", width=0.5, epochs=2, alpha=0.5), model, Context(data=data))
    kinds = {n: o["loss"] for n, o in distilled.layers["student"]["outputs"].items()}
    assert list(kinds.values()) == ["KL (softened)", "KL (softened)"]  # both [N, C] score outputs
    assert "soft loss only" not in distilled.summary  # the labels were used on 'logits'

    def accuracy(module):
        return float((predict_outputs(module, data.x_test)[0].argmax(1) == data.y_test).mean())

    before = accuracy(model.obj)
    tuned = run(create("finetune", epochs=15, learning_rate=1e-2), model, Context(data=data))
    assert accuracy(tuned.model.obj) > before + 0.3
    assert "1 of 2" in tuned.summary
    assert any("first of 2 outputs" in w and "distill.kd" in w for w in tuned.warnings)


def test_finetune_refuses_labels_the_first_output_cannot_take():
    model = three_heads()
    x = np.random.default_rng(2).standard_normal((64, 3, 12, 12)).astype(np.float32)
    data = Data("labelled", x[:48], x[48:], np.zeros(48, np.int64), np.zeros(16, np.int64))
    with pytest.raises(StudioError) as err:
        run(create("finetune", epochs=1), model, Context(data=data))
    message = str(err.value)
    assert "\n" not in message and message.startswith("finetune: ") and "[2, 2, 12, 12]" in message


class PatchTokens(nn.Module):
    """ViT's stem: patches -> tokens, a class token expanded to the batch, mean -> 3 scores."""

    def __init__(self):
        super().__init__()
        self.patch, self.head = nn.Conv2d(3, 8, 4, 4), nn.Linear(8, 3)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))

    def forward(self, x):
        h = self.patch(x).flatten(2).transpose(1, 2)
        return self.head(torch.cat([self.cls.expand(h.shape[0], -1, -1), h], 1).mean(1))


def test_converted_model_whose_trace_bakes_the_batch_still_runs_at_any_batch():
    """A legacy ONNX export converted to torch (onnx2torch) and exported again: the trace turns
    the class token's batch into a constant; the studio notices and writes a fixed-batch file."""
    from studio.core.passes.onnx_torch import onnx_to_torch

    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.onnx.export(PatchTokens().eval(), (torch.randn(2, 3, 8, 8),), buffer, dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    converted = onnx_to_torch(Model(onnx.load_from_string(buffer.getvalue()), ONNX, (1, 3, 8, 8), name="tokens"))
    proto = to_onnx_proto(converted)
    x = np.random.default_rng(3).standard_normal((5, 3, 8, 8)).astype(np.float32)
    got = run_session_all(session(proto), x)[0]
    want = predict_outputs(converted.obj, x)[0]
    assert got.shape == (5, 3) and np.abs(got - want).max() < 1e-4
