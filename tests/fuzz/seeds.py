"""Small valid files of every format the studio reads, made in code: the fuzzer's starting points."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

ARCH = "tests.fuzz.nets:Tiny"  # the architecture safetensors / state_dict seeds are loaded with
REPO = Path(__file__).resolve().parents[2]


def tiny():
    import torch

    from .nets import Tiny

    torch.manual_seed(0)
    model = Tiny().eval()
    with torch.no_grad():  # few distinct values: the packed seed stores the dense weights as a codebook
        model.fc.weight.copy_(torch.round(model.fc.weight * 8) / 8)
    return model


def _onnx(folder: Path, dynamo: bool) -> Path:
    import torch

    path = folder / ("tiny_dynamo.onnx" if dynamo else "tiny.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(tiny(), (torch.zeros(1, 1, 8, 8),), str(path), dynamo=dynamo,
                          input_names=["x"], output_names=["y"], verbose=False)
    return path


def _torchscript(folder: Path) -> Path:
    import torch

    path = folder / "tiny.pt"
    torch.jit.trace(tiny(), torch.zeros(1, 1, 8, 8)).save(str(path))
    return path


def _pt2(folder: Path) -> Path:
    import torch

    path = folder / "tiny.pt2"
    torch.export.save(torch.export.export(tiny(), (torch.zeros(2, 1, 8, 8),)), str(path))
    return path


def _safetensors(folder: Path) -> Path:
    from safetensors.torch import save_file

    path = folder / "tiny.safetensors"
    save_file(tiny().state_dict(), str(path))
    return path


def _state_dict(folder: Path) -> Path:
    import torch

    path = folder / "tiny.pth"
    torch.save(tiny().state_dict(), path)
    return path


def _packed(folder: Path) -> Path:
    import onnx

    from studio.core import packed

    path = folder / "tiny.packed"
    onnx_path = folder / "tiny.onnx"
    if not onnx_path.exists():
        _onnx(folder, dynamo=False)
    info = packed.pack(onnx.load(str(onnx_path)), path)
    assert info["tensors"] >= 1, "the packed seed must hold a codebook tensor"
    return path


def _recipes(folder: Path) -> list[Path]:
    out = []
    for src in sorted((REPO / "recipes").glob("*.yaml")):
        out.append(Path(shutil.copy(src, folder / src.name)))
    return out


def _npz(folder: Path) -> list[Path]:
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.random((20, 1, 8, 8), dtype=np.float32)
    y = np.arange(20, dtype=np.int64) % 2
    plain, compressed = folder / "data.npz", folder / "data_z.npz"
    np.savez(plain, x=x, y=y)
    np.savez_compressed(compressed, x_train=x[:16], x_test=x[16:], y_train=y[:16], y_test=y[16:])
    return [plain, compressed]


# format -> builder(folder) -> the seed files (the fuzzer cycles through them)
BUILDERS = {
    "onnx": lambda f: [_onnx(f, dynamo=False), _onnx(f, dynamo=True)],
    "torchscript": lambda f: [_torchscript(f)],
    "pt2": lambda f: [_pt2(f)],
    "safetensors": lambda f: [_safetensors(f)],
    "state_dict": lambda f: [_state_dict(f)],
    "packed": lambda f: [_packed(f)],
    "recipe": _recipes,
    "npz": _npz,
}


def build(fmt: str, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return BUILDERS[fmt](folder)
