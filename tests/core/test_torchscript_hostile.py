"""Crafted TorchScript files: refused in one line, and a crash in torch's parser stays in a child."""

import zipfile

import pytest
import torch

from studio.core.io import LoadError, load
from studio.core.io import torch_io


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    path = tmp_path_factory.mktemp("ts") / "linear.pt"
    torch.jit.trace(torch.nn.Linear(4, 2).eval(), torch.randn(1, 4)).save(str(path))
    return path


def with_code(src, dst, edit):
    """Copy a TorchScript archive with `edit(bytes) -> bytes` applied to its forward's source."""
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst, "w") as b:
        for info in a.infolist():
            blob = a.read(info)
            if "/code/" in info.filename and info.filename.endswith(".py"):
                blob = edit(blob)
            b.writestr(info, blob)
    return dst


def deeply_nested(blob: bytes) -> bytes:
    return blob.replace(b"return", b"_x = " + b"(" * 50_000 + b"1" + b")" * 50_000 + b"\n  return", 1)


def test_a_plain_file_loads(plain):
    model = load(plain)
    x = torch.randn(3, 4)
    assert model.format == "torchscript" and model.obj(x).shape == (3, 2)


def test_deep_nesting_is_refused_before_torch_parses_it(plain, tmp_path):
    path = with_code(plain, tmp_path / "deep.pt", deeply_nested)
    with pytest.raises(LoadError, match=r"nests 50,000 brackets deep.*refused"):
        load(path)


@pytest.mark.slow
def test_a_parser_crash_is_caught_in_the_child(plain, tmp_path, monkeypatch):
    """With the static bound lifted, torch's parser really segfaults: in the child, not here."""
    monkeypatch.setattr(torch_io, "MAX_NESTING", 10**9)
    path = with_code(plain, tmp_path / "deep.pt", deeply_nested)
    with pytest.raises(LoadError) as err:
        load(path)
    assert "crashed torch (SIGSEGV)" in str(err.value) and "\n" not in str(err.value)


def test_from_file_in_torchscript_is_refused(plain, tmp_path):
    path = with_code(plain, tmp_path / "ff.pt",
                     lambda b: b.replace(b"return", b"_f = torch.from_file(\"/etc/passwd\", True, 8)\n  return", 1))
    with pytest.raises(LoadError, match="from_file"):
        load(path)
