"""Evaluation data: the built-in digits, a .npz, an image folder, or random inputs.

Every source is split once, with a fixed seed, into a part the passes may use (fine-tune,
calibration) and a held-out part that only evaluation sees (../shared/MEASURING.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import data_checks as checks
from .errors import StudioError

SEED = 0
TEST_FRACTION = 0.2
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class Data:
    """Inputs `x_*` are float32 arrays, batch first, or `signature.Inputs` (one array per input
    of a model with several or integer inputs); labels `y_*` are int64 or None."""

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
        if input_shape is None or not isinstance(x, np.ndarray):
            return x  # Inputs are already shaped per input
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
    if not isinstance(x, np.ndarray):  # Inputs: split the sample indices, then every input alike
        idx = np.arange(len(x))
        i_tr, i_te, y_tr, y_te = stratified_split(idx, y, test_fraction, seed)
        return x[i_tr], x[i_te], y_tr, y_te
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


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of a .npz, read only after the archive was checked (regular file, sizes,
    headers: data_checks); never unpickles."""
    with checks.open_regular(path) as fp:
        checks.check_npz(fp, path.name)
        try:
            with np.load(fp, allow_pickle=False) as archive:
                return {k: archive[k] for k in archive.files}
        except Exception as exc:  # noqa: BLE001 - a damaged member (bad CRC, short data), ...
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise StudioError(f"{path.name}: not a readable .npz of numeric arrays ({msg})") from None


def from_npz(path: str | Path) -> Data:
    """A .npz with `x` (and optional `y`), split 80/20; or with x_train/x_test (y_train/y_test)
    when the user has split it already. Never unpickles (allow_pickle=False); the archive is
    checked (regular file, sizes, headers) before any array is read (data_checks)."""
    path = Path(path)
    arrays = _read_npz(path)
    if "x_train" in arrays and "x_test" in arrays:
        x_tr, x_te = _floats(arrays, "x_train", path), _floats(arrays, "x_test", path)
        y_tr, y_te = _labels(arrays, "y_train", path), _labels(arrays, "y_test", path)
        checks.check_lengths(path.name, "x_train", x_tr, "y_train", y_tr)
        checks.check_lengths(path.name, "x_test", x_te, "y_test", y_te)
        checks.check_split(path.name, x_tr, x_te)
        return Data(path.stem, x_tr, x_te, y_tr, y_te)
    if "x" not in arrays:
        raise StudioError(f"{path.name}: needs an array named 'x' (and optionally 'y')")
    x, y = _floats(arrays, "x", path), _labels(arrays, "y", path)
    checks.check_lengths(path.name, "x", x, "y", y)
    return Data(path.stem, *_reorder(stratified_split(x, y)))


def from_image_folder(path: str | Path, input_shape: tuple[int, ...]) -> Data:
    """One subfolder per class (labelled), or a folder of images alone (unlabelled: a detector's
    or a segmenter's photos; quality is then agreement or output fidelity). Images are resized to
    the model's input (C, H, W), scaled to [0, 1]. Both at once is refused."""
    path = Path(path)
    if input_shape is None or len(input_shape) != 4:
        raise StudioError("an image folder needs a model with an image input (N, C, H, W)")
    _, channels, height, width = input_shape
    bound = checks.image_count_bound((channels, height, width))  # memory and time: see data_checks
    classes, loose = checks.folder_contents(path, IMAGE_SUFFIXES, bound)
    if classes and loose:
        shown = ", ".join(classes[:3]) + (", ..." if len(classes) > 3 else "")
        raise StudioError(
            f"{path}: holds both subfolders ({shown}) and {len(loose)} loose images ({loose[0].name}, ...); "
            "use one subfolder per class (labelled) or only images (unlabelled), not both")
    if not classes and not loose:
        raise StudioError(f"{path}: no images and no class subfolders")
    files = checks.list_images(path, classes, IMAGE_SUFFIXES, bound) if classes else [(f, None) for f in loose]
    xs, ys = [], []
    for file, label in files:
        with checks.open_image(file) as img:  # regular files only; bombs, truncation refused
            img = img.convert("L" if channels == 1 else "RGB").resize((width, height))
            arr = np.asarray(img, dtype=np.float32) / 255.0
        xs.append(arr[None] if channels == 1 else arr.transpose(2, 0, 1))
        ys.append(label)
    if len(xs) < 2:
        raise StudioError(f"{path}: fewer than 2 images found")
    y = np.array(ys, np.int64) if classes else None
    data = Data(path.name, *_reorder(stratified_split(np.stack(xs), y)))
    data.classes = classes or None
    return data


RANDOM_SAMPLES = 1280  # 80/20: 256 held-out inputs, what agreement on random weights needs (MEASURING.md)
RANDOM_BYTES = 64 * 2**20  # ...for small inputs; big ones (224x224 images) keep the old 256 samples


def random_count(sample_bytes: int) -> int:
    return int(min(RANDOM_SAMPLES, max(256, RANDOM_BYTES // max(1, sample_bytes))))


def random_inputs(input_shape: tuple[int, ...], count: int | None = None, signature=None) -> Data:
    """Inputs shaped like the model's, no labels: quality is agreement with the original (or
    output fidelity). With a signature, every input gets samples of its own dtype, shape and id
    range."""
    if signature is not None and signature.multi:
        if count is None:
            signature.check()
            per_sample = sum(int(np.prod(s.concrete(1))) * np.dtype(s.dtype).itemsize for s in signature.inputs if s.batched)
            count = random_count(per_sample)
        return Data("random", *_reorder(stratified_split(signature.random(count, SEED), None)))
    if input_shape is None:
        if signature is not None:
            signature.check()  # names the input and the dims it needs
        raise StudioError("random data needs the model's input shape (--input-shape)")
    if count is None:
        count = random_count(4 * int(np.prod(input_shape[1:])))
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((count, *input_shape[1:])).astype(np.float32)
    return Data("random", *_reorder(stratified_split(x, None)))


def from_npz_inputs(path: Path, arrays: dict, signature) -> Data:
    """A .npz holding one array per input name (first axis = samples) and optional labels `y`;
    inputs it leaves out must be pinned constants."""
    from .signature import Inputs

    x = {}
    for spec in signature.inputs:
        if spec.name in arrays:
            if not np.issubdtype(arrays[spec.name].dtype, np.number) and arrays[spec.name].dtype != np.bool_:
                raise StudioError(f"{path.name}: '{spec.name}' must be numeric, not {arrays[spec.name].dtype}")
            x[spec.name] = arrays[spec.name].astype(spec.dtype, copy=False)
        elif spec.value is None:
            raise StudioError(f"{path.name}: has no array '{spec.name}' (the model's inputs: "
                              f"{', '.join(signature.names)}); add it or pin it with --input {spec.name}=VALUE")
    inputs = Inputs(x, signature.constants(), signature.batch_axes())  # a state's samples too on axis 0
    y = _labels(arrays, "y", path)
    if y is not None and len(y) != len(inputs):
        raise StudioError(f"{path.name}: the inputs have {len(inputs)} samples but 'y' has {len(y)}")
    return Data(path.stem, *_reorder(stratified_split(inputs, y)))


def open_data(spec: str, input_shape: tuple[int, ...] | None = None, signature=None) -> Data:
    """`digits`, `random`, a .npz file or an image folder. With the model's signature, random
    data covers every input and a .npz may hold one array per input name."""
    if spec == "digits":
        return digits()
    if spec == "random":
        return random_inputs(input_shape, signature=signature)
    path = Path(spec)
    if path.is_dir():
        return from_image_folder(path, input_shape)
    if path.suffix == ".npz":  # a FIFO or a missing file is named by from_npz, not 'unknown'
        # several (or integer) inputs: one array per input name; else the single-array layout
        if (signature is not None and signature.multi and path.is_file()
                and any(n in _npz_names(path) for n in signature.names)):
            return from_npz_inputs(path, _read_npz(path), signature)
        return from_npz(path)
    raise StudioError(f"unknown data '{spec}': use digits, random, a .npz file or an image folder")


def _npz_names(path: Path) -> list[str]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return list(archive.files)
    except Exception as exc:  # noqa: BLE001
        raise StudioError(f"{path.name}: not a readable .npz of numeric arrays ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


def _reorder(split):
    x_tr, x_te, y_tr, y_te = split
    return x_tr, x_te, y_tr, y_te


def _floats(arrays: dict, name: str, path: Path) -> np.ndarray:
    """arrays[name] as float32; refused (one line) if complex, NaN, infinite, not numeric."""
    return checks.check_array(name, arrays[name], path.name)


def _labels(arrays: dict, name: str, path: Path) -> np.ndarray | None:
    """arrays[name] as int64 class indices, None when absent; refused if negative, fractional,
    not one per sample."""
    return checks.check_array(name, arrays[name], path.name, labels=True) if name in arrays else None
