"""Knowledge distillation (Hinton et al., 2015): a smaller student learns the current model's
(the teacher's) softened outputs, mixed with the labels when there are any.

The student is the teacher narrowed by a width factor (Torch-Pruning removes 1 - width of the
channels across dependent layers, then the weights are kept or re-initialised), a zoo
architecture, or a class the user names as `package.module:Class` (built with no arguments).
loss = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y); without labels
only the soft term is used. A model with several outputs (detection heads, an autoencoder's
reconstruction and code) learns every one: class scores [batch, classes] through the softened KL
term, any other output through its mean squared error scaled by the teacher's variance (so each
output weighs alike); labels, as in measurement, are class ids of the first output."""

from __future__ import annotations

import importlib
from typing import Literal

import numpy as np
from pydantic import Field

from ..errors import Cancelled, StudioError
from ..signature import flatten_outputs, samples_first
from ..training import Batches, drain, predict_outputs, sample_indices, train
from .base import Context, Pass, PassConfig, PassResult, conversion_notes, is_torchscript, scaled
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
    max_train_macs: float = Field(
        3e12, ge=0, description="Budget of work in MACs: the teacher's MACs per sample once for its outputs, and 3x "
        "per sample and epoch for training (forward and backward); past it fewer epochs, then fewer samples, are "
        "trained and the stage says so (0: no budget)")


TRAIN_COST = 3  # a training step of one sample, in forward passes of the teacher (forward + backward)


def budget(cfg: DistillConfig, macs: int, samples: int) -> tuple[int, int, str | None]:
    """(epochs, samples, note) that fit cfg.max_train_macs, counting `macs` (the teacher's, batch
    1) per sample for the teacher's outputs and TRAIN_COST x `macs` per sample and epoch: the
    epochs are cut first (to at least 1), then the samples (to at least 8). YOLOv8n at 640x640
    (4.4 GMACs) would train 20 epochs of 204 random samples, about 4,000 steps of 0.7 s on two
    quiet cores, and did not finish in 15 minutes; the default budget (3e12) is 171 samples for
    one epoch there, and binds no small model."""
    def cost(epochs, n):
        return macs * n * (1 + TRAIN_COST * epochs)

    need = cost(cfg.epochs, samples)
    if cfg.max_train_macs <= 0 or macs <= 0 or need <= cfg.max_train_macs:
        return cfg.epochs, samples, None
    epochs, used = int((cfg.max_train_macs / (macs * samples) - 1) // TRAIN_COST), samples
    if epochs < 1:
        epochs, used = 1, min(samples, max(8, int(cfg.max_train_macs // cost(1, 1))))
    note = (f"training budget: {cfg.epochs} epochs over {samples} samples would be {need:.1e} MACs (the teacher's "
            f"{macs:,} per sample, {TRAIN_COST}x that per sample and epoch to train); trained {epochs} epoch"
            f"{'s' if epochs > 1 else ''} over {used} samples to stay within max_train_macs {cfg.max_train_macs:.0e} "
            "(raise it to train more)")
    return epochs, used, note


def build_student(teacher_model, cfg: DistillConfig):
    """(student module, notes): the notes name the channel groups narrowing left whole."""
    return drain(build_student_steps(teacher_model, cfg))


def build_student_steps(teacher_model, cfg: DistillConfig, cancel=None):
    """build_student as a generator of (fraction, message): narrowing with Torch-Pruning (about a
    minute on YOLOv8n) reports every channel group and polls `cancel()` between its steps. The
    teacher is never changed (the student is narrowed from a copy)."""
    import torch

    if cfg.student == "narrow":
        from .structured import final_layers, model_args, prune_leaving_out_steps

        teacher = teacher_model.obj.eval()
        example = model_args(teacher_model)
        yield 0.0, "finding the output layers (kept whole)"
        finals = sorted(final_layers(teacher, example))
        if cancel is not None:
            cancel()
        try:  # a group that breaks Torch-Pruning or the model is left whole, as in prune.structured
            student, left_out = yield from prune_leaving_out_steps(teacher, example, 1.0 - cfg.width, "l2",
                                                                   "per_layer", 1, finals, cancel=cancel)
        except Cancelled:
            raise
        except StudioError as exc:
            reason = str(exc).partition(": ")[2].split("; ")[0]
            raise StudioError(f"distill.kd: the teacher cannot be narrowed to width {cfg.width} ({reason}); "
                              "choose student 'zoo' or 'class' (a smaller model of your own)") from None
        student.eval()
        if cfg.reinit:
            torch.manual_seed(0)
            for m in student.modules():
                if hasattr(m, "reset_parameters") and m is not student:
                    m.reset_parameters()
        notes = []
        if left_out:
            notes.append(f"narrowing left {len(left_out)} layer groups whole (Torch-Pruning could not narrow them "
                         "here): " + "; ".join(f"{n} ({r})" for n, r in left_out[:4]) + (" ..." if len(left_out) > 4 else ""))
        return student, notes
    if cfg.student == "zoo":
        from .. import zoo

        if cfg.name not in zoo.names():
            raise StudioError(f"distill.kd: no zoo model '{cfg.name}'; choose from {', '.join(zoo.names())}")
        return zoo.build(cfg.name), []
    module_name, _, class_name = cfg.name.partition(":")
    if not module_name or not class_name:
        raise StudioError("distill.kd: name the student class as package.module:Class")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
        return cls(), []
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
        student, notes = yield from scaled(build_student_steps(teacher, cfg, context.check_cancelled), 0.02, 0.1,
                                           f"building the student ({cfg.student}): ")
        context.check_cancelled()
        x = data.shaped(data.x_train, teacher.input_shape)
        y_train = data.y_train
        epochs, used, budget_note = budget(cfg, _macs(model), len(x))
        if used < len(x):  # a random subset, the same for every seed-alike run
            pick = np.sort(np.random.default_rng(context.seed).permutation(len(x))[:used])
            x = x[pick]
            y_train = None if y_train is None else y_train[pick]
        if budget_note:
            notes.append(budget_note)
        sig = teacher.io  # several inputs: teacher and student get the same tuple, in this order
        with torch.no_grad():
            try:
                args = Batches(x, sig)[torch.from_numpy(sample_indices(student, 2, len(x)))]
                probe = samples_first(flatten_outputs(student(*args)), args, sig)
            except Exception:
                if not sig.multi:
                    raise
                raise StudioError(f"distill.kd: the {cfg.student} student cannot take the teacher's inputs "
                                  f"({', '.join(sig.names)}, in this order); choose student 'narrow' (the teacher "
                                  "narrowed takes the same inputs) or a class whose forward takes them") from None
        soft = yield from _teacher_outputs(teacher.obj, x, sig, context)  # every teacher output, once
        names = [s.name for s in teacher.io.outputs][:len(soft)]
        names += [f"output_{i}" for i in range(len(names), len(soft))]
        got = [tuple(p.shape[1:]) for p in probe if isinstance(p, torch.Tensor)]
        want = [tuple(o.shape[1:]) for o in soft]
        if got != want:
            raise StudioError(f"distill.kd: the student's outputs {got} differ from the teacher's {want}; "
                              "a student must give the same outputs")
        kinds = ["kl" if o.dim() == 2 and o.shape[1] > 1 else "mse" for o in soft]
        scale = [float(o.float().var()) + 1e-8 for o in soft]  # an MSE term per output weighs about 1
        labels = y_train is not None and cfg.alpha < 1.0 and kinds[0] == "kl" \
            and int(np.max(y_train)) < soft[0].shape[1]
        if y_train is not None and cfg.alpha < 1.0 and not labels:
            notes.append(f"the labels were not used: they are class ids of the first output, and '{names[0]}' "
                         f"{list(soft[0].shape[1:])} is not [batch, classes] with a class for each; soft loss only")
        t = cfg.temperature

        def loss_fn(module, args, yb, idx):
            outs = samples_first(flatten_outputs(module(*args)), args, sig)  # like the teacher's
            loss = 0.0
            for out, target, kind, var in zip(outs, soft, kinds, scale):
                target = target[idx]
                if kind == "kl":
                    loss = loss + F.kl_div(F.log_softmax(out / t, 1), F.softmax(target / t, 1),
                                           reduction="batchmean") * t * t
                else:
                    loss = loss + F.mse_loss(out, target) / var
            if not labels:
                return loss
            return cfg.alpha * loss + (1 - cfg.alpha) * F.cross_entropy(outs[0], yb)

        for fraction, message in train(student, x, y_train if labels else None, epochs, cfg.learning_rate,
                                       seed=context.seed, loss_fn=loss_fn, who=self.id, signature=sig):
            context.check_cancelled()
            yield 0.12 + 0.88 * fraction, f"distilling {message}"
        student.eval()
        new = teacher.with_obj(student, "torch", format="distilled", meta=dict(teacher.meta, teacher=teacher.name))
        t_params = sum(p.numel() for p in teacher.obj.parameters())
        s_params = sum(p.numel() for p in student.parameters())
        fit_n = min(len(x), 512 if budget_note is None else 64)  # budget bound: a heavy model, fewer
        mine = predict_outputs(student, x[:fit_n], sig)
        fit = {}  # per output: top-1 agreement for class scores, cosine similarity otherwise
        for name, kind, a, b in zip(names, kinds, mine, soft):
            b = b[:fit_n].numpy()
            if kind == "kl":
                fit[name] = {"top1_agreement": round(float((a.argmax(1) == b.argmax(1)).mean()), 4)}
            else:
                a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
                cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
                fit[name] = {"cosine": round(float(cos.mean()), 4)}
        record = {"training": {"epochs": epochs, "samples": used, "of_samples": len(data.x_train),
                               "budget_bound": budget_note is not None},
                  "student": {"kind": cfg.student, "parameters": s_params, "teacher_parameters": t_params,
                              "outputs": {n: {"loss": "KL (softened)" if k == "kl" else "MSE / teacher variance", **fit[n]}
                                          for n, k in zip(names, kinds)}}}
        first = fit[names[0]]
        if "top1_agreement" in first:
            record["student"]["train_agreement"] = first["top1_agreement"]
            quality = f"top-1 agreement on training data {first['top1_agreement']:.1%}"
        else:
            quality = f"cosine to the teacher on training data {first['cosine']:.3f}"
        summary = (f"student {s_params:,} parameters (teacher {t_params:,}); {quality}"
                   + (f" (output '{names[0]}'; {len(soft)} outputs learned)" if len(soft) > 1 else "")
                   + ("" if labels else "; soft loss only (no labels)")
                   + (f"; {epochs} epoch{'s' if epochs > 1 else ''} over {used} samples (training budget)"
                      if budget_note else ""))
        yield 1.0, summary
        return PassResult(new, record, summary, conversion_notes(model) + notes)


def _macs(model) -> int:
    """The teacher's MACs at batch 1 (0 when they cannot be counted: then no budget applies)."""
    from ..stats import count_macs

    try:
        return int(count_macs(model))
    except Exception:  # noqa: BLE001 - exotic graphs: unknown MACs
        return 0


def _teacher_outputs(module, x, sig, context, chunk: int = 16):
    """Every output of the teacher on x, a chunk at a time so the progress moves and a cancel is
    heard (YOLOv8n at 640x640: about a second a sample on two cores)."""
    import torch

    parts: list[list[np.ndarray]] = []
    for i in range(0, len(x), chunk):
        context.check_cancelled()
        yield 0.10 + 0.02 * i / max(1, len(x)), f"teacher outputs: {i}/{len(x)} samples"
        outs = predict_outputs(module, x[i:i + chunk], sig)
        parts = parts or [[] for _ in outs]
        for j, o in enumerate(outs):
            parts[j].append(o)
    return [torch.from_numpy(np.concatenate(p)) for p in parts]
