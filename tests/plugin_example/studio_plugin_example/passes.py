"""A pass from outside the studio: round every Linear/Conv weight to a grid of `step`.

It follows the studio's pass protocol (studio/core/passes/base.py): a pydantic config, a generator
`apply` that yields (fraction, message) and returns a PassResult, and never changes its input.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from studio.core import onnx_weights
from studio.core.passes import Pass, PassConfig, PassResult
from studio.core.passes.targets import select, torch_layers


class RoundConfig(PassConfig):
    step: float = Field(0.05, gt=0, le=1, description="Grid the weights are rounded to")


class RoundWeights(Pass[RoundConfig]):
    id = "example.round"
    title = "Round weights (example plugin)"
    description = "Rounds each Linear/Conv weight to a multiple of `step` (an example of a plugin pass)."
    Config = RoundConfig
    frameworks = ("torch", "onnx")

    def apply(self, model, context):
        new = model.copy()  # never change the input
        step = self.config.step
        layers = {}
        if new.is_onnx:
            picked = onnx_weights.select(onnx_weights.layer_weights(new.obj), self.config.targets, self.config.ignore)
            for i, w in enumerate(picked):
                context.check_cancelled()
                w.write(np.round(w.array() / step) * step)
                layers[w.name] = {"step": step}
                yield (i + 1) / len(picked), f"rounded {w.name}"
        else:
            import torch

            modules = dict(new.obj.named_modules())
            names = select(torch_layers(new.obj), self.config.targets, self.config.ignore)
            for i, name in enumerate(names):
                context.check_cancelled()
                with torch.no_grad():
                    weight = modules[name].weight
                    weight.copy_(torch.round(weight / step) * step)
                layers[name] = {"step": step}
                yield (i + 1) / len(names), f"rounded {name}"
        return PassResult(new, layers, summary=f"{len(layers)} layers rounded to a grid of {step}")
