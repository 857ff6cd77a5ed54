"""N:M semi-structured sparsity: in every group of M consecutive weights along the input
dimension, only the N largest stay (2:4 is what NVIDIA's sparse tensor cores run).

The groups run along the input (reduction) dimension, as in NVIDIA's ASP: for a conv the kernel
is viewed as [out, kh, kw, in]. Works on torch modules and on ONNX weights (Conv, Gemm, MatMul;
initializers, Constant nodes and subgraphs alike, via studio.core.onnx_weights). onnxruntime's
CPU kernels are dense: the pattern does not make it faster."""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from .base import FINE_TUNED_IN_TORCH, Context, Pass, PassConfig, PassResult
from .registry import register

SPEED_WARNING = ("N:M sparsity does not speed up onnxruntime on CPU (dense kernels compute the zeros); "
                 "it needs sparse tensor cores (NVIDIA Ampere+ with TensorRT). The file shrinks only once zipped.")


class NMConfig(PassConfig):
    n: int = Field(2, ge=1, le=16, description="Weights kept in every group")
    m: int = Field(4, ge=2, le=32, description="Group size along the input dimension")
    fine_tune_epochs: int = Field(0, ge=0, le=200, description="Epochs of recovery training keeping the pattern (0 = none)")
    learning_rate: float = Field(1e-3, gt=0, le=1.0, description="Fine-tune learning rate")

    @model_validator(mode="after")
    def _n_below_m(self):
        if self.n >= self.m:
            raise ValueError("n must be smaller than m")
        return self


def nm_mask(w: np.ndarray, n: int, m: int, axis: int) -> np.ndarray | None:
    """A 0/1 mask keeping the n largest |w| in each group of m along `axis`; None when that
    axis is not a multiple of m."""
    moved = np.moveaxis(np.abs(w), axis, -1)
    if moved.shape[-1] % m:
        return None
    groups = moved.reshape(-1, m)
    order = np.argsort(-groups, axis=1, kind="stable")
    mask = np.zeros_like(groups, dtype=bool)
    np.put_along_axis(mask, order[:, :n], True, axis=1)
    return np.moveaxis(mask.reshape(moved.shape), -1, axis)


def check_pattern(w: np.ndarray, n: int, m: int, axis: int) -> bool:
    """True when every group of m along `axis` has at most n non-zeros."""
    moved = np.moveaxis(w, axis, -1)
    return bool(((moved.reshape(-1, m) != 0).sum(1) <= n).all())


def torch_axis(weight_ndim: int) -> int:
    """Input axis of a torch Linear ([out, in]) or Conv ([out, in, k...]) weight."""
    return 1


@register
class NMPrune(Pass[NMConfig]):
    id = "prune.nm"
    title = "N:M sparsity (2:4)"
    description = "Keeps N of every M weights along the input dimension (2:4 runs on sparse tensor cores)."
    Config = NMConfig
    frameworks = ("torch", "onnx")

    def apply(self, model, context: Context):
        cfg: NMConfig = self.config
        model, notes = yield from self.unless_script(model)
        new = model.copy()
        if new.is_onnx:
            record, warnings = yield from self._onnx(new, cfg, context)
            if record and cfg.fine_tune_epochs:
                new = yield from self.fine_tune_onnx(new, context, 0.5)
                warnings.append(FINE_TUNED_IN_TORCH)
        else:
            record, warnings = yield from self._torch(new, cfg, context)
        if not record:
            raise ValueError(f"prune.nm: no layer has an input dimension divisible by {cfg.m}")
        total = sum(r["parameters"] for r in record.values())
        zeros = sum(r["parameters"] * r["sparsity"] for r in record.values())
        summary = f"{cfg.n}:{cfg.m} pattern in {len(record)} layers, {zeros / total:.1%} of {total:,} weights zero"
        if not cfg.fine_tune_epochs and all(r.get("unchanged") for r in record.values()):
            warnings.insert(0, f"nothing changed: every chosen layer already had the {cfg.n}:{cfg.m} pattern")
        warnings.append(SPEED_WARNING)
        warnings[:0] = notes
        yield 1.0, summary
        return PassResult(new, record, summary, warnings)

    def _torch(self, new, cfg: NMConfig, context: Context):
        import torch

        from .prune import weight_layers

        layers = weight_layers(new.obj, cfg)
        masks, record, warnings, unchanged = {}, {}, [], {}
        for i, (name, module) in enumerate(layers):
            context.check_cancelled()
            w = module.weight.detach().numpy()
            if type(module).__name__.startswith("Conv") and module.groups > 1 and w.shape[1] % cfg.m:
                mask = None
            else:
                mask = nm_mask(w, cfg.n, cfg.m, torch_axis(w.ndim))
            if mask is None:
                warnings.append(f"{name}: {w.shape[1]} inputs is not a multiple of {cfg.m}; left dense")
                continue
            masks[name] = (module, torch.from_numpy(mask.astype(np.float32)))
            unchanged[name] = not np.any(w[~mask])
            yield 0.1 * (i + 1) / len(layers), f"{name}: {cfg.n}:{cfg.m}"

        def apply_masks():
            with torch.no_grad():
                for module, mask in masks.values():
                    module.weight.mul_(mask)

        apply_masks()
        if cfg.fine_tune_epochs:
            yield from self.recovery_training(new.obj, new.input_shape, context, 0.1, after_step=apply_masks,
                                              signature=new.io)
        new.obj.eval()
        for name, (module, _) in masks.items():
            w = module.weight.detach()
            record[name] = {"op": type(module).__name__, "pattern": f"{cfg.n}:{cfg.m}", "parameters": w.numel(),
                            "sparsity": round(float((w == 0).float().mean()), 4), "unchanged": unchanged[name]}
        return record, warnings

    def _onnx(self, new, cfg: NMConfig, context: Context):
        from .prune import NO_ONNX_LAYERS, onnx_layers

        chosen = onnx_layers(new.obj, cfg)
        if not chosen:
            raise ValueError(f"prune.nm: {NO_ONNX_LAYERS}")
        record, warnings = {}, []
        for i, weight in enumerate(chosen):
            context.check_cancelled()
            w, axis = weight.array(), weight.input_axis
            mask = nm_mask(w, cfg.n, cfg.m, axis)
            if mask is None:
                warnings.append(f"{weight.name}: input dimension {w.shape[axis]} is not a multiple of {cfg.m}; left dense")
                continue
            pruned = np.where(mask, w, 0).astype(w.dtype)
            weight.write(pruned)
            record[weight.name] = {"op": weight.op, "initializer": weight.tensor_name, "pattern": f"{cfg.n}:{cfg.m}",
                                   "parameters": int(w.size), "sparsity": round(float((pruned == 0).mean()), 4),
                                   "unchanged": bool(np.array_equal(pruned, w))}
            yield 0.5 * (i + 1) / len(chosen), f"{weight.name}: {cfg.n}:{cfg.m}"
        return record, warnings
