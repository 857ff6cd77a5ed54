"""The libraries a user would pick instead of the studio, called the way their documentation
shows, at their best settings for this machine (x86-64 with AVX2, no VNNI), with no studio code
in between (the studio's helpers only cut the data into feed dicts). Each returns
(model, seconds, settings): a torch module or an onnx.ModelProto, the time the call took, and the
settings it ran with, shown beside its numbers.

Installed from benchmarks/requirements-peers.txt (never studio dependencies); see README.md."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from torch import nn

from studio.core.training import drain, train

ROOT = Path(__file__).resolve().parent
INC_DIR = Path(os.environ.get("BENCH_INC_DIR", ROOT / ".peers" / "inc"))


class PeerMissing(Exception):
    """The peer library is not installed here (the row says why)."""


def feed_batches(proto, x, batch: int = 32) -> list[dict]:
    """Feed dicts of `x` (one array, or the studio's Inputs for integer/multi-input models) in
    batches, each input in the dtype the graph declares."""
    import onnxruntime as ort

    from studio.core.signature import feeds

    metas = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).get_inputs()
    return [feeds(metas, x, i, min(i + batch, len(x))) for i in range(0, len(x), batch)]


# ------------------------------------------------------------------------------ pruning

def _layers(module):
    return [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def torch_prune_unstructured(module, x, y, sparsity: float, epochs: int, lr: float = 5e-4):
    """torch.nn.utils.prune: global L1 unstructured, fine-tune with its masks, make permanent."""
    from torch.nn.utils import prune

    module = copy.deepcopy(module)
    start = time.perf_counter()
    params = [(m, "weight") for m in _layers(module)]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=sparsity)
    if epochs:
        drain(train(module, x, y, epochs, lr))
    for m, name in params:
        prune.remove(m, name)
    settings = f"global L1 unstructured {sparsity:.0%}, {epochs} epochs fine-tune (Adam, lr {lr:g})"
    return module.eval(), time.perf_counter() - start, settings


def _out_channels(module, classifier) -> dict:
    """Output channels of every Linear/Conv layer but the classifier (the layers that may shrink)."""
    return {id(m): m.weight.shape[0] for m in _layers(module) if m is not classifier}


def torch_pruning_channels(module, example, x, y, ratio: float, epochs: int, lr: float = 1e-3, round_to: int = 8):
    """Torch-Pruning by hand, with the studio's ratio, importance, rounding and fine-tune budget:
    L2 magnitude per group, the same ratio in every layer, the classifier kept, kept channels
    rounded by Torch-Pruning's own round_to (which rounds the kept count down)."""
    import torch_pruning as tp

    module = copy.deepcopy(module).eval()
    start = time.perf_counter()
    classifier = [m for m in module.modules() if isinstance(m, nn.Linear)][-1]
    pruner = tp.pruner.MetaPruner(
        module, example, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=ratio,
        ignored_layers=[classifier], round_to=round_to,
    )
    before = _out_channels(module, classifier)
    pruner.step()
    after = _out_channels(module, classifier)
    removed = 1 - sum(after.values()) / max(1, sum(before.values()))
    if epochs and y is not None:
        drain(train(module, x, y, epochs, lr))
    settings = (f"MetaPruner, L2 group magnitude, {ratio:.0%} of channels per layer asked, round_to {round_to} "
                f"(its rounding: down; {removed:.0%} really removed), {epochs} epochs fine-tune (Adam, lr {lr:g})")
    return module.eval(), time.perf_counter() - start, settings


# ------------------------------------------------------------------------- quantization

def _with_files(proto, call):
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        src, out = str(Path(tmp) / "a.onnx"), str(Path(tmp) / "b.onnx")
        onnx.save(proto, src)
        start = time.perf_counter()
        call(src, out, tmp)
        seconds = time.perf_counter() - start
        return onnx.load(out), seconds


class _Reader:
    """onnxruntime's CalibrationDataReader over prepared feed dicts."""

    def __init__(self, batches):
        self.batches, self.i = batches, 0

    def get_next(self):
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return self.batches[self.i - 1]

    def rewind(self):
        self.i = 0


def ort_static(proto, x_calib, recommended: bool):
    """onnxruntime quantize_static after its pre-processing (quant_pre_process), min-max.
    recommended=False: the call with its defaults (QDQ, int8 activations and weights, per-tensor).
    recommended=True: its docs' advice for x86 without VNNI: uint8 activations with int8 weights
    (U8S8, the VPMADDUBSW kernels), per-channel weights, QDQ."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = feed_batches(proto, x_calib)

    class Reader(_Reader, CalibrationDataReader):
        pass

    def call(src, out, tmp):
        pre = str(Path(tmp) / "pre.onnx")
        quant_pre_process(src, pre, skip_symbolic_shape=True)
        if recommended:
            quantize_static(pre, out, Reader(batches), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        else:
            quantize_static(pre, out, Reader(batches))

    q, s = _with_files(proto, call)
    n = len(x_calib)
    settings = ("QDQ, QUInt8 activations, QInt8 per-channel weights, min-max, " if recommended
                else "defaults: QDQ, QInt8 activations, QInt8 per-tensor weights, min-max, ") + f"{n} samples, pre-processed"
    return q, s, settings


def ort_dynamic(proto):
    """onnxruntime quantize_dynamic with its defaults (INT8 weights; convs become ConvInteger)."""
    from onnxruntime.quantization import quantize_dynamic

    q, s = _with_files(proto, lambda src, out, tmp: quantize_dynamic(src, out))
    return q, s, "defaults: QInt8 weights per-tensor, activations quantized at run time"


def nncf_quantize(proto, x_calib, transformer: bool = False):
    """NNCF's post-training quantization of the ONNX model: nncf.quantize with its default
    preset (performance; mixed for transformers), target CPU, model_type TRANSFORMER for
    transformers as its docs advise, and its default fast bias correction."""
    try:
        import nncf
    except ImportError as exc:
        raise PeerMissing(f"nncf not installed ({exc}); pip install -r benchmarks/requirements-peers.txt") from None
    batches = feed_batches(proto, x_calib, batch=1)  # NNCF calibrates sample by sample
    start = time.perf_counter()
    q = nncf.quantize(proto, nncf.Dataset(batches), target_device=nncf.TargetDevice.CPU, subset_size=len(batches),
                      model_type=nncf.ModelType.TRANSFORMER if transformer else None)
    settings = (f"nncf {nncf.__version__}: default preset ({'mixed' if transformer else 'performance'}), target CPU, "
                f"{'model_type TRANSFORMER, ' if transformer else ''}fast bias correction, {len(batches)} samples")
    return q, time.perf_counter() - start, settings


def inc_quantize(proto, x_calib, smooth_quant: bool = False):
    """Intel's onnx-neural-compressor: quantize() with StaticQuantConfig at its defaults (QOperator,
    QUInt8 activations, QInt8 weights, min-max); SmoothQuant for transformers as its docs suggest.
    It pins numpy<2 (the studio runs numpy 2), so it lives in its own folder (INC_DIR, see
    README.md) and runs in a child process."""
    if not (INC_DIR / "onnx_neural_compressor").is_dir():
        raise PeerMissing(f"onnx-neural-compressor not installed in {INC_DIR} (it pins numpy<2; see benchmarks/README.md)")
    import onnx

    batches = feed_batches(proto, x_calib)
    with tempfile.TemporaryDirectory() as tmp:
        src, out, calib = Path(tmp) / "a.onnx", Path(tmp) / "b.onnx", Path(tmp) / "calib.npz"
        onnx.save(proto, str(src))
        np.savez(calib, **{f"{i}:{k}": v for i, b in enumerate(batches) for k, v in b.items()})
        env = {**os.environ, "PYTHONPATH": str(INC_DIR)}
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "benchmarks.inc_child", str(src), str(out), str(calib),
                               json.dumps({"smooth_quant": smooth_quant})], cwd=ROOT.parent, env=env,
                              capture_output=True, text=True, timeout=3600)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError((done.stderr.strip().splitlines() or ["failed"])[-1][:200])
        version = done.stdout.strip().splitlines()[-1]
        q = onnx.load(str(out))
    settings = (f"onnx-neural-compressor {version}: StaticQuantConfig defaults (QOperator, QUInt8 activations, "
                f"QInt8 weights, per-tensor, min-max){', SmoothQuant alpha 0.5' if smooth_quant else ''}, "
                f"{len(x_calib)} samples")
    return q, seconds, settings
