"""Parse an untrusted file in a child process first, where a crash or a hang cannot take the
window (and all the work open in it) down.

TorchScript's loader compiles the file's `code/` members in C++: 50,000 nested parentheses
overflow the C stack (SIGSEGV), and no Python `try` catches that. The child runs the same parse;
if it dies or exceeds its time budget the file is refused in one line, and the parent loads it
only when the child came back alive. Costs one interpreter start with torch (~2 s) per file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ..child import command, ended, environment
from ..errors import LoadError

TIMEOUT_S = float(os.environ.get("STUDIO_PROBE_TIMEOUT", "180"))
EXIT_PARSE_ERROR = 3


def probe(fmt: str, path: Path, timeout: float = TIMEOUT_S, what: str = "torch") -> None:
    """Raise LoadError if parsing `path` as `fmt` crashes or hangs a child process. A parse that
    merely fails is left to the caller, which reports it from its own in-process attempt."""
    try:
        result = subprocess.run(command("_probe", fmt, str(path)), capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL, env=environment())
    except subprocess.TimeoutExpired:
        raise LoadError(f"{path.name}: parsing it took over {timeout:.0f} s; refused") from None
    if result.returncode < 0:
        raise LoadError(f"{path.name}: parsing it crashed {what} ({ended(result.returncode)}); refused")
    if result.returncode not in (0, EXIT_PARSE_ERROR):
        raise LoadError(f"{path.name}: parsing it failed in a child process (exit {result.returncode}); refused")


def child_main(argv: list[str]) -> int:
    """`studio _probe FORMAT PATH`: the parse alone; exit 0 parsed, 3 a parse error, killed if it crashes."""
    if argv == ["onnx_server"]:  # the window's warm ONNX parser (onnx_child)
        from .onnx_child import serve

        return serve()
    fmt, path = argv
    try:
        if fmt == "torchscript":
            import torch

            torch.jit.load(path, map_location="cpu")
        elif fmt == "onnx_session":  # a model the studio made: can onnxruntime build a session for it?
            import onnxruntime as ort

            ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        else:
            print(f"unknown probe format {fmt}", file=sys.stderr)
            return 2
    except Exception as exc:  # noqa: BLE001 - a clean failure; the parent reports its own
        print(str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__, file=sys.stderr)
        return EXIT_PARSE_ERROR
    return 0
