"""The plain libraries, called the way their documentation shows, with no studio code in between.
Each returns (model, seconds): a torch module or an onnx.ModelProto, and the time the call took."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from studio.core.training import drain, train


def _layers(module):
    return [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def torch_prune_unstructured(module, x, y, sparsity: float, epochs: int, lr: float = 5e-4):
    """torch.nn.utils.prune: global L1 unstructured, fine-tune with its masks, make permanent."""
    import copy

    import torch.nn.utils.prune as prune

    module = copy.deepcopy(module)
    start = time.perf_counter()
    params = [(m, "weight") for m in _layers(module)]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=sparsity)
    if epochs:
        drain(train(module, x, y, epochs, lr))
    for m, name in params:
        prune.remove(m, name)
    return module.eval(), time.perf_counter() - start


def torch_pruning_channels(module, x, y, ratio: float, epochs: int, lr: float = 1e-3, round_to=None):
    """Torch-Pruning: L2 magnitude channel pruning over its dependency graph, then fine-tune."""
    import copy

    import torch_pruning as tp

    module = copy.deepcopy(module).eval()
    start = time.perf_counter()
    example = torch.from_numpy(x[:1])
    classifier = [m for m in module.modules() if isinstance(m, nn.Linear)][-1]
    pruner = tp.pruner.MagnitudePruner(
        module, example, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
        ignored_layers=[classifier], round_to=round_to,
    )
    pruner.step()
    if epochs and y is not None:
        drain(train(module, x, y, epochs, lr))
    return module.eval(), time.perf_counter() - start


def ort_static(proto, x_calib: np.ndarray, per_channel: bool = True):
    """onnxruntime quantize_static, QDQ, per-channel, min-max, after its pre-processing; activation and
    weight types are the library defaults (QInt8, QInt8)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = proto.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(np.array_split(x_calib, max(1, len(x_calib) // 32)))

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else {name: b.astype(np.float32)}

    with tempfile.TemporaryDirectory() as tmp:
        src, pre, out = (str(Path(tmp) / n) for n in ("a.onnx", "b.onnx", "c.onnx"))
        onnx.save(proto, src)
        start = time.perf_counter()
        quant_pre_process(src, pre)
        quantize_static(pre, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        seconds = time.perf_counter() - start
        return onnx.load(out), seconds


def ort_dynamic(proto):
    """onnxruntime quantize_dynamic (INT8 weights; convs become ConvInteger)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        src, out = str(Path(tmp) / "a.onnx"), str(Path(tmp) / "b.onnx")
        onnx.save(proto, src)
        start = time.perf_counter()
        quantize_dynamic(src, out, weight_type=QuantType.QInt8)
        seconds = time.perf_counter() - start
        return onnx.load(out), seconds
