"""Pass ids -> pass classes: the built-in modules below, then the passes other packages declare
under the entry-point group `studio.passes` (core/plugins.py, docs/plugins.md). Modules load on
the first lookup, so importing the registry stays cheap. A built-in pass is one module plus one
line in PASS_MODULES; a plugin cannot take a built-in's id."""

from __future__ import annotations

import importlib

from .. import plugins
from ..errors import StudioError
from .base import Pass

PASS_MODULES = [
    "studio.core.passes.prune",
    "studio.core.passes.quantize",
    "studio.core.passes.structured",
    "studio.core.passes.nm",
    "studio.core.passes.lowrank",
    "studio.core.passes.cluster",
    "studio.core.passes.distill",
    "studio.core.passes.finetune",
    "studio.core.passes.quant_extra",
]

_registry: dict[str, type[Pass]] = {}
_origin: dict[str, str] = {}  # pass id -> the distribution a plugin pass came from
_loaded = False


def register(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass known by its id."""
    if not cls.id:
        raise ValueError(f"{cls.__name__} has no id")
    if cls.id in _registry and _registry[cls.id] is not cls:
        raise ValueError(f"two passes share the id {cls.id}")
    _registry[cls.id] = cls
    return cls


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True  # before the plugins: one that looks a pass up while importing must not recurse
    for module in PASS_MODULES:
        importlib.import_module(module)
    for cls, origin in plugins.pass_classes(Pass):
        if _registry.get(cls.id) is cls:
            continue  # a built-in named again
        if cls.id in _registry and _registry[cls.id] is not cls:
            plugins.refused(cls, origin, f"the id '{cls.id}' is taken by {_registry[cls.id].__module__}")
            continue
        _registry[cls.id] = cls
        _origin[cls.id] = origin


def refresh() -> None:
    """Forget the plugin passes and look for entry points again (a package installed into the
    running process; tests)."""
    global _loaded
    for pass_id in _origin:
        _registry.pop(pass_id, None)
    _origin.clear()
    plugins.forget()
    _loaded = False


def origin(pass_id: str) -> str:
    """Where a pass comes from: 'built-in' or the distribution of the plugin that declares it."""
    _load()
    return _origin.get(pass_id, "built-in")


def all_passes() -> dict[str, type[Pass]]:
    _load()
    return dict(sorted(_registry.items()))


def get(pass_id: str) -> type[Pass]:
    _load()
    try:
        return _registry[pass_id]
    except KeyError:
        raise StudioError(f"unknown pass '{pass_id}'; known: {', '.join(sorted(_registry))}") from None


def create(pass_id: str, **options) -> Pass:
    from pydantic import ValidationError

    cls = get(pass_id)
    try:
        return cls(**options)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "options"
        raise StudioError(f"{pass_id}: {where}: {first['msg']}") from None
