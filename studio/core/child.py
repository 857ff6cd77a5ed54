"""The studio's child processes (`studio _VERB ARGS`): their command line, their environment,
how an ended one is named, and one wait that kills the child however it ends.

The probe (io/probe.py), the warm ONNX parser (io/onnx_child.py) and the INT8 pass's
calibration and quantize_static (passes/quantize_child.py) run in children so that a crash,
a hang or a long hold of the GIL cannot take the window with it.
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
    raises (a closed generator's GeneratorExit too), the child is not left running."""
    proc = subprocess.Popen(command(verb, *args), stdin=subprocess.DEVNULL, env=environment(),
                            stdout=subprocess.PIPE if on_line is not None else None,
                            text=on_line is not None, bufsize=1 if on_line is not None else -1)
    lines: queue.Queue = queue.Queue()
    reader = None
    if on_line is not None:
        def read():
            with contextlib.suppress(Exception):
                for line in proc.stdout:
                    lines.put(line.rstrip("\n"))
            lines.put(None)

        reader = threading.Thread(target=read, name=f"studio-child-{verb}", daemon=True)
        reader.start()
    deadline = None if budget is None else time.monotonic() + budget
    try:
        while True:
            if reader is not None:
                try:
                    line = lines.get(timeout=POLL_S)
                except queue.Empty:
                    line = ""
                if line is None:  # the child closed its stdout: it is ending
                    reader = None
                elif line and on_line is not None:
                    on_line(line)
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
