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


def check_tensors(proto, folder: Path, name: str, file_size: int = 0) -> bool:
    """Refuse tensors whose dims claim more than their bytes hold; returns whether external data
    is used. Nothing is allocated from the claims."""
    from onnx import TensorProto

    external = False
    known = _known_types()
    for t in _all_tensors(proto.graph):
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
            need = count * size if size else None
            if length is not None and length > available or need is not None and need > available:
                raise LoadError(f"{name}: tensor '{t.name}' claims more bytes than {info['location']!r} holds; refused")
            # what onnx reads (`length` bytes, or up to the end of the file) must be the tensor
            read = available if length is None else length
            if need is not None and read != need and not (size == 1 and read == (count + 1) // 2):
                raise LoadError(f"{name}: tensor '{t.name}' claims dims {list(t.dims)} but its external data "
                                f"holds {read:,} bytes; refused")
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
        # sub-byte types (int4) pack two values a byte: allow either count. A tensor that claims
        # elements but holds no bytes at all is refused too: numpy/onnxruntime would fail (or
        # allocate the claimed size) the moment anyone reads it; so is one that claims no elements
        # but holds bytes (numpy cannot reshape them).
        if have != count * size and not (size == 1 and have in ((count + 1) // 2,)):
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


def load_onnx(path: Path) -> Model:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise LoadError(f"{path.name}: not a readable ONNX file ({str(exc).splitlines()[0][:120] or 'parse error'})") from None
    if not proto.graph.node and not proto.graph.output:
        raise LoadError(f"{path.name}: not a readable ONNX file (no graph)")
    external = check_tensors(proto, path.parent, path.name, path.stat().st_size)
    if external:
        from onnx.external_data_helper import load_external_data_for_model

        try:
            load_external_data_for_model(proto, str(path.parent))
        except Exception as exc:  # noqa: BLE001
            raise LoadError(f"{path.name}: cannot read its external data ({exc})") from None
    shape, dtype = input_shape_of(proto)
    return Model(proto, ONNX, shape, name=path.stem, format="onnx", meta={"input_dtype": dtype, "external_data": external})


def load_packed(path: Path) -> Model:
    """A studio packed file, restored to the ONNX model it holds (weights bit-exact)."""
    from .. import packed

    proto = packed.unpack(path)
    if check_tensors(proto, path.parent, path.name, path.stat().st_size):
        raise LoadError(f"{path.name}: a packed file must not point to external data; refused")
    shape, dtype = input_shape_of(proto)
    return Model(proto, ONNX, shape, name=path.stem, format="packed", meta={"input_dtype": dtype, "external_data": False})
