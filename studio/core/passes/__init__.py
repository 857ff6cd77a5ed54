"""Compression passes. Each module registers its passes with `registry.register`; other packages
add theirs through the `studio.passes` entry points (docs/plugins.md)."""

from .base import Context, Pass, PassConfig, PassResult
from .registry import all_passes, create, get, register

__all__ = ["Context", "Pass", "PassConfig", "PassResult", "all_passes", "create", "get", "register"]
