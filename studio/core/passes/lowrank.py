"""Low-rank factorization by truncated SVD: a layer becomes two thinner ones.

Linear W [out, in] = U S V^T -> Linear(in, r, no bias) with sqrt(S) V^T, then Linear(r, out)
with U sqrt(S) and the bias. Conv W [out, in, kh, kw] reshaped to [out, in*kh*kw] -> conv kxk
with r outputs (same stride/padding) followed by a 1x1 conv to out: the SVD of the reshaped
kernel is the best rank-r approximation of the layer's linear map on each patch, and both
factors are ordinary layers every runtime runs fast. Layers whose factors would not have fewer
parameters are left alone. The module is replaced in the model, so the graph shows the factors."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field

from . import targets as tg
from .base import Context, Pass, PassConfig, PassResult
from .registry import register


class LowRankConfig(PassConfig):
    rank_by: Literal["ratio", "energy"] = Field("energy", description="Choose each rank by a fraction of the full rank or by kept singular-value energy")
    rank_ratio: float = Field(0.25, gt=0.0, le=1.0, description="Kept rank as a fraction of min(out, in) (rank_by = ratio)")
    energy: float = Field(0.9, gt=0.0, le=1.0, description="Kept fraction of the sum of squared singular values (rank_by = energy)")
    fine_tune_epochs: int = Field(0, ge=0, le=200, description="Epochs of recovery training after factorizing (0 = none)")
    learning_rate: float = Field(1e-3, gt=0, le=1.0, description="Fine-tune learning rate")


def choose_rank(s: np.ndarray, cfg: LowRankConfig) -> int:
    if cfg.rank_by == "ratio":
        return max(1, math.ceil(cfg.rank_ratio * len(s)))
    energy = np.cumsum(s.astype(np.float64) ** 2)
    return int(min(len(s), np.searchsorted(energy / energy[-1], cfg.energy - 1e-12) + 1))


def factorize(module, cfg: LowRankConfig):
    """(replacement nn.Sequential, rank, full rank) or None when it would not save parameters."""
    import torch
    from torch import nn

    w = module.weight.detach().double()
    is_conv = isinstance(module, nn.Conv2d)
    if is_conv and (module.groups != 1 or module.padding_mode != "zeros"):
        return None
    out_c = w.shape[0]
    mat = w.reshape(out_c, -1)
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    full = len(s)
    r = choose_rank(s.numpy(), cfg)
    if r * (mat.shape[0] + mat.shape[1]) >= mat.numel():
        return None
    root = s[:r].sqrt()
    first_w = (root[:, None] * vh[:r]).float()
    second_w = (u[:, :r] * root[None, :]).float()
    bias = module.bias is not None
    if is_conv:
        first = nn.Conv2d(module.in_channels, r, module.kernel_size, module.stride, module.padding,
                          module.dilation, bias=False)
        first.weight.data = first_w.reshape(r, *w.shape[1:]).contiguous()
        second = nn.Conv2d(r, out_c, 1, bias=bias)
        second.weight.data = second_w.reshape(out_c, r, 1, 1).contiguous()
    else:
        first = nn.Linear(mat.shape[1], r, bias=False)
        first.weight.data = first_w.contiguous()
        second = nn.Linear(r, out_c, bias=bias)
        second.weight.data = second_w.contiguous()
    if bias:
        second.bias.data = module.bias.detach().clone()
    return nn.Sequential(first, second), r, full


def _replace(root, name: str, new):
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


@register
class LowRank(Pass):
    id = "lowrank.svd"
    title = "Low-rank factorization (SVD)"
    description = ("Replaces Linear and Conv2d layers by two thinner layers from a truncated SVD; "
                   "fewer parameters and MACs, and dense runtimes run the factors faster when the rank is low.")
    Config = LowRankConfig
    frameworks = ("torch",)

    def apply(self, model, context: Context):
        cfg: LowRankConfig = self.config
        new = model.copy()
        module = new.obj
        # exactly Linear / Conv2d: MultiheadAttention's out_proj is a Linear subclass whose weight
        # the attention function reads directly, so it cannot be replaced by a Sequential
        chosen = tg.select(tg.torch_layers(module, ("Linear", "Conv2d")), cfg.targets, cfg.ignore)
        record, skipped = {}, []
        before = sum(p.numel() for p in module.parameters())
        for i, name in enumerate(chosen):
            context.check_cancelled()
            layer = module.get_submodule(name)
            result = factorize(layer, cfg)
            if result is None:
                skipped.append(name)
                record[name] = {"op": type(layer).__name__, "factorized": False,
                                "reason": "factors would not have fewer parameters"}
            else:
                seq, r, full = result
                _replace(module, name, seq)
                record[name] = {"op": type(layer).__name__, "factorized": True, "rank": r, "full_rank": full,
                                "parameters_before": sum(p.numel() for p in layer.parameters()),
                                "parameters": sum(p.numel() for p in seq.parameters())}
            yield 0.3 * (i + 1) / max(1, len(chosen)), f"{name}: " + (f"rank {record[name].get('rank')}" if result else "kept")
        if cfg.fine_tune_epochs:
            yield from self.recovery_training(module, new.input_shape, context, 0.3)
        module.eval()
        after = sum(p.numel() for p in module.parameters())
        done = sum(1 for r in record.values() if r["factorized"])
        summary = f"{done} of {len(chosen)} layers factorized; parameters {before:,} -> {after:,}"
        warnings = []
        if skipped:
            warnings.append(f"{len(skipped)} layers kept whole (the factors would be larger): {', '.join(skipped[:5])}")
        if not done:
            warnings.append("no layer was factorized: raise rank_ratio's reduction or lower energy")
        yield 1.0, summary
        return PassResult(new, record, summary, warnings)
