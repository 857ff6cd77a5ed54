"""An ONNX file parsed in a child process, for the window: the window never holds the GIL for
the length of one big parse.

protobuf parses a file in one C call that holds the GIL (BERT-base, 440 MB: ~0.6 s), so a parse
on the window's worker thread froze the window for as long. Here a child process kept warm
(`studio _probe onnx_server`, started when the window warms up) parses the user's file with the
same checks as the in-process load (`onnx_io.parse_checked`: sidecar paths inside the model's
folder, every tensor's claimed size against its bytes, graph size and cycles), loads the user's
external data, and writes a copy whose tensors over SPLIT_BYTES are external data in one file,
into a private temporary folder (never the user's folder). The parent parses the small graph,
checks that copy again like any file, reads the tensors one at a time (each read a separate
call, so the window gets the GIL between them) and removes the folder.

A child that crashes (C++ in protobuf or onnx) or outlives its time budget refuses the file in
one line; the next open starts a new child.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from ..errors import LoadError

SPLIT_BYTES = 1024  # tensors bigger than this are read one by one in the parent (onnx's own threshold)
TIMEOUT_S = float(os.environ.get("STUDIO_PROBE_TIMEOUT", "180"))
GRAPH, DATA = "model.onnx", "model.data"


def _command() -> list[str]:
    if getattr(sys, "frozen", False):  # the PyInstaller build: the executable is the studio itself
        return [sys.executable, "_probe", "onnx_server"]
    return [sys.executable, "-m", "studio", "_probe", "onnx_server"]


class Parser:
    """The warm child and the requests sent to it, one at a time."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()
        self.registered = False

    def start(self) -> None:
        """Start the child now (the window calls this at warm-up: an interpreter start with onnx
        is ~1-2 s, paid before the first open instead of during it)."""
        with self.lock:
            self._ensure()

    def _ensure(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            if not self.registered:
                atexit.register(self.stop)
                self.registered = True
                sweep()
            self.proc = subprocess.Popen(_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONWARNINGS": "ignore"},
                                         text=True, encoding="utf-8", bufsize=1)
        return self.proc

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def pid(self) -> int | None:
        return None if self.proc is None or self.proc.poll() is not None else self.proc.pid

    def split(self, path: Path, out: Path, timeout: float = TIMEOUT_S) -> dict:
        """Ask the child to parse `path` and write its split copy into `out`; the child's reply."""
        with self.lock:
            proc = self._ensure()
            late = threading.Event()
            watchdog = threading.Timer(timeout, lambda: (late.set(), proc.kill()))
            watchdog.start()
            try:
                proc.stdin.write(json.dumps({"path": str(path), "out": str(out)}) + "\n")
                proc.stdin.flush()
                line = proc.stdout.readline()
            except OSError:  # the child died before it read the request
                line = ""
            finally:
                watchdog.cancel()
            if line:
                return json.loads(line)
            code = proc.wait()
            self.proc = None
            if late.is_set():
                raise LoadError(f"{path.name}: parsing it took over {timeout:.0f} s; refused")
            try:
                how = signal.Signals(-code).name if code < 0 else f"exit {code}"
            except ValueError:
                how = f"signal {-code}"
            raise LoadError(f"{path.name}: parsing it crashed onnx ({how}); refused")


PARSER = Parser()
PREFIX = "studio-open-"


def sweep(root: str | None = None) -> None:
    """Remove the private copies a studio that died during an open left behind (their folder
    names hold the pid of the process that made them; a live process's are left alone)."""
    root = root or tempfile.gettempdir()
    with contextlib.suppress(OSError):
        for entry in os.scandir(root):
            pid = entry.name[len(PREFIX):].split("-")[0]
            if not (entry.name.startswith(PREFIX) and pid.isdigit() and entry.is_dir(follow_symlinks=False)):
                continue
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                shutil.rmtree(entry.path, ignore_errors=True)
            except (OSError, OverflowError):  # another user's process, or no such pid at all
                continue


def load_isolated(path: Path):
    """(proto with every tensor loaded, whether the user's file used external data): parsed and
    checked in the child, read here a tensor at a time."""
    import onnx
    from .onnx_io import check_structure, check_tensors

    out = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-"))
    try:
        reply = PARSER.split(path, out)
        if "refused" in reply:
            raise LoadError(reply["refused"])
        graph = out / GRAPH
        proto = onnx.load_model(str(graph), load_external_data=False)  # the graph alone: small
        # the copy is checked like any file before a byte of it is read (the bytes the child did
        # not count: the tensors it left in the graph, and the split ones against their file)
        check_tensors(proto, out, path.name, path.stat().st_size)
        check_structure(proto, path.name)
        _read_tensors(proto, out / DATA)
        return proto, bool(reply.get("external"))
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _read_tensors(proto, data: Path) -> None:
    """Each external tensor's bytes read into it, one tensor per call: the read itself lets the
    GIL go, the copy into the proto holds it only for that tensor (BERT-base's largest, the
    token embedding, 94 MB: tens of ms, mostly first-touch page faults of the new buffer)."""
    from onnx import TensorProto

    from .onnx_io import _all_tensors, _external_info

    with open(data, "rb", buffering=0) as f:
        for t in _all_tensors(proto.graph):
            if t.data_location != TensorProto.EXTERNAL:
                continue
            info = _external_info(t)  # checked by check_tensors: inside `out`, within the file
            f.seek(int(info.get("offset", 0)))
            t.raw_data = f.read(int(info["length"]))
            del t.external_data[:]
            t.ClearField("data_location")


def split(proto, out: Path) -> None:
    """Write `proto` into `out`: tensors over SPLIT_BYTES as external data in one file, in order.
    A tensor whose bytes disagree with its dims stays in the graph, for the parent's check_tensors
    to refuse in the words the in-process load uses."""
    from onnx import TensorProto

    from .onnx_io import _all_tensors, _itemsize

    offset = 0
    with open(out / DATA, "wb") as f:
        for t in _all_tensors(proto.graph):
            if t.data_location == TensorProto.EXTERNAL or not t.HasField("raw_data"):
                continue
            raw, size = t.raw_data, _itemsize(t.data_type)
            count = 1
            for d in t.dims:
                count *= d
            if len(raw) <= SPLIT_BYTES or size is None or len(raw) not in (count * size, (count + 1) // 2 if size == 1 else -1):
                continue
            pad = -offset % 64  # aligned, as onnx writes them
            f.write(b"\0" * pad)
            offset += pad
            f.write(raw)
            t.ClearField("raw_data")
            t.data_location = TensorProto.EXTERNAL
            for key, value in (("location", DATA), ("offset", str(offset)), ("length", str(len(raw)))):
                entry = t.external_data.add()
                entry.key, entry.value = key, value
            offset += len(raw)
    (out / GRAPH).write_bytes(proto.SerializeToString())


def serve(requests=sys.stdin) -> int:
    """`studio _probe onnx_server`: one JSON request a line ({"path", "out"}), one JSON reply a line
    ({"external"} or {"refused": one line}); exits when its input closes."""
    from ..errors import one_line
    from .onnx_io import parse_checked

    replies = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)  # a library's print never mixes with the replies
    import onnx  # noqa: F401 - paid once, before the first request

    for line in requests:
        request = json.loads(line)
        path, out = Path(request["path"]), Path(request["out"])
        proto = None
        try:
            proto, external = parse_checked(path, inline=False)  # the parent checks those bytes
            try:
                split(proto, out)
            except OSError as exc:  # a full or read-only temporary folder: not the file's fault
                raise LoadError(f"{path.name}: cannot write its temporary copy in {out.parent} ({exc.strerror or exc})") from None
            reply = {"external": external}
        except LoadError as exc:
            reply = {"refused": one_line(exc)}
        except Exception as exc:  # noqa: BLE001 - the file, not the studio: one line to the user
            reply = {"refused": one_line(f"{path.name}: not a readable ONNX file ({exc})")}
        del proto
        try:
            replies.write(json.dumps(reply) + "\n")
        except OSError:  # the window went away: leave nothing behind
            shutil.rmtree(out, ignore_errors=True)
            return 0
    return 0
