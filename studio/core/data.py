"""Evaluation data: the built-in digits, a .npz, an image folder, or random inputs.

Every source is split once, with a fixed seed, into a part the passes may use (fine-tune,
calibration) and a held-out part that only evaluation sees (../shared/MEASURING.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import StudioError, one_line

SEED = 0
TEST_FRACTION = 0.2
MAX_CLASSES = 1_000_000
MAX_NPZ_RATIO, MIN_NPZ_LIMIT = 200, 256 * 1024**2  # inflated / compressed beyond both: a zip bomb
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class Data:
    """Inputs `x_*` are float32 arrays, batch first; labels `y_*` are int64 or None."""

    name: str
    x_train: np.ndarray
    x_test: np.ndarray
    y_train: np.ndarray | None = None
    y_test: np.ndarray | None = None

    @property
    def labelled(self) -> bool:
        return self.y_test is not None

    @property
    def num_classes(self) -> int | None:
        if self.y_test is None:
            return None
        return int(max(self.y_train.max(initial=0), self.y_test.max(initial=0))) + 1

    def shaped(self, x: np.ndarray, input_shape: tuple[int, ...] | None) -> np.ndarray:
        """`x` reshaped to the model's per-sample shape when the element counts agree
        (the digits are 1x8x8 for a CNN and 64 for an MLP)."""
        if input_shape is None:
            return x
        per_sample = tuple(input_shape[1:])
        if x.shape[1:] == per_sample:
            return x
        if int(np.prod(x.shape[1:])) != int(np.prod(per_sample)):
            raise StudioError(
                f"data '{self.name}' has samples of shape {x.shape[1:]}, "
                f"the model wants {per_sample}"
            )
        return x.reshape((x.shape[0], *per_sample))


def stratified_split(x: np.ndarray, y: np.ndarray | None, test_fraction=TEST_FRACTION, seed=SEED):
    """80/20 split, stratified by label when there are labels."""
    from sklearn.model_selection import train_test_split

    if len(x) < 2:
        raise StudioError("the data set needs at least 2 samples")
    stratify = y if y is not None and np.bincount(y).min(initial=2) >= 2 else None
    if y is None:
        x_tr, x_te = train_test_split(x, test_size=test_fraction, random_state=seed)
        return x_tr, x_te, None, None
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=stratify
    )
    return x_tr, x_te, y_tr, y_te


def digits() -> Data:
    """scikit-learn's bundled 8x8 digits (1,797 images, no download), scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = stratified_split(x, y)
    return Data("digits", x_tr, x_te, y_tr, y_te)


def from_npz(path: str | Path) -> Data:
    """A .npz with `x` (and optional `y`), split 80/20; or with x_train/x_test (y_train/y_test)
    when the user has split it already. Never unpickles (allow_pickle=False)."""
    path = Path(path)
    _check_inflation(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except Exception as exc:  # a bad zip, an object array, a shape too big to allocate, ...
        raise StudioError(one_line(f"{path.name}: not a readable .npz of numeric arrays ({exc})")) from None
    for key, value in arrays.items():
        if not isinstance(value, np.ndarray):  # a member that is not .npy comes back as raw bytes
            raise StudioError(one_line(f"{path.name}: member {key!r} is not a numpy array"))
    if "x_train" in arrays and "x_test" in arrays:
        y_tr, y_te = arrays.get("y_train"), arrays.get("y_test")
        return Data(
            path.stem,
            _floats(arrays["x_train"], path),
            _floats(arrays["x_test"], path),
            None if y_tr is None else _labels(y_tr, path),
            None if y_te is None else _labels(y_te, path),
        )
    if "x" not in arrays:
        raise StudioError(f"{path.name}: needs an array named 'x' (and optionally 'y')")
    x = _floats(arrays["x"], path)
    y = _labels(arrays["y"], path) if "y" in arrays else None
    if y is not None and len(y) != len(x):
        raise StudioError(f"{path.name}: 'x' has {len(x)} samples but 'y' has {len(y)}")
    return Data(path.stem, *_reorder(stratified_split(x, y)))


def _check_inflation(path: Path) -> None:
    """Refuse a .npz whose members claim far more than the file could hold compressed (a zip
    bomb): numpy would inflate every byte into memory. Claims beyond the real data fail in numpy."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            claimed = sum(i.file_size for i in z.infolist())
    except Exception:  # noqa: BLE001 - not a zip (or a damaged one): np.load reports it below
        return
    size = path.stat().st_size
    if claimed > max(MAX_NPZ_RATIO * size, MIN_NPZ_LIMIT):
        raise StudioError(f"{path.name}: its arrays claim {claimed:,} bytes from a {size:,}-byte file; refused")


def from_image_folder(path: str | Path, input_shape: tuple[int, ...]) -> Data:
    """One subfolder per class; images are resized to the model's input (C, H, W), scaled to
    [0, 1]."""
    from PIL import Image

    path = Path(path)
    if input_shape is None or len(input_shape) != 4:
        raise StudioError("an image folder needs a model with an image input (N, C, H, W)")
    _, channels, height, width = input_shape
    classes = sorted(p.name for p in path.iterdir() if p.is_dir())
    if not classes:
        raise StudioError(f"{path}: no class subfolders")
    xs, ys = [], []
    for label, cls in enumerate(classes):
        for file in sorted((path / cls).iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            with Image.open(file) as img:
                img = img.convert("L" if channels == 1 else "RGB").resize((width, height))
                arr = np.asarray(img, dtype=np.float32) / 255.0
            xs.append(arr[None] if channels == 1 else arr.transpose(2, 0, 1))
            ys.append(label)
    if len(xs) < 2:
        raise StudioError(f"{path}: fewer than 2 images found")
    data = Data(path.name, *_reorder(stratified_split(np.stack(xs), np.array(ys, np.int64))))
    data.classes = classes
    return data


def random_inputs(input_shape: tuple[int, ...], count: int = 256) -> Data:
    """Inputs shaped like the model's, no labels: quality is agreement with the original."""
    if input_shape is None:
        raise StudioError("random data needs the model's input shape (--input-shape)")
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((count, *input_shape[1:])).astype(np.float32)
    return Data("random", *_reorder(stratified_split(x, None)))


def open_data(spec: str, input_shape: tuple[int, ...] | None = None) -> Data:
    """`digits`, `random`, a .npz file or an image folder."""
    if spec == "digits":
        return digits()
    if spec == "random":
        return random_inputs(input_shape)
    path = Path(spec)
    if path.is_dir():
        return from_image_folder(path, input_shape)
    if path.suffix == ".npz" and path.is_file():
        return from_npz(path)
    raise StudioError(f"unknown data '{spec}': use digits, random, a .npz file or an image folder")


def _reorder(split):
    x_tr, x_te, y_tr, y_te = split
    return x_tr, x_te, y_tr, y_te


def _floats(a: np.ndarray, path: Path) -> np.ndarray:
    if not np.issubdtype(a.dtype, np.number):
        raise StudioError(f"{path.name}: inputs must be numeric, not {a.dtype}")
    if a.ndim < 1:
        raise StudioError(f"{path.name}: inputs must be an array of samples, not a single number")
    return a.astype(np.float32, copy=False)


def _labels(a: np.ndarray, path: Path) -> np.ndarray:
    if not np.issubdtype(a.dtype, np.integer):
        raise StudioError(f"{path.name}: labels must be integers, not {a.dtype}")
    # class indices: counting them (bincount) allocates max(label) + 1 slots
    if a.ndim != 1 or a.size and not 0 <= int(a.min()) <= int(a.max()) < MAX_CLASSES:
        raise StudioError(f"{path.name}: labels must be one class index per sample, 0 to {MAX_CLASSES - 1:,}")
    return a.astype(np.int64, copy=False)
