"""Big ONNX initializers left in the user's file after the window opened it (onnx_child).

Putting a tensor's bytes into a protobuf message is one copy that holds the GIL for all of it
(BERT-base's 94 MB word embedding: ~50 ms, the window frozen as long), and reading them back out
(`tensor.raw_data`) is another. So the window's model keeps its big initializers where they are,
as byte ranges of the file the parse child found and checked: the graph and the statistics read
the numbers from the file themselves, in slices (each read lets the GIL go), straight into numpy
arrays; the protobuf gets the bytes only when a job needs the whole model (Model.obj fills it,
on that job's worker).

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


def _stamp(st) -> tuple[int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ino


class FileTensors:
    """The main graph's initializers (by index) whose bytes are still in `path` at (offset, length),
    checked against their dims and the file's size (onnx_child.from_reply)."""

    def __init__(self, path: Path, proto, located: dict[int, tuple[int, int]]):
        self.path = Path(path)
        self.stamp = _stamp(os.stat(self.path))
        inits = proto.graph.initializer
        self.entries = {i: (offset, length, inits[i].name, inits[i].data_type, tuple(inits[i].dims))
                        for i, (offset, length) in located.items()}
        # by name as onnx_weights.tensors finds a tensor (a later initializer of the same name wins)
        self.by_name = {name: i for i, (_, _, name, _, _) in sorted(self.entries.items())}
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

    def _entry(self, tensor):
        """The entry of `tensor` (a TensorProto of the model) while its bytes are still in the file."""
        i = self.by_name.get(tensor.name)
        if i is None:
            return None
        _, _, _, data_type, dims = entry = self.entries[i]
        if (tensor.HasField("raw_data") or tensor.data_location == 1 or tensor.data_type != data_type
                or tuple(tensor.dims) != dims):
            return None  # a tensor of the same name that holds its own data (a subgraph's)
        return entry

    def pending(self, tensor) -> bool:
        return self._entry(tensor) is not None

    def _open(self):
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - returned to the caller's with
        except OSError as exc:
            raise LoadError(f"{self.path.name}: cannot read it ({exc.strerror or exc})") from None
        if _stamp(os.fstat(f.fileno())) != self.stamp:
            f.close()
            raise LoadError(f"{self.path.name}: the file changed since it was opened; open it again")
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
                raise LoadError(f"{self.path.name}: cannot read it (the file is shorter than when it was opened)")
            done += n

    def _bytes_view(self, entry, cancel=None) -> np.ndarray:
        offset, length = entry[0], entry[1]
        buf = np.empty(length, np.uint8)  # pages come as the reads fill them, the GIL let go
        with self._open() as f:
            self._read_into(f, offset, buf.data, cancel)
        return buf

    def array(self, tensor, cancel=None) -> np.ndarray:
        """The tensor's values as numpy_helper.to_array gives them, read from the file; `cancel`:
        see _read_into."""
        entry = self._entry(tensor)
        if entry is None:
            raise KeyError(tensor.name)
        _, length, _, data_type, dims = entry
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
        tmp.raw_data = buf.tobytes()
        return read(tmp)

    def zeros(self, tensor) -> int | None:
        """Exact zeros among the tensor's values, counted slice by slice from the file (no copy of
        the whole tensor); None for a type whose bytes are not its values (see array)."""
        entry = self._entry(tensor)
        if entry is None:
            raise KeyError(tensor.name)
        offset, length, _, data_type, dims = entry
        count = 1
        for d in dims:
            count *= d
        dtype = PLAIN.get(data_type)
        if dtype is None or length != count * np.dtype(dtype).itemsize:
            return None
        dt = np.dtype(dtype).newbyteorder("<")
        buf = np.empty(min(length, CHUNK_BYTES - CHUNK_BYTES % dt.itemsize), np.uint8)
        nonzero = 0
        with self._open() as f:
            done = 0
            while done < length:
                n = min(len(buf), length - done)
                self._read_into(f, offset + done, buf.data[:n])
                nonzero += int(np.count_nonzero(buf[:n].view(dt)))
                done += n
        return count - nonzero

    def fill(self, proto) -> None:
        """Each tensor's bytes read into `proto` (this model's, or a copy of it made before), one
        tensor per copy: the read lets the GIL go, the copy into the message holds it for that
        tensor only."""
        with self.lock:
            inits = proto.graph.initializer
            todo = [(i, entry) for i, entry in sorted(self.entries.items())
                    if i < len(inits) and inits[i].name == entry[2] and not inits[i].HasField("raw_data")
                    and inits[i].data_location != 1]
            if not todo:
                return
            with self._open() as f:
                for i, (offset, length, _, _, _) in todo:
                    f.seek(offset)
                    raw = f.read(length)
                    if len(raw) != length:
                        raise LoadError(f"{self.path.name}: cannot read it (the file is shorter than when it was opened)")
                    inits[i].raw_data = raw
                    del raw
