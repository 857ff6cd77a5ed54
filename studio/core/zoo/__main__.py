"""`python -m studio.core.zoo` retrains the demo models and writes resources/zoo/."""

import time

from . import RESOURCES, names, train_and_save

if __name__ == "__main__":
    from ..data import digits
    from ..training import predict
    from .nets import INPUT_SHAPES

    data = digits()
    for name in names():
        start = time.perf_counter()
        module = train_and_save(name, RESOURCES)
        x = data.shaped(data.x_test, INPUT_SHAPES[name])
        acc = (predict(module, x).argmax(1) == data.y_test).mean()
        params = sum(p.numel() for p in module.parameters())
        print(f"{name}: {params} parameters, test accuracy {acc:.4f}, {time.perf_counter() - start:.1f} s")
