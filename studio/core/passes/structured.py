"""Structured pruning with Torch-Pruning: whole channels, neurons and attention heads leave the
model, so its tensors (and its latency on a dense runtime) really shrink.

Torch-Pruning traces the model into a dependency graph, so pruning one conv's outputs also prunes
the batch norm after it, the next conv's inputs, every branch joined by a residual add or a
concat, and the matching groups of depthwise/grouped convs; hand-written channel surgery gets
those couplings wrong. The final classifier's outputs are never pruned (they are the classes)."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from ..errors import StudioError
from . import targets as tg
from .base import Context, Pass, PassConfig, PassResult, conversion_notes
from .registry import register

KINDS = ("Linear", "Conv1d", "Conv2d", "Conv3d", "NonDynamicallyQuantizableLinear")


class StructuredConfig(PassConfig):
    ratio: float = Field(0.5, ge=0.0, lt=1.0, description="Fraction of channels removed")
    importance: Literal["l1", "l2", "bn_scale", "taylor"] = Field("l2", description="How channels are ranked (taylor uses a few batches of data)")
    scope: Literal["global", "per_layer"] = Field("per_layer", description="One ranking across layers (global) or the same ratio in each layer")
    round_to: int = Field(8, ge=1, le=64, description="Kept channel counts are a multiple of this (1 = no rounding)")
    prune_heads: bool = Field(False, description="Remove whole attention heads instead of head dimensions")
    fine_tune_epochs: int = Field(0, ge=0, le=200, description="Epochs of recovery training after pruning (0 = none)")
    learning_rate: float = Field(1e-3, gt=0, le=1.0, description="Fine-tune learning rate")


def _weight_layers(module):
    return [(n, m) for n, m in module.named_modules() if type(m).__name__ in KINDS]


def final_layers(module, example) -> set[str]:
    """Names of the Linear/Conv layers whose outputs are model outputs (the classifier): found
    by hooking every layer and seeing whose output tensor is the model's output."""
    import torch

    produced = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: produced.__setitem__(id(o), n))
             for n, m in _weight_layers(module)]
    try:
        with torch.no_grad():
            out = module(example)
    finally:
        for h in hooks:
            h.remove()
    outs = out if isinstance(out, (tuple, list)) else [out]
    names = {produced[id(o)] for o in outs if id(o) in produced}
    if not names:  # output went through a reshape/activation: fall back to the last layer
        layers = _weight_layers(module)
        names = {layers[-1][0]} if layers else set()
    return names


def shapes(module) -> dict[str, tuple[int, int]]:
    """(out, in) channel counts of every weight layer."""
    result = {}
    for n, m in _weight_layers(module):
        out_c, in_c = m.weight.shape[0], m.weight.shape[1]
        if type(m).__name__.startswith("Conv"):
            in_c *= m.groups
        result[n] = (int(out_c), int(in_c))
    for n, m in module.named_modules():
        if type(m).__name__ == "MultiheadAttention":
            result[n] = (int(m.embed_dim), int(m.num_heads))
    return result


def importance_of(kind: str):
    import torch_pruning as tp

    if kind == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if kind == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if kind == "bn_scale":
        return tp.importance.BNScaleImportance()
    return tp.importance.GroupTaylorImportance()


def prune_module(module, example, ratio, importance="l2", scope="per_layer", round_to=1,
                 ignored_names=(), prune_heads=False, grads=None, cancel=None):
    """Prune `module` in place with Torch-Pruning's MetaPruner. `grads(module)` fills .grad for
    Taylor importance; `cancel()` is polled between groups. Returns the number of groups pruned."""
    import torch
    import torch_pruning as tp

    named = dict(module.named_modules())
    ignored = [named[n] for n in ignored_names if n in named]
    num_heads = {m: m.num_heads for m in module.modules() if isinstance(m, torch.nn.MultiheadAttention)}
    if importance == "bn_scale" and not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules()):
        raise StudioError("prune.structured: importance 'bn_scale' needs batch-norm layers; this model has none")
    pruner = tp.pruner.MetaPruner(
        module, example, importance=importance_of(importance), pruning_ratio=ratio,
        global_pruning=scope == "global", ignored_layers=ignored, round_to=round_to if round_to > 1 else None,
        num_heads=num_heads, prune_num_heads=prune_heads, prune_head_dims=not prune_heads,
        head_pruning_ratio=ratio if prune_heads else 0.0,
    )
    if importance == "taylor":
        module.zero_grad()
        grads(module)
    count = 0
    for group in pruner.step(interactive=True):
        if cancel is not None:
            cancel()
        group.prune()
        count += 1
    # Torch-Pruning rewrites MHA's attributes; keep them consistent for the forward pass
    for m in module.modules():
        if isinstance(m, torch.nn.MultiheadAttention):
            m.head_dim = m.embed_dim // m.num_heads
    module.zero_grad(set_to_none=True)
    return count


def taylor_grads(module, x, y, batches=4, batch_size=64):
    """Gradients of the loss on a few batches: cross-entropy on labels, or on the model's own
    top-1 when there are none (a KL to itself would have zero gradient)."""
    import torch
    import torch.nn.functional as F

    module.eval()
    xt = torch.from_numpy(np.ascontiguousarray(x[: batches * batch_size], dtype=np.float32))
    for i in range(0, len(xt), batch_size):
        out = module(xt[i : i + batch_size])
        if y is not None:
            target = torch.from_numpy(np.asarray(y[i : i + batch_size], dtype=np.int64))
        else:
            target = out.detach().argmax(1)
        F.cross_entropy(out, target).backward()


@register
class StructuredPrune(Pass):
    id = "prune.structured"
    title = "Structured pruning (channels, Torch-Pruning)"
    description = (
        "Removes whole channels, neurons and attention-head dimensions across dependent layers "
        "(residual adds, concat, batch norm, grouped convs): tensors really shrink, so a dense "
        "runtime runs faster."
    )
    Config = StructuredConfig
    frameworks = ("torch", "onnx")

    def check(self, model):
        from .base import one_float_input

        return super().check(model) or one_float_input(self.id, model)

    def apply(self, model, context: Context):
        import torch

        cfg: StructuredConfig = self.config
        new = yield from self.torch_copy(model)
        module = new.obj
        module.eval()
        example = torch.from_numpy(new.example_input(1))
        chosen = set(tg.select(tg.torch_layers(module, KINDS), cfg.targets, cfg.ignore))
        finals = final_layers(module, example)
        ignored = {n for n, _ in _weight_layers(module) if n not in chosen} | finals
        before = shapes(module)
        yield 0.05, f"building the dependency graph ({len(chosen - finals)} layers may shrink)"
        context.check_cancelled()
        grads = None
        if cfg.importance == "taylor":
            data = context.require_data(self.id)
            x = data.shaped(data.x_train, new.input_shape)

            def grads(m):
                taylor_grads(m, x, data.y_train)

        params_before = sum(p.numel() for p in module.parameters())
        try:
            prune_module(module, example, cfg.ratio, cfg.importance, cfg.scope, cfg.round_to,
                         ignored, cfg.prune_heads, grads, context.check_cancelled)
        except StudioError:
            raise
        except Exception as exc:  # a model Torch-Pruning cannot trace
            if type(exc).__name__ == "Cancelled":
                raise
            raise StudioError(f"prune.structured: Torch-Pruning failed on this model: {exc}") from None
        yield 0.3, "pruned"
        context.check_cancelled()
        try:
            with torch.no_grad():
                module(example)  # fails here, not in a later stage, if the shapes no longer fit
        except Exception as exc:  # noqa: BLE001 - e.g. a fixed-size reshape Torch-Pruning could not see
            raise StudioError(f"prune.structured: the pruned model no longer runs ({str(exc).splitlines()[0]}); "
                              "ignore the layers before that reshape, or use prune.magnitude / lowrank.svd") from None
        if cfg.fine_tune_epochs:
            yield from self.recovery_training(module, new.input_shape, context, 0.3)
        module.eval()
        after = shapes(module)
        record = {}
        for name, (out_b, in_b) in before.items():
            out_a, in_a = after.get(name, (0, 0))
            record[name] = {"op": type(dict(module.named_modules()).get(name)).__name__,
                            "out_channels_before": out_b, "out_channels": out_a,
                            "removed_out": out_b - out_a, "in_channels_before": in_b, "in_channels": in_a}
        params_after = sum(p.numel() for p in module.parameters())
        summary = (f"parameters {params_before:,} -> {params_after:,} "
                   f"({1 - params_after / max(1, params_before):.1%} removed), ratio {cfg.ratio}, {cfg.importance}")
        warnings = conversion_notes(model)
        unchanged_attention = [n for n, r in record.items() if r["op"] == "MultiheadAttention" and r["removed_out"] == 0
                               and r["in_channels"] == r["in_channels_before"]]
        if unchanged_attention:
            warnings.append(f"attention layers kept their width and heads ({', '.join(unchanged_attention[:3])}): "
                            "Torch-Pruning found no prunable group through them here; only the feed-forward layers shrank")
        if params_after == params_before:
            warnings.append("no channel was removed: the chosen layers may all be coupled to the classifier or ignored")
        yield 1.0, summary
        return PassResult(new, record, summary, warnings)
