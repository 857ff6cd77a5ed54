"""N:M semi-structured sparsity: in every group of M consecutive weights along the input
dimension, only the N largest stay (2:4 is what NVIDIA's sparse tensor cores run).

The groups run along the input (reduction) dimension, as in NVIDIA's ASP: for a conv the kernel
is viewed as [out, kh, kw, in]. Works on torch modules and on ONNX initializers (Conv, Gemm,
MatMul weights). onnxruntime's CPU kernels are dense: the pattern does not make it faster."""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from . import targets as tg
from .base import Context, Pass, PassConfig, PassResult
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


def onnx_weights(proto, config: PassConfig) -> list[tuple[str, str, int]]:
    """(initializer name, node name, input axis) of the Conv/Gemm/MatMul weights chosen by the
    config (a torch layer name like "fc1" matches the node "/fc1/Gemm")."""
    from .quantize import excluded_nodes

    excluded = set(excluded_nodes(proto, config))
    inits = {i.name for i in proto.graph.initializer}
    found = []
    for node in proto.graph.node:
        if node.op_type not in {"Conv", "Gemm", "MatMul"} or node.name in excluded or len(node.input) < 2:
            continue
        if node.input[1] not in inits:
            continue
        if node.op_type == "Conv":
            axis = 1
        elif node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            axis = 1 if trans_b else 0
        else:
            axis = 0  # MatMul: x @ W with W [in, out]
        found.append((node.input[1], node.name, axis))
    return found


@register
class NMPrune(Pass):
    id = "prune.nm"
    title = "N:M sparsity (2:4)"
    description = "Keeps N of every M weights along the input dimension (2:4 runs on sparse tensor cores)."
    Config = NMConfig
    frameworks = ("torch", "onnx")

    def apply(self, model, context: Context):
        cfg: NMConfig = self.config
        new = model.copy()
        if new.is_onnx:
            if cfg.fine_tune_epochs:
                raise ValueError("prune.nm: fine-tuning needs a torch model; set fine_tune_epochs to 0 for ONNX")
            record, warnings = yield from self._onnx(new, cfg, context)
        else:
            record, warnings = yield from self._torch(new, cfg, context)
        if not record:
            raise ValueError(f"prune.nm: no layer has an input dimension divisible by {cfg.m}")
        total = sum(r["parameters"] for r in record.values())
        zeros = sum(r["parameters"] * r["sparsity"] for r in record.values())
        summary = f"{cfg.n}:{cfg.m} pattern in {len(record)} layers, {zeros / total:.1%} of {total:,} weights zero"
        warnings.append(SPEED_WARNING)
        yield 1.0, summary
        return PassResult(new, record, summary, warnings)

    def _torch(self, new, cfg: NMConfig, context: Context):
        import torch

        from .prune import weight_layers

        layers = weight_layers(new.obj, cfg)
        masks, record, warnings = {}, {}, []
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
            yield 0.1 * (i + 1) / len(layers), f"{name}: {cfg.n}:{cfg.m}"

        def apply_masks():
            with torch.no_grad():
                for module, mask in masks.values():
                    module.weight.mul_(mask)

        apply_masks()
        if cfg.fine_tune_epochs:
            yield from self.recovery_training(new.obj, new.input_shape, context, 0.1, after_step=apply_masks)
        new.obj.eval()
        for name, (module, _) in masks.items():
            w = module.weight.detach()
            record[name] = {"op": type(module).__name__, "pattern": f"{cfg.n}:{cfg.m}", "parameters": w.numel(),
                            "sparsity": round(float((w == 0).float().mean()), 4)}
        return record, warnings

    def _onnx(self, new, cfg: NMConfig, context: Context):
        from onnx import numpy_helper

        inits = {i.name: i for i in new.obj.graph.initializer}
        chosen = onnx_weights(new.obj, cfg)
        record, warnings = {}, []
        for i, (init_name, node_name, axis) in enumerate(chosen):
            context.check_cancelled()
            tensor = inits[init_name]
            w = numpy_helper.to_array(tensor)
            mask = nm_mask(w, cfg.n, cfg.m, axis)
            if mask is None:
                warnings.append(f"{node_name}: input dimension {w.shape[axis]} is not a multiple of {cfg.m}; left dense")
                continue
            pruned = np.where(mask, w, 0).astype(w.dtype)
            tensor.CopyFrom(numpy_helper.from_array(pruned, init_name))
            record[node_name] = {"op": "onnx", "initializer": init_name, "pattern": f"{cfg.n}:{cfg.m}",
                                 "parameters": int(w.size), "sparsity": round(float((pruned == 0).mean()), 4)}
            yield (i + 1) / max(1, len(chosen)), f"{node_name}: {cfg.n}:{cfg.m}"
        return record, warnings
