"""Compression passes. Each module registers its passes with `registry.register`."""

from .base import Context, Pass, PassConfig, PassResult
from .registry import all_passes, create, get

__all__ = ["Context", "Pass", "PassConfig", "PassResult", "all_passes", "create", "get"]
