"""Module groups of a layer graph: real networks repeat blocks (layer1.0, layer1.1, ...), and a
flat drawing of thousands of nodes is unreadable. Each node gets the module path it lives in,
read from its name (torch: `layer1.0.conv1`; ONNX exports: `/layer1/layer1.0/conv1/Conv`), and a
view shows collapsed groups as one box each. No Qt here: the layout worker uses it too."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from . import Graph, Node

COLLAPSE_OVER = 30  # graphs with more nodes open collapsed to their top-level groups (a ResNet-18
# export has 49 nodes: drawn flat it is a column of slivers at Fit)
GROUP = "group:"  # prefix of a collapsed group's key in a visible graph (never a node name)

Path = tuple[str, ...]


def onnx_path(name: str) -> Path:
    """`/layer2/layer2.0/downsample/downsample.0/Conv` -> (layer2, 0, downsample, 0). The exporter
    names each scope by the module's attribute, and a child of a Sequential/ModuleList as
    `parent.index`; the last part is the op."""
    parts = [p for p in name.split("/") if p][:-1]
    path: list[str] = []
    for part in parts:
        full = ".".join(path)
        if path and part.startswith(full + "."):  # a scope named by its full dotted path
            path += part[len(full) + 1:].split(".")
        elif path and part.startswith(path[-1] + "."):  # `layer1.0` under `layer1`
            path += part[len(path[-1]) + 1:].split(".")
        else:
            path += part.split(".")
    return tuple(p for p in path if p)


def module_of(name: str) -> str:
    """The dotted module a node belongs to: `layer1.0.conv1` for both spellings above."""
    if "/" in name:
        return ".".join(onnx_path(name))
    return name


def _raw_path(name: str, slashed: bool) -> Path:
    if slashed:
        return onnx_path(name)
    return tuple(name.split(".")[:-1])  # torch: the containing modules of `layer1.0.conv1`


@dataclass
class Grouping:
    """Every node's group path, and the groups as a tree of paths."""

    graph: Graph
    path: dict[str, Path] = field(default_factory=dict)  # node -> the groups it lives in, outermost first
    members: dict[Path, list[str]] = field(default_factory=dict)  # group -> every node inside it

    @classmethod
    def of(cls, graph: Graph) -> Grouping:
        cached = getattr(graph, "_grouping", None)
        if cached is None:
            cached = cls(graph)
            cached._build()
            graph._grouping = cached  # built once per graph: the worker and the view share it
        return cached

    def _build(self) -> None:
        slashed = any("/" in n.name for n in self.graph.nodes)
        raw: dict[str, Path] = {}
        for n in self.graph.nodes:
            p = _raw_path(n.name, slashed)
            if not p and not slashed and n.op[:1].islower() and n.inputs:
                # torch.fx names functions `add_3`, without a module: the residual add of a block
                # belongs with the block its first input comes from
                p = raw.get(n.inputs[0], ())
            raw[n.name] = p
        count: dict[Path, int] = {}
        for p in raw.values():
            for k in range(1, len(p) + 1):
                count[p[:k]] = count.get(p[:k], 0) + 1
        for name, p in raw.items():
            # a group of one node is that node: cut the path at the deepest group with company
            k = len(p)
            while k and count[p[:k]] < 2:
                k -= 1
            self.path[name] = p[:k]
            for j in range(1, k + 1):
                self.members.setdefault(p[:j], []).append(name)

    # -- the tree ------------------------------------------------------------------------
    def children(self, group: Path) -> list[Path]:
        return [g for g in self.members if len(g) == len(group) + 1 and g[:len(group)] == group]

    def default_expanded(self) -> set[Path]:
        """Small graphs: everything open. Large: top-level groups closed, but a group holding
        most of the model (`features` of a MobileNet, `blocks` of a ViT, `bert` around all of
        BERT) is a wrapper, not a part: it opens, as do groups while fewer than 4 boxes show."""
        if len(self.graph.nodes) <= COLLAPSE_OVER:
            return set(self.members)
        expanded: set[Path] = set()
        while True:
            keys = self.visible_keys(expanded)
            closed = [self.group_of_key(k) for k in keys if k.startswith(GROUP)]
            if not closed:
                return expanded
            biggest = max(closed, key=lambda g: len(self.members[g]))
            if len(keys) >= 4 and 2 * len(self.members[biggest]) <= len(self.graph.nodes):
                return expanded
            expanded.add(biggest)

    def ancestors(self, name: str) -> list[Path]:
        p = self.path.get(name, ())
        return [p[:k] for k in range(1, len(p) + 1)]

    # -- what a view shows ---------------------------------------------------------------
    @staticmethod
    def key(group: Path) -> str:
        return GROUP + ".".join(group)

    def group_of_key(self, key: str) -> Path:
        return tuple(key[len(GROUP):].split(".")) if key.startswith(GROUP) else ()

    def shown_as(self, name: str, expanded: set[Path]) -> str:
        """The key a node is drawn as: itself, or its outermost closed group."""
        p = self.path.get(name, ())
        for k in range(1, len(p) + 1):
            if p[:k] not in expanded:
                return self.key(p[:k])
        return name

    def visible_keys(self, expanded: set[Path]) -> list[str]:
        return list(dict.fromkeys(self.shown_as(n.name, expanded) for n in self.graph.nodes))

    def visible(self, expanded: set[Path]) -> Graph:
        """The graph a view draws: open nodes, and one node per closed group (its parameters the
        sum of its members'); an edge between two boxes for every member edge between them. In
        topological order of each box's first member."""
        shown = {n.name: self.shown_as(n.name, expanded) for n in self.graph.nodes}
        nodes: dict[str, Node] = {}
        for n in self.graph.nodes:
            key = shown[n.name]
            box = nodes.get(key)
            if box is None:  # copies: the graph's own nodes keep their inputs
                box = nodes[key] = replace(n, inputs=[]) if key == n.name else self.group_node(self.group_of_key(key))
            for i in n.inputs:
                pred = shown.get(i)
                if pred is not None and pred != key and pred not in box.inputs:
                    box.inputs.append(pred)
        return Graph(list(nodes.values()), self.graph.inputs, self.graph.outputs, self.graph.note)

    def group_node(self, group: Path) -> Node:
        members = [self.graph.node(m) for m in self.members[group]]
        params = sum(m.parameters for m in members)
        weighted = [m for m in members if m.parameters]
        dtypes = [m.dtype for m in weighted]
        return Node(self.key(group), "group", [], params,
                    [p for m in members for p in m.param_names],
                    members[-1].output_shape, max(set(dtypes), key=dtypes.count) if dtypes else "float32",
                    sum(m.sparsity * m.parameters for m in weighted) / params if params else 0.0,
                    sum(m.macs for m in members))

    def label(self, group: Path) -> str:
        return " ▸ ".join(group)

    def summary(self, group: Path) -> str:
        """`12 layers, 147k params`: what a closed group holds."""
        members = [self.graph.node(m) for m in self.members[group]]
        layers = sum(1 for m in members if m.parameters) or len(members)
        noun = "layer" if any(m.parameters for m in members) else "node"
        params = sum(m.parameters for m in members)
        return f"{layers} {noun}{'s' if layers != 1 else ''}" + (f", {_count(params)} params" if params else "")


def _count(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def search_text(node: Node, tensors: list[str] = ()) -> str:
    """What Find looks through for a node: its name, op, module and weight names."""
    return " ".join([node.name, node.op, module_of(node.name), *node.param_names, *tensors]).lower()


def weight_module(query: str) -> str | None:
    """`layer2.0.downsample.0.weight` -> `layer2.0.downsample.0`: an ONNX export folds or renames
    weights (`onnx::Conv_193`), but the node keeps its module in its name."""
    if "." not in query:
        return None
    module, last = query.rsplit(".", 1)
    return module if last and not last.isdigit() else None
