"""Check a torch.export archive (.pt2) before torch sees it.

`torch.export.load` runs code from the file in more places than its name suggests (torch 2.13):

- weights or constants marked `"use_pickle": true`, legacy `data/weights/<model>.pt` and
  `data/constants/<model>.pt`, and `data/sample_inputs/<model>.pt` are unpickled, the last one with
  a silent fallback to `weights_only=False`; `opaque_obj_*`/`custom_obj_*` constants are unpickled
  by plain `pickle.loads` / TorchScript's unpickler;
- `data/aotinductor/` holds compiled shared libraries that are loaded (native code);
- every symbolic-shape expression (`expr_str`) goes through `sympy.sympify`, i.e. `eval`;
- `guards_code` is Python source compiled into the module by `ExportedProgram.module()`;
- a node's `target` is resolved by attribute lookup from `torch`, `math` or `operator`, so a
  graph can call `torch.os.system` the first time the model runs.

So the archive is read as data first: its members must be the ones `torch.export.save` writes
(raw tensor bytes and JSON), every pickle member must load with `weights_only=True`, every
expression must be plain arithmetic over shape symbols, and every call target must be an operator
from an allowed namespace. Anything else is refused with one line. `load_program` then loads the
checked file with torch's weights-only unpickling forced as a second wall; the caller builds the
module with `check_guards=False`, so the guards code is never compiled.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import logging
import os
import re
import threading
import zipfile
from pathlib import Path

from ..errors import LoadError

MAX_JSON_BYTES = 256 * 1024 * 1024
MAX_EXPR_CHARS = 20_000
_NAME = r"[A-Za-z0-9_.\-]+"
# members a plain torch.export.save archive holds (below its one top-level folder)
_ALLOWED = [re.compile(p) for p in (
    r"archive_format", r"archive_version", r"byteorder", r"\.data/version", r"\.data/serialization_id",
    rf"models/{_NAME}\.json", rf"data/sample_inputs/{_NAME}\.pt",
    rf"data/weights/{_NAME}_weights_config\.json", r"data/weights/weight_\d+",
    rf"data/constants/{_NAME}_constants_config\.json", r"data/constants/tensor_\d+",
    r"extra/.+",  # read as text only
)]
_REFUSED = [  # (pattern, why) for members we know and will not load
    (re.compile(r"data/aotinductor/.*"), "compiled AOTInductor code (a native library)"),
    (re.compile(r"data/(executorch|mtia)/.*|xl_model_weights/.*"), "a runtime payload the studio does not load"),
    (re.compile(rf"data/(weights|constants)/{_NAME}\.pt"), "weights in the legacy pickled format"),
    (re.compile(r"data/constants/(custom_obj|opaque_obj)_.*"), "pickled Python objects"),
    (re.compile(r"serialized_.*|version"), "the pre-2.6 format that unpickles its weights"),
]

# Operators a graph may call: torch's operator registry (aten, prims, quantization decompositions,
# control flow) and the scalar helpers the exporter emits for symbolic shapes.
_OP_NAMESPACES = {"aten", "prims", "quantized_decomposed", "higher_order", "_quantized", "torchao"}
_REFUSED_OPS = re.compile(r"file|save|load|_debug|profiler|print", re.IGNORECASE)
_SCALAR_TARGETS = {
    *(f"_operator.{n}" for n in ("getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "pow",
                                 "neg", "pos", "abs", "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_",
                                 "xor", "not_", "invert", "lshift", "rshift")),
    *(f"math.{n}" for n in ("sqrt", "ceil", "floor", "trunc", "exp", "log", "log2", "pow", "isnan", "isinf")),
    *(f"torch.{n}" for n in ("sym_int", "sym_float", "sym_max", "sym_min", "sym_not", "sym_ite", "sym_sum",
                             "sym_sqrt", "_sym_sqrt", "sym_fresh_size")),
    *(f"torch._check{n}" for n in ("", "_is_size", "_with")),
}

# Names a symbolic-shape expression may use (sympy's srepr and torch.utils._sympy.functions).
_EXPR_FUNCS = {
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Abs", "Mod", "Eq", "Ne",
    "Lt", "Le", "Gt", "Ge", "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan", "Equality",
    "Unequality", "And", "Or", "Not", "Piecewise", "ExprCondPair", "floor", "ceiling", "sqrt",
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv",
    "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
    "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal",
    "ToFloat", "OpaqueUnaryFn_sqrt", "BitwiseFn_bitwise_and", "BitwiseFn_bitwise_or", "Identity",
}
_EXPR_CONSTANTS = {"oo", "zoo", "nan", "true", "false", "True", "False", "None", "int_oo", "S", "pi", "E",
                   "Infinity", "NegativeInfinity", "IntInfinity", "NegativeIntInfinity"}
_EXPR_KEYWORDS = {"positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite",
                  "zero", "nonzero", "even", "odd", "evaluate", "precision"}
_SYMBOL = re.compile(r"[a-z]{1,4}\d{1,9}")
_ALLOWED_AST = (ast.Expression, ast.Call, ast.Name, ast.Load, ast.Constant, ast.keyword, ast.BinOp, ast.UnaryOp,
                ast.Compare, ast.BoolOp, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow,
                ast.USub, ast.UAdd, ast.Not, ast.And, ast.Or, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt,
                ast.GtE, ast.BitAnd, ast.BitOr)


def _refuse(path: Path, why: str) -> LoadError:
    return LoadError(f"{path.name}: {why}; refused (opening a torch.export file never runs code from it)")


def check_archive(path: Path) -> None:
    """Raise LoadError unless `path` is a plain torch.export archive that loads without running code."""
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            names = [i.filename for i in infos]
            if len(set(names)) != len(names):
                raise _refuse(path, "the archive lists a member twice")
            prefixes = {n.split("/", 1)[0] for n in names}
            if len(prefixes) != 1 or any("/" not in n for n in names):
                raise _refuse(path, "members lie outside the archive's folder")
            prefix = prefixes.pop() + "/"
            members = {n[len(prefix):]: i for n, i in zip(names, infos)}
            for member in members:
                _check_member_name(path, member)
            for member, info in members.items():
                if member.endswith(".json"):
                    if info.file_size > MAX_JSON_BYTES:
                        raise _refuse(path, f"{member} claims {info.file_size:,} bytes")
                    doc = _json(path, member, z.read(info))
                    if member.startswith("models/"):
                        _check_program(path, member, doc)
                    elif member.endswith("_config.json"):
                        _check_payload_config(path, member, doc)
                elif member.startswith("data/sample_inputs/"):
                    _check_weights_only_pickle(path, member, z.read(info))
    except zipfile.BadZipFile:
        raise LoadError(f"{path.name}: a damaged zip archive (truncated?)") from None


def _check_member_name(path: Path, member: str) -> None:
    for pattern, why in _REFUSED:
        if pattern.fullmatch(member):
            raise _refuse(path, f"it holds {why} ({member})")
    if not any(p.fullmatch(member) for p in _ALLOWED):
        raise _refuse(path, f"unexpected member {member!r}, not written by torch.export.save")


def _json(path: Path, member: str, blob: bytes):
    try:
        return json.loads(blob)
    except (ValueError, RecursionError):
        raise _refuse(path, f"{member} is not valid JSON") from None


def _check_payload_config(path: Path, member: str, doc) -> None:
    config = doc.get("config") if isinstance(doc, dict) else None
    if not isinstance(config, dict):
        raise _refuse(path, f"{member} is malformed")
    for fqn, entry in config.items():
        if not isinstance(entry, dict):
            raise _refuse(path, f"{member} is malformed")
        if entry.get("use_pickle") is not False:
            raise _refuse(path, f"'{fqn}' is stored as a pickle")
        name = entry.get("path_name")
        if not isinstance(name, str) or not re.fullmatch(r"(weight|tensor)_\d+", name):
            raise _refuse(path, f"'{fqn}' is stored as {name!r}, not as raw tensor bytes")


def _check_weights_only_pickle(path: Path, member: str, blob: bytes) -> None:
    import torch

    with force_weights_only():
        try:
            torch.load(io.BytesIO(blob), weights_only=True, map_location="cpu")
        except Exception:  # noqa: BLE001 - any failure here means torch would fall back to full unpickling
            raise _refuse(path, f"{member} holds pickled objects beyond tensors") from None


def _walk(doc):
    """Every dict in a JSON document (iterative: a deep document must not exhaust the stack)."""
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _check_program(path: Path, member: str, doc) -> None:
    if not isinstance(doc, dict):
        raise _refuse(path, f"{member} is malformed")
    guards = doc.get("guards_code") or []
    if not isinstance(guards, list) or not all(isinstance(g, str) for g in guards):
        raise _refuse(path, f"{member} has malformed guards")  # never compiled: see load_program
    for key in (doc.get("range_constraints") or {}):
        if not _SYMBOL.fullmatch(str(key)):
            raise _refuse(path, f"shape symbol {str(key)[:60]!r} is not a plain name")
    for node in _walk(doc):
        expr = node.get("expr_str")
        if expr is not None:
            _check_expr(path, expr)
        target = node.get("target")
        if target is not None and ("inputs" in node or "outputs" in node):
            _check_target(path, target)


def _check_expr(path: Path, expr) -> None:
    bad = _refuse(path, f"a shape expression is not plain arithmetic ({str(expr)[:60]!r})")
    if not isinstance(expr, str) or len(expr) > MAX_EXPR_CHARS:
        raise bad
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise bad from None
    for n in ast.walk(tree):
        if not isinstance(n, _ALLOWED_AST):
            raise bad
        if isinstance(n, ast.Call) and not (isinstance(n.func, ast.Name) and n.func.id in _EXPR_FUNCS):
            raise bad
        if isinstance(n, ast.Name) and not (n.id in _EXPR_FUNCS or n.id in _EXPR_CONSTANTS or _SYMBOL.fullmatch(n.id)):
            raise bad
        if isinstance(n, ast.keyword) and n.arg not in _EXPR_KEYWORDS:
            raise bad
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and not _SYMBOL.fullmatch(n.value):
            raise bad
        if isinstance(n, ast.Constant) and not isinstance(n.value, (str, int, float, bool, type(None))):
            raise bad


def _check_target(path: Path, target) -> None:
    if not isinstance(target, str):
        raise _refuse(path, "a graph node has a malformed target")
    parts = target.split(".")
    if (len(parts) in (4, 5) and parts[:2] == ["torch", "ops"] and parts[2] in _OP_NAMESPACES
            and not _REFUSED_OPS.search(parts[3]) and all(p.isidentifier() for p in parts[2:])):
        return
    if target in _SCALAR_TARGETS:
        return
    raise _refuse(path, f"its graph calls {target[:80]!r}, which is not a tensor operator the studio allows")


_ENV_LOCK = threading.Lock()


@contextlib.contextmanager
def force_weights_only():
    """Within this block torch.load unpickles tensors only, whatever its caller asked for
    (TORCH_FORCE_WEIGHTS_ONLY_LOAD is read on every call). Process-wide: a trusted load running in
    another thread at the same moment fails safe (refused), it never runs more code."""
    with _ENV_LOCK:
        old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
        os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
            else:
                os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old


def load_program(path: Path):
    """The ExportedProgram in a checked archive. Build its module with `.module(check_guards=False)`:
    guards are Python source from the file (and torch writes string inputs into them unescaped)."""
    import torch

    check_archive(path)
    with force_weights_only(), _torch_export_log() as logged:
        try:
            return torch.export.load(str(path))
        except Exception:
            if logged:  # torch logged the real reason (a traceback on stderr) and raised a vague one
                raise logged[0] from None
            raise


@contextlib.contextmanager
def _torch_export_log():
    """torch.export.load logs a failed read with its traceback on stderr, then raises "check the
    warnings above": keep the logged error (the caller reports it in one line) off the terminal."""

    logged = []

    class Keep(logging.Handler):
        def emit(self, record):
            if record.exc_info and record.exc_info[1] is not None:
                logged.append(record.exc_info[1])

    log = logging.getLogger("torch.export")
    handlers, log.handlers = log.handlers, [Keep()]
    propagate, log.propagate = log.propagate, False  # nor through torch's own handlers above it
    try:
        yield logged
    finally:
        log.handlers = handlers
        log.propagate = propagate
