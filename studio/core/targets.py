"""Layer targets as plain strings, so recipes replay: a layer name ("features.3"), a regular
expression ("re:fc\\d"), or an op type ("Conv", "Linear", "Gemm", "MatMul")."""

from __future__ import annotations

import re

# torch module class names and ONNX op types that mean the same kind of layer
OP_ALIASES = {
    "conv": {"Conv1d", "Conv2d", "Conv3d", "Conv", "ConvTranspose"},
    "linear": {"Linear", "Gemm", "MatMul"},
    "gemm": {"Linear", "Gemm"},
    "matmul": {"MatMul", "Linear"},
}


def matches(pattern: str, name: str, op: str) -> bool:
    if pattern.startswith("re:"):
        return re.search(pattern[3:], name) is not None
    if pattern == name:
        return True
    if pattern == op or pattern in OP_ALIASES.get(op.lower(), ()):  # op type given as is
        return True
    return op in OP_ALIASES.get(pattern.lower(), ())


def select(layers: list[tuple[str, str]], targets: list[str], ignore: list[str]) -> list[str]:
    """Names of the (name, op) layers picked by `targets` (all when empty) and not by `ignore`."""
    picked = []
    for name, op in layers:
        if targets and not any(matches(t, name, op) for t in targets):
            continue
        if any(matches(i, name, op) for i in ignore):
            continue
        picked.append(name)
    return picked


def torch_layers(module, kinds=("Linear", "Conv1d", "Conv2d", "Conv3d")) -> list[tuple[str, str]]:
    """(name, class name) of the weight layers in a torch module."""
    return [(n, type(m).__name__) for n, m in module.named_modules() if type(m).__name__ in kinds]
