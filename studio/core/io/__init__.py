"""Loading models safely. The format is found from the content, not the suffix, and no file
runs code unless the user said they trust it:

- ONNX: parsed without external data first; sidecar paths must stay inside the model's folder
  and every declared tensor must fit the bytes that back it, before anything is allocated.
- TorchScript: torch's own loader (TorchScript's restricted unpickler).
- torch.export (.pt2): checked as data first (pt2_check: no pickle members, no compiled code,
  shape expressions plain arithmetic, calls only tensor operators), then loaded with
  weights-only unpickling forced and the file's guards code never compiled.
- state_dict (.pt/.pth): torch.load(weights_only=True); a whole pickled module only with trust.
- safetensors: the header is checked against the file before the tensors are read.
- packed (the studio's clustered format): bounded decompression, every claim checked, then
  loaded as the ONNX model it restores to.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import LoadError, StudioError, TrustRequired, one_line
from ..model import Model
from .detect import FORMATS, detect_format

__all__ = ["load", "detect_format", "FORMATS", "LoadError", "TrustRequired"]


def load(path, *, arch: str | None = None, trust: bool = False, input_shape: tuple | None = None,
         isolate: bool = False) -> Model:
    """Load a model file; raises LoadError with a one-line reason. `isolate`: an ONNX file is parsed
    in a child process and its tensors read one at a time (the window: no long GIL hold)."""
    try:
        return _load(Path(path), arch, trust, input_shape, isolate)
    except LoadError as exc:  # one line always, even when a file's own names hold line breaks
        exc.args = (one_line(exc),)
        raise


def _load(path: Path, arch: str | None, trust: bool, input_shape: tuple | None, isolate: bool) -> Model:
    if not path.exists():
        raise LoadError(f"{path}: no such file")
    if path.is_dir():
        raise LoadError(f"{path}: is a folder, not a model file")
    try:
        fmt = detect_format(path)
    except OSError as exc:  # unreadable (permissions, a device, a vanished file)
        raise LoadError(f"{path.name}: cannot read the file ({exc.strerror or exc})") from None
    if fmt == "onnx":
        from .onnx_io import load_onnx

        model = load_onnx(path, isolate)
    elif fmt == "packed":
        from .onnx_io import load_packed

        model = load_packed(path)
    elif fmt == "safetensors":
        from .torch_io import load_safetensors

        model = load_safetensors(path, arch)
    else:
        from .torch_io import load_torch

        model = load_torch(path, fmt, arch=arch, trust=trust)
    if input_shape is not None:
        model.input_shape = tuple(input_shape)
        if model.signature is not None:  # --input-shape sizes the first input of the signature too
            try:
                model.signature = model.signature.with_overrides(
                    [f"{model.signature.inputs[0].name}:{','.join(str(d) for d in input_shape)}"])
            except StudioError:  # the user's shape disagrees with the file's: theirs wins, as before
                model.signature = None
    model.source = path
    if not model.name or model.name == "model":
        model.name = path.stem
    return model
