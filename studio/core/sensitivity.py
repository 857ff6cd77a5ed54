"""Per-layer sensitivity: how much quality a model loses when only one layer is pruned (at
several ratios) or when only one layer is kept in float while the rest is INT8.

Results are plain data (SensitivityResult) the window draws as a heatmap and as graph colours;
`sensitive_layers` turns them into the ignore list of a recipe. Quality is measured on the
held-out split on the output the stage table judges: accuracy with labels, else top-1 agreement
with the unchanged model, or output fidelity (cosine) where no output is class scores."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

import numpy as np

from .data import Data
from .data_checks import check_labels_fit
from .errors import StudioError
from .model import Model

Progress = tuple[float, str]


@dataclass
class SensitivityResult:
    """quality[i, j]: quality with layer i changed at setting j (prune: ratios[j]; quant: the
    single column "layer i kept in float"). `baseline`: quality of the reference (prune: the
    unpruned model; quant: everything INT8). `reference`: the unchanged float model's quality."""

    kind: str  # "prune" or "quant"
    layers: list[str]
    ratios: list[float]
    quality: np.ndarray
    baseline: float
    metric: str = "accuracy"
    reference: float | None = None
    method: str = ""
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "layers": list(self.layers), "ratios": [float(r) for r in self.ratios],
                "quality": np.asarray(self.quality, dtype=float).tolist(), "baseline": float(self.baseline),
                "metric": self.metric, "reference": None if self.reference is None else float(self.reference),
                "method": self.method, "meta": dict(self.meta)}

    @classmethod
    def from_dict(cls, d: dict) -> SensitivityResult:
        return cls(kind=d["kind"], layers=list(d["layers"]), ratios=[float(r) for r in d["ratios"]],
                   quality=np.asarray(d["quality"], dtype=float).reshape(len(d["layers"]), -1),
                   baseline=float(d["baseline"]), metric=d.get("metric", "accuracy"), reference=d.get("reference"),
                   method=d.get("method", ""), meta=dict(d.get("meta", {})))

    def drop(self) -> np.ndarray:
        """Quality lost against the baseline (prune) or gained by keeping the layer float (quant), >= 0 is worse."""
        if self.kind == "quant":
            return self.quality - self.baseline
        return self.baseline - self.quality


def _output_names(model: Model) -> list[str] | None:
    names = [o.name for o in model.io.outputs] if model.signature is not None else []
    return names or None


def _scorer(model: Model, data: Data):
    """quality(model) on the held-out split, and the metric's name: measured on the output
    that is class scores as the stage table judges it (evaluate.class_scores): accuracy with
    labels, else top-1 agreement with the unchanged model (per position for [N, T, classes]);
    where no output is class scores, the worst output's cosine similarity."""
    from .convert import predict_all
    from .evaluate import class_scores, embedding_vocab, fidelity

    x = data.shaped(data.x_test, model.input_shape)
    ref = predict_all(model, x)
    labels = data.y_test if data.labelled else None
    choice, _ = class_scores(ref, ref, labels, _output_names(model), embedding_vocab(model))
    if choice is None:
        def cosine(m: Model) -> float:
            return min(c if c is not None else float("nan")
                       for c in (fidelity(g, w)["cosine"] for g, w in zip(predict_all(m, x), ref)))

        return cosine, "cosine", x
    i = choice.index
    if labels is not None and not choice.per_position:
        y = data.y_test
        for given in (data.y_train, y):
            check_labels_fit(given, ref[i].shape[1])  # a label the model cannot output: accuracy would lie

        def score(m: Model) -> float:
            return float((predict_all(m, x)[i].argmax(1) == y).mean())

        return score, "accuracy", x
    reference = ref[i].argmax(-1)

    def agree(m: Model) -> float:
        return float((predict_all(m, x)[i].argmax(-1) == reference).mean())

    return agree, "position agreement" if choice.per_position else "agreement", x


def prune_sensitivity(model: Model, data: Data, layers: Sequence[str] | None = None,
                      ratios: Sequence[float] = (0.3, 0.5, 0.7, 0.9), method: str = "magnitude",
                      cancel=None) -> Generator[Progress, None, SensitivityResult]:
    """Quality when only one layer is pruned, for every layer x ratio. method: "magnitude"
    (smallest weights of that layer zeroed) or "structured" (that layer's output channels
    removed with Torch-Pruning, its dependants following)."""
    import torch

    from .passes import targets as tg
    from .passes.structured import KINDS, final_layers, prune_module

    from .passes.base import is_torchscript, script_as_onnx

    if method not in ("magnitude", "structured"):
        raise StudioError(f"unknown sensitivity method '{method}': magnitude or structured")
    if is_torchscript(model):  # compiled modules cannot be pruned in place: measure the ONNX export
        model = script_as_onnx(model, "pruning sensitivity")
    if model.is_onnx and method == "magnitude":
        return (yield from _onnx_magnitude_sensitivity(model, data, layers, ratios, cancel))
    if model.is_onnx:
        from .passes.onnx_torch import onnx_to_torch

        model = onnx_to_torch(model)  # structured pruning needs torch; layers are onnx2torch's names
    score, metric, _ = _scorer(model, data)
    all_layers = [n for n, _ in tg.torch_layers(model.obj, KINDS)]
    example = torch.from_numpy(model.example_input(1))
    finals = final_layers(model.obj, example) if method == "structured" else set()
    chosen = [n for n in (layers or all_layers) if n not in finals]
    unknown = set(chosen) - set(all_layers)
    if unknown:
        raise StudioError(f"no such layers: {', '.join(sorted(unknown))}")
    baseline = score(model)
    quality = np.zeros((len(chosen), len(ratios)))
    total = max(1, len(chosen) * len(ratios))
    for i, name in enumerate(chosen):
        for j, ratio in enumerate(ratios):
            if cancel is not None:
                cancel()
            trial = model.copy()
            if method == "magnitude":
                w = trial.obj.get_submodule(name).weight
                with torch.no_grad():
                    k = int(ratio * w.numel())
                    if k > 0:
                        threshold = w.detach().abs().flatten().kthvalue(k).values
                        w.mul_((w.abs() > threshold).to(w.dtype))
            else:
                others = [n for n in all_layers if n != name]
                prune_module(trial.obj, example, ratio, "l2", "per_layer", 1, others)
            quality[i, j] = score(trial)
            yield (i * len(ratios) + j + 1) / total, f"{name} at {ratio:.0%}: {quality[i, j]:.3f}"
    return SensitivityResult("prune", chosen, [float(r) for r in ratios], quality, baseline, metric,
                             reference=baseline, method=method)


def _onnx_magnitude_sensitivity(model: Model, data: Data, layers, ratios, cancel):
    """prune_sensitivity's magnitude method on an ONNX model's weights (studio.core.onnx_weights);
    layers are the ONNX node names the graph view shows."""
    from .onnx_weights import layer_weights
    from .passes.prune import magnitude_masks

    score, metric, _ = _scorer(model, data)
    all_layers = [w.name for w in layer_weights(model.obj)]
    chosen = list(layers or all_layers)
    unknown = set(chosen) - set(all_layers)
    if unknown:
        raise StudioError(f"no such layers: {', '.join(sorted(unknown))}")
    baseline = score(model)
    quality = np.zeros((len(chosen), len(ratios)))
    total = max(1, len(chosen) * len(ratios))
    for i, name in enumerate(chosen):
        for j, ratio in enumerate(ratios):
            if cancel is not None:
                cancel()
            trial = model.copy()
            weight = next(w for w in layer_weights(trial.obj) if w.name == name)
            w = weight.array()
            weight.write(np.where(magnitude_masks({name: w}, ratio, "per_layer")[name], w, 0))
            quality[i, j] = score(trial)
            yield (i * len(ratios) + j + 1) / total, f"{name} at {ratio:.0%}: {quality[i, j]:.3f}"
    return SensitivityResult("prune", chosen, [float(r) for r in ratios], quality, baseline, metric,
                             reference=baseline, method="magnitude")


def quant_sensitivity(model: Model, data: Data, layers: Sequence[str] | None = None,
                      calibration_samples: int = 128, cancel=None) -> Generator[Progress, None, SensitivityResult]:
    """Quality with everything INT8 (static QDQ) except one layer kept in float, per layer;
    the baseline is all-INT8. Layers are ONNX node names (Conv/Gemm/MatMul)."""
    from .convert import to_onnx_proto
    from .passes.base import Context
    from .passes.quantize import StaticInt8, onnx_layers
    from .training import drain

    score, metric, _ = _scorer(model, data)
    proto = to_onnx_proto(model)
    quantized_ops = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
                     "MatMulInteger", "MatMulNBits"}
    if any(node.op_type in quantized_ops for node in proto.graph.node):
        raise StudioError("this stage is already quantized: run the INT8 sensitivity on a float stage "
                          "(the original, or the stage before the quantize pass)")
    chosen = list(layers) if layers else [name for name, _ in onnx_layers(proto)]
    context = Context(data=data)
    if cancel is not None:
        context.check_cancelled = cancel  # the caller's cancel, polled inside calibration too

    def quantized(ignore):
        return drain(StaticInt8(calibration_samples=calibration_samples, ignore=ignore).apply(model, context)).model

    reference = score(model)
    yield 0.0, "all layers INT8"
    baseline = score(quantized([]))
    quality = np.zeros((len(chosen), 1))
    for i, name in enumerate(chosen):
        if cancel is not None:
            cancel()
        quality[i, 0] = score(quantized([name]))
        yield (i + 1) / max(1, len(chosen)), f"{name} kept in float: {quality[i, 0]:.3f}"
    return SensitivityResult("quant", chosen, [], quality, baseline, metric, reference=reference, method="int8_static")


def sensitive_layers(result: SensitivityResult, max_drop: float = 0.01, ratio: float | None = None) -> list[str]:
    """The layers to leave out of a pass: pruning - those losing more than `max_drop` quality
    when pruned alone at `ratio` (default: the ratio closest to 0.5); quantization - those whose
    being kept in float recovers more than `max_drop` over all-INT8."""
    quality = np.asarray(result.quality, dtype=float)
    if result.kind == "quant":
        gain = quality[:, 0] - result.baseline
        return [name for name, g in zip(result.layers, gain) if g > max_drop]
    ratios = np.asarray(result.ratios)
    j = int(np.argmin(np.abs(ratios - (0.5 if ratio is None else ratio))))
    drop = result.baseline - quality[:, j]
    return [name for name, d in zip(result.layers, drop) if d > max_drop]
