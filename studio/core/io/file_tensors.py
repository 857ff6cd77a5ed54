"""Big ONNX initializers left in the user's file after the window opened it (onnx_child).

Putting a tensor's bytes into a protobuf message is one copy that holds the GIL for all of it
(BERT-base's 94 MB word embedding: ~50 ms, the window frozen as long), and reading them back out
(`tensor.raw_data`) is another. So the window's model keeps its big initializers where they are,
as byte ranges of the file the parse child found and checked: the graph and the statistics read
the numbers from the file themselves, in slices (each read lets the GIL go), straight into numpy
arrays. A run writes the model from here too (convert.light_onnx: measuring, the latency rounds,
the INT8 passes' float file): the protobuf gets the bytes only when a job needs the whole model
in memory (Model.obj fills it, on that job's worker: a pass that changes the weights).

The file is checked again at every read: a file changed since it was opened (size, time, inode)
is refused rather than mixed with the graph parsed before.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from ..errors import LoadError

CHUNK_BYTES = 4 << 20  # one read call: well under a millisecond of copying
# data types whose raw bytes are their values as numpy reads them (numpy_helper.to_array: frombuffer)
PLAIN = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
         10: "float16", 11: "float64", 12: "uint32", 13: "uint64"}


# TensorProto's fields that hold values other than raw_data
TYPED = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")


COUNT_VALUES = 1 << 20  # values one count_nonzero takes (on 94 MB of float32 it held the GIL ~12 ms)


def nonzeros(arr: np.ndarray) -> int:
    """Nonzero values of an array, counted COUNT_VALUES at a time (the GIL goes between them)."""
    flat = arr.reshape(-1)
    return sum(int(np.count_nonzero(flat[i:i + COUNT_VALUES])) for i in range(0, flat.size, COUNT_VALUES))


def nonzeros_in_file(f, offset: int, length: int, dtype: np.dtype) -> int:
    """Nonzero values among `length` bytes of values of `dtype` at `offset` of the open file `f`,
    read and counted CHUNK_BYTES at a time (each read lets the GIL go): no copy of the whole
    tensor. OSError when the file is shorter."""
    buf = np.empty(min(length, CHUNK_BYTES - CHUNK_BYTES % dtype.itemsize), np.uint8)
    nonzero = done = 0
    f.seek(offset)
    while done < length:
        want = min(len(buf), length - done)
        got = 0
        while got < want:
            n = f.readinto(buf.data[got:want])
            if not n:
                raise OSError("the file is shorter than its tensors say")
            got += n
        nonzero += int(np.count_nonzero(buf[:want].view(dtype)))
        done += want
    return nonzero


def _stamp(st) -> tuple[int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ino


class FileTensors:
    """The main graph's initializers (by index) whose bytes are still in the model's file at
    (offset, length), checked against their dims and the file's size (onnx_child.from_reply), and
    those still in the file's own sidecars (external data, checked by onnx_io.check_tensors and
    opened by onnx's own reader, as load_external would)."""

    def __init__(self, path: Path, proto, located: dict[int, tuple[int, int]], sidecars=None):
        """`sidecars`: {index: external data location} of initializers left in a sidecar."""
        self.path = Path(path)
        inits = proto.graph.initializer
        self.entries: dict[int, tuple] = {}  # index: (offset, length, name, data type, dims, location)
        self.stamps: dict[str | None, tuple] = {None: _stamp(os.stat(self.path))}
        for i, (offset, length) in located.items():
            t = inits[i]
            self.entries[i] = (offset, length, t.name, t.data_type, tuple(t.dims), None)
        for i, location in (sidecars or {}).items():
            t = inits[i]
            info = {e.key: e.value for e in t.external_data}
            with self._open(location, t.name, check=False) as f:  # refused here as load_external would
                stamp = _stamp(os.fstat(f.fileno()))
            offset = int(info.get("offset", 0))
            length = int(info["length"]) if info.get("length") is not None else stamp[0] - offset
            if self.stamps.setdefault(location, stamp) != stamp:
                raise LoadError(f"{self.path.name}: its external data {location!r} changed while it was opened")
            self.entries[i] = (offset, length, t.name, t.data_type, tuple(t.dims), location)
        # by name as onnx_weights.tensors finds a tensor (a later initializer of the same name wins)
        self.by_name = {e[2]: i for i, e in sorted(self.entries.items())}
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.entries)

    def __deepcopy__(self, memo):  # a description of the file: a copied model shares it
        return self

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "lock"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.lock = threading.Lock()

    @staticmethod
    def _waiting(tensor, entry) -> bool:
        """Whether `tensor` (of a model proto) still lacks the bytes `entry` describes."""
        if tensor.name != entry[2] or tensor.data_type != entry[3] or tuple(tensor.dims) != entry[4]:
            return False  # a tensor of the same name that holds its own data (a subgraph's)
        if any(len(getattr(tensor, f)) for f in TYPED):
            return False  # values of its own (a tensor a pass put there under the same name)
        if entry[5] is None:
            return not tensor.HasField("raw_data") and tensor.data_location != 1
        return tensor.data_location == 1  # still external (onnx's reader resets it)

    def _entry(self, tensor, filled: bool = False):
        """The entry of `tensor` (a TensorProto of the model) while its bytes are still in the file;
        `filled`: also once fill() has copied them into it (the same bytes as the file's)."""
        i = self.by_name.get(tensor.name)
        if i is None:
            return None
        entry = self.entries[i]
        if self._waiting(tensor, entry) or filled and self._filled(tensor, entry):
            return entry
        return None

    @staticmethod
    def _filled(tensor, entry) -> bool:
        """Whether `tensor` holds the bytes fill() read for `entry` (its name, type and dims, its
        bytes in the message). A model's tensors are never changed in place (a pass works on a
        copy), so they are still the file's."""
        return (tensor.name == entry[2] and tensor.data_type == entry[3] and tuple(tensor.dims) == entry[4]
                and tensor.data_location != 1 and tensor.HasField("raw_data"))

    def pending(self, tensor) -> bool:
        return self._entry(tensor) is not None

    def in_file(self, tensor) -> bool:
        """Whether the tensor's values can be read from the file (see zeros): still there, or
        filled from it. Reading them there copies nothing out of the message, which holds the GIL
        for the whole copy (a 94 MB embedding: ~50 ms)."""
        return self._entry(tensor, filled=True) is not None

    def pending_length(self, tensor) -> int | None:
        """How many raw bytes the tensor (of a model proto) still has in the file only, or None
        when its message holds its values (see write_to)."""
        entry = self._entry(tensor)
        return None if entry is None else entry[1]

    def write_to(self, tensor, out) -> None:
        """The pending tensor's raw bytes written to the open file `out`, CHUNK_BYTES at a time
        (each read and write lets the GIL go): what convert.write_model writes for a tensor the
        window left in the user's file, instead of filling the message and copying the bytes out
        again (two copies of BERT-base's 94 MB embedding, each holding the GIL ~50 ms). Also
        once filled meanwhile (another thread's Model.obj): the same bytes."""
        entry = self._entry(tensor, filled=True)
        if entry is None:
            raise KeyError(tensor.name)
        offset, length, name, _, _, location = entry
        buf = np.empty(min(length, CHUNK_BYTES), np.uint8)
        with self._open(location, name) as f:
            done = 0
            while done < length:
                n = min(len(buf), length - done)
                self._read_into(f, offset + done, buf.data[:n])
                out.write(buf.data[:n])
                done += n

    def _open(self, location: str | None = None, tensor: str = "", check: bool = True):
        """The model's file (location None) or a sidecar, opened; refused when it changed since
        the model was opened."""
        if location is None:
            try:
                f = open(self.path, "rb")  # noqa: SIM115 - returned to the caller's with
            except OSError as exc:
                raise LoadError(f"{self.path.name}: cannot read it ({exc.strerror or exc})") from None
            what = "the file"
        else:
            from onnx.external_data_helper import _open_external_data_fd

            try:  # onnx's own opener: what it refuses (a link, a path outside), load_external refused
                f = os.fdopen(_open_external_data_fd(str(self.path.parent), location, tensor, True), "rb")
            except Exception as exc:  # noqa: BLE001
                raise LoadError(f"{self.path.name}: cannot read its external data ({exc})") from None
            what = f"its external data {location!r}"
        if check and _stamp(os.fstat(f.fileno())) != self.stamps[location]:
            f.close()
            if location is None:
                raise LoadError(f"{self.path.name}: the file changed since it was opened; open it again")
            raise LoadError(f"{self.path.name}: {what} changed since it was opened; open it again")
        return f

    def _read_into(self, f, offset: int, view: memoryview, cancel=None) -> None:
        """view filled from `offset`, one CHUNK_BYTES read at a time (each lets the GIL go);
        `cancel`: an Event checked between them (Cancelled when it is set)."""
        f.seek(offset)
        done = 0
        while done < len(view):
            if cancel is not None and cancel.is_set():
                from ..errors import Cancelled

                raise Cancelled("reading the weights cancelled")
            n = f.readinto(view[done:done + CHUNK_BYTES])
            if not n:
                raise LoadError(f"{self.path.name}: cannot read it (a file is shorter than when it was opened)")
            done += n

    def _bytes_view(self, entry, cancel=None) -> np.ndarray:
        offset, length = entry[0], entry[1]
        buf = np.empty(length, np.uint8)  # pages come as the reads fill them, the GIL let go
        with self._open(entry[5], entry[2]) as f:
            self._read_into(f, offset, buf.data, cancel)
        return buf

    def array(self, tensor, cancel=None) -> np.ndarray:
        """The tensor's values as numpy_helper.to_array gives them, read from the file; `cancel`:
        see _read_into."""
        entry = self._entry(tensor)
        if entry is None:
            raise KeyError(tensor.name)
        _, length, _, data_type, dims, _ = entry
        count = 1
        for d in dims:
            count *= d
        buf = self._bytes_view(entry, cancel)
        dtype = PLAIN.get(data_type)
        if dtype is not None and length == count * np.dtype(dtype).itemsize:
            arr = buf.view(np.dtype(dtype).newbyteorder("<")).reshape(dims)
            return arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))
        # packed and exotic types (int4, bfloat16, float8): onnx's own reader, on a copy
        import onnx

        from ..onnx_weights import read

        tmp = onnx.TensorProto()
        tmp.CopyFrom(tensor)
        tmp.data_location = onnx.TensorProto.DEFAULT
        del tmp.external_data[:]
        tmp.raw_data = buf.tobytes()
        return read(tmp)

    def zeros(self, tensor) -> int | None:
        """Exact zeros among the tensor's values, counted slice by slice from the file (no copy of
        the whole tensor); None for a type whose bytes are not its values (see array). A tensor
        fill() filled is counted from the file too (in_file)."""
        entry = self._entry(tensor, filled=True)
        if entry is None:
            raise KeyError(tensor.name)
        offset, length, name, data_type, dims, location = entry
        count = 1
        for d in dims:
            count *= d
        dtype = PLAIN.get(data_type)
        if dtype is None or length != count * np.dtype(dtype).itemsize:
            return None
        with self._open(location, name) as f:
            try:
                return count - nonzeros_in_file(f, offset, length, np.dtype(dtype).newbyteorder("<"))
            except OSError:
                raise LoadError(f"{self.path.name}: cannot read it (a file is shorter than when it was opened)") from None

    def fill(self, proto) -> None:
        """Each tensor's bytes read into `proto` (this model's, or a copy of it made before), one
        tensor per copy: the read lets the GIL go, the copy into the message holds it for that
        tensor only. A sidecar's tensor then no longer describes external data, as after onnx's
        load_external_data_for_tensor."""
        with self.lock:
            inits = proto.graph.initializer
            todo = [(i, entry) for i, entry in sorted(self.entries.items())
                    if i < len(inits) and self._waiting(inits[i], entry)]
            for i, (offset, length, name, _, _, location) in todo:
                with self._open(location, name) as f:
                    f.seek(offset)
                    raw = f.read(length)
                if len(raw) != length:
                    raise LoadError(f"{self.path.name}: cannot read it (a file is shorter than when it was opened)")
                t = inits[i]
                t.raw_data = raw
                del raw
                if location is not None:
                    t.data_location = 0  # TensorProto.DEFAULT
                    del t.external_data[:]
