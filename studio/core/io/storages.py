"""TorchScript's loader trusts the element count a tensor's pickle claims, not the size of the zip
record that holds its bytes: a record shorter than its claim loads, and the first read of the
tensor runs past the buffer (a SIGSEGV that takes the window down, or heap memory read back as
weights). torch.load checks this for state_dicts; for TorchScript it is checked here, with the
pickles read as data only: every class they name becomes an inert placeholder."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

from ..errors import LoadError

ITEMSIZE = {"DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8,
            "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1,
            "ComplexDoubleStorage": 16, "ComplexFloatStorage": 8, "QInt8Storage": 1, "QUInt8Storage": 1,
            "QInt32Storage": 4, "QUInt4x2Storage": 1, "QUInt2x4Storage": 1,
            "Float8_e4m3fnStorage": 1, "Float8_e5m2Storage": 1}


class _Inert:
    """Stands for any class a pickle names: takes every argument and state, does nothing."""

    name = ""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Inert()

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass


class _Claims(pickle.Unpickler):
    def __init__(self, blob: bytes):
        super().__init__(io.BytesIO(blob))
        self.claims = []

    def find_class(self, module, name):
        return type("Inert", (_Inert,), {"name": str(name)})  # never the real class

    def persistent_load(self, pid):
        self.claims.append(pid)
        return _Inert()


def storage_claims(blob: bytes) -> list:
    """The persistent ids ('storage', type, key, location, numel) a TorchScript pickle names. A
    pickle that cannot be read is left to torch (it fails on it, in the probe child if it crashes)."""
    reader = _Claims(blob)
    try:
        reader.load()
    except Exception:  # noqa: BLE001 - a damaged pickle: what was read so far is still checked
        pass
    return reader.claims


def check_storages(path: Path) -> None:
    """Refuse a TorchScript archive whose tensors claim more bytes than their records hold."""
    with zipfile.ZipFile(path) as z:
        sizes = {i.filename: i.file_size for i in z.infolist()}
        for name in sizes:
            if name.count("/") != 1 or name.rsplit("/", 1)[1] not in ("data.pkl", "constants.pkl"):
                continue  # what torch.jit.load reads (traced_inputs.pkl, never read, has empty records)
            folder = name[: -len(".pkl")] + "/"
            for pid in storage_claims(z.read(name)):
                try:
                    kind, storage_type, key, _, numel = pid
                    itemsize = ITEMSIZE[storage_type.name]
                    if kind != "storage" or type(numel) is not int or numel < 0:
                        raise ValueError
                except (TypeError, ValueError, KeyError, AttributeError):
                    raise LoadError(f"{path.name}: {name} names a tensor storage this studio cannot "
                                    "check; refused") from None
                record, need = folder + str(key), numel * itemsize
                if sizes.get(record, -1) < need:
                    raise LoadError(f"{path.name}: tensor data {record!r} holds {max(0, sizes.get(record, 0)):,} "
                                    f"bytes but claims {need:,}; refused")
