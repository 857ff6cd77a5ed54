"""onnxruntime's quantize_static run in a child process (the INT8 pass's tries).

quantize_static is Python that holds the GIL for long stretches: it loads the model, turns each
weight into a numpy array and back, and serializes the INT8 model in one piece (BERT-base: ~200 ms
a save, 60-100 ms for the biggest weights), and the window froze that long on every try. Here it
runs in a child (`studio _quantize REQUEST`) that reads the pre-processed model and the calibration
cache the pass wrote (the calibration itself stays in the pass: its sessions let the GIL go) and
writes the INT8 model to the file named; the parent only waits. A cancel kills the child; an error
comes back as its first line, a crash (C++ in onnxruntime) as a one-line StudioError instead of
taking the window with it. The file is the one quantize_static writes in-process: a test checks
the bytes are the same.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from ..errors import Cancelled, StudioError

POLL_S = 0.1  # how often the waiting thread looks at the cancel


def _command(request: Path) -> list[str]:
    if getattr(sys, "frozen", False):  # the PyInstaller build: the executable is the studio itself
        return [sys.executable, "_quantize", str(request)]
    return [sys.executable, "-m", "studio", "_quantize", str(request)]


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


def quantize(request: dict, weights: int, cancel: threading.Event | None = None) -> dict:
    """quantize_file(request): in a child (quantize_in_child) for a model whose weights hold over
    CHILD_OVER bytes (`weights`: convert.weight_bytes; not the input file's size, which for a
    pre-processed model is only its graph, the weights being in its sidecar), here for a smaller
    one; the same answer either way ({"weights": [...]}; load_written reads the file)."""
    if weights > CHILD_OVER:
        return quantize_in_child(request, cancel)
    from .quantize import _PerTensorNotes

    notes = _PerTensorNotes()
    quantize_file(request, notes)
    return {"weights": notes.weights}


def quantize_in_child(request: dict, cancel: threading.Event | None = None) -> dict:
    """quantize_file(request) in a child process; returns {"weights": the weights of the per-tensor
    notes (quantize._PerTensorNotes) it kept off the terminal, in order, "located" and "skeleton":
    see load_written}. Cancelled when `cancel` is set (the child is killed); StudioError in one line
    when onnxruntime fails or the child dies."""
    with tempfile.TemporaryDirectory(prefix="studio-quantize-") as folder:
        asked, reply = Path(folder) / "request.json", Path(folder) / "reply.json"
        asked.write_text(json.dumps({**request, "reply": str(reply)}))
        import studio

        root = str(Path(studio.__file__).resolve().parents[1])  # the child runs this studio, not another one
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}
        proc = subprocess.Popen(_command(asked), stdin=subprocess.DEVNULL, env=env)
        try:
            while True:
                try:
                    code = proc.wait(POLL_S)
                    break
                except subprocess.TimeoutExpired:
                    if cancel is not None and cancel.is_set():
                        raise Cancelled("quantizing cancelled") from None
        finally:
            if proc.poll() is None:
                proc.kill()
                with contextlib.suppress(Exception):
                    proc.wait(10)
        try:
            answer = json.loads(reply.read_text())
            skeleton = Path(folder) / "skeleton.onnx"
            if "located" in answer and skeleton.exists():
                answer["skeleton"] = skeleton.read_bytes()
        except (OSError, ValueError):
            answer = None
    if answer is None or code != 0:
        try:
            how = signal.Signals(-code).name if code < 0 else f"exit {code}"
        except ValueError:
            how = f"signal {-code}"
        raise StudioError(f"onnxruntime's quantizer stopped ({how}) before it wrote the INT8 model")
    if "error" in answer:
        raise StudioError(answer["error"])
    return answer


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
    load_written) or {"error": its first line}."""
    from .quantize import _PerTensorNotes

    request = json.loads(Path(argv[0]).read_text())
    notes = _PerTensorNotes()
    try:
        quantize_file(request, notes)
        answer: dict = {"weights": notes.weights}
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own classes: one line to the parent
        answer = {"error": (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]}
    if "error" not in answer:
        with contextlib.suppress(Exception):  # the parent then reads the whole file itself
            answer.update(_skeleton(Path(request["output"]), Path(request["reply"]).parent))
    Path(request["reply"]).write_text(json.dumps(answer))
    return 0
