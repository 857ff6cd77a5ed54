"""Which format a file is, from its first bytes and (for zips) its member names."""

from __future__ import annotations

import json
import struct
import zipfile
import zlib
from pathlib import Path

from ..errors import LoadError
from ..packed import MAGIC as PACKED_MAGIC

# format -> (label, suffixes) for file dialogs
FORMATS = {
    "onnx": ("ONNX", [".onnx"]),
    "torchscript": ("TorchScript", [".pt", ".pth", ".torchscript", ".ptl"]),
    "torch_export": ("torch.export program", [".pt2"]),
    "state_dict": ("PyTorch weights (state_dict)", [".pt", ".pth", ".bin", ".ckpt"]),
    "safetensors": ("safetensors weights", [".safetensors"]),
    "packed": ("Studio packed model (clustered)", [".packed"]),
}
MAX_ZIP_RATIO = 50  # uncompressed / compressed beyond this is a zip bomb, not a model
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


def file_filter() -> str:
    """A Qt-style filter string: 'Models (*.onnx *.pt ...);;ONNX (*.onnx);;...'"""
    suffixes = sorted({s for _, sfx in FORMATS.values() for s in sfx})
    parts = ["Models (" + " ".join(f"*{s}" for s in suffixes) + ")"]
    parts += [f"{label} (" + " ".join(f"*{s}" for s in sfx) + ")" for label, sfx in FORMATS.values()]
    return ";;".join(parts + ["All files (*)"])


def detect_format(path: Path) -> str:
    size = path.stat().st_size
    if size == 0:
        raise LoadError(f"{path.name}: the file is empty")
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(PACKED_MAGIC):
        return "packed"
    if head[:2] == b"PK":
        return _zip_format(path, size)
    if len(head) >= 9 and _looks_like_safetensors(path, head, size):
        return "safetensors"
    if head[:1] == b"\x80":  # a bare pickle stream (torch.save with the legacy format)
        return "legacy_pickle"
    if _looks_like_onnx(head):
        return "onnx"
    raise LoadError(f"{path.name}: not a model file this studio reads (ONNX, TorchScript, .pt2, state_dict, safetensors, packed)")


def _looks_like_safetensors(path: Path, head: bytes, size: int) -> bool:
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= min(size - 8, MAX_SAFETENSORS_HEADER) and head[8:9] == b"{"


def _looks_like_onnx(head: bytes) -> bool:
    # a ModelProto starts with a protobuf field: ir_version (1, varint), opset_import (8),
    # producer_name (2), graph (7), ... Field tag bytes: (field << 3) | wire type.
    return head[:1] in (b"\x08", b"\x12", b"\x1a", b"\x22", b"\x2a", b"\x3a", b"\x42", b"\x52")


def _zip_format(path: Path, size: int) -> str:
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, OverflowError, NotImplementedError, struct.error):
        # a damaged directory fails in many ways: bad offsets, undecodable names, odd methods
        raise LoadError(f"{path.name}: a damaged zip archive (truncated?)") from None
    total = sum(i.file_size for i in infos)
    if total > MAX_ZIP_RATIO * size + 1_000_000:
        raise LoadError(f"{path.name}: its members claim {total:,} bytes from a {size:,}-byte file; refused")
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):  # which copy a reader takes differs between readers
        raise LoadError(f"{path.name}: a zip archive with two members of the same name; refused")
    _check_crcs(path)
    if any(n.endswith("archive_format") or "/models/" in n or n.startswith("models/") for n in names) and any(
        "serialized_exported_program" in n or n.endswith(".json") for n in names
    ):
        return "torch_export"
    if any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in names) and any("/code/" in n for n in names):
        return "torchscript"
    if any(n.endswith("data.pkl") for n in names):
        return "state_dict"  # torch.save zip: a state_dict, or a pickled module (checked on load)
    raise LoadError(f"{path.name}: a zip archive, but not a PyTorch file")


def _check_crcs(path: Path) -> None:
    """torch's zip reader does not check the members' checksums: a damaged file would load with
    silently wrong weights (or fail deep inside torch). Checked here, bounded by the ratio above."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, OverflowError, NotImplementedError, struct.error,
            zlib.error):
        raise LoadError(f"{path.name}: a damaged zip archive (a member cannot be read)") from None
    if bad is not None:
        raise LoadError(f"{path.name}: a damaged zip archive (member {bad!r} fails its checksum); refused")


def read_safetensors_header(path: Path) -> dict:
    """The header, checked: every tensor's dtype x shape equals its byte range, ranges lie in
    the file. Raises LoadError; allocates nothing but the header."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > min(size - 8, MAX_SAFETENSORS_HEADER):
            raise LoadError(f"{path.name}: safetensors header length {n:,} exceeds the file")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):  # (deep nesting: RecursionError)
            raise LoadError(f"{path.name}: the safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise LoadError(f"{path.name}: the safetensors header is not a table of tensors")
    itemsize = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
    data_size = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]
            if not all(type(v) is int for v in (start, end)) or not isinstance(shape, list) or not isinstance(dtype, str):
                raise ValueError
            count = 1
            for d in shape:
                if type(d) is not int or d < 0:  # (bool is an int subclass: not a dimension)
                    raise ValueError
                count *= d
        except (KeyError, TypeError, ValueError):
            raise LoadError(f"{path.name}: tensor '{name}' has a malformed header entry") from None
        if dtype not in itemsize:
            raise LoadError(f"{path.name}: tensor '{name}' has an unknown dtype {dtype}")
        if not (0 <= start <= end <= data_size) or count * itemsize[dtype] != end - start:
            raise LoadError(f"{path.name}: tensor '{name}' claims shape {shape} ({dtype}) that its "
                            f"{max(0, end - start):,} bytes cannot hold; refused")
    return header
