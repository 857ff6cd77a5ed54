"""More quantization: weight-only INT4/INT8 for MatMul layers (onnxruntime's MatMulNBits), and
batch-norm folding.

Weight-only uses onnxruntime's MatMulNBitsQuantizer: block-wise (block_size weights share one
scale) INT4 or INT8 weights, dequantized inside the MatMulNBits kernel; activations stay float.
It handles MatMul only, and torch's exporter writes Linear as Gemm, so Gemm nodes are first
rewritten as MatMul + Add (the same arithmetic) by onnxruntime's own rewrite. Convs stay float.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from ..convert import onnx_copy
from ..model import ONNX
from .base import Context, Pass, PassConfig, PassResult
from .registry import register


def gemm_to_matmul(proto) -> int:
    """onnxruntime's own Gemm -> MatMul (+ Add) rewrite (all graphs), in place; returns how many.
    Wrapped for what it leaves to its caller: the MatMul gets back the Gemm's name (onnxruntime
    appends "_MatMul") so targets and the result name the user's layers, the untransposed weights
    nothing reads any more are dropped (reads in If/Loop branches count), and two of its slips
    are avoided: an empty bias input ("") would become an Add of "", and Gemms sharing a
    non-constant B each write a Transpose to the same "<B>_Transposed"."""
    import onnx
    from onnxruntime.quantization.onnx_model import ONNXModel

    from .. import onnx_weights as ow

    before = {n.name for n, _ in ow.nodes(proto.graph)}
    gemms = [n for n, _ in ow.nodes(proto.graph) if n.op_type == "Gemm"]
    for node in gemms:
        if len(node.input) > 2 and not node.input[2]:
            del node.input[2:]  # an empty optional input is an absent one
    gemms = [n.name for n in gemms]
    ONNXModel(proto).replace_gemm_with_matmul()
    left = [n.name for n, _ in ow.nodes(proto.graph) if n.op_type == "Gemm"]  # alpha/beta != 1 or transA
    renamed = set(gemms) - set(left)
    for graph in ow.graphs(proto.graph):
        written, kept = set(), []
        for node in graph.node:
            if node.op_type == "Transpose" and node.output[0] in written:
                continue  # the same Transpose of the same B again
            written.update(node.output)
            kept.append(node)
            if (node.op_type == "MatMul" and node.name.endswith("_MatMul") and node.name not in before
                    and node.name[: -len("_MatMul")] in renamed):
                node.name = node.name[: -len("_MatMul")]
        if len(kept) != len(graph.node):
            del graph.node[:]
            graph.node.extend(kept)
    ow.drop_unused(proto)
    onnx.checker.check_model(proto)
    return len(gemms) - len(left)


class WeightOnlyConfig(PassConfig):
    bits: int = Field(4, ge=4, le=8, description="Weight bits: 4 or 8")
    block_size: int = Field(32, ge=16, le=256, description="Weights sharing one scale (a power of two >= 16)")
    symmetric: bool = Field(True, description="Symmetric scales (no zero point)")


@register
class WeightOnly(Pass[WeightOnlyConfig]):
    id = "quantize.weight_only"
    title = "Weight-only INT4 / INT8 (MatMul)"
    description = ("Linear/MatMul weights in 4 or 8 bits, block-wise (onnxruntime MatMulNBits); "
                   "activations stay float. For transformer and MLP layers; convs are left alone.")
    Config = WeightOnlyConfig
    frameworks = ("torch", "onnx")

    def apply(self, model, context: Context):
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        from .. import onnx_weights as ow
        from .quantize import excluded_nodes

        cfg: WeightOnlyConfig = self.config
        if cfg.bits not in (4, 8):
            raise ValueError("quantize.weight_only: bits must be 4 or 8")
        if cfg.block_size & (cfg.block_size - 1):
            raise ValueError("quantize.weight_only: block_size must be a power of two")
        yield 0.05, "exporting to ONNX" if model.is_torch else "preparing"
        proto = onnx_copy(model)  # gemm_to_matmul and the quantizer change it in place
        excluded = excluded_nodes(proto, cfg, all_graphs=True)  # before the rewrite: an ignored "Gemm" matches
        rewritten = gemm_to_matmul(proto)  # its MatMuls keep the Gemms' names, so the list still holds
        context.check_cancelled()
        yield 0.3, f"quantizing weights to INT{cfg.bits}"
        quantizer = MatMulNBitsQuantizer(proto, bits=cfg.bits, block_size=cfg.block_size, is_symmetric=cfg.symmetric,
                                         nodes_to_exclude=excluded)
        import logging

        logger = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
        level = logger.level
        logger.setLevel(logging.WARNING)  # it logs every node it skips at INFO
        try:
            quantizer.process()
        finally:
            logger.setLevel(level)
        result = quantizer.model.model
        layers = {ow.node_name(n): {"op": "MatMulNBits", "dtype": f"int{cfg.bits}", "block_size": cfg.block_size}
                  for n, _ in ow.nodes(result.graph) if n.op_type == "MatMulNBits"}  # If/Loop branches too
        warnings = []
        if not layers:
            warnings.append("no MatMul/Gemm layer with a constant weight was quantized (weight-only covers MatMul only)")
        convs = sum(1 for n in result.graph.node if n.op_type == "Conv")
        if convs:
            warnings.append(f"{convs} Conv layers stay float32: weight-only quantization covers MatMul only "
                            "(use quantize.int8_static for convs)")
        warnings.append("weight-only INT4/INT8 shrinks the weights; onnxruntime's CPU MatMulNBits kernel is faster "
                        "than float only for large, memory-bound MatMuls (batch 1 LLM-style), often slower on small layers")
        summary = f"{len(layers)} MatMul layers with INT{cfg.bits} weights (block {cfg.block_size}); {rewritten} Gemm rewritten"
        yield 1.0, summary
        return PassResult(model.with_obj(result, ONNX, format="onnx"), layers, summary, warnings)


class FoldConfig(PassConfig):
    pass


def conv_bn_pairs(module) -> list[tuple[str, str]]:
    """(conv name, bn name) where a BatchNorm's only input is a Conv whose only user is that
    BatchNorm, found on the torch.fx trace (module order alone would pair a shortcut's conv
    with the wrong norm)."""
    import torch.fx
    from torch import nn

    traced = torch.fx.symbolic_trace(module)
    mods = dict(module.named_modules())
    pairs = []
    for node in traced.graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), nn.modules.batchnorm._BatchNorm):
            continue
        src = node.args[0]
        if (getattr(src, "op", None) == "call_module" and isinstance(mods.get(src.target), nn.modules.conv._ConvNd)
                and len(src.users) == 1):
            pairs.append((src.target, node.target))
    return pairs


def fold_torch(module) -> list[tuple[str, str]]:
    """Fold each Conv -> BatchNorm pair of an eval-mode module into the conv, in place (the norm
    becomes an Identity); returns the (conv, norm) names. Raises what torch.fx raises on a module
    it cannot trace."""
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    from .lowrank import _replace

    module.eval()
    pairs = conv_bn_pairs(module)
    for conv_name, bn_name in pairs:
        conv, bn = module.get_submodule(conv_name), module.get_submodule(bn_name)
        _replace(module, conv_name, fuse_conv_bn_eval(conv, bn))
        _replace(module, bn_name, nn.Identity())
    return pairs


def fold_onnx(proto) -> dict[str, dict]:
    """Fold every inference-mode BatchNormalization whose input is a Conv or Gemm with a constant
    weight (read by nothing else) into that layer, in place, in any graph: W' = W * g / sqrt(var +
    eps) per output channel, b' = (b - mean) * g / sqrt(var + eps) + beta. Returns {layer: record}."""
    from onnx import helper, numpy_helper

    from .. import onnx_weights as ow

    stored = ow.tensors(proto)
    readers: dict[str, int] = {}
    outputs = set()
    for node, _graph in ow.nodes(proto.graph):
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    for graph in ow.graphs(proto.graph):
        outputs.update(o.name for o in graph.output)
    record = {}
    for graph in list(ow.graphs(proto.graph)):
        producer = {out: n for n in graph.node for out in n.output}
        for bn in [n for n in graph.node if n.op_type == "BatchNormalization"]:
            attrs = {a.name: helper.get_attribute_value(a) for a in bn.attribute}
            conv = producer.get(bn.input[0])
            if (conv is None or conv.op_type not in ("Conv", "Gemm") or len(bn.output) != 1
                    or attrs.get("training_mode", 0) or readers.get(bn.input[0], 0) != 1 or bn.input[0] in outputs
                    or conv.input[1] not in stored or readers.get(conv.input[1], 0) != 1
                    or not all(t in stored for t in bn.input[1:5])):
                continue
            w = ow.read(stored[conv.input[1]])
            out_axis = 0
            if conv.op_type == "Gemm":  # a Linear followed by BatchNorm1d: y = x W^T + b, W's rows are outputs
                g = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
                if g.get("transA", 0) or g.get("alpha", 1.0) != 1.0 or g.get("beta", 1.0) != 1.0 or w.ndim != 2:
                    continue
                out_axis = 0 if g.get("transB", 0) else 1
            out_c = w.shape[out_axis]
            has_bias = len(conv.input) > 2 and conv.input[2] in stored
            b = ow.read(stored[conv.input[2]]).astype(np.float64).reshape(-1) if has_bias else np.zeros(out_c)
            if b.size != out_c:
                continue  # a broadcast bias: leave it
            gamma, beta, mean, var = (ow.read(stored[t]).astype(np.float64) for t in bn.input[1:5])
            scale = gamma / np.sqrt(var + attrs.get("epsilon", 1e-5))
            shape = [1] * w.ndim
            shape[out_axis] = -1
            ow.write(stored[conv.input[1]], w * scale.reshape(shape))
            new_bias = ((b - mean) * scale + beta).astype(w.dtype)
            if has_bias and readers.get(conv.input[2], 0) == 1:
                ow.write(stored[conv.input[2]], new_bias)
            else:
                name = ow.unique_name(proto, f"{conv.input[1]}_folded_bias")
                graph.initializer.append(numpy_helper.from_array(new_bias, name))
                del conv.input[2:]
                conv.input.append(name)
            conv.output[0] = bn.output[0]
            graph.node.remove(bn)
            record[ow.node_name(conv)] = {"op": conv.op_type, "folded": ow.node_name(bn)}
    ow.drop_unused(proto)
    return record


@register
class FoldBatchNorm(Pass[FoldConfig]):
    id = "fold.batchnorm"
    title = "Fold batch norm into convs"
    description = "Merges each BatchNorm into the conv before it (exact in eval mode): fewer layers, same outputs."
    Config = FoldConfig
    frameworks = ("torch", "onnx")

    def apply(self, model, context: Context):
        model, notes = yield from self.unless_script(model)
        if model.is_onnx:
            new = model.copy()
            yield 0.0, "folding batch norms in the ONNX graph"
            record = fold_onnx(new.obj)
            summary = f"{len(record)} batch norms folded into the Conv/Gemm layers before them"
            warnings = notes + ([] if record else ["nothing changed: no Conv/Gemm -> BatchNormalization pair found "
                                                   "(exporters usually fold them already)"])
            yield 1.0, summary
            return PassResult(new, record, summary, warnings)
        from ..errors import StudioError

        new = model.copy()
        module = new.obj.eval()
        context.check_cancelled()
        try:
            pairs = fold_torch(module)
        except Exception as exc:  # noqa: BLE001 - data-dependent control flow defeats fx
            raise StudioError(f"fold.batchnorm: cannot trace the model with torch.fx ({str(exc).splitlines()[0]})") from None
        record = {conv_name: {"op": type(module.get_submodule(conv_name)).__name__, "folded": bn_name}
                  for conv_name, bn_name in pairs}
        summary = f"{len(pairs)} batch norms folded into convs"
        warnings = [] if pairs else ["nothing changed: no Conv -> BatchNorm pair found"]
        warnings.append("the ONNX export already folds eval-mode batch norms, so onnxruntime latency does not change; "
                        "folding matters for the torch model and for passes that follow")
        yield 1.0, summary
        return PassResult(new, record, summary, warnings)
