"""Layer targets (the matching lives in studio/core/targets.py, below the passes, because the ONNX
weight walk uses it too); kept here so passes and plugins import it where they always have."""

from ..targets import OP_ALIASES, matches, select, torch_layers

__all__ = ["OP_ALIASES", "matches", "select", "torch_layers"]
