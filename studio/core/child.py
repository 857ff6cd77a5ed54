"""The studio's child processes (`studio _VERB ARGS`): their command line, their environment,
how an ended one is named, and one wait that kills the child however it ends.

The probe (io/probe.py), the warm ONNX parser (io/onnx_child.py), the INT8 pass's
calibration and quantize_static (passes/quantize_child.py) and a big model's outputs
(outputs_child.py) run in children so that a crash, a hang or a long hold of the GIL cannot
take the window with it.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .errors import Cancelled, StudioError

POLL_S = 0.1  # how often the waiting thread looks at the cancel and the time budget


def command(verb: str, *args: str) -> list[str]:
    """The command line of `studio VERB ARGS` (VERB one of cli.main's internal verbs)."""
    if getattr(sys, "frozen", False):  # the PyInstaller build: the executable is the studio itself
        return [sys.executable, verb, *args]
    return [sys.executable, "-m", "studio", verb, *args]


def environment() -> dict:
    """The child's environment: this one, with this studio first on the path (the child runs
    this studio, not another one installed) and Python's warnings off its stderr."""
    import studio

    root = str(Path(studio.__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else ""), "PYTHONWARNINGS": "ignore"}


NICE = 5  # how much less CPU a computing child gets than the thread that started it


def lower_priority() -> None:
    """A computing child's first step (`_outputs`, `_quantize`): its threads below the job's that
    wait for it. On 2 cores its two onnxruntime streams took both, at the job's priority, and the
    window's process got one back only at their turn: a job thread that took the GIL to read a
    progress line waited for a core with the GIL held, and the window waited 50-60 ms for the GIL
    (a ui_stall BERT-base run, the window's process idle meanwhile). Threads the child starts
    inherit it; on an idle machine the child runs as fast."""
    if sys.platform.startswith("linux") and hasattr(os, "nice"):
        with contextlib.suppress(OSError):
            os.nice(NICE)


def ended(code: int) -> str:
    """How a child ended, for a message: "SIGSEGV", "signal 99", "exit 3"."""
    if code >= 0:
        return f"exit {code}"
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def run(verb: str, args: list[str], *, stop: Callable[[], bool] | None = None, budget: float | None = None,
        on_line: Callable[[str], None] | None = None, what: str = "the child process") -> int:
    """Run `studio VERB ARGS` and wait for it; its exit code (negative: the signal that ended it).
    stop(): looked at every POLL_S; when true the child is killed and Cancelled raised.
    budget: seconds the child may take; past it the child is killed and StudioError raised
    (`what` names it). on_line(text): each line the child prints on its stdout, called in this
    thread while it waits (a reader thread reads the pipe, so a child between two lines does
    not hold up the cancel); an exception there ends the wait. Whichever way this returns or
    raises, the child is not left running."""
    steps = lines(verb, args, stop=stop, budget=budget, what=what, piped=on_line is not None)
    try:
        while True:
            try:
                line = next(steps)
            except StopIteration as end:
                return end.value
            if on_line is not None:
                on_line(line)
    finally:
        steps.close()  # on_line raised: the child is killed now, not when the traceback goes


def lines(verb: str, args: list[str], *, stop: Callable[[], bool] | None = None, budget: float | None = None,
          what: str = "the child process", piped: bool = True):
    """run() as a generator: yields each line the child prints on its stdout (none unless
    `piped`) as it comes, returns the exit code. Closing the generator kills the child."""
    proc = subprocess.Popen(command(verb, *args), stdin=subprocess.DEVNULL, env=environment(),
                            stdout=subprocess.PIPE if piped else None, text=piped, bufsize=1 if piped else -1)
    queued: queue.Queue = queue.Queue()
    reader = None
    if piped:
        def read():
            with contextlib.suppress(Exception):
                for line in proc.stdout:
                    queued.put(line.rstrip("\n"))
            queued.put(None)

        reader = threading.Thread(target=read, name=f"studio-child-{verb}", daemon=True)
        reader.start()
    deadline = None if budget is None else time.monotonic() + budget
    try:
        while True:
            if reader is not None:
                try:
                    line = queued.get(timeout=POLL_S)
                except queue.Empty:
                    line = ""
                if line is None:  # the child closed its stdout: it is ending
                    reader = None
                elif line:
                    yield line
            elif proc.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(POLL_S)
            if reader is None and proc.poll() is not None:
                return proc.returncode
            if stop is not None and stop():
                raise Cancelled(f"{what}: cancelled")
            if deadline is not None and time.monotonic() > deadline:
                raise StudioError(f"{what} took over its {budget:.0f} s budget for this model; stopped")
    finally:
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(Exception):
            proc.wait(10)
        if proc.stdout is not None:
            with contextlib.suppress(Exception):
                proc.stdout.close()


# A child's time budget: generous multiples of what its work takes, so that a hung child (a deadlock
# in onnxruntime, a stopped process) ends the job in one line instead of holding it forever, while a
# slow or loaded machine is not stopped. Proportional to the work: a start, the model's weights read,
# converted and written (quantize_static; the calibrator's augment_graph), and each sample run through
# the weights and the activations of the graph.
START_S = 300.0  # an interpreter start with onnxruntime's imports on a loaded machine (1-2 s idle)
S_PER_MB = 2.0  # a MB of weights read, converted, written (BERT-base's 434 MB: ~60 s in quantize_static)
S_PER_SAMPLE_MB = 0.01  # a sample's run per MB of weights and activations (BERT-base ~0.5 s for ~730 MB)


def budget(weights: int, samples: int = 0, activations: int = 0) -> float:
    """Seconds a child may take: `weights` bytes of the model; `samples` run with `activations`
    bytes of activations each (BERT-base: ~20 min for quantize_static, ~50 min for a 256-sample
    calibration; on an idle machine they take ~1 and ~2-4 min)."""
    mb = weights / 2**20
    return START_S + S_PER_MB * mb + S_PER_SAMPLE_MB * samples * (mb + activations / 2**20)


def write_samples(x, path: Path) -> dict:
    """x (an array, or signature.Inputs) to an .npz a child reads; the layout read_samples needs (JSON)."""
    import numpy as np

    from .signature import Inputs

    if not isinstance(x, Inputs):
        np.savez(path, x=np.asarray(x))
        return {}
    named: dict = {f"a{i}": np.asarray(a) for i, a in enumerate(x.arrays.values())}
    named.update({f"c{i}": np.asarray(v) for i, v in enumerate(x.constants.values())})
    np.savez(path, **named)
    return {"arrays": list(x.arrays), "constants": list(x.constants), "axes": x.axes}


def read_samples(path: Path, layout: dict):
    """The samples write_samples wrote (no pickles: an object array is refused)."""
    import numpy as np

    from .signature import Inputs

    with np.load(path, allow_pickle=False) as stored:
        if not layout:
            return stored["x"]
        return Inputs({name: stored[f"a{i}"] for i, name in enumerate(layout["arrays"])},
                      {name: stored[f"c{i}"] for i, name in enumerate(layout["constants"])}, layout["axes"])
