"""Checks that keep a user's evaluation data harmless: bounded, never unpickled, never blocking.

Everything here runs BEFORE the expensive or dangerous step it guards: a .npz's members are
checked from the zip directory and each .npy header (dtype and shape) before any array is read;
a path is stat'ed before it is opened, so a FIFO or a device never blocks or streams forever; an
image's pixel count is checked from its header before it is decoded. Each refusal is one line
(StudioError) that names the file or array and the problem.
"""

from __future__ import annotations

import math
import os
import stat
import zipfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .errors import StudioError
from .units import fmt_bytes as _fmt_bytes

MAX_LOAD_BYTES = 4 << 30  # arrays held in memory at once, at most (also <= half the free memory)
MAX_RATIO = 100  # a member may inflate to at most 100x its compressed size ...
RATIO_FLOOR = 64 << 20  # ... plus 64 MiB, so small, very regular arrays (all zeros) still load
MAX_MEMBERS = 1_000  # arrays in one .npz
MAX_CLASSES = 1_000_000  # labels are class indices; np.bincount(y) allocates max(y) + 1 counts
MAX_IMAGES = 100_000  # files in an image folder (also bounded by memory: see image_count_bound)
NPY_HEADER_LIMIT = 10_000  # bytes of a .npy header numpy is asked to parse (its own default)


def memory_budget() -> int:
    """Bytes the arrays of one data set may take: MAX_LOAD_BYTES or half the available memory,
    whichever is less (the float32 copies and the split need about as much again)."""
    budget = MAX_LOAD_BYTES
    try:
        with open("/proc/meminfo") as f:  # Linux; elsewhere the fixed bound alone applies
            for line in f:
                if line.startswith("MemAvailable:"):
                    budget = min(budget, int(line.split()[1]) * 1024 // 2)
                    break
    except (OSError, ValueError, IndexError):
        pass
    return budget


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def regular_file(path: str | Path) -> os.stat_result:
    """The file's stat when `path` is a regular file (symlinks followed); otherwise one line.
    Reading a FIFO blocks until a writer comes, a device may never end: they are never opened."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise StudioError(f"{path}: no such file") from None
    except OSError as exc:
        raise StudioError(f"{path}: cannot read it ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise StudioError(f"{path.name}: is {_kind(st.st_mode)}, not a regular file; refused")
    return st


def open_regular(path: str | Path) -> BinaryIO:
    """`path` opened for binary reading, only if it is a regular file. It is stat'ed before the
    open and the open file is checked again (fstat), so a file swapped for a FIFO in between is
    refused too; O_NONBLOCK makes that open return at once instead of waiting for a writer."""
    path = Path(path)
    regular_file(path)
    nonblock = getattr(os, "O_NONBLOCK", 0)  # POSIX; Windows has no FIFOs to open by path
    try:
        fd = os.open(path, os.O_RDONLY | nonblock | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise StudioError(f"{path}: cannot read it ({exc.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise StudioError(f"{path.name}: is {_kind(st.st_mode)}, not a regular file; refused")
    if nonblock:
        os.set_blocking(fd, True)  # no effect on regular files; ordinary reads all the same
    return os.fdopen(fd, "rb")


def check_npz(file: str | Path | BinaryIO, name: str | None = None) -> None:
    """Refuse a .npz whose arrays could not be loaded safely, looking only at the zip directory
    and each member's .npy header (no array is read):

    - not a zip, an encrypted or damaged one, a member that is not a .npy array;
    - an object array (loading it would unpickle, i.e. run code from the file);
    - a header that promises more bytes than the member holds (a forged shape numpy would
      allocate up front);
    - a zip bomb: members inflating beyond MAX_RATIO x their compressed size + RATIO_FLOOR;
    - arrays needing more than memory_budget() once loaded (as float32 at least).
    """
    label = name or (Path(file).name if isinstance(file, (str, Path)) else "data")
    own = isinstance(file, (str, Path))
    fp = open_regular(file) if own else file
    try:
        fp.seek(0, os.SEEK_END)
        disk = fp.tell()
        fp.seek(0)
        if not zipfile.is_zipfile(fp):
            raise StudioError(f"{label}: not a .npz archive (a zip of .npy arrays, as numpy.savez "
                              "writes); refused")
        fp.seek(0)
        try:
            zf = zipfile.ZipFile(fp)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise StudioError(f"{label}: damaged .npz archive ({exc})") from None
        with zf:
            _check_members(zf, label, disk)
    finally:
        if own:
            fp.close()
        else:
            fp.seek(0)


def _check_members(zf: zipfile.ZipFile, label: str, disk: int) -> None:
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise StudioError(f"{label}: holds {len(infos)} members, more than {MAX_MEMBERS}; refused")
    declared = sum(i.file_size for i in infos)
    compressed = min(sum(i.compress_size for i in infos), disk)  # a forged directory cannot lie upward
    if declared > MAX_RATIO * compressed + RATIO_FLOOR:
        raise StudioError(
            f"{label}: would inflate {_fmt_bytes(compressed)} to {_fmt_bytes(declared)} "
            f"(more than {MAX_RATIO}x + {_fmt_bytes(RATIO_FLOOR)}): a zip bomb? refused")
    in_memory = 0
    for info in infos:
        if info.is_dir():
            continue
        if not info.filename.endswith(".npy"):
            raise StudioError(f"{label}: member '{info.filename}' is not a .npy array; refused")
        array = f"{label}: {info.filename[:-4]}"
        shape, dtype = _npy_header(zf, info, array)
        if dtype.hasobject:
            raise StudioError(f"{array} is an object array ({dtype}); loading it would unpickle "
                              "code from the file; refused")
        if any(d < 0 for d in shape):
            raise StudioError(f"{array} has a negative dimension in its shape {shape}; refused")
        count = math.prod(shape)
        nbytes = count * dtype.itemsize  # Python ints: a forged shape cannot overflow
        if nbytes > info.file_size:
            raise StudioError(
                f"{array}: its header promises {_fmt_bytes(nbytes)} ({dtype}, shape {shape}) but the "
                f"member holds {_fmt_bytes(info.file_size)}: forged or damaged; refused")
        in_memory += count * max(dtype.itemsize, 4)  # inputs become float32 copies
    budget = memory_budget()
    if in_memory > budget:
        raise StudioError(f"{label}: its arrays need {_fmt_bytes(in_memory)} in memory, more than the "
                          f"{_fmt_bytes(budget)} allowed; use a smaller sample of the data")


def _npy_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, array: str):
    """(shape, dtype) from a member's .npy header: at most a few KiB are decompressed."""
    from numpy.lib import format as npy

    try:
        with zf.open(info) as f:
            version = npy.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = npy.read_array_header_1_0(f, max_header_size=NPY_HEADER_LIMIT)
            elif version in ((2, 0), (3, 0)):
                shape, _, dtype = npy.read_array_header_2_0(f, max_header_size=NPY_HEADER_LIMIT)
            else:
                raise ValueError(f"unsupported .npy version {version}")
    except Exception as exc:  # noqa: BLE001 - a hostile header fails in many ways (tokenize, zlib, encrypted, ...)
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StudioError(f"{array}: not a readable .npy array ({msg}); refused") from None
    return tuple(int(d) for d in shape), np.dtype(dtype)


def check_array(name: str, arr, source: str, labels: bool = False) -> np.ndarray:
    """`arr` as the studio uses it (float32 inputs, int64 labels), or one line naming the array
    and what is wrong: not numeric, complex, NaN or infinite values, no batch axis; labels that
    are not whole class indices (negative, fractional, absurdly large) or not one per sample."""
    where = f"{source}: {name}"
    if not isinstance(arr, np.ndarray):
        raise StudioError(f"{where} is not an array ({type(arr).__name__}); refused")
    if arr.dtype.hasobject:
        raise StudioError(f"{where} is an object array; refused (loading it would need pickle)")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise StudioError(f"{where} is complex ({arr.dtype}); the studio needs real numbers; refused")
    if arr.ndim == 0:
        raise StudioError(f"{where} is a single value; it needs one entry per sample (batch first)")
    return _labels(where, arr) if labels else _inputs(where, arr)


def _inputs(where: str, arr: np.ndarray) -> np.ndarray:
    if not np.issubdtype(arr.dtype, np.number):
        raise StudioError(f"{where}: inputs must be numeric, not {arr.dtype}")
    _finite(where, arr)
    with np.errstate(over="ignore"):  # counted below, in the message
        x = arr.astype(np.float32, copy=False)
    if x is not arr and not np.isfinite(x).all():
        raise StudioError(f"{where} has {np.count_nonzero(~np.isfinite(x))} values too large for "
                          "float32; refused")
    return x


def _labels(where: str, arr: np.ndarray) -> np.ndarray:
    if arr.ndim != 1:
        raise StudioError(f"{where}: labels must be one class index per sample (shape (N,)), "
                          f"not shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating):
        _finite(where, arr)
        fractional = np.count_nonzero(arr != np.round(arr))
        if fractional:
            raise StudioError(f"{where} has {fractional} non-integer labels; labels must be "
                              "integers (class indices)")
    if not np.issubdtype(arr.dtype, np.integer):
        raise StudioError(f"{where}: labels must be integers, not {arr.dtype}")
    if arr.size:
        low, high = arr.min(), arr.max()
        if low < 0:
            raise StudioError(f"{where} has {np.count_nonzero(arr < 0)} negative labels (lowest "
                              f"{low}); labels are class indices 0, 1, 2, ...; refused")
        if high >= MAX_CLASSES:
            raise StudioError(f"{where} has a label {high}; labels are class indices below "
                              f"{MAX_CLASSES:,}; refused")
    return arr.astype(np.int64, copy=False)


def _finite(where: str, arr: np.ndarray) -> None:
    if not np.issubdtype(arr.dtype, np.floating) or np.isfinite(arr).all():
        return
    nan = np.count_nonzero(np.isnan(arr))
    inf = np.count_nonzero(np.isinf(arr))
    parts = [f"{nan} NaN" if nan else "", f"{inf} infinite" if inf else ""]
    raise StudioError(f"{where} has {' and '.join(p for p in parts if p)} values; refused")


def check_lengths(source: str, x_name: str, x: np.ndarray, y_name: str, y: np.ndarray | None) -> None:
    if y is not None and len(y) != len(x):
        raise StudioError(f"{source}: '{x_name}' has {len(x)} samples but '{y_name}' has {len(y)}")


def check_split(source: str, x_train: np.ndarray, x_test: np.ndarray) -> None:
    """A split given by the user: both parts must hold samples of one shape."""
    if x_train.shape[1:] != x_test.shape[1:]:
        raise StudioError(f"{source}: 'x_train' has samples of shape {x_train.shape[1:]} but 'x_test' "
                          f"of shape {x_test.shape[1:]}")


def check_labels_fit(labels: np.ndarray, outputs: int) -> None:
    """Labels are indices into the model's outputs: a label >= the number of outputs can never be
    predicted, so accuracy would be silently wrong."""
    if labels is not None and len(labels) and outputs > 1 and labels.max() >= outputs:
        bad = int(np.count_nonzero(labels >= outputs))
        raise StudioError(f"the data has {bad} labels >= {outputs} (highest {labels.max()}), but the "
                          f"model has {outputs} outputs (classes 0..{outputs - 1}); check the labels")


def image_count_bound(per_sample: tuple[int, ...]) -> int:
    """Images an image folder may hold: MAX_IMAGES, and no more than memory_budget() of float32
    samples of the model's input shape."""
    per = 4 * max(1, math.prod(per_sample))
    return max(2, min(MAX_IMAGES, memory_budget() // per))


def list_images(root: Path, classes: list[str], suffixes: set[str], bound: int) -> list[tuple[Path, int]]:
    """(file, class index) for the image files in root/<class>/, sorted; refused as soon as more
    than `bound` are seen (the listing stops there: a folder of millions is not read to the end)."""
    found = []
    for label, cls in enumerate(classes):
        files = []
        with os.scandir(root / cls) as entries:
            for entry in entries:
                if not entry.name.startswith(".") and Path(entry.name).suffix.lower() in suffixes:
                    files.append(Path(entry.path))
                    if len(found) + len(files) > bound:
                        raise StudioError(f"{root}: more than {bound:,} images; at most {bound:,} are "
                                          "read (memory and time); use a smaller sample")
        found += [(f, label) for f in sorted(files)]
    return found


def folder_contents(root: Path, suffixes: set[str], bound: int) -> tuple[list[str], list[Path]]:
    """(subfolder names, loose image files) directly in `root`, both sorted; nothing below it is
    listed and nothing outside it is named (entries are the folder's own). Refused as soon as more
    than `bound` loose images are seen. Hidden entries (.ipynb_checkpoints, macOS's ._photo.jpg
    resource forks) are neither classes nor images."""
    folders, images = [], []
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():  # symlinks followed, as for the class folders
                folders.append(entry.name)
            elif Path(entry.name).suffix.lower() in suffixes:  # opened later only if a regular file
                images.append(Path(entry.path))
                if len(images) > bound:
                    raise StudioError(f"{root}: more than {bound:,} images; at most {bound:,} are "
                                      "read (memory and time); use a smaller sample")
    return sorted(folders), sorted(images)


def open_image(path: Path, max_pixels: int | None = None):
    """A decoded PIL image from a regular file; refused, naming the file, if its header claims
    more pixels than PIL's decompression-bomb bound (Image.MAX_IMAGE_PIXELS) or if it is
    truncated or undecodable. The file is closed on return; the caller closes the image."""
    import warnings

    from PIL import Image

    # PIL only warns between MAX_IMAGE_PIXELS and twice that: make it the refusal it should be
    # (process-wide and idempotent: a studio never wants to decode a bomb)
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
    max_pixels = max_pixels or Image.MAX_IMAGE_PIXELS
    with open_regular(path) as fp:
        try:
            img = Image.open(fp)  # reads the header only
            w, h = img.size
            if max_pixels and w * h > max_pixels:
                img.close()
                raise StudioError(f"{path.name}: {w}x{h} pixels, more than {max_pixels:,}: "
                                  "a decompression bomb? refused")
            img.load()  # decode now, while the file is open: a truncated one fails here, by name
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError,
                Image.DecompressionBombWarning, MemoryError) as exc:  # UnidentifiedImageError is an OSError
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise StudioError(f"{path.name}: not a readable image ({msg}); refused") from None
    return img
