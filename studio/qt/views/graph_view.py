"""The layer graph: a QGraphicsView over a layered layout (studio.qt.layout), zoom (wheel, Ctrl+=,
Ctrl+-), pan (drag, or the overview map in the corner), fit, Find, colour by sparsity / dtype /
parameter share / sensitivity (a layer's worst quality drop in the last sensitivity analysis, grey
without data). Clicking selects the layer everywhere.

Real networks are hundreds or thousands of nodes: a graph over COLLAPSE_OVER nodes opens with its
module groups closed (layer1, layer2, ... one box each, studio.core.graph.groups). A click on a
group opens it one level, a double click on a box or its context menu closes the group around it;
the layout is recomputed (on a worker when the view is large). Level of detail: far out, boxes have
no text except the groups' names in a large font, and all edges are one path item."""

from __future__ import annotations

import math
import time

from PySide6.QtCore import QPointF, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QBrush, QColor, QFont, QPainter, QPainterPath, QPen, QPixmap
from PySide6.QtWidgets import (
    QApplication, QComboBox, QGraphicsItem, QGraphicsPathItem, QGraphicsScene, QGraphicsView, QHBoxLayout, QLabel,
    QLineEdit, QMenu, QPushButton, QStyleOptionGraphicsItem, QVBoxLayout, QWidget,
)

from studio.core.graph import Graph
from studio.core.graph.groups import GROUP, Grouping, search_text, weight_module, module_of

from ..compact import ElidedLabel, compact_combo
from ..layout import NODE_H, NODE_W, layout_flat
from ..workers import Tasks
from .sensitivity import NO_DATA, drop_colour, drop_scale, worst_drops

COLOUR_MODES = {"sparsity": "Sparsity", "dtype": "Data type", "share": "Parameter share",
                "sensitivity": "Sensitivity"}
DTYPE_COLOURS = {"float32": "#8fb3e0", "float16": "#9ad0a0", "int8": "#e8b56a", "uint8": "#e8b56a", "int4": "#d98ad0"}
SYNC_LAYOUT = 40  # views with at most this many boxes are laid out at once (Sugiyama: ~60 ms)
READABLE = 1.0  # Find zooms in to at least this scale: the match's label is legible


def _fmt_count(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


class NodeItem(QGraphicsItem):
    plain = False  # boxes only (the overview map draws the scene this way)

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

    def _pen(self) -> QPen:
        selected = self.isSelected()
        pen = QPen(QColor("#d62728") if selected else QColor("#555555"), 3 if selected else 1)
        pen.setCosmetic(True)
        return pen

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget=None):
        lod = option.levelOfDetailFromTransform(painter.worldTransform())
        painter.setBrush(QBrush(self.fill))
        painter.setPen(self._pen())
        if lod < 0.25 or self.plain:  # far out: a box is all the eye can see
            painter.drawRect(self._rect)
            return
        painter.drawRoundedRect(self._rect, 6, 6)
        if lod < 0.45:
            return
        painter.setPen(QColor("#111111"))
        # the module (`layer3.4.conv2` of `/layer3/layer3.4/conv2/Conv`: the op is on the next
        # line), cut at the left: the end of a path is what tells boxes apart
        name = module_of(self.node) or self.node.name
        name = painter.fontMetrics().elidedText(name, Qt.ElideLeft, int(NODE_W - 12))
        painter.drawText(self._rect.adjusted(6, 2, -6, -NODE_H / 2), Qt.AlignLeft | Qt.AlignVCenter, name)
        detail = self.node.op
        if self.node.parameters:
            detail += f"  {_fmt_count(self.node.parameters)}"
            if self.node.sparsity:
                detail += f"  {self.node.sparsity:.0%} 0"
        painter.setPen(QColor("#444444"))
        painter.drawText(self._rect.adjusted(6, NODE_H / 2 - 2, -6, -2), Qt.AlignLeft | Qt.AlignVCenter, detail)


class GroupItem(NodeItem):
    """A closed module group: a stack of cards, `layer2 ▸` over what it holds. A click opens it."""

    def __init__(self, node, group: tuple, label: str, summary: str, x: float, y: float):
        self.group, self.label, self.summary = group, label, summary
        super().__init__(node, x, y)
        self.setFlag(QGraphicsItem.ItemIsSelectable, False)  # a click opens it instead
        self.highlight = False  # a selected layer is inside
        self.setCursor(Qt.PointingHandCursor)

    def _tip(self) -> str:
        return (f"<b>{self.label}</b> ▸ (click to open)<br>{self.summary}<br>"
                f"{len(self.node.param_names)} weight tensors" + (f"<br>MACs: {self.node.macs:,}" if self.node.macs else ""))

    def boundingRect(self) -> QRectF:
        return self._rect.adjusted(-3, -3, 9, 9)

    def isSelected(self) -> bool:
        return self.highlight

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget=None):
        lod = option.levelOfDetailFromTransform(painter.worldTransform())
        painter.setBrush(QBrush(self.fill.darker(115)))
        painter.setPen(self._pen())
        painter.drawRoundedRect(self._rect.translated(6, 6), 6, 6)  # the cards behind: several layers
        painter.setBrush(QBrush(self.fill))
        painter.drawRoundedRect(self._rect, 6, 6)
        painter.setPen(QColor("#111111"))
        if self.plain:
            return
        if lod < 0.45:
            # far out the label would be a few pixels high: the name alone, in a font that stays
            # ~13 px on screen, spilling out of the box rather than vanishing
            font = QFont(painter.font())
            font.setBold(True)
            font.setPixelSize(max(8, int(13 / max(lod, 0.02))))
            painter.setFont(font)
            short = ".".join(self.group[-2:]) if self.group[-1].isdigit() else self.group[-1]  # blocks.0, not 0
            painter.drawText(self._rect.adjusted(-NODE_W, -NODE_H, NODE_W, NODE_H), Qt.AlignCenter, short)
            return
        font = QFont(painter.font())
        font.setBold(True)
        painter.setFont(font)
        painter.drawText(self._rect.adjusted(6, 2, -6, -NODE_H / 2), Qt.AlignLeft | Qt.AlignVCenter,
                         f"{self.label} ▸")
        font.setBold(False)
        painter.setFont(font)
        painter.setPen(QColor("#444444"))
        painter.drawText(self._rect.adjusted(6, NODE_H / 2 - 2, -6, -2), Qt.AlignLeft | Qt.AlignVCenter, self.summary)


class OverviewMap(QWidget):
    """The whole scene, small, in a corner of the view, with the visible rectangle on it; a click
    or a drag on it moves the view there."""

    SIZE = 130

    def __init__(self, canvas: GraphCanvas):
        super().__init__(canvas)
        self.canvas = canvas
        self.pixmap = QPixmap()
        self.whole = QRectF()  # the items' bounding rectangle
        self.stale = True  # the scene changed since the pixmap was rendered
        self.later = QTimer(self, singleShot=True, interval=0)
        self.later.timeout.connect(self._settle)
        self.setCursor(Qt.PointingHandCursor)
        self.setToolTip("Overview: click or drag to move the view")
        canvas.horizontalScrollBar().valueChanged.connect(self.follow)
        canvas.verticalScrollBar().valueChanged.connect(self.follow)

    def refresh(self) -> None:
        """The scene changed (a rebuild, a recolour): render it again when next shown."""
        self.stale = True
        self.whole = self.canvas.scene().itemsBoundingRect()
        self.later.start()  # once the view settled (a rebuild fits it next), not at every step

    def _render(self) -> None:
        self.stale = False
        rect = self.canvas.sceneRect()
        scale = self.SIZE / max(rect.width(), rect.height())
        w, h = max(24, int(rect.width() * scale)), max(24, int(rect.height() * scale))
        self.resize(w + 2, h + 2)
        self.pixmap = QPixmap(w, h)
        self.pixmap.fill(QColor(255, 255, 255, 235))
        painter = QPainter(self.pixmap)
        painter.setRenderHint(QPainter.Antialiasing)
        NodeItem.plain = True
        try:
            self.canvas.scene().render(painter, QRectF(0, 0, w, h), rect, Qt.KeepAspectRatio)
        finally:
            NodeItem.plain = False
        painter.end()
        self.place()

    def _wanted(self) -> bool:
        """Shown only while part of the graph is out of sight: over a fitted graph it adds nothing."""
        seen = self.canvas.mapToScene(self.canvas.viewport().rect()).boundingRect()
        return not self.whole.isEmpty() and not seen.contains(self.whole)

    def follow(self) -> None:
        """The view moved or the scene changed. Rendering waits for the event loop: a fit
        scrolls several times on its way, and only where it ends counts."""
        wanted = self._wanted()
        if wanted and self.stale:
            self.later.start()
            return
        self.setVisible(wanted)
        self.update()

    def _settle(self) -> None:
        wanted = self._wanted()
        if wanted and self.stale:
            self._render()
        self.setVisible(wanted)
        self.update()

    def place(self) -> None:
        vp = self.canvas.viewport().geometry()
        self.move(vp.right() - self.width() - 8, vp.bottom() - self.height() - 8)

    def _to_map(self) -> tuple[QRectF, float]:
        rect = self.canvas.sceneRect()
        scale = min(self.pixmap.width() / rect.width(), self.pixmap.height() / rect.height())
        return rect, scale

    def paintEvent(self, event):
        if self.pixmap.isNull():
            return
        painter = QPainter(self)
        painter.drawPixmap(1, 1, self.pixmap)
        painter.setPen(QColor("#777777"))
        painter.drawRect(self.rect().adjusted(0, 0, -1, -1))
        rect, scale = self._to_map()
        seen = self.canvas.mapToScene(self.canvas.viewport().rect()).boundingRect()
        r = QRectF((seen.x() - rect.x()) * scale + 1, (seen.y() - rect.y()) * scale + 1,
                   seen.width() * scale, seen.height() * scale)
        painter.setPen(QPen(QColor("#d62728"), 1.5))
        painter.setBrush(QColor(214, 39, 40, 30))
        painter.drawRect(r.intersected(QRectF(self.rect())))

    def scene_point(self, pos) -> QPointF:
        rect, scale = self._to_map()
        return QPointF(rect.x() + (pos.x() - 1) / scale, rect.y() + (pos.y() - 1) / scale)

    def mousePressEvent(self, event):
        self.canvas.auto_fit = False
        self.canvas.centerOn(self.scene_point(event.position()))
        self.update()

    def mouseMoveEvent(self, event):
        if event.buttons() & Qt.LeftButton:
            self.mousePressEvent(event)


class GraphCanvas(QGraphicsView):
    group_clicked = Signal(object)  # GroupItem: open it
    collapse_requested = Signal(object)  # a box: close the group around it
    context_requested = Signal(object, object)  # item or None, global position

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setScene(QGraphicsScene(self))
        self.setRenderHint(QPainter.Antialiasing)
        self.setDragMode(QGraphicsView.ScrollHandDrag)
        self.setTransformationAnchor(QGraphicsView.AnchorUnderMouse)
        self.setViewportUpdateMode(QGraphicsView.SmartViewportUpdate)
        # scroll bars always shown: the view refits the graph when it is resized (auto_fit), and a
        # scroll bar that appears and disappears with the fit resized it again, forever (a test
        # window hung in that loop of Show/Hide events on the vertical bar)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarAlwaysOn)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOn)
        self.setBackgroundBrush(self.palette().base())
        self.auto_fit = True  # keep the graph fitted to the view until the user zooms or pans
        self.overview = OverviewMap(self)
        self._press = None

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
        self.overview.place()

    def mousePressEvent(self, event):
        self.auto_fit = False
        self._press = event.position()
        super().mousePressEvent(event)

    def mouseReleaseEvent(self, event):
        super().mouseReleaseEvent(event)
        moved = self._press is None or (event.position() - self._press).manhattanLength() > 4
        self._press = None
        item = self.itemAt(event.position().toPoint())
        if event.button() == Qt.LeftButton and not moved and isinstance(item, GroupItem):
            self.group_clicked.emit(item)  # a click, not the end of a drag

    def mouseDoubleClickEvent(self, event):
        item = self.itemAt(event.position().toPoint())
        if isinstance(item, NodeItem):
            self.collapse_requested.emit(item)
        else:
            super().mouseDoubleClickEvent(event)

    def contextMenuEvent(self, event):
        item = self.itemAt(event.pos())
        self.context_requested.emit(item if isinstance(item, NodeItem) else None, event.globalPos())

    def scrollContentsBy(self, dx, dy):
        super().scrollContentsBy(dx, dy)
        self.overview.follow()

    def wheelEvent(self, event):
        self.auto_fit = False
        factor = 1.2 ** (event.angleDelta().y() / 120)
        self.zoom(factor)

    def zoom(self, factor: float) -> None:
        current = self.transform().m11()
        factor = max(0.01 / current, min(factor, 8 / current))
        self.scale(factor, factor)
        self.overview.follow()

    def zoom_keys(self, factor: float) -> None:
        """Ctrl+= / Ctrl+-: about the middle of the view (the mouse may be anywhere)."""
        self.auto_fit = False
        self.setTransformationAnchor(QGraphicsView.AnchorViewCenter)
        self.zoom(factor)
        self.setTransformationAnchor(QGraphicsView.AnchorUnderMouse)

    def fit(self) -> None:
        rect = self.scene().itemsBoundingRect()
        if rect.isEmpty():
            return
        self.fitInView(rect.adjusted(-20, -20, 20, 20), Qt.KeepAspectRatio)
        if self.transform().m11() > 1.5:  # small graphs: readable, not huge
            self.resetTransform()
            self.scale(1.5, 1.5)
            self.centerOn(rect.center())
        self.overview.follow()

    def zoom_to(self, item: QGraphicsItem) -> None:
        """Centre an item, zoomed in far enough to read it."""
        self.auto_fit = False
        if self.transform().m11() < READABLE:
            self.resetTransform()
            self.scale(READABLE, READABLE)
        # room around the item for it to be in the middle, even near the scene's edge
        scale = self.transform().m11()
        vp = self.viewport().rect()
        room = QRectF(0, 0, vp.width() / scale, vp.height() / scale)
        room.moveCenter(item.scenePos())
        if not self.sceneRect().contains(room):
            self.setSceneRect(self.sceneRect().united(room))
            self.overview.refresh()
        self.centerOn(item)
        self.overview.follow()


class GraphView(QWidget):
    layers_clicked = Signal(list)

    def __init__(self, session, tasks: Tasks, parent=None):
        super().__init__(parent)
        self.session = session
        self.tasks = tasks  # the window's job runner: large re-layouts run on its workers
        self.items: dict[str, NodeItem] = {}  # the layers drawn as their own box
        self.groups: dict[str, GroupItem] = {}  # closed groups, by key (GROUP + dotted path)
        self.grouping: Grouping | None = None
        self.expanded: set[tuple] = set()  # the open groups
        self._layouts: dict[frozenset, dict] = {}  # layouts of the current graph, by open groups
        self._graph: Graph | None = None
        self._last_expand: tuple[tuple, float] = ((), 0.0)  # the group a click opened, and when
        self.canvas = GraphCanvas()
        self.search = QLineEdit(placeholderText="Find layer or weight (Enter: next match)")
        self.search.returnPressed.connect(self.find_next)
        self.search.textChanged.connect(self._new_search)
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
        self.canvas.group_clicked.connect(lambda item: self.expand(item.group))
        self.canvas.collapse_requested.connect(self._collapse_around)
        self.canvas.context_requested.connect(self._context_menu)
        session.stage_selected.connect(self.rebuild)
        session.selection_changed.connect(self.show_selection)
        session.sensitivity_changed.connect(self.recolour)

    # -- building ------------------------------------------------------------------------
    def rebuild(self) -> None:
        variant = self.session.current
        if variant is None or variant.graph is None:
            self._graph = self.grouping = None
            self._clear()
            self.info.setText("")
            self.canvas.overview.refresh()  # nothing to map: hidden
            return
        graph = variant.graph
        same = self._graph is not None and [n.name for n in self._graph.nodes] == [n.name for n in graph.nodes]
        self._graph, self.grouping = graph, Grouping.of(graph)
        default = self.grouping.default_expanded()
        if not same:  # another model: its default view; another stage of the same one: as it was
            self.expanded = default
        self._layouts = {frozenset(default): variant.layout}  # the worker laid out the default view
        self._show(fit=True)

    def _clear(self) -> None:
        self.tasks.drop("graph-layout")
        self._syncing = True
        self.canvas.scene().clear()
        self.items, self.groups = {}, {}
        self._syncing = False

    def _show(self, fit: bool = False, then=None) -> None:
        """Draw the view with the groups in self.expanded open; lay it out first if needed."""
        key = frozenset(self.expanded)
        visible = self.grouping.visible(self.expanded)
        if key in self._layouts:
            self._draw(visible, self._layouts[key], fit, then)
        elif len(visible.nodes) <= SYNC_LAYOUT:
            self._layouts[key] = layout_flat(visible)
            self._draw(visible, self._layouts[key], fit, then)
        else:
            graph = self._graph
            self.info.setText(f"laying out {len(visible.nodes)} boxes…")

            def landed(pos):
                if self._graph is graph and frozenset(self.expanded) == key:
                    self._layouts[key] = pos
                    self._draw(visible, pos, fit, then)

            self.tasks.start("graph-layout", layout_flat, visible, on_return=landed)

    def _draw(self, visible, pos, fit: bool, then) -> None:
        variant, graph = self.session.current, self._graph
        assert graph is not None  # drawn only once a graph is set
        scene = self.canvas.scene()
        self._clear()
        big = len(visible.nodes) > 1500
        scene.setItemIndexMethod(QGraphicsScene.BspTreeIndex)
        path = QPainterPath()
        for a, b in visible.edges():
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
        for box in visible.nodes:
            if box.name not in pos:
                continue
            if box.name.startswith(GROUP):
                group = self.grouping.group_of_key(box.name)
                item = GroupItem(box, group, self.grouping.label(group), self.grouping.summary(group), *pos[box.name])
                self.groups[box.name] = item
            else:
                item = NodeItem(graph.node(box.name), *pos[box.name])
                self.items[box.name] = item
            scene.addItem(item)
        scene.setSceneRect(scene.itemsBoundingRect().adjusted(-200, -200, 200, 200))
        title = "original" if variant.run_id is None else f"run {variant.run_id}, stage {variant.index}"
        closed = f" ({len(self.groups)} groups closed: click one to open it)" if self.groups else ""
        self.info.setText(f"{variant.model.name} · {title} · {len(graph.nodes)} nodes{closed} · "
                          f"{graph.total_parameters:,} parameters")
        self.recolour()
        self.show_selection()
        if fit:
            self.canvas.auto_fit = True
            self.canvas.fit()
        if then is not None:
            then()

    # -- groups --------------------------------------------------------------------------
    def expand(self, group: tuple, then=None) -> None:
        self.expanded.add(tuple(group))
        self._last_expand = (tuple(group), time.monotonic())
        self._show(then=then)

    def collapse(self, group: tuple) -> None:
        group = tuple(group)
        self.expanded = {g for g in self.expanded if g[:len(group)] != group}
        self._show(then=lambda: self.groups.get(Grouping.key(group)) and self.canvas.centerOn(
            self.groups[Grouping.key(group)]))

    def expand_all(self) -> None:
        self.expanded = set(self.grouping.members)
        self._show(fit=True)

    def collapse_all(self) -> None:
        self.expanded = set()
        self._show(fit=True)

    def _parent_group(self, item: NodeItem) -> tuple:
        """The innermost open group a box is drawn inside."""
        if isinstance(item, GroupItem):
            return item.group[:-1]
        return self.grouping.path.get(item.node.name, ())

    def _collapse_around(self, item: NodeItem) -> None:
        # the first click of a double click on a closed group opened it: undo that, and close
        # the group around the box the user double-clicked
        group, when = self._last_expand
        if time.monotonic() - when < QApplication.doubleClickInterval() / 1000:
            self._last_expand = ((), 0.0)
            self.expanded.discard(group)
            parent = group[:-1]
            if not parent:
                self._show()
        else:
            parent = self._parent_group(item)
        if parent:
            self.collapse(parent)

    def _context_menu(self, item, where) -> None:
        if self.grouping is None:
            return
        menu = QMenu(self)
        if isinstance(item, GroupItem):
            menu.addAction(f"Open {item.label}", lambda: self.expand(item.group))
        parent = self._parent_group(item) if item is not None else ()
        if parent:
            menu.addAction(f"Close {self.grouping.label(parent)}", lambda: self.collapse(parent))
        menu.addSeparator()
        menu.addAction("Open all groups", self.expand_all)
        menu.addAction("Close all groups", self.collapse_all)
        menu.popup(where)

    def fit(self) -> None:
        self.canvas.auto_fit = True
        self.canvas.fit()

    def zoom_in(self) -> None:
        self.canvas.zoom_keys(1.25)

    def zoom_out(self) -> None:
        self.canvas.zoom_keys(1 / 1.25)

    def recolour(self) -> None:
        if self._graph is None:
            return
        mode = self.colour.currentData()
        total = max(1, self._graph.total_parameters)
        result = self.session.sensitivity
        names = {n.name: n for n in self._graph.nodes}
        drops = worst_drops(result, names) if result is not None else {}
        top = drop_scale(result) if result is not None else 1.0
        legend = ""
        if mode == "sensitivity":
            legend = f"drop 0 – {top:.1f} points, grey: none" if drops else "no data yet"
        self.legend.setText(legend)
        self.legend.setToolTip("Each layer's worst quality drop in the last sensitivity analysis: white "
                               "none, red the worst; grey: not measured. Run one in the Sensitivity tab."
                               if mode == "sensitivity" else "")
        for key, item in [*self.items.items(), *self.groups.items()]:
            n = item.node
            if isinstance(item, GroupItem):  # a group: its worst member
                inside = [drops[m] for m in self.grouping.members[item.group] if m in drops]
                drop = max(inside) if inside else None
            else:
                drop = drops.get(key)
            tip = item._tip()
            if drop is not None:
                tip += f"<br>sensitivity: worst drop {drop:+.1f} points"
            item.setToolTip(tip)
            if mode == "sensitivity":
                c = drop_colour(drop, top) if drop is not None else QColor(NO_DATA)
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
        self.canvas.overview.refresh()

    # -- selection and search ------------------------------------------------------------
    def _scene_selection(self) -> None:
        if self._syncing:
            return
        names = [it.node.name for it in self.canvas.scene().selectedItems() if type(it) is NodeItem]
        if names:
            self.session.select_layers(names)

    def show_selection(self) -> None:
        self._syncing = True
        try:
            wanted = set(self.session.selected_layers)
            for name, item in self.items.items():
                item.setSelected(name in wanted)
            for item in self.groups.values():  # a closed group shows that a selected layer is inside
                item.highlight = bool(wanted.intersection(self.grouping.members[item.group]))
                item.update()
        finally:
            self._syncing = False

    def reveal(self, name: str, then=None) -> bool:
        """Open every group around a node, then call then()."""
        if self.grouping is None or self._graph is None or name not in self._graph:
            return False
        closed = [g for g in self.grouping.ancestors(name) if g not in self.expanded]
        if closed:
            self.expanded.update(closed)
            self._show(then=then)
        elif then is not None:
            then()
        return True

    def select(self, name: str, center: bool = True) -> bool:
        """Select a layer, opening the groups around it; zoom to it and centre it."""
        def done():
            self.session.select_layers([name])
            if center and name in self.items:
                self.canvas.zoom_to(self.items[name])

        return self.reveal(name, done)

    def _new_search(self) -> None:
        self._match = -1

    def matches(self, text: str) -> list[str]:
        """Nodes whose name, op, module or weight names contain `text`; else, for a weight name
        an export renamed (`layer2.0.downsample.0.weight`), the node of that module."""
        text = text.strip().lower()
        if not text or self._graph is None:
            return []
        tensors: dict[str, list[str]] = {}
        for s in getattr(self.session.current, "stats", None) or []:
            tensors.setdefault(s.name, []).append(s.tensor)
        names = list(dict.fromkeys(n.name for n in self._graph.nodes
                                   if text in search_text(n, tensors.get(n.name, ()))))
        if not names and (module := weight_module(text)):
            names = [n.name for n in self._graph.nodes if module_of(n).lower() == module]
        return names

    def find_next(self) -> None:
        text = self.search.text().strip()
        if not text:
            return
        names = self.matches(text)
        if not names:
            self.info.setText(f"no layer or weight matches '{text}'")
            return
        self._match = (self._match + 1) % len(names)
        self.select(names[self._match])
