"""onnxruntime's calibration and quantize_static run in a child process (the INT8 pass's tries).

quantize_static is Python that holds the GIL for long stretches: it loads the model, turns each
weight into a numpy array and back, and serializes the INT8 model in one piece (BERT-base: ~200 ms
a save, 60-100 ms for the biggest weights), and the window froze that long on every try. Here it
runs in a child (`studio _quantize REQUEST`) that reads the pre-processed model and the calibration
cache the pass wrote and writes the INT8 model to the file named; the parent only waits. The
calibration that makes the cache runs in such a child too (ranges_in_child): onnxruntime's
calibrator loads and saves the model (augment_graph: ~55 ms stalls a save on BERT-base) and its
compute_data and save_tensors_data held the GIL 180 ms; the child tells the parent each batch it
hands onnxruntime, so the progress bar moves as before. A cancel kills the child; an error comes
back as its first line, a crash (C++ in onnxruntime) as a one-line StudioError instead of taking
the window with it, a hang ends at the child's time budget. The files are the ones made in-process:
tests check the bytes are the same. Small models (CHILD_OVER) do both in-process: a child's start
costs more than the whole work.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import tempfile
import threading
from pathlib import Path

from .. import child
from ..child import budget, read_samples, write_samples
from ..errors import StudioError

PROGRESS = "studio-calibrated"  # the calibration child's progress lines: "studio-calibrated DONE TOTAL"

def _stopper(cancel: threading.Event | None, abandoned: threading.Event | None):
    return lambda: any(e is not None and e.is_set() for e in (cancel, abandoned))


def quantize_file(request: dict, notes: logging.Filter | None = None) -> None:
    """quantize_static as the request says: model `input`, `output`, calibration `cache`, and
    the options (JSON: per_channel, reduce_range, activations "uint8"/"int8", op_types or None,
    nodes_to_exclude, method). `notes`: a filter put on the root logger meanwhile."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[request["method"]]
    if notes is not None:
        logging.getLogger().addFilter(notes)
    try:
        quantize_static(
            request["input"], request["output"], None,
            quant_format=QuantFormat.QDQ, per_channel=request["per_channel"], reduce_range=request["reduce_range"],
            activation_type=QuantType.QUInt8 if request["activations"] == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8, op_types_to_quantize=request["op_types"],
            nodes_to_exclude=request["nodes_to_exclude"], calibrate_method=method,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            calibration_cache_path=request["cache"],
        )
    finally:
        if notes is not None:
            logging.getLogger().removeFilter(notes)


# Below this size quantize_static runs in this process: a child costs 1-2 s to start (its imports),
# 20x the whole call on the demo CNN (the benchmark's overhead goal is 1.2x the plain call), and a
# model this small holds the GIL for tens of milliseconds at most in one piece.
CHILD_OVER = 32 * 2**20


def quantize(request: dict, weights: int, cancel: threading.Event | None = None,
             abandoned: threading.Event | None = None) -> dict:
    """quantize_file(request): in a child (quantize_in_child) for a model whose weights hold over
    CHILD_OVER bytes (`weights`: convert.weight_bytes; not the input file's size, which for a
    pre-processed model is only its graph, the weights being in its sidecar), here for a smaller
    one; the same answer either way ({"weights": [...]}; load_written reads the file)."""
    if weights > CHILD_OVER:
        return quantize_in_child(request, cancel, weights, abandoned)
    from .quantize import _PerTensorNotes

    notes = _PerTensorNotes()
    quantize_file(request, notes)
    return {"weights": notes.weights}


def quantize_in_child(request: dict, cancel: threading.Event | None = None, weights: int = 0,
                      abandoned: threading.Event | None = None) -> dict:
    """quantize_file(request) in a child process; returns {"weights": the weights of the per-tensor
    notes (quantize._PerTensorNotes) it kept off the terminal, in order, "located" and "skeleton":
    see load_written}. Cancelled when `cancel` or `abandoned` (the pass's progress generator was
    closed) is set: the child is killed; StudioError in one line when onnxruntime fails, the child
    dies or it passes its time budget (budget(weights))."""
    with tempfile.TemporaryDirectory(prefix="studio-quantize-") as folder:
        answer = _ask(Path(folder), request, "onnxruntime's quantizer", "the INT8 model",
                      _stopper(cancel, abandoned), budget(weights))
        skeleton = Path(folder) / "skeleton.onnx"
        if "located" in answer and skeleton.exists():
            answer["skeleton"] = skeleton.read_bytes()
    return answer


def _ask(folder: Path, request: dict, what: str, wrote: str, stop, seconds: float | None, on_line=None) -> dict:
    """`request` written to `folder` and a child run on it (child.run): its answer. StudioError in
    one line when the child stopped before it answered, or with onnxruntime's error."""
    asked, reply = folder / "request.json", folder / "reply.json"
    asked.write_text(json.dumps({**request, "reply": str(reply)}))
    code = child.run("_quantize", [str(asked)], stop=stop, budget=seconds, on_line=on_line, what=what)
    answer = _answer(reply)
    if answer is None or code != 0:
        raise StudioError(f"{what} stopped ({child.ended(code)}) before it wrote {wrote}")
    if "error" in answer:
        raise StudioError(answer["error"])
    return answer


def _answer(reply: Path) -> dict | None:
    try:
        return json.loads(reply.read_text())
    except (OSError, ValueError):
        return None


def ranges_in_child(request: dict, x, report=None, cancel: threading.Event | None = None,
                    abandoned: threading.Event | None = None, seconds: float | None = None) -> None:
    """quantize.calibrate in a child process: onnxruntime's calibrator built, run on the samples `x`
    (an array or signature.Inputs, written here to a .npz the child reads without pickles) and its
    ranges saved to request["cache"], as the pass does it in-process (the same file: a test checks).
    request: "pre", "op_types", "augmented", "method", "streams", "batch", "metas" ([name, dtype]
    of the graph's inputs), "cache". report(done, total) is called here for each batch the child
    hands onnxruntime (its stdout lines). Cancelled / StudioError as quantize_in_child; `seconds`:
    its time budget."""
    with tempfile.TemporaryDirectory(prefix="studio-calibrate-") as folder:
        samples = Path(folder) / "samples.npz"
        layout = write_samples(x, samples)

        def line(text: str) -> None:
            word, *numbers = text.split()
            if word == PROGRESS and len(numbers) == 2:
                if report is not None:
                    report(int(numbers[0]), int(numbers[1]))
            else:  # anything else a library printed: to the terminal, as in-process
                print(text, file=sys.stderr)

        _ask(Path(folder), {**request, "task": "ranges", "samples": str(samples), "layout": layout},
             "onnxruntime's calibration", "the ranges", _stopper(cancel, abandoned), seconds, line)


def augment_for_debug(qdq: Path, augmented: Path, weights: int, cancel: threading.Event | None = None,
                      abandoned: threading.Event | None = None) -> None:
    """onnxruntime's qdq_loss_debug.modify_model_output_intermediate_tensors(qdq, augmented), in a
    child for a model whose weights hold over CHILD_OVER bytes: it loads the model with shape
    inference and saves it whole, each one call holding the GIL (BERT-base's INT8 model: 624 and
    236 ms, the window frozen as long). Cancelled / StudioError as quantize_in_child."""
    if weights <= CHILD_OVER:
        from onnxruntime.quantization.qdq_loss_debug import modify_model_output_intermediate_tensors

        modify_model_output_intermediate_tensors(str(qdq), str(augmented))
        return
    with tempfile.TemporaryDirectory(prefix="studio-debug-") as folder:
        _ask(Path(folder), {"task": "augment", "input": str(qdq), "output": str(augmented)},
             "onnxruntime's qdq_loss_debug", "the model with its activations as outputs",
             _stopper(cancel, abandoned), budget(weights))


def pre_process_in_child(src: Path, pre: Path, weights: int, cancel: threading.Event | None = None) -> None:
    """quantize.optimizer_session(src, pre) in a child: onnxruntime's basic graph optimizer writes the
    pre-processed model to `pre` (the pass's pre-processing, for a big model in the window). Building
    BERT-base's session took 3.5 s and freeing it held the GIL, the window frozen 50 ms.
    Cancelled / StudioError as quantize_in_child."""
    with tempfile.TemporaryDirectory(prefix="studio-pre-") as folder:
        _ask(Path(folder), {"task": "pre_process", "input": str(src), "output": str(pre)},
             "onnxruntime's graph optimizer", "the pre-processed model", _stopper(cancel, None), budget(weights))


def load_written(path: Path, answer: dict):
    """The INT8 model quantize_in_child wrote to `path`, as onnx.load reads it, without one parse of
    the whole file in this process (it held the GIL ~80 ms for BERT-base's INT8 model): the child
    sent the model without its big initializers' bytes ("skeleton") and where those lie in the file
    ("located"), read here one tensor at a time as the window's own load does (onnx_child)."""
    import onnx

    if "skeleton" not in answer:
        return onnx.load(str(path))
    from ..io.onnx_child import from_reply

    return from_reply(Path(path), {"external": False, "located": answer["located"]}, answer["skeleton"])[0]


def _skeleton(path: Path, folder: Path) -> dict:
    """The written model without its big initializers' bytes, to `folder`/skeleton.onnx, and
    {"located": where those bytes lie in `path`}; {} when the file is not plain to the walk."""
    from ..io.onnx_child import locate, parse_reduced

    reduced = parse_reduced(path)
    if reduced is None:
        return {}
    proto, ranges = reduced
    located = locate(proto, path, ranges)
    (folder / "skeleton.onnx").write_bytes(proto.SerializeToString())
    return {"located": located}


def child_main(argv: list[str]) -> int:
    """`studio _quantize REQUEST`: quantize_file(REQUEST's JSON), the outcome written to its
    "reply" file: {"weights": [...], "located": [...]} (and skeleton.onnx beside it: see
    load_written) or {"error": its first line}. A request with "task": "ranges": the calibration
    (calibrate_main); "augment": augment_for_debug's; "pre_process": pre_process_in_child's."""
    from .quantize import _PerTensorNotes

    request = json.loads(Path(argv[0]).read_text())
    if request.get("task") == "ranges":
        return calibrate_main(request)
    notes = _PerTensorNotes()
    try:
        if request.get("task") == "pre_process":  # pre_process_in_child
            from .quantize import optimizer_session

            optimizer_session(Path(request["input"]), Path(request["output"]))
            Path(request["reply"]).write_text(json.dumps({}))
            return 0
        if request.get("task") == "augment":  # augment_for_debug
            from onnxruntime.quantization.qdq_loss_debug import modify_model_output_intermediate_tensors

            modify_model_output_intermediate_tensors(request["input"], request["output"])
            Path(request["reply"]).write_text(json.dumps({}))
            return 0
        quantize_file(request, notes)
        answer: dict = {"weights": notes.weights}
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own classes: one line to the parent
        answer = {"error": (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]}
    if "error" not in answer:
        with contextlib.suppress(Exception):  # the parent then reads the whole file itself
            answer.update(_skeleton(Path(request["output"]), Path(request["reply"]).parent))
    Path(request["reply"]).write_text(json.dumps(answer))
    return 0


def calibrate_main(request: dict) -> int:
    """The calibration child (ranges_in_child): progress on stdout, {} or {"error": ...} to "reply"."""
    from .quantize import _InputMeta, calibrate

    def report(done: int, total: int) -> None:
        # (the real stdout: calibrate sends what onnxruntime prints to stderr meanwhile)
        print(f"{PROGRESS} {done} {total}", file=sys.__stdout__, flush=True)

    try:
        x = read_samples(Path(request["samples"]), request["layout"])
        calibrate(Path(request["pre"]), request["op_types"], Path(request["augmented"]), request["method"],
                  request["streams"], [_InputMeta(n, d) for n, d in request["metas"]], x, request["batch"],
                  Path(request["cache"]), report=report, trim=True)
        answer: dict = {}
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own classes: one line to the parent
        answer = {"error": (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]}
    Path(request["reply"]).write_text(json.dumps(answer))
    return 0
