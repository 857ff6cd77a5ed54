"""The layer graph: a QGraphicsView over a layered layout (studio.qt.layout), zoom (wheel),
pan (drag), fit, search, colour by sparsity / dtype / parameter share / sensitivity (a layer's
worst quality drop in the last sensitivity analysis, grey without data). Clicking selects the
layer everywhere. Level of detail: far out, nodes are plain boxes without text, and all edges
are one path item, so a graph with thousands of nodes pans smoothly."""

from __future__ import annotations

import math

from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QPainter, QPainterPath, QPen
from PySide6.QtWidgets import (
    QComboBox, QGraphicsItem, QGraphicsPathItem, QGraphicsScene, QGraphicsView, QHBoxLayout, QLabel,
    QLineEdit, QPushButton, QStyleOptionGraphicsItem, QVBoxLayout, QWidget,
)

from ..compact import ElidedLabel, compact_combo
from ..layout import NODE_H, NODE_W
from .sensitivity import NO_DATA, drop_colour, drop_scale, worst_drops

COLOUR_MODES = {"sparsity": "Sparsity", "dtype": "Data type", "share": "Parameter share",
                "sensitivity": "Sensitivity"}
DTYPE_COLOURS = {"float32": "#8fb3e0", "float16": "#9ad0a0", "int8": "#e8b56a", "uint8": "#e8b56a", "int4": "#d98ad0"}


def _fmt_count(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


class NodeItem(QGraphicsItem):
    def __init__(self, node, x: float, y: float):
        super().__init__()
        self.node = node
        self.fill = QColor("#dddddd")
        self.setPos(x, y)
        self.setFlag(QGraphicsItem.ItemIsSelectable)
        self.setToolTip(self._tip())
        self._rect = QRectF(-NODE_W / 2, -NODE_H / 2, NODE_W, NODE_H)

    def _tip(self) -> str:
        n = self.node
        parts = [f"<b>{n.name}</b>", f"op: {n.op}", f"dtype: {n.dtype}"]
        if n.parameters:
            parts += [f"parameters: {n.parameters:,}", f"sparsity: {n.sparsity:.1%}"]
        if n.output_shape:
            parts.append(f"output: {tuple(n.output_shape)}")
        if n.macs:
            parts.append(f"MACs: {n.macs:,}")
        return "<br>".join(parts)

    def boundingRect(self) -> QRectF:
        return self._rect.adjusted(-3, -3, 3, 3)

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget=None):
        lod = option.levelOfDetailFromTransform(painter.worldTransform())
        selected = self.isSelected()
        painter.setBrush(QBrush(self.fill))
        pen = QPen(QColor("#d62728") if selected else QColor("#555555"), 3 if selected else 1)
        pen.setCosmetic(True)
        painter.setPen(pen)
        if lod < 0.25:  # far out: a box is all the eye can see
            painter.drawRect(self._rect)
            return
        painter.drawRoundedRect(self._rect, 6, 6)
        if lod < 0.45:
            return
        painter.setPen(QColor("#111111"))
        name = self.node.name if len(self.node.name) <= 22 else "…" + self.node.name[-21:]
        painter.drawText(self._rect.adjusted(6, 2, -6, -NODE_H / 2), Qt.AlignLeft | Qt.AlignVCenter, name)
        detail = self.node.op
        if self.node.parameters:
            detail += f"  {_fmt_count(self.node.parameters)}"
            if self.node.sparsity:
                detail += f"  {self.node.sparsity:.0%} 0"
        painter.setPen(QColor("#444444"))
        painter.drawText(self._rect.adjusted(6, NODE_H / 2 - 2, -6, -2), Qt.AlignLeft | Qt.AlignVCenter, detail)


class GraphCanvas(QGraphicsView):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setScene(QGraphicsScene(self))
        self.setRenderHint(QPainter.Antialiasing)
        self.setDragMode(QGraphicsView.ScrollHandDrag)
        self.setTransformationAnchor(QGraphicsView.AnchorUnderMouse)
        self.setViewportUpdateMode(QGraphicsView.SmartViewportUpdate)
        self.setBackgroundBrush(self.palette().base())
        self.auto_fit = True  # keep the graph fitted to the view until the user zooms or pans

    # A file dropped on the graph opens like one dropped anywhere else: the view would hand the
    # drag to its scene, where nothing takes it.
    def dragEnterEvent(self, event):
        self.window().dragEnterEvent(event)

    def dragMoveEvent(self, event):
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event):
        self.window().dropEvent(event)

    def showEvent(self, event):
        super().showEvent(event)
        if self.auto_fit:
            self.fit()

    def resizeEvent(self, event):
        super().resizeEvent(event)
        if self.auto_fit:
            self.fit()

    def mousePressEvent(self, event):
        self.auto_fit = False
        super().mousePressEvent(event)

    def wheelEvent(self, event):
        self.auto_fit = False
        factor = 1.2 ** (event.angleDelta().y() / 120)
        self.zoom(factor)

    def zoom(self, factor: float) -> None:
        current = self.transform().m11()
        factor = max(0.01 / current, min(factor, 8 / current))
        self.scale(factor, factor)

    def fit(self) -> None:
        rect = self.scene().itemsBoundingRect()
        if rect.isEmpty():
            return
        self.fitInView(rect.adjusted(-20, -20, 20, 20), Qt.KeepAspectRatio)
        if self.transform().m11() > 1.5:  # small graphs: readable, not huge
            self.resetTransform()
            self.scale(1.5, 1.5)
            self.centerOn(rect.center())


class GraphView(QWidget):
    layers_clicked = Signal(list)

    def __init__(self, session, parent=None):
        super().__init__(parent)
        self.session = session
        self.items: dict[str, NodeItem] = {}
        self.canvas = GraphCanvas()
        self.search = QLineEdit(placeholderText="Search layers (Enter: next match)")
        self.search.returnPressed.connect(self.find_next)
        self.search.setMinimumWidth(90)
        self.colour = compact_combo(QComboBox(), 8)
        for key, label in COLOUR_MODES.items():
            self.colour.addItem(label, key)
        self.colour.currentIndexChanged.connect(self.recolour)
        fit = QPushButton("Fit")
        fit.clicked.connect(self.fit)
        self.info = ElidedLabel()
        self.legend = QLabel()
        bar = QHBoxLayout()
        bar.addWidget(self.search, 2)
        bar.addWidget(QLabel("Colour by"))
        bar.addWidget(self.colour)
        bar.addWidget(self.legend)
        bar.addWidget(fit)
        bar.addWidget(self.info, 1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(bar)
        lay.addWidget(self.canvas)
        self._match = -1
        self._syncing = False
        self.canvas.scene().selectionChanged.connect(self._scene_selection)
        session.stage_selected.connect(self.rebuild)
        session.selection_changed.connect(self.show_selection)
        session.sensitivity_changed.connect(self.recolour)

    # -- building ------------------------------------------------------------------------
    def rebuild(self) -> None:
        variant = self.session.current
        scene = self.canvas.scene()
        self._syncing = True
        scene.clear()
        self.items = {}
        self._syncing = False
        if variant is None or variant.graph is None:
            self.info.setText("")
            return
        graph, pos = variant.graph, variant.layout
        big = len(graph.nodes) > 1500
        scene.setItemIndexMethod(QGraphicsScene.BspTreeIndex)
        path = QPainterPath()
        for a, b in graph.edges():
            if a in pos and b in pos:
                (x1, y1), (x2, y2) = pos[a], pos[b]
                path.moveTo(x1, y1 + NODE_H / 2)
                if big:
                    path.lineTo(x2, y2 - NODE_H / 2)
                else:
                    mid = (y1 + y2) / 2
                    path.cubicTo(x1, mid, x2, mid, x2, y2 - NODE_H / 2)
        edges = QGraphicsPathItem(path)
        pen = QPen(QColor("#888888"), 1)
        pen.setCosmetic(True)
        edges.setPen(pen)
        edges.setZValue(-1)
        scene.addItem(edges)
        for node in graph.nodes:
            if node.name in pos:
                item = NodeItem(node, *pos[node.name])
                self.items[node.name] = item
                scene.addItem(item)
        scene.setSceneRect(scene.itemsBoundingRect().adjusted(-200, -200, 200, 200))
        title = "original" if variant.run_id is None else f"run {variant.run_id}, stage {variant.index}"
        self.info.setText(f"{variant.model.name} · {title} · {len(graph.nodes)} nodes · "
                          f"{graph.total_parameters:,} parameters")
        self.recolour()
        self.show_selection()
        self.canvas.auto_fit = True
        self.canvas.fit()

    def fit(self) -> None:
        self.canvas.auto_fit = True
        self.canvas.fit()

    def recolour(self) -> None:
        mode = self.colour.currentData()
        nodes = [it.node for it in self.items.values()]
        total = max(1, sum(n.parameters for n in nodes))
        result = self.session.sensitivity
        drops = worst_drops(result, self.items) if result is not None else {}
        top = drop_scale(result) if result is not None else 1.0
        legend = ""
        if mode == "sensitivity":
            legend = f"drop 0 – {top:.1f} points, grey: none" if drops else "no data yet"
        self.legend.setText(legend)
        self.legend.setToolTip("Each layer's worst quality drop in the last sensitivity analysis: white "
                               "none, red the worst; grey: not measured. Run one in the Sensitivity tab."
                               if mode == "sensitivity" else "")
        for item in self.items.values():
            n = item.node
            tip = item._tip()
            if n.name in drops:
                tip += f"<br>sensitivity: worst drop {drops[n.name]:+.1f} points"
            item.setToolTip(tip)
            if mode == "sensitivity":
                c = drop_colour(drops[n.name], top) if n.name in drops else QColor(NO_DATA)
            elif mode == "dtype":
                c = QColor(DTYPE_COLOURS.get(n.dtype, "#cccccc"))
            elif not n.parameters:
                c = QColor("#eeeeee")
            elif mode == "sparsity":  # white (dense) -> red (all zeros)
                s = max(0.0, min(1.0, n.sparsity))
                c = QColor.fromHsvF(0.0, 0.15 + 0.75 * s, 1.0)
            else:  # share of all parameters, log scale so small layers still show
                share = n.parameters / total
                t = max(0.0, min(1.0, 1 + math.log10(max(share, 1e-4)) / 4))
                c = QColor.fromHsvF(0.6, 0.15 + 0.75 * t, 1.0)
            item.fill = c
            item.update()

    # -- selection and search ------------------------------------------------------------
    def _scene_selection(self) -> None:
        if self._syncing:
            return
        names = [it.node.name for it in self.canvas.scene().selectedItems() if isinstance(it, NodeItem)]
        if names:
            self.session.select_layers(names)

    def show_selection(self) -> None:
        self._syncing = True
        try:
            wanted = set(self.session.selected_layers)
            for name, item in self.items.items():
                item.setSelected(name in wanted)
        finally:
            self._syncing = False

    def select(self, name: str, center: bool = True) -> bool:
        if name not in self.items:
            return False
        self.session.select_layers([name])
        if center:
            self.canvas.centerOn(self.items[name])
        return True

    def find_next(self) -> None:
        text = self.search.text().strip().lower()
        if not text:
            return
        names = [n for n, it in self.items.items() if text in n.lower() or text in it.node.op.lower()]
        if not names:
            self.info.setText(f"no layer matches '{text}'")
            return
        self._match = (self._match + 1) % len(names)
        self.select(names[self._match])
