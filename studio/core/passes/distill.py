"""Knowledge distillation (Hinton et al., 2015): a smaller student learns the current model's
(the teacher's) softened outputs, mixed with the labels when there are any.

The student is the teacher narrowed by a width factor (Torch-Pruning removes 1 - width of the
channels across dependent layers, then the weights are kept or re-initialised), a zoo
architecture, or a class the user names as `package.module:Class` (built with no arguments).
loss = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y); without labels
only the soft term is used."""

from __future__ import annotations

import importlib
from typing import Literal

import numpy as np
from pydantic import Field

from ..errors import StudioError
from ..training import predict, train
from .base import Context, Pass, PassConfig, PassResult, conversion_notes, is_torchscript
from .registry import register


class DistillConfig(PassConfig):
    student: Literal["narrow", "zoo", "class"] = Field("narrow", description="The teacher narrowed by `width`, a zoo model, or a class")
    width: float = Field(0.5, gt=0.0, lt=1.0, description="Student channel fraction (student = narrow)")
    reinit: bool = Field(False, description="Re-initialise the narrowed student instead of keeping the teacher's kept weights")
    name: str = Field("", description="Zoo model name (student = zoo) or package.module:Class (student = class)")
    temperature: float = Field(4.0, gt=0.0, le=50.0, description="Softmax temperature of the soft targets")
    alpha: float = Field(0.7, ge=0.0, le=1.0, description="Weight of the soft (teacher) loss; 1 - alpha goes to the labels")
    epochs: int = Field(20, ge=1, le=500, description="Training epochs")
    learning_rate: float = Field(1e-3, gt=0, le=1.0, description="Adam learning rate")


def build_student(teacher_model, cfg: DistillConfig):
    import torch

    if cfg.student == "narrow":
        from .structured import final_layers, prune_module

        student = teacher_model.copy().obj.eval()
        example = torch.from_numpy(teacher_model.example_input(1))
        prune_module(student, example, 1.0 - cfg.width, "l2", "per_layer", 1, final_layers(student, example))
        if cfg.reinit:
            torch.manual_seed(0)
            for m in student.modules():
                if hasattr(m, "reset_parameters") and m is not student:
                    m.reset_parameters()
        return student
    if cfg.student == "zoo":
        from .. import zoo

        if cfg.name not in zoo.names():
            raise StudioError(f"distill.kd: no zoo model '{cfg.name}'; choose from {', '.join(zoo.names())}")
        return zoo.build(cfg.name)
    module_name, _, class_name = cfg.name.partition(":")
    if not module_name or not class_name:
        raise StudioError("distill.kd: name the student class as package.module:Class")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
        return cls()
    except Exception as exc:  # noqa: BLE001 - any failure to build the user's class
        raise StudioError(f"distill.kd: cannot build {cfg.name}: {exc}") from None


@register
class Distill(Pass[DistillConfig]):
    id = "distill.kd"
    title = "Knowledge distillation"
    description = ("Trains a smaller student (narrowed teacher, zoo model or your class) on the current model's "
                   "softened outputs; works without labels.")
    Config = DistillConfig
    frameworks = ("torch", "onnx")
    needs_data = True

    def apply(self, model, context: Context):
        import torch
        import torch.nn.functional as F

        cfg: DistillConfig = self.config
        data = context.require_data(self.id)
        teacher = model
        if model.is_onnx or is_torchscript(model):  # a converted copy: the teacher is not changed either way
            teacher = yield from self.torch_copy(model)
        yield 0.02, f"building the student ({cfg.student})"
        student = build_student(teacher, cfg)
        x = data.shaped(data.x_train, teacher.input_shape)
        with torch.no_grad():
            probe = student(torch.from_numpy(np.ascontiguousarray(x[:2], dtype=np.float32)))
        soft = torch.from_numpy(predict(teacher.obj, x))  # teacher logits, once
        if probe.shape[1:] != soft.shape[1:]:
            raise StudioError(f"distill.kd: the student outputs {tuple(probe.shape[1:])}, the teacher {tuple(soft.shape[1:])}")
        labels = data.y_train is not None and cfg.alpha < 1.0
        t = cfg.temperature

        def loss_fn(module, xb, yb, idx):
            out = module(xb)
            kd = F.kl_div(F.log_softmax(out / t, 1), F.softmax(soft[idx] / t, 1), reduction="batchmean") * t * t
            if not labels:
                return kd
            return cfg.alpha * kd + (1 - cfg.alpha) * F.cross_entropy(out, yb)

        for fraction, message in train(student, x, data.y_train if labels else None, cfg.epochs, cfg.learning_rate,
                                       seed=context.seed, loss_fn=loss_fn):
            context.check_cancelled()
            yield 0.05 + 0.95 * fraction, f"distilling {message}"
        student.eval()
        new = teacher.with_obj(student, "torch", format="distilled", meta=dict(teacher.meta, teacher=teacher.name))
        t_params = sum(p.numel() for p in teacher.obj.parameters())
        s_params = sum(p.numel() for p in student.parameters())
        agree = float((predict(student, x[:512]).argmax(1) == soft[:512].numpy().argmax(1)).mean())
        record = {"student": {"kind": cfg.student, "parameters": s_params, "teacher_parameters": t_params,
                              "train_agreement": round(agree, 4)}}
        summary = (f"student {s_params:,} parameters (teacher {t_params:,}); top-1 agreement on training data {agree:.1%}"
                   + ("" if labels else "; soft loss only (no labels)"))
        yield 1.0, summary
        return PassResult(new, record, summary, conversion_notes(model))
