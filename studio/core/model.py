"""Model: the one object every part of the studio passes around."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

TORCH = "torch"
ONNX = "onnx"


class _Obj:
    """Model.obj. A model the window opened keeps its big ONNX initializers in the user's file
    (io.file_tensors): the first access to obj reads them into the proto, on the thread that
    asks (a job's worker). Model.light is the proto as it is, for the graph and statistics."""

    def __get__(self, model, owner=None):
        if model is None:
            return self
        state = model.__dict__
        lazy = state.get("_lazy")
        if lazy is not None:
            lazy.fill(state["_obj"])
            state["_lazy"] = None
        return state["_obj"]

    def __set__(self, model, value):
        model.__dict__["_obj"] = value
        model.__dict__["_lazy"] = None


@dataclass
class Model:
    """A loaded model and where it came from.

    `obj` is a `torch.nn.Module` (framework "torch") or an `onnx.ModelProto` (framework "onnx").
    `input_shape` is the shape of one batch-1 input, e.g. (1, 1, 8, 8); None when unknown.
    """

    obj: Any  # read through _Obj (set on the class below)
    framework: str
    input_shape: tuple[int, ...] | None = None
    name: str = "model"
    source: Path | None = None
    format: str = ""  # how it was loaded: onnx, torchscript, torch.export, state_dict, ...
    meta: dict = field(default_factory=dict)
    # every input and output (names, dtypes, dynamic dims, id ranges, constants): see signature.py.
    # None for a model known only by `input_shape`; `io` then describes it as one float input.
    signature: Any = None

    def __post_init__(self):
        if self.signature is not None and self.input_shape is None:
            self.input_shape = self.signature.first_shape()  # old callers: the first input

    @property
    def io(self):
        """The model's Signature (one input described by input_shape when nothing else is known)."""
        from .signature import Signature

        if self.signature is not None:
            return self.signature
        return Signature.single(self.input_shape, self.meta.get("input_dtype", "float32"))

    def defer(self, lazy) -> None:
        """Leave the tensors `lazy` (io.file_tensors.FileTensors, or None) in their file until obj
        is first asked for."""
        self.__dict__["_lazy"] = lazy if lazy else None

    @property
    def light(self) -> Any:
        """obj as it is: an ONNX model the window opened without its big initializers' bytes
        (see `lazy`): enough for the graph (dims and types) without a copy of the values."""
        return self.__dict__["_obj"]

    @property
    def lazy(self):
        """The FileTensors still in their file (None once obj holds them all)."""
        return self.__dict__.get("_lazy")

    def _replace(self, **changes) -> Model:
        """dataclasses.replace without reading obj in (the tensors left in the file follow)."""
        if "obj" in changes:
            return replace(self, **changes)
        new = replace(self, obj=self.light, **changes)
        new.defer(self.lazy)
        return new

    def with_signature(self, signature) -> Model:
        """The same model with the given inputs/outputs (after --input); input_shape follows."""
        return self._replace(signature=signature, input_shape=signature.first_shape() or self.input_shape)

    def copy(self) -> Model:
        """A deep copy: passes work on one, so the model a view shows never changes under it.

        An ONNX model whose big tensors are still in its file (`lazy`) is copied without them:
        the light proto (small) is copied, and the copy reads the same file ranges into its own
        proto on its own first access to obj (on the job's worker, tensor by tensor). Copying
        the whole proto would hold the GIL for all of it (BERT-base, 434 MB: 325-390 ms, the
        window frozen as long); the original keeps its tensors in the file."""
        lazy = None
        if self.framework == ONNX:
            import onnx

            lazy = self.lazy  # (read before light: filled meanwhile, light is whole and lazy a no-op)
            obj = onnx.ModelProto()
            obj.CopyFrom(self.light if lazy is not None else self.obj)
        else:
            obj = copy.deepcopy(self.obj)
        new = replace(self, obj=obj, meta=copy.deepcopy(self.meta), signature=copy.deepcopy(self.signature))
        new.defer(lazy)  # FileTensors describes the file only; fill(proto) fills the proto it is given
        return new

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

        if self.signature is not None and self.signature.multi:
            from .signature import first_array

            return first_array(self.signature.random(batch))
        if self.input_shape is None:
            raise ValueError(f"the input shape of {self.name} is unknown: pass --input-shape")
        shape = (batch, *self.input_shape[1:])
        rng = np.random.default_rng(0)
        dtype = self.meta.get("input_dtype", "float32")
        if np.dtype(dtype).kind in "iu":
            return rng.integers(0, 100, size=shape).astype(dtype)
        return rng.standard_normal(shape).astype(np.float32)

    def example_inputs(self, batch: int = 1):
        """Random samples for every input: one array for a one-float-input model, else Inputs
        (each input with its own dtype, shape and id range; constants as pinned)."""
        if self.signature is not None and self.signature.multi:
            return self.signature.random(batch)
        return self.example_input(batch)


setattr(Model, "obj", _Obj())  # noqa: B010 - after @dataclass, which would take it for obj's default
