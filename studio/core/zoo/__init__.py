"""The built-in demo zoo: small models trained on scikit-learn's bundled digits.

Trained weights ship in resources/zoo/ (safetensors, written by `python -m studio.core.zoo`;
installed as the package studio.resources, see studio.resource_dir);
if they are missing the model is trained on first use (a few seconds) and cached.
"""

from __future__ import annotations

import os
from pathlib import Path

from ... import resource_dir
from ..model import TORCH, Model
from .nets import DEMO_NETS, INPUT_SHAPES

RESOURCES = resource_dir() / "zoo"
EPOCHS = {"mlp": 40, "cnn": 25, "resnet": 25}


def cache_dir() -> Path:
    base = os.environ.get("STUDIO_CACHE") or os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "studio" / "zoo"


def names() -> list[str]:
    return list(DEMO_NETS)


def build(name: str):
    """A fresh, untrained module of the named demo architecture."""
    import torch

    torch.manual_seed(0)
    return DEMO_NETS[name]()


def load(name: str = "cnn", train_if_missing: bool = True) -> Model:
    """The trained demo model `name` (mlp, cnn, resnet)."""
    from safetensors.torch import load_file

    if name not in DEMO_NETS:
        raise KeyError(f"no demo model '{name}': choose from {', '.join(DEMO_NETS)}")
    module = build(name)
    for folder in (RESOURCES, cache_dir()):
        file = folder / f"{name}.safetensors"
        if file.is_file():
            module.load_state_dict(load_file(str(file)))
            break
    else:
        if not train_if_missing:
            raise FileNotFoundError(f"no trained weights for demo model '{name}'")
        module = train_and_save(name, cache_dir())
    module.eval()
    return Model(
        module, TORCH, INPUT_SHAPES[name], name=f"demo-{name}", format="zoo",
        meta={"data": "digits"},
    )


def train_and_save(name: str, folder: Path):
    """Train the demo model on the digits training split and save its weights."""
    from safetensors.torch import save_file

    from ..data import digits
    from ..fileio import atomic_path
    from ..training import drain, train

    data = digits()
    module = build(name)
    x = data.shaped(data.x_train, INPUT_SHAPES[name])
    drain(train(module, x, data.y_train, epochs=EPOCHS[name], lr=1e-3, seed=0))
    with atomic_path(folder / f"{name}.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(tmp))
    return module
