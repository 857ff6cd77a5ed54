"""YAML for files a user may have been sent (recipes): plain data only, small, unambiguous.

`yaml.safe_load` never runs code, but a 400-byte file can still hang the process (anchors and
aliases: the "billion laughs" grows when the result is walked or printed), it silently keeps the
last of two equal keys, and it reads YAML 1.1's `no`, `on`, `010` and `1:30` as false, true, 8
and 90. This reader refuses anchors, aliases, tags, duplicate keys and over-deep or over-large
documents, and reads scalars by the YAML 1.2 core schema: only true/false are booleans, ints
are decimal (or 0o/0x), `1e-3` is a float, everything else is a string.
"""

from __future__ import annotations

import re
import reprlib

import yaml

MAX_NODES = 20_000  # a recipe has tens (hundreds with a long ignore list); 20k load in ~0.5 s
MAX_DEPTH = 32  # a recipe needs 4 (recipe -> passes -> pass -> ignore list)

# libyaml when available: the pure-Python parser needs ~30 s for a 1 MiB file
_Base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YAMLProblem(Exception):
    """Why a document is refused; `line` is 1-based, or None when unknown."""

    def __init__(self, problem: str, line: int | None = None):
        super().__init__(problem)
        self.problem = problem
        self.line = line


_repr = reprlib.Repr()  # keyword arguments need Python 3.12
_repr.maxlevel, _repr.maxdict, _repr.maxlist, _repr.maxstring, _repr.maxother = 3, 4, 4, 60, 60


def show(value) -> str:
    """A value from the file as it may appear in a one-line message: quoted, escaped (no line
    breaks), short, and cheap however big or nested the value is."""
    return _repr.repr(value)


def _line(mark) -> int | None:
    return mark.line + 1 if mark is not None else None


# YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#1023-core-schema)
_CORE = [
    ("tag:yaml.org,2002:null", r"~|null|Null|NULL|", "~nN"),
    ("tag:yaml.org,2002:bool", r"true|True|TRUE|false|False|FALSE", "tTfF"),
    ("tag:yaml.org,2002:int", r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+", "-+0123456789"),
    ("tag:yaml.org,2002:float",
     r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)",
     "-+.0123456789"),
]


def _construct_int(loader, node):
    text = loader.construct_scalar(node)
    try:
        return int(text, 0) if text[:2] in ("0o", "0x") else int(text, 10)  # "010" is ten, not eight
    except ValueError:  # more digits than Python converts (4300)
        problem = f"an integer of {len(text):,} digits is too large"
        raise YAMLProblem(problem, _line(node.start_mark)) from None


class _Loader(_Base):
    yaml_implicit_resolvers: dict = {}

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            line = _line(key_node.start_mark)
            if not isinstance(key_node, yaml.ScalarNode):
                raise YAMLProblem("a key must be a plain value, not a list or mapping", line)
            key = self.construct_object(key_node)
            if key in seen:  # safe_load would keep the last silently
                raise YAMLProblem(f"duplicate key {show(key)}; keep one", line)
            seen.add(key)
        return super().construct_mapping(node, deep)


for _tag, _pattern, _first in _CORE:
    _first = list(_first) + ([""] if _tag.endswith("null") else [])  # "" : an empty value is null
    _Loader.add_implicit_resolver(_tag, re.compile(f"^(?:{_pattern})$"), _first)
_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


class Dumper(yaml.SafeDumper):
    """SafeDumper that also quotes strings the 1.2 reader would take for numbers ("1e3", "0o7"),
    so whatever the studio writes reads back as it was."""


for _tag, _pattern, _first in _CORE:
    Dumper.add_implicit_resolver(_tag, re.compile(f"^(?:{_pattern})$"), list(_first))


def _scan(text: str) -> None:
    """Walk the parser's events (flat, no recursion, no objects built) and refuse what a plain
    data file never needs, before anything is composed."""
    depth = nodes = 0
    for event in yaml.parse(text, Loader=_Base):
        line = _line(event.start_mark)
        if isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
            continue
        if not isinstance(event, yaml.NodeEvent):  # stream and document events
            continue
        if event.anchor is not None:  # &name, or *name (an AliasEvent)
            sign = "*" if isinstance(event, yaml.AliasEvent) else "&"
            raise YAMLProblem(f"anchors and aliases ({show(sign + str(event.anchor))}) are not allowed; "
                              "write the value out", line)
        if event.tag is not None:
            raise YAMLProblem(f"YAML tags ({show(event.tag)}) are not allowed; write plain values", line)
        nodes += 1
        if nodes > MAX_NODES:
            raise YAMLProblem(f"more than {MAX_NODES:,} values", line)
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise YAMLProblem(f"nested more than {MAX_DEPTH} levels deep", line)


def load(text: str):
    """The one document in `text` as plain Python data (dict, list, str, int, float, bool, None).
    Raises YAMLProblem with a one-line reason."""
    try:
        _scan(text)
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = ", ".join(part for part in (exc.context, exc.problem) if part)
        raise YAMLProblem(f"not valid YAML: {what}", _line(mark)) from None
    except yaml.YAMLError as exc:
        raise YAMLProblem(f"not valid YAML: {str(exc).splitlines()[0]}") from None
