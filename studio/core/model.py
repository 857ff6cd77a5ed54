"""Model: the one object every part of the studio passes around."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

TORCH = "torch"
ONNX = "onnx"


@dataclass
class Model:
    """A loaded model and where it came from.

    `obj` is a `torch.nn.Module` (framework "torch") or an `onnx.ModelProto` (framework "onnx").
    `input_shape` is the shape of one batch-1 input, e.g. (1, 1, 8, 8); None when unknown.
    """

    obj: Any
    framework: str
    input_shape: tuple[int, ...] | None = None
    name: str = "model"
    source: Path | None = None
    format: str = ""  # how it was loaded: onnx, torchscript, torch.export, state_dict, ...
    meta: dict = field(default_factory=dict)

    def copy(self) -> Model:
        """A deep copy: passes work on one, so the model a view shows never changes under it."""
        if self.framework == ONNX:
            import onnx

            obj = onnx.ModelProto()
            obj.CopyFrom(self.obj)
        else:
            obj = copy.deepcopy(self.obj)
        return replace(self, obj=obj, meta=copy.deepcopy(self.meta))

    def with_obj(self, obj: Any, framework: str | None = None, **changes) -> Model:
        return replace(self, obj=obj, framework=framework or self.framework, **changes)

    @property
    def is_torch(self) -> bool:
        return self.framework == TORCH

    @property
    def is_onnx(self) -> bool:
        return self.framework == ONNX

    def example_input(self, batch: int = 1):
        """A random input of the model's shape with the given batch (numpy): float32 values, or
        token ids in [0, 100) for models whose input is integer (meta["input_dtype"])."""
        import numpy as np

        if self.input_shape is None:
            raise ValueError(f"the input shape of {self.name} is unknown: pass --input-shape")
        shape = (batch, *self.input_shape[1:])
        rng = np.random.default_rng(0)
        dtype = self.meta.get("input_dtype", "float32")
        if np.dtype(dtype).kind in "iu":
            return rng.integers(0, 100, size=shape).astype(dtype)
        return rng.standard_normal(shape).astype(np.float32)
