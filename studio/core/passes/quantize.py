"""Quantization with onnxruntime's own tools (static QDQ INT8, dynamic INT8) and FP16.

The result is an ONNX model: onnxruntime is the runtime these numbers are measured on and the
one whose quantized kernels make the model faster, so we use its quantizer rather than torch.ao
(deprecated) or a hand-written one."""

from __future__ import annotations

import contextlib
import logging
import platform
import re
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from ..convert import (
    STREAMS, fixed_batch, iter_session_all, light_onnx, mapped_session, mapped_view, onnx_copy, session, to_onnx_proto,
    weight_bytes,
)
from .. import outputs_child
from ..evaluate import Measurement, class_scores, measure_latency_all, quality_from_outputs
from ..memory import release
from ..model import ONNX
from . import targets as tg
from ..errors import Cancelled, StudioError
from .base import Context, Pass, PassConfig, PassResult, scaled
from .registry import register

QUANTIZABLE = {"Conv", "Gemm", "MatMul", "ConvTranspose"}


def onnx_layers(proto) -> list[tuple[str, str]]:
    return [(n.name, n.op_type) for n in proto.graph.node if n.op_type in QUANTIZABLE]


def excluded_nodes(proto, config: PassConfig, all_graphs: bool = False) -> list[str]:
    """ONNX node names the config leaves out. A torch layer name ("fc1") also matches the node
    the exporter made from it ("/fc1/Gemm"). all_graphs: If/Loop branches' nodes too."""
    if all_graphs:
        from ..onnx_weights import nodes

        layers = [(n.name, n.op_type) for n, _ in nodes(proto.graph) if n.op_type in QUANTIZABLE]
    else:
        layers = onnx_layers(proto)
    chosen = set()
    for name, op in layers:
        alias = name.strip("/").rsplit("/", 1)[0].replace("/", ".")
        names = {name, alias}
        # targeted when any spelling matches a target; left out when any spelling matches an
        # ignore entry (a layer must not slip through an ignore because its other name differs)
        targeted = not config.targets or any(tg.matches(t, n, op) for t in config.targets for n in names)
        ignored = any(tg.matches(i, n, op) for i in config.ignore for n in names)
        if targeted and not ignored:
            chosen.add(name)
    return [name for name, _ in layers if name not in chosen]


def _count(proto, ops) -> int:
    return sum(1 for n in proto.graph.node if n.op_type in ops)


QDQ_OPSET = 13  # DequantizeLinear's per-channel `axis` attribute arrived in opset 13


def _opset(proto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), QDQ_OPSET)


def _qdq_opset(proto):
    """(the model at opset 13 or later, a note when it was converted). onnxruntime writes a
    per-channel DequantizeLinear (with `axis`) into an opset 11 model as it is, and the file it
    writes does not load ("Unrecognized attribute: axis"): Paddle's exports (PP-OCR) are opset 11."""
    import onnx
    from onnx import version_converter

    version = _opset(proto)
    if version >= QDQ_OPSET:
        return proto, None
    try:
        converted = version_converter.convert_version(proto, QDQ_OPSET)
        onnx.checker.check_model(converted)
    except Exception as exc:  # noqa: BLE001 - onnx names the op it cannot convert
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StudioError(f"the model is ONNX opset {version}; INT8 QDQ needs opset {QDQ_OPSET} and onnx cannot "
                          f"convert it ({first}): re-export at opset {QDQ_OPSET} or later, or use "
                          "quantize.int8_dynamic or quantize.fp16") from None
    return converted, f"the model is ONNX opset {version}: converted to opset {QDQ_OPSET} for INT8 QDQ (per-channel scales)"


def _pre_process(src: Path, pre: Path, keep: dict | None = None, weights: int = 0,
                 cancel: threading.Event | None = None):
    """onnxruntime's quantization pre-processing of the saved float model: (the file
    quantize_static reads, its graph without the weights). What quant_pre_process does with
    skip_symbolic_shape and skip_onnx_shape, without its copies: onnxruntime's graph optimizer
    (basic level: constant folding, redundant nodes) writes the optimized model with its weights
    in a sidecar, and the graph is tagged as pre-processed. Skipped: onnxruntime's symbolic shape
    inference (when incomplete it saves "sym_shape_infer_temp.onnx" and a sidecar into the
    current folder, the user's, before it raises) and onnx's shape inference (quantize_static and
    its calibrator run it again where they load the model). quant_pre_process also loads the
    whole model first and again after the optimizer: on BERT-base (440 MB) two copies beside the
    studio's own and the optimizer's, for 69 s. The graph is read without the weights: the pass
    holds one copy of the model, not two. `keep`: gets the optimizer's session under "session"
    (the float model, one thread a call as convert.session's), for the pass's float reference:
    BERT-base built a second session of 440 MB for it, a small CNN spent a fifth of its pass there.
    In the window a big model's optimizer runs in a child instead (`weights`: its weight bytes,
    outputs_child.wanted; its float reference runs in a child too, so nothing is kept): building
    and freeing BERT-base's session there froze the window 50 ms. `cancel` kills that child."""
    import onnx
    from onnxruntime.quantization.quant_utils import add_pre_process_metadata

    try:
        if outputs_child.wanted(weights):
            from .quantize_child import pre_process_in_child

            pre_process_in_child(src, pre, weights, cancel)
        else:
            sess = optimizer_session(src, pre)
            if keep is not None:
                keep["session"] = sess
            del sess
        graph = _load(pre, weights=False)
        add_pre_process_metadata(graph)
        onnx.save_model(graph, str(pre))  # the weights stay where the optimizer wrote them
        return pre, graph
    except Cancelled:
        raise
    except Exception:  # noqa: BLE001 - pre-processing is an optimisation, not required
        return src, _load(src, weights=False)


def optimizer_session(src: Path, pre: Path):
    """A session on `src` whose graph optimizer (basic level) writes the optimized model to `pre`,
    its tensors over 1 kB in the sidecar `pre`.data (_pre_process)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(pre)
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", pre.name + ".data")
    opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])


def _save(proto, folder: Path, name: str, tensors=None) -> Path:
    """`tensors`: the proto's tensors still in the user's file (convert.light_onnx)."""
    from ..convert import write_model

    path = folder / name
    write_model(proto, path, tensors=tensors)  # a tensor at a time (onnx.save_model serializes the whole model first)
    return path


class StaticConfig(PassConfig):
    calibration_samples: int = Field(256, ge=1, le=100_000, description="Training-split samples used to calibrate ranges")
    method: Literal["minmax", "entropy", "percentile"] = Field("minmax", description="How activation ranges are calibrated")
    per_channel: bool = Field(True, description="One scale per output channel for weights")
    activations: Literal["auto", "uint8", "int8"] = Field(
        "auto", description="Activation type: auto = uint8 on x86 (fast u8s8 kernels), int8 elsewhere")
    max_drop: float = Field(1.0, ge=0.0, le=100.0, description=(
        "Classifiers: the largest drop (points) in top-1 agreement with the float stage, measured on the pass's "
        "own validation split, before remedies are tried"))
    min_cosine: float = Field(0.99, ge=0.0, le=1.0, description=(
        "Other models: the lowest cosine similarity to the float stage's outputs before remedies are tried"))
    remedies: bool = Field(True, description=(
        "When INT8 loses more than allowed, try known remedies in order of cost and keep the best"))
    max_tries: int = Field(8, ge=1, le=20, description="Quantizations tried at most (the first included)")
    validation_samples: int = Field(256, ge=1, le=100_000, description=(
        "Training-split samples, apart from the calibration ones, that each try is compared on"))
    keep_slow_float: bool = Field(True, description=(
        "Time depthwise convs, HardSwish blocks and narrow convs (few inputs per output, such as a one-channel "
        "stem) in INT8 against float and keep them float where INT8 is slower"))


def activation_type(choice: str) -> str:
    """onnxruntime's x86 kernels without VNNI multiply u8 x s8 (VPMADDUBSW); s8 activations take a
    slow path. Measured on ResNet-18 at batch 1 on an AVX2 CPU: u8s8 1.83x faster than FP32,
    s8s8 1.15x. ARM's kernels favour s8s8. (onnxruntime docs, "Quantize ONNX models".)"""
    if choice != "auto":
        return choice
    return "uint8" if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686") else "int8"


# Ops the remedy "sensitive ops in float" leaves out of INT8: normalisations, softmax, and the
# element-wise ops GELU (Erf form), SE gates and residuals are made of. Their outputs span wide,
# outlier-heavy ranges one 8-bit scale resolves badly (ViT-style models lose most here).
FLOAT_SENSITIVE = {"LayerNormalization", "InstanceNormalization", "EmbedLayerNormalization", "Softmax", "Add", "Mul",
                   "Sigmoid", "Where", "CumSum", "TopK", "ArgMax"}
HARD_ACTIVATIONS = {"HardSwish", "HardSigmoid"}
# A conv whose outputs each sum this few products (input channels per group x kernel), such as the
# stem of a one-channel image model (1 x 3 x 3 = 9), gains nothing from 8-bit arithmetic and pays
# for quantizing its input and onnxruntime's NHWC transposes: measured on the pruned demo CNN at
# batch 256, 1 thread, its QLinearConv took 430 us against 67 us for the float conv (the whole
# model 0.69x the float stage's time with that conv float, 1.17x with it in INT8). A speed group
# of _keep_slow_float, kept float only where timed faster.
NARROW_K = 32


@dataclass(frozen=True)
class Setting:
    """One way to run quantize_static: what each try changes."""

    activations: str  # "uint8" or "int8"
    per_channel: bool
    method: str
    samples: int
    reduce_range: bool = False  # 7-bit weights: no u8s8 overflow on x86 without VNNI
    float_sensitive: bool = False  # FLOAT_SENSITIVE ops and attention MatMuls stay float
    float_groups: tuple[str, ...] = ()  # speed: "depthwise", "hardswish", "narrow conv" blocks stay float
    float_nodes: tuple[str, ...] = ()  # the nodes around the tensors INT8 resolves worst

    def describe(self) -> str:
        parts = [f"{self.activations} activations", "per-channel" if self.per_channel else "per-tensor",
                 self.method, f"{self.samples} samples"]
        if self.reduce_range:
            parts.append("7-bit weights")
        if self.float_sensitive:
            parts.append("sensitive ops in float")
        parts += [f"{g} in float" for g in self.float_groups]
        if self.float_nodes:
            parts.append(f"{len(self.float_nodes)} nodes at the worst tensors in float")
        return ", ".join(parts)


@dataclass
class _Graph:
    """What the remedies need to know of the pre-processed float graph."""

    quantizable: set[str]  # the op types quantize_static takes by default
    attention: list[str]  # MatMul nodes of two activations (Q x K^T, attention x V)
    sensitive: bool  # any FLOAT_SENSITIVE op or attention MatMul
    groups: dict[str, list[str]]  # speed group -> its nodes


def _graph_facts(proto) -> _Graph:
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    from ..onnx_weights import stored_names

    consts = stored_names(proto.graph)
    attention = [n.name for n in proto.graph.node
                 if n.op_type == "MatMul" and not any(i in consts for i in n.input)]
    producer = {o: n for n in proto.graph.node for o in n.output}
    depthwise = [n.name for n in proto.graph.node if n.op_type == "Conv"
                 and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    hard_outputs = {n.output[0] for n in proto.graph.node if n.op_type in HARD_ACTIVATIONS}
    hardswish = []
    for n in proto.graph.node:  # the conv feeding a hard activation, and the gate Mul using one
        if n.op_type in HARD_ACTIVATIONS and n.input and n.input[0] in producer:
            hardswish.append(producer[n.input[0]].name)
        elif n.op_type == "Mul" and any(i in hard_outputs for i in n.input):
            hardswish.append(n.name)
    dims = {t.name: list(t.dims) for t in proto.graph.initializer}
    narrow = [n.name for n in proto.graph.node if n.op_type == "Conv" and n.name not in depthwise
              and len(n.input) > 1 and len(dims.get(n.input[1], ())) >= 3
              and int(np.prod(dims[n.input[1]][1:])) <= NARROW_K]
    ops = {n.op_type for n in proto.graph.node}
    groups = {k: list(dict.fromkeys(v)) for k, v in (("depthwise", depthwise), ("hardswish", hardswish),
                                                     ("narrow conv", narrow)) if v}
    return _Graph(set(QDQRegistry) | set(QLinearOpsRegistry), attention, bool(ops & FLOAT_SENSITIVE or attention), groups)


HISTOGRAM_BYTES = 2 << 30  # what a percentile/entropy calibration may hold in memory
RELEASE_OVER = 64 << 20  # weight bytes from which the pass gives freed heap back between its steps
STREAM_ACTIVATIONS = 64 << 20  # a calibration call's activations at most, for calls side by side (_Ahead)


def histogram_samples(proto, input_shape, budget: int = HISTOGRAM_BYTES) -> int:
    """How many samples a percentile or entropy calibration can take within `budget` bytes.
    onnxruntime's histogram calibrators keep every intermediate tensor of every sample before
    they build the histograms (min-max keeps two numbers per tensor): PP-OCRv4's detector at
    320x320 holds 166 MiB of activations per sample, and its static INT8 run was killed by the
    kernel at 20 GB while 256 samples were being collected for the percentile remedy."""
    from ..graph.from_onnx import _shapes

    try:
        shapes = _shapes(proto, input_shape)
    except Exception:  # noqa: BLE001 - unknown: allow the usual sample count
        return 1 << 30
    from ..onnx_weights import tensors

    weights = set(tensors(proto))
    per_sample = 4 * sum(int(np.prod(shape)) for name, shape in shapes.items() if name not in weights)
    return max(0, budget // max(per_sample, 1))


def calibration_batch(histogram: int, pinned: int | None = None) -> int:
    """Samples per calibration call: 32, fewer when a call's activations would pass half the
    histogram budget (onnxruntime holds a whole call's activations: PP-OCRv4 det at 320x320 took
    12 GB RSS calibrating 32 at a time); a file's fixed batch wins."""
    return pinned or max(1, min(32, histogram // 2))


def _remedies(facts: _Graph, pool: int, histogram: int = 1 << 30) -> list:
    """The known remedies, cheapest first (onnxruntime docs, "Quantization debugging"; the
    issue's measurements: MobileNetV3 92 % top-1 agreement with uint8 activations, 98.5 % with
    int8). Each takes the best setting so far (remedies add up) and gives (label, changed
    setting), or None where it does not apply. The last one, the worst tensors kept float
    (onnxruntime's qdq_loss_debug), is run by _Trial: it needs the best model itself.
    SmoothQuant is not among them: onnxruntime needs neural-compressor 2.x for it, which pulls
    opencv, pandas and pycocotools and downgrades numpy (3.x dropped the ONNX part)."""

    def activations(s: Setting):
        other = "int8" if s.activations == "uint8" else "uint8"
        return f"{other} activations", replace(s, activations=other)

    def reduce_range(s: Setting):  # u8 x s8 products overflow int16 on x86 without VNNI
        if s.activations == "uint8" and not s.reduce_range:
            return "7-bit weights (reduce_range)", replace(s, reduce_range=True)

    def sensitive(s: Setting):
        if facts.sensitive and not s.float_sensitive:
            return "LayerNorm/Softmax/GELU, element-wise and attention MatMuls in float", replace(s, float_sensitive=True)

    def granularity(s: Setting):
        return ("per-tensor weights" if s.per_channel else "per-channel weights"), replace(s, per_channel=not s.per_channel)

    def calibration(method: str):  # not when the histograms of its samples would not fit in memory
        return lambda s: ((f"{method} calibration", replace(s, method=method))
                          if s.method != method and s.samples <= histogram else None)

    def samples(s: Setting):
        more = min(pool, s.samples * 4, *([histogram] if s.method != "minmax" else []))
        if more > s.samples:
            return f"{more} calibration samples", replace(s, samples=more)

    return [activations, reduce_range, sensitive, granularity, calibration("percentile"), calibration("entropy"), samples]


@register
class StaticInt8(Pass[StaticConfig]):
    id = "quantize.int8_static"
    title = "INT8 static (onnxruntime QDQ)"
    description = ("Weights and activations in INT8 with calibrated ranges: smaller and faster on CPU. Compared with "
                   "the float stage on the pass's own split; known remedies are tried when it loses more than allowed.")
    Config = StaticConfig
    frameworks = ("torch", "onnx")
    needs_data = True

    def apply(self, model, context: Context):
        cfg: StaticConfig = self.config
        data = context.require_data(self.id)
        yield 0.05, "exporting to ONNX" if model.is_torch else "preparing"
        # an opened file's big tensors stay in it (light_onnx): the pass reads the graph, and writes
        # the float model for onnxruntime's tools from the user's file; converting the opset or
        # folding If branches rewrites the graph from its values, and reads them in first
        proto, tensors = light_onnx(model)
        if _opset(proto) < QDQ_OPSET or _layers_in_subgraphs(proto):
            proto, tensors = to_onnx_proto(model), None
        proto, upgraded = _qdq_opset(proto)
        original = proto
        if _layers_in_subgraphs(proto):
            yield 0.06, "folding the If branches the pinned inputs decide"
            proto, specialized_note = _specialized_for_pins(proto, model)
        else:
            specialized_note = None
        x = data.shaped(data.x_train, model.input_shape)
        order = np.random.default_rng(context.seed).permutation(len(x))
        # calibration from the front, validation from the back: apart while the split allows;
        # the held-out split stays for the final measurement only
        n_val = min(cfg.validation_samples, len(x) // 2)
        pool, val = (order[: len(x) - n_val], order[len(x) - n_val:]) if n_val else (order, order)
        x_pool, x_val = x[pool], x[val]
        pinned = fixed_batch(proto)  # a model exported with a fixed batch size takes only that size
        with tempfile.TemporaryDirectory(prefix="studio-q-") as tmp:
            tmp = Path(tmp)
            src = _save(proto, tmp, "fp32.onnx", tensors)
            # the reference is the model as given, also when its specialized graph is quantized
            ref_src = src if proto is original else _save(original, Path(tmp), "original.onnx")
            pre = tmp / "pre.onnx"
            yield 0.08, "pre-processing (fusions)"
            kept: dict = {}
            pre, pre_proto = _pre_process(src, pre, kept, weight_bytes(proto), context.cancel_event)
            facts = _graph_facts(pre_proto)
            user_excluded = excluded_nodes(pre_proto, cfg)
            what = f"running the float model on {len(x_val)} validation samples"
            yield 0.1, what
            # the pre-processing's session is the float model (the basic optimizations the INT8 model
            # is made from), unless a specialized graph is quantized: then the model as given; without
            # one, a session from the file just written (from the ModelProto it would serialize another copy)
            pre_session = kept.pop("session", None)
            in_child = outputs_child.wanted(weight_bytes(proto))  # a big model's run: the GIL left to the window
            if in_child:
                # the same reference as in-process: the pre-processing's basic optimizations (it ran in a child)
                basic = pre != src and ref_src == src
                del pre_session
                steps = outputs_child.outputs(Path(ref_src), None, x_val, weights=weight_bytes(proto),
                                              stop=context.cancel_event.is_set, basic=basic)
            else:
                float_session = pre_session if pre_session is not None and ref_src == src else session(str(ref_src))
                del pre_session
                steps = iter_session_all(float_session, x_val, cancel=context.cancel_event)
                del float_session
            try:
                while True:
                    try:
                        done = next(steps)
                    except StopIteration as stop:
                        reference = stop.value
                        break
                    yield 0.1 + 0.1 * done, f"{what}: {done:.0%}"  # BERT-base: minutes, the bar shows how far
            finally:
                steps.close()  # a child still running is killed
            del steps
            large = weight_bytes(proto) > RELEASE_OVER
            if large:  # (gc and malloc_trim take ~0.2 s in a big process: only where it pays)
                release()  # the float session's 440 MB (BERT-base) back to the system before the calibrator's
            trial = _Trial(proto, tmp / "int8.onnx", pre, pre_proto.graph, facts, user_excluded, x_pool, x_val,
                           reference, pinned, context)
            trial.tensors = tensors
            trial.large = large
            trial.histogram = histogram_samples(pre_proto, model.input_shape)
            trial.batch = calibration_batch(trial.histogram, pinned)

            first = Setting(activation_type(cfg.activations), cfg.per_channel, cfg.method,
                            min(cfg.calibration_samples, len(x_pool)))
            yield 0.2, f"calibrating on {first.samples} samples ({cfg.method})"
            span = 0.6 / cfg.max_tries  # each try's share of the bar: the remedies may follow
            tries = [(yield from _reporting(lambda report: trial.run(first, "as configured", report), 0.2, span,
                                            context.check_cancelled))]
            best = tries[0]
            budget = cfg.max_tries - 1
            if cfg.remedies and not trial.meets(best, cfg):
                for remedy in [*_remedies(facts, len(x_pool), trial.histogram), None]:  # None: the worst tensors in float
                    if budget <= 0 or trial.meets(best, cfg):
                        break
                    step = remedy(best["setting"]) if remedy else trial.worst_tensors(best)
                    if step is None:
                        continue
                    label, setting = step
                    context.check_cancelled()
                    at = 0.2 + 0.6 * len(tries) / cfg.max_tries
                    yield at, f"{trial.shortfall(best, cfg)}; trying {label}"
                    tries.append((yield from _reporting(
                        lambda report, s=setting, lb=label: trial.attempt(s, lb, report), at, span,
                        context.check_cancelled)))
                    budget -= 1
                    if tries[-1]["score"] is not None and tries[-1]["score"] > best["score"] + 1e-12:  # the next remedy builds on the best
                        best.pop("proto")  # only the best model is kept in memory
                        best = tries[-1]
                    else:
                        tries[-1].pop("proto", None)
            float_ms = None
            if cfg.keep_slow_float and facts.groups:
                yield 0.85, "timing depthwise / HardSwish / narrow conv blocks in INT8 against float"
                best, float_ms = yield from _keep_slow_float(trial, best, tries, cfg, model)
        for i, t in enumerate(tries, 1):
            t["try"], t["kept"] = i, t is best
        warnings = [upgraded] if upgraded else []
        if not trial.meets(best, cfg):
            tried = (f"after {len(tries) - 1} remedies; kept the best: {best['change']}" if len(tries) > 1
                     else "with remedies off" if not cfg.remedies else "and no remedy applies")
            warnings.append(f"INT8 {trial.shortfall(best, cfg)} on the pass's validation split ({len(x_val)} samples) "
                            f"{tried}; keep more layers float (ignore), or use quantize.fp16")
        if float_ms and best.get("latency_ms") and best["latency_ms"] > 1.03 * float_ms:
            warnings.append(f"INT8 runs {best['latency_ms'] / float_ms:.2f}x slower than the float stage at batch 1 even "
                            "with depthwise/HardSwish/narrow conv blocks in float (measured); a recipe with 'ship: fastest' ships "
                            "the faster stage")
        padded = calibration_padding(min(best["setting"].samples, len(x_pool)), pinned)
        if padded:
            warnings.append(padded)
        result = best["proto"]
        layers = _quant_record(result, "int8")
        if not layers:  # pre-processing alone is no INT8 stage (it grew Silero VAD 2.2 -> 3.2 MiB)
            result = original if tensors is None else model.obj  # (the stage holds its tensors)
            warnings.append(_nothing_quantized(original))
        elif specialized_note:
            warnings.append(specialized_note)
        new = model.with_obj(result, ONNX, format="onnx")
        s = best["setting"]
        measure = trial.measure_name
        summary = (f"{len(layers)} layers in INT8 (QDQ, {s.describe()}); {measure} with the float stage "
                   f"{trial.text(best)} on {len(x_val)} validation samples")
        if layers and specialized_note:
            summary += f"; graph specialized for {_pins_text(model)} (compared with the original on the same inputs)"
        if len(tries) > 1:
            summary += f", kept try {tries.index(best) + 1} of {len(tries)} (first: {trial.text(tries[0])})"
        if float_ms and best.get("latency_ms"):
            summary += f"; {float_ms / best['latency_ms']:.2f}x the float stage's speed at batch 1 (measured)"
        yield 1.0, summary
        return PassResult(new, layers, summary, warnings, tries=[_row(t) for t in tries])


def calibration_padding(samples: int, fixed: int | None) -> str | None:
    """One line when calibration at the file's fixed batch filled its last partial batch by
    repeating samples (_Trial._whole_batches), like training's note (trained_samples_note);
    None when the samples fill whole batches."""
    if not fixed or fixed <= 1 or samples % fixed == 0:
        return None
    total = max(fixed, samples // fixed * fixed)
    if samples < fixed:
        return (f"the file fixes the batch at {fixed}: calibration had {samples} samples, "
                f"{total - samples} repeated to fill the batch")
    return (f"the file fixes the batch at {fixed}: calibration used {total} of the {samples} samples "
            f"(the last partial batch of {samples - total} dropped)")


def _layers_in_subgraphs(proto) -> int:
    """How many Conv/Gemm/MatMul layers sit inside If/Loop/Scan subgraphs."""
    from ..onnx_weights import nodes

    return sum(1 for n, _ in nodes(proto.graph) if n.op_type in QUANTIZABLE) - _count(proto, QUANTIZABLE)


def _pins_text(model) -> str:
    from .onnx_torch import pins_text

    return pins_text(model.signature)


def _specialized_for_pins(proto, model):
    """(the graph to quantize, a warning or None). onnxruntime's quantizer does not enter If
    branches, where Silero VAD keeps every layer (one branch per sample rate, chosen by its `sr`
    input). When the user pinned inputs (`--input sr=16000`), the graph specialized for them
    (onnx_torch.specialized: pinned inputs read as constants, shapes of the sized inputs,
    constants folded, an If with a constant condition replaced by its branch) holds the layers
    at the top level; it is quantized instead, when it has more layers there. The pinned inputs
    stay inputs of the file, unused: it computes the branch of the pinned values whatever it is
    given, which the warning says."""
    from .onnx_torch import pinned_branch_warning, specialized

    pins = _pins_text(model)
    if not pins:
        return proto, None
    folded = specialized(proto, model.signature)
    if folded is None or _count(folded, QUANTIZABLE) <= _count(proto, QUANTIZABLE):
        return proto, None
    return folded, pinned_branch_warning(model.signature, "the INT8 file", "quantize the original")


def _nothing_quantized(proto) -> str:
    """Why static INT8 quantized no layer, for a warning: onnxruntime's QDQ quantizer does not
    enter If/Loop subgraphs, where exporters of models with control flow put every layer."""
    from ..onnx_weights import nodes

    inside = sum(1 for n, _ in nodes(proto.graph) if n.op_type in QUANTIZABLE) - _count(proto, QUANTIZABLE)
    reason = (f"its {inside} Conv/Gemm/MatMul layers sit inside If/Loop subgraphs, which onnxruntime's static "
              "quantizer does not enter" if inside else "it has no Conv, Gemm or MatMul layer to quantize")
    return (f"no layer was quantized: {reason}; the stage is the float model, unchanged (quantize.fp16 and "
            "prune.magnitude reach layers in subgraphs)")


def _row(t: dict) -> dict:
    """A try as plain data for the stage record: its number, what changed, the full setting
    and what it measured."""
    from dataclasses import asdict

    setting = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(t["setting"]).items()}
    return {**{k: v for k, v in t.items() if k not in ("proto", "setting")}, "setting": setting}


def _calibrator(pre: Path, op_types: list[str], augmented: Path, method: str, streams: int = 1, trim: bool = False):
    """onnxruntime's calibrator for `method` with create_calibrator's defaults, built in its steps
    so that its copy of the model goes before the session that runs it is made: create_calibrator
    holds both (on BERT-base 440 MB beside the session's, with the studio's own copy). The
    augmented model's weights go to a sidecar, so saving it does not serialize them in memory.
    Its session has onnxruntime's own graph settings (no optimization, so every calibrated tensor
    stays) without the memory pattern (see below); streams > 1: each call on one thread (the
    calls run side by side: _Ahead). trim: the model's freed heap is given back to the system
    before the session is made (the calibration child, where the ~0.1 s it takes stalls no window)."""
    from onnxruntime.quantization.calibrate import EntropyCalibrater, MinMaxCalibrater, PercentileCalibrater

    if method == "minmax":
        calibrator = MinMaxCalibrater(pre, op_types, str(augmented), use_external_data_format=True)
    elif method == "entropy":
        calibrator = EntropyCalibrater(pre, op_types, str(augmented), use_external_data_format=True)
    else:
        calibrator = PercentileCalibrater(pre, op_types, str(augmented), use_external_data_format=True,
                                          symmetric=True, num_bins=2048, percentile=99.999)
    calibrator.augment_graph()
    calibrator.model = None  # read by augment_graph only (and the ranges are taken from the session's outputs)
    if trim:
        release()
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # as create_inference_session
    # no memory pattern: after its first call the session asks its arena for one block holding every tensor
    # of the call beside the first call's blocks, kept too (BERT-base at batch 1: 995 MB resident after 32
    # calls, 806 MB without, the same ranges, no more CPU time; without the arena instead 750 MB but each
    # call maps and faults in that block again: +50% CPU time)
    opts.enable_mem_pattern = False
    if streams > 1:
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
    calibrator.infer_session = ort.InferenceSession(calibrator.augmented_model_path, sess_options=opts,
                                                    providers=calibrator.execution_providers)
    return calibrator


def calibrate(pre: Path, op_types: list[str], augmented: Path, method: str, streams: int, metas, x, batch: int,
              cache: Path, check=None, report=None, trim: bool = False) -> None:
    """onnxruntime's calibration of the pre-processed model `pre` on samples x, `batch` at a call
    (`streams` calls side by side: _Ahead), its ranges saved to `cache` (onnxruntime's calibration
    cache, read by quantize_static); the same in the pass's process and in the calibration child
    (quantize_child.ranges_in_child). check() and report(): calibration_reader's; trim: _calibrator's.
    The augmented model's files are left to the caller to remove."""
    from onnxruntime.quantization.calibrate import save_tensors_data

    calibrator = _calibrator(pre, op_types, augmented, method, streams, trim)
    reader = _reader(metas, x, batch, check, report)
    ahead = None
    try:
        if streams > 1:
            ahead = reader = _Ahead(calibrator.infer_session, reader, streams)
            calibrator.infer_session = ahead
        # onnxruntime's histogram calibrators print their steps: stdout is the CLI's (`--json`) and, in
        # the calibration child, its progress lines
        with contextlib.redirect_stdout(sys.stderr):
            calibrator.collect_data(reader)
            save_tensors_data(calibrator.compute_data(), cache)
    finally:
        if ahead is not None:
            ahead.close()
        del calibrator, reader, ahead


class _Ahead:
    """The calibration reader and the calibrator's session in one, for a model whose batch the
    file fixes (BERT-base at batch 1: 256 calls): onnxruntime's collect_data asks for a batch and
    runs it, one after the other; this hands it each batch with `width` calls already running on
    the session side by side (onnxruntime's Run is thread-safe and lets go of the GIL), and gives
    it each call's outputs in order. The same calls on the same batches in the same order: the
    same ranges, ~2x sooner on 2 idle cores."""

    def __init__(self, sess, reader, width: int):
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        self.sess, self.reader, self.width = sess, reader, width
        self.pending: deque = deque()  # (feed, its call)
        self.ended = False
        self.pool = ThreadPoolExecutor(max_workers=width, thread_name_prefix="studio-calibration-stream")

    def get_next(self):  # the reader's side
        while not self.ended and len(self.pending) < self.width:
            feed = self.reader.get_next()
            if not feed:
                self.ended = True
                break
            self.pending.append((feed, self.pool.submit(self.sess.run, None, feed)))
        return self.pending[0][0] if self.pending else None

    def rewind(self):
        raise NotImplementedError("a calibration read ahead is read once")

    def run(self, output_names, feed, *args):  # the session's side: the call made for this feed
        queued, call = self.pending.popleft()
        if queued is not feed or output_names is not None or args:
            raise RuntimeError("calibration read ahead: asked for another call than the one made")
        return call.result()

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.pending.clear()

    def __getattr__(self, name):  # get_outputs, get_inputs, ...: the session's
        return getattr(self.sess, name)


class _PerTensorNotes(logging.Filter):
    """onnxruntime's QDQ quantizer warns on the root logger, once per 1-D weight (a LayerNorm's
    scale, say), that per-channel does not apply and the weight is quantized per tensor: what
    is meant, and on a BERT 75 lines through the user's progress bar. Those lines are kept off
    the terminal and counted; the try's record says it in one line (line())."""

    NOTE = re.compile(r"Axis \d+ is out-of-range for weight '(.*)' with rank \d+")

    def __init__(self):
        super().__init__()
        self.weights: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        found = self.NOTE.match(record.getMessage())
        if found:
            self.weights.append(found.group(1))
        return found is None

    def line(self) -> str:
        names = list(dict.fromkeys(self.weights))
        shown = ", ".join(f"'{n}'" for n in names[:3]) + (", ..." if len(names) > 3 else "")
        return (f"onnxruntime: per-channel does not apply to {len(names)} 1-D weights ({shown}); they are quantized "
                f"per tensor ({len(self.weights)} warnings, kept off the terminal)")


class _Trial:
    """Runs quantize_static with one Setting and scores the result against the float stage on
    the validation samples (top-1 agreement for class scores, else the worst output's cosine)."""

    def __init__(self, proto, out, pre, pre_graph, facts, user_excluded, x_pool, x_val, reference, pinned, context):
        self.proto, self.out, self.pre, self.pre_graph = proto, out, pre, pre_graph
        self.tensors = None  # the proto's tensors still in the user's file (convert.light_onnx)
        self.facts, self.user_excluded = facts, user_excluded
        self.x_pool, self.x_val, self.reference, self.pinned, self.context = x_pool, x_val, reference, pinned, context
        self.histogram = 1 << 30  # samples whose every activation fits in memory (set by the pass)
        self.large = False  # weights over RELEASE_OVER: freed heap is given back after each try (set by the pass)
        self.batch = pinned or 32  # samples a calibration call takes (set by the pass)
        self.calibrated: dict[tuple, dict] = {}  # (method, samples) -> how its ranges were made (ranges())
        from ..signature import embedding_sizes

        # the output judged by top-1 is the one the stage table judges (evaluate.class_scores)
        self.names = [o.name for o in proto.graph.output]
        self.vocab = embedding_sizes(proto)
        choice, _ = class_scores(reference, reference, None, self.names, self.vocab)
        self.classifier = choice is not None
        self.measure_name = ("cosine similarity" if choice is None else
                             "top-1 agreement per position" if choice.per_position else "top-1 agreement")

    def run(self, s: Setting, change: str, report=None) -> dict:
        """report(done, total): called by the calibration reader after each batch (see _reporting)."""
        from .quantize_child import _stopper, load_written, quantize

        start = time.perf_counter()
        reused = (s.method, s.samples) in self.calibrated
        ranges = self.ranges(s, report)
        exclude = list(self.user_excluded)
        op_types = None
        if s.float_sensitive:
            op_types = sorted(self.facts.quantizable - FLOAT_SENSITIVE)
            exclude += self.facts.attention
        for group in s.float_groups:
            exclude += self.facts.groups.get(group, [])
        exclude += s.float_nodes
        notes = _PerTensorNotes()
        # a big model's in a child process: quantize_static holds the GIL for most of its run (the window
        # froze 200 ms a save on BERT-base)
        written = quantize(
            {"input": str(self.pre), "output": str(self.out), "cache": str(ranges), "per_channel": s.per_channel,
             "reduce_range": s.reduce_range, "activations": s.activations, "op_types": op_types,
             "nodes_to_exclude": list(dict.fromkeys(exclude)), "method": s.method},
            weight_bytes(self.proto), self.context.cancel_event, getattr(report, "abandoned", None))
        notes.weights = written["weights"]
        proto = load_written(self.out, written)  # not parsed whole here: that held the GIL ~80 ms (BERT-base)
        if report is not None:
            report(None, len(self.x_val))  # calibrated: now the comparison with the float stage
        # from the file just written and read: the model as the proto holds it, not serialized again
        in_file = {i: (offset, length) for i, offset, length in written.get("located", [])}
        weights = weight_bytes(self.proto)
        in_child = outputs_child.wanted(weights)  # a big model runs in a child: the GIL left to the window
        view = mapped_view(proto, self.out, in_file) if in_child and in_file else None
        if in_child:
            steps = outputs_child.outputs(self.out, view, self.x_val, weights=weights,
                                          stop=_stopper(self.context.cancel_event, getattr(report, "abandoned", None)))
        else:
            steps = iter_session_all(mapped_session(proto, self.out, in_file), self.x_val, cancel=self.context.cancel_event)
        try:
            while True:  # BERT-base: over a minute; the bar says how far
                try:
                    done = next(steps)
                except StopIteration as stop:
                    outs = stop.value
                    break
                if report is not None:
                    report(f"comparing with the float stage on {len(self.x_val)} samples: {done:.0%}", None)
        finally:
            steps.close()  # a child still running is killed
            if view is not None:
                view.unlink(missing_ok=True)
        del steps
        if self.large:
            release()  # the try's session and quantize_static's copies of the model
        m = Measurement()
        quality_from_outputs(m, outs, None, self.reference, self.names, self.vocab)
        score = m.agreement if self.classifier else m.cosine
        score = -1.0 if score is None or not np.isfinite(score) else float(score)
        first = next(iter(m.fidelity.values()), {})
        row = {"try": 0, "change": change, "setting": s, "proto": proto, "config": s.describe(),
               "measure": self.measure_name, "score": score, "snr_db": first.get("snr_db"),
               "seconds": round(time.perf_counter() - start, 3), "calibration": {**self.calibrated[(s.method, s.samples)], "reused": reused}}
        if notes.weights:
            row["notes"] = [notes.line()]
        return row

    def ranges(self, s: Setting, report=None) -> Path:
        """The activation ranges for the setting's calibration method and samples: onnxruntime's
        calibration cache file (its own format, read by quantize_static), made once and reused by
        every try with the same method and samples. Ranges are those of the float model's tensors,
        whatever a try quantizes, keeps float or how it rounds: the remedies that change only the
        activation type, 7-bit weights, per-tensor weights or the ops kept float took a new
        calibration each (on BERT-base 4 to 5 min each). Every quantizable op type's tensors are
        calibrated, so a try that quantizes fewer ops finds its ranges among them."""
        from .. import child
        from . import quantize_child

        key = (s.method, s.samples)
        path = self.out.with_name(f"ranges-{s.method}-{s.samples}.json")
        if key in self.calibrated:
            if report is not None:
                report(f"activation ranges of the {s.samples} calibration samples ({s.method}) reused; quantizing", None)
            return path
        x = self._whole_batches(self.x_pool[: s.samples])
        began = time.perf_counter()
        # calls side by side for a pinned batch whose activations are small: each call holds every tensor of
        # the unoptimized graph (BERT-base at batch 1: ~300 MB a call; a second stream took its peak from ~1.7 to
        # 2.2 GB, over the 3x-model budget); a free batch calls with 32 already
        per_sample = HISTOGRAM_BYTES // max(1, self.histogram)
        streams = STREAMS if self.pinned and per_sample * self.batch <= STREAM_ACTIVATIONS else 1
        # the augmented model in a folder of its own: onnx.save names its weights' sidecar by a uuid
        scratch = self.out.with_name("calibration")
        scratch.mkdir(exist_ok=True)
        augmented = scratch / "augmented.onnx"
        op_types = sorted(self.facts.quantizable)
        weights = weight_bytes(self.proto)
        in_child = weights > quantize_child.CHILD_OVER
        try:
            if in_child:
                # a big model's in a child: augment_graph loads and saves the model and compute_data and
                # save_tensors_data hold the GIL (the window froze 50-180 ms at each on BERT-base)
                quantize_child.ranges_in_child(
                    {"pre": str(self.pre), "op_types": op_types, "augmented": str(augmented), "method": s.method,
                     "streams": streams, "batch": self.batch, "cache": str(path),
                     "metas": [[m.name, m.dtype] for m in input_metas(self.proto)]},
                    x, report, self.context.cancel_event, getattr(report, "abandoned", None),
                    child.budget(weights, len(x), per_sample))
            else:
                calibrate(self.pre, op_types, augmented, s.method, streams, input_metas(self.proto), x, self.batch,
                          path, self.context.check_cancelled, report)
                if self.large:  # the calibrator's session and outputs (BERT-base: ~570 MB of freed heap) before
                    release()  # quantize_static's copies of the model: they came on top of it (1.7 GB at its peak)
        except BaseException:
            path.unlink(missing_ok=True)  # a cancelled or failed calibration leaves no ranges behind
            raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        self.calibrated[key] = {"samples": len(x), "batch": self.batch, "method": s.method, "child": in_child,
                                "seconds": round(time.perf_counter() - began, 3)}
        return path

    def attempt(self, s: Setting, change: str, report=None) -> dict:
        """run() for a remedy: a setting onnxruntime cannot quantize with is recorded as a failed
        try (its error's first line) and the search goes on."""
        start = time.perf_counter()
        try:
            return self.run(s, change, report)
        except Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - a remedy that fails is reported, not fatal
            error = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            return {"try": 0, "change": change, "setting": s, "config": s.describe(), "measure": self.measure_name,
                    "score": None, "error": error, "seconds": round(time.perf_counter() - start, 3)}

    def _whole_batches(self, x):
        """x, cut (or repeated) to whole batches for a model whose batch size the file fixes."""
        if self.pinned and len(x) % self.pinned:
            x = x[np.resize(np.arange(len(x)), max(self.pinned, len(x) // self.pinned * self.pinned))]
        return x

    def worst_tensors(self, t: dict):
        """The last remedy: the nodes that make or read the activations INT8 resolves worst in
        model `t` (lowest signal-to-quantization-noise ratio across their Q/DQ pair, measured by
        onnxruntime's qdq_loss_debug on validation samples) are kept float: the worst tenth of
        the quantized tensors, at least one. None when nothing new would stay float."""
        from onnxruntime.quantization.qdq_loss_debug import (
            collect_activations, compute_signal_to_quantization_noice_ratio, create_activation_matching)

        from .quantize_child import augment_for_debug

        qdq, augmented = self.out.with_name("debug-qdq.onnx"), self.out.with_name("debug-augmented.onnx")
        _save(t["proto"], qdq.parent, qdq.name)
        augment_for_debug(qdq, augmented, weight_bytes(self.proto), self.context.cancel_event)
        count = min(64, self.histogram // 2)  # every activation, float and INT8, is held
        if count < 8:
            return None  # they would not fit in memory (HISTOGRAM_BYTES)
        x = self._whole_batches(self.x_val[:count])
        reader = calibration_reader(self.proto, x, self.batch, self.context)
        activations = collect_activations(str(augmented), reader)
        sqnr = {name: compute_signal_to_quantization_noice_ratio(m["pre_qdq"], m["post_qdq"])
                for name, m in create_activation_matching(activations).items()}
        errors = {name: e for name, e in sqnr.items() if np.isfinite(e)}
        if not errors:
            return None
        worst = set(sorted(errors, key=errors.get)[: max(1, len(errors) // 10)])
        s = t["setting"]
        nodes = [n.name for n in self.pre_graph.node if n.name and n.name not in s.float_nodes
                 and worst & {*n.input, *n.output}]
        if not nodes:
            return None
        lowest = min(errors[w] for w in worst)
        return (f"{len(nodes)} nodes at the {len(worst)} worst INT8 tensors in float (SQNR from {lowest:.1f} dB, "
                "qdq_loss_debug)"), replace(s, float_nodes=(*s.float_nodes, *nodes))

    def meets(self, t: dict, cfg: StaticConfig) -> bool:
        if self.classifier:
            return (1.0 - t["score"]) * 100.0 <= cfg.max_drop + 1e-9
        return t["score"] >= cfg.min_cosine

    def text(self, t: dict) -> str:
        return f"{t['score']:.2%}" if self.classifier else f"{t['score']:.4f}"

    def shortfall(self, t: dict, cfg: StaticConfig) -> str:
        if self.classifier:
            return f"loses {(1.0 - t['score']) * 100:.1f} points of {self.measure_name} (allowed {cfg.max_drop:g})"
        return f"reaches cosine {t['score']:.4f} (needed {cfg.min_cosine:g})"


SPEED_BUDGET_S = 20.0  # seconds _keep_slow_float's rounds of one batch size may take (fewer rounds past it, >= 3)


def _keep_slow_float(trial: _Trial, best: dict, tries: list, cfg: StaticConfig, model):
    """Depthwise convs, HardSwish blocks and narrow convs can run slower in INT8 than in float
    (the Q/DQ around them costs more than the 8-bit arithmetic saves): each group present, and all
    of them together, is tried in float and timed with the kept model and the float stage itself
    in the same interleaved rounds, at batch 1 and at the largest batch the run measures
    (Context.latency_batches); the fastest (geometric mean over those batches of its time over the
    kept model's) is kept when it is over 3 % faster and within the tolerance (or no worse than
    the kept model). Returns it and the float stage's batch-1 time."""
    s = best["setting"]
    candidates = []
    groups = [(g,) for g in trial.facts.groups] + ([tuple(trial.facts.groups)] if len(trial.facts.groups) > 1 else [])
    for gs in groups:
        trial.context.check_cancelled()
        added = tuple(g for g in gs if g not in s.float_groups)
        already = {*trial.user_excluded, *s.float_nodes, *(n for g in s.float_groups for n in trial.facts.groups[g])}
        if not added or all(n in already for g in added for n in trial.facts.groups[g]):
            continue  # nothing new in float (a layer the user ignored, or left untargeted): the same model
        c = trial.attempt(replace(s, float_groups=(*s.float_groups, *added)), f"{' and '.join(gs)} in float (speed)")
        if c["score"] is None:
            tries.append(c)
        elif not _quant_record(c["proto"], "int8"):  # every layer float: that is the float stage, not an INT8 one
            c.pop("proto")
            c["notes"] = [*c.get("notes", []), "no layer left in INT8: not timed (the float stage is that model)"]
            tries.append(c)
        else:
            candidates.append(c)
    if not candidates:
        return best, None
    batches = tuple(sorted({1, max(trial.context.latency_batches, default=1)}))
    timed = yield from scaled(measure_latency_all([trial.proto, best["proto"]] + [c["proto"] for c in candidates],
                                                   model.input_shape, batches=batches, rounds=7,
                                                   cancel=trial.context.check_cancelled, signature=model.signature,
                                                   budget_s=SPEED_BUDGET_S,
                                                   tensors=[trial.tensors] + [None] * (1 + len(candidates))),
                               0.85, 0.90, "timing float blocks: ")
    latency = timed[0]
    float_ms = latency[0][1]
    latency = latency[1:]
    best["latency_ms"] = latency[0][1]
    if len(batches) > 1:
        best["latency_ms_by_batch"] = {str(b): latency[0][b] for b in batches}

    def relative(lat: dict) -> float:  # time over the kept model's, geometric mean over the batches
        return float(np.exp(np.mean([np.log(lat[b] / latency[0][b]) for b in batches])))

    fastest, fastest_rel = best, 1.0
    for c, lat in zip(candidates, latency[1:]):
        c["latency_ms"] = lat[1]
        if len(batches) > 1:
            c["latency_ms_by_batch"] = {str(b): lat[b] for b in batches}
        tries.append(c)
        ok = trial.meets(c, cfg) or c["score"] >= best["score"]
        rel = relative(lat)
        if ok and rel < 0.97 and rel < fastest_rel:
            fastest, fastest_rel = c, rel
    return fastest, float_ms


def _reporting(call, start: float, span: float, check=None):
    """Run call(report) (one quantize_static try) on a helper thread and yield progress while it
    runs: onnxruntime calibrates in one blocking call, which showed the same percentage for
    minutes. The calibration reader reports each batch it hands out; the fraction moves from
    `start` over `span`, the message says the batch and the time left at the rate measured so
    far. Returns call's result; its exception is raised here. A cancel stops it at its next batch;
    `check` (the context's check_cancelled) raises here at once, so no stale batch is reported
    after a cancel (the helper thread may have run ahead of this generator)."""
    import queue
    import threading

    events: queue.Queue = queue.Queue()
    outcome: dict = {}
    report = _Report(events.put)

    def target():
        try:
            outcome["value"] = call(report)
        except BaseException as exc:  # noqa: BLE001 - handed to the generator, raised there
            outcome["error"] = exc
        finally:
            events.put(None)

    worker = threading.Thread(target=target, name="studio-calibration", daemon=True)
    began = time.monotonic()
    worker.start()
    try:
        while True:
            try:
                event = events.get(timeout=0.5)
            except queue.Empty:
                continue  # onnxruntime is inside one batch; its cancel check comes at the next
            if event is None:
                break
            if check is not None:
                check()
            done, total = event
            if isinstance(done, str):  # ranges reused, or the comparison's progress: its own message
                yield start + (0.95 if done.startswith("comparing") else 0.9) * span, done
                continue
            if done is None:  # calibrated
                yield start + 0.95 * span, f"comparing with the float stage on {total} samples"
                continue
            if done >= total:
                yield start + 0.9 * span, f"calibrated on {total} batches; quantizing"
                continue
            elapsed = time.monotonic() - began
            eta = f" · {_left(elapsed / done * (total - done))}" if done else ""
            yield start + 0.9 * span * done / total, f"calibrating: batch {done + 1}/{total}{eta}"
    finally:
        report.abandoned.set()  # the generator was closed: stop the try at its next batch, kill its child
        worker.join(timeout=60)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class _Report:
    """_reporting's report(done, total) for the try's thread; `abandoned` is set when the
    generator is done with the try (closed, or ended by an error): a report raises Cancelled
    from then on, and a child process of the try is killed (_Trial's children look at it)."""

    def __init__(self, put):
        self.put = put
        self.abandoned = threading.Event()

    def __call__(self, done, total):
        if self.abandoned.is_set():
            raise Cancelled()
        self.put((done, total))


def _left(seconds: float) -> str:
    if seconds < 1:
        return "under 1 s left"
    return f"about {seconds:.0f} s left" if seconds < 90 else f"about {seconds / 60:.0f} min left"


def calibration_reader(proto, x, step: int, context: Context, report=None):
    """onnxruntime's CalibrationDataReader over samples x: batches for every graph input, each in
    the dtype the graph declares (token ids stay int64, constants are fed as pinned); it checks
    for a cancel between batches (onnxruntime calls us), and calls report(batches handed out,
    batches in all) after each."""
    return _reader(input_metas(proto), x, step, context.check_cancelled, report)


def input_metas(proto) -> list:
    """The graph's inputs as calibration_reader feeds them (name and ORT type)."""
    from ..signature import from_onnx

    return [_InputMeta(s.name, s.dtype) for s in from_onnx(proto).inputs]


def _reader(metas, x, step: int, check=None, report=None):
    """calibration_reader for the inputs `metas`; check(): raises Cancelled (None: no check, the
    calibration child, which a cancel kills)."""
    from onnxruntime.quantization import CalibrationDataReader

    from ..signature import feeds

    total = -(-len(x) // step)  # batches

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.start = 0

        def get_next(self):
            if check is not None:
                check()
            if report is not None:  # onnxruntime asks for a batch once it has run the one before
                report(min(self.start, len(x)) // step if self.start < len(x) else total, total)
            if self.start >= len(x):
                return None
            feed = feeds(metas, x, self.start, self.start + step)
            self.start += step
            return feed

        def rewind(self):
            self.start = 0

    return Reader()


class _InputMeta:
    """What signature.feeds reads from an onnxruntime input: its name and ORT type string."""

    def __init__(self, name: str, dtype: str):
        from ..convert import ORT_TYPES

        self.name, self.dtype = name, dtype
        by_dtype = {np.dtype(v).name: k for k, v in ORT_TYPES.items()}
        self.type = by_dtype.get(dtype, "tensor(float)")


class DynamicConfig(PassConfig):
    per_channel: bool = Field(False, description="One scale per output channel for weights")


@register
class DynamicInt8(Pass[DynamicConfig]):
    id = "quantize.int8_dynamic"
    title = "INT8 dynamic (onnxruntime)"
    description = "INT8 weights, activations quantized on the fly. Good for MatMul/Gemm-heavy models; slows convs down."
    Config = DynamicConfig
    frameworks = ("torch", "onnx")

    def warnings(self, model):
        proto, _ = light_onnx(model)  # (the graph only)
        convs = _count(proto, {"Conv"})
        if convs:
            return [f"dynamic INT8 turns {convs} Conv layers into ConvInteger, which onnxruntime runs "
                    "several times slower than FP32 on CPU: use quantize.int8_static for conv nets"]
        return []

    def apply(self, model, context: Context):
        from onnxruntime.quantization import QuantType, quantize_dynamic

        cfg: DynamicConfig = self.config
        yield 0.05, "exporting to ONNX" if model.is_torch else "preparing"
        proto, tensors = light_onnx(model)  # an opened file's big tensors are written from it
        warnings = self.warnings(model)
        with tempfile.TemporaryDirectory(prefix="studio-q-") as tmp:
            tmp = Path(tmp)
            src = _save(proto, tmp, "fp32.onnx", tensors)
            out = tmp / "int8.onnx"
            context.check_cancelled()
            yield 0.3, "quantizing weights"
            quantize_dynamic(
                str(src), str(out), per_channel=cfg.per_channel, weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded_nodes(proto, cfg),
            )
            result = _load(out)
        layers = _quant_record(result, "int8")
        summary = f"{len(layers)} layers with INT8 weights (dynamic)"
        yield 1.0, summary
        return PassResult(model.with_obj(result, ONNX, format="onnx"), layers, summary, warnings)


class Fp16Config(PassConfig):
    keep_io_float32: bool = Field(True, description="Inputs and outputs stay float32, so callers need not change")


@register
class Fp16(Pass[Fp16Config]):
    id = "quantize.fp16"
    title = "FP16"
    description = "Weights and compute in float16 where onnxruntime has kernels; half the size."
    Config = Fp16Config
    frameworks = ("torch", "onnx")

    def apply(self, model, context: Context):
        # onnxruntime ships its own float16 converter (used for its transformer optimizations);
        # it keeps ops without float16 kernels in float32 behind Cast nodes.
        import onnx
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

        cfg: Fp16Config = self.config
        yield 0.1, "exporting to ONNX" if model.is_torch else "preparing"
        proto = onnx_copy(model)
        blocked = [n.name for n in proto.graph.node if n.name in set(excluded_nodes(proto, cfg))]
        warnings = []
        # onnxruntime's full (ORT_ENABLE_ALL) CPU optimisation segfaulted building a session for
        # the float16 form of transformer and GRU exports, with float16 Transposes among Casts;
        # those Transposes kept float32, the same graphs load. Tried only when the first form fails.
        for kept_float in ([], ["Transpose"]):
            context.check_cancelled()
            yield 0.4, "converting to float16" + (f" ({', '.join(kept_float)} kept float32)" if kept_float else "")
            work = onnx.ModelProto()
            work.CopyFrom(proto)  # the converter changes its model in place
            result = convert_float_to_float16(
                _with_types(work), keep_io_types=cfg.keep_io_float32, node_block_list=blocked or None,
                op_block_list=DEFAULT_OP_BLOCK_LIST + kept_float, disable_shape_infer=True,
            )
            yield 0.8, "checking that onnxruntime loads it"
            try:
                _check_session_in_child(result, "float16")
                break
            except StudioError as exc:
                if kept_float or not any(n.op_type == "Transpose" for n in proto.graph.node):
                    raise
                first_failure = str(exc).split(": ", 1)[-1].split(";")[0]
        if kept_float:
            warnings.append(f"{', '.join(kept_float)} nodes stay float32: the all-float16 form did not load in "
                            f"onnxruntime ({first_failure})")
        layers = {name: {"op": op, "dtype": "float16"} for name, op in onnx_layers(result) if name not in blocked}
        summary = f"{len(layers)} layers in float16"
        yield 1.0, summary
        return PassResult(model.with_obj(result, ONNX, format="onnx"), layers, summary, warnings)


def _with_types(proto):
    """The model with onnx's inferred types of its inner tensors (in memory, no scratch file): the
    float16 converter casts a value back to float32 for an op that needs float32 (Range, Resize's
    scales) only when it knows that value's type, a Constant node's output included."""
    import onnx

    try:
        return onnx.shape_inference.infer_shapes(proto)
    except Exception:  # noqa: BLE001 - e.g. over 2 GB or an op onnx cannot infer: convert without
        return proto


def _check_session_in_child(proto, what: str) -> None:
    """onnxruntime segfaults building a session for some float16 graphs (a tiny BERT export did):
    build one in a child process first, so the studio refuses the result instead of dying."""
    import tempfile

    from ..errors import LoadError
    from ..io.probe import probe

    with tempfile.TemporaryDirectory(prefix="studio-probe-") as folder:
        path = Path(folder) / f"{what}.onnx"
        try:
            _save(proto, path.parent, path.name)  # a tensor at a time: no whole copy under the GIL
        except OSError as exc:  # a full disk: one line, as every other write
            raise StudioError(f"cannot write a temporary copy to check the {what} model: "
                              f"{exc.strerror or exc}; nothing was changed") from None
        try:
            probe("onnx_session", path, timeout=300, what="onnxruntime")
        except LoadError as exc:
            reason = str(exc).split(": ", 1)[-1]
            raise StudioError(f"the {what} model is not usable: {reason}; keep this model in float32 or "
                              "list the layers that break it in the pass's ignore") from None


def _load(path, weights: bool = True):
    """The ONNX file; weights=False: the graph alone (the weights a sidecar holds stay on disk)."""
    import onnx

    return onnx.load(str(path), load_external_data=weights)


def _quant_record(proto, dtype: str) -> dict:
    """Per quantized layer: its op and dtype (QDQ: the layers whose weight is dequantized)."""
    dq_outputs = {n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    layers = {}
    for node in proto.graph.node:
        if node.op_type in {"ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul", "DynamicQuantizeMatMul"}:
            layers[node.name] = {"op": node.op_type, "dtype": dtype}
        elif node.op_type in QUANTIZABLE and len(node.input) > 1 and node.input[1] in dq_outputs:
            layers[node.name] = {"op": node.op_type, "dtype": dtype}
    return layers
