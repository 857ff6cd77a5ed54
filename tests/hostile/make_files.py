"""Crafted hostile files, written into a folder at test time (small, and regenerated from code so
they never drift from the formats they attack). `expected.yaml` beside this file maps each name
to a part of the one-line refusal it must get. Some are regressions the fuzzer (tests/fuzz) found.

    python -m tests.hostile.make_files OUT_FOLDER     # write them, to look at or open by hand

A file's payload, where it has one, writes the file MARKER in the folder if any of it runs.
"""

from __future__ import annotations

import io
import json
import lzma
import pickle
import struct
import sys
import warnings
import zipfile
from pathlib import Path

MARKER = "PAYLOAD_RAN"


class _Evil:
    """Unpickling it opens MARKER for writing: the marker appears iff the pickle ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _tiny_onnx():
    import onnx

    from tests.fuzz.seeds import tiny
    import torch

    buf = io.BytesIO()
    torch.onnx.export(tiny(), (torch.zeros(1, 1, 8, 8),), buf, dynamo=False, input_names=["x"])
    return onnx.load_from_string(buf.getvalue())


def _external(proto, location: str, **extra):
    """A copy of `proto` whose first initializer claims its data lives at `location`."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    t = copy.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    for key, value in {"location": location, **extra}.items():
        e = t.external_data.add()
        e.key, e.value = key, str(value)
    return copy.SerializeToString()


def _onnx_files(folder: Path, outside: Path) -> None:
    import onnx

    proto = _tiny_onnx()
    (folder / "outside.onnx").write_bytes(_external(proto, "../secret"))
    (folder / "absolute.onnx").write_bytes(_external(proto, "/etc/passwd"))
    (folder / "symlink.onnx").write_bytes(_external(proto, "symlink.data"))
    (folder / "symlink.data").symlink_to(outside)
    (folder / "sidecar_short.onnx").write_bytes(_external(proto, "short.data", length=10**9))
    (folder / "short.data").write_bytes(bytes(16))
    (folder / "sidecar_long.onnx").write_bytes(_external(proto, "long.data"))  # no length: read to the end
    (folder / "long.data").write_bytes(bytes(4096))
    lying = onnx.ModelProto()
    lying.CopyFrom(proto)
    lying.graph.initializer[0].ClearField("dims")
    lying.graph.initializer[0].dims.extend([100_000, 100_000, 100_000])  # 4 PB claimed, a few bytes held
    (folder / "lying_tensor.onnx").write_bytes(lying.SerializeToString())
    (folder / "nul_location.onnx").write_bytes(_external(proto, "w\x00.data"))
    (folder / "long_location.onnx").write_bytes(_external(proto, "a" * 300))
    lying.graph.initializer[0].CopyFrom(proto.graph.initializer[0])
    lying.graph.initializer[0].ClearField("dims")
    lying.graph.initializer[0].dims.extend([0])  # no elements, 72 bytes: numpy cannot reshape them
    (folder / "empty_dims.onnx").write_bytes(lying.SerializeToString())
    lying.graph.initializer[0].CopyFrom(proto.graph.initializer[0])
    lying.graph.initializer[0].data_type = 40  # no such type: numpy_helper raised KeyError in inspect
    (folder / "unknown_dtype.onnx").write_bytes(lying.SerializeToString())
    (folder / "text.onnx").write_text("this is a README, not a model\n")
    (folder / "empty.onnx").write_bytes(b"")
    (folder / "new\nline.onnx").write_text("a file whose name holds a line break\n")


def _safetensors_files(folder: Path) -> None:
    def write(name, header: dict, body: bytes):
        head = json.dumps(header).encode()
        (folder / name).write_bytes(struct.pack("<Q", len(head)) + head + body)

    write("lying_header.safetensors", {"w": {"dtype": "F32", "shape": [100_000, 100_000], "data_offsets": [0, 16]}},
          bytes(16))
    write("offsets_text.safetensors", {"w": {"dtype": "F32", "shape": [4], "data_offsets": ["0", "16"]}}, bytes(16))
    # a gap before the second tensor: the safetensors library refuses it, naming it
    write("newline_tensor.safetensors", {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                                         "a\nb": {"dtype": "F32", "shape": [4], "data_offsets": [32, 48]}}, bytes(48))
    head = b'{"w": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"  # json's recursive parser: RecursionError
    (folder / "deep_header.safetensors").write_bytes(struct.pack("<Q", len(head)) + head)


def _torch_files(folder: Path, marker: Path) -> None:
    import torch

    from tests.fuzz.seeds import tiny

    with zipfile.ZipFile(folder / "zip_bomb.pt", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", bytes(200_000_000))  # 200 MB of zeros in ~200 KB
    torch.save(tiny(), folder / "pickled_module.pt")  # a whole module: unpickling runs code
    torch.save({"w": _Evil(marker)}, folder / "evil_pickle.pt")
    (folder / "legacy_pickle.pt").write_bytes(pickle.dumps(_Evil(marker), protocol=2))
    # a stored tensor byte changed after writing: torch itself never checks the zip's checksums
    good = folder / "checksum.pth"
    torch.save(tiny().state_dict(), good)
    raw = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename)
    n, extra = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    raw[info.header_offset + 30 + n + extra] ^= 0xFF
    good.write_bytes(bytes(raw))
    # a zip whose directory says "UTF-8 names" but holds bytes that are not
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", b"x")
    raw = bytearray(buf.getvalue())
    cd = raw.find(b"PK\x01\x02")
    raw[cd + 9] |= 0x08  # general-purpose flag bit 11: UTF-8 names
    raw[cd + 46] = 0xFF
    (folder / "undecodable_name.pth").write_bytes(bytes(raw))
    # TorchScript: a second copy of the code member (which copy a reader takes differs), and from_file
    ts = folder / "_plain.pt"
    torch.jit.trace(tiny(), torch.zeros(1, 1, 8, 8)).save(str(ts))
    with zipfile.ZipFile(ts) as a, zipfile.ZipFile(folder / "duplicate_member.pt", "w") as b, \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate: it is the point
        for info in a.infolist():
            blob = a.read(info)
            b.writestr(zipfile.ZipInfo(info.filename), blob)
            if info.filename.endswith(".py") and b"return" in blob:
                b.writestr(zipfile.ZipInfo(info.filename), blob.replace(b"return", b"_x = 1\n  return", 1))
    with zipfile.ZipFile(ts) as a, zipfile.ZipFile(folder / "from_file.pt", "w") as b:
        for info in a.infolist():
            blob = a.read(info)
            if "/code/" in info.filename and info.filename.endswith(".py") and b"return" in blob:
                blob = blob.replace(b"return", b"_f = torch.from_file(\"/etc/passwd\", True, 8)\n  return", 1)
            b.writestr(info, blob)
    # a tensor record cut short: torch.jit.load loads it, the first read runs past it (SIGSEGV)
    with zipfile.ZipFile(ts) as a, zipfile.ZipFile(folder / "short_record.pt", "w") as b:
        biggest = max((i for i in a.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        for info in a.infolist():
            blob = a.read(info)
            b.writestr(zipfile.ZipInfo(info.filename), blob[:8] if info is biggest else blob)
    ts.unlink()
    from tests.hostile.pt2_archives import pickled_weight, write_tiny_program

    src = write_tiny_program(folder / "_plain.pt2")
    pickled_weight(src, folder / "pickled_weight.pt2", marker)
    # no archive_version member: torch logged its traceback on stderr, then raised "see above"
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(folder / "no_version.pt2", "w") as b:
        for info in a.infolist():
            if not info.filename.endswith("/archive_version"):
                b.writestr(zipfile.ZipInfo(info.filename), a.read(info))
    src.unlink()


def _packed_files(folder: Path) -> None:
    from studio.core import packed

    proto = _tiny_onnx()
    good = folder / "_good.packed"
    packed.pack(proto, good)
    payload = lzma.decompress(good.read_bytes()[len(packed.MAGIC):])
    good.unlink()
    (n,) = struct.unpack("<I", payload[:4])
    header, body = json.loads(payload[4:4 + n]), payload[4 + n:]

    def write(name, header, body):
        head = json.dumps(header).encode()
        (folder / name).write_bytes(packed.MAGIC + lzma.compress(struct.pack("<I", len(head)) + head + body))

    # the header claims a tensor of a billion elements: the index bytes hold the real few hundred
    header["tensors"][0]["shape"] = [1000, 1000, 1000]
    graph = body[:header["sizes"][0]]
    import onnx

    g = onnx.load_from_string(graph)
    for t in g.graph.initializer:
        if t.doc_string == "studio-packed:" + header["tensors"][0]["key"]:
            t.ClearField("dims")
            t.dims.extend([1000, 1000, 1000])
    new_graph = g.SerializeToString()
    write("lying_header.packed", dict(header, sizes=[len(new_graph), *header["sizes"][1:]]), new_graph + body[len(graph):])
    bad_doc = graph.replace(b"studio-packed:", b"studio-packed\xff", 1)  # not UTF-8: protobuf gives bytes
    write("undecodable_doc.packed", dict(header, sizes=[len(bad_doc), *header["sizes"][1:]]), bad_doc + body[len(graph):])
    write("infinite_size.packed", dict(header, sizes=[float("inf"), *header["sizes"][1:]]), body)  # json: Infinity
    (folder / "bomb.packed").write_bytes(packed.MAGIC + lzma.compress(bytes(80 * 1024 * 1024), preset=0))


RECIPES = {
    "not_utf8.yaml": "studio_recipe: 1\nname: caf\xe9\npasses: []\n".encode("latin1"),
    "option_key_number.yaml": b"studio_recipe: 1\npasses:\n  - id: prune.magnitude\n    1.5: 2\n",
    "id_newline.yaml": b'studio_recipe: 1\npasses:\n  - id: "prune.magnitude\\nrm -rf /"\n',
    "version_newline.yaml": b'studio_recipe: "1\\n2"\npasses: []\n',
    "bad_date.yaml": b"studio_recipe: 1\npasses:\n  - id: prune.magnitude\n    sparsity: 2001-13-45\n",
    # PyYAML parses nesting recursively: this ended in a RecursionError (a traceback, not a refusal)
    "deep.yaml": b"studio_recipe: 1\npasses: " + b"[" * 50_000 + b"]" * 50_000 + b"\n",
    "python_object.yaml": b"studio_recipe: 1\nname: !!python/object/apply:os.system [touch PAYLOAD_RAN]\npasses: []\n",
    # nine levels of nine aliases: a name 9**9 items long once expanded (str() of it never ends)
    "billion_laughs.yaml": ("lol: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
                            + "".join(f"l{k}: &a{k} [{', '.join([f'*a{k - 1}'] * 9)}]\n" for k in range(1, 9))
                            + "studio_recipe: 1\nname: *a8\npasses:\n  - id: prune.magnitude\n").encode(),
}


def _npz_files(folder: Path, marker: Path) -> None:
    import numpy as np

    x = np.zeros((10, 4), np.float32)
    with zipfile.ZipFile(folder / "not_array.npz", "w") as z:
        z.writestr("x.npy", b"just some bytes, not an array")
    np.savez(folder / "huge_label.npz", x=x, y=np.array([0] * 9 + [2**40]))
    np.savez(folder / "negative_label.npz", x=x, y=np.array([0] * 9 + [-1]))
    np.savez(folder / "scalar_x.npz", x=np.float32(3.0))
    with zipfile.ZipFile(folder / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as z:
        buf = io.BytesIO()
        np.save(buf, np.zeros(400_000_000, np.uint8))  # 400 MB of zeros in ~400 KB
        z.writestr("x.npy", buf.getvalue())
    with zipfile.ZipFile(folder / "object.npz", "w") as z:
        buf = io.BytesIO()
        np.save(buf, np.array([_Evil(marker)], dtype=object), allow_pickle=True)
        z.writestr("x.npy", buf.getvalue())


def build(folder: Path) -> Path:
    """Write every hostile file into `folder`; returns the path its payloads would create."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / MARKER
    outside = folder.parent / f"{folder.name}-secret"
    outside.write_bytes(b"a secret outside the model's folder" * 1000)
    _onnx_files(folder, outside)
    _safetensors_files(folder)
    _torch_files(folder, marker)
    _packed_files(folder)
    for name, text in RECIPES.items():
        (folder / name).write_bytes(text)
    _npz_files(folder, marker)
    return marker


def expected() -> dict[str, str]:
    import yaml

    return yaml.safe_load((Path(__file__).parent / "expected.yaml").read_text(encoding="utf-8"))


if __name__ == "__main__":
    build(Path(sys.argv[1]))
