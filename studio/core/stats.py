"""Per-layer weight statistics: histogram (strided subsample of large tensors), sparsity,
min/max/mean/std, and the 2-D weight matrix a heatmap draws. Fast on ResNet-50/BERT sizes: one
numpy pass per tensor, no Python loops over elements."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .model import ONNX, Model


@dataclass
class LayerStats:
    name: str  # the layer (torch module / ONNX node)
    tensor: str  # the parameter / initializer
    op: str
    shape: tuple
    dtype: str
    numel: int
    nonzeros: int
    sparsity: float
    min: float
    max: float
    mean: float
    std: float
    hist_counts: np.ndarray
    hist_edges: np.ndarray
    hist_zeros: int = 0  # exact zeros among the histogram's sample, all counted in the bin holding 0


def zero_bin(edges) -> int | None:
    """The histogram bin np.histogram counts 0.0 in (None when 0 is outside the range)."""
    edges = np.asarray(edges)
    if not len(edges) or not edges[0] <= 0.0 <= edges[-1]:
        return None
    return int(min(np.searchsorted(edges, 0.0, side="right") - 1, len(edges) - 2))


SLICE = 1 << 20  # elements: numpy's count_nonzero holds the GIL for its whole call (~1 ms a slice)


def _stats(name, tensor, op, arr: np.ndarray, dtype: str, bins: int, max_samples: int) -> LayerStats:
    flat = arr.reshape(-1)
    nonzeros = sum(int(np.count_nonzero(flat[k:k + SLICE])) for k in range(0, flat.size, SLICE))
    # Counts, min/max, mean and std are exact (one vectorized pass each); only the histogram is
    # drawn from a sample. The sample is random (fixed seed), not strided: a stride aliases with
    # the regular zero patterns pruning leaves (2:4, every k-th weight) and can see only zeros.
    if flat.size > max_samples:
        sample = flat[np.random.default_rng(0).integers(0, flat.size, max_samples)]
    else:
        sample = flat
    sample = sample.astype(np.float32, copy=False)
    lo, hi = (float(flat.min()), float(flat.max())) if flat.size else (0.0, 0.0)
    width = hi - lo if hi - lo > 1e-6 * max(1.0, abs(lo)) else max(1.0, abs(lo)) * 1e-3  # constant tensors
    # equal-width bins by index arithmetic and bincount: np.histogram took ~25 ms a tensor
    scaled = (sample - np.float32(lo)) * np.float32(bins / width)
    index = np.clip(scaled, 0, bins - 1).astype(np.intp)
    edges = np.linspace(lo, lo + width, bins + 1)
    zb = zero_bin(edges)
    if zb is not None:  # exact zeros in the bin the edges say holds 0, whatever float32 rounding says
        index[sample == 0] = zb
    counts = np.bincount(index, minlength=bins)[:bins]
    mean, std = _mean_std(flat)
    return LayerStats(
        name, tensor, op, tuple(arr.shape), dtype, int(flat.size), nonzeros, 1 - nonzeros / max(1, flat.size),
        lo, hi, mean, std, counts, edges, int(sample.size - np.count_nonzero(sample)),
    )


def _mean_std(flat: np.ndarray) -> tuple[float, float]:
    """Exact-enough mean and std in float64 accumulation, without the float64 copies np.std
    makes (2 s of BERT-base's statistics): centred values, then a BLAS dot product."""
    if not flat.size:
        return 0.0, 0.0
    mean = float(flat.mean(dtype=np.float64))
    centred = flat.astype(np.float64, copy=False) - mean if flat.dtype != np.float32 else flat - np.float32(mean)
    return mean, float(np.sqrt(max(0.0, float(np.dot(centred, centred)) / flat.size)))


def _torch_weights(module):
    """(layer, tensor name, op, array) of every weight tensor: parameters with >= 2 dims, and the
    weights of normalization layers."""
    for layer, sub in module.named_modules():
        for pname, p in sub.named_parameters(recurse=False):
            if p.dim() >= 2 or pname == "weight":
                full = f"{layer}.{pname}" if layer else pname
                op = getattr(sub, "original_name", type(sub).__name__)
                yield layer or pname, full, op, p.detach().cpu().float().numpy(), str(p.dtype).replace("torch.", "")


def _onnx_weights(proto, lazy=None, cancel=None):
    """(node, initializer, op, float array, stored dtype) of each layer's weight; INT8 weights
    behind a DequantizeLinear are dequantized (zeros stay exactly zero). `lazy`: the tensors
    still in the model's file (Model.lazy), read from it (`cancel`: see weights)."""
    from .onnx_weights import read as read_proto
    from .onnx_weights import nodes, tensors

    def read(tensor):
        return lazy.array(tensor, cancel) if lazy is not None and lazy.pending(tensor) else read_proto(tensor)

    inits = tensors(proto)  # initializers and Constant nodes, subgraphs included
    every = [node for node, _ in nodes(proto.graph)]
    dq = {}
    for node in every:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            dq[node.output[0]] = node
    for node in every:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear", "Constant"):
            continue
        for j, tensor in enumerate(node.input):
            if tensor in dq and j == 1:
                d = dq[tensor]
                q = read(inits[d.input[0]])
                arr = _dequantize(q, d, inits, read)
                yield node.name or node.output[0], d.input[0], node.op_type, arr, str(q.dtype)
            elif tensor in inits and j >= 1 or (tensor in inits and node.op_type == "Gather" and j == 0):
                arr = read(inits[tensor])
                if arr.ndim >= 2 and arr.dtype.kind == "f":
                    yield node.name or node.output[0], tensor, node.op_type, arr.astype(np.float32, copy=False), str(arr.dtype)


def _dequantize(q, node, inits, read=None) -> np.ndarray:
    if read is None:
        from .onnx_weights import read

    scale = read(inits[node.input[1]]).astype(np.float32) if node.input[1] in inits else np.float32(1)
    zp = read(inits[node.input[2]]).astype(np.float32) if len(node.input) > 2 and node.input[2] in inits else np.float32(0)
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    if np.ndim(scale) == 1 and q.ndim > 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zp = scale.reshape(shape), np.reshape(zp, shape) if np.ndim(zp) == 1 else zp
    return (q.astype(np.float32) - zp) * scale


def weights(model: Model, cancel=None):
    """`cancel`: an Event checked before each weight is read (Cancelled when it is set)."""
    from .errors import Cancelled

    def go_on():
        if cancel is not None and cancel.is_set():
            raise Cancelled("weight statistics cancelled")

    go_on()
    items = _onnx_weights(model.light, model.lazy, cancel) if model.framework == ONNX else _torch_weights(model.obj)
    for item in items:
        yield item
        go_on()


def layer_stats(model: Model, bins: int = 64, max_samples: int = 1_000_000, cancel=None) -> list[LayerStats]:
    """Statistics of every layer's weight; `cancel`: see weights."""
    out = []
    for layer, tensor, op, arr, dtype in weights(model, cancel):
        out.append(_stats(layer, tensor, op, arr, dtype, bins, max_samples))
    return out


def weight_matrix(model: Model, layer_name: str) -> np.ndarray:
    """The layer's weight as a 2-D matrix, one row per output (channel or neuron): conv kernels
    flattened to (out, in*kh*kw), ONNX MatMul weights transposed to (out, in)."""
    for layer, tensor, op, arr, _ in weights(model):
        if layer == layer_name or tensor == layer_name:
            if arr.ndim == 1:
                return arr[None, :]
            if op == "MatMul" and arr.ndim == 2:
                return arr.T
            return arr.reshape(arr.shape[0], -1)
    raise KeyError(f"no weight for layer '{layer_name}'")


QDQ_PARAMS = {"QuantizeLinear": (1, 2), "DequantizeLinear": (1, 2)}  # scale, zero point inputs


def count_parameters(proto, written=None) -> tuple[int, int]:
    """(parameters, nonzeros) of an ONNX model: its stored weights (all graphs), leaving out the
    scales and zero points of quantization and integer shape constants. `written`: (path,
    located) of the file convert.write_model just wrote from this proto (`located` as it filled
    it): the tensors it wrote in slices are counted from that file, slice by slice (each read
    lets the GIL go), their sizes from their dims; copying one out of the message held the GIL
    for all of it (BERT-base's 94 MB embedding: ~55 ms, the window frozen as long)."""
    from .io.file_tensors import nonzeros as count_nonzeros
    from .onnx_weights import nodes, read, tensors

    side_inputs = set()
    weight_inputs = set()
    for node, _ in nodes(proto.graph):  # a quantized layer inside an If branch has its scales there
        for i in QDQ_PARAMS.get(node.op_type, ()):
            if i < len(node.input):
                side_inputs.add(node.input[i])
        if node.op_type == "DequantizeLinear":
            weight_inputs.add(node.input[0])
    path, located = written if written is not None else (None, {})
    params = nonzeros = 0
    for name, init in tensors(proto).items():
        if name in side_inputs and name not in weight_inputs:
            continue
        spot = located.get(id(init))
        dtype = _plain_dtype(init.data_type) if spot is not None and spot[0] is init else None
        if dtype is not None:
            size = 1
            for d in init.dims:
                size *= d
            if spot[2] != size * dtype.itemsize:
                dtype = None  # (write_model wrote it as its dims say: not expected)
        if dtype is not None:
            if dtype.kind in "iu" and name not in weight_inputs and dtype.itemsize > 1:
                continue
            if size <= 1 and name not in weight_inputs:
                continue
            params += size
            nonzeros += _nonzeros_in_file(path, spot[1], spot[2], dtype)
            continue
        arr = read(init) if spot is None or spot[0] is not init else _read_written(init, path, spot[1], spot[2])
        if arr.dtype.kind in "iu" and name not in weight_inputs and arr.dtype.itemsize > 1:
            continue  # shapes, axes, indices
        if arr.size <= 1 and name not in weight_inputs:
            continue  # scalar constants (epsilons, exponents) are not parameters
        params += arr.size
        nonzeros += count_nonzeros(arr)  # in slices: one count_nonzero holds the GIL (~20 ms on 94 MB)
    return params, nonzeros


def _read_written(init, path, offset: int, length: int) -> np.ndarray:
    """A tensor write_model wrote in slices (a type numpy does not read as is: bfloat16, float8,
    4-bit), its values read back from that file through onnx's reader: its message may not hold
    them (a tensor left in the user's file, convert.light_onnx)."""
    import onnx

    from .onnx_weights import read

    with open(path, "rb") as f:
        f.seek(offset)
        raw = f.read(length)
    tmp = onnx.TensorProto()
    tmp.CopyFrom(init)
    tmp.data_location = onnx.TensorProto.DEFAULT
    del tmp.external_data[:]
    tmp.raw_data = raw
    return read(tmp)


def _plain_dtype(data_type: int):
    """The numpy dtype (little-endian) whose values are a tensor's raw bytes as
    numpy_helper.to_array reads them; None for the types it converts (bfloat16, float8, 4-bit)."""
    from .io.file_tensors import PLAIN

    name = PLAIN.get(data_type)
    return None if name is None else np.dtype(name).newbyteorder("<")


def _nonzeros_in_file(path, offset: int, length: int, dtype) -> int:
    """Nonzero values among `length` bytes of values of `dtype` at `offset` in the file."""
    from .io.file_tensors import nonzeros_in_file

    with open(path, "rb") as f:
        return nonzeros_in_file(f, offset, length, dtype)


def parameter_count(model: Model) -> tuple[int, int]:
    """(parameters, nonzeros) of all weights the model holds."""
    if model.framework == ONNX:
        return count_parameters(model.obj)
    total = nonzero = 0
    for p in model.obj.parameters():
        total += p.numel()
        nonzero += int(p.count_nonzero())
    return total, nonzero


# (branches_pinned, pins_text, specialized) of passes.onnx_torch, which sets it when imported: the
# layers keep stats below the passes, so the graph specializer reaches it this way
SPECIALIZER: tuple | None = None


def count_macs(model: Model) -> int:
    return macs_counted(model)[0]


def has_branches(model: Model) -> bool:
    """Whether the model is ONNX with If nodes: then its MACs depend on the pinned inputs
    (macs_counted); without, they are its graph's (build_graph)."""
    if model.framework != ONNX:
        return False
    from .onnx_weights import nodes

    return any(n.op_type == "If" for n, _ in nodes(model.light.graph))  # (nodes only: no tensor read in)


def macs_counted(model: Model) -> tuple[int, str]:
    """(MACs at batch 1, what they count: "" for a graph without If nodes). An ONNX graph's If
    branches are all in its layers, and inside them shape inference stops (Silero VAD's time
    axis read as 1): summed, the original Silero read 280,064 MACs and its INT8 stage,
    specialized for sr=16000, 432,896 for the same computation. When the user pinned inputs and
    the graph specialized for them (onnx_torch.specialized) drops If nodes, its MACs are counted:
    the branches those values take, as the specialized stages compute them, which the note
    says; with no pin, every branch is summed and the note says so."""
    from .graph import build_graph

    graph = build_graph(model)
    if not has_branches(model):
        return graph.total_macs, ""
    if SPECIALIZER is None:
        return graph.total_macs, ("MACs sum every branch of the graph's If nodes: pin the inputs that choose "
                                  "the branch (--input NAME=VALUE) to count the one taken")
    branches_pinned, pins_text, specialized = SPECIALIZER
    pins = pins_text(model.signature)
    if pins and not model.io.problems():
        folded = specialized(model.obj, model.signature)
        if branches_pinned(model.obj, folded):
            from .graph import input_sizes
            from .graph.from_onnx import graph_from_onnx

            counted = graph_from_onnx(folded, model.input_shape, input_sizes(model)).total_macs
            return counted, f"MACs of the If branches the pinned inputs ({pins}) take"
    return graph.total_macs, ("MACs sum every branch of the graph's If nodes: pin the inputs that choose "
                              "the branch (--input NAME=VALUE) to count the one taken")
