"""An ONNX file parsed in a child process, for the window: the window never holds the GIL for
the length of one big parse.

protobuf parses a file in one C call that holds the GIL (BERT-base, 440 MB: ~0.6 s), so a parse
on the window's worker thread froze the window for as long. Here a child process kept warm
(`studio _probe onnx_server`, started when the window warms up) parses the user's file with the
same checks as the in-process load (`onnx_io.parse_checked`: sidecar paths inside the model's
folder, every tensor's claimed size against its bytes, graph size and cycles) and finds where
each big initializer's bytes lie in the file itself (a walk over protobuf's wire format:
ModelProto.graph -> GraphProto.initializer -> TensorProto.raw_data). It sends back the model
without those bytes, each such tensor pointing into the user's own file as external data does
(location: the file's name, offset, length). Nothing is written anywhere. The parent checks that
small model as any file (every offset and length against the file's size) and reads the tensors'
bytes, and those of the file's own sidecars, one tensor at a time: each read is a separate call,
so the window gets the GIL between them. The window's load (`lazy`) leaves the located tensors in
the file instead (file_tensors: each copy into the proto held the GIL for the whole tensor).

A child that crashes (C++ in protobuf or onnx) or outlives its time budget refuses the file in
one line; the next open starts a new child.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import mmap
import os
import subprocess
import sys
import threading
from pathlib import Path

from ..child import command, ended, environment
from ..errors import LoadError

SPLIT_BYTES = 1024  # tensors bigger than this are read one by one in the parent (onnx's own threshold)
TIMEOUT_S = float(os.environ.get("STUDIO_PROBE_TIMEOUT", "180"))
MAX_FIELDS = 5_000_000  # the wire walk gives up past this many fields (the tensors then come inline)


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
            self.proc = subprocess.Popen(command("_probe", "onnx_server"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, env=environment())
        return self.proc

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def pid(self) -> int | None:
        return None if self.proc is None or self.proc.poll() is not None else self.proc.pid

    def parse(self, path: Path, timeout: float = TIMEOUT_S) -> tuple[dict, bytes]:
        """Ask the child to parse `path`: its reply ({"external", "located"} or {"refused"}) and
        the model's bytes without the located tensors' bytes."""
        with self.lock:
            proc = self._ensure()
            late = threading.Event()
            def expire() -> None:
                late.set()
                proc.kill()

            watchdog = threading.Timer(timeout, expire)
            watchdog.start()
            assert proc.stdin is not None and proc.stdout is not None  # both PIPE
            try:
                proc.stdin.write(json.dumps({"path": str(path)}).encode() + b"\n")
                proc.stdin.flush()
                line = proc.stdout.readline()
                reply = json.loads(line) if line else None
                body = proc.stdout.read(reply.get("bytes", 0)) if reply else b""
            except OSError:  # the child died before it read the request
                reply, body = None, b""
            finally:
                watchdog.cancel()
            if reply is not None and len(body) == reply.get("bytes", 0):
                return reply, body
            code = proc.wait()
            self.proc = None
            if late.is_set():
                raise LoadError(f"{path.name}: parsing it took over {timeout:.0f} s; refused")
            raise LoadError(f"{path.name}: parsing it crashed onnx ({ended(code)}); refused")


PARSER = Parser()


def load_isolated(path: Path, lazy: bool = False):
    """(proto with every tensor loaded, whether the user's file used external data): parsed and
    checked in the child, the tensors' bytes read here one at a time. `lazy`: (proto, external,
    FileTensors or None): the big initializers' bytes left in the file (see file_tensors)."""
    return from_reply(path, *PARSER.parse(path), lazy=lazy)


def from_reply(path: Path, reply: dict, body: bytes, lazy: bool = False):
    """load_isolated's part in this process: the child's reply checked and its tensors read
    (`lazy`: checked against the file, left there)."""
    import onnx

    from .onnx_io import check_structure, check_tensors, load_external

    if "refused" in reply:
        raise LoadError(reply["refused"])
    proto = onnx.ModelProto()
    proto.ParseFromString(body)  # the graph and the small tensors: a few MB at most
    del body
    located = {i: (offset, length) for i, offset, length in reply["located"]}
    # checked like any file before a byte is read: the small tensors the child did not count
    # (the located ones are checked against the file as they are read)
    check_tensors(proto, path.parent, path.name, path.stat().st_size, located=located)
    check_structure(proto, path.name)
    if lazy:
        from onnx.external_data_helper import _get_all_tensors, uses_external_data

        from .file_tensors import FileTensors
        from .onnx_io import _itemsize

        _check_located(proto, path, located)
        # the main graph's initializers in the file's own sidecars stay there too (onnx lists
        # them first); the other tensors there (subgraphs', Constant nodes') are read now
        sidecars = {i: {e.key: e.value for e in t.external_data}["location"]
                    for i, t in enumerate(proto.graph.initializer)
                    if uses_external_data(t) and _itemsize(t.data_type) is not None}
        load_external(proto, path, [t for k, t in enumerate(_get_all_tensors(proto)) if k not in sidecars])
        lazy_tensors = FileTensors(path, proto, located, sidecars) if located or sidecars else None
        return proto, bool(reply["external"]), lazy_tensors
    _read_located(proto, path, located)
    load_external(proto, path)  # the file's own sidecars, if any
    return proto, bool(reply["external"])


def _check_located(proto, path: Path, located: dict, f=None) -> None:
    """Each located tensor's range against its dims and the file's size (the file may have
    changed since the child parsed it)."""
    from .onnx_io import data_bytes

    inits = proto.graph.initializer
    try:
        with contextlib.nullcontext(f) if f is not None else open(path, "rb") as g:
            size = os.fstat(g.fileno()).st_size
            for i, (offset, length) in located.items():
                t = inits[i]
                count = 1
                for d in t.dims:
                    count *= d
                need = data_bytes(t.data_type, count)
                if need is None or length != need or offset + length > size:
                    raise OSError(f"tensor '{t.name}' is not where it was")  # the file changed meanwhile
    except OSError as exc:  # the file changed or went away since the child parsed it
        raise LoadError(f"{path.name}: cannot read it ({exc.strerror or exc})") from None


def _read_located(proto, path: Path, located: dict) -> None:
    """Each located tensor's bytes read from the user's file into it, one tensor per call: the
    read itself lets the GIL go, the copy into the proto holds it only for that tensor."""
    if not located:
        return
    inits = proto.graph.initializer
    try:
        with open(path, "rb") as f:
            _check_located(proto, path, located, f)
            for i, (offset, length) in located.items():
                t = inits[i]
                f.seek(offset)
                raw = f.read(length)
                if len(raw) != length:
                    raise OSError(f"tensor '{t.name}' is not where it was")
                t.raw_data = raw
                del raw
    except OSError as exc:  # the file changed or went away since the child parsed it
        raise LoadError(f"{path.name}: cannot read it ({exc.strerror or exc})") from None


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class _Walk:
    """protobuf's wire format, walked over a byte range: (field, wire type, tag start, tag end,
    payload start, end) of each field. Raises ValueError on anything but plain fields (groups,
    a truncated field, more than MAX_FIELDS fields): the caller then leaves it to protobuf."""

    def __init__(self, buf):
        self.buf, self.fields = buf, 0

    def fields_of(self, pos: int, end: int):
        buf = self.buf
        while pos < end:
            self.fields += 1
            if self.fields > MAX_FIELDS:
                raise ValueError("too many fields")
            tag = pos
            key, pos = _varint(buf, pos, end)
            field, wire, key_end = key >> 3, key & 7, pos
            if wire == 0:
                _, pos = _varint(buf, pos, end)
            elif wire == 2:
                size, pos = _varint(buf, pos, end)
                pos += size
            elif wire in (1, 5):
                pos += 8 if wire == 1 else 4
            else:
                raise ValueError(f"wire type {wire}")
            if pos > end or field == 0:
                raise ValueError("malformed field")
            yield field, wire, tag, key_end, pos - size if wire == 2 else key_end, pos


def reduced(buf) -> tuple[bytes, list[tuple[int, int] | None]]:
    """The model's bytes without the raw_data of the main graph's initializers over SPLIT_BYTES
    (ModelProto.graph(7) -> GraphProto.initializer(5) -> TensorProto.raw_data(9)), and for each
    initializer, in the order protobuf parses them, the (offset, length) in `buf` of the raw_data
    left out (None: kept). protobuf's rules: a repeated `graph` field merges (their initializers
    follow each other), of a repeated raw_data the last counts. Everything else is copied as it
    is, for protobuf to parse (and refuse) as it would the whole file."""
    walk, out = _Walk(buf), []
    ranges: list[tuple[int, int] | None] = []
    for field, wire, tag, key_end, start, end in walk.fields_of(0, len(buf)):
        if field != 7 or wire != 2:
            out.append(buf[tag:end])
            continue
        graph = []
        for gfield, gwire, gtag, gkey_end, gstart, gend in walk.fields_of(start, end):
            if gfield != 5 or gwire != 2:
                graph.append(buf[gtag:gend])
                continue
            raws = [(tstart, tend) for tfield, twire, _, _, tstart, tend in walk.fields_of(gstart, gend)
                    if tfield == 9 and twire == 2]
            if not raws or raws[-1][1] - raws[-1][0] <= SPLIT_BYTES:
                ranges.append(None)
                graph.append(buf[gtag:gend])
                continue
            ranges.append((raws[-1][0], raws[-1][1] - raws[-1][0]))
            tensor = [buf[ttag:tend] for tfield, twire, ttag, _, _, tend in walk.fields_of(gstart, gend)
                      if not (tfield == 9 and twire == 2)]
            body = b"".join(tensor)
            graph.append(buf[gtag:gkey_end] + _encode_varint(len(body)) + body)
        body = b"".join(graph)
        out.append(buf[tag:key_end] + _encode_varint(len(body)) + body)
    return b"".join(out), ranges


def parse_reduced(path: Path):
    """(model without its big initializers' bytes, their ranges in the file), or None when the
    file is not plain protobuf to the walk or its reduced bytes do not parse: protobuf then
    parses (or refuses) the whole file."""
    import onnx

    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            if len(buf) >= 2**31:  # over protobuf's limit: its refusal, in its own words
                return None
            body, ranges = reduced(buf)
        proto = onnx.ModelProto()
        if proto.ParseFromString(body) != len(body):
            return None
    except Exception:  # noqa: BLE001 - an empty file (mmap), a walk or a parse that failed: the full parse
        return None
    if len(ranges) != len(proto.graph.initializer):
        return None
    return proto, ranges


def locate(proto, path: Path, ranges) -> list[tuple[int, int, int]]:
    """(index, offset, length) of each initializer whose bytes were left out, for the parent to
    read. One whose bytes disagree with its dims, or that claims external data of its own, gets
    its bytes back from the file: the parent's check refuses it in the words of the in-process
    load, or its external data replaces them as it does in-process."""
    from onnx import TensorProto

    from .onnx_io import data_bytes

    located = []
    with open(path, "rb") as f:
        for i, (t, where) in enumerate(zip(proto.graph.initializer, ranges)):
            if where is None:
                continue
            offset, length = where
            count = 1
            for d in t.dims:
                count *= d
            if t.data_location == TensorProto.EXTERNAL or length != data_bytes(t.data_type, count):
                f.seek(offset)
                t.raw_data = f.read(length)
                continue
            located.append((i, offset, length))
    return located


def serve(requests=None) -> int:
    """`studio _probe onnx_server`: one JSON request a line ({"path"}); one JSON reply a line
    ({"external", "located", "bytes"} followed by that many bytes of the model, or {"refused": one
    line}); exits when its input closes."""
    from ..errors import one_line
    from .onnx_io import parse_checked

    requests = requests or sys.stdin.buffer
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a library's print never mixes with the replies
    import onnx  # noqa: F401 - paid once, before the first request

    for line in requests:
        path = Path(json.loads(line)["path"])
        proto, body = None, b""
        try:
            reduced_ = parse_reduced(path)
            proto, ranges = reduced_ if reduced_ else (None, [])
            # the user's external data stays where it is: the parent reads it; so do the bytes
            # held in the file itself (checked in the parent)
            try:
                proto, external = parse_checked(path, inline=False, load=False, proto=proto)
            except LoadError:
                if proto is None:
                    raise
                # refused: in the in-process load's words, which count the bytes left out
                proto = None
                parse_checked(path, inline=False, load=False)
                raise
            located = locate(proto, path, ranges) if ranges else []
            body = proto.SerializeToString()
            reply = {"external": external, "located": located, "bytes": len(body)}
        except LoadError as exc:
            reply = {"refused": one_line(exc)}
        except Exception as exc:  # noqa: BLE001 - the file, not the studio: one line to the user
            reply = {"refused": one_line(f"{path.name}: not a readable ONNX file ({exc})")}
        del proto
        try:
            replies.write(json.dumps(reply).encode() + b"\n" + body)
            replies.flush()
        except OSError:  # the window went away
            return 0
    return 0
