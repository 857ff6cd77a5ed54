"""Latency on the runtimes a model ships to, beside onnxruntime's: `studio run --runtimes ort pte`.

onnxruntime (`ort`) is always measured: it is the stage table's base. The others are measured
only when asked (each stage is exported for them first, seconds per stage), at batch 1: the
phone runtimes plan memory for the exported shapes, and their files are written for batch 1
(core/edge.py). Their runs are timed in the same interleaved rounds as onnxruntime's batch 1
(evaluate.measure_latency_all), with the same fixed thread count.

    pte   ExecuTorch, the stage lowered to the XNNPACK delegate (float32, as edge.pte_bytes
          writes it), run by executorch.runtime; its global threadpool is set to the run's
          thread count while measuring and restored after.

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
}
DEFAULT = ("ort",)


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


def runner(name: str, model: Model, x1) -> Runner:
    """A call that runs `model` once on the batch-1 input x1 in runtime `name` (already run once,
    so it works); a StudioError with one line when the stage cannot reach that runtime."""
    if name != "pte":
        raise StudioError(f"no runner for runtime '{name}'")
    try:
        return _pte_runner(model, x1)
    except StudioError as exc:  # onnx2torch's refusal ends with advice about passes: not this case's
        raise StudioError(str(exc).split("; passes that need torch")[0]) from None


def _pte_runner(model: Model, x1):
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

    return Runner(method, args, program, blob)


class Runner:
    """One stage loaded in a runtime: calling it runs the stage once on its batch-1 input;
    `file` is what was loaded (measured again for RAM in a fresh process), `args` its input."""

    def __init__(self, method, args, program, file: bytes):
        self.method, self.args, self.program, self.file = method, args, program, file  # the program outlives its method

    def __call__(self):
        return self.method.execute(self.args)


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
