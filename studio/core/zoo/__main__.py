"""`python -m studio.core.zoo` retrains the demo models and writes resources/zoo/ of the source
checkout this module runs from (an installed studio reads the weights, it does not rewrite them)."""

import sys
import time
from pathlib import Path

from . import names, train_and_save

if __name__ == "__main__":
    from ..data import digits
    from ..training import predict
    from .nets import INPUT_SHAPES

    root = Path(__file__).resolve().parents[3]
    if not (root / "pyproject.toml").is_file() or not (root / "resources").is_dir():
        sys.exit(f"run this from a source checkout of the studio: {root} has no pyproject.toml and resources/")
    data = digits()
    for name in names():
        start = time.perf_counter()
        module = train_and_save(name, root / "resources" / "zoo")
        x = data.shaped(data.x_test, INPUT_SHAPES[name])
        acc = (predict(module, x).argmax(1) == data.y_test).mean()
        params = sum(p.numel() for p in module.parameters())
        print(f"{name}: {params} parameters, test accuracy {acc:.4f}, {time.perf_counter() - start:.1f} s")
