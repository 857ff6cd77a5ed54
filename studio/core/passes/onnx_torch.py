"""ONNX -> torch, so the passes that train or rewrite modules can run on ONNX-only models.

onnx2torch builds a torch.fx GraphModule with one torch module per ONNX node. It is installed
with --no-deps because it declares torchvision, whose wheel is broken against the pinned torch;
onnx2torch imports torchvision only in its NonMaxSuppression and RoiAlign converters, so those
two modules are replaced by empty ones before the import (models using those ops fail to
convert, with a clear error)."""

from __future__ import annotations

import sys
import types

from ..errors import StudioError
from ..model import TORCH, Model

_WITHOUT_TORCHVISION = ("nms", "roialign")


def _import_onnx2torch():
    try:
        import torchvision  # noqa: F401 - if it ever works, use the real converters
    except Exception:  # noqa: BLE001 - missing or broken: stub the two converters that need it
        for name in _WITHOUT_TORCHVISION:
            full = f"onnx2torch.node_converters.{name}"
            if full not in sys.modules:
                stub = types.ModuleType(full)
                stub.__all__ = []
                sys.modules[full] = stub
    try:
        import onnx2torch
    except ImportError as exc:
        raise StudioError(
            f"this pass needs a torch model and converting ONNX to torch needs onnx2torch ({exc}); "
            "install it with `pip install --no-deps onnx2torch`"
        ) from None
    return onnx2torch


def onnx_to_torch(model: Model) -> Model:
    """A torch Model computing what the ONNX model computes (a new object: the input is untouched)."""
    import numpy as np

    onnx2torch = _import_onnx2torch()
    try:
        module = onnx2torch.convert(model.obj)
    except Exception as exc:  # noqa: BLE001 - unsupported op, opset, dynamic shapes, ...
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StudioError(f"{model.name}: cannot convert this ONNX model to torch (onnx2torch: {first}); "
                          "passes that need torch cannot run on it") from None
    module.eval()
    new = model.with_obj(module, TORCH, format="onnx2torch", meta=dict(model.meta, converted_from="onnx"))
    if new.input_shape is not None and not new.io.problems():  # a wrong conversion must not surface passes later
        from ..convert import predict_all, run_session_all, session

        x = new.example_inputs(2)  # every input, each in its dtype
        ours, ref = predict_all(new, x), run_session_all(session(model.obj), x)
        if len(ours) != len(ref) or any(a.shape != b.shape or not np.allclose(a, b, rtol=1e-3, atol=1e-4)
                                        for a, b in zip(ours, ref)):
            raise StudioError(f"{model.name}: onnx2torch converted the model but its outputs differ from onnxruntime's")
    return new
