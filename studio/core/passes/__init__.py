"""Compression passes. Each module registers its passes with `registry.register`; other packages
add theirs through the `studio.passes` entry points (docs/plugins.md)."""

from .base import Context, Pass, PassConfig, PassResult
from .registry import all_passes, create, get, register
from . import onnx_torch  # noqa: F401, E402 - sets stats.SPECIALIZER (MACs of pinned If branches)

__all__ = ["Context", "Pass", "PassConfig", "PassResult", "all_passes", "create", "get", "register"]
