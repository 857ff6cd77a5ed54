"""Pass ids -> pass classes. Pass modules are imported lazily on first lookup, so importing the
registry stays cheap; adding a pass is one module plus one line in PASS_MODULES."""

from __future__ import annotations

import importlib

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
    if not _loaded:
        for module in PASS_MODULES:
            importlib.import_module(module)
        _loaded = True


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
