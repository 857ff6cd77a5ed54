"""Measurement: quality, footprint and latency of a model, measured the way they are labelled
(../shared/MEASURING.md).

Everything is measured on the ONNX file a user would ship (torch stages are exported first), in
onnxruntime on the CPU: quality on the held-out split the passes never saw, sizes as the bytes of
that file and of its zip, latency as the median of interleaved rounds with a fixed thread count.
"""

from __future__ import annotations

import io
import statistics
import time
import zipfile
from collections.abc import Generator
from dataclasses import asdict, dataclass, field

import numpy as np

from .convert import fixed_batch, input_dtype, onnx_tensors, run_session, session, to_onnx_proto
from .data import Data
from .data_checks import check_labels_fit
from .model import Model

ZIP_LEVEL = 6  # moderate: level 9 takes minutes on big, mostly-zero files for ~1 % less

# the trade-off chart's x-axis choices: Measurement attribute -> label
FOOTPRINTS = {
    "size_bytes": "File size (bytes)",
    "zip_bytes": "Zipped size (bytes)",
    "parameters": "Parameters",
    "nonzeros": "Nonzero parameters",
    "macs": "MACs (batch 1)",
    "latency_b1": "Latency, batch 1 (ms)",
    "latency_bn": "Latency, large batch (ms)",
}

QDQ_PARAMS = {"QuantizeLinear": (1, 2), "DequantizeLinear": (1, 2)}  # scale, zero point inputs


@dataclass
class Measurement:
    accuracy: float | None = None  # top-1 on labelled held-out data
    top5: float | None = None
    agreement: float | None = None  # top-1 agreement with the original model
    rel_error: float | None = None  # ||y - y_original|| / ||y_original||
    parameters: int = 0
    nonzeros: int = 0
    size_bytes: int = 0
    zip_bytes: int = 0
    macs: int = 0
    latency_ms: dict[int, float] = field(default_factory=dict)  # batch size -> median ms
    threads: int = 1
    samples: int = 0  # held-out samples the quality is measured on

    @property
    def quality(self) -> float | None:
        return self.accuracy if self.accuracy is not None else self.agreement

    @property
    def quality_label(self) -> str:
        return "accuracy" if self.accuracy is not None else "agreement"

    @property
    def latency_b1(self) -> float | None:
        return self.latency_ms.get(1)

    @property
    def latency_bn(self) -> float | None:
        larger = [b for b in self.latency_ms if b > 1]
        return self.latency_ms[max(larger)] if larger else None

    def footprint(self, key: str):
        return getattr(self, key)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["latency_ms"] = {str(k): v for k, v in self.latency_ms.items()}
        d["quality"] = self.quality
        d["quality_label"] = self.quality_label
        return d


def onnx_bytes(proto) -> bytes:
    return proto.SerializeToString()


def zipped_size(blob: bytes) -> int:
    """Bytes of a zip archive holding the file (deflate, level 6)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=ZIP_LEVEL) as archive:
        archive.writestr("model.onnx", blob)
    return buffer.tell()


def count_parameters(proto) -> tuple[int, int]:
    """(parameters, nonzeros) of an ONNX model: its weight initializers, leaving out the scales
    and zero points of quantization and integer shape constants."""
    from onnx import numpy_helper

    side_inputs = set()
    weight_inputs = set()
    for node in proto.graph.node:
        for i in QDQ_PARAMS.get(node.op_type, ()):
            if i < len(node.input):
                side_inputs.add(node.input[i])
        if node.op_type == "DequantizeLinear":
            weight_inputs.add(node.input[0])
    params = nonzeros = 0
    for name, init in onnx_tensors(proto).items():
        if name in side_inputs and name not in weight_inputs:
            continue
        arr = numpy_helper.to_array(init)
        if arr.dtype.kind in "iu" and name not in weight_inputs and arr.dtype.itemsize > 1:
            continue  # shapes, axes, indices
        if arr.size <= 1 and name not in weight_inputs:
            continue  # scalar constants (epsilons, exponents) are not parameters
        params += arr.size
        nonzeros += int(np.count_nonzero(arr))
    return params, nonzeros


def count_macs(model: Model) -> int:
    from . import stats

    return int(stats.count_macs(model))


def reference_outputs(model: Model, data: Data) -> np.ndarray:
    proto = to_onnx_proto(model)
    return run_session(session(proto), data.shaped(data.x_test, model.input_shape))


def measure(model: Model, data: Data, reference: np.ndarray | None = None, proto=None) -> Measurement:
    """Quality and footprint (not latency: see measure_latency, which interleaves variants)."""
    proto = proto if proto is not None else to_onnx_proto(model)
    blob = onnx_bytes(proto)
    params, nonzeros = count_parameters(proto)
    m = Measurement(parameters=params, nonzeros=nonzeros, size_bytes=len(blob), zip_bytes=zipped_size(blob))
    try:
        m.macs = count_macs(model)
    except Exception:  # noqa: BLE001 - MACs of exotic graphs may be unknown; 0 means unknown
        m.macs = 0
    x = data.shaped(data.x_test, model.input_shape)
    out = run_session(session(proto), x)
    for labels in (data.y_train, data.y_test):  # only here is the number of classes known
        check_labels_fit(labels, int(np.prod(out.shape[1:])))
    m.samples = len(x)
    quality_from_outputs(m, out, data.y_test, reference)
    return m


def quality_from_outputs(m: Measurement, out: np.ndarray, labels, reference) -> None:
    flat = out.reshape(len(out), -1)
    if labels is not None and flat.shape[1] > 1:
        m.accuracy = float((flat.argmax(1) == labels).mean())
        if flat.shape[1] > 5:  # top-5 means something only with more than five classes
            top5 = np.argsort(-flat, axis=1)[:, :5]
            m.top5 = float((top5 == labels[:, None]).any(1).mean())
    if reference is not None:
        ref = reference.reshape(len(reference), -1)
        if ref.shape == flat.shape:
            if flat.shape[1] > 1:
                m.agreement = float((flat.argmax(1) == ref.argmax(1)).mean())
            m.rel_error = float(np.linalg.norm(flat - ref) / max(np.linalg.norm(ref), 1e-12))


def measure_latency(
    protos: list, input_shape: tuple[int, ...], batches=(1, 32), threads: int = 1,
    rounds: int = 7, min_round_s: float = 0.02, cancel=None,
) -> Generator[tuple[float, str], None, list[dict[int, float]]]:
    """Median latency (ms) of each model at each batch size, in interleaved rounds (A B C A B C
    ...), so a drift of the machine touches every variant alike. Each round times enough runs to
    last `min_round_s`; the median over rounds is reported. A model whose batch axis is fixed (to
    b) takes `batch` inputs in ceil(batch / b) calls: its time is that of all the calls."""
    results = [dict() for _ in protos]
    sessions = [session(p, threads) for p in protos]
    names = [s.get_inputs()[0].name for s in sessions]
    dtypes = [input_dtype(s) for s in sessions]
    steps = len(batches) * rounds
    for bi, batch in enumerate(batches):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch, *input_shape[1:])).astype(np.float32)
        ids = rng.integers(0, 100, size=(batch, *input_shape[1:]))  # token ids for integer inputs
        pinned = [fixed_batch(s) for s in sessions]
        feeds = [{n: np.resize(ids if np.dtype(d).kind in "iu" else x, (b or batch, *x.shape[1:])).astype(d)}
                 for n, d, b in zip(names, dtypes, pinned)]
        calls = [-(-batch // b) if b else 1 for b in pinned]  # ceil: the calls `batch` inputs take
        reps = []
        for s, feed, c in zip(sessions, feeds, calls):  # warm-up, and how many runs fill a round
            s.run(None, feed)
            start = time.perf_counter()
            for _ in range(c):
                s.run(None, feed)
            one = max(time.perf_counter() - start, 1e-6)
            reps.append(max(1, min(1000, int(min_round_s / one))))
        samples = [[] for _ in protos]
        for r in range(rounds):
            if cancel is not None:
                cancel()
            for i, (s, feed) in enumerate(zip(sessions, feeds)):
                start = time.perf_counter()
                for _ in range(reps[i] * calls[i]):
                    s.run(None, feed)
                samples[i].append((time.perf_counter() - start) / reps[i] * 1000.0)
            yield (bi * rounds + r + 1) / steps, f"latency batch {batch}: round {r + 1}/{rounds}"
        for i in range(len(protos)):
            results[i][batch] = float(statistics.median(samples[i]))
    return results
