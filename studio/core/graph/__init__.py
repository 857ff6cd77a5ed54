"""A framework-neutral layer graph. Node names map back to torch module names or ONNX node and
initializer names, so recipe targets and the window's views can point at a layer."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..model import ONNX, Model


@dataclass
class Node:
    name: str  # torch: module name ("layers.0.conv1") or fx node name; ONNX: node name
    op: str  # torch: module class (Conv2d) or function (add); ONNX: op_type
    inputs: list[str] = field(default_factory=list)  # predecessor node names
    parameters: int = 0
    param_names: list[str] = field(default_factory=list)
    output_shape: tuple | None = None
    dtype: str = "float32"
    sparsity: float = 0.0
    macs: int = 0
    module: str = ""  # the torch module it came from, when the exporter recorded it (dynamo ONNX metadata)


@dataclass
class Graph:
    nodes: list[Node]  # topological order
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    note: str = ""  # e.g. why edges are approximate

    def __post_init__(self):
        self._index = {n.name: n for n in self.nodes}

    def node(self, name: str) -> Node:
        return self._index[name]

    def __contains__(self, name: str) -> bool:
        return name in self._index

    def edges(self) -> list[tuple[str, str]]:
        return [(src, n.name) for n in self.nodes for src in n.inputs]

    @property
    def total_parameters(self) -> int:
        return sum(n.parameters for n in self.nodes)

    @property
    def total_macs(self) -> int:
        return sum(n.macs for n in self.nodes)

    def layers(self) -> list[Node]:
        """Nodes that own weights."""
        return [n for n in self.nodes if n.parameters]


def input_sizes(model: Model) -> dict[str, tuple[int, ...]]:
    """{input: its batch-1 shape} for every input whose dims are all known (the file's, or the
    user's --input); the others' free dims count as 1 (see core.inspect.free_dims)."""
    sig = model.signature
    if sig is None:
        return {}
    return {s.name: s.concrete(1) for s in sig.inputs if s.value is None and s.shape and not s.needs_user()}


def build_graph(model: Model) -> Graph:
    if model.framework == ONNX:
        from .from_onnx import graph_from_onnx

        return graph_from_onnx(model.light, model.input_shape, input_sizes(model), model.lazy)
    from .from_torch import graph_from_torch

    examples, shape = None, model.input_shape
    if model.signature is not None and model.signature.multi:
        shape = None  # one example tensor would not fit: every input, or none while one needs a size
        if not model.signature.problems():
            from ..signature import torch_args

            examples = torch_args(model.signature.random(1), model.signature)  # batch 1
    return graph_from_torch(model.obj, shape, model.meta.get("input_dtype", "float32"), examples)
