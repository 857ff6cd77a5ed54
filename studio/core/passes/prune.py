"""Unstructured magnitude pruning, with optional fine-tuning that keeps the zeros.

Masks are applied by hand (a multiply after each optimizer step) instead of with
torch.nn.utils.prune: its forward hooks break copy.deepcopy and do not work on TorchScript
modules, and a pass must be able to copy any model it is given."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from . import targets as tg
from .base import Context, Pass, PassConfig, PassResult
from .registry import register


class MagnitudeConfig(PassConfig):
    sparsity: float = Field(0.8, ge=0.0, lt=1.0, description="Fraction of weights set to zero")
    scope: Literal["global", "per_layer"] = Field("global", description="One threshold for all chosen layers, or the same fraction in each")
    fine_tune_epochs: int = Field(0, ge=0, le=200, description="Epochs of recovery training on the data's training split (0 = none)")
    learning_rate: float = Field(1e-3, gt=0, le=1.0, description="Fine-tune learning rate")


def weight_layers(module, config: PassConfig):
    """(name, module) of the Linear/Conv layers chosen by the config's targets and ignore."""
    chosen = set(tg.select(tg.torch_layers(module), config.targets, config.ignore))
    return [(n, m) for n, m in module.named_modules() if n in chosen]


def sparsity_of(tensor) -> float:
    return float((tensor == 0).sum()) / max(1, tensor.numel())


@register
class MagnitudePrune(Pass):
    id = "prune.magnitude"
    title = "Magnitude pruning (unstructured)"
    description = (
        "Zeroes the smallest weights. Shrinks the compressed file, not the latency: "
        "dense runtimes compute the zeros anyway."
    )
    Config = MagnitudeConfig
    frameworks = ("torch",)

    def apply(self, model, context: Context):
        import torch

        cfg: MagnitudeConfig = self.config
        new = model.copy()
        layers = weight_layers(new.obj, cfg)
        if not layers:
            raise ValueError("prune.magnitude: no Linear or Conv layer matches the targets")
        before = {n: sparsity_of(m.weight.data) for n, m in layers}
        yield 0.0, f"ranking {len(layers)} layers"
        masks = {}
        with torch.no_grad():
            if cfg.scope == "global":
                magnitudes = torch.cat([m.weight.detach().abs().flatten() for _, m in layers])
                k = int(cfg.sparsity * magnitudes.numel())
                threshold = magnitudes.kthvalue(k).values if k > 0 else magnitudes.min() - 1
                for n, m in layers:
                    masks[n] = (m.weight.abs() > threshold).to(m.weight.dtype)
            else:
                for n, m in layers:
                    w = m.weight.detach().abs().flatten()
                    k = int(cfg.sparsity * w.numel())
                    threshold = w.kthvalue(k).values if k > 0 else w.min() - 1
                    masks[n] = (m.weight.abs() > threshold).to(m.weight.dtype)

            def apply_masks():
                with torch.no_grad():
                    for n, m in layers:
                        m.weight.mul_(masks[n])

            apply_masks()
        yield 0.1, "pruned"
        if cfg.fine_tune_epochs:
            yield from self.recovery_training(new.obj, new.input_shape, context, 0.1, after_step=apply_masks)
        new.obj.eval()
        record = {
            n: {
                "op": type(m).__name__,
                "parameters": m.weight.numel(),
                "sparsity_before": round(before[n], 4),
                "sparsity": round(sparsity_of(m.weight.data), 4),
            }
            for n, m in layers
        }
        total = sum(r["parameters"] for r in record.values())
        zeros = sum(r["parameters"] * r["sparsity"] for r in record.values())
        summary = f"{zeros / total:.1%} of {total:,} weights in {len(layers)} layers are zero"
        yield 1.0, summary
        return PassResult(new, record, summary)
