"""Measurement: quality, footprint and latency of a model, measured the way they are labelled
(../shared/MEASURING.md).

Everything is measured on the ONNX file a user would ship (torch stages are exported first), in
onnxruntime on the CPU: quality on the held-out split the passes never saw, sizes as the bytes of
that file and of its zip, latency as the median of interleaved rounds with a fixed thread count.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
import statistics
import time
import zipfile
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .convert import (
    fixed_batch, guarded_run, input_dtype, iter_session_all, light_onnx, located_ranges, mapped_session, mapped_view, session,
    weight_bytes, write_model,
)
from . import outputs_child
from .data import Data
from .data_checks import check_labels_fit
from .errors import Cancelled
from .model import ONNX, Model
from .stats import count_parameters  # also imported from here by callers
from .training import drain

ZIP_LEVEL = 6  # moderate: level 9 takes minutes on big, mostly-zero files for ~1 % less
MIN_ROUNDS = 3  # the fewest latency rounds a time budget leaves (a median of three)

# the trade-off chart's x-axis choices: Measurement attribute -> label
FOOTPRINTS = {
    "size_bytes": "File size (bytes)",
    "zip_bytes": "Zipped size (bytes)",
    "parameters": "Parameters",
    "nonzeros": "Nonzero parameters",
    "macs": "MACs (batch 1)",
    "latency_b1": "Latency, batch 1 (ms)",
    "latency_bn": "Latency, large batch (ms)",
    # measured only when asked (studio run --runtimes pte tflite, RAM): the chart offers them once a run has them
    "latency_pte_b1": "Latency, batch 1, ExecuTorch XNNPACK (ms)",
    "latency_tflite_b1": "Latency, batch 1, LiteRT XNNPACK (ms)",
    "ram_bytes": "RAM to run (bytes)",
}
OPTIONAL_FOOTPRINTS = ("latency_pte_b1", "latency_tflite_b1", "ram_bytes")

SNR_CAP_DB = 200.0  # identical outputs: no noise; float32 resolves ~150 dB, so this means "exact"
QUALITY_LABELS = {
    "accuracy": "top-1 accuracy on the labelled held-out split",
    "agreement": "top-1 agreement of the class scores with the original model (no labels)",
    "position agreement": "top-1 agreement of the class scores at every position (argmax over the last axis, "
                          "compared position by position, as for CTC or token logits) with the original model (no labels)",
    "cosine": "cosine similarity to the original's outputs (worst output; per-output SNR and max error kept)",
}

PERCENT_LABELS = ("accuracy", "agreement", "position agreement")
# output names that say "class scores" (ONNX output names, dict keys)
CLASS_NAMES = re.compile(r"logit|prob|score|class|cls|label", re.IGNORECASE)


@dataclass
class Measurement:
    accuracy: float | None = None  # top-1 on labelled held-out data
    top5: float | None = None
    agreement: float | None = None  # top-1 agreement with the original model
    rel_error: float | None = None  # ||y - y_original|| / ||y_original|| (first output)
    parameters: int = 0
    nonzeros: int = 0
    size_bytes: int = 0
    zip_bytes: int = 0
    macs: int = 0
    macs_note: str = ""  # how MACs of a graph with If nodes were counted (stats.macs_counted)
    latency_ms: dict[int, float] = field(default_factory=dict)  # batch size -> median ms
    latency_rounds: dict[int, int] = field(default_factory=dict)  # batch size -> rounds the median is of
    threads: int = 1
    samples: int = 0  # held-out samples the quality is measured on
    # labelled classifiers: macro precision/recall/F1 and the confusion matrix (rows = true class)
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    confusion: list[list[int]] | None = None
    # per output, against the original model: {"cosine", "snr_db", "max_abs"}
    fidelity: dict[str, dict[str, float]] = field(default_factory=dict)
    classifier: bool = True  # an output is class scores ([batch, classes] or [batch, positions, classes])
    class_output: str = ""  # the output judged by top-1 (class_scores), "" when none is class scores
    per_position: bool = False  # that output is [batch, positions, classes]: top-1 per position
    class_evidence: str = ""  # why that output counts as class scores, or why none does
    # a user's evaluator (core/plugins.py): when set, it is the quality
    metric: float | None = None
    metric_name: str = ""
    metric_means: str = ""
    # RAM to load and run one batch-1 input in onnxruntime, in a fresh process (studio.core.memory);
    # None where not measured
    ram_bytes: int | None = None
    # batch-1 median ms on other runtimes than onnxruntime (studio run --runtimes; core/runtimes.py),
    # timed in the same rounds as latency_ms[1]; a runtime a stage cannot reach is left out
    runtime_ms: dict[str, float] = field(default_factory=dict)
    # RAM to load and run the stage's batch-1 file in those runtimes, measured like ram_bytes
    runtime_ram_bytes: dict[str, int] = field(default_factory=dict)

    @property
    def cosine(self) -> float | None:
        """The worst output's cosine similarity to the original (None without a reference)."""
        values = [f["cosine"] for f in self.fidelity.values() if f.get("cosine") is not None]
        return min(values) if values else None

    @property
    def quality(self) -> float | None:
        if self.metric is not None:
            return self.metric
        if self.accuracy is not None:
            return self.accuracy
        if self.agreement is not None:
            return self.agreement
        return self.cosine

    @property
    def quality_label(self) -> str:
        """Which measure `quality` is: accuracy, agreement (top-1 with the original) or cosine
        (output fidelity, for models whose outputs are not class scores), or a user's evaluator."""
        if self.metric is not None:
            return self.metric_name
        if self.accuracy is not None:
            return "accuracy"
        if self.agreement is not None or self.classifier:
            return "position agreement" if self.per_position else "agreement"
        return "cosine"

    @property
    def quality_text(self) -> str:
        """The quality number as it should be read: a percentage for accuracy and agreement, a
        similarity (1 = identical) for cosine."""
        q = self.quality
        if q is None:
            return "-"
        return f"{q:.2%}" if self.quality_label in PERCENT_LABELS else f"{q:.4f}"

    @property
    def quality_means(self) -> str:
        """What the quality number is, in words (under tables and in report.json): for a model
        with several outputs, also which output is judged by top-1 and why, or why none is."""
        if self.metric is not None:
            return self.metric_means
        text = QUALITY_LABELS[self.quality_label]
        if self.class_output and len(self.fidelity) > 1:
            text += f"; output '{self.class_output}' of {len(self.fidelity)} ({self.class_evidence})"
        elif self.class_evidence and (self.quality_label == "cosine" or "labels" in self.class_evidence):
            text += f"; {self.class_evidence}"
        return text

    @property
    def latency_b1(self) -> float | None:
        return self.latency_ms.get(1)

    @property
    def latency_pte_b1(self) -> float | None:
        return self.runtime_ms.get("pte")

    @property
    def latency_tflite_b1(self) -> float | None:
        return self.runtime_ms.get("tflite")

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
        d["quality_means"] = self.quality_means
        return d


def onnx_bytes(proto) -> bytes:
    return proto.SerializeToString()


class _CountingSink(io.RawIOBase):
    """A seekable file that keeps no bytes, only where they would end: zipfile rewrites the
    local header after the data as on a real file, so the size is the archive's to the byte."""

    def __init__(self):
        super().__init__()
        self.position = self.size = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, b) -> int:
        n = len(b)
        self.position += n
        self.size = max(self.size, self.position)
        return n

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = 0) -> int:
        self.position = offset if whence == 0 else self.position + offset if whence == 1 else self.size + offset
        return self.position


ZIP_CHUNK = 16 << 20


def zipped_size(blob, progress: Callable[[float], None] | None = None) -> int:
    """Bytes of a zip archive holding the file (its bytes, or its path; deflate, level 6), as
    ZipFile.writestr writes it, compressed in chunks (the same bytes out) into a sink that keeps
    none of them: the archive of a 440 MB model of random weights was another 400 MB in memory.
    progress(fraction) after each chunk may raise to stop it."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        with open(blob, "rb") as f:
            return _zipped(os.fstat(f.fileno()).st_size, lambda: f.read(ZIP_CHUNK), progress)
    view = memoryview(blob)
    chunks = iter(range(0, len(blob), ZIP_CHUNK))
    return _zipped(len(blob), lambda: view[next(chunks, len(blob)):][:ZIP_CHUNK], progress)


def _zipped(size: int, read: Callable[[], bytes | memoryview], progress) -> int:
    sink = _CountingSink()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED, compresslevel=ZIP_LEVEL) as archive:
        info = zipfile.ZipInfo("model.onnx", date_time=time.localtime(time.time())[:6])
        info.compress_type, info.external_attr, info.file_size = zipfile.ZIP_DEFLATED, 0o600 << 16, size
        info._compresslevel = ZIP_LEVEL  # type: ignore[attr-defined]  # what writestr sets from the archive's level
        with archive.open(info, mode="w") as dest:
            done = 0
            while chunk := read():
                dest.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(min(1.0, done / max(1, size)))
    return sink.size


class _Zipping:
    """zipped_size on a helper thread (zlib lets go of the GIL: the second core compresses while
    onnxruntime runs the model on the first); result() waits for it; stop() ends it at its next
    chunk."""

    def __init__(self, blob):
        import threading

        self.fraction, self.size, self.error = 0.0, None, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(blob,), name="studio-zip", daemon=True)
        self._thread.start()

    def _run(self, blob):
        def progress(fraction):
            self.fraction = fraction
            if self._stop.is_set():
                raise Cancelled()

        try:
            self.size = zipped_size(blob, progress)
        except BaseException as exc:  # noqa: BLE001 - raised in the waiting thread
            self.error = exc

    def wait(self, seconds: float) -> bool:
        """True once it is done."""
        self._thread.join(seconds)
        return not self._thread.is_alive()

    def result(self) -> int:
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.size

    def stop(self):
        self._stop.set()


def count_macs(model: Model) -> int:
    from . import stats

    return int(stats.count_macs(model))


def reference_outputs(model: Model, data: Data, cancel=None) -> list[np.ndarray]:
    """Every output of the original model on the held-out inputs (what fidelity compares to)."""
    return drain(reference_steps(model, data, cancel))


def reference_steps(model: Model, data: Data, cancel=None, proto=None):
    """reference_outputs as a generator of (fraction, message)."""
    tensors = None
    if proto is None:
        yield 0.0, "exporting to ONNX"
        proto, tensors = light_onnx(model)
    x = data.shaped(data.x_test, model.input_shape)
    yield 0.1, f"running {len(x):,} held-out samples"
    steps = iter_session_all(session(proto, tensors=tensors), x, cancel=cancel)
    while True:
        try:
            done = next(steps)
        except StopIteration as stop:
            return stop.value
        yield 0.1 + 0.9 * done, f"running {len(x):,} held-out samples"  # the bar shows how far


def measure(model: Model, data: Data, reference=None, proto=None, cancel=None, evaluator=None) -> Measurement:
    """Quality and footprint (not latency: see measure_latency, which interleaves variants).
    A set `cancel` event stops it within its current onnxruntime call. An `evaluator`
    (plugins.Evaluator) computes the quality from the outputs, labels and reference instead."""
    return drain(measure_steps(model, data, reference, proto, cancel, evaluator))


def measure_steps(model: Model, data: Data, reference=None, proto=None, cancel=None, evaluator=None, outputs=None,
                  keep: dict | None = None, is_reference: bool = False, tensors=None):
    """measure() as a generator of (fraction, message) for each phase and batch; returns the
    Measurement. The model is written to a scratch file once: its size, its zip (made on another
    core while the model runs: zlib lets go of the GIL) and the session are of that file, so no
    other copy of a 440 MB model is held. `outputs`: this very model's outputs on them, computed the same way
    (then it does not run). `keep`: a dict that gets the outputs under "outputs"; `is_reference`:
    they are the reference too (the original's: the pipeline ran BERT-base on them twice, 100 s
    each). `tensors`: the proto's tensors still in the user's file (convert.light_onnx)."""
    if proto is None:
        yield 0.0, "exporting to ONNX"
        proto, tensors = light_onnx(model)
    yield 0.05, "file size and zipped size"
    folder = tempfile.TemporaryDirectory(prefix="studio-measure-")
    zipping = None
    try:
        # the file, once: its size, its zip (read back in chunks on another core) and the session
        # (from a file onnxruntime holds one copy of the model, from bytes three at its peak)
        path = Path(folder.name) / "model.onnx"
        located: dict = {}  # the big tensors' places in the file: counted from it, not copied out of the proto
        write_model(proto, path, located, tensors)  # the bytes of onnx_bytes(proto), a tensor at a time (no 2nd copy in memory)
        params, nonzeros = count_parameters(proto, (path, located))
        ranges = located_ranges(proto, located)
        del located
        m = Measurement(parameters=params, nonzeros=nonzeros, size_bytes=path.stat().st_size)
        weights = weight_bytes(proto)
        in_child = outputs is None and outputs_child.wanted(weights)
        if not in_child:
            zipping = _Zipping(path)  # while the MACs are counted and the model runs
        from .graph import input_sizes
        from .stats import has_branches, macs_counted

        # an ONNX graph without If nodes: its MACs counted in the child too (building the graph
        # here held the GIL 40-50 ms at a time on BERT-base's INT8 stage)
        macs_there = in_child and model.framework == ONNX and not has_branches(model)
        if not macs_there:
            yield 0.2, "counting MACs"
            try:
                m.macs, m.macs_note = macs_counted(model)
            except Exception:  # noqa: BLE001 - MACs of exotic graphs may be unknown; 0 means unknown
                m.macs = 0
        x = data.shaped(data.x_test, model.input_shape)
        ran = f"quality on {len(x):,} held-out samples"
        yield 0.3, ran
        names = [o.name for o in proto.graph.output]
        if outputs is not None:
            outs = outputs
        elif in_child:  # a big model: run and zipped in a child (outputs_child: the window's GIL stays free)
            view = mapped_view(proto, path, ranges) if ranges else None
            steps = outputs_child.outputs_steps(path, view, x, zipped=True, weights=weights,
                                                stop=lambda: cancel is not None and cancel.is_set(),
                                                macs=(model.input_shape, input_sizes(model)) if macs_there else None)
            try:
                while True:
                    try:
                        kind, done = next(steps)
                    except StopIteration as stop:
                        outs, names, m.zip_bytes = stop.value.outputs, stop.value.names, stop.value.zip_bytes
                        if macs_there:
                            m.macs = stop.value.macs or 0
                        break
                    yield (0.3 + 0.6 * done, ran) if kind == "ran" else (0.9 + 0.1 * done, f"zipped size ({done:.0%})")
            finally:
                steps.close()  # closed here (a job dropped): the child is killed at once
        else:
            sess = mapped_session(proto, path, ranges)  # (freed after: a copy of the weights held the GIL longer)
            names = [o.name for o in sess.get_outputs()]
            steps = iter_session_all(sess, x, cancel=cancel)
            while True:
                try:
                    done = next(steps)
                except StopIteration as stop:
                    outs = stop.value
                    break
                yield 0.3 + 0.6 * done, ran  # the bar shows how far
            del sess
        if zipping is not None:
            while not zipping.wait(0.5):
                if cancel is not None and cancel.is_set():
                    raise Cancelled()
                yield 0.9 + 0.1 * zipping.fraction, f"zipped size ({zipping.fraction:.0%})"
            m.zip_bytes = zipping.result()
    finally:
        if zipping is not None:
            zipping.stop()
            zipping.wait(60)
        folder.cleanup()
    m.samples = len(x)
    if keep is not None:
        keep["outputs"] = outs
    if is_reference:
        reference = outs
    quality_from_outputs(m, outs, data.y_test, reference, names, vocab=embedding_vocab(model))
    if m.classifier and not m.per_position:  # only here is the number of classes known
        check_labels_fit(data.y_train, int(outs[names.index(m.class_output)].shape[1]))
    if evaluator is not None:
        m.metric = evaluator(outs, data.y_test, reference)
        m.metric_name, m.metric_means = evaluator.name, evaluator.description
    return m


def is_class_scores(out: np.ndarray) -> bool:
    """A [batch, classes] array: the only shape top-1 agreement and accuracy per sample mean
    something for (whether an output of that shape is class scores: class_scores)."""
    return out.ndim == 2 and out.shape[1] > 1


def _is_sequence_scores(out: np.ndarray) -> bool:
    """A [batch, positions, classes] array: class scores per position (CTC, token logits) by shape."""
    return out.ndim == 3 and out.shape[2] > 1


def _rows_are_distributions(a: np.ndarray) -> bool:
    """Every row along the last axis is a probability distribution (softmax output): >= 0, sums to
    1 (within 0.05: an INT8 stage's dequantized softmax rows are sums of rounded steps)."""
    if a.size == 0 or a.dtype.kind != "f" or not np.isfinite(a).all():
        return False
    return bool((a >= -1e-6).all() and np.allclose(a.sum(-1, dtype=np.float64), 1.0, rtol=0, atol=0.05))


@dataclass(frozen=True)
class ClassScores:
    """The output that is class scores: its index, whether per position, and the evidence."""
    index: int
    per_position: bool
    evidence: str


def class_scores(outs: list, refs: list | None = None, labels=None, names=None,
                 vocab: dict[str, int] | None = None) -> tuple[ClassScores | None, str]:
    """Which output, if any, holds class scores, from evidence, never from shape alone when a
    model has several outputs ([N, 4] box offsets look like 4-class logits): the model's only
    output being [batch, C]; with labels, the one [batch, C] output whose width fits them (the
    width equal to the label count first); rows that are probability distributions (softmax) in
    the original's outputs; for [batch, positions, C], a width equal to the vocabulary of an
    integer input's embedding (token logits); an output name saying logits/prob/scores/class.
    Each kind of evidence narrows the candidates; one left wins. Returns (choice or None, why
    none when none: the text under the table)."""
    names = list(names or [f"output_{i}" for i in range(len(outs))])
    basis = [r if refs is not None and i < len(refs) and np.shape(r) == np.shape(o) else o
             for i, (o, r) in enumerate(zip(outs, refs if refs is not None else outs))]
    pool = [i for i, o in enumerate(basis) if o.dtype.kind == "f" and (is_class_scores(o) or _is_sequence_scores(o))]
    if not pool:
        return None, ""
    per_sample = [i for i in pool if basis[i].ndim == 2]

    def chosen(i, why):
        return ClassScores(i, basis[i].ndim == 3, why), ""

    if labels is not None and len(labels) and per_sample:
        top = int(labels.max())
        fits = [i for i in per_sample if basis[i].shape[1] > top]
        if not fits:  # a label no output can predict: accuracy would lie
            check_labels_fit(labels, max(basis[i].shape[1] for i in per_sample))
        exact = [i for i in fits if basis[i].shape[1] == top + 1]
        if len(fits) == 1:
            return chosen(fits[0], f"the only output whose width fits the labels 0..{top}")
        if len(exact) == 1:
            return chosen(exact[0], f"its width is the label count, {top + 1}")
        pool = exact or fits
    if len(outs) == 1 and pool == per_sample:
        return chosen(pool[0], "the model's only output")
    vocab = vocab or {}
    tests = [
        (lambda i: _rows_are_distributions(basis[i]), "its rows are probability distributions"),
        (lambda i: basis[i].ndim == 3 and basis[i].shape[2] in vocab.values(),
         "its width is the vocabulary of input " + ", ".join(f"'{k}'" for k in vocab)),
        (lambda i: bool(CLASS_NAMES.search(names[i])), "its name says so"),
    ]
    for test, why in tests:
        hits = [i for i in pool if test(i)]
        if len(hits) == 1:
            return chosen(hits[0], why)
        if hits:
            pool = hits
    if len(pool) == 1 and len(outs) == 1:
        return None, (f"the output {tuple(basis[pool[0]].shape[1:])} could be class scores per position, "
                      "but nothing shows it (no softmax rows, vocabulary or name)")
    shown = ", ".join(f"'{names[i]}' {list(basis[i].shape[1:])}" for i in pool)
    return None, f"{len(pool)} outputs could be class scores ({shown}), nothing shows which"


def quality_from_outputs(m: Measurement, out, labels, reference, names=None, vocab=None) -> None:
    """Fill m's quality from the model's outputs (one array or the list of every output):
    accuracy (+ macro precision/recall/F1, confusion matrix) with labels and top-1 agreement
    where an output is class scores (class_scores: per sample, or per position for
    [batch, positions, classes]), and per-output fidelity against the reference."""
    outs = out if isinstance(out, list) else [out]
    refs = None if reference is None else (reference if isinstance(reference, list) else [reference])
    names = names or [f"output_{i}" for i in range(len(outs))]
    choice, why_not = class_scores(outs, refs, labels, names, vocab)
    m.classifier = choice is not None
    m.class_output = names[choice.index] if choice else ""
    m.per_position = bool(choice and choice.per_position)
    m.class_evidence = choice.evidence if choice else why_not
    scores = outs[choice.index] if choice else None
    if labels is not None and choice is not None and scores is not None and not choice.per_position:
        classify(m, scores, labels)
    elif labels is not None and len(labels):  # say so: the measure's words would say "no labels"
        m.class_evidence = "; ".join(filter(None, [m.class_evidence, "the labels (one class per sample) fit no "
                                                   "[batch, classes] output, so they are not used"]))
    if refs is None:
        return
    if scores is not None and choice is not None and choice.index < len(refs) and refs[choice.index].shape == scores.shape:
        m.agreement = float((scores.argmax(-1) == refs[choice.index].argmax(-1)).mean())
    first, ref = outs[0], refs[0]
    if ref.shape == first.shape:
        m.rel_error = float(np.linalg.norm(first - ref) / max(np.linalg.norm(ref), 1e-12))
    for name, got, want in zip(names, outs, refs):
        m.fidelity[name] = fidelity(got, want)


def embedding_vocab(model: Model) -> dict[str, int]:
    """{integer input: its embedding's vocabulary} as the model's signature found it (token ids)."""
    try:
        inputs = model.io.inputs
    except Exception:  # noqa: BLE001 - a model without a readable signature has no token ids here
        return {}
    return {s.name: int(s.value_range[1]) for s in inputs
            if s.value_range is not None and np.dtype(s.dtype).kind in "iu"}


def classify(m: Measurement, scores: np.ndarray, labels: np.ndarray) -> None:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    pred = scores.argmax(1)
    m.accuracy = float((pred == labels).mean())
    if scores.shape[1] > 5:  # top-5 means something only with more than five classes
        top5 = np.argsort(-scores, axis=1)[:, :5]
        m.top5 = float((top5 == labels[:, None]).any(1).mean())
    classes = list(range(max(scores.shape[1], int(labels.max(initial=0)) + 1)))
    p, r, f, _ = precision_recall_fscore_support(labels, pred, labels=classes, average="macro", zero_division=0)
    m.precision, m.recall, m.f1 = float(p), float(r), float(f)
    m.confusion = confusion_matrix(labels, pred, labels=classes).tolist()


def fidelity(got: np.ndarray, want: np.ndarray) -> dict[str, float | None]:
    """How close one output is to the original's: mean per-sample cosine similarity, signal to
    noise ratio in dB, and the largest absolute difference."""
    if got.shape != want.shape:
        return {"cosine": None, "snr_db": None, "max_abs": None, "note": f"shape {got.shape} != {want.shape}"}
    g = got.reshape(len(got), -1).astype(np.float64) if got.ndim else got.reshape(1, -1).astype(np.float64)
    if g.shape[1] == 1:  # one number per sample: a per-sample cosine is only its sign; use the whole
        g = g.reshape(1, -1)
    w = want.reshape(g.shape).astype(np.float64)
    norms = np.linalg.norm(g, axis=1) * np.linalg.norm(w, axis=1)
    both_zero = (np.linalg.norm(g, axis=1) == 0) & (np.linalg.norm(w, axis=1) == 0)
    cos = np.where(both_zero, 1.0, (g * w).sum(1) / np.maximum(norms, 1e-300))
    noise = float(((g - w) ** 2).sum())
    signal = float((w**2).sum())
    snr = SNR_CAP_DB if noise == 0 else min(SNR_CAP_DB, 10 * np.log10(max(signal, 1e-300) / noise))
    finite = bool(np.isfinite(g).all())
    return {"cosine": float(cos.mean()) if finite else float("nan"), "snr_db": float(snr) if finite else float("nan"),
            "max_abs": float(np.abs(g - w).max()) if g.size else 0.0}


def measure_latency(
    protos: list, input_shape: tuple[int, ...], batches=(1, 32), threads: int = 1,
    rounds: int = 7, min_round_s: float = 0.02, cancel=None, signature=None, rounds_out: list | None = None,
) -> Generator[tuple[float, str], None, list[dict[int, float]]]:
    """Median latency (ms) of each model at each batch size in onnxruntime: measure_latency_all
    without other runtimes."""
    results, _, _ = yield from measure_latency_all(protos, input_shape, batches, threads, rounds, min_round_s,
                                                   cancel, signature, rounds_out=rounds_out)
    return results


def measure_latency_all(
    protos: list, input_shape: tuple[int, ...], batches=(1, 32), threads: int = 1,
    rounds: int = 7, min_round_s: float = 0.02, cancel=None, signature=None, others=None,
    budget_s: float | None = None, rounds_out: list | None = None, tensors: list | None = None,
) -> Generator[tuple[float, str], None, tuple[list[dict[int, float]], list[dict[str, float]], dict[int, int]]]:
    """Median latency (ms) of each model at each batch size, in interleaved rounds (A B C A B C
    ...), so a drift of the machine touches every variant alike. Each round times enough runs to
    last `min_round_s`; the median over rounds is reported. A model whose batch axis is fixed (to
    b) takes `batch` inputs in ceil(batch / b) calls: its time is that of all the calls. Inputs:
    from the signature (every input with its own dtype and shape), else one input of
    `input_shape` (float, or token ids in [0, 100) for an integer input).

    `others`: runtime -> one call per model (None where the model cannot reach that runtime)
    that runs it once at batch 1 (core/runtimes.py). They are timed in the same rounds as
    onnxruntime's batch 1 (A B C, A' B' C', A B C, ...), warmed up and counted the same way; with
    no batch 1 among `batches`, in rounds of their own. Returns (per model: batch -> ms in
    onnxruntime, per model: runtime -> ms at batch 1, batch -> the rounds timed).

    `budget_s`: seconds the rounds of one batch size may take. Where one round of every model
    takes longer than budget_s / rounds (BERT-base at batch 32: ~20 s a call on one thread),
    fewer rounds are timed, never under MIN_ROUNDS; the count is returned and shown.

    `rounds_out`: a list that receives, per model, batch -> its time (ms) in each round, in the
    order timed (round i of every model ran side by side: their ratios cancel the machine's drift).

    `tensors`: per model, its tensors still in the user's file (convert.light_onnx) or None."""
    from .signature import feeds as feed_of

    others = {k: v for k, v in (others or {}).items() if any(f is not None for f in v)}
    results: list[dict[int, float]] = [{} for _ in protos]
    if rounds_out is not None:
        rounds_out[:] = [{} for _ in protos]
    extra: list[dict[str, float]] = [{} for _ in protos]
    sessions = [session(p, threads, t) for p, t in zip(protos, tensors or [None] * len(protos), strict=True)]
    pinned = [fixed_batch(s) for s in sessions]
    plan = list(batches) if 1 in batches or not others else [1, *batches]
    timed_rounds: dict[int, int] = {}
    for bi, batch in enumerate(plan):
        timed: list[tuple[tuple[int, str | None], Callable[[], object]]] = []  # ((model, runtime or None), call)
        if batch in batches:
            if signature is not None and signature.multi:
                x = signature.random(batch, seed=0)
                feeds = [feed_of(s.get_inputs(), x, 0, b or batch, pad_to=b) for s, b in zip(sessions, pinned)]
            else:
                rng = np.random.default_rng(0)
                x = rng.standard_normal((batch, *input_shape[1:])).astype(np.float32)
                ids = rng.integers(0, 100, size=(batch, *input_shape[1:]))
                feeds = [{s.get_inputs()[0].name: np.resize(ids if np.dtype(input_dtype(s)).kind in "iu" else x,
                                                             (b or batch, *x.shape[1:])).astype(input_dtype(s))}
                         for s, b in zip(sessions, pinned)]
            calls = [-(-batch // b) if b else 1 for b in pinned]  # ceil: the calls `batch` inputs take
            for i, (s, feed, c) in enumerate(zip(sessions, feeds, calls)):
                guarded_run(s, feed)  # the warm-up: a run that never ends stops here, in one line
                timed.append(((i, None), _ort_calls(s, feed, c)))
        if batch == 1:
            for name, calls_of in others.items():
                for i, call in enumerate(calls_of):
                    if call is not None:
                        call()  # warm-up
                        timed.append(((i, name), call))
        reps, round_s, sized = [], 0.0, []
        for _, call in timed:  # how many runs fill a round
            start = time.perf_counter()
            call()
            one = max(time.perf_counter() - start, 1e-6)
            sized.append(one * 1000.0)
            reps.append(max(1, min(1000, int(min_round_s / one))))
            round_s += reps[-1] * one
        count = rounds
        if budget_s is not None and round_s * rounds > budget_s:
            count = min(rounds, max(MIN_ROUNDS, int(budget_s // round_s)))
        timed_rounds[batch] = count
        # where every call fills a round by itself (BERT-base: seconds a call), the pass above timed each
        # model once, in turn, after its warm-up: that is the first round (it took ~20 s at batch 32)
        first = all(r == 1 for r in reps)
        samples: list[list[float]] = [[ms] for ms in sized] if first else [[] for _ in timed]
        if first:
            yield (bi + 1 / count) / len(plan), f"latency batch {batch}: round 1/{count}"
        for r in range(1 if first else 0, count):
            if cancel is not None:
                cancel()
            for k, (_, call) in enumerate(timed):
                start = time.perf_counter()
                for _ in range(reps[k]):
                    call()
                samples[k].append((time.perf_counter() - start) / reps[k] * 1000.0)
            yield (bi + (r + 1) / count) / len(plan), f"latency batch {batch}: round {r + 1}/{count}"
        for ((i, name), _), got in zip(timed, samples):
            if name is None:
                results[i][batch] = float(statistics.median(got))
                if rounds_out is not None:
                    rounds_out[i][batch] = [float(t) for t in got]
            else:
                extra[i][name] = float(statistics.median(got))
    return results, extra, timed_rounds


def _ort_calls(sess, feed, calls: int):
    def run():
        for _ in range(calls):
            sess.run(None, feed)
    return run
