"""One walk over an ONNX model's weights, wherever they are stored: graph initializers, Constant
nodes (Paddle and torch's constant folding store weights that way), and the subgraphs of If, Loop
and Scan nodes (a model whose layers sit inside an If has its weights there). The passes that
edit weights, the statistics and the graph view all use it, so they see the same weights.

A `Weight` points at the stored TensorProto itself: `write()` changes it in place, so a pass
edits its copy of the model and the layout (initializer or Constant, which graph) stays as it
was."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# op type -> index of the constant weight input that the weight passes change
LAYER_OPS = {"Conv": 1, "Gemm": 1, "MatMul": 1}
FLOAT_TYPES = {1, 10, 11}  # TensorProto FLOAT, FLOAT16, DOUBLE (numpy can hold and write them back)


def subgraphs(node) -> Iterator:
    """The graphs held in a node's attributes (If's branches, Loop's and Scan's bodies)."""
    from onnx import AttributeProto

    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == AttributeProto.GRAPHS:
            yield from attr.graphs


def nodes(graph) -> Iterator[tuple[Any, Any]]:  # (NodeProto, GraphProto): onnx is not typed here
    """(node, the graph holding it) for every node, subgraphs included; a node holding
    subgraphs comes after their nodes (their results flow into it)."""
    for node in graph.node:
        for sub in subgraphs(node):
            yield from nodes(sub)
        yield node, graph


def graphs(graph) -> Iterator:
    """The graph and every subgraph in it."""
    yield graph
    for node in graph.node:
        for sub in subgraphs(node):
            yield from graphs(sub)


def constant_value(node):
    """The TensorProto a Constant node holds (its `value`), or None."""
    if node.op_type != "Constant" or not node.output:
        return None
    for attr in node.attribute:
        if attr.name == "value" and attr.HasField("t"):
            return attr.t
    return None


def tensors(proto) -> dict:
    """Every stored tensor, in all graphs: initializers and Constant nodes' values. Name ->
    TensorProto (a Constant's tensor under its output name)."""
    found = {}
    for graph in graphs(proto.graph):
        for init in graph.initializer:
            found[init.name] = init
        for node in graph.node:
            value = constant_value(node)
            if value is not None:
                found[node.output[0]] = value
    return found


def stored_names(graph) -> set[str]:
    """Names of the tensors one graph stores itself (initializers and Constant outputs), its
    subgraphs' left out: what an analysis of that graph alone treats as constant."""
    names = {init.name for init in graph.initializer}
    names.update(node.output[0] for node in graph.node if node.op_type == "Constant" and node.output)
    return names


def read(tensor) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(tensor)


def write(tensor, array: np.ndarray) -> None:
    """Replace a stored tensor's values in place (same name, dtype and place in the model)."""
    from onnx import numpy_helper

    old = read(tensor)
    tensor.CopyFrom(numpy_helper.from_array(np.asarray(array).astype(old.dtype).reshape(old.shape), tensor.name))


def node_name(node) -> str:
    return node.name or (node.output[0] if node.output else node.op_type)


def torch_names(node, tensor_name: str = "") -> set[str]:
    """Names a user may know this node by besides its own: the torch module it was exported
    from ("/fc1/Gemm" -> "fc1" for the TorchScript exporter; the dynamo exporter's
    name_scopes metadata; the weight's name "fc1.weight" -> "fc1")."""
    names = set()
    if node.name:
        names.add(node.name.strip("/").rsplit("/", 1)[0].replace("/", "."))
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            import ast

            try:
                scopes = [s for s in ast.literal_eval(prop.value) if s]
            except (ValueError, SyntaxError):
                scopes = []
            if len(scopes) >= 2:
                names.add(scopes[-2])  # the last module scope; the final entry is the op
    for suffix in (".weight", ".bias"):
        if tensor_name.endswith(suffix):
            names.add(tensor_name[: -len(suffix)])
    names.discard("")
    return names


@dataclass
class Weight:
    """A layer's constant weight: the node using it and the stored tensor."""

    node: object  # NodeProto
    graph: object  # the GraphProto holding the node
    tensor_name: str
    tensor: object  # TensorProto: an initializer or a Constant node's value, in any graph
    aliases: set[str] = field(default_factory=set)

    @property
    def name(self) -> str:
        return node_name(self.node)

    @property
    def op(self) -> str:
        return self.node.op_type

    @property
    def input_axis(self) -> int:
        """The axis of the weight that runs along the layer's inputs."""
        if self.op == "Gemm":
            trans_b = next((a.i for a in self.node.attribute if a.name == "transB"), 0)
            return 1 if trans_b else 0
        return 0 if self.op == "MatMul" else 1  # MatMul: x @ W, W [in, out]; Conv [out, in, k...]

    @property
    def output_axis(self) -> int:
        if self.op == "Gemm":
            return 1 - self.input_axis
        return 1 if self.op == "MatMul" else 0

    def array(self) -> np.ndarray:
        return read(self.tensor)

    def write(self, array: np.ndarray) -> None:
        write(self.tensor, array)


def layer_weights(proto, ops=tuple(LAYER_OPS)) -> list[Weight]:
    """The Conv/Gemm/MatMul nodes (all graphs) whose weight input is a stored float tensor of
    2+ dims. A tensor shared by several nodes is listed once (its first user)."""
    stored = tensors(proto)
    # a weight read through Identity nodes (some exporters write them) is still that weight
    alias = {n.output[0]: n.input[0] for n, _ in nodes(proto.graph) if n.op_type == "Identity" and n.input and n.output}
    found, seen = [], set()
    for node, graph in nodes(proto.graph):
        index = LAYER_OPS.get(node.op_type)
        if node.op_type not in ops or index is None or len(node.input) <= index:
            continue
        name = node.input[index]
        for _ in range(16):
            if name in stored or name not in alias:
                break
            name = alias[name]
        tensor = stored.get(name)
        if tensor is None or name in seen or len(tensor.dims) < 2:
            continue
        if tensor.data_type not in FLOAT_TYPES:
            continue
        seen.add(name)
        found.append(Weight(node, graph, name, tensor, torch_names(node, name)))
    return found


def select(weights: list[Weight], targets: list[str], ignore: list[str]) -> list[Weight]:
    """The weights picked by a pass's targets/ignore: a target may name the node, its torch
    module or its weight, a `re:` pattern, or an op type (Linear = Gemm/MatMul with a constant
    weight). Ignored when any of its names matches an ignore entry."""
    from . import targets as tg

    picked = []
    for w in weights:
        names = {w.name, w.tensor_name, *w.aliases}
        if targets and not any(tg.matches(t, n, w.op) for t in targets for n in names):
            continue
        if any(tg.matches(i, n, w.op) for i in ignore for n in names):
            continue
        picked.append(w)
    return picked


def unique_name(proto, base: str) -> str:
    """A tensor name not used anywhere in the model."""
    used = set(tensors(proto))
    for node, _ in nodes(proto.graph):
        used.update(node.input)
        used.update(node.output)
    name, i = base, 1
    while name in used:
        name, i = f"{base}_{i}", i + 1
    return name


def drop_unused(proto) -> None:
    """Remove initializers and Constant nodes (any graph) that no node and no graph output reads
    any more, e.g. a weight a pass replaced by new tensors."""
    used = set()
    for graph in graphs(proto.graph):
        used.update(o.name for o in graph.output)
    for node, _ in nodes(proto.graph):
        used.update(node.input)
    for graph in graphs(proto.graph):
        keep = [i for i in graph.initializer if i.name in used]
        if len(keep) != len(graph.initializer):
            dropped = {i.name for i in graph.initializer} - {i.name for i in keep}
            del graph.initializer[:]
            graph.initializer.extend(keep)
            inputs = [i for i in graph.input if i.name not in dropped]
            del graph.input[:]
            graph.input.extend(inputs)
        kept_nodes = [n for n in graph.node if not (n.op_type == "Constant" and n.output and n.output[0] not in used)]
        if len(kept_nodes) != len(graph.node):
            del graph.node[:]
            graph.node.extend(kept_nodes)


def insert_before(graph, node, new_node) -> None:
    """Insert `new_node` just before `node` in `graph` (keeps the topological order; references
    to the graph's other nodes stay valid)."""
    index = next(i for i, n in enumerate(graph.node) if n is node or n == node)
    graph.node.insert(index, new_node)
