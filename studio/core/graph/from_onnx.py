"""ONNX -> Graph. Quantize/Dequantize nodes are folded away: a Conv fed by a dequantized INT8
weight shows as one int8 Conv node, as a user thinks of it."""

from __future__ import annotations

import numpy as np

from . import Graph, Node, macs

FOLDED = {"QuantizeLinear", "DequantizeLinear", "Identity"}
WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul", "MatMulNBits", "Gather"}


def _shapes(proto, input_shape=None, sizes=None) -> dict[str, tuple]:
    """Output shapes from ONNX shape inference, run on a light copy of the model: big float
    weights dropped (inference needs their dims, not their values; copying them made inference
    on ResNet-50 take seconds), and the graph inputs' free dims pinned to batch 1 / the model's
    input shape (the first input) / `sizes` ({input: shape}, every input the user sized), so
    inference with data propagation can compute the dims that Shape -> Reshape chains produce
    (attention heads, sequence length) instead of leaving them symbolic. A free dim nothing
    sizes stays symbolic and counts as 1."""
    import onnx

    light = _light_copy(proto)
    _drop_free_dims(light)
    inits = {i.name for i in light.graph.initializer}
    real_inputs = [i for i in light.graph.input if i.name not in inits]
    for k, inp in enumerate(real_inputs):
        tt = inp.type.tensor_type
        if not tt.HasField("shape"):
            continue
        given = (sizes or {}).get(inp.name) or (input_shape if k == 0 else None)
        for j, dim in enumerate(tt.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                continue
            if j == 0:
                dim.dim_value = 1
            elif given is not None and j < len(given):
                dim.dim_value = int(given[j])
    try:
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - shapes are a nicety; very large or odd models may not infer
        inferred = light
    from ..onnx_weights import graphs

    shapes = {}
    infos = [vi for g in graphs(inferred.graph) for vi in (*g.value_info, *g.output, *g.input)]
    for vi in infos:
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in tt.shape.dim)
    return shapes


def _drop_free_dims(model) -> None:
    """Forget the recorded shapes that hold a free dim (a name, unknown or -1, as Paddle writes its
    batch): inference recomputes them from the pinned inputs. Kept, they clash with the pinned
    dims (the float16 converter copies an input's [-1, 3, ?, ?] onto its Cast; inference then stops
    at that node and every layer after it read as 1x1, MACs 130x too few)."""
    def concrete(vi) -> bool:
        tt = vi.type.tensor_type
        return not tt.HasField("shape") or all(d.HasField("dim_value") and d.dim_value > 0 for d in tt.shape.dim)

    _sort_nodes(model)  # the float16 converter appends the input Casts after their consumers
    graph = model.graph
    kept = [vi for vi in graph.value_info if concrete(vi)]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    for out in graph.output:
        tt = out.type.tensor_type
        if tt.HasField("shape"):
            for dim in tt.shape.dim:
                if not (dim.HasField("dim_value") and dim.dim_value > 0):
                    dim.Clear()


def _sort_nodes(model) -> None:
    """Put the nodes in an order where each comes after the producers of its inputs (shape
    inference reads them in file order; onnxruntime sorts for itself, so files need not be).
    onnxruntime's quantization tools sort the same way; a graph it cannot sort (a value nothing
    produces, a cycle, a name that is not text) is left in file order for inference to report."""
    from onnxruntime.quantization.onnx_model import ONNXModel

    try:
        ONNXModel(model).topological_sort()
    except Exception:  # noqa: BLE001 - "Graph is not a DAG", or a name that is not text (a hostile file: bytes
        pass  # where protobuf could not decode it); it fails before it clears the nodes, so the order stands


def _light_copy(proto):
    """The model without the values of its big float weights, built piece by piece: a CopyFrom
    of the whole proto copied BERT-base's 440 MB only to drop them again (0.7 s)."""
    import onnx

    light = onnx.ModelProto()
    for f in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
        setattr(light, f, getattr(proto, f))
    light.opset_import.extend(proto.opset_import)
    light.functions.extend(proto.functions)
    g, src = light.graph, proto.graph
    g.name = src.name
    for f in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(g, f).extend(getattr(src, f))
    for init in src.initializer:
        if init.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) or int(np.prod(init.dims)) <= 64:
            g.initializer.append(init)  # shapes, axes: data propagation reads their values
        else:
            header = g.initializer.add()
            header.name, header.data_type = init.name, init.data_type
            header.dims.extend(init.dims)
    return light


def _zeros(init, lazy=None) -> int:
    """Exact zeros of an initializer, read from its bytes without numpy_helper's copy (`lazy`: the
    model's tensors still in its file, io.file_tensors: counted from the file, slice by slice)."""
    if lazy is not None and lazy.in_file(init):  # (also once filled meanwhile by a job on another thread)
        zeros = lazy.zeros(init)
        if zeros is not None:
            return zeros
        if lazy.pending(init):
            return _zero_count(lazy.array(init))
    if init.HasField("raw_data") and init.data_location != 1:
        try:
            dtype = np.dtype(_dtype_name(init))
        except TypeError:
            dtype = None
        if dtype is not None and dtype.kind in "fiub" and dtype.itemsize:
            raw = init.raw_data
            if len(raw) % dtype.itemsize == 0:
                return _zero_count(np.frombuffer(raw, dtype=dtype.newbyteorder("<")))
    return _zero_count(_array(init))


def _zero_count(arr) -> int:
    """Zeros among the array's values, counted a slice at a time (the GIL goes between slices)."""
    from ..io.file_tensors import nonzeros

    return int(arr.size - nonzeros(arr))


SCOPES = "pkg.torch.onnx.name_scopes"  # torch's dynamo exporter: "['', 'layer1', 'layer1.0', 'add']"


def exported_module(node, params: list[str]) -> str:
    """The torch module an ONNX node came from, read from the metadata torch's dynamo exporter
    writes (its node names, `node_Conv_12`, say nothing): the innermost scope of
    `pkg.torch.onnx.name_scopes` (the last entry is the fx node itself), else of `namespace`
    (`: Net/layer1: Sequential/layer1.0: BasicBlock/add: aten.add.Tensor`). A conv that swallowed
    its BatchNorm keeps the BN's scope but the conv's weight: the weight's module wins then."""
    meta = {p.key: p.value for p in node.metadata_props}
    scopes: list[str] = []
    text = meta.get(SCOPES, "")
    if text and len(text) <= 8192:  # written by the exporter, read as data (a file may be hostile)
        import ast

        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            value = None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            scopes = value[:-1]
    elif meta.get("namespace") and len(meta["namespace"]) <= 8192:
        scopes = [part.split(": ")[0].strip() for part in meta["namespace"].split("/")[:-1]]
    module = next((m for m in reversed(scopes) if m), "")
    if not module:
        return ""
    for name in params:
        owner, _, leaf = name.rpartition(".")
        if leaf in ("weight", "bias") and owner.rpartition(".")[0] == module.rpartition(".")[0]:
            return owner
    return module


def _array(init):
    from ..onnx_weights import read

    return read(init)


def _dtype_name(init) -> str:
    from onnx import helper

    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type)).name
    except Exception:  # noqa: BLE001
        return "unknown"


def _macs(op: str, node, out_shape, in_shapes, weight_shape) -> int:
    if out_shape is None:
        return 0
    out = int(np.prod(out_shape))
    if op in ("Conv", "ConvInteger", "QLinearConv") and weight_shape is not None and len(weight_shape) >= 3:
        return macs.conv(out, weight_shape)
    if op in ("Gemm",) and weight_shape is not None and len(weight_shape) == 2:
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return macs.dense(out, weight_shape[1] if trans_b else weight_shape[0])
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul") and in_shapes and in_shapes[0]:
        return macs.dense(out, in_shapes[0][-1])
    if op == "MatMulNBits":
        return macs.dense(out, next((a.i for a in node.attribute if a.name == "K"), 0))
    return 0


def graph_from_onnx(proto, input_shape=None, sizes=None, lazy=None) -> Graph:
    """The layers of the main graph and of If/Loop/Scan subgraphs (flattened: a subgraph's nodes
    come before the node holding them, which takes their results as inputs). Shapes and MACs at
    batch 1, with the inputs' free dims as `input_shape`/`sizes` give them (see _shapes).
    `lazy`: the initializers whose bytes are still in the model's file (Model.lazy)."""
    from ..onnx_weights import nodes as all_nodes
    from ..onnx_weights import subgraphs, tensors

    inits = tensors(proto)
    every = [node for node, _ in all_nodes(proto.graph)]
    shapes = _shapes(proto, input_shape, sizes)
    producer: dict[str, str] = {}  # tensor name -> node name that makes it
    alias: dict[str, str] = {}  # output of a folded node -> its source tensor
    weight_source: dict[str, str] = {}  # dequantized tensor -> initializer holding the int8 data
    for node in every:
        if node.op_type in FOLDED and node.input:
            alias[node.output[0]] = node.input[0]
            if node.op_type == "DequantizeLinear" and node.input[0] in inits:
                weight_source[node.output[0]] = node.input[0]

    def resolve(tensor: str) -> str:
        seen = 0
        while tensor in alias and seen < 64:
            tensor, seen = alias[tensor], seen + 1
        return tensor

    nodes: list[Node] = []
    used_names: set[str] = set()
    for i, node in enumerate(every):
        if node.op_type in FOLDED or node.op_type == "Constant":  # constants: weights of their consumers
            continue
        name = node.name or (node.output[0] if node.output else f"{node.op_type}_{i}")
        if name in used_names:
            name = f"{name}#{i}"
        used_names.add(name)
        params, pnames, dtype, weight_shape, zeros = 0, [], "float32", None, 0
        preds = []
        in_shapes = []
        for j, tensor in enumerate(node.input):
            if not tensor:
                continue
            source = weight_source.get(tensor) or resolve(tensor)
            in_shapes.append(shapes.get(tensor) or shapes.get(source))
            if source in inits:
                init = inits[source]
                count = int(np.prod(init.dims)) if init.dims else 1
                if count <= 1 and j > 0 and node.op_type not in WEIGHT_OPS:
                    continue  # scalars (scales, epsilons) are not weights
                if init.data_type in (6, 7) and node.op_type not in ("Gather",) and not weight_source.get(tensor):
                    continue  # int32/int64 shapes, axes, indices
                if init.data_type == 9:
                    continue  # bool: an If's condition, masks
                params += count
                pnames.append(source)
                zeros += _zeros(init, lazy)
                if j == 1 or (node.op_type == "Gather" and j == 0) or weight_shape is None:
                    if j <= 1:
                        weight_shape = tuple(init.dims)
                        dtype = _dtype_name(init)
            elif source in producer:
                preds.append(producer[source])
        for sub in subgraphs(node):  # an If/Loop/Scan takes the results of its subgraphs' nodes
            preds.extend(producer[resolve(o.name)] for o in sub.output if resolve(o.name) in producer)
        for out in node.output:
            producer[out] = name
        out_shape = shapes.get(node.output[0]) if node.output else None
        nodes.append(Node(
            name, node.op_type, list(dict.fromkeys(preds)), params, pnames, out_shape, dtype if params else "float32",
            zeros / params if params else 0.0, _macs(node.op_type, node, out_shape, in_shapes, weight_shape),
            exported_module(node, pnames) if node.metadata_props else "",
        ))
    inputs = [i.name for i in proto.graph.input if i.name not in inits]
    outputs = [producer.get(resolve(o.name), o.name) for o in proto.graph.output]
    return Graph(nodes, inputs, outputs)
