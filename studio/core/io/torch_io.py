"""PyTorch files: TorchScript, torch.export programs, state_dicts (+ an architecture), safetensors,
and whole pickled modules only with the user's trust."""

from __future__ import annotations

import importlib
import importlib.util
import pickle
import sys
import warnings
from pathlib import Path

from ..errors import LoadError, TrustRequired
from ..model import TORCH, Model
from .detect import read_safetensors_header

TRUST_HINT = ("it holds a whole pickled model, and unpickling runs code from the file. If you trust "
              "this file, open it with --trust (in the window: confirm the prompt)")


def resolve_arch(arch: str):
    """`package.module:Class` or `path/to/file.py:Class` -> a new module (constructed without arguments)."""
    if ":" not in arch:
        raise LoadError(f"--arch takes package.module:Class or path/to/file.py:Class, not {arch!r}")
    where, _, cls_name = arch.rpartition(":")
    try:
        if where.endswith(".py"):
            file = Path(where)
            if not file.is_file():
                raise LoadError(f"architecture file {where} not found")
            spec = importlib.util.spec_from_file_location(f"studio_user_arch_{file.stem}", file)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)  # the user's own architecture file, named explicitly
        else:
            module = importlib.import_module(where)
        cls = getattr(module, cls_name)
    except LoadError:
        raise
    except Exception as exc:  # noqa: BLE001
        hint = ""
        if where.endswith(".py") and isinstance(exc, ImportError) and "relative import" in str(exc):
            hint = ("; the file belongs to a package (it imports relatively): put the package's parent folder "
                    "on PYTHONPATH and give --arch package.module:Class")
        raise LoadError(f"cannot import the architecture {arch}: {exc}{hint}") from None
    try:
        return cls()
    except Exception as exc:  # noqa: BLE001
        raise LoadError(f"cannot build {arch}() without arguments: {exc}") from None


def _with_arch(state: dict, arch: str | None, path: Path, fmt: str) -> Model:
    import torch

    if not arch:
        raise LoadError(f"{path.name}: holds weights only ({len(state)} tensors); name the architecture with "
                        "--arch package.module:Class or --arch path/to/file.py:Class")
    module = resolve_arch(arch)
    if not isinstance(module, torch.nn.Module):
        raise LoadError(f"{arch} is not a torch.nn.Module")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).split("\n\t")[1].strip() if "\n\t" in str(exc) else str(exc).splitlines()[0]
        raise LoadError(f"{path.name} does not fit {arch}: {first}") from None
    return Model(module.eval(), TORCH, None, name=path.stem, format=fmt, meta={"arch": arch})


def load_safetensors(path: Path, arch: str | None) -> Model:
    from safetensors.torch import load_file

    read_safetensors_header(path)  # checked before any tensor is read
    try:
        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001
        raise LoadError(f"{path.name}: unreadable safetensors ({exc})") from None
    return _with_arch(state, arch, path, "safetensors")


MAX_CODE_BYTES = 64 * 1024 * 1024
MAX_NESTING = 500  # TorchScript's recursive-descent parser overflows the C stack long before 50,000


def check_torchscript_code(path: Path) -> None:
    """Refuse TorchScript source that crashes the parser (nesting) or touches files when it runs:
    `torch.from_file(..., shared=True)` maps a file writable, and `__setstate__` runs at load."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        code = [i for i in z.infolist() if "/code/" in i.filename and i.filename.endswith(".py")]
        if sum(i.file_size for i in code) > MAX_CODE_BYTES:
            raise LoadError(f"{path.name}: its TorchScript code claims over {MAX_CODE_BYTES:,} bytes; refused")
        for info in code:
            text = z.read(info).decode("utf-8", "replace")
            if "from_file" in text:
                raise LoadError(f"{path.name}: its TorchScript code maps files from disk (from_file); refused")
            depth = deepest = 0
            for ch in text:
                if ch in "([{":
                    depth += 1
                    deepest = max(deepest, depth)
                elif ch in ")]}":
                    depth -= 1
            if deepest > MAX_NESTING:
                raise LoadError(f"{path.name}: its TorchScript code nests {deepest:,} brackets deep "
                                f"(more than {MAX_NESTING}); refused")


def _state_dict_of(obj):
    """A plain {name: tensor} from what torch.load returned, or None."""
    import torch

    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return obj
    return None


def load_torch(path: Path, fmt: str, *, arch: str | None, trust: bool) -> Model:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "torchscript":
            from .probe import probe

            check_torchscript_code(path)
            from .storages import check_storages

            check_storages(path)  # a tensor record shorter than its claim: torch reads past it
            probe("torchscript", path)  # a crash or hang in torch's C++ parser stays in a child
            try:
                module = torch.jit.load(str(path), map_location="cpu")
            except Exception as exc:  # noqa: BLE001
                raise LoadError(f"{path.name}: unreadable TorchScript ({_first_line(exc)})") from None
            from ..signature import from_torchscript

            signature = from_torchscript(path, module)  # traced files record their inputs' shapes
            meta = {"input_dtype": signature.inputs[0].dtype} if signature and signature.inputs else {}
            return Model(module.eval(), TORCH, None, name=path.stem, format="torchscript", meta=meta, signature=signature)
        if fmt == "torch_export":
            from .pt2_check import load_program

            try:
                program = load_program(path)
            except LoadError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise LoadError(f"{path.name}: unreadable torch.export program ({_first_line(exc)})") from None
            shape = None
            meta = {}
            example = getattr(program, "example_inputs", None)
            if example and example[0] and hasattr(example[0][0], "shape"):
                shape = (1, *tuple(example[0][0].shape)[1:])
                meta["input_dtype"] = str(example[0][0].dtype).replace("torch.", "")  # token ids: int64
            from ..signature import from_torch_export

            signature = from_torch_export(program)
            if signature is not None and signature.inputs:
                meta["input_dtype"] = signature.inputs[0].dtype
                shape = signature.first_shape() or shape
            # check_guards=False: the guards are Python source from the file (see pt2_check)
            return Model(program.module(check_guards=False), TORCH, shape, name=path.stem, format="torch.export", meta=meta,
                         signature=signature)
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            if not trust:
                raise TrustRequired(f"{path.name}: {TRUST_HINT}") from None
            obj = _load_trusted(path)
        except Exception as exc:  # noqa: BLE001
            raise LoadError(f"{path.name}: unreadable PyTorch file ({_first_line(exc)})") from None
    if isinstance(obj, torch.nn.Module):
        return Model(obj.eval(), TORCH, None, name=path.stem, format="pickle", meta={"trusted": True})
    state = _state_dict_of(obj)
    if state is None:
        raise LoadError(f"{path.name}: holds a {type(obj).__name__}, not a model or a state_dict")
    return _with_arch(state, arch, path, "state_dict")


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (torch's can start with a newline or be
    empty), or its type name."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()[:120]
    return type(exc).__name__


def _load_trusted(path: Path):
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=False)  # the user said: trusted
    except Exception as exc:  # noqa: BLE001
        raise LoadError(f"{path.name}: cannot unpickle ({_first_line(exc)})") from None
