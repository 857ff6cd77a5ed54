"""Low-rank factorization by truncated SVD: a layer becomes two thinner ones.

Linear W [out, in] = U S V^T -> Linear(in, r, no bias) with sqrt(S) V^T, then Linear(r, out)
with U sqrt(S) and the bias. Conv W [out, in, kh, kw] reshaped to [out, in*kh*kw] -> conv kxk
with r outputs (same stride/padding) followed by a 1x1 conv to out: the SVD of the reshaped
kernel is the best rank-r approximation of the layer's linear map on each patch, and both
factors are ordinary layers every runtime runs fast. Layers whose factors would not have fewer
parameters are left alone. The module is replaced in the model, so the graph shows the factors.

ONNX models are factorized in the graph itself, no torch needed: a Conv/Gemm/MatMul node with a
constant weight becomes two nodes of the same op (the second keeps the node's name, outputs and
bias), wherever the weight is stored (initializer, Constant node, subgraph)."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field

from .. import onnx_weights as ow
from . import targets as tg
from .base import FINE_TUNED_IN_TORCH, Context, Pass, PassConfig, PassResult
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


def factorize_onnx(proto, weight: ow.Weight, cfg: LowRankConfig) -> tuple:
    """Split one ONNX layer into two thinner ones, in place: (rank, full rank, parameters of the
    factors, "") or (None, None, None, why it was kept)."""
    from onnx import helper, numpy_helper

    node, graph = weight.node, weight.graph
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    w = weight.array()
    if weight.op == "Conv":
        if attrs.get("group", 1) != 1:
            return None, None, None, "grouped conv"
        mat = w.reshape(w.shape[0], -1)  # [out, in*k...]
    elif weight.op == "Gemm":
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0:
            return None, None, None, "Gemm with transA or alpha"
        mat = w if attrs.get("transB", 0) else w.T  # [out, in]
    else:
        if w.ndim != 2:
            return None, None, None, "batched MatMul weight"
        mat = w.T  # MatMul: x @ W with W [in, out]
    u, s, vh = np.linalg.svd(mat.astype(np.float64), full_matrices=False)
    r = choose_rank(s, cfg)
    if r * (mat.shape[0] + mat.shape[1]) >= mat.size:
        return None, None, None, "factors would not have fewer parameters"
    root = np.sqrt(s[:r])
    first = (root[:, None] * vh[:r]).astype(w.dtype)  # [r, in]
    second = (u[:, :r] * root[None, :]).astype(w.dtype)  # [out, r]
    base = weight.name.replace("/", "_").strip("_") or "layer"
    first_name = ow.unique_name(proto, f"{base}_lowrank_in")
    second_name = ow.unique_name(proto, f"{base}_lowrank_out")
    middle = ow.unique_name(proto, f"{base}_lowrank_mid")
    if weight.op == "Conv":
        first = first.reshape(r, *w.shape[1:])
        second = second.reshape(w.shape[0], r, *([1] * (w.ndim - 2)))
        first_node = helper.make_node("Conv", [node.input[0], first_name], [middle], name=f"{weight.name}_lowrank_in")
        first_node.attribute.extend(a for a in node.attribute if a.name != "kernel_shape")
        second_attrs = {"kernel_shape": [1] * (w.ndim - 2)}
    elif weight.op == "Gemm":
        first_node = helper.make_node("Gemm", [node.input[0], first_name], [middle], name=f"{weight.name}_lowrank_in",
                                      transB=1)
        second_attrs = {"transB": 1, "beta": attrs.get("beta", 1.0)}
    else:
        first, second = first.T, second.T  # MatMul weights are [in, out]
        first_node = helper.make_node("MatMul", [node.input[0], first_name], [middle], name=f"{weight.name}_lowrank_in")
        second_attrs = {}
    first_node.metadata_props.extend(node.metadata_props)
    graph.initializer.extend([numpy_helper.from_array(np.ascontiguousarray(first), first_name),
                              numpy_helper.from_array(np.ascontiguousarray(second), second_name)])
    # the original node becomes the second factor: it keeps its name, outputs and bias
    node.input[0], node.input[1] = middle, second_name
    del node.attribute[:]
    node.attribute.extend(helper.make_attribute(k, v) for k, v in second_attrs.items())
    ow.insert_before(graph, node, first_node)
    return r, len(s), int(first.size + second.size), ""


def _replace(root, name: str, new):
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


@register
class LowRank(Pass[LowRankConfig]):
    id = "lowrank.svd"
    title = "Low-rank factorization (SVD)"
    description = ("Replaces Linear and Conv2d layers by two thinner layers from a truncated SVD; "
                   "fewer parameters and MACs, and dense runtimes run the factors faster when the rank is low.")
    Config = LowRankConfig
    frameworks = ("torch", "onnx")

    def apply(self, model, context: Context):
        model, notes = yield from self.unless_script(model)
        if model.is_onnx:
            result = yield from self._onnx(model, context)
            result.warnings[:0] = notes
            return result
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
            yield from self.recovery_training(module, new.input_shape, context, 0.3, signature=new.io)
        module.eval()
        after = sum(p.numel() for p in module.parameters())
        done = sum(1 for r in record.values() if r["factorized"])
        summary = f"{done} of {len(chosen)} layers factorized; parameters {before:,} -> {after:,}"
        warnings = []
        if skipped:
            warnings.append(f"{len(skipped)} layers kept whole (the factors would be larger): {', '.join(skipped[:5])}")
        if not done:
            warnings.append(NOTHING_FACTORIZED)
        yield 1.0, summary
        return PassResult(new, record, summary, warnings)

    def _onnx(self, model, context: Context):
        from .prune import onnx_layers

        cfg: LowRankConfig = self.config
        new = model.copy()
        chosen = onnx_layers(new.obj, cfg)
        record, skipped = {}, []
        for i, weight in enumerate(chosen):
            context.check_cancelled()
            name, op, size = weight.name, weight.op, int(weight.array().size)
            rank, full, params, reason = factorize_onnx(new.obj, weight, cfg)
            if rank is None:
                skipped.append(name)
                record[name] = {"op": op, "factorized": False, "reason": reason}
            else:
                record[name] = {"op": op, "factorized": True, "rank": rank, "full_rank": full,
                                "parameters_before": size, "parameters": params}
            yield 0.3 * (i + 1) / max(1, len(chosen)), f"{name}: " + (f"rank {rank}" if rank else "kept")
        ow.drop_unused(new.obj)
        done = sum(1 for r in record.values() if r["factorized"])
        before = sum(r.get("parameters_before", 0) for r in record.values())
        after = sum(r.get("parameters", 0) for r in record.values())
        summary = f"{done} of {len(chosen)} layers factorized; their weights {before:,} -> {after:,}"
        warnings = []
        if not chosen:
            from .prune import NO_ONNX_LAYERS

            warnings.append(f"nothing changed: {NO_ONNX_LAYERS}")
        elif not done:
            warnings.append(NOTHING_FACTORIZED)
        if skipped:
            warnings.append(f"{len(skipped)} layers kept whole: {', '.join(skipped[:5])}")
        if done and cfg.fine_tune_epochs:
            new = yield from self.fine_tune_onnx(new, context, 0.3)
            warnings.append(FINE_TUNED_IN_TORCH)
        yield 1.0, summary
        return PassResult(new, record, summary, warnings)


NOTHING_FACTORIZED = "nothing changed: no layer was factorized; lower rank_ratio or energy"
