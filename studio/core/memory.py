"""RAM during inference, measured the way MEASURING.md asks: in a fresh child process per stage
(onnxruntime's arena keeps what it took after a run, and the studio's own process holds torch,
other stages and the window), as the growth of the child's resident memory from just before the
session is created to its peak while loading and running one batch-1 input three times.

    ram_bytes = peak RSS (load + 3 runs)  -  RSS before the session (imports done, input loaded)

So it counts the weights onnxruntime holds, its arena and the kernels' workspace, and not Python,
numpy or onnxruntime's own code. On Linux the kernel's peak is reset first (/proc/self/clear_refs),
so an earlier peak (an import) cannot hide the model's; elsewhere getrusage's lifetime peak is
used; on Windows it is left unmeasured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

RUNS = 3
TIMEOUT_S = float(os.environ.get("STUDIO_RUN_BUDGET", "900"))


RELEASE_FROM = 512 << 20  # resident bytes from which release() works (its collector pass takes ~0.2 s)


def release() -> None:
    """Give the heap's free pages back to the system: Python's collector, then glibc's
    malloc_trim. Between the pipeline's steps a BERT-base run held ~0.3-1 GB of freed but
    unreturned heap (the pass's copies of the model, the sessions gone), which a RAM child's
    memory then came on top of; after its calibration the INT8 pass held ~570 MB of it while
    quantize_static made its copies. Elsewhere than glibc only the collector runs. Nothing is
    done while the process holds under RELEASE_FROM (a small model's run would only lose time).
    Off the main thread (a window's job, the INT8 pass's calibration thread) the heap is trimmed
    without the collector: a collection there finalizes Qt objects off the GUI thread, and a
    window test hung on it (test_jobs, once the worker process held over RELEASE_FROM)."""
    import gc
    import threading

    rss = _status("VmRSS")
    if rss is not None and rss < RELEASE_FROM:
        return
    if threading.current_thread() is threading.main_thread():
        gc.collect()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # musl and others: no malloc_trim
            pass


def _status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux >= 4.0: the peak (VmHWM) starts again from the current RSS
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    peak = _status("VmHWM")
    if peak is not None:
        return peak
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def child_main(argv: list[str]) -> int:
    """In the child: load the feed, note the peak, create the session, run, note the peak."""
    if argv and argv[0] == "pte":
        return child_pte(argv[1:])
    if argv and argv[0] == "tflite":
        return child_tflite(argv[1:])
    model_path, feed_path, threads = argv[0], argv[1], int(argv[2])
    import onnxruntime as ort

    with np.load(feed_path) as f:
        feed = {k: f[k] for k in f.files}
    before = _status("VmRSS") if _reset_peak() else None
    before = before if before is not None else _peak_rss()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    for _ in range(RUNS):
        sess.run(None, feed)
    print(json.dumps({"before": before, "peak": _peak_rss()}))
    return 0


def child_pte(argv: list[str]) -> int:
    """The same for an ExecuTorch program: imports and the threadpool first, then from the reset
    peak: load the program and its method (XNNPACK packs the weights then), run it RUNS times."""
    program_path, feed_path, threads = argv[0], argv[1], int(argv[2])
    import torch
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
    from executorch.runtime import Runtime

    _unsafe_reset_threadpool(threads)
    runtime = Runtime.get()
    with np.load(feed_path) as f:
        args = [torch.from_numpy(np.ascontiguousarray(f[f"a{i}"])) for i in range(len(f.files))]
    before = _status("VmRSS") if _reset_peak() else None
    before = before if before is not None else _peak_rss()
    program = runtime.load_program(Path(program_path))  # it must outlive its method
    method = program.load_method("forward")
    for _ in range(RUNS):
        method.execute(args)
    print(json.dumps({"before": before, "peak": _peak_rss()}))
    return 0


def child_tflite(argv: list[str]) -> int:
    """The same for a LiteRT file: the interpreter's module imported first, then from the reset
    peak: create the interpreter (num_threads), allocate its tensors, run it RUNS times."""
    model_path, feed_path, threads = argv[0], argv[1], int(argv[2])
    from ai_edge_litert.interpreter import Interpreter

    from .runtimes import _tflite_feed

    with np.load(feed_path) as f:
        arrays = [np.ascontiguousarray(f[f"a{i}"]) for i in range(len(f.files))]
    before = _status("VmRSS") if _reset_peak() else None
    before = before if before is not None else _peak_rss()
    interpreter = Interpreter(model_path=model_path, num_threads=threads)
    interpreter.allocate_tensors()
    feed = _tflite_feed(interpreter, [SimpleNamespace(numpy=lambda a=a: a) for a in arrays])
    for _ in range(RUNS):
        for index, value in feed:
            interpreter.set_tensor(index, value)
        interpreter.invoke()
    print(json.dumps({"before": before, "peak": _peak_rss()}))
    return 0


def _command(model_path: Path, feed_path: Path, threads: int, kind: str = "") -> list[str]:
    args = ([kind] if kind else []) + [str(model_path), str(feed_path), str(threads)]
    if getattr(sys, "frozen", False):  # the PyInstaller build: the executable is the studio itself
        return [sys.executable, "_ram", *args]
    return [sys.executable, "-m", "studio.core.memory", *args]


def _input_metas(proto) -> list:
    """The graph's real inputs (initializers left out) as name + onnxruntime type string, what
    signature.feeds needs, without creating a session in this process."""
    from onnx import TensorProto

    inits = {t.name for t in proto.graph.initializer}
    return [SimpleNamespace(name=i.name, type=f"tensor({TensorProto.DataType.Name(i.type.tensor_type.elem_type).lower()})")
            for i in proto.graph.input if i.name not in inits]


def inference_ram(proto, x, threads: int = 1, tensors=None) -> int | None:
    """Bytes of RAM the ONNX model takes to load and run one sample of `x` (one array, or
    Inputs) in onnxruntime, measured in a fresh child; None where it cannot be measured.
    `tensors`: the proto's tensors still in the user's file (convert.light_onnx)."""
    if os.name != "posix":
        return None
    from .convert import fixed_batch, weight_bytes, write_model
    from .signature import feeds

    # (from the tensors' shapes: upb's ByteSize serializes the whole model to count, ~10 s and 830 MB on BERT-base)
    if weight_bytes(proto) > 2**31 - 1:
        return None  # one protobuf file cannot hold it; such a model is measured on its own files
    feed = feeds(_input_metas(proto), x, 0, 1, pad_to=fixed_batch(proto))
    # written a tensor at a time, before the child starts: no serialized copy beside the child that loads it
    return _measure_child(lambda path: write_model(proto, path, tensors=tensors), "model.onnx", feed, threads)


def pte_ram(program: bytes, args, threads: int = 1) -> int | None:
    """Bytes of RAM ExecuTorch takes to load and run the program (`.pte` bytes) on `args` (its
    forward's tensors), measured the same way in a fresh child; None where it cannot be."""
    if os.name != "posix":
        return None
    feed = {f"a{i}": a.detach().numpy() for i, a in enumerate(args)}
    return _measure_child(program, "model.pte", feed, threads, kind="pte")


def runtime_ram(name: str, file: bytes, args, threads: int = 1) -> int | None:
    """RAM of a stage's file in runtime `name` (core/runtimes.py: "pte" or "tflite"), measured
    the same way in a fresh child; None where it cannot be."""
    if name == "pte":
        return pte_ram(file, args, threads)
    if name == "tflite" and os.name == "posix":
        feed = {f"a{i}": a.detach().numpy() for i, a in enumerate(args)}
        return _measure_child(file, "model.tflite", feed, threads, kind="tflite")
    return None


def _measure_child(blob, name: str, feed: dict, threads: int, kind: str = "") -> int | None:
    """blob: the file's bytes, or a call that writes the file to the path it is given."""
    with tempfile.TemporaryDirectory(prefix="studio-ram-") as folder:
        model_path, feed_path = Path(folder) / name, Path(folder) / "feed.npz"
        if callable(blob):
            blob(model_path)
        else:
            model_path.write_bytes(blob)
        np.savez(feed_path, **feed)
        try:
            done = subprocess.run(_command(model_path, feed_path, threads, kind), capture_output=True, text=True,
                                  timeout=TIMEOUT_S, stdin=subprocess.DEVNULL, check=False,
                                  env={**os.environ, "PYTHONWARNINGS": "ignore"})
        except subprocess.TimeoutExpired:
            return None
    if done.returncode != 0:
        return None
    try:
        numbers = json.loads(done.stdout.strip().splitlines()[-1])
        return max(0, int(numbers["peak"]) - int(numbers["before"]))
    except (ValueError, KeyError, IndexError):
        return None


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
