"""The packed file as a user meets it: `studio run` writes it after clustering, `studio export
--format packed` writes it verified, and every loader (inspect, run, export back to ONNX) opens
it. Hostile packed files are refused with one line, nothing allocated from their claims."""

import json
import lzma
import struct

import numpy as np
import pytest

from studio.cli import main
from studio.core import io, packed
from studio.core.convert import run_session, session, to_onnx_proto
from studio.core.errors import LoadError
from studio.core.export import export
from studio.core.passes.base import Context
from studio.core.passes.registry import create
from studio.core.training import drain
from tests.core.test_pass_common import run


@pytest.fixture(scope="module")
def clustered(demo_mlp):
    pruned = run(create("prune.magnitude", sparsity=0.9), demo_mlp, Context()).model
    return run(create("cluster.kmeans", bits=4), pruned, Context()).model


def test_export_packed_verifies_and_loads_back_as_onnx(clustered, tmp_path, digits_data):
    path = tmp_path / "mlp.packed"
    result = drain(export(clustered, path, "packed", data=digits_data))
    # verify() compares with the torch model: float noise only (bit-exactness vs ONNX is below)
    assert result.verified and result.max_abs_diff < 1e-5 and result.agreement == 1.0
    fp32_bytes = len(to_onnx_proto(clustered).SerializeToString())
    assert result.size_bytes == path.stat().st_size and result.size_bytes * 10 < fp32_bytes
    model = io.load(path)
    assert model.framework == "onnx" and model.format == "packed" and model.input_shape == clustered.input_shape
    x = digits_data.shaped(digits_data.x_test, clustered.input_shape)
    assert np.array_equal(run_session(session(model.obj), x), run_session(session(to_onnx_proto(clustered)), x))


def test_cli_inspect_and_restore_to_onnx(clustered, tmp_path, capsys):
    path = tmp_path / "mlp.packed"
    drain(export(clustered, path, "packed"))
    assert main(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "packed" and info["parameters"] == 64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
    restored = tmp_path / "mlp.onnx"
    assert main(["export", str(path), "--format", "onnx", "--out", str(restored), "-q"]) == 0
    x = clustered.example_input(4)
    assert np.array_equal(run_session(session(restored), x), run_session(session(to_onnx_proto(clustered)), x))


def test_run_writes_packed_after_clustering(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("studio_recipe: 1\npasses:\n  - id: prune.magnitude\n    sparsity: 0.9\n"
                      "  - id: cluster.kmeans\n    bits: 4\n")
    out = tmp_path / "out"
    assert main(["run", "demo:mlp", "--recipe", str(recipe), "--data", "digits", "--out", str(out),
                 "--rounds", "1", "--json", "-q"]) == 0
    exports = {e["format"]: e for e in json.loads(capsys.readouterr().out)["exports"]}
    assert set(exports) == {"onnx", "packed"} and all(e["verified"] for e in exports.values())
    assert exports["packed"]["size_bytes"] * 4 < exports["onnx"]["size_bytes"]


def write_packed(path, header: dict, sections: list[bytes]):
    head = json.dumps(header).encode()
    path.write_bytes(packed.MAGIC + lzma.compress(struct.pack("<I", len(head)) + head + b"".join(sections)))


def test_hostile_packed_files_refused(clustered, tmp_path):
    good = tmp_path / "good.packed"
    packed.pack(clustered, good)
    payload = lzma.decompress(good.read_bytes()[len(packed.MAGIC):])
    (n,) = struct.unpack("<I", payload[:4])
    header, body = json.loads(payload[4:4 + n]), payload[4 + n:]
    graph = body[: header["sizes"][0]]
    cases = {}
    # a bomb: 80 MB of zeros in ~12 KB, past the 64 MB floor and the 200x ratio
    cases["bomb"] = packed.MAGIC + lzma.compress(bytes(80 * 1024 * 1024), preset=0)
    cases["truncated"] = good.read_bytes()[:-40]
    # index bytes that cannot hold the tensor's dims
    lying = dict(header, sizes=[len(graph), *header["sizes"][1:]])
    sections, offset = [], len(graph)
    for size in header["sizes"][1:]:
        sections.append(body[offset:offset + size])
        offset += size
    sections[1] = sections[1][:10]
    lying["sizes"] = [len(graph)] + [len(s) for s in sections]
    write_packed(tmp_path / "lying.packed", lying, [graph, *sections])
    # indices past the codebook
    sections2 = list(sections)
    sections2[1] = body[len(graph) + header["sizes"][1]: len(graph) + header["sizes"][1] + header["sizes"][2]]
    sections2[0] = sections2[0][: 2 * np.dtype(header["tensors"][0]["dtype"]).itemsize]  # codebook of 2 values
    write_packed(tmp_path / "past.packed", dict(header, sizes=[len(graph)] + [len(s) for s in sections2]), [graph, *sections2])
    for name, data in cases.items():
        (tmp_path / f"{name}.packed").write_bytes(data)
    expected = {"bomb": "inflates beyond", "truncated": "damaged packed file", "lying": "do not hold",
                "past": "past its codebook"}
    for name, reason in expected.items():
        with pytest.raises(LoadError, match=reason):
            io.load(tmp_path / f"{name}.packed")


def test_sparse_clustered_tensors_are_stored_as_runs_smaller_and_bit_exact(clustered, tmp_path, monkeypatch):
    """Pruned then clustered weights are stored as Deep Compression stores them (gaps between the
    non-zero weights, then their indices): smaller than bit-packed indices, restored bit for bit,
    and a version-1 file (bit-packed only) still loads."""
    from onnx import numpy_helper

    proto = to_onnx_proto(clustered)
    blob, entries = packed.packed_bytes(proto)
    assert any(e.get("coding") == "runs" for e in entries)
    monkeypatch.setattr(packed, "RUNS_BELOW", 0.0)  # what version 1 wrote
    old_blob, old_entries = packed.packed_bytes(proto)
    monkeypatch.undo()
    assert not any(e.get("coding") for e in old_entries)
    assert len(blob) < 0.95 * len(old_blob)
    want = {i.name: numpy_helper.to_array(i).tobytes() for i in proto.graph.initializer}
    for name, data in (("v2", blob), ("v1", old_blob)):
        (tmp_path / f"{name}.packed").write_bytes(data)
        back = packed.unpack(tmp_path / f"{name}.packed")
        assert {i.name: numpy_helper.to_array(i).tobytes() for i in back.graph.initializer} == want, name


def test_hostile_runs_are_refused(clustered, tmp_path):
    good = tmp_path / "good.packed"
    packed.pack(clustered, good)
    payload = lzma.decompress(good.read_bytes()[len(packed.MAGIC):])
    (n,) = struct.unpack("<I", payload[:4])
    header, body = json.loads(payload[4:4 + n]), payload[4 + n:]
    sizes = header["sizes"]
    offsets = np.cumsum([0, *sizes]).tolist()
    sections = [body[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    k = next(i for i, e in enumerate(header["tensors"]) if e.get("coding") == "runs")
    runs = 2 + 2 * k
    cases = {
        # one non-zero entry more than the gaps say
        "disagree": ({"nonzeros": header["tensors"][k]["nonzeros"] + 1}, sections[runs], "disagree|damaged"),
        # gaps that run past the end of the tensor
        "past end": ({}, bytes([254] * (len(sections[runs]) - header["tensors"][k]["nonzeros"]))
                     + sections[runs][len(sections[runs]) - header["tensors"][k]["nonzeros"]:], "past the end|disagree"),
        # a newer format
        "version": ({}, sections[runs], "format version"),
    }
    for name, (change, data, reason) in cases.items():
        entries = [dict(e) for e in header["tensors"]]
        entries[k].update(change)
        parts = list(sections)
        parts[runs] = data
        head = dict(header, tensors=entries, sizes=[len(p) for p in parts], version=9 if name == "version" else 2)
        write_packed(tmp_path / "bad.packed", head, parts)
        with pytest.raises(LoadError, match=reason):
            packed.unpack(tmp_path / "bad.packed")


def test_a_tensor_of_zeros_packs_and_restores(tmp_path):
    """A fresh YOLOv8n's folded biases are all zeros: as runs they took no bytes (trailing zeros are
    implied) and the reader's bound (a gap byte holds at most 255 zeros) refused the file the
    writer had just written ('model.3.conv.bias' claims dims [64] that its bytes do not hold)."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.zeros((64, 64), np.float32)
    w.flat[::50] = 0.5  # 2 % non-zero, spread: stored as runs
    w[-1] = 0.0  # with a tail of zeros
    b = np.zeros(64, np.float32)  # all zeros
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "zeros.packed"
    _, entries = packed.packed_bytes(proto)
    assert {e["name"]: e.get("coding", "bits") for e in entries} == {"w": "runs", "b": "bits"}
    packed.pack(proto, path)
    back = packed.unpack(path)
    restored = {t.name: numpy_helper.to_array(t) for t in back.graph.initializer}
    assert np.array_equal(restored["w"], w) and np.array_equal(restored["b"], b)
