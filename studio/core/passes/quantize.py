"""Quantization with onnxruntime's own tools (static QDQ INT8, dynamic INT8) and FP16.

The result is an ONNX model: onnxruntime is the runtime these numbers are measured on and the
one whose quantized kernels make the model faster, so we use its quantizer rather than torch.ao
(deprecated) or a hand-written one."""

from __future__ import annotations

import platform
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from ..convert import fixed_batch, onnx_copy, to_onnx_proto
from ..model import ONNX
from . import targets as tg
from .base import Context, Pass, PassConfig, PassResult
from .registry import register

QUANTIZABLE = {"Conv", "Gemm", "MatMul", "ConvTranspose"}


def onnx_layers(proto) -> list[tuple[str, str]]:
    return [(n.name, n.op_type) for n in proto.graph.node if n.op_type in QUANTIZABLE]


def excluded_nodes(proto, config: PassConfig) -> list[str]:
    """ONNX node names the config leaves out. A torch layer name ("fc1") also matches the node
    the exporter made from it ("/fc1/Gemm")."""
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


def _save(proto, folder: Path, name: str) -> Path:
    import onnx

    path = folder / name
    onnx.save_model(proto, str(path))
    return path


class StaticConfig(PassConfig):
    calibration_samples: int = Field(256, ge=1, le=100_000, description="Training-split samples used to calibrate ranges")
    method: Literal["minmax", "entropy", "percentile"] = Field("minmax", description="How activation ranges are calibrated")
    per_channel: bool = Field(True, description="One scale per output channel for weights")
    activations: Literal["auto", "uint8", "int8"] = Field(
        "auto", description="Activation type: auto = uint8 on x86 (fast u8s8 kernels), int8 elsewhere")


def activation_type(choice: str) -> str:
    """onnxruntime's x86 kernels without VNNI multiply u8 x s8 (VPMADDUBSW); s8 activations take a
    slow path. Measured on ResNet-18 at batch 1 on an AVX2 CPU: u8s8 1.83x faster than FP32,
    s8s8 1.15x. ARM's kernels favour s8s8. (onnxruntime docs, "Quantize ONNX models".)"""
    if choice != "auto":
        return choice
    return "uint8" if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686") else "int8"


@register
class StaticInt8(Pass):
    id = "quantize.int8_static"
    title = "INT8 static (onnxruntime QDQ)"
    description = "Weights and activations in INT8 with calibrated ranges: smaller and faster on CPU."
    Config = StaticConfig
    frameworks = ("torch", "onnx")
    needs_data = True

    def apply(self, model, context: Context):
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        cfg: StaticConfig = self.config
        data = context.require_data(self.id)
        yield 0.05, "exporting to ONNX" if model.is_torch else "preparing"
        proto = to_onnx_proto(model)
        x = data.shaped(data.x_train, model.input_shape)
        x = x[np.random.default_rng(context.seed).permutation(len(x))[: cfg.calibration_samples]]
        pinned = fixed_batch(proto)  # a model exported with a fixed batch size takes only that size
        if pinned and len(x) % pinned:
            whole = max(pinned, len(x) // pinned * pinned)
            x = x[np.resize(np.arange(len(x)), whole)]
        reader = calibration_reader(proto, x, pinned or 32, context)

        activations = QuantType.QUInt8 if activation_type(cfg.activations) == "uint8" else QuantType.QInt8
        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[cfg.method]
        with tempfile.TemporaryDirectory(prefix="studio-q-") as tmp:
            tmp = Path(tmp)
            src = _save(proto, tmp, "fp32.onnx")
            pre = tmp / "pre.onnx"
            yield 0.15, "pre-processing (shape inference, fusions)"
            try:
                quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
            except Exception:  # noqa: BLE001 - pre-processing is an optimisation, not required
                pre = src
            context.check_cancelled()
            yield 0.3, f"calibrating on {len(x)} samples ({cfg.method})"
            out = tmp / "int8.onnx"
            quantize_static(
                str(pre), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=cfg.per_channel,
                activation_type=activations, weight_type=QuantType.QInt8, calibrate_method=method,
                nodes_to_exclude=excluded_nodes(_load(pre), cfg),
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
            result = _load(out)
        new = model.with_obj(result, ONNX, format="onnx")
        layers = _quant_record(result, "int8")
        summary = (f"{len(layers)} layers in INT8 (QDQ, {activation_type(cfg.activations)} activations, "
                   f"{'per-channel' if cfg.per_channel else 'per-tensor'}, {cfg.method})")
        yield 1.0, summary
        return PassResult(new, layers, summary)


def calibration_reader(proto, x, step: int, context: Context):
    """onnxruntime's CalibrationDataReader over samples x: batches for every graph input, each in
    the dtype the graph declares (token ids stay int64, constants are fed as pinned); it checks
    for a cancel between batches (onnxruntime calls us)."""
    from onnxruntime.quantization import CalibrationDataReader

    from ..signature import feeds, from_onnx

    metas = [_InputMeta(s.name, s.dtype) for s in from_onnx(proto).inputs]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.start = 0

        def get_next(self):
            context.check_cancelled()
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

        self.name = name
        by_dtype = {np.dtype(v).name: k for k, v in ORT_TYPES.items()}
        self.type = by_dtype.get(dtype, "tensor(float)")


class DynamicConfig(PassConfig):
    per_channel: bool = Field(False, description="One scale per output channel for weights")


@register
class DynamicInt8(Pass):
    id = "quantize.int8_dynamic"
    title = "INT8 dynamic (onnxruntime)"
    description = "INT8 weights, activations quantized on the fly. Good for MatMul/Gemm-heavy models; slows convs down."
    Config = DynamicConfig
    frameworks = ("torch", "onnx")

    def warnings(self, model):
        proto = to_onnx_proto(model)
        convs = _count(proto, {"Conv"})
        if convs:
            return [f"dynamic INT8 turns {convs} Conv layers into ConvInteger, which onnxruntime runs "
                    "several times slower than FP32 on CPU: use quantize.int8_static for conv nets"]
        return []

    def apply(self, model, context: Context):
        from onnxruntime.quantization import QuantType, quantize_dynamic

        cfg: DynamicConfig = self.config
        yield 0.05, "exporting to ONNX" if model.is_torch else "preparing"
        proto = to_onnx_proto(model)
        warnings = self.warnings(model)
        with tempfile.TemporaryDirectory(prefix="studio-q-") as tmp:
            tmp = Path(tmp)
            src = _save(proto, tmp, "fp32.onnx")
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
class Fp16(Pass):
    id = "quantize.fp16"
    title = "FP16"
    description = "Weights and compute in float16 where onnxruntime has kernels; half the size."
    Config = Fp16Config
    frameworks = ("torch", "onnx")

    def apply(self, model, context: Context):
        # onnxruntime ships its own float16 converter (used for its transformer optimizations);
        # it keeps ops without float16 kernels in float32 behind Cast nodes.
        from onnxruntime.transformers.float16 import convert_float_to_float16

        cfg: Fp16Config = self.config
        yield 0.1, "exporting to ONNX" if model.is_torch else "preparing"
        proto = onnx_copy(model)  # the converter changes the proto in place
        blocked = [n.name for n in proto.graph.node if n.name in set(excluded_nodes(proto, cfg))]
        context.check_cancelled()
        yield 0.4, "converting to float16"
        result = convert_float_to_float16(
            proto, keep_io_types=cfg.keep_io_float32, node_block_list=blocked or None, disable_shape_infer=True
        )
        layers = {name: {"op": op, "dtype": "float16"} for name, op in onnx_layers(result) if name not in blocked}
        summary = f"{len(layers)} layers in float16"
        yield 1.0, summary
        return PassResult(model.with_obj(result, ONNX, format="onnx"), layers, summary)


def _load(path):
    import onnx

    return onnx.load(str(path))


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
