"""Weight clustering (Deep Compression, Han et al. 2016): each layer's weights take one of 2^b
shared values, found by 1-D k-means with linear initialisation (spread evenly between min and
max, which the paper found keeps the rare large weights best). Zeros stay exactly zero, so the
pass stacks after pruning: the non-zero weights share 2^b - 1 values and zero is the last one.

The optional fine-tune trains only the clustered weights and, after each optimizer step, sets
every weight to the mean of its cluster: each centroid moves by the pooled updates of its
members (the paper's per-cluster gradient sum, up to Adam's scaling) and the weights stay tied.

A dense runtime gains nothing in speed; the win is storage: `studio.core.packed` writes the
indices bit-packed with a codebook per layer."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from ..training import train
from .base import FINE_TUNED_IN_TORCH, Context, Pass, PassConfig, PassResult
from .registry import register

SPEED_WARNING = ("clustering does not change latency (onnxruntime still computes in float32); it shrinks the "
                 "file only when stored packed (studio.core.packed) or compressed")


class ClusterConfig(PassConfig):
    bits: int = Field(4, ge=2, le=8, description="Shared values per layer: 2^bits (zero counts as one)")
    iterations: int = Field(30, ge=1, le=300, description="k-means iterations")
    fine_tune_epochs: int = Field(0, ge=0, le=200, description="Epochs of centroid fine-tuning (0 = none)")
    learning_rate: float = Field(1e-4, gt=0, le=1.0, description="Fine-tune learning rate")
    fold_batchnorm: bool = Field(True, description="Fold batch norms into their convs first (torch models), so the "
                                                   "exported convs keep 2^bits values")


def kmeans_1d(values: np.ndarray, k: int, iterations: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """(centroids float32 [<=k], index per value) by Lloyd's algorithm in 1-D: with sorted
    centroids the nearest one is found by a binary search on the midpoints."""
    v = values.astype(np.float64).ravel()
    if v.size == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    unique = np.unique(v)
    if len(unique) <= k:
        centroids = unique
    else:
        centroids = np.linspace(v.min(), v.max(), k)
        for _ in range(iterations):
            idx = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, v)
            sums = np.bincount(idx, weights=v, minlength=len(centroids))
            counts = np.bincount(idx, minlength=len(centroids))
            moved = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
            moved.sort()
            if np.allclose(moved, centroids, rtol=0, atol=1e-12):
                centroids = moved
                break
            centroids = moved
        centroids = np.unique(centroids)
    centroids = centroids.astype(np.float32)
    idx = np.searchsorted((centroids[1:].astype(np.float64) + centroids[:-1]) / 2, v)
    return centroids, idx


def cluster_array(w: np.ndarray, bits: int, iterations: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """(clustered copy of w, codebook): zeros stay zero, the rest share <= 2^bits - 1 values
    (2^bits when there are no zeros)."""
    flat = w.ravel()
    nonzero = flat != 0
    k = 2**bits - (1 if not nonzero.all() else 0)
    centroids, idx = kmeans_1d(flat[nonzero], k, iterations)
    out = np.zeros_like(flat, dtype=np.float32)
    out[nonzero] = centroids[idx]
    codebook = np.unique(out)
    return out.reshape(w.shape), codebook


@register
class KMeansCluster(Pass[ClusterConfig]):
    id = "cluster.kmeans"
    title = "Weight clustering (k-means)"
    description = ("Each layer's weights share 2^bits values (Deep Compression); zeros stay zero. "
                   "With the packed export, about bits/32 of the size.")
    Config = ClusterConfig
    frameworks = ("torch", "onnx")

    def apply(self, model, context: Context):
        cfg: ClusterConfig = self.config
        model, warnings = yield from self.unless_script(model)
        new = model.copy()
        folded = 0
        if new.is_onnx:
            record = yield from self._onnx(new, cfg, context)
            if record and cfg.fine_tune_epochs:
                new = yield from self.fine_tune_onnx(new, context, 0.2, constraint=lambda m: tie_clustered(m, 2**cfg.bits))
                warnings.append(FINE_TUNED_IN_TORCH)
        else:
            if cfg.fold_batchnorm:
                folded, warning = self._fold(new)
                warnings += warning
            record = yield from self._torch(new, cfg, context)
        if not record:
            from .prune import NO_ONNX_LAYERS

            raise ValueError("cluster.kmeans: " + (NO_ONNX_LAYERS if model.is_onnx else
                                                   "no Linear or Conv layer matches the targets"))
        total = sum(r["parameters"] for r in record.values())
        summary = f"{len(record)} layers ({total:,} weights) clustered to <= {2**cfg.bits} values each"
        if folded:
            summary += f", after folding {folded} batch norms into their convs"
        if not cfg.fine_tune_epochs and all(r.get("unchanged") for r in record.values()):
            warnings.append(f"nothing changed: every chosen layer already had at most {2**cfg.bits} values")
        yield 1.0, summary
        return PassResult(new, record, summary, warnings + [SPEED_WARNING])

    @staticmethod
    def _fold(new) -> tuple[int, list[str]]:
        """Fold batch norms into their convs before clustering. The ONNX export folds each eval-mode
        norm into its conv, scaling every output channel by its own factor: a conv clustered to 16
        values came out with 16 x channels, and the packed file stored it unclustered (the demo
        ResNet's convs, 61 KB where the clustered weights need ~25). Clustered after folding, the
        exported weights are the clustered ones."""
        from torch import nn

        from .quant_extra import fold_torch

        if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in new.obj.modules()):
            return 0, []
        try:
            pairs = fold_torch(new.obj)
        except Exception as exc:  # noqa: BLE001 - torch.fx cannot trace data-dependent control flow
            return 0, [f"batch norms not folded before clustering (torch.fx: {str(exc).splitlines()[0][:120]}): the ONNX "
                    "export folds them into the convs, which then hold more than 2^bits values and are stored "
                    "unclustered in the packed file; fold them first (fold.batchnorm) if the model allows"]
        return len(pairs), []

    def _torch(self, new, cfg: ClusterConfig, context: Context):
        import torch

        from .prune import weight_layers

        layers = weight_layers(new.obj, cfg)
        tied, unchanged = {}, {}
        for i, (name, module) in enumerate(layers):
            context.check_cancelled()
            w = module.weight.detach().numpy()
            clustered, codebook = cluster_array(w, cfg.bits, cfg.iterations)
            unchanged[name] = bool(np.array_equal(clustered, w))
            with torch.no_grad():
                module.weight.copy_(torch.from_numpy(clustered))
            # index of each weight into its codebook, for the tied fine-tune
            tied[name] = (module, torch.from_numpy(np.searchsorted(codebook, clustered.ravel())), len(codebook))
            yield 0.2 * (i + 1) / len(layers), f"{name}: {len(codebook)} values"
        if cfg.fine_tune_epochs:
            data = context.require_data(self.id, labels=True)
            x = data.shaped(data.x_train, new.input_shape)
            # the codebook slot holding zero, per layer (k = none): pruned weights stay pruned
            zero_index = {}
            for name, (module, _idx, k) in tied.items():
                codebook = np.unique(module.weight.detach().numpy())
                zero_index[name] = int(np.searchsorted(codebook, 0.0)) if (codebook == 0).any() else k

            def tie():
                with torch.no_grad():
                    for name, (module, idx, k) in tied.items():
                        flat = module.weight.view(-1)
                        sums = torch.zeros(k, dtype=flat.dtype).index_add_(0, idx, flat)
                        counts = torch.bincount(idx, minlength=k).clamp(min=1).to(flat.dtype)
                        centroids = sums / counts
                        if zero_index[name] < k:
                            centroids[zero_index[name]] = 0.0
                        flat.copy_(centroids[idx])

            params = [m.weight for m, _, _ in tied.values()]
            for fraction, message in train(new.obj, x, data.y_train, cfg.fine_tune_epochs, cfg.learning_rate,
                                           seed=context.seed, after_step=tie, params=params, who=self.id,
                                           signature=new.io):
                context.check_cancelled()
                yield 0.2 + 0.8 * fraction, f"centroid fine-tune {message}"
        new.obj.eval()
        record = {}
        for name, (module, _, _) in tied.items():
            w = module.weight.detach()
            record[name] = {"op": type(module).__name__, "bits": cfg.bits, "parameters": w.numel(),
                            "values": int(torch.unique(w).numel()), "sparsity": round(float((w == 0).float().mean()), 4),
                            "unchanged": unchanged[name] and not cfg.fine_tune_epochs}
        return record

    def _onnx(self, new, cfg: ClusterConfig, context: Context):
        from .prune import onnx_layers

        chosen = onnx_layers(new.obj, cfg)
        record = {}
        for i, weight in enumerate(chosen):
            context.check_cancelled()
            w = weight.array()
            clustered, codebook = cluster_array(w, cfg.bits, cfg.iterations)
            weight.write(clustered)
            record[weight.name] = {"op": weight.op, "initializer": weight.tensor_name, "bits": cfg.bits,
                                   "parameters": int(w.size), "values": int(len(codebook)),
                                   "sparsity": round(float((clustered == 0).mean()), 4),
                                   "unchanged": bool(np.array_equal(clustered, w))}
            yield 0.2 * (i + 1) / len(chosen), f"{weight.name}: {len(codebook)} values"
        return record


def tie_clustered(module, max_values: int):
    """After-step for fine-tuning a converted, clustered model: every weight tensor (2+ dims)
    holding at most `max_values` distinct values is tied to its clusters (each weight set to its
    cluster's mean; zero stays zero)."""
    import torch

    tied = []
    for p in module.parameters():
        if p.dim() < 2:
            continue
        codebook, idx = torch.unique(p.detach(), return_inverse=True)
        if len(codebook) <= max_values:
            zero = int((codebook == 0).nonzero()[0]) if bool((codebook == 0).any()) else None
            tied.append((p, idx.view(-1), len(codebook), zero))

    def tie():
        with torch.no_grad():
            for p, idx, k, zero in tied:
                flat = p.view(-1)
                sums = torch.zeros(k, dtype=flat.dtype).index_add_(0, idx, flat)
                centroids = sums / torch.bincount(idx, minlength=k).clamp(min=1).to(flat.dtype)
                if zero is not None:
                    centroids[zero] = 0.0
                flat.copy_(centroids[idx])

    return tie
