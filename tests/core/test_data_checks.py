"""Hostile data files stay harmless: real crafted files on disk, refused in one line, before any
array is read, without blocking. The `write_*` generators are plain functions so a fuzzer can
reuse them (`from tests.core.test_data_checks import write_npz_bomb, ...`)."""

import io
import os
import pickle
import socket
import struct
import subprocess
import sys
import threading
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studio.core import data_checks
from studio.core.data import from_image_folder, from_npz, open_data
from studio.core.errors import StudioError
from studio.core.data import Data
from studio.core.evaluate import measure
from studio.core.model import TORCH, Model
from studio.core.sensitivity import prune_sensitivity

REPO = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------------------------------------
# Generators of hostile files (reusable by a fuzzer)
# ---------------------------------------------------------------------------------------------


def npy_header(dtype, shape) -> bytes:
    """The bytes numpy writes before an array's data (magic, version, header dict, padding)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": tuple(shape)})
    return buf.getvalue()


def write_zip(path: Path, members: list[tuple[str, bytes, int, int, int]]) -> Path:
    """A zip written by hand from (name, stored bytes, method (0 stored, 8 deflate), declared
    uncompressed size, crc): the directory says whatever the caller wants it to say."""
    local, central = b"", b""
    for name, raw, method, size, crc in members:
        name_b = name.encode()
        offset = len(local)
        local += struct.pack("<4s2B4HL2L2H", b"PK\x03\x04", 20, 0, 0, method, 0, 0x21, crc,
                             len(raw), size, len(name_b), 0) + name_b + raw
        central += struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 20, 3, 20, 0, 0, method, 0, 0x21,
                               crc, len(raw), size, len(name_b), 0, 0, 0, 0, 0, offset) + name_b
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central),
                      len(local), 0)
    path.write_bytes(local + central + end)
    return path


def write_npz_bomb(path: Path, zeros: int = 2 << 30, chunk: int = 16 << 20, crc: bool = False) -> Path:
    """A real .npz zip bomb: one member 'x.npy' with an honest header (float32, shape
    (zeros // 4,)) followed by `zeros` zero bytes, deflated to ~1/1000 (2 GiB -> ~2 MiB).

    Built in milliseconds without compressing 2 GiB: a fully flushed deflate segment of `chunk`
    zeros never refers back, so repeating it is a valid stream. np.load would allocate and
    inflate the whole array. `crc=True` also computes the CRC (0.3 s per GiB) so the zip is
    valid to the end; without it numpy notices only after inflating everything."""
    assert zeros % chunk == 0
    header = npy_header(np.float32, (zeros // 4,))
    head = zlib.compressobj(9, zlib.DEFLATED, -15)
    seg = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = seg.compress(bytes(chunk)) + seg.flush(zlib.Z_FULL_FLUSH)
    raw = b"".join([head.compress(header) + head.flush(zlib.Z_FULL_FLUSH),
                    *[segment] * (zeros // chunk),
                    zlib.compressobj(9, zlib.DEFLATED, -15).flush()])  # the final, empty block
    value = 0
    if crc:
        value = zlib.crc32(header)
        block = bytes(chunk)
        for _ in range(zeros // chunk):
            value = zlib.crc32(block, value)
    return write_zip(path, [("x.npy", raw, 8, len(header) + zeros, value)])


def write_forged_header_npz(path: Path, shape=(10**12,), dtype=np.float64) -> Path:
    """A tiny, otherwise valid .npz whose 'x.npy' header claims `shape` (7.3 TiB by default):
    numpy allocates the header's shape before reading the data."""
    body = npy_header(dtype, shape) + bytes(16)
    return write_zip(path, [("x.npy", body, 0, len(body), zlib.crc32(body))])


def write_pickle_as_npz(path: Path, marker: Path) -> Path:
    """A pickle named .npz whose loading would create `marker` (i.e. run code)."""

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path.write_bytes(pickle.dumps(Payload()))
    return path


def write_png_bomb(path: Path, width=30000, height=30000) -> Path:
    """A PNG whose header claims width x height pixels (900 M by default) with no pixel data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def write_truncated_png(path: Path, size=64) -> Path:
    """A real PNG of noise cut in half."""
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def make_special_file(path: Path, kind: str):
    """A FIFO, a Unix socket or a symlink to a character device at `path`; returns what must be
    kept alive (the bound socket) or None."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        return sock
    elif kind == "device":
        path.symlink_to("/dev/zero")
    return None


def save_images(folder: Path, count: int, size=8) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(np.full((size, size), 40 * i % 256, np.uint8)).save(folder / f"{i}.png")


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def refused(fn, *args, match: str) -> str:
    """fn(*args) raises a one-line StudioError matching `match`; returns the message."""
    with pytest.raises(StudioError, match=match) as info:
        fn(*args)
    message = str(info.value)
    assert len(message.splitlines()) == 1, message
    return message


def within(seconds: float, fn, *args, unblock: Path | None = None):
    """fn(*args) in a thread that must finish within `seconds`; if it hangs on the FIFO
    `unblock`, a writer is opened so the thread ends, and the test fails."""
    outcome = {}

    def run():
        try:
            outcome["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        if unblock is not None:
            fd = os.open(unblock, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        thread.join(5)
        pytest.fail(f"{fn.__name__} blocked for more than {seconds} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def peak_bytes(fn, *args) -> int:
    """Peak of Python and numpy allocations (numpy reports to tracemalloc) while fn runs."""
    tracemalloc.start()
    try:
        try:
            fn(*args)
        except StudioError:
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ---------------------------------------------------------------------------------------------
# .npz archives
# ---------------------------------------------------------------------------------------------


def test_the_bomb_generator_makes_a_real_bomb(tmp_path):
    """Same generator, 128 MiB: it is a valid zip whose member really inflates to the size its
    header says (streamed here, a MiB at a time), from ~1/1000 of it on disk."""
    import zipfile

    path = write_npz_bomb(tmp_path / "bomb.npz", zeros=128 << 20, crc=True)
    assert path.stat().st_size < (128 << 20) // 500
    with zipfile.ZipFile(path) as zf, zf.open("x.npy") as f:
        assert np.lib.format.read_magic(f) == (1, 0)
        assert np.lib.format.read_array_header_1_0(f)[0] == ((128 << 20) // 4,)
        total = 0
        while block := f.read(1 << 20):  # CRC checked at the end by zipfile
            assert block.count(0) == len(block)
            total += len(block)
    assert total == 128 << 20
    refused(from_npz, path, match=r"bomb\.npz: would inflate .* zip bomb")


def test_a_2_gib_npz_bomb_is_refused_without_allocating(tmp_path):
    path = write_npz_bomb(tmp_path / "bomb.npz")  # 2 MiB on disk -> 2 GiB
    assert path.stat().st_size < 3 << 20
    message = refused(from_npz, path, match=r"would inflate 2\.\d MiB to 2\.0 GiB .*refused")
    assert "bomb.npz" in message
    assert peak_bytes(from_npz, path) < 16 << 20


def test_a_forged_npy_header_is_refused_without_allocating(tmp_path):
    path = write_forged_header_npz(tmp_path / "forged.npz")
    refused(from_npz, path, match=r"forged\.npz: x: its header promises 7\.3 TiB .* forged")
    assert peak_bytes(from_npz, path) < 16 << 20


def test_arrays_beyond_the_memory_budget_are_refused(tmp_path, monkeypatch):
    np.savez(tmp_path / "big.npz", x=np.zeros((1000, 600), np.float32))  # 2.3 MiB
    monkeypatch.setattr(data_checks, "MAX_LOAD_BYTES", 1 << 20)
    refused(from_npz, tmp_path / "big.npz", match=r"big\.npz: its arrays need 2\.3 MiB .* 1\.0 MiB allowed")


def test_files_that_are_not_npz_archives_are_refused_and_never_unpickled(tmp_path):
    (tmp_path / "text.npz").write_text("x,y\n1,2\n")
    refused(from_npz, tmp_path / "text.npz", match=r"text\.npz: not a \.npz archive")
    np.save(tmp_path / "plain.npy", np.zeros(3))
    os.rename(tmp_path / "plain.npy", tmp_path / "plain.npz")  # a lone .npy, renamed
    refused(from_npz, tmp_path / "plain.npz", match="not a .npz archive")
    marker = tmp_path / "code-ran"
    write_pickle_as_npz(tmp_path / "pickle.npz", marker)
    refused(open_data, str(tmp_path / "pickle.npz"), match="not a .npz archive")
    assert not marker.exists()


def test_members_that_are_not_numeric_arrays_are_refused(tmp_path):
    np.savez(tmp_path / "obj.npz", x=np.zeros(4), y=np.array([1, "a", None], dtype=object))
    refused(from_npz, tmp_path / "obj.npz", match=r"obj\.npz: y is an object array .* unpickle")
    body = b"hello"
    write_zip(tmp_path / "extra.npz", [("notes.txt", body, 0, len(body), zlib.crc32(body))])
    refused(from_npz, tmp_path / "extra.npz", match="member 'notes.txt' is not a .npy array")
    junk = b"\x93NUMPY\x01\x00" + b"\xff" * 40  # a .npy magic, then garbage for a header
    write_zip(tmp_path / "junk.npz", [("x.npy", junk, 0, len(junk), zlib.crc32(junk))])
    refused(from_npz, tmp_path / "junk.npz", match=r"junk\.npz: x: not a readable \.npy array")


@pytest.mark.parametrize("kind", ["fifo", "socket", "device"])
def test_a_special_file_named_npz_is_refused_at_once(tmp_path, kind):
    path = tmp_path / "data.npz"
    keep = make_special_file(path, kind)
    try:
        with pytest.raises(StudioError, match=r"data\.npz: is a .*, not a regular file; refused"):
            within(5, open_data, str(path), unblock=path if kind == "fifo" else None)
    finally:
        if keep is not None:
            keep.close()


def test_a_missing_npz_is_named(tmp_path):
    refused(open_data, str(tmp_path / "gone.npz"), match=r"gone\.npz: no such file")


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": np.array([[1.0, np.nan], [np.nan, 2.0], [3.0, 4.0]])}, r"d\.npz: x has 2 NaN values; refused"),
        ({"x": np.array([[1.0, np.inf], [-np.inf, 2.0]])}, r"x has 2 infinite values; refused"),
        ({"x": np.array([[np.nan, np.inf], [0, 0]])}, r"x has 1 NaN and 1 infinite values"),
        ({"x": np.array([[1e300], [0.0]])}, r"x has 1 values too large for float32"),
        ({"x": np.ones((3, 2), np.complex64)}, r"x is complex \(complex64\)"),
        ({"x": np.array(3.0)}, r"x is a single value"),
        ({"x": np.zeros((4, 2)), "y": np.array([0, 1, -1, 2])}, r"y has 1 negative labels \(lowest -1\)"),
        ({"x": np.zeros((3, 2)), "y": np.array([0, 1.5, 2])}, r"y has 1 non-integer labels"),
        ({"x": np.zeros((3, 2)), "y": np.array([0, np.nan, 2])}, r"y has 1 NaN values"),
        ({"x": np.zeros((3, 2)), "y": np.zeros((3, 10), int)}, r"y: labels must be one class index per"),
        ({"x": np.zeros((2, 2)), "y": np.array([0, 10**12])}, r"y has a label 1000000000000"),
        ({"x": np.zeros((2, 2)), "y": np.array([0, 2**63 + 5], np.uint64)}, r"y has a label"),
        ({"x": np.zeros((2, 2)), "y": np.array([True, False])}, r"labels must be integers, not bool"),
        ({"x": np.zeros((4, 2)), "y": np.zeros(5, int)}, r"'x' has 4 samples but 'y' has 5"),
        ({"x_train": np.zeros((4, 2)), "x_test": np.zeros((2, 2)), "y_train": np.zeros(3, int),
          "y_test": np.zeros(2, int)}, r"'x_train' has 4 samples but 'y_train' has 3"),
        ({"x_train": np.zeros((4, 2)), "x_test": np.zeros((2, 3))}, r"'x_train' has samples of shape \(2,\)"),
        ({"x_train": np.zeros((4, 2)), "x_test": np.full((2, 2), np.nan)}, r"x_test has 4 NaN values"),
    ],
)
def test_bad_values_are_refused_at_load_naming_the_array(tmp_path, arrays, message):
    np.savez(tmp_path / "d.npz", **arrays)
    refused(from_npz, tmp_path / "d.npz", match=message)


def test_good_npz_still_loads_with_its_dtypes_converted(tmp_path):
    x = np.arange(40, dtype=np.uint8).reshape(10, 4)
    np.savez_compressed(tmp_path / "ok.npz", x=x, y=np.arange(10, dtype=np.uint8) % 2)
    data = from_npz(tmp_path / "ok.npz")
    assert data.x_test.dtype == np.float32 and data.y_test.dtype == np.int64
    assert len(data.x_train) + len(data.x_test) == 10
    np.savez_compressed(tmp_path / "zeros.npz", x=np.zeros((2000, 1000), np.float32))  # 8 MB, 1000x
    assert len(from_npz(tmp_path / "zeros.npz").x_test) == 400  # under the floor: not a bomb


@pytest.mark.slow  # the first torch -> ONNX export in a process takes ~5 s
def test_labels_beyond_the_models_outputs_are_refused_when_measuring():
    """The number of classes is known once the model runs: a label it cannot output is refused
    (in either split; the split is the user's or the stratified one) before any accuracy is shown."""
    import torch

    model = Model(torch.nn.Linear(4, 10).eval(), TORCH, (1, 4))  # 10 outputs: classes 0..9
    x = np.zeros((8, 4), np.float32)
    for y_train, y_test in (([0, 1, 2, 12], [0, 1, 2, 3]), ([0, 1, 2, 3], [0, 1, 10, 11])):
        data = Data("d", x[:4], x[4:], np.array(y_train), np.array(y_test))
        with pytest.raises(StudioError, match=r"labels >= 10 \(highest 1[0-2]\), but the model has 10 out"):
            measure(model, data)
        with pytest.raises(StudioError, match=r"but the model has 10 outputs"):
            next(prune_sensitivity(model, data))
    good = measure(model, Data("d", x[:4], x[4:], np.array([0, 1, 2, 9]), np.array([0, 1, 2, 9])))
    assert good.accuracy is not None and good.samples == 4


# ---------------------------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "socket", "device"])
def test_a_special_file_named_png_in_an_image_folder_is_refused_at_once(tmp_path, kind):
    save_images(tmp_path / "a", 3)
    save_images(tmp_path / "b", 3)
    keep = make_special_file(tmp_path / "b" / "9.png", kind)
    try:
        with pytest.raises(StudioError, match=r"9\.png: is a .*, not a regular file; refused"):
            within(5, from_image_folder, tmp_path, (1, 1, 8, 8),
                   unblock=tmp_path / "b" / "9.png" if kind == "fifo" else None)
    finally:
        if keep is not None:
            keep.close()


def test_image_bombs_truncated_and_fake_images_are_named(tmp_path):
    save_images(tmp_path / "a", 3)
    save_images(tmp_path / "b", 3)
    bomb = write_png_bomb(tmp_path / "b" / "bomb.png")
    refused(from_image_folder, tmp_path, (1, 1, 8, 8),
            match=r"bomb\.png: not a readable image \(Image size")
    bomb.unlink()
    write_png_bomb(tmp_path / "b" / "warned.png", 10000, 10000)  # 100 M: PIL would only warn
    refused(from_image_folder, tmp_path, (1, 1, 8, 8),
            match=r"warned\.png: not a readable image \(Image size")
    (tmp_path / "b" / "warned.png").unlink()
    write_png_bomb(tmp_path / "b" / "big.png", 3000, 3000)  # 9 M pixels: under PIL's bound ...
    refused(data_checks.open_image, tmp_path / "b" / "big.png", 1_000_000,
            match=r"big\.png: 3000x3000 pixels, more than 1,000,000: a decompression bomb")
    (tmp_path / "b" / "big.png").unlink()  # ... where the studio's own bound applies
    write_truncated_png(tmp_path / "a" / "cut.png")
    refused(from_image_folder, tmp_path, (1, 1, 8, 8),
            match=r"cut\.png: not a readable image \(image file is truncated")
    (tmp_path / "a" / "cut.png").write_text("not a picture")
    refused(from_image_folder, tmp_path, (1, 1, 8, 8),
            match=r"cut\.png: not a readable image \(cannot identify")
    (tmp_path / "a" / "cut.png").unlink()
    assert len(from_image_folder(tmp_path, (1, 1, 8, 8)).x_test) == 2  # the good ones still load


def test_an_image_folder_is_bounded_before_any_image_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(data_checks, "MAX_IMAGES", 5)
    save_images(tmp_path / "a", 3)
    (tmp_path / "b").mkdir()
    for i in range(3):  # not even images: the listing refuses before opening any
        make_special_file(tmp_path / "b" / f"{i}.png", "fifo")
    refused(lambda: within(5, from_image_folder, tmp_path, (1, 1, 8, 8)),
            match=r"more than 5 images; at most 5 are read")
    # the memory bound: float32 samples of the model's input within memory_budget()
    monkeypatch.setattr(data_checks, "MAX_LOAD_BYTES", 10 * 4 * 3 * 224 * 224)
    assert data_checks.image_count_bound((3, 224, 224)) == min(5, 10)
    monkeypatch.setattr(data_checks, "MAX_IMAGES", 100)
    assert data_checks.image_count_bound((3, 224, 224)) == 10


def test_a_flat_image_folder_gets_the_same_checks(tmp_path, monkeypatch):
    """Unlabelled photos (no class subfolders): a FIFO named .png refused at once, a bomb and a
    truncated file named, the count bounded before any image is read."""
    save_images(tmp_path, 3)
    make_special_file(tmp_path / "9.png", "fifo")
    refused(lambda: within(5, from_image_folder, tmp_path, (1, 1, 8, 8), unblock=tmp_path / "9.png"),
            match=r"9\.png: is a FIFO \(named pipe\), not a regular file; refused")
    (tmp_path / "9.png").unlink()
    write_png_bomb(tmp_path / "bomb.png")
    refused(from_image_folder, tmp_path, (1, 1, 8, 8), match=r"bomb\.png: not a readable image \(Image size")
    (tmp_path / "bomb.png").unlink()
    write_truncated_png(tmp_path / "cut.png")
    refused(from_image_folder, tmp_path, (1, 1, 8, 8), match=r"cut\.png: not a readable image \(image file is truncated")
    (tmp_path / "cut.png").unlink()
    data = from_image_folder(tmp_path, (1, 1, 8, 8))
    assert len(data.x_train) + len(data.x_test) == 3 and not data.labelled
    monkeypatch.setattr(data_checks, "MAX_IMAGES", 5)
    for i in range(3):  # not even images: the listing refuses before opening any
        make_special_file(tmp_path / f"f{i}.png", "fifo")
    refused(lambda: within(5, from_image_folder, tmp_path, (1, 1, 8, 8)),
            match=r"more than 5 images; at most 5 are read")


# ---------------------------------------------------------------------------------------------
# The command line: exit 2, one line
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: write_npz_bomb(p), "would inflate"),
        (lambda p: make_special_file(p, "fifo"), "is a FIFO (named pipe), not a regular file"),
        (lambda p: p.write_text("just text"), "not a .npz archive"),
        pytest.param(lambda p: np.savez(p, x=np.full((20, 64), np.nan, np.float32)), "x has 1280 NaN values",
                     marks=pytest.mark.slow),
        pytest.param(lambda p: np.savez(p, x=np.zeros((20, 64), np.float32), y=np.arange(20)), "labels >= 10",
                     marks=pytest.mark.slow),  # refused when the original model is measured
    ],
    ids=["bomb", "fifo", "text", "nan", "labels"],
)
def test_cli_refuses_bad_data_in_one_line(tmp_path, make, message):
    make(tmp_path / "bad.npz")
    assert (REPO / "recipes" / "int8.yaml").is_file()
    result = subprocess.run(
        [sys.executable, "-m", "studio", "run", "demo:mlp", "--recipe", str(REPO / "recipes" / "int8.yaml"),
         "--data", str(tmp_path / "bad.npz"), "--out", str(tmp_path / "out"), "--quiet"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,  # this worktree's studio:
        env={**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)})
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "out").exists()
