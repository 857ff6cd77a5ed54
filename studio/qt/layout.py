"""Layered top-to-bottom layout of a layer graph (no Qt here: it runs on a worker thread).

Small and medium graphs use grandalf's Sugiyama layout (crossing reduction, made for this).
Sugiyama is super-linear (400 nodes take ~1.5 s, 1000 several), so past LARGE boxes we fall
back to a cheap layered layout by topological depth: well under a second for thousands.
Large graphs are laid out as the view first shows them: closed module groups are one box each
(studio.core.graph.groups), so a ResNet-50 or BERT export lays out a dozen boxes, not thousands.
"""

from __future__ import annotations

NODE_W, NODE_H = 150.0, 36.0
GAP_X, GAP_Y = 30.0, 40.0
LARGE = 400  # re-layouts follow a click on a group: seconds would be too long


def layout(graph, expanded=None) -> dict[str, tuple[float, float]]:
    """Box key (node name, or a closed group's key) -> centre (x, y), y grows downwards, for the
    view with the groups in `expanded` open (None: the view a graph opens with)."""
    from studio.core.graph.groups import Grouping

    grouping = Grouping.of(graph)
    return layout_flat(grouping.visible(grouping.default_expanded() if expanded is None else expanded))


def layout_flat(graph) -> dict[str, tuple[float, float]]:
    """Node name -> centre (x, y) of every node of `graph`."""
    if not graph.nodes:
        return {}
    if len(graph.nodes) <= LARGE:
        try:
            return _sugiyama(graph)
        except Exception:  # noqa: BLE001 - grandalf has corner cases (cycles in odd exports); depth layout never fails
            pass
    return _by_depth(graph)


def _by_depth(graph) -> dict[str, tuple[float, float]]:
    depth: dict[str, int] = {}
    for n in graph.nodes:  # topological order: inputs come first
        depth[n.name] = 1 + max((depth[i] for i in n.inputs if i in depth), default=-1)
    rows: dict[int, list[str]] = {}
    for n in graph.nodes:
        rows.setdefault(depth[n.name], []).append(n.name)
    pos = {}
    for d, names in rows.items():
        width = len(names) * (NODE_W + GAP_X)
        for k, name in enumerate(names):
            pos[name] = (k * (NODE_W + GAP_X) - width / 2, d * (NODE_H + GAP_Y))
    return pos


class _View:
    def __init__(self):
        self.w, self.h = NODE_W + GAP_X / 2, NODE_H
        self.xy = (0.0, 0.0)


def _sugiyama(graph) -> dict[str, tuple[float, float]]:
    from grandalf.graphs import Edge, Graph, Vertex
    from grandalf.layouts import SugiyamaLayout

    vertices = {n.name: Vertex(n.name) for n in graph.nodes}
    for v in vertices.values():
        v.view = _View()
    edges = [Edge(vertices[a], vertices[b]) for a, b in graph.edges() if a in vertices and b in vertices and a != b]
    g = Graph(list(vertices.values()), edges)
    pos = {}
    offset = 0.0
    for component in g.C:  # one layout per connected component, side by side
        sug = SugiyamaLayout(component)
        sug.yspace = GAP_Y
        sug.xspace = GAP_X
        roots = [v for v in component.sV if not v.e_in()]
        sug.init_all(roots=roots or None)
        sug.draw()
        xs = [v.view.xy[0] for v in component.sV]
        lo, hi = min(xs), max(xs)
        for v in component.sV:
            x, y = v.view.xy
            pos[v.data] = (x - lo + offset, y)
        offset += hi - lo + NODE_W + 3 * GAP_X
    return pos
