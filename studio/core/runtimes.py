"""Latency on the runtimes a model ships to, beside onnxruntime's: `studio run --runtimes ort pte`.

onnxruntime (`ort`) is always measured: it is the stage table's base. The others are measured
only when asked (each stage is exported for them first, seconds per stage), at batch 1: the
phone runtimes plan memory for the exported shapes, and their files are written for batch 1
(core/edge.py). Their runs are timed in the same interleaved rounds as onnxruntime's batch 1
(evaluate.measure_latency_all), with the same fixed thread count.

    pte   ExecuTorch, the stage lowered to the XNNPACK delegate (float32, as edge.pte_bytes
          writes it), run by executorch.runtime; its global threadpool is set to the run's
          thread count while measuring and restored after.
    tflite LiteRT, the stage converted by litert-torch (float32, as edge.tflite_bytes writes
          it), run by ai_edge_litert's Interpreter (its default XNNPACK delegate) with
          num_threads set to the run's thread count; each call sets the inputs and invokes.

A stage that cannot reach a runtime (torch.export cannot capture it, an op cannot be lowered,
an ONNX stage onnx2torch cannot convert) gets no number and one warning saying why.
"""

from __future__ import annotations

from contextlib import contextmanager

from .errors import StudioError
from .model import Model

# runtime id -> (the stage table's name for it, the export format it runs)
RUNTIMES = {
    "ort": ("onnxruntime", "onnx"),
    "pte": ("ExecuTorch (XNNPACK)", "pte"),
    "tflite": ("LiteRT (XNNPACK)", "tflite"),
}
DEFAULT = ("ort",)
SHORT = {"ort": "ORT", "pte": "ExecuTorch", "tflite": "LiteRT"}  # the window's checkboxes


def missing(name: str) -> str | None:
    """Why runtime `name` cannot be measured on this machine (one line saying what to install), or None."""
    from . import edge

    return edge.missing(RUNTIMES[name][1])


def check(names) -> tuple[str, ...]:
    """The runtimes to measure, `ort` first; refuses an unknown one, or one not installed (with
    what to install), before any work."""
    from . import edge

    wanted = list(dict.fromkeys(["ort", *(names or ())]))
    for name in wanted:
        if name not in RUNTIMES:
            raise StudioError(f"unknown runtime '{name}'; choose from {', '.join(RUNTIMES)}")
        reason = edge.missing(RUNTIMES[name][1])
        if reason is not None:
            raise StudioError(f"cannot measure latency on {name}: {reason}")
    return tuple(wanted)


def title(name: str) -> str:
    return RUNTIMES[name][0]


def runner(name: str, model: Model, x1, threads: int = 1) -> Runner:
    """A call that runs `model` once on the batch-1 input x1 in runtime `name` (already run once,
    so it works) with `threads` threads where the runtime takes them per model (LiteRT; ExecuTorch's
    pool is global: see threads()); a StudioError with one line when the stage cannot reach it."""
    makers = {"pte": _pte_runner, "tflite": _tflite_runner}
    if name not in makers:
        raise StudioError(f"no runner for runtime '{name}'")
    try:
        return makers[name](model, x1, threads)
    except StudioError as exc:  # onnx2torch's refusal ends with advice about passes: not this case's
        raise StudioError(str(exc).split("; passes that need torch")[0]) from None


def _pte_runner(model: Model, x1, threads: int):
    from . import edge
    from .convert import _quiet_output

    blob = edge.pte_bytes(model, x1)
    args = list(edge._sample_args(x1[:1], model))
    with _quiet_output():  # cpuinfo's and the threadpool's chatter on stderr
        from executorch.runtime import Runtime

        try:
            program = Runtime.get().load_program(blob)
            method = program.load_method("forward")
            method.execute(args)
        except Exception as exc:  # noqa: BLE001 - the runtime refuses the program: one line
            raise StudioError(f"ExecuTorch cannot run this program: {edge._first_line(exc)}") from None

    return Runner(lambda: method.execute(args), args, blob, keep=(program, method))  # the program outlives its method


def _tflite_runner(model: Model, x1, threads: int):
    from . import edge
    from .convert import _quiet_output

    blob = edge.tflite_bytes(model, x1)
    args = list(edge._sample_args(x1[:1], model))
    with _quiet_output():  # "INFO: Created TensorFlow Lite XNNPACK delegate" on stderr
        from ai_edge_litert.interpreter import Interpreter

        try:
            interpreter = Interpreter(model_content=blob, num_threads=threads)
            interpreter.allocate_tensors()
            feed = _tflite_feed(interpreter, args)
            for index, value in feed:
                interpreter.set_tensor(index, value)
            interpreter.invoke()
        except Exception as exc:  # noqa: BLE001 - the interpreter refuses the file: one line
            raise StudioError(f"LiteRT cannot run this file: {edge._first_line(exc)}") from None

    def call():
        for index, value in feed:
            interpreter.set_tensor(index, value)
        interpreter.invoke()

    return Runner(call, args, blob, keep=(interpreter,))


def _tflite_feed(interpreter, args) -> list[tuple[int, object]]:
    """(tensor index, value) per input: litert-torch names forward's inputs ..._args_0, _args_1,
    ... (the signature runner is not used: it holds views that forbid allocate_tensors); values
    quantized where the file takes integers."""
    from . import edge

    details = {d["name"].rsplit("args_", 1)[-1]: d for d in interpreter.get_input_details()}
    feed: list[tuple[int, object]] = []
    for k, a in enumerate(args):
        detail = details.get(str(k))
        if detail is None:
            raise StudioError(f"the LiteRT file has no input args_{k}")
        feed.append((detail["index"], edge._to_tflite(a.numpy(), detail)))
    return feed


class Runner:
    """One stage loaded in a runtime: calling it runs the stage once on its batch-1 input;
    `file` is what was loaded (measured again for RAM in a fresh process), `args` its input
    (torch tensors, forward's order); `keep` holds what the call needs alive."""

    def __init__(self, call, args, file: bytes, keep=()):
        self.call, self.args, self.file, self.keep = call, args, file, keep

    def __call__(self):
        return self.call()


@contextmanager
def threads(names, count: int):
    """Each runtime in `names` set to `count` threads for the measurement (onnxruntime's sessions
    take theirs when created). ExecuTorch's threadpool is global and its XNNPACK programs keep
    the pool they were loaded with (a reset under a loaded program frees the pool it uses: glibc
    aborted in __pthread_tpp_change_priority here), so: reset, then load the programs, run them,
    drop them, and only then is the pool restored."""
    restore = None
    if "pte" in names:
        from .convert import _quiet_output

        with _quiet_output():
            from executorch.extension.pybindings.portable_lib import (
                _threadpool_get_thread_count,
                _unsafe_reset_threadpool,
            )

            restore = _threadpool_get_thread_count()
            _unsafe_reset_threadpool(count)
    try:
        yield
    finally:
        if restore is not None:
            with _quiet_output():
                _unsafe_reset_threadpool(restore)
