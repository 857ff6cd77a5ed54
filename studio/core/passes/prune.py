"""Unstructured magnitude pruning, with optional fine-tuning that keeps the zeros.

Masks are applied by hand (a multiply after each optimizer step) instead of with
torch.nn.utils.prune: its forward hooks break copy.deepcopy and do not work on TorchScript
modules, and a pass must be able to copy any model it is given.

ONNX models are pruned in place of their stored weights (initializers, Constant nodes, subgraphs:
studio.core.onnx_weights), no torch needed; fine-tuning one converts it to torch first."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from .. import onnx_weights as ow
from . import targets as tg
from .base import FINE_TUNED_IN_TORCH, Context, Pass, PassConfig, PassResult
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


NO_ONNX_LAYERS = ("no Conv, Gemm or MatMul layer with a float constant weight matches the targets "
                  "(a quantized layer's weights are INT8: put this pass before the quantizer)")


def onnx_layers(proto, config: PassConfig) -> list[ow.Weight]:
    """The Conv/Gemm/MatMul weights of an ONNX model chosen by the config (any graph, any storage)."""
    return ow.select(ow.layer_weights(proto), config.targets, config.ignore)


def magnitude_masks(arrays: dict[str, np.ndarray], sparsity: float, scope: str) -> dict[str, np.ndarray]:
    """Keep-masks zeroing the `sparsity` fraction of smallest |w|: one threshold over all arrays
    (global) or one per array (per_layer)."""

    def threshold(values: np.ndarray) -> float:
        k = int(sparsity * values.size)
        return float(np.partition(values, k - 1)[k - 1]) if k > 0 else -1.0

    if scope == "global":
        t = threshold(np.concatenate([np.abs(a).ravel() for a in arrays.values()]))
        return {n: np.abs(a) > t for n, a in arrays.items()}
    return {n: np.abs(a) > threshold(np.abs(a).ravel()) for n, a in arrays.items()}


@register
class MagnitudePrune(Pass[MagnitudeConfig]):
    id = "prune.magnitude"
    title = "Magnitude pruning (unstructured)"
    description = (
        "Zeroes the smallest weights. Shrinks the compressed file, not the latency: "
        "dense runtimes compute the zeros anyway."
    )
    Config = MagnitudeConfig
    frameworks = ("torch", "onnx")

    def apply(self, model, context: Context):
        model, notes = yield from self.unless_script(model)
        if model.is_onnx:
            result = yield from self._onnx(model, context)
            result.warnings[:0] = notes
            return result
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
            yield from self.recovery_training(new.obj, new.input_shape, context, 0.1, after_step=apply_masks,
                                              signature=new.io)
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
        return PassResult(new, record, summary, [] if cfg.fine_tune_epochs else unchanged_warning(record))

    def _onnx(self, model, context: Context):
        cfg: MagnitudeConfig = self.config
        new = model.copy()
        layers = onnx_layers(new.obj, cfg)
        if not layers:
            raise ValueError(f"prune.magnitude: {NO_ONNX_LAYERS}")
        yield 0.0, f"ranking {len(layers)} layers"
        arrays = {w.name: w.array() for w in layers}
        masks = magnitude_masks(arrays, cfg.sparsity, cfg.scope)
        record = {}
        for w in layers:
            context.check_cancelled()
            before = arrays[w.name]
            after = np.where(masks[w.name], before, 0)
            w.write(after)
            record[w.name] = {"op": w.op, "initializer": w.tensor_name, "parameters": int(before.size),
                              "sparsity_before": round(float((before == 0).mean()), 4),
                              "sparsity": round(float((after == 0).mean()), 4)}
        warnings = [] if cfg.fine_tune_epochs else unchanged_warning(record)
        if cfg.fine_tune_epochs:
            new = yield from self.fine_tune_onnx(new, context, 0.1)
            warnings.append(FINE_TUNED_IN_TORCH)
        total = sum(r["parameters"] for r in record.values())
        zeros = sum(r["parameters"] * r["sparsity"] for r in record.values())
        summary = f"{zeros / total:.1%} of {total:,} weights in {len(layers)} layers are zero"
        yield 1.0, summary
        return PassResult(new, record, summary, warnings)


def unchanged_warning(record: dict) -> list[str]:
    """A warning when pruning zeroed no weight that was not zero already."""
    if all(r["sparsity"] <= r["sparsity_before"] for r in record.values()):
        return ["nothing changed: no weight was zeroed (sparsity 0, or the layers were already this sparse)"]
    return []
