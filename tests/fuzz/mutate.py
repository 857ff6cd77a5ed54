"""Seeded mutations of a valid file: byte level for every format, plus structure-aware ones
(zip members, ONNX protobuf fields, safetensors and packed headers, recipe YAML, .npy headers)
that get past the first checksum or parser and reach the checks further in.

Every mutant is a pure function of (seed file bytes, rng): `mutant(fmt, data, rng)` returns
(bytes, description), so a failing mutant is reproduced from its format, seed and index alone.
"""

from __future__ import annotations

import io
import json
import lzma
import random
import struct
import zipfile

INTERESTING = [0, 1, 0x7F, 0x80, 0xFF]
INTERESTING_INTS = [0, 1, -1, 2**31 - 1, 2**31, 2**32 - 1, 2**63 - 1, 10**12]
HOSTILE_STRINGS = ["../secret", "/etc/passwd", "", "a" * 300, "\x00", "\n", "x\ny", "é", "."]


# -- byte level -------------------------------------------------------------------------------

def flip_bits(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    b = bytearray(data)
    positions = [rng.randrange(len(b)) for _ in range(rng.randint(1, 8))]
    for p in positions:
        b[p] ^= 1 << rng.randrange(8)
    return bytes(b), f"flip bits at {positions}"


def interesting_bytes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    b = bytearray(data)
    p, v = rng.randrange(len(b)), rng.choice(INTERESTING)
    n = rng.choice([1, 2, 4, 8])
    b[p:p + n] = bytes([v]) * n
    return bytes(b[: len(data)]), f"set {n} bytes at {p} to {v:#x}"


def big_integer(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    b = bytearray(data)
    width = rng.choice([4, 8])
    p = rng.randrange(max(1, len(b) - width))
    value = rng.choice(INTERESTING_INTS) & (2 ** (8 * width) - 1)
    b[p:p + width] = value.to_bytes(width, "little")
    return bytes(b[: len(data)]), f"write {width}-byte integer {value} at {p}"


def truncate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    n = rng.randrange(1, max(2, len(data)))
    return data[:n], f"truncate to {n} bytes"


def delete_chunk(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    a = rng.randrange(len(data))
    b = min(len(data), a + rng.randint(1, 256))
    return data[:a] + data[b:], f"delete bytes {a}:{b}"


def duplicate_chunk(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    a = rng.randrange(len(data))
    b = min(len(data), a + rng.randint(1, 512))
    at = rng.randrange(len(data))
    return data[:at] + data[a:b] + data[at:], f"copy bytes {a}:{b} to {at}"


def random_chunk(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    a = rng.randrange(len(data))
    n = rng.randint(1, 64)
    return data[:a] + rng.randbytes(n) + data[a + n:], f"overwrite {n} random bytes at {a}"


BYTE_MUTATORS = [flip_bits, interesting_bytes, big_integer, truncate, delete_chunk, duplicate_chunk, random_chunk]


def bytes_mutant(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    if not data:
        return rng.randbytes(rng.randint(1, 16)), "random bytes for an empty member"
    return rng.choice(BYTE_MUTATORS)(data, rng)


# -- zip members (TorchScript, .pt2, state_dict, .npz) -------------------------------------------

def _members(data: bytes) -> list[tuple[zipfile.ZipInfo, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return [(i, z.read(i)) for i in z.infolist()]


def _rezip(members, compress: bool = False) -> bytes:
    import warnings

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate member names are the point
        for info, blob in members:
            info = zipfile.ZipInfo(info.filename, info.date_time)
            info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
            z.writestr(info, blob)
    return out.getvalue()


def _pick(members, rng, prefer=()):
    """A member index, weighted toward the structural ones (code, pickles, json, headers)."""
    weights = [8 if any(p in info.filename for p in prefer) else 1 for info, _ in members]
    return rng.choices(range(len(members)), weights)[0]


STRUCTURAL = ("/code/", ".pkl", ".json", "version", "archive_format", "constants", "byteorder", ".npy", "models/")


def zip_mutant(data: bytes, rng: random.Random, member_edit=None) -> tuple[bytes, str]:
    members = _members(data)
    kind = rng.choice(["drop", "duplicate", "corrupt", "corrupt", "corrupt", "rename", "swap", "deflate",
                       "claim", "edit"] if member_edit else
                      ["drop", "duplicate", "corrupt", "corrupt", "corrupt", "rename", "swap", "deflate", "claim"])
    i = _pick(members, rng, STRUCTURAL)
    name = members[i][0].filename
    if kind == "drop":
        del members[i]
        return _rezip(members), f"zip: drop member {name}"
    if kind == "duplicate":
        blob = members[i][1] if rng.random() < 0.5 else bytes_mutant(members[i][1], rng)[0]
        members.insert(rng.randrange(len(members) + 1), (members[i][0], blob))
        return _rezip(members), f"zip: duplicate member {name}"
    if kind == "corrupt":
        blob, how = bytes_mutant(members[i][1], rng)
        members[i] = (members[i][0], blob)
        return _rezip(members), f"zip: member {name}: {how}"  # CRC recomputed: the content reaches the parser
    if kind == "rename":
        new = rng.choice([members[rng.randrange(len(members))][0].filename, name + "x", "../" + name, "/" + name,
                          name.rsplit("/", 1)[0] + "/" + rng.choice(HOSTILE_STRINGS)])
        members[i] = (zipfile.ZipInfo(new, members[i][0].date_time), members[i][1])
        return _rezip(members), f"zip: rename {name} -> {new!r}"
    if kind == "swap":
        j = rng.randrange(len(members))
        other = members[j][0].filename
        members[i], members[j] = (members[i][0], members[j][1]), (members[j][0], members[i][1])
        return _rezip(members), f"zip: swap contents of {name} and {other}"
    if kind == "deflate":
        return _rezip(members, compress=True), "zip: every member deflated"
    if kind == "edit":
        blob, how = member_edit(name, members[i][1], rng)
        members[i] = (members[i][0], blob)
        return _rezip(members), f"zip: member {name}: {how}"
    # claim: the central directory states another uncompressed size than the member has
    raw = bytearray(_rezip(members))
    cd = raw.rfind(b"PK\x01\x02")
    positions = []
    p = raw.find(b"PK\x01\x02")
    while p != -1:
        positions.append(p)
        p = raw.find(b"PK\x01\x02", p + 4)
    cd = rng.choice(positions) if positions else cd
    value = rng.choice([0, 1, 2**31, 2**32 - 1, len(raw) * 1000])
    raw[cd + 24:cd + 28] = struct.pack("<I", value)
    return bytes(raw), f"zip: central directory entry at {cd} claims {value} bytes"


def npy_header_edit(name: str, blob: bytes, rng: random.Random) -> tuple[bytes, str]:
    """A .npy member with another header: shape, dtype or order."""
    if not blob.startswith(b"\x93NUMPY") or len(blob) < 10:
        return bytes_mutant(blob, rng)
    (hlen,) = struct.unpack("<H", blob[8:10])
    replacement = rng.choice([
        "{'descr': '|O', 'fortran_order': False, 'shape': (20,), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 100000, 100000), }",
        "{'descr': '<f4', 'fortran_order': True, 'shape': (20, 64), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }",
        "{'descr': '<U100000', 'fortran_order': False, 'shape': (20,), }",
        "{'descr': [('a', '<f4'), ('b', '|O')], 'fortran_order': False, 'shape': (2,), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (), }",
        "{'descr': '<c16', 'fortran_order': False, 'shape': (5,), }",
        "{'descr': '<M8[s]', 'fortran_order': False, 'shape': (10,), }",
        "__import__('os').system('touch pwned')",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 1, 8, 8), }",
    ])
    new = replacement.ljust(hlen - 1) + "\n" if len(replacement) < hlen else replacement + "\n"
    return blob[:8] + struct.pack("<H", len(new)) + new.encode("latin1") + blob[10 + hlen:], f"npy header -> {replacement[:60]}"


# -- ONNX protobuf fields -----------------------------------------------------------------------

def onnx_mutant(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    import onnx
    from onnx import TensorProto

    proto = onnx.load_from_string(data)
    g = proto.graph
    tensors = list(g.initializer) + [a.t for n in g.node for a in n.attribute if a.HasField("t")]
    kind = rng.choice(["dims", "dtype", "raw", "external", "op", "drop_node", "dup_node", "cycle", "opset",
                       "ir", "io_shape", "drop_io", "attr", "subgraph", "bytes_tensor", "rename_input", "function"])
    desc = kind
    if kind in ("dims", "dtype", "raw", "external", "bytes_tensor") and tensors:
        t = rng.choice(tensors)
        if kind == "dims":
            dims = [rng.choice([0, 1, -1, 3, 10**6, 2**40, 2**62]) for _ in range(rng.randint(0, 5))]
            t.ClearField("dims")
            t.dims.extend(dims)
            desc = f"tensor {t.name}: dims {dims}"
        elif kind == "dtype":
            t.data_type = rng.choice([0, 2, 3, 6, 7, 8, 9, 12, 14, 16, 17, 21, 22, 23, 40, 1000])
            desc = f"tensor {t.name}: data_type {t.data_type}"
        elif kind == "raw":
            n = rng.randrange(len(t.raw_data) + 1) if t.raw_data else 0
            t.raw_data = t.raw_data[:n]
            desc = f"tensor {t.name}: raw_data cut to {n}"
        elif kind == "external":
            t.data_location = TensorProto.EXTERNAL
            del t.external_data[:]
            loc = rng.choice(HOSTILE_STRINGS + ["w.bin", "tiny.onnx", "tiny_dynamo.onnx"])
            for key, value in [("location", loc), ("offset", str(rng.choice([0, -5, 10**12]))),
                               ("length", str(rng.choice([0, 4, 10**15])))][: rng.randint(1, 3)]:
                e = t.external_data.add()
                e.key, e.value = key, value
            desc = f"tensor {t.name}: external data at {loc!r}"
        else:
            raw = t.SerializeToString()
            mutated, how = bytes_mutant(raw, rng)
            try:
                t.ParseFromString(mutated)
            except Exception:  # noqa: BLE001 - not parseable: keep the original tensor, mutate bytes below
                return bytes_mutant(data, rng)
            desc = f"tensor {t.name} serialized: {how}"
    elif kind == "op" and g.node:
        n = rng.choice(g.node)
        n.op_type = rng.choice(["Loop", "If", "Scan", "Foo", "", "Conv", "Gemm", "Reshape", "Expand", "ConstantOfShape",
                                "Tile", "Resize", "Range"])
        if rng.random() < 0.3:
            n.domain = rng.choice(["com.microsoft", "evil", "ai.onnx.ml"])
        desc = f"node {n.name}: op {n.op_type} domain {n.domain!r}"
    elif kind == "drop_node" and g.node:
        i = rng.randrange(len(g.node))
        desc = f"drop node {g.node[i].name}"
        del g.node[i]
    elif kind == "dup_node" and g.node:
        n = rng.choice(g.node)
        g.node.add().CopyFrom(n)
        desc = f"duplicate node {n.name}"
    elif kind == "cycle" and g.node:
        n = rng.choice(g.node)
        if n.output and n.input:
            n.input[0] = n.output[0]
        desc = f"node {n.name} reads its own output"
    elif kind == "rename_input" and g.node:
        n = rng.choice(g.node)
        if n.input:
            n.input[rng.randrange(len(n.input))] = rng.choice(HOSTILE_STRINGS + ["nope"])
        desc = f"node {n.name}: input renamed"
    elif kind == "opset":
        for o in proto.opset_import:
            o.version = rng.choice([0, 1, 7, 99, 2**40])
        desc = f"opset versions {[o.version for o in proto.opset_import]}"
    elif kind == "ir":
        proto.ir_version = rng.choice([0, 1, 3, 99, 2**40])
        desc = f"ir_version {proto.ir_version}"
    elif kind == "io_shape" and g.input:
        v = rng.choice(list(g.input) + list(g.output))
        for d in v.type.tensor_type.shape.dim:
            choice = rng.choice([0, -1, 2**40, None, 1])
            if choice is None:
                d.dim_param = rng.choice(["N", "", "x\ny"])
            else:
                d.dim_value = choice
        if rng.random() < 0.3:
            v.type.tensor_type.elem_type = rng.choice([0, 8, 40])
        desc = f"value {v.name}: shape/type changed"
    elif kind == "drop_io":
        field = rng.choice([g.input, g.output])
        if field:
            del field[rng.randrange(len(field))]
        desc = "drop a graph input/output"
    elif kind == "attr" and g.node:
        n = rng.choice(g.node)
        if n.attribute:
            a = rng.choice(n.attribute)
            a.ClearField("ints")
            a.ints.extend([rng.choice([0, -1, 2**40]) for _ in range(rng.randint(0, 4))])
            a.i = rng.choice([0, -1, 2**40])
            desc = f"node {n.name}: attribute {a.name} values changed"
    elif kind == "subgraph" and g.node:
        copy = onnx.GraphProto()
        copy.CopyFrom(g)  # (copying a message into its own child crashes protobuf: copy first)
        n = rng.choice(g.node)
        a = n.attribute.add()
        a.name = "then_branch"
        a.type = onnx.AttributeProto.GRAPH
        a.g.CopyFrom(copy)
        desc = f"node {n.name}: the graph nested in itself"
    elif kind == "function":
        f = proto.functions.add()
        f.name, f.domain = rng.choice(g.node).op_type if g.node else "F", "custom"
        f.node.extend(list(g.node)[:2])
        if g.node:
            g.node[0].domain = "custom"
        desc = "a local function shadowing a node's op"
    return proto.SerializeToString(), f"onnx: {desc}"


# -- safetensors header -------------------------------------------------------------------------

def safetensors_mutant(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    names = [k for k in header if k != "__metadata__"]
    name = rng.choice(names)
    kind = rng.choice(["dtype", "shape", "offsets", "extra", "metadata", "drop", "length", "bytes"])
    if kind == "dtype":
        header[name]["dtype"] = rng.choice(["F16", "I64", "BOOL", "F8_E4M3", "X", "", None, 3])
    elif kind == "shape":
        header[name]["shape"] = rng.choice([[], [0], [-1], [2**40], [1.5], ["3"], [3, 3, 3, 3, 3, 3, 3, 3], None, {}])
    elif kind == "offsets":
        header[name]["data_offsets"] = rng.choice([[0, 0], [5, 3], [-1, 4], [0, 2**63], [0], None, [0.5, 2], ["0", "8"]])
    elif kind == "extra":
        header[rng.choice(["evil", name + ".x", "", "a\nb"])] = dict(header[name])
    elif kind == "metadata":
        header["__metadata__"] = rng.choice([{"format": "pt"}, {"a": 1}, [], "x", None, {"a": {"b": 1}}])
    elif kind == "drop":
        del header[name]
    if kind == "bytes":
        mutated, how = bytes_mutant(data[8:8 + n], rng)
        return struct.pack("<Q", len(mutated)) + mutated + body, f"safetensors header bytes: {how}"
    head = json.dumps(header).encode()
    if kind == "length":
        claimed = rng.choice([0, 1, len(head) - 1, len(head) + 1, 2**63, len(head) + len(body)])
        return struct.pack("<Q", claimed) + head + body, f"safetensors header length {claimed}"
    return struct.pack("<Q", len(head)) + head + body, f"safetensors header: {kind} of {name!r}"


# -- packed: mutate inside the LZMA stream (outside, the stream's own check catches everything) ---

def packed_mutant(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    from studio.core.packed import MAGIC

    payload = lzma.decompress(data[len(MAGIC):])
    (n,) = struct.unpack("<I", payload[:4])
    header = json.loads(payload[4:4 + n])
    body = payload[4 + n:]
    kind = rng.choice(["header", "header", "header_bytes", "graph", "sections", "payload"])
    if kind == "header":
        entry = rng.choice(header["tensors"]) if header["tensors"] else {}
        field = rng.choice(["sizes", "dtype", "bits", "key", "values", "shape", "tensors", "version", "name"])
        value = rng.choice([0, -1, 9, 2**40, None, "float32", "object", "<U4", "t0", "", [], {}, [1, 2], 3.5])
        if field in ("sizes", "tensors", "version"):
            if field == "sizes" and isinstance(value, int):
                sizes = list(header["sizes"])
                sizes[rng.randrange(len(sizes))] = value
                value = sizes
            header[field] = value
        else:
            entry[field] = value
        desc = f"header {field} = {value!r}"
        head = json.dumps(header).encode()
        payload = struct.pack("<I", len(head)) + head + body
    elif kind == "header_bytes":
        head, how = bytes_mutant(payload[4:4 + n], rng)
        payload = struct.pack("<I", len(head)) + head + body
        desc = f"header bytes: {how}"
    elif kind == "graph":
        g = body[: header["sizes"][0]]
        if rng.random() < 0.5:
            new, how = onnx_mutant(g, rng)
        else:
            new, how = bytes_mutant(g, rng)
        header["sizes"][0] = len(new)
        head = json.dumps(header).encode()
        payload = struct.pack("<I", len(head)) + head + new + body[len(g):]
        desc = f"graph: {how}"
    elif kind == "sections":
        new, how = bytes_mutant(body[header["sizes"][0]:], rng)
        payload = payload[:4 + n] + body[: header["sizes"][0]] + new
        desc = f"sections: {how}"
    else:
        payload, how = bytes_mutant(payload, rng)
        desc = f"payload: {how}"
    return MAGIC + lzma.compress(payload, preset=0), f"packed {desc}"


# -- recipes ------------------------------------------------------------------------------------

def recipe_mutant(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    import yaml

    kind = rng.choice(["value", "value", "key", "id", "drop", "dup", "top", "aliases", "text"])
    if kind == "text":
        new, how = bytes_mutant(data, rng)
        return new, f"recipe text: {how}"
    doc = yaml.safe_load(data)
    passes = doc.get("passes") or [{}]
    step = rng.choice(passes) if isinstance(passes, list) and passes else {}
    weird = rng.choice([None, -1, 0, 2**70, 1e308, float("nan"), float("inf"), "x", "", [], {}, [1, [2]], {"a": 1},
                        True, "a\nb", "0.5"])
    if kind == "value" and isinstance(step, dict):
        key = rng.choice([k for k in step if k != "id"] or ["sparsity", "bits", "targets", "ignore", "enabled"])
        step[key] = weird
        desc = f"option {key} = {weird!r}"
    elif kind == "key" and isinstance(step, dict):
        key = rng.choice([1, None, "", "a\nb", "__class__", "id ", True, 1.5])
        step[key] = 1
        desc = f"option key {key!r}"
    elif kind == "id" and isinstance(step, dict):
        step["id"] = weird if rng.random() < 0.5 else rng.choice(["prune.magnitude", "x.y", "quantize.int8_static\n"])
        desc = f"id = {step['id']!r}"
    elif kind == "drop" and isinstance(step, dict) and step:
        key = rng.choice(list(step))
        del step[key]
        desc = f"drop {key}"
    elif kind == "dup" and isinstance(passes, list):
        passes.extend(passes * rng.randint(1, 50))
        desc = "passes repeated"
    elif kind == "top":
        key = rng.choice(["studio_recipe", "passes", "name"])
        doc[key] = weird
        desc = f"{key} = {weird!r}"
    elif kind == "aliases":
        text = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
        text += "studio_recipe: 1\npasses:\n  - id: prune.magnitude\n    targets: *i\n    ignore: *i\nname: *i\n"
        return text.encode(), "recipe: nested aliases (a billion laughs)"
    else:
        desc = "unchanged structure"
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).encode(), f"recipe: {desc}"


# -- dispatch -----------------------------------------------------------------------------------

ZIP_FORMATS = {"torchscript", "pt2", "state_dict", "npz"}


def mutant(fmt: str, data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One mutant of a seed of format `fmt`: about half structure-aware, the rest plain bytes."""
    structured = rng.random() < 0.6
    if structured and fmt in ZIP_FORMATS:
        return zip_mutant(data, rng, npy_header_edit if fmt == "npz" else None)
    if structured and fmt == "onnx":
        return onnx_mutant(data, rng)
    if structured and fmt == "safetensors":
        return safetensors_mutant(data, rng)
    if structured and fmt == "packed":
        return packed_mutant(data, rng)
    if structured and fmt == "recipe":
        return recipe_mutant(data, rng)
    return bytes_mutant(data, rng)
