"""Every file the studio writes goes through fileio.atomic_path: a write that fails for real
(the disk full, the destination a folder) leaves the user's file byte for byte and no temporary;
temporaries of a killed studio are removed at the next write to their folder; a user's file
that merely looks similar is never touched."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import time

import pytest

from studio.core import export, packed
from studio.core.errors import StudioError
from studio.core.fileio import atomic_write_text, remove_stale_temporaries
from studio.core.training import drain


@contextlib.contextmanager
def disk_full_after(limit: int):
    """A real write failure: the kernel refuses to grow any file of this process past `limit`
    bytes (EFBIG, as a full disk gives ENOSPC) while in the block."""
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the signal kills us
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old_limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)


# (onnx_int8 is left out: onnxruntime's quantizer writes to the system's temporary folder first)
@pytest.mark.parametrize("fmt", ["onnx", "onnx_fp16", "torchscript", "torch_export", "safetensors", "packed"])
def test_export_failing_midway_keeps_the_users_file_and_leaves_no_temporary(demo_cnn, tmp_path, fmt):
    path = tmp_path / export.default_name(demo_cnn, fmt)
    path.write_bytes(b"the user's file")
    # torch's own file writers abort the whole process (std::terminate) on a full disk: the
    # export must have written through Python for this test to get past this line
    with disk_full_after(64 * 1024), pytest.raises(StudioError) as caught:  # the demo CNN is ~600 KB
        drain(export.export(demo_cnn, path, fmt))
    # fp16 checks its model in a child first, so the full disk shows at that temporary copy
    assert "cannot write" in str(caught.value) and "File too large" in str(caught.value)
    assert "\n" not in str(caught.value)
    assert path.read_bytes() == b"the user's file"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_packed_write_failing_leaves_no_temporary(demo_cnn, tmp_path):
    with disk_full_after(64 * 1024), pytest.raises(StudioError):
        packed.pack(demo_cnn, tmp_path / "cnn.packed")
    assert list(tmp_path.iterdir()) == []


def test_export_onto_a_folder_is_refused_in_one_line_and_changes_nothing(demo_mlp, tmp_path):
    folder = tmp_path / "mlp.onnx"
    folder.mkdir()
    (folder / "inside.txt").write_text("mine")
    with pytest.raises(StudioError, match="Is a directory") as caught:
        drain(export.export(demo_mlp, folder, "onnx"))
    assert "\n" not in str(caught.value)
    assert [p.name for p in tmp_path.iterdir()] == ["mlp.onnx"] and os.listdir(folder) == ["inside.txt"]


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def age(path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_stale_temporaries_are_removed_at_the_next_write_and_nothing_else(tmp_path):
    gone, alive = dead_pid(), os.getpid()
    files = {
        # the studio's own, left by a killed writer: removed
        f".model.k3x9_q2a.{gone}.partial.onnx": (600, True),  # writer gone, idle 10 min
        ".model.abcdefgh.partial.pt2": (2 * 3600, True),  # an older version's, idle 2 hours
        f".report.zzzzzzzz.{alive}.partial.html": (2 * 3600, True),  # idle 2 hours
        # the studio's own but maybe still being written: kept
        f".model.k3x9_q2b.{gone}.partial.onnx": (30, False),  # idle 30 s only
        f".model.k3x9_q2c.{alive}.partial.onnx": (600, False),  # its writer runs
        # the user's, however old: kept
        "model.partial.onnx": (10**6, False),
        ".model.partial.onnx": (10**6, False),
        ".model.onnx.tmp": (10**6, False),
        ".model.ABCDEFGH.partial.onnx": (10**6, False),  # mkstemp never makes capitals
        ".model.abcdefg.partial.onnx": (10**6, False),  # 7 characters
        "model.abcdefgh.partial.onnx": (10**6, False),  # not hidden
        f".model.abcdefgh.{gone}.partial.onnx.bak": (10**6, False),
    }
    for name, (seconds, _) in files.items():
        (tmp_path / name).write_bytes(b"x")
        age(tmp_path / name, seconds)
    # a folder with the user's file and a symlink, named like temporaries, are never removed either
    (tmp_path / f".dir.abcdefgh.{gone}.partial").mkdir()
    (tmp_path / f".dir.abcdefgh.{gone}.partial" / "photo.jpg").write_bytes(b"mine")
    age(tmp_path / f".dir.abcdefgh.{gone}.partial" / "photo.jpg", 10**6)
    age(tmp_path / f".dir.abcdefgh.{gone}.partial", 10**6)
    target = tmp_path / "target.onnx"
    target.write_bytes(b"kept")
    (tmp_path / f".link.abcdefgh.{gone}.partial.onnx").symlink_to(target)

    atomic_write_text(tmp_path / "notes.txt", "hello")

    left = {p.name for p in tmp_path.iterdir()}
    assert left == {name for name, (_, removed) in files.items() if not removed} | {
        f".dir.abcdefgh.{gone}.partial", "target.onnx", f".link.abcdefgh.{gone}.partial.onnx", "notes.txt"}
    assert target.read_bytes() == b"kept" and (tmp_path / f".dir.abcdefgh.{gone}.partial" / "photo.jpg").is_file()
    assert remove_stale_temporaries(tmp_path) == []  # nothing further is ever taken


@pytest.mark.slow
def test_a_killed_export_is_cleaned_up_by_the_next_one(demo_mlp, tmp_path):
    """A studio killed (SIGKILL) mid-export leaves its temporary; the next export into that folder,
    once the writer has been gone a while, removes it."""
    script = ("import sys, os, signal\n"
              "from studio.core import export, zoo\n"
              "from studio.core.training import drain\n"
              "gen = export.export(zoo.load('mlp'), sys.argv[1], 'onnx')\n"
              "for fraction, _ in gen:\n"
              "    if fraction >= 0.6:  # the file is written, not yet verified\n"
              "        os.kill(os.getpid(), signal.SIGKILL)\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "mlp.onnx")], timeout=300)
    assert done.returncode == -signal.SIGKILL
    (orphan,) = tmp_path.iterdir()
    assert orphan.name.startswith(".mlp.") and orphan.name.endswith(".partial.onnx") and orphan.stat().st_size > 0
    drain(export.export(demo_mlp, tmp_path / "other.onnx", "onnx"))
    assert orphan.exists(), "a temporary whose writer just died may belong to another machine's writer"
    age(orphan, 600)  # gone 10 minutes: an orphan (under the hour a live writer gets)
    drain(export.export(demo_mlp, tmp_path / "other.onnx", "onnx"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.onnx"]


# ------------------------------------------------- models over 2 GB: the model and its sidecar
@pytest.fixture
def tiny_onnx(monkeypatch):
    """The tiny ONNX model, with the 2 GB limit lowered below its size so that export writes its
    weights to a sidecar as it does for a model over 2 GB."""
    from tests.core.test_inputs_unchanged import tiny_onnx

    model = tiny_onnx()
    monkeypatch.setattr(export, "TWO_GB", 10_000)
    assert model.obj.ByteSize() > export.TWO_GB
    return model


def test_export_with_a_sidecar_writes_both_and_leaves_the_model_unchanged(tiny_onnx, tmp_path):
    import numpy as np

    from studio.core import io
    from studio.core.convert import predict

    before = tiny_onnx.obj.SerializeToString()
    result = drain(export.export(tiny_onnx, tmp_path / "m.onnx", "onnx"))
    assert result.verified, result.message
    assert tiny_onnx.obj.SerializeToString() == before, "saving with external data emptied the model's tensors"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert (tmp_path / "m.onnx.data").stat().st_size > (tmp_path / "m.onnx").stat().st_size
    loaded = io.load(tmp_path / "m.onnx")
    x = tiny_onnx.example_input(8)
    assert np.array_equal(predict(loaded, x), predict(tiny_onnx, x))


def test_export_with_a_sidecar_failing_keeps_both_of_the_users_files(tiny_onnx, tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"the user's model")
    (tmp_path / "m.onnx.data").write_bytes(b"the user's weights")
    with disk_full_after(4096), pytest.raises(StudioError, match="File too large"):  # the sidecar is ~20 KB
        drain(export.export(tiny_onnx, tmp_path / "m.onnx", "onnx"))
    assert (tmp_path / "m.onnx").read_bytes() == b"the user's model"
    assert (tmp_path / "m.onnx.data").read_bytes() == b"the user's weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]


def test_a_stale_temporary_folder_is_removed_only_when_it_holds_files_alone(tmp_path):
    gone = dead_pid()
    ours, theirs = tmp_path / f".m.abcdefgh.{gone}.partial", tmp_path / f".n.abcdefgh.{gone}.partial"
    for folder in (ours, theirs):
        folder.mkdir()
        (folder / "m.onnx").write_bytes(b"x")
        age(folder / "m.onnx", 600)
        age(folder, 600)
    (theirs / "sub").mkdir()  # not what the studio makes: left alone
    age(theirs, 600)
    atomic_write_text(tmp_path / "notes.txt", "hello")
    assert sorted(p.name for p in tmp_path.iterdir()) == [theirs.name, "notes.txt"]


def test_a_long_file_name_is_written(tmp_path):
    path = tmp_path / ("é" * 120 + ".html")  # 244 bytes: a temporary with the whole stem would not fit
    atomic_write_text(path, "hello")
    assert path.read_text() == "hello" and len(os.listdir(tmp_path)) == 1
