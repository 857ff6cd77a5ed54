"""The packed format for clustered models: per clustered tensor a codebook (its distinct float
values) and its indices, plus the rest of the ONNX graph, all LZMA-compressed. Indices are
bit-packed, or for a mostly-zero tensor (pruned, then clustered) stored as Deep Compression
stores them: the gaps between non-zero weights (a byte each; 255 = "255 more, go on") and the
non-zero weights' indices (version 2; 11 % smaller than bit-packed on the demo CNN and ResNet).

`unpack` restores an ONNX model whose weights are bit for bit those of the clustered model, so
what runs after unpacking is exactly what was measured. Any tensor with at most 256 distinct
values (and at least MIN_ELEMENTS elements) is stored as codebook + indices, whatever pass made
it so; other tensors stay in the graph as they are.

File layout: MAGIC, then an LZMA stream of: u32 header length, JSON header, then the sections
the header lists (graph without the packed tensors' data, then per tensor codebook and indices).
"""

from __future__ import annotations

import json
import lzma
import struct
from pathlib import Path

import numpy as np

from .errors import LoadError
from .fileio import atomic_write_bytes

MAGIC = b"STUDIOPK1\n"
MIN_ELEMENTS = 64
PACKABLE = {1: np.float32, 10: np.float16, 11: np.float64}  # onnx TensorProto data types


def _pack_bits(idx: np.ndarray, bits: int) -> bytes:
    as_bits = np.unpackbits(idx.astype(np.uint8)[:, None], axis=1)[:, 8 - bits :]
    return np.packbits(as_bits.ravel()).tobytes()


def _unpack_bits(data: bytes, bits: int, count: int) -> np.ndarray:
    flat = np.unpackbits(np.frombuffer(data, np.uint8))[: count * bits].reshape(count, bits)
    padded = np.zeros((count, 8), np.uint8)
    padded[:, 8 - bits :] = flat
    return np.packbits(padded, axis=1).ravel()


RUNS_BELOW = 0.5  # a tensor whose share of non-zero weights is under this is stored as runs
VERSIONS = (1, 2)


def _runs(idx: np.ndarray, zero: int) -> tuple[bytes, int]:
    """(gap bytes + the non-zero entries' indices, how many non-zero entries)."""
    nonzero = np.flatnonzero(idx != zero)
    gaps = np.diff(np.concatenate([[-1], nonzero])) - 1
    extra = gaps // 255  # a gap of g takes g // 255 bytes of 255, then g % 255
    gap_bytes = np.full(int(extra.sum()) + len(gaps), 255, np.uint8)
    ends = np.cumsum(extra + 1) - 1
    gap_bytes[ends] = gaps % 255
    return gap_bytes.tobytes() + idx[nonzero].astype(np.uint8).tobytes(), len(nonzero)


def _from_runs(data: bytes, nonzeros: int, zero: int, count: int) -> np.ndarray:
    """The index array `_runs` wrote; ValueError if the bytes do not make exactly `count` entries."""
    if not 0 <= nonzeros <= min(count, len(data)):
        raise ValueError("more non-zero entries than the tensor holds")
    gaps = np.frombuffer(data[: len(data) - nonzeros], np.uint8).astype(np.int64)
    values = np.frombuffer(data[len(data) - nonzeros :], np.uint8)
    ends = np.flatnonzero(gaps != 255)
    if len(ends) != nonzeros or (len(gaps) and gaps[-1] == 255):
        raise ValueError("gaps and non-zero entries disagree")
    totals = np.cumsum(gaps)[ends] if nonzeros else np.zeros(0, np.int64)
    positions = np.cumsum(np.diff(np.concatenate([[0], totals])) + 1) - 1
    if nonzeros and positions[-1] >= count:
        raise ValueError("a gap runs past the end of the tensor")
    idx = np.full(count, zero, np.uint8)
    idx[positions] = values
    return idx


def _tensors(proto):
    """Initializers and Constant-node tensors (the exporter folds some weights into Constants),
    in the main graph and in If/Loop/Scan subgraphs: onnx_weights' one walk."""
    from .onnx_weights import tensors

    return list(tensors(proto).values())


def pack(model_or_proto, path: str | Path, preset: int = 9) -> dict:
    """Write the packed file (atomically); returns what was packed (tensors, bytes)."""
    blob, entries = packed_bytes(model_or_proto, preset)
    atomic_write_bytes(Path(path), blob)
    return {"tensors": len(entries), "bytes": len(blob),
            "packed_weights": int(sum(np.prod(e["shape"]) for e in entries))}


def packed_bytes(model_or_proto, preset: int = 9) -> tuple[bytes, list[dict]]:
    """The packed file's bytes and the tensors it packs."""
    import onnx

    from .convert import to_onnx_proto
    from .model import Model
    from .onnx_weights import read

    proto = to_onnx_proto(model_or_proto) if isinstance(model_or_proto, Model) else model_or_proto
    work = onnx.ModelProto()
    work.CopyFrom(proto)
    entries, sections = [], []
    for n, tensor in enumerate(_tensors(work)):
        if tensor.data_type not in PACKABLE or tensor.data_location == onnx.TensorProto.EXTERNAL:
            continue
        values = read(tensor)
        if values.size < MIN_ELEMENTS:
            continue
        codebook, idx = np.unique(values.ravel(), return_inverse=True)
        if len(codebook) > 256:
            continue
        bits = max(1, int(np.ceil(np.log2(len(codebook)))))
        key = f"t{n}"
        entry = {"key": key, "name": tensor.name, "shape": list(values.shape), "dtype": str(values.dtype),
                 "bits": bits, "values": len(codebook)}
        zero = int(np.searchsorted(codebook, 0.0))
        runs = None
        if zero < len(codebook) and codebook[zero] == 0 and (idx != zero).mean() < RUNS_BELOW:
            runs = _runs(idx, zero)
            # the reader bounds a tensor by its bytes (a gap byte stands for at most 255 zeros);
            # trailing zeros take no bytes, so a tensor of zeros (a fresh YOLO's biases) is bit-packed
            if values.size > 256 * len(runs[0]):
                runs = None
        if runs is not None:
            data, nonzeros = runs
            entry.update(coding="runs", zero=zero, nonzeros=nonzeros)
        else:
            data = _pack_bits(idx, bits)
        entries.append(entry)
        sections += [codebook.astype(values.dtype).tobytes(), data]
        # empty the tensor in the graph, keep its name/type/dims as the slot to refill
        dims = list(tensor.dims)
        tensor.ClearField("float_data")
        tensor.ClearField("double_data")
        tensor.ClearField("int32_data")
        tensor.raw_data = b""
        tensor.doc_string = f"studio-packed:{key}"
        del tensor.dims[:]
        tensor.dims.extend(dims)
    graph = work.SerializeToString()
    version = 2 if any(e.get("coding") == "runs" for e in entries) else 1
    header = {"version": version, "tensors": entries, "sizes": [len(graph)] + [len(s) for s in sections]}
    head = json.dumps(header).encode()
    payload = struct.pack("<I", len(head)) + head + graph + b"".join(sections)
    return MAGIC + lzma.compress(payload, preset=preset), entries


# What a packed file may inflate to: real models compress well below MAX_RATIO (sparse 4-bit
# indices: ~10-50x), small ones get a floor. Beyond is a bomb, refused before it is allocated.
MAX_PAYLOAD = 4 * 1024**3
MAX_RATIO = 200
MIN_LIMIT = 64 * 1024**2
# Runs restore up to 255 weights per byte: the weights a file may restore, all tensors together
# (a 99.9 %-sparse 4-bit model restores ~3,000x its packed size)
MAX_RESTORED_RATIO = 4000


def _decompress(raw: bytes, name: str) -> bytes:
    """LZMA with a bound: a small file that inflates without end is refused, never allocated."""
    decomp = lzma.LZMADecompressor()
    limit = min(MAX_PAYLOAD, max(MIN_LIMIT, MAX_RATIO * len(raw)))
    try:
        payload = decomp.decompress(raw, max_length=limit)
    except lzma.LZMAError as exc:
        raise LoadError(f"{name}: damaged packed file ({exc})") from None
    if not decomp.eof:
        more = not decomp.needs_input
        raise LoadError(f"{name}: " + (f"inflates beyond {limit:,} bytes; refused" if more else "damaged packed file (truncated)"))
    return payload


def _slot(tensor) -> str:
    """The packed key a tensor's doc_string names, or "" (a doc_string that is not valid UTF-8
    comes back from protobuf as bytes: not a slot)."""
    doc = tensor.doc_string
    return doc[len("studio-packed:") :] if isinstance(doc, str) and doc.startswith("studio-packed:") else ""


def unpack(path: str | Path):
    """The ONNX ModelProto the packed file holds, weights restored exactly. Every claim of the
    header is checked against the bytes that back it; raises LoadError with a one-line reason."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    raw = path.read_bytes()
    if not raw.startswith(MAGIC):
        raise LoadError(f"{path.name}: not a studio packed file")
    payload = _decompress(raw[len(MAGIC) :], path.name)
    try:
        (head_len,) = struct.unpack("<I", payload[:4])
        header = json.loads(payload[4 : 4 + head_len])
        if header.get("version", 1) not in VERSIONS:
            raise ValueError(f"format version {header.get('version')!r}; this studio reads {VERSIONS}")
        sizes = [int(n) for n in header["sizes"]]
        entries = header["tensors"]
        if any(n < 0 for n in sizes) or 4 + head_len + sum(sizes) != len(payload) or len(sizes) != 1 + 2 * len(entries):
            raise ValueError("section sizes do not match the file")
        offsets = np.cumsum([4 + head_len, *sizes]).tolist()
        chunks = [payload[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
        proto = onnx.load_from_string(chunks[0])
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError, struct.error, DecodeError) as exc:
        raise LoadError(f"{path.name}: damaged packed file ({str(exc)[:100]})") from None
    slots = {_slot(t): t for t in _tensors(proto) if _slot(t)}
    restored, restore_limit = 0, min(MAX_PAYLOAD, max(MIN_LIMIT, MAX_RESTORED_RATIO * len(raw)))
    for i, entry in enumerate(entries):
        try:
            dtype, bits, tensor = np.dtype(entry["dtype"]), int(entry["bits"]), slots[entry["key"]]
            if dtype not in [np.dtype(t) for t in PACKABLE.values()] or not 1 <= bits <= 8:
                raise ValueError(f"dtype {dtype}, {bits} bits")
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise LoadError(f"{path.name}: damaged packed file (tensor {i}: {exc})") from None
        count = int(np.prod(tensor.dims, dtype=np.int64)) if len(tensor.dims) else 1
        codebook = np.frombuffer(chunks[1 + 2 * i], dtype) if len(chunks[1 + 2 * i]) % dtype.itemsize == 0 else None
        runs = entry.get("coding") == "runs"
        # the claimed element count must be what the index bytes hold: no allocation from a lie
        # (runs: a gap byte stands for at most 255 entries, a non-zero entry for one)
        held = 256 * len(chunks[2 + 2 * i]) if runs else (count * bits + 7) // 8
        if codebook is None or (count > held if runs else len(chunks[2 + 2 * i]) != held):
            raise LoadError(f"{path.name}: tensor '{tensor.name}' claims dims {list(tensor.dims)} that its bytes do not hold; refused")
        restored += count * dtype.itemsize
        if restored > restore_limit:
            raise LoadError(f"{path.name}: its weights would restore beyond {restore_limit:,} bytes; refused")
        try:
            idx = (_from_runs(chunks[2 + 2 * i], int(entry["nonzeros"]), int(entry["zero"]), count) if runs
                   else _unpack_bits(chunks[2 + 2 * i], bits, count))
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise LoadError(f"{path.name}: damaged packed file (tensor '{tensor.name}': {exc})") from None
        if count and int(idx.max()) >= len(codebook):
            raise LoadError(f"{path.name}: tensor '{tensor.name}' indexes past its codebook; refused")
        tensor.raw_data = codebook[idx].astype(dtype).tobytes()
        tensor.doc_string = ""
    if any(_slot(t) for t in _tensors(proto)):
        raise LoadError(f"{path.name}: damaged packed file (a tensor has no data)")
    return proto
