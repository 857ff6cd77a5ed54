"""ONNX loading: parse without external data, check every tensor's claimed size against the bytes
behind it and every sidecar path against the model's folder, then load the data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import LoadError
from ..model import ONNX, Model


def _itemsize(data_type: int) -> int | None:
    from onnx import helper

    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(data_type)).itemsize
    except Exception:  # noqa: BLE001 - string tensors and unknown types have no fixed size
        return None


# element types onnx packs below a byte: bits per value (numpy_helper's _pack_4bitx2, _pack_2bitx4,
# _pack_6bit); every other type takes its numpy itemsize
_PACKED_BITS = {21: 4, 22: 4, 23: 4, 25: 2, 26: 2, 27: 6, 28: 6}  # UINT4 INT4 FLOAT4E2M1 UINT2 INT2 FLOAT6E2M3 FLOAT6E3M2


def data_bytes(data_type: int, count: int) -> int | None:
    """The bytes onnx stores `count` values of `data_type` in (raw_data, or an external range):
    ceil(count * bits / 8) for the packed sub-byte types; None for strings and unknown types."""
    bits = _PACKED_BITS.get(data_type)
    if bits is not None:
        return -(-count * bits // 8)
    size = _itemsize(data_type)
    return None if size is None else count * size


def _external_info(tensor) -> dict:
    return {e.key: e.value for e in tensor.external_data}


def _inside(folder: Path, location: str) -> Path | None:
    # (a location that is not valid UTF-8 comes back as bytes; NUL, symlink loops: not a path)
    if not isinstance(location, str) or not location or "\x00" in location:
        return None
    if os.path.isabs(location) or location.startswith(("/", "\\")):
        return None
    try:
        target = (folder / location).resolve()
        target.relative_to(folder.resolve())
    except (ValueError, OSError, RuntimeError):
        return None
    return target


def _all_tensors(graph):
    """Initializers and Constant-node tensors of a graph and its subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for g in attr.graphs:
                yield from _all_tensors(g)


def _known_types() -> set[int]:
    from onnx import TensorProto

    return set(TensorProto.DataType.values()) - {TensorProto.UNDEFINED}


def check_tensors(proto, folder: Path, name: str, file_size: int = 0, inline: bool = True,
                  located=()) -> bool:
    """Refuse tensors whose dims claim more than their bytes hold; returns whether external data
    is used. Nothing is allocated from the claims. `inline=False` leaves out the bytes held in the
    file itself (counting them copies each tensor): onnx_child's parent checks those. `located`:
    indices of main-graph initializers whose bytes are not there yet (onnx_child: they lie in the
    file, checked against it as they are read)."""
    from onnx import TensorProto

    external = False
    known = _known_types()
    for k, t in enumerate(_all_tensors(proto.graph)):  # (the main graph's initializers come first)
        if k in located:
            continue
        count = 1
        for d in t.dims:
            if d < 0:
                raise LoadError(f"{name}: tensor '{t.name}' has a negative dimension")
            count *= d
        size = _itemsize(t.data_type)
        if t.data_type not in known:  # nothing can read it (numpy_helper: KeyError)
            raise LoadError(f"{name}: tensor '{t.name}' has an unknown data type {t.data_type}; refused")
        if t.data_location == TensorProto.EXTERNAL:
            external = True
            info = _external_info(t)
            target = _inside(folder, info.get("location", ""))
            if target is None:
                raise LoadError(f"{name}: tensor '{t.name}' points outside the model's folder "
                                f"({info.get('location')!r}); refused")
            try:
                present = target.is_file()
            except OSError:  # a name too long for the file system
                present = False
            if not present:
                raise LoadError(f"{name}: external data file {info.get('location')!r} is missing")
            try:
                offset, length = int(info.get("offset", 0)), info.get("length")
                length = None if length is None else int(length)
            except ValueError:
                raise LoadError(f"{name}: tensor '{t.name}' has a malformed external data entry") from None
            if offset < 0 or (length or 0) < 0:
                raise LoadError(f"{name}: tensor '{t.name}' has a negative external data offset or length")
            available = target.stat().st_size - offset
            need = data_bytes(t.data_type, count)
            if length is not None and length > available or need is not None and need > available:
                raise LoadError(f"{name}: tensor '{t.name}' claims more bytes than {info['location']!r} holds; refused")
            # what onnx reads (`length` bytes, or up to the end of the file) must be the tensor
            read = available if length is None else length
            if need is not None and read != need:
                raise LoadError(f"{name}: tensor '{t.name}' claims dims {list(t.dims)} but its external data "
                                f"holds {read:,} bytes; refused")
            continue
        if not inline:
            continue
        if t.data_type == TensorProto.STRING and not t.HasField("raw_data"):
            if len(t.string_data) != count:
                raise LoadError(f"{name}: tensor '{t.name}' claims dims {list(t.dims)} but holds "
                                f"{len(t.string_data):,} strings; refused")
            continue
        if size is None:
            continue
        if t.HasField("raw_data"):
            have = len(t.raw_data)
        else:
            have = None
            for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                values = getattr(t, field)
                if len(values):
                    have = len(values) * size
                    break
            if have is None:
                have = 0
        # raw bytes of sub-byte types (int4) are packed: data_bytes. A tensor that claims elements but
        # holds no bytes at all is refused too: numpy/onnxruntime would fail (or allocate the claimed
        # size) the moment anyone reads it; so is one that claims no elements but holds bytes (numpy
        # cannot reshape them).
        if have != data_bytes(t.data_type, count):
            raise LoadError(f"{name}: tensor '{t.name}' claims dims {list(t.dims)} but holds {have:,} bytes; refused")
    _check_sparse(proto.graph, name, file_size)
    return external


def _check_sparse(graph, name: str, file_size: int) -> None:
    """Sparse initializers legitimately describe more values than they store, but onnxruntime
    densifies them when it builds a session: bound the dense size by the file's size."""
    limit = max(64 * file_size, 256 * 1024 * 1024)
    for sp in graph.sparse_initializer:
        count = 1
        for d in sp.dims:
            if d < 0:
                raise LoadError(f"{name}: sparse tensor '{sp.values.name}' has a negative dimension")
            count *= d
        size = _itemsize(sp.values.data_type) or 1
        if count * size > limit:
            raise LoadError(f"{name}: sparse tensor '{sp.values.name}' would densify to {count * size:,} bytes "
                            f"from a {file_size:,}-byte file; refused")


MAX_NODES = 300_000  # once local functions are inlined; real models have up to ~100k


def _subgraphs(node):
    for attr in node.attribute:
        if attr.HasField("g"):
            yield attr.g
        yield from attr.graphs


def _graphs(graph):
    """A graph and every subgraph under it (If/Loop/Scan bodies), iteratively."""
    stack = [graph]
    while stack:
        g = stack.pop()
        yield g
        for node in g.node:
            stack.extend(_subgraphs(node))


def check_structure(proto, name: str) -> None:
    """Refuse graphs that would hang or exhaust C++ code before anyone can cancel it: more nodes
    than MAX_NODES once local functions are inlined (40 functions each calling the next twice is
    2^40 nodes, and shape inference inlines them), recursive functions, and cycles (a node that
    consumes its own output opens fine and fails only at Run)."""
    functions = {(f.domain, f.name): f for f in proto.functions}

    def calls(nodes):
        for node in nodes:
            inner = [n for g in _subgraphs(node) for sub in _graphs(g) for n in sub.node]
            for n in (node, *inner):
                if (n.domain, n.op_type) in functions:
                    yield (n.domain, n.op_type)

    def own_size(nodes) -> int:
        return sum(1 + sum(len(sub.node) for g in _subgraphs(n) for sub in _graphs(g)) for n in nodes)

    # inlined size of every function, callees first (Kahn's order over the call graph)
    callees = {key: list(calls(f.node)) for key, f in functions.items()}
    waiting = {key: len(set(c)) for key, c in callees.items()}
    callers: dict = {}
    for key, cs in callees.items():
        for c in set(cs):
            callers.setdefault(c, []).append(key)
    ready = [key for key, n in waiting.items() if n == 0]
    size: dict = {}
    while ready:
        key = ready.pop()
        size[key] = min(own_size(functions[key].node) + sum(size[c] - 1 for c in callees[key]), MAX_NODES + 1)
        for caller in callers.get(key, []):
            waiting[caller] -= 1
            if waiting[caller] == 0:
                ready.append(caller)
    if len(size) != len(functions):
        stuck = next(key for key in functions if key not in size)
        raise LoadError(f"{name}: local function '{stuck[1]}' calls itself (directly or through others); refused")
    total = own_size(proto.graph.node) + sum(size[c] - 1 for c in calls(proto.graph.node))
    if total > MAX_NODES:
        raise LoadError(f"{name}: the graph has over {MAX_NODES:,} nodes once its functions are inlined "
                        f"({total:,}{'+' if total > MAX_NODES else ''}); refused")
    for graph in _graphs(proto.graph):
        _check_acyclic(graph, name)
    for f in proto.functions:
        _check_acyclic(f, name)


def _check_acyclic(graph, name: str) -> None:
    """Kahn's algorithm over the graph's own producer -> consumer edges."""
    producer = {}
    for i, node in enumerate(graph.node):
        for out in node.output:
            if out:
                producer[out] = i
    consumers: dict[int, list[int]] = {}
    indegree = [0] * len(graph.node)
    for i, node in enumerate(graph.node):
        for inp in set(node.input):
            j = producer.get(inp)
            if j is not None:
                consumers.setdefault(j, []).append(i)
                indegree[i] += 1
    ready = [i for i, d in enumerate(indegree) if d == 0]
    done = 0
    while ready:
        i = ready.pop()
        done += 1
        for k in consumers.get(i, []):
            indegree[k] -= 1
            if indegree[k] == 0:
                ready.append(k)
    if done != len(graph.node):
        node = graph.node[next(i for i, d in enumerate(indegree) if d > 0)]
        label = node.name or node.op_type
        raise LoadError(f"{name}: the graph has a cycle through node '{label}' ({node.op_type}); refused")


def input_shape_of(proto) -> tuple[tuple[int, ...] | None, str]:
    """(batch-1 shape, dtype) of the first real graph input; symbolic dims become 1."""
    from onnx import helper

    inits = {i.name for i in proto.graph.initializer}
    for inp in proto.graph.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        if not tt.HasField("shape"):
            return None, "float32"
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in tt.shape.dim)
        dims = (1, *dims[1:]) if dims else dims
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
        except Exception:  # noqa: BLE001
            dtype = "float32"
        return dims, dtype
    return None, "float32"


def parse_checked(path: Path, inline: bool = True, load: bool = True, proto=None):
    """(proto, whether it has external data): parsed without external data (unless `proto` is
    given, parsed already), every tensor and sidecar path checked (see check_tensors for
    `inline`), then, with `load`, the data read."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        if proto is None:
            proto = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise LoadError(f"{path.name}: not a readable ONNX file ({str(exc).splitlines()[0][:120] or 'parse error'})") from None
    if not proto.graph.node and not proto.graph.output:
        raise LoadError(f"{path.name}: not a readable ONNX file (no graph)")
    try:
        external = check_tensors(proto, path.parent, path.name, path.stat().st_size, inline)
        check_structure(proto, path.name)
        if external and load:
            load_external(proto, path)
    except LoadError:
        if not inline:  # refused all the same: name the problem the full check finds first
            check_tensors(proto, path.parent, path.name, path.stat().st_size)
        raise
    return proto, external


def load_external(proto, path: Path, tensors=None) -> None:
    """The external data of `tensors` (default: every tensor of the model) read into them, one
    tensor at a time, by onnx's own reader; refused in one line if it fails."""
    from onnx.external_data_helper import _get_all_tensors, load_external_data_for_tensor, uses_external_data

    try:
        for tensor in _get_all_tensors(proto) if tensors is None else tensors:
            if uses_external_data(tensor):
                load_external_data_for_tensor(tensor, str(path.parent))
    except Exception as exc:  # noqa: BLE001
        raise LoadError(f"{path.name}: cannot read its external data ({exc})") from None


def load_onnx(path: Path, isolate: bool = False) -> Model:
    """`isolate`: parse in the warm child process (onnx_child), as the window does."""
    if isolate:  # the big initializers stay in the file until a job needs them (file_tensors)
        from .onnx_child import load_isolated

        proto, external, lazy = load_isolated(path, lazy=True)
        model = _onnx_model(proto, path, "onnx", external)
        model.defer(lazy)
        return model
    proto, external = parse_checked(path)
    return _onnx_model(proto, path, "onnx", external)


def load_packed(path: Path) -> Model:
    """A studio packed file, restored to the ONNX model it holds (weights bit-exact)."""
    from .. import packed

    proto = packed.unpack(path)
    if check_tensors(proto, path.parent, path.name, path.stat().st_size):
        raise LoadError(f"{path.name}: a packed file must not point to external data; refused")
    check_structure(proto, path.name)
    return _onnx_model(proto, path, "packed", False)


def _onnx_model(proto, path: Path, fmt: str, external: bool) -> Model:
    """The Model of a loaded graph: its signature (every input and output) and, for the code
    that knows one input, the first input's batch-1 shape (None while a dim must be given)."""
    from ..signature import from_onnx

    signature = from_onnx(proto)
    _, dtype = input_shape_of(proto)
    return Model(proto, ONNX, None, name=path.stem, format=fmt, signature=signature,
                 meta={"input_dtype": dtype, "external_data": external})
