"""ONNX -> torch, so the passes that train or rewrite modules can run on ONNX-only models.

onnx2torch builds a torch.fx GraphModule with one torch module per ONNX node. It is installed
with --no-deps because it declares torchvision, whose wheel is broken against the pinned torch;
onnx2torch imports torchvision only in its NonMaxSuppression and RoiAlign converters, so those
two modules are replaced by empty ones before the import (models using those ops fail to
convert, with a clear error).

onnx2torch 1.5 stops at opset 17, while torch's default (dynamo) exporter writes opset 18-20
(Reshape-19 with allowzero=1, ReduceMean-18 with axes as an input, Gelu-20, ...). We register
converters for those op versions with onnx2torch's own `add_converter` rather than downgrading
the model with onnx's version converter: the version converter fails on the whole model when a
single op has no older form (Gelu-20 has none: tried on a dynamo export of a GELU MLP), while a
converter per op keeps every other op convertible and names the one that is not. Most newer
versions only add tensor types and reuse onnx2torch's converter for the previous version; the
ones whose meaning changed get a small converter here. onnx2torch has none for LSTM, GRU and
RNN at any opset: ours builds an nn.LSTM / nn.GRU / nn.RNN per node (see `_recurrent_converter`),
so the passes that train or prune work on recurrent models too."""

from __future__ import annotations

import sys
import types

from ..errors import StudioError
from ..model import TORCH, Model

_WITHOUT_TORCHVISION = ("nms", "roialign")


def _import_onnx2torch():
    try:
        import torchvision  # noqa: F401 - if it ever works, use the real converters
    except Exception:  # noqa: BLE001 - missing or broken: stub the two converters that need it
        for name in _WITHOUT_TORCHVISION:
            full = f"onnx2torch.node_converters.{name}"
            if full not in sys.modules:
                stub = types.ModuleType(full)
                stub.__all__ = []
                sys.modules[full] = stub
    try:
        import onnx2torch
    except ImportError as exc:
        raise StudioError(
            f"this pass needs a torch model and converting ONNX to torch needs onnx2torch ({exc}); "
            "install it with `pip install --no-deps \"onnx2torch>=1.5,<2\"`"
        ) from None
    _register_newer_opsets()
    return onnx2torch


# op -> (newer versions that only add types or attributes with a harmless default, version whose
# onnx2torch converter handles them)
_SAME_AS = {
    "Cast": ((19, 21), 13), "Constant": ((19, 21), 13), "ConstantOfShape": ((20, 21), 9), "Equal": ((19,), 13),
    "Flatten": ((21,), 13), "Identity": ((19, 21), 16), "IsInf": ((20,), 10), "IsNaN": ((20,), 13),
    "Transpose": ((21,), 13), "Unsqueeze": ((21,), 13), "Squeeze": ((21,), 13),
    "AveragePool": ((19, 22), 11), "Resize": ((18, 19), 13), "ScatterND": ((18,), 16), "Size": ((19, 21), 13),
    "GreaterOrEqual": ((16,), 12), "LessOrEqual": ((16,), 12), "Conv": ((22,), 11), "ConvTranspose": ((22,), 11),
    "MaxPool": ((22,), 12), "GlobalAveragePool": ((22,), 1), "Dropout": ((22,), 13), "InstanceNormalization": ((22,), 6),
    "HardSigmoid": ((22,), 6), "HardSwish": ((22,), 14), "Elu": ((22,), 6), "Selu": ((22,), 6), "Softplus": ((22,), 1),
    "Softsign": ((22,), 1), "Round": ((22,), 11), "EyeLike": ((22,), 9),
    **dict.fromkeys(("Acos", "Asin", "Atan", "Cos", "Sin", "Tan"), ((22,), 7)),
}
_REDUCE = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
           "ReduceProd", "ReduceSumSquare")
_registered = False


def _register_newer_opsets() -> None:
    global _registered
    if _registered:
        return
    _registered = True
    import numpy as np
    import torch
    from onnx import defs
    from onnx2torch.node_converters import registry
    from onnx2torch.node_converters.reduce import OnnxReduceStaticAxes
    from onnx2torch.node_converters.reshape import OnnxReshape
    from onnx2torch.utils.custom_export_to_onnx import DefaultExportToOnnx
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult, get_const_value, onnx_mapping_from_node

    def add(op: str, version: int, converter) -> None:
        if registry.OperationDescription("", op, version) not in registry._CONVERTER_REGISTRY:
            registry.add_converter(operation_type=op, version=version)(converter)

    def same_as(op: str, version: int, old: int):
        previous = registry.get_converter(op, old)
        known = set(defs.get_schema(op, max_inclusive_version=old).attributes)
        new_schema = defs.get_schema(op, max_inclusive_version=version)

        def convert(node, graph):
            for name, value in node.attributes.items():  # a new attribute the old converter would ignore
                default = new_schema.attributes[name].default_value if name in new_schema.attributes else None
                if name not in known and (default is None or not default.name or
                                          _plain(_attr_value(default)) != _plain(value)):
                    raise NotImplementedError(f"attribute {name}={value!r} of {op}-{version} is not supported")
            return previous(node, graph)

        return convert

    for op, (versions, old) in _SAME_AS.items():
        for version in versions:
            try:
                add(op, version, same_as(op, version, old))
            except Exception:  # noqa: BLE001 - an op or version this onnx/onnx2torch does not know
                continue

    class Reshape(OnnxReshape):
        """onnx2torch's Reshape, plus allowzero=1: a 0 in the shape is then a real 0 (what
        torch.reshape does) instead of a copy of the input's axis. Re-exported to ONNX as a
        Reshape with the same attribute, so a dynamic shape stays dynamic.

        `shape_patch` {position: size} (set by structured pruning when channels a stored or
        computed shape names by number shrank) replaces those entries of the shape, the others
        (a dynamic batch) are kept; it is exported as a Concat of slices and constants."""

        def __init__(self, allowzero: int):
            super().__init__()
            self.allowzero = int(allowzero)
            self.shape_patch = None

        def forward(self, x, shape):
            patch = getattr(self, "shape_patch", None)
            if patch:
                parts, start = [], 0
                for pos in sorted(patch):
                    parts += [shape[start:pos], torch.tensor([patch[pos]], dtype=shape.dtype)]
                    start = pos + 1
                shape = torch.cat([*parts, shape[start:]])

            def _forward():
                if self.allowzero:
                    return torch.reshape(x, [int(d) for d in shape])
                return self._do_reshape(x, shape)

            if torch.onnx.is_in_onnx_export():
                return DefaultExportToOnnx.export(_forward, "Reshape", x, shape, {"allowzero_i": self.allowzero})
            return _forward()

    def reshape(node, graph):
        if _is_flatten(node, graph):
            # torch's x.flatten(1) exports as Reshape(x, [-1, C*H*W]); as nn.Flatten the width is
            # not pinned, so channel pruning after conversion (Torch-Pruning) still fits the next layer
            return OperationConverterResult(torch_module=torch.nn.Flatten(1),
                                            onnx_mapping=OnnxMapping(inputs=(node.input_values[0],),
                                                                     outputs=node.output_values))
        return OperationConverterResult(torch_module=Reshape(node.attributes.get("allowzero", 0)),
                                        onnx_mapping=onnx_mapping_from_node(node=node))

    def _is_flatten(node, graph) -> bool:
        """Reshape(x, [-1, K]) where K is x's size after the batch axis (known from shape inference)."""
        try:
            shape = [int(d) for d in get_const_value(node.input_values[1], graph).tolist()]
        except (KeyError, AttributeError, TypeError, ValueError):
            return False
        info = graph.value_info.get(node.input_values[0])
        if len(shape) != 2 or shape[0] != -1 or info is None or not info.type.tensor_type.HasField("shape"):
            return False
        dims = info.type.tensor_type.shape.dim[1:]
        if not dims or not all(d.HasField("dim_value") for d in dims):
            return False
        return int(np.prod([d.dim_value for d in dims])) == shape[1]

    for version in (19, 21):
        add("Reshape", version, reshape)
    # onnx2torch refuses allowzero=1 for Reshape-14 too: replace its converter; and for 5 and 13,
    # where onnxscript's constant folding (see `specialized`) writes allowzero=1 on the Reshapes it
    # rewrites whatever the opset
    for version in (5, 13, 14):
        registry._CONVERTER_REGISTRY[registry.OperationDescription("", "Reshape", version)] = reshape

    def reduce(node, graph):
        """Reduce*-18+: the axes come as an (constant) input instead of an attribute."""
        axes = None
        if len(node.input_values) > 1 and node.input_values[1]:
            try:
                axes = [int(a) for a in get_const_value(node.input_values[1], graph).tolist()]
            except KeyError:
                raise NotImplementedError(f"{node.operation_type} with axes computed at run time") from None
        if not axes and node.attributes.get("noop_with_empty_axes", 0):
            module = torch.nn.Identity()
        else:
            module = OnnxReduceStaticAxes(node.operation_type, axes, node.attributes.get("keepdims", 1))
        return OperationConverterResult(torch_module=module,
                                        onnx_mapping=OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values))

    for op in _REDUCE:
        for version in (18, 20):
            add(op, version, reduce)

    class Split(torch.nn.Module):
        """Split-18: sizes from the `split` input, or `num_outputs` chunks of ceil(n / k)."""

        def __init__(self, axis: int, outputs: int):
            super().__init__()
            self.axis, self.outputs = axis, outputs

        def forward(self, x, split=None):
            if split is not None:
                return torch.split(x, [int(s) for s in split], dim=self.axis)
            size = -(-x.shape[self.axis] // self.outputs)
            return torch.split(x, size, dim=self.axis)

    def split(node, graph):
        module = Split(node.attributes.get("axis", 0), len(node.output_values))
        return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node=node))

    add("Split", 18, split)

    class EdgePad(torch.nn.Module):
        """Pad in reflect or edge mode on a tensor of any rank. onnx2torch drops the pads of the
        first two axes assuming a 4-D or 5-D input, so a reflect Pad of a [batch, samples] signal
        (Silero VAD's STFT) failed; torch pads the last k axes of a tensor of rank k+1 or k+2,
        so the leading axes are merged for the call and restored after."""

        def __init__(self, mode: str, pads):
            super().__init__()
            self.mode, self.pads = mode, pads

        def forward(self, x, pads=None):
            onnx_pads = self.pads if self.pads is not None else [int(v) for v in pads]
            half = len(onnx_pads) // 2
            torch_pads = []
            for begin, end in zip(onnx_pads[:half][::-1], onnx_pads[half:][::-1]):
                torch_pads += [begin, end]
            while torch_pads and torch_pads[-2:] == [0, 0]:  # leading axes not padded
                torch_pads = torch_pads[:-2]
            k = len(torch_pads) // 2
            if not k:
                return x
            if x.dim() in (k + 1, k + 2):
                return torch.nn.functional.pad(x, torch_pads, mode=self.mode)
            lead = x.shape[:-k]
            y = torch.nn.functional.pad(x.reshape((-1, *x.shape[-k:])), torch_pads, mode=self.mode)
            return y.reshape((*lead, *y.shape[-k:]))

    def pad_with(previous):
        def convert(node, graph):
            inputs = list(node.input_values)
            if len(inputs) > 3 and inputs[3]:
                raise NotImplementedError(f"Pad-{18} with an axes input")
            mode = _plain(node.attributes.get("mode", "constant"))
            if mode not in ("reflect", "edge"):
                return previous(node, graph)
            if "pads" in node.attributes:  # Pad-2
                pads = [int(v) for v in node.attributes["pads"]]
            else:
                try:
                    pads = [int(v) for v in get_const_value(inputs[1], graph).tolist()]
                except KeyError:
                    pads = None
            module = EdgePad("reflect" if mode == "reflect" else "replicate", pads)
            used = (inputs[0],) if pads is not None else (inputs[0], inputs[1])
            return OperationConverterResult(torch_module=module,
                                            onnx_mapping=OnnxMapping(inputs=used, outputs=node.output_values))

        return convert

    pad13 = registry.get_converter("Pad", 13)
    for version in (11, 13):
        key = registry.OperationDescription("", "Pad", version)
        registry._CONVERTER_REGISTRY[key] = pad_with(registry._CONVERTER_REGISTRY[key])
    for version in (18, 19, 21):
        add("Pad", version, pad_with(pad13))

    def gelu(node, graph):
        module = torch.nn.GELU(approximate=node.attributes.get("approximate", "none"))
        return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node=node))

    add("Gelu", 20, gelu)

    class Shape(torch.nn.Module):
        """Shape-15+ with start/end. onnx2torch's module exports itself as a Shape node with
        start/end, which torch's constant folding (re-exporting the converted model) folds to the
        whole shape of the example input, batch included; traced, `_shape_as_tensor` then a slice
        exports as Shape + Slice and stays dynamic (torch.export cannot run `_shape_as_tensor`,
        so it gets onnx2torch's tensor of the sizes)."""

        def __init__(self, start: int, end: int | None):
            super().__init__()
            self.start, self.end = start, end

        def forward(self, x):
            if torch.jit.is_tracing():  # the TorchScript-based exporter
                return torch._shape_as_tensor(x)[self.start:self.end]
            return torch.tensor(x.shape[self.start:self.end], device=x.device)

    def shape(node, graph):
        module = Shape(node.attributes.get("start", 0), node.attributes.get("end", None))
        return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node=node))

    for version in (19, 21):
        add("Shape", version, shape)
    registry._CONVERTER_REGISTRY[registry.OperationDescription("", "Shape", 15)] = shape
    _register_recurrent(add)


_RECURRENT = None


def _recurrent_module():
    """The module class, built once on first use (torch is imported only when converting)."""
    global _RECURRENT
    if _RECURRENT is not None:
        return _RECURRENT
    import torch

    class OnnxRecurrent(torch.nn.Module):
        """One ONNX LSTM, GRU or RNN node as a one-layer nn.LSTM / nn.GRU / nn.RNN (sequence first),
        with the ONNX node's input and output layouts: Y [seq, dirs, batch, hidden] (layout 0) or
        [batch, seq, dirs, hidden] (layout 1), Y_h and Y_c [dirs, batch, hidden] (or batch first)."""

        def __init__(self, rnn, layout: int, reverse: bool, outputs: int):
            super().__init__()
            self.rnn, self.layout, self.reverse, self.outputs = rnn, layout, reverse, outputs

        def forward(self, x, initial_h=None, initial_c=None):
            if self.layout:
                x = x.transpose(0, 1)
                initial_h = None if initial_h is None else initial_h.transpose(0, 1).contiguous()
                initial_c = None if initial_c is None else initial_c.transpose(0, 1).contiguous()
            if self.reverse:
                x = x.flip(0)
            state = None
            if initial_h is not None or initial_c is not None:
                dirs = 2 if self.rnn.bidirectional else 1
                zeros = x.new_zeros(dirs, x.shape[1], self.rnn.hidden_size)
                h = zeros if initial_h is None else initial_h
                state = (h, zeros if initial_c is None else initial_c) if isinstance(self.rnn, torch.nn.LSTM) else h
            y, state = self.rnn(x, state)
            if self.reverse:
                y = y.flip(0)
            h, c = state if isinstance(state, tuple) else (state, None)
            y = y.unflatten(2, (-1, self.rnn.hidden_size))  # [seq, batch, dirs, hidden]
            if self.layout:
                y, h = y.transpose(0, 1), h.transpose(0, 1)
                c = None if c is None else c.transpose(0, 1)
            else:
                y = y.transpose(1, 2)
            if self.outputs == 1:
                return y
            return (y, h, c)[:self.outputs]

    _RECURRENT = OnnxRecurrent
    return OnnxRecurrent


# ONNX gate blocks in torch's order: LSTM ONNX [i, o, f, c] -> torch [i, f, g, o]; GRU ONNX
# [z, r, h] -> torch [r, z, n]; RNN has one block
_GATES = {"LSTM": (4, (0, 2, 3, 1)), "GRU": (3, (1, 0, 2)), "RNN": (1, (0,))}
# the activations (per direction) torch's layer can compute, the default first; an nn.RNN takes
# the one it uses as its nonlinearity
_ACTIVATIONS = {"LSTM": (["Sigmoid", "Tanh", "Tanh"],), "GRU": (["Sigmoid", "Tanh"],), "RNN": (["Tanh"], ["Relu"])}


def _recurrent_converter(node, graph):
    """ONNX LSTM / GRU / RNN (opset 7+) -> OnnxRecurrent holding an nn.LSTM / nn.GRU / nn.RNN
    with the node's weights. Refused with the reason: weights computed at run time, a
    sequence_lens that is not the full length of every sequence, peepholes, clip, other
    activations (an RNN's Tanh or Relu, the same in both directions), input_forget, and a
    GRU with linear_before_reset=0 (torch's GRU applies the reset gate after the recurrent
    product, which is linear_before_reset=1)."""
    import torch
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult, get_const_value

    op = node.operation_type
    a = node.attributes
    gates, order = _GATES[op]
    hidden = int(a["hidden_size"])
    direction = _plain(a.get("direction", "forward"))
    if direction not in ("forward", "reverse", "bidirectional"):
        raise NotImplementedError(f"direction={direction!r}")
    dirs = 2 if direction == "bidirectional" else 1
    layout = int(a.get("layout", 0))
    if "clip" in a:
        raise NotImplementedError("clip is not supported (torch's recurrent layers do not clip)")
    if op == "LSTM" and int(a.get("input_forget", 0)):
        raise NotImplementedError("input_forget=1 is not supported (torch's LSTM has no coupled gate)")
    if op == "GRU" and not int(a.get("linear_before_reset", 0)):
        raise NotImplementedError("linear_before_reset=0 is not supported (torch's GRU computes linear_before_reset=1)")
    known = {tuple(x.lower() for x in acts * dirs): acts for acts in _ACTIVATIONS[op]}
    activations = known.get(tuple(_plain(x).lower() for x in a["activations"])) if "activations" in a \
        else _ACTIVATIONS[op][0]
    if activations is None:
        each = ", listed for each direction, the same in both" if dirs == 2 else ""
        raise NotImplementedError(f"activations {[_plain(x) for x in a['activations']]} are not supported "
                                  f"(torch's {op} uses {' or '.join(', '.join(x) for x in _ACTIVATIONS[op])}{each})")
    if "activation_alpha" in a or "activation_beta" in a:
        raise NotImplementedError("activation_alpha/activation_beta are not supported")
    inputs = list(node.input_values) + [""] * (8 - len(node.input_values))

    def const(k: int, what: str):
        try:
            return get_const_value(inputs[k], graph)
        except KeyError:
            raise NotImplementedError(f"its {what} are computed at run time, not stored") from None

    w, r = const(1, "input weights W"), const(2, "recurrent weights R")
    b = const(3, "biases B") if inputs[3] else torch.zeros(dirs, 2 * gates * hidden, dtype=w.dtype)
    if op == "LSTM" and inputs[7] and bool(torch.any(const(7, "peephole weights P") != 0)):
        raise NotImplementedError("peephole weights P are not supported (torch's LSTM has none)")
    if inputs[4]:
        try:
            lens = get_const_value(inputs[4], graph)
        except KeyError:
            raise NotImplementedError("sequence_lens computed at run time is not supported "
                                      "(torch's layer runs every sequence to the full length)") from None
        info = graph.value_info.get(inputs[0])
        seq = None
        if info is not None and info.type.tensor_type.HasField("shape"):
            dim = info.type.tensor_type.shape.dim[1 if layout else 0]
            seq = dim.dim_value if dim.HasField("dim_value") else None
        if seq is None or bool(torch.any(torch.as_tensor(lens) != seq)):
            raise NotImplementedError("sequence_lens other than the full length of every sequence is not supported")
    extra = {"nonlinearity": activations[0].lower()} if op == "RNN" else {}
    rnn = getattr(torch.nn, op)(w.shape[-1], hidden, bidirectional=dirs == 2, dtype=w.dtype, **extra)

    def reorder(t):  # [gates * hidden, ...] in ONNX's gate order -> torch's
        return torch.cat([t[g * hidden:(g + 1) * hidden] for g in order])

    with torch.no_grad():
        for d in range(dirs):
            suffix = "_reverse" if d else ""
            getattr(rnn, f"weight_ih_l0{suffix}").copy_(reorder(w[d]))
            getattr(rnn, f"weight_hh_l0{suffix}").copy_(reorder(r[d]))
            getattr(rnn, f"bias_ih_l0{suffix}").copy_(reorder(b[d][:gates * hidden]))
            getattr(rnn, f"bias_hh_l0{suffix}").copy_(reorder(b[d][gates * hidden:]))
    module = _recurrent_module()(rnn, layout, direction == "reverse", len(node.output_values))
    state = (inputs[0], inputs[5]) + ((inputs[6],) if op == "LSTM" else ())
    return OperationConverterResult(torch_module=module, onnx_mapping=OnnxMapping(inputs=state, outputs=node.output_values))


def _register_recurrent(add) -> None:
    from onnx import defs

    for op in _GATES:
        for version in sorted({s.since_version for s in defs.get_all_schemas_with_history()
                               if s.name == op and s.domain == "" and s.since_version >= 7}):
            add(op, version, _recurrent_converter)


def _plain(value):
    """onnx gives a string default as bytes, onnx2torch the node's value as str."""
    return value.decode() if isinstance(value, bytes) else value


def _attr_value(attribute):
    from onnx import helper

    return helper.get_attribute_value(attribute)


def unconvertible(proto) -> str | None:
    """The first node onnx2torch cannot convert, as "Op (opset N), node 'name': why", or None."""
    from onnx2torch.node_converters import get_converter
    from onnx2torch.onnx_graph import OnnxGraph

    opsets = {o.domain: o.version for o in proto.opset_import}
    graph = OnnxGraph(proto.graph)
    for node in graph.nodes.values():
        version = opsets.get(node.domain, 0)
        try:
            get_converter(domain=node.domain, operation_type=node.operation_type, version=version)(node, graph)
        except Exception as exc:  # noqa: BLE001 - the converter's own reason
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if reason.startswith("Converter is not implemented"):
                reason = "onnx2torch has no converter for it"
            return f"{node.operation_type} (opset {version}), node '{node.name or node.unique_name}': {reason}"
    return None


ONNX_NATIVE = ("prune.magnitude, prune.nm, lowrank.svd, cluster.kmeans, fold.batchnorm and the quantize passes "
               "work on the ONNX model without converting it")


def constants_as_initializers(proto):
    """`proto`, or a copy in which the main graph's Constant nodes holding a tensor are
    initializers: Paddle's exports (PP-OCR) keep every weight in a Constant node, and onnx2torch
    only finds a Conv's weight among the initializers (it failed with KeyError 'conv1_weights')."""
    import onnx

    outputs = {o.name for o in proto.graph.output}
    moved = [n for n in proto.graph.node if n.op_type == "Constant" and len(n.attribute) == 1
             and n.attribute[0].name == "value" and n.output and n.output[0] not in outputs]
    if not moved:
        return proto
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    keep = []
    for n in copy.graph.node:
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value" \
                and n.output and n.output[0] not in outputs:
            tensor = copy.graph.initializer.add()
            tensor.CopyFrom(n.attribute[0].t)
            tensor.name = n.output[0]
        else:
            keep.append(n)
    del copy.graph.node[:]
    copy.graph.node.extend(keep)
    return copy


def weights_without_identity(proto):
    """`proto`, or a copy in which nodes read initializers directly where the graph passed them
    through an Identity: torch's exporter writes one initializer and Identity copies when several
    layers hold equal tensors (e.g. the zero biases of freshly folded batch norms), and onnx2torch
    only finds a Conv's weight or bias among the initializers."""
    import onnx

    inits = {i.name for i in proto.graph.initializer}
    outputs = {o.name for o in proto.graph.output}
    alias = {n.output[0]: n.input[0] for n in proto.graph.node
             if n.op_type == "Identity" and n.input and n.input[0] in inits and n.output[0] not in outputs}
    if not alias:
        return proto
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    keep = [n for n in copy.graph.node if not (n.op_type == "Identity" and n.output and n.output[0] in alias)]
    for n in keep:
        for k, name in enumerate(n.input):
            if name in alias:
                n.input[k] = alias[name]
    del copy.graph.node[:]
    copy.graph.node.extend(keep)
    return copy


def outputs_for_onnx2torch(proto):
    """`proto`, or a copy onnx2torch maps right: an unused output of a node (an LSTM's Y when
    only Y_h is read) gets a name, since onnx2torch takes an empty output name for the empty
    input name of a missing optional input (and fails); and each graph output that one output of
    a several-output node gives passes through an Identity, since onnx2torch makes such a graph
    output the node's whole tuple of outputs."""
    import onnx

    unnamed = any(not v for n in proto.graph.node if len(n.output) > 1 for v in n.output)
    producer = {o: n for n in proto.graph.node for o in n.output if o}
    multi = [o.name for o in proto.graph.output if o.name in producer and len(producer[o.name].output) > 1]
    if not unnamed and not multi:
        return proto
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    taken = {v for n in copy.graph.node for v in (*n.input, *n.output)} | {i.name for i in copy.graph.input}

    def fresh(base: str) -> str:
        name, k = base, 0
        while name in taken:
            k += 1
            name = f"{base}{k}"
        taken.add(name)
        return name

    for j, n in enumerate(copy.graph.node):
        if len(n.output) > 1:
            for k, v in enumerate(n.output):
                if not v:
                    n.output[k] = fresh(f"{n.name or n.op_type + str(j)}_unused_output{k}")
    for name in multi:
        inner = fresh(f"{name}_before_output")
        for n in copy.graph.node:
            for k, v in enumerate(n.output):
                if v == name:
                    n.output[k] = inner
            for k, v in enumerate(n.input):
                if v == name:
                    n.input[k] = inner
        copy.graph.node.append(onnx.helper.make_node("Identity", [inner], [name]))
    return copy


def _constant_tensor(module, node):
    """The tensor an fx node always gives when it is a stored constant (an initializer buffer,
    `get_attr`, or a Constant node's module), else None."""
    import torch
    from onnx2torch.node_converters.constant import OnnxConstant

    if getattr(node, "op", None) == "get_attr":
        value = module
        for part in node.target.split("."):
            value = getattr(value, part, None)
        return value if isinstance(value, torch.Tensor) else None
    if getattr(node, "op", None) == "call_module" and not node.args and not node.kwargs:
        sub = module.get_submodule(node.target)
        if isinstance(sub, OnnxConstant) and isinstance(sub.value, torch.Tensor):
            return sub.value
    return None


def matmuls_as_linear(module) -> int:
    """Turns the MatMul-by-a-stored-weight modules of an onnx2torch GraphModule (x @ W, W a 2-D
    float constant: the projections of an exported transformer, a Linear on 3-D input) into
    nn.Linear layers, folding the bias of an `Add` of a 1-D constant that is the product's only
    user. onnx2torch keeps such weights as buffers of a plain matrix product: nothing trains them
    and Torch-Pruning sees no layer to shrink; as Linear layers they are trained by fine-tuning and
    distillation and pruned like any other. Returns how many were replaced."""
    import torch
    from onnx2torch.node_converters.binary_math_operations import OnnxBinaryMathOperation
    from onnx2torch.node_converters.matmul import OnnxMatMul
    from torch import nn

    import hashlib
    from collections import Counter

    graph = module.graph
    candidates = []
    for node in list(graph.nodes):
        if node.op != "call_module" or len(node.args) != 2 or node.kwargs:
            continue
        if not isinstance(module.get_submodule(node.target), OnnxMatMul):
            continue
        x, w = node.args
        weight = _constant_tensor(module, w)
        if (weight is None or weight.dim() != 2 or not weight.is_floating_point()
                or _constant_tensor(module, x) is not None):
            continue
        candidates.append((node, x, weight))
    # onnx2torch copies an initializer for every node that reads it: equal weights are one
    # shared (tied) weight of the ONNX graph, which separate Linear layers would untie in training
    digest = [hashlib.sha1(weight.detach().cpu().contiguous().numpy().tobytes()).hexdigest() + str(tuple(weight.shape))
              for _, _, weight in candidates]
    uses = Counter(digest)
    replaced = 0
    for (node, x, weight), key in zip(candidates, digest):
        if uses[key] > 1:
            continue
        bias, add = None, None
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module" and len(users[0].args) == 2:
            sub = module.get_submodule(users[0].target)
            other = [a for a in users[0].args if a is not node]
            if (isinstance(sub, OnnxBinaryMathOperation) and sub.math_op_function is torch.add
                    and sub.broadcast is None and len(other) == 1):
                b = _constant_tensor(module, other[0])
                if b is not None and b.dim() == 1 and b.shape[0] == weight.shape[1] and b.dtype == weight.dtype:
                    bias, add = b, users[0]
        linear = nn.Linear(weight.shape[0], weight.shape[1], bias=bias is not None, dtype=weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(weight.t())
            if bias is not None:
                linear.bias.copy_(bias)
        parent, _, name = node.target.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, name, linear)
        node.args = (x,)
        if add is not None:
            add.replace_all_uses_with(node)
            graph.erase_node(add)
        replaced += 1
    if replaced:
        _drop_unused_constants(module)
    return replaced


def _embedding_class():
    import torch
    from torch import nn

    class OnnxEmbedding(nn.Embedding):
        """An ONNX Gather from a stored table as a trainable embedding; like Gather (and unlike
        nn.Embedding) a negative id counts from the end."""

        def forward(self, ids):
            ids = ids.long()
            return super().forward(torch.where(ids < 0, ids + self.num_embeddings, ids))

    return OnnxEmbedding


def gathers_as_embedding(module) -> int:
    """Turns the Gather-from-a-stored-table modules of an onnx2torch GraphModule (axis 0, a 2-D
    float table, integer ids: a token or id embedding) into embedding layers, so fine-tuning and
    distillation train them; onnx2torch keeps the table as a buffer. A table whose values another
    constant also holds (a tied output layer: onnx2torch copies a weight for each reader) is left
    as it is, as training would untie it. Returns how many were replaced."""
    import hashlib
    from collections import Counter

    import torch
    from onnx2torch.node_converters.gather import OnnxGather

    graph = module.graph

    def digest(t):
        return hashlib.sha1(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest() + str(tuple(t.shape))

    tables = Counter(digest(t) for n in graph.nodes if (t := _constant_tensor(module, n)) is not None)
    embedding = _embedding_class()
    replaced = 0
    for node in list(graph.nodes):
        if node.op != "call_module" or len(node.args) != 2 or node.kwargs:
            continue
        sub = module.get_submodule(node.target)
        if not isinstance(sub, OnnxGather) or sub._axis != 0:
            continue
        table, ids = _constant_tensor(module, node.args[0]), node.args[1]
        if (table is None or table.dim() != 2 or not table.is_floating_point()
                or _constant_tensor(module, ids) is not None or tables[digest(table)] > 1):
            continue
        layer = embedding(table.shape[0], table.shape[1], dtype=table.dtype)
        with torch.no_grad():
            layer.weight.copy_(table)
        parent, _, name = node.target.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, name, layer)
        node.args = (ids,)
        replaced += 1
    if replaced:
        _drop_unused_constants(module)
    return replaced


_STATIC = None


def _static_classes():
    """Modules that take their shape arguments as Python numbers (see `static_shape_args`)."""
    global _STATIC
    if _STATIC is not None:
        return _STATIC
    import torch
    from torch import nn

    class StaticReshape(nn.Module):
        def __init__(self, shape, allowzero: int):
            super().__init__()
            self.shape, self.allowzero = list(shape), int(allowzero)

        def forward(self, x):
            dims = [x.shape[i] if d == 0 and not self.allowzero else d for i, d in enumerate(self.shape)]
            return torch.reshape(x, dims)

    class StaticSplit(nn.Module):
        def __init__(self, sizes, axis: int):
            super().__init__()
            self.sizes, self.axis = list(sizes), int(axis)

        def forward(self, x):
            return torch.split(x, self.sizes, dim=self.axis)

    class StaticSlice(nn.Module):
        def __init__(self, starts, ends, axes, steps):
            super().__init__()
            self.parts = list(zip(starts, ends, axes, steps))

        def forward(self, x):
            for start, end, axis, step in self.parts:
                axis = axis % x.dim()
                if step < 0:  # onnx2torch's reading: flip, then slice from the other end
                    x = torch.flip(x, dims=[axis])
                    start, end, step = -start - 1, -end - 1, -step
                index = [slice(None)] * x.dim()
                index[axis] = slice(start, end, step)
                x = x[tuple(index)]
            return x

    class StaticResize(nn.Module):
        def __init__(self, mode: str, align_corners, scales, sizes):
            super().__init__()
            self.mode, self.align_corners, self.scales, self.sizes = mode, align_corners, scales, sizes

        def forward(self, x):
            return torch.nn.functional.interpolate(x, size=self.sizes, scale_factor=self.scales, mode=self.mode,
                                                   align_corners=self.align_corners)

    class StaticExpand(nn.Module):
        def __init__(self, shape):
            super().__init__()
            self.shape = list(shape)

        def forward(self, x):
            return torch.broadcast_to(x, torch.broadcast_shapes(tuple(x.shape), tuple(self.shape)))

    class StaticTile(nn.Module):
        def __init__(self, repeats):
            super().__init__()
            self.repeats = list(repeats)

        def forward(self, x):
            return x.repeat(self.repeats)

    class StaticSelect(nn.Module):
        def __init__(self, axis: int, index: int):
            super().__init__()
            self.axis, self.index = int(axis), int(index)

        def forward(self, x):
            return x.select(self.axis, self.index)

    _STATIC = types.SimpleNamespace(select=StaticSelect, reshape=StaticReshape, split=StaticSplit, slice=StaticSlice,
                                    resize=StaticResize, expand=StaticExpand, tile=StaticTile)
    return _STATIC


def static_shape_args(module) -> int:
    """Gives the shape-taking modules of an onnx2torch GraphModule (Reshape, Split, Slice, Resize,
    Expand, Tile, Squeeze, Unsqueeze, a Gather of one index) their shape, sizes, starts/ends or scales as Python numbers where those come
    from stored constants, and drops those inputs. onnx2torch reads them from tensors at run time
    (`int(s) for s in split`), which torch.export cannot: stored tensors are inputs of the
    exported program there, and a number read from one is data-dependent ("Could not extract
    specialized integer from data-dependent expression u0": ultralytics' YOLOv8 export, its
    Splits in every C2f block). For the phone exports (core/edge.py), on a copy: a number made
    static stays so in the file, and Torch-Pruning's shape patches need the tensors. Shapes
    computed in the graph (Shape -> Gather -> Concat) are first folded to constants on the ONNX
    side (`specialized`). Returns how many modules were replaced."""
    from onnx2torch.node_converters.expand import OnnxExpand
    from onnx2torch.node_converters.gather import OnnxGather
    from onnx2torch.node_converters.reshape import OnnxReshape
    from onnx2torch.node_converters.resize import OnnxResize
    from onnx2torch.node_converters.slice import OnnxSlice
    from onnx2torch.node_converters.split import OnnxSplit13
    from onnx2torch.node_converters.squeeze import OnnxSqueezeDynamicAxes, OnnxSqueezeStaticAxes
    from onnx2torch.node_converters.tile import OnnxTile
    from onnx2torch.node_converters.unsqueeze import OnnxUnsqueezeDynamicAxes, OnnxUnsqueezeStaticAxes

    graph = getattr(module, "graph", None)
    if graph is None:
        return 0
    static = _static_classes()
    replaced = 0
    for node in list(graph.nodes):
        if node.op != "call_module" or not node.args:
            continue
        sub = module.get_submodule(node.target)
        args = list(node.args)
        # onnx2torch passes some inputs by name (Resize: scales=..., sizes=...)
        names = {"OnnxResize": ("roi", "scales", "sizes"), "OnnxSlice": ("starts", "ends", "axes", "steps")}
        for k, name in enumerate(names.get(type(sub).__name__, ()), 1):
            if name in node.kwargs:
                args += [None] * (k + 1 - len(args))
                args[k] = node.kwargs[name]

        def numbers(i, kind=int, args=args):
            if i >= len(args) or args[i] is None:
                return "absent"
            value = _constant_tensor(module, args[i])
            if value is None:
                return None
            return [kind(v) for v in value.reshape(-1).tolist()]

        new = None
        if isinstance(sub, OnnxReshape) and not getattr(sub, "shape_patch", None) and isinstance(numbers(1), list):
            new = static.reshape(numbers(1), getattr(sub, "allowzero", 0))
        elif ((isinstance(sub, OnnxSplit13) or type(sub).__name__ == "Split" and type(sub).__module__ == __name__)
              and isinstance(numbers(1), list)):
            new = static.split(numbers(1), sub.axis)
        elif isinstance(sub, OnnxSlice) and all(numbers(i) is not None for i in range(1, 5)):
            starts, ends = numbers(1), numbers(2)
            axes = numbers(3) if numbers(3) != "absent" else list(range(len(starts)))
            steps = numbers(4) if numbers(4) != "absent" else [1] * len(starts)
            new = static.slice(starts, ends, axes, steps)
        elif (isinstance(sub, OnnxResize) and all(numbers(i, float) is not None for i in range(1, 4))
              and (sub.ignore_roi or numbers(1, float) in ("absent", []))):
            from onnx2torch.node_converters.resize import _onnx_mode_to_torch_mode

            scales, sizes = numbers(2, float), numbers(3)
            scales = scales[2:] if isinstance(scales, list) and scales else None
            sizes = sizes[2:] if isinstance(sizes, list) and sizes else None
            given = scales if scales is not None else sizes
            if given is not None and (scales is None or sizes is None):  # one of them, as interpolate takes
                new = static.resize(_onnx_mode_to_torch_mode(sub.onnx_mode, len(given)), sub.align_corners,
                                    scales, sizes)
        elif isinstance(sub, OnnxExpand) and isinstance(numbers(1), list):
            new = static.expand(numbers(1))
        elif isinstance(sub, OnnxTile) and isinstance(numbers(1), list):
            new = static.tile(numbers(1))
        elif (isinstance(sub, OnnxGather) and isinstance(numbers(1), list) and len(args) == 2
              and _constant_tensor(module, args[1]).dim() == 0):  # x[..., i]: a number read from a tensor
            new = static.select(sub._axis, numbers(1)[0])
        elif isinstance(sub, OnnxSqueezeDynamicAxes) and isinstance(numbers(1), list):
            new = OnnxSqueezeStaticAxes(numbers(1))
        elif isinstance(sub, OnnxUnsqueezeDynamicAxes) and isinstance(numbers(1), list):
            new = OnnxUnsqueezeStaticAxes(numbers(1))
        if new is None:
            continue
        parent, _, name = node.target.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, name, new)
        node.args, node.kwargs = (args[0],), {}
        replaced += 1
    if replaced:
        _drop_unused_constants(module)
    return replaced


def _drop_unused_constants(module) -> None:
    """Removes the initializer buffers and Constant modules no graph node reads any more."""
    graph = module.graph
    graph.eliminate_dead_code()
    used = {n.target for n in graph.nodes if n.op == "get_attr"}
    used_modules = {n.target for n in graph.nodes if n.op == "call_module"}
    holder = getattr(module, "initializers", None)
    if holder is not None:
        for name in [n for n, _ in holder.named_buffers(recurse=False)]:
            if f"initializers.{name}" not in used:
                delattr(holder, name)
    for name, _ in list(module.named_children()):
        sub = getattr(module, name)
        if type(sub).__name__ == "OnnxConstant" and name not in used_modules:
            delattr(module, name)
    module.recompile()


def constant_matmuls(module) -> list[str]:
    """Names of the matrix products by a stored weight left in an onnx2torch GraphModule after
    `matmuls_as_linear` (a weight shared by several products, or on the left): plain buffers
    that neither train nor shrink."""
    from onnx2torch.node_converters.matmul import OnnxMatMul

    graph = getattr(module, "graph", None)
    if graph is None:
        return []
    return [str(n.target) for n in graph.nodes
            if n.op == "call_module" and isinstance(module.get_submodule(n.target), OnnxMatMul)
            and any(_constant_tensor(module, a) is not None for a in n.args)]


_CONTROL_FLOW = ("If", "Loop", "Scan")
FOLD_LIMIT = 2**22  # elements a folded constant may have (an LSTM's weights sliced by the graph: 65k)


def pins_text(signature) -> str:
    """The pinned inputs as `name=value, ...` ('' when none)."""
    import numpy as np

    pins = [s for s in (signature.inputs if signature else []) if s.value is not None]
    return ", ".join(f"{s.name}={np.asarray(s.value).tolist()}" for s in pins)


def pinned_branch_warning(signature, what: str, again: str) -> str:
    """The one wording for a file made from the graph `specialized` for the pinned inputs, whose
    If branches were replaced by the branch those values take (the INT8 ONNX stage, the phone
    exports): `what` computes that branch whatever it is given; `again` says how to get other
    values."""
    sized = [s.describe() for s in signature.inputs if s.value is None]
    return (f"the graph was specialized for the pinned inputs ({pins_text(signature)}) to reach the layers inside "
            f"its If branches: {what} computes the branch of those values whatever it is given (the pinned "
            f"inputs stay, unused), and takes only the sized shapes ({'; '.join(sized)}); "
            f"for other values {again} again with them pinned")


def branches_pinned(proto, folded) -> bool:
    """Whether `folded` (the graph `specialized`) lost If nodes of `proto`: some branch was chosen."""
    def ifs(p):
        return sum(1 for n in p.graph.node if n.op_type == "If")

    return folded is not None and ifs(folded) < ifs(proto)


def specialized(proto, signature):
    """A copy of `proto` for the shapes and constants the user gave: each pinned input
    (`--input sr=16000`) is read from a stored constant instead (the graph input stays, unused),
    every input's dims are those of `signature` (the batch axis stays free, one symbol shared by
    all inputs), then onnxruntime's symbolic shape inference and onnxscript's constant folding
    run until nothing changes. An If whose condition becomes constant (a sample-rate test, a
    test of a shape that is now known) is replaced by the branch it takes, and a Reshape whose
    shape was a Concat of Shape ops gets a constant shape, which onnx2torch needs (it reads an
    input's rank from the shapes inference writes). None when nothing could be pinned or folding
    fails. Why these tools: onnxruntime's own If inlining (ORT_ENABLE_BASIC with an
    optimized_model_filepath) fails on Silero VAD's nested branches ("... is not If node's
    input or previous node output in this subgraph"); onnx's shape inference stops at the first
    Reshape whose shape is computed; onnxscript's folder inlines constant Ifs and the symbolic
    inference carries shapes through computed Reshapes."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    if signature is None:
        return None
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    g = copy.graph
    specs = {s.name: s for s in signature.inputs}
    inits = {i.name for i in g.initializer}
    taken = {v for n in g.node for v in (*n.input, *n.output)} | inits | {i.name for i in g.input}
    renamed: dict[str, str] = {}
    for inp in g.input:
        spec = specs.get(inp.name)
        if spec is None or inp.name in inits:
            continue
        if spec.value is not None:
            name, k = f"{inp.name}__pinned", 0
            while name in taken:
                k += 1
                name = f"{inp.name}__pinned{k}"
            taken.add(name)
            g.initializer.append(numpy_helper.from_array(np.asarray(spec.value).astype(spec.dtype), name))
            renamed[inp.name] = name
            continue
        if spec.shape is None or not inp.type.tensor_type.HasField("shape"):
            continue
        dims = inp.type.tensor_type.shape.dim
        if len(dims) != len(spec.shape):
            continue
        for i, (dim, want) in enumerate(zip(dims, spec.shape)):
            if i == spec.batch_axis and not isinstance(want, int):
                dim.Clear()
                dim.dim_param = "studio_batch"
            elif isinstance(want, int):
                dim.Clear()
                dim.dim_value = want

    def rename(graph) -> None:
        for n in graph.node:
            for k, v in enumerate(n.input):
                if v in renamed:
                    n.input[k] = renamed[v]
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    rename(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for sub in a.graphs:
                        rename(sub)

    rename(g)
    try:
        return _fold(copy)
    except Exception:  # noqa: BLE001 - a tool that fails on this graph: convert it as it is
        return None


def _fold(proto):
    import onnxscript.optimizer as optimizer

    def size(p):
        return (len(p.graph.node), sum(1 for n in p.graph.node if n.op_type in _CONTROL_FLOW))

    before = None
    for _ in range(4):
        proto = optimizer.optimize(proto, input_size_limit=FOLD_LIMIT, output_size_limit=FOLD_LIMIT)
        proto = _symbolic_shapes(_fold_constant_of_shape(proto))
        if size(proto) == before:
            break
        before = size(proto)
    return proto


def _symbolic_shapes(proto):
    """`proto` with the shapes onnxruntime's symbolic inference finds (it carries shapes through a
    Reshape whose shape is computed), or as it is where that inference fails (it asserts on some
    If branches before they are folded). Its steps are run here rather than through
    `SymbolicShapeInference.infer_shapes`, which writes sym_shape_infer_temp.onnx and a sidecar
    into the current folder (the user's) when some shape stays unknown; the shapes it did find
    are kept then."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference, get_opset

    del proto.graph.value_info[:]
    if (get_opset(proto) or 0) < 7:
        return proto
    try:
        inference = SymbolicShapeInference(2**31 - 1, True, False, 0)
        inference._preprocess(proto)
        while inference.run_:
            inference._infer_impl()
        inference._update_output_from_vi()
        return inference.out_mp_
    except Exception:  # noqa: BLE001 - its own asserts and sympy errors
        return proto


def _fold_constant_of_shape(proto):
    """onnxscript keeps ConstantOfShape (to keep files small); a small one whose shape is
    constant is folded here, so what it feeds (the pads of a reflect Pad) becomes constant."""
    import onnxscript.optimizer as optimizer

    def should_fold(node):
        return True if node.op_type == "ConstantOfShape" else None

    optimizer.fold_constants(proto, should_fold=should_fold, input_size_limit=FOLD_LIMIT,
                             output_size_limit=2**16)  # in place
    return proto


def onnx_to_torch(model: Model) -> Model:
    """A torch Model computing what the ONNX model computes (a new object: the input is untouched)."""
    import numpy as np

    onnx2torch = _import_onnx2torch()

    def prepare(proto):
        return outputs_for_onnx2torch(weights_without_identity(constants_as_initializers(proto)))

    def why(prepared, exc) -> str:
        try:
            where = unconvertible(prepared)  # what onnx2torch was given: its weights where it looks
        except Exception:  # noqa: BLE001 - the diagnosis is a nicety; keep the original reason
            where = None
        return where or (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    prepared = prepare(model.obj)
    try:
        module = onnx2torch.convert(prepared)
    except Exception as exc:  # noqa: BLE001 - unsupported op, opset, dynamic shapes, ...
        first = why(prepared, exc)
        # an If on a pinned input or a known shape, a Reshape to a computed shape: convert the
        # graph specialized to the user's shapes and constants (checked against onnxruntime below)
        folded = specialized(model.obj, model.signature) if not model.io.problems() else None
        module = None
        if folded is not None:
            prepared = prepare(folded)
            try:
                module = onnx2torch.convert(prepared)
            except Exception as exc2:  # noqa: BLE001
                again = why(prepared, exc2)
                first = (f"{first}; still there with the inputs pinned and constants folded" if again == first
                         else f"{first}; with the inputs pinned and constants folded: {again}")
        if module is None:
            hint = ""
            if folded is None and any(n.op_type in _CONTROL_FLOW for n in model.obj.graph.node):
                hint = ("; an If on an input or a shape folds away when that input is pinned "
                        "(--input NAME=VALUE) and the other inputs sized (--input NAME:D0,D1,...)")
            raise StudioError(f"{model.name}: cannot convert this ONNX model to torch (onnx2torch: {first}){hint}; "
                              f"passes that need torch cannot run on it; {ONNX_NATIVE}") from None
    module.eval()
    matmuls_as_linear(module)
    gathers_as_embedding(module)
    from ..convert import fixed_batch

    meta = dict(model.meta, converted_from="onnx")
    if fixed_batch(model.obj):
        meta["fixed_batch"] = fixed_batch(model.obj)
        module.meta["studio_fixed_batch"] = fixed_batch(model.obj)  # training and prediction batch by it
    new = model.with_obj(module, TORCH, format="onnx2torch", meta=meta)
    if new.input_shape is not None and not new.io.problems():  # a wrong conversion must not surface passes later
        from ..convert import fixed_batch, predict_all, run_session_all, session

        # every input, each in its dtype; a file exported with batch 1 (ultralytics' YOLO) reshapes
        # to [1, ...] and takes only that batch
        x = new.example_inputs(fixed_batch(model.obj) or 2)
        ours, ref = predict_all(new, x), run_session_all(session(model.obj), x)
        if len(ours) != len(ref) or any(a.shape != b.shape or not np.allclose(a, b, rtol=1e-3, atol=1e-4)
                                        for a, b in zip(ours, ref)):
            raise StudioError(f"{model.name}: onnx2torch converted the model but its outputs differ from onnxruntime's")
    return new


def _register() -> None:
    from .. import stats

    stats.SPECIALIZER = (branches_pinned, pins_text, specialized)  # MACs of the branch pinned inputs take


_register()
