"""Model files -> expected format or expected one-line error (Netron's test/models.json idea):
every file is really written and read back; hostile files must not run or allocate."""

import os
import pickle
import struct
import time
import zipfile

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from studio.core import io
from studio.core.convert import predict, to_onnx_proto
from studio.core.errors import LoadError, TrustRequired

ARCH = "studio.core.zoo.nets:MLP"


@pytest.fixture(scope="module")
def mlp():
    from studio.core import zoo

    return zoo.load("mlp")


class Evil:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_onnx(tmp_path, mlp):
    path = tmp_path / "m.onnx"
    onnx.save_model(to_onnx_proto(mlp), str(path))
    return path


def write_onnx_sidecar(tmp_path, mlp, location="m.onnx.data"):
    path = tmp_path / "ext.onnx"
    onnx.save_model(to_onnx_proto(mlp), str(path), save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    if location != "m.onnx.data":
        proto = onnx.load_model(str(path), load_external_data=False)
        for init in proto.graph.initializer:
            for e in init.external_data:
                if e.key == "location":
                    e.value = location
        onnx.save_model(proto, str(path))
    return path


def onnx_with_tensor(tmp_path, dims, raw: bytes):
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=dims, raw_data=raw)
    node = helper.make_node("Add", ["x", "w"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [t])
    path = tmp_path / "lying.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    return path


def safetensors_lying(tmp_path):
    header = b'{"fc1.weight": {"dtype": "F32", "shape": [100000, 100000], "data_offsets": [0, 16]}}'
    path = tmp_path / "lying.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    return path


def onnx_sparse_bomb(tmp_path):
    """A sparse initializer storing one value of a 1e15-element dense tensor: onnxruntime would
    densify it when it builds a session."""
    values = helper.make_tensor("w", TensorProto.FLOAT, [1], [1.0])
    sparse = helper.make_sparse_tensor(values, helper.make_tensor("w_idx", TensorProto.INT64, [1], [0]), [100000] * 3)
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], sparse_initializer=[sparse])
    path = tmp_path / "sparse.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    return path


def sidecar_symlink_out(tmp_path, mlp):
    """The sidecar's name is inside the folder, but it is a symlink to a file outside it."""
    folder = tmp_path / "model"
    folder.mkdir()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(os.urandom(400_000))
    path = folder / "m.onnx"
    onnx.save_model(to_onnx_proto(mlp), str(path), save_as_external_data=True, location="m.data", size_threshold=0)
    (folder / "m.data").unlink()
    (folder / "m.data").symlink_to(secret)
    return path


def _edit_sidecar_model(tmp_path, mlp, edit):
    path = tmp_path / "ext.onnx"
    onnx.save_model(to_onnx_proto(mlp), str(path), save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    proto = onnx.load_model(str(path), load_external_data=False)
    edit(proto.graph.initializer[0])
    onnx.save_model(proto, str(path))
    return path


def sidecar_offset(tmp_path, mlp, offset):
    def edit(init):
        for e in init.external_data:
            if e.key == "offset":
                e.value = str(offset)
    return _edit_sidecar_model(tmp_path, mlp, edit)


def sidecar_dims_lie(tmp_path, mlp):
    def edit(init):
        init.dims[:] = [100000, 100000, 100000]
    return _edit_sidecar_model(tmp_path, mlp, edit)


CASES = {
    # name: (writer(tmp_path, mlp) -> path, kwargs, expected format or (error type, message part))
    "onnx": (write_onnx, {}, "onnx"),
    "onnx with sidecar": (write_onnx_sidecar, {}, "onnx"),
    "torchscript": (lambda t, m: (torch.jit.save(torch.jit.trace(m.obj, torch.zeros(1, 64)), str(t / "m.pt")), t / "m.pt")[1], {}, "torchscript"),
    "torch.export .pt2": (lambda t, m: (torch.export.save(torch.export.export(m.obj, (torch.zeros(2, 64),), dynamic_shapes=({0: torch.export.Dim("batch")},)), str(t / "m.pt2")), t / "m.pt2")[1], {}, "torch.export"),
    "state_dict + arch": (lambda t, m: (torch.save(m.obj.state_dict(), t / "w.pth"), t / "w.pth")[1], {"arch": ARCH}, "state_dict"),
    "checkpoint dict + arch": (lambda t, m: (torch.save({"epoch": 3, "state_dict": m.obj.state_dict()}, t / "c.ckpt"), t / "c.ckpt")[1], {"arch": ARCH}, "state_dict"),
    "safetensors + arch": (lambda t, m: (__import__("safetensors.torch").torch.save_file(m.obj.state_dict(), str(t / "w.safetensors")), t / "w.safetensors")[1], {"arch": ARCH}, "safetensors"),
    "arch from a .py file": (lambda t, m: (torch.save(m.obj.state_dict(), t / "w.pt"), t / "w.pt")[1], {"arch": "studio/core/zoo/nets.py:MLP"}, "state_dict"),
    "pickled module, trusted": (lambda t, m: (torch.save(m.obj, t / "whole.pt"), t / "whole.pt")[1], {"trust": True}, "pickle"),
    # refusals
    "state_dict without arch": (lambda t, m: (torch.save(m.obj.state_dict(), t / "w.pt"), t / "w.pt")[1], {}, (LoadError, "--arch")),
    "state_dict, wrong arch": (lambda t, m: (torch.save(m.obj.state_dict(), t / "w.pt"), t / "w.pt")[1], {"arch": "studio.core.zoo.nets:CNN"}, (LoadError, "does not fit")),
    "pickled module, untrusted": (lambda t, m: (torch.save(m.obj, t / "whole.pt"), t / "whole.pt")[1], {}, (TrustRequired, "--trust")),
    "sidecar outside the folder": (lambda t, m: write_onnx_sidecar(t, m, "../secret.bin"), {}, (LoadError, "outside the model's folder")),
    "sidecar absolute path": (lambda t, m: write_onnx_sidecar(t, m, "/etc/passwd"), {}, (LoadError, "outside the model's folder")),
    "truncated onnx": (lambda t, m: (t / "cut.onnx").write_bytes(write_onnx(t, m).read_bytes()[:5000]) and t / "cut.onnx", {}, (LoadError, "cut.onnx")),
    "random bytes": (lambda t, m: (t / "r.onnx").write_bytes(np.random.default_rng(1).bytes(4096)) and t / "r.onnx", {}, (LoadError, "r.onnx")),
    "empty file": (lambda t, m: (t / "e.onnx").write_bytes(b"") or t / "e.onnx", {}, (LoadError, "empty")),
    "a text file": (lambda t, m: (t / "notes.pt").write_text("hello, not a model\n") and t / "notes.pt", {}, (LoadError, "not a model file")),
    "a folder": (lambda t, m: t, {}, (LoadError, "folder")),
    "onnx tensor claiming 1e15 floats": (lambda t, m: onnx_with_tensor(t, [100000, 100000, 100000], bytes(16)), {}, (LoadError, "refused")),
    "safetensors lying header": (lambda t, m: safetensors_lying(t), {"arch": ARCH}, (LoadError, "refused")),
    "a zip that is not torch": (lambda t, m: (zipfile.ZipFile(t / "x.pt", "w").writestr("a.txt", "hi"), t / "x.pt")[1], {}, (LoadError, "not a PyTorch file")),
    "onnx tensor with dims but no data": (lambda t, m: onnx_with_tensor(t, [100000, 100000, 100000], b""), {}, (LoadError, "holds 0 bytes")),
    "onnx sparse initializer densifying to petabytes": (lambda t, m: onnx_sparse_bomb(t), {}, (LoadError, "densify")),
    "sidecar symlink escaping the folder": (lambda t, m: sidecar_symlink_out(t, m), {}, (LoadError, "outside the model's folder")),
    "sidecar offset beyond its file": (lambda t, m: sidecar_offset(t, m, 10**12), {}, (LoadError, "more bytes than")),
    "sidecar tensor dims lie": (lambda t, m: sidecar_dims_lie(t, m), {}, (LoadError, "more bytes than")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_model_files(tmp_path, mlp, case):
    writer, kwargs, expected = CASES[case]
    path = writer(tmp_path, mlp)
    if isinstance(expected, str):
        model = io.load(path, **kwargs)
        assert model.format == expected
        x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
        np.testing.assert_allclose(predict(model, x), predict(mlp, x), rtol=1e-4, atol=1e-5)
    else:
        error, message = expected
        start = time.perf_counter()
        with pytest.raises(error) as info:
            io.load(path, **kwargs)
        assert message in str(info.value)
        assert "\n" not in str(info.value)
        assert time.perf_counter() - start < 5, "refusing took too long (allocated?)"


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
def test_a_malicious_pickle_never_runs(tmp_path, suffix):
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil{suffix}"
    torch.save({"weights": Evil(marker)}, path)
    with pytest.raises(TrustRequired):
        io.load(path)
    assert not marker.exists(), "loading ran code from the file"
    # a legacy (non-zip) pickle too
    legacy = tmp_path / f"legacy{suffix}"
    legacy.write_bytes(pickle.dumps(Evil(marker)))
    with pytest.raises(LoadError):
        io.load(legacy)
    assert not marker.exists()


def test_format_comes_from_content_not_suffix(tmp_path, mlp):
    path = tmp_path / "actually-onnx.pt"
    onnx.save_model(to_onnx_proto(mlp), str(path))
    assert io.detect_format(path) == "onnx"
    assert io.load(path).input_shape == (1, 64)


def test_zip_bomb_is_refused(tmp_path):
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", bytes(200_000_000))
    with pytest.raises(LoadError, match="refused"):
        io.load(path)


def test_input_shape_from_onnx_and_override(tmp_path, mlp):
    path = write_onnx(tmp_path, mlp)
    assert io.load(path).input_shape == (1, 64)
    assert io.load(path, input_shape=(1, 8, 8)).input_shape == (1, 8, 8)


def test_file_filter_lists_every_format():
    text = io.detect.file_filter()
    for suffix in (".onnx", ".pt2", ".safetensors", ".pth"):
        assert f"*{suffix}" in text


def test_an_arch_file_inside_a_package_says_how_to_name_it(tmp_path):
    """facenet-pytorch's models/mtcnn.py imports `.utils.detect_face`: given as a file path it fails
    with Python's 'attempted relative import with no known parent package', which says nothing
    about what to type instead."""
    from studio.core.errors import LoadError
    from studio.core.io.torch_io import resolve_arch

    package = tmp_path / "facepkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("SIZE = 3\n")
    (package / "nets.py").write_text("from torch import nn\nfrom .helpers import SIZE\n\n"
                                     "class Net(nn.Module):\n    def __init__(self):\n"
                                     "        super().__init__()\n        self.fc = nn.Linear(SIZE, 2)\n")
    with pytest.raises(LoadError, match="relative import.*PYTHONPATH and give --arch package.module:Class"):
        resolve_arch(f"{package / 'nets.py'}:Net")
