"""Per-layer sensitivity (studio.core.sensitivity): what to measure (pruning one layer at a time
at several ratios, or INT8 with one layer kept in float), the result as a heatmap (layers x
settings, colour = quality drop in points, the numbers in the cells and in the hover tip; a
click selects the row's layer everywhere), and "Exclude sensitive layers", which hands
sensitive_layers(...) to the recipe. The analysis itself runs in the job controller
(jobs.Jobs.run_sensitivity) on the recipe run's worker, progress bars and cancel."""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtGui import QColor, QPen
from PySide6.QtWidgets import (
    QComboBox, QDoubleSpinBox, QGraphicsRectItem, QHBoxLayout, QLabel, QLineEdit, QPushButton, QVBoxLayout,
    QWidget,
)

from studio.core.errors import StudioError
from studio.core.sensitivity import sensitive_layers

from .job_controls import job_controls

KINDS = {  # key: (label, tool tip)
    "magnitude": ("Pruning (magnitude)", "Zero the smallest weights of one layer at a time, at each ratio"),
    "structured": ("Pruning (channels)",
                   "Remove output channels of one layer at a time (Torch-Pruning), at each ratio"),
    "int8": ("INT8, one layer float", "Quantize everything to static INT8 except one layer, for each layer"),
}
DEFAULT_RATIOS = "0.5, 0.7, 0.9"
MAX_CELL_TEXTS = 400  # beyond this many cells the numbers are in the hover tip only
NO_DATA = "#c8c8c8"
DROP_COLOURS = pg.ColorMap([0.0, 0.5, 1.0], [(255, 255, 255), (253, 174, 97), (215, 48, 39)])


def layer_key(name: str) -> str:
    """One spelling per layer: the ONNX node "/fc1/Gemm" the exporter made from torch's "fc1"
    gives "fc1" (quantize.excluded_nodes matches an ignore entry the same way)."""
    return name.strip("/").rsplit("/", 1)[0].replace("/", ".") if name.startswith("/") else name


def node_for(layer: str, names, keys: dict | None = None) -> str | None:
    """The graph node (among `names`) a result's layer is, if any. `keys`: layer_key -> name,
    when called for many layers."""
    if layer in names:
        return layer
    keys = keys if keys is not None else {layer_key(n): n for n in names}
    return keys.get(layer_key(layer))


def drop_points(result) -> np.ndarray:
    """Quality lost per layer x setting, in percentage points (negative: it got better)."""
    return 100.0 * np.asarray(result.drop(), dtype=float)


def drop_scale(result) -> float:
    """The top of the colour scale: the worst drop, at least one point so noise stays pale."""
    return max(1.0, float(drop_points(result).max(initial=0.0)))


def drop_colour(points: float, top: float) -> QColor:
    return DROP_COLOURS.map(max(0.0, min(1.0, points / top)), mode="qcolor")


def worst_drops(result, names) -> dict[str, float]:
    """Graph node -> the worst drop (points) of its layer over every setting of the result."""
    out, keys = {}, {layer_key(n): n for n in names}
    for layer, d in zip(result.layers, drop_points(result).max(axis=1)):
        node = node_for(layer, names, keys)
        if node is not None:
            out[node] = float(d)
    return out


def parse_ratios(text: str) -> list[float]:
    try:
        ratios = [float(t) for t in text.replace(";", ",").split(",") if t.strip()]
    except ValueError:
        raise StudioError(f"ratios must be numbers between 0 and 1, like {DEFAULT_RATIOS}") from None
    if not ratios or not all(0 < r < 1 for r in ratios):
        raise StudioError(f"ratios must be numbers between 0 and 1, like {DEFAULT_RATIOS}")
    return sorted(set(ratios))



def _q(r, value: float) -> str:
    """A quality as its measure reads: a percentage for accuracy/agreement, a similarity for cosine."""
    from studio.core.evaluate import PERCENT_LABELS

    return f"{value:.2%}" if r.metric in PERCENT_LABELS else f"{value:.4f}"

class HeatmapImage(pg.ImageItem):
    """The cells: hovering shows a cell's numbers as the plot's tool tip (as ScatterPlotItem
    does), a left click selects the row's layer."""

    def __init__(self, tip, clicked):
        super().__init__(axisOrder="row-major")
        self._tip, self._clicked = tip, clicked

    def hoverEvent(self, ev):
        vb = self.getViewBox()
        if vb is None:
            return
        if ev.isExit():  # an exit event has no position
            vb.setToolTip("")
        else:
            vb.setToolTip(self._tip(math.floor(ev.pos().y()), math.floor(ev.pos().x())))

    def mouseClickEvent(self, ev):
        if ev.button() == Qt.LeftButton:
            ev.accept()
            self._clicked(math.floor(ev.pos().y()))


class SensitivityView(QWidget):
    run_requested = Signal()
    cancel_requested = Signal()
    exclude_requested = Signal(list, str)  # layers, the pass family to leave them out of

    def __init__(self, session, parent=None):
        super().__init__(parent)
        self.session = session
        self.kind = QComboBox()
        for key, (label, tip) in KINDS.items():
            self.kind.addItem(label, key)
            self.kind.setItemData(self.kind.count() - 1, tip, Qt.ToolTipRole)
        self.kind.currentIndexChanged.connect(
            lambda: self.ratios.setEnabled(self.kind.currentData() != "int8"))
        self.ratios = QLineEdit(DEFAULT_RATIOS)
        self.ratios.setToolTip("Fractions of one layer's weights (or channels) to remove, comma separated")
        self.ratios.setMinimumWidth(self.ratios.fontMetrics().horizontalAdvance("0.3, 0.5, 0.7, 0.9") + 16)
        job_controls(self, "Run analysis")
        self.run_button.setToolTip("Measure every layer of the variant shown, on the evaluation data "
                                   "chosen in the recipe panel (Ctrl+Shift+R)")
        self.summary = QLabel("Run an analysis to see how much quality each layer costs when only it is "
                              "changed.")
        self.summary.setWordWrap(True)

        self.plot = pg.PlotWidget()
        self.plot.setMouseEnabled(False, False)
        self.plot.hideButtons()
        self.plot.setMenuEnabled(False)
        self.plot.invertY(True)
        self.image = HeatmapImage(self.tip_at, self.select_row)
        self.plot.addItem(self.image)
        self.colour_bar = self.plot.getPlotItem().addColorBar(
            self.image, colorMap=DROP_COLOURS, values=(0.0, 1.0), label="quality drop (points)",
            interactive=False)
        self.chosen = QGraphicsRectItem()
        pen = QPen(QColor("#1f77b4"), 3)
        pen.setCosmetic(True)
        self.chosen.setPen(pen)
        self.chosen.setZValue(10)
        self.chosen.hide()
        self.plot.addItem(self.chosen)
        self.texts: list[pg.TextItem] = []

        self.max_drop = QDoubleSpinBox()
        self.max_drop.setRange(-100.0, 100.0)
        self.max_drop.setDecimals(1)
        self.max_drop.setSingleStep(0.5)
        self.max_drop.setValue(1.0)
        self.max_drop.setSuffix(" points")
        self.max_drop.setToolTip("Layers losing more than this much quality are left out")
        self.at_ratio = QComboBox()
        self.at_ratio.setToolTip("The pruning ratio whose column decides")
        self.exclude_button = QPushButton("Exclude sensitive layers")
        self.exclude_button.setToolTip("Add them to the ignore list of the selected pass in the recipe")
        self.exclude_button.clicked.connect(self._exclude)
        self.preview = QLabel()
        self.preview.setWordWrap(True)
        # room for two lines from the start: the heatmap must not jump when the preview fills in
        self.preview.setMinimumHeight(2 * self.preview.fontMetrics().lineSpacing() + 4)
        for w in (self.max_drop, self.at_ratio):
            (w.valueChanged if w is self.max_drop else w.currentIndexChanged).connect(self._preview)

        top = QHBoxLayout()
        top.addWidget(QLabel("Measure"))
        top.addWidget(self.kind)
        top.addWidget(QLabel("Ratios"))
        top.addWidget(self.ratios)
        top.addWidget(self.run_button)
        top.addWidget(self.cancel_button)
        top.addStretch(1)
        bottom = QHBoxLayout()
        bottom.addWidget(QLabel("Max drop"))
        bottom.addWidget(self.max_drop)
        self.at_label = QLabel("at ratio")
        bottom.addWidget(self.at_label)
        bottom.addWidget(self.at_ratio)
        bottom.addWidget(self.exclude_button)
        bottom.addStretch(1)
        lay = QVBoxLayout(self)
        lay.addLayout(top)
        lay.addWidget(self.error)
        lay.addWidget(self.summary)
        lay.addWidget(self.plot, 1)
        lay.addLayout(bottom)
        lay.addWidget(self.preview)  # its own line: a long list of layers must not widen the window
        session.sensitivity_changed.connect(self.refresh)
        session.selection_changed.connect(self.show_selection)
        session.stage_selected.connect(self.show_selection)
        self.refresh()

    # -- asking ----------------------------------------------------------------------------
    def request(self) -> tuple[str, list[float]]:
        """(kind, ratios) to measure; a StudioError says what is wrong with the input."""
        kind = self.kind.currentData()
        return kind, ([] if kind == "int8" else parse_ratios(self.ratios.text()))

    def set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    # -- the result ------------------------------------------------------------------------
    @property
    def result(self):
        return self.session.sensitivity

    def columns(self) -> list[str]:
        r = self.result
        if r is None:
            return []
        return ["kept in float"] if r.kind == "quant" else [f"{x:.0%}" for x in r.ratios]

    def refresh(self) -> None:
        r = self.result
        for t in self.texts:
            self.plot.removeItem(t)
        self.texts = []
        self.at_ratio.blockSignals(True)
        self.at_ratio.clear()
        self.at_ratio.blockSignals(False)
        self.exclude_button.setEnabled(r is not None)
        if r is None:
            self.image.clear()
            self.plot.getAxis("left").setTicks([])
            self.plot.getAxis("bottom").setTicks([])
            self.preview.setText("")
            self.show_selection()
            return
        drops = drop_points(r)
        top = drop_scale(r)
        self.image.setImage(drops, autoLevels=False)
        self.image.setRect(QRectF(0, 0, drops.shape[1], drops.shape[0]))
        self.colour_bar.setLevels((0.0, top))
        left = self.plot.getAxis("left")
        left.setTicks([[(i + 0.5, name) for i, name in enumerate(r.layers)]])
        left.setWidth(min(260, 20 + 7 * max(len(n) for n in r.layers)))
        self.plot.getAxis("bottom").setTicks([[(j + 0.5, c) for j, c in enumerate(self.columns())]])
        if r.kind == "quant":
            self.plot.setLabel("bottom", "the one layer left in float, everything else INT8")
        else:
            unit = "channels" if r.method == "structured" else "weights"
            self.plot.setLabel("bottom", f"share of the layer's {unit} pruned (that layer alone)")
        self.plot.setLabel("left", "layer")
        if drops.size <= MAX_CELL_TEXTS:
            for (i, j), d in np.ndenumerate(drops):
                colour = "#ffffff" if d / top > 0.7 else "#111111"
                t = pg.TextItem(f"{d:+.1f}", color=colour, anchor=(0.5, 0.5))
                t.setPos(j + 0.5, i + 0.5)
                self.plot.addItem(t)
                self.texts.append(t)
        self.plot.getPlotItem().getViewBox().setRange(xRange=(0, drops.shape[1]), yRange=(0, drops.shape[0]),
                                                      padding=0)
        base = f"{r.metric} {_q(r, r.baseline)}" + (" (all INT8)" if r.kind == "quant" else "")
        what = r.meta.get("variant", "")
        data = r.meta.get("data", "")
        self.summary.setText(
            f"<b>{len(r.layers)} layers</b> of {what} · baseline {base} on {data} · colour and numbers: "
            + ("quality INT8 costs in that layer (points)" if r.kind == "quant"
               else "quality lost when only that layer is pruned (points)")
            + " · hover a cell for details, click a row to select the layer")
        self.at_label.setVisible(r.kind != "quant")
        self.at_ratio.setVisible(r.kind != "quant")
        self.at_ratio.blockSignals(True)
        for x in r.ratios:
            self.at_ratio.addItem(f"{x:.0%}", x)
        if r.ratios:  # the core's default column: the ratio closest to 0.5
            self.at_ratio.setCurrentIndex(int(np.argmin(np.abs(np.asarray(r.ratios) - 0.5))))
        self.at_ratio.blockSignals(False)
        self._preview()
        self.show_selection()

    def tip_at(self, row: int, col: int) -> str:
        r = self.result
        if r is None or not (0 <= row < len(r.layers) and 0 <= col < len(self.columns())):
            return ""
        q = float(r.quality[row, col])
        d = float(drop_points(r)[row, col])
        if r.kind == "quant":
            setting = "kept in float, the rest INT8"
        else:
            setting = f"pruned {r.ratios[col]:.0%} ({r.method})"
        return (f"{r.layers[row]}\n{setting}\n{r.metric} {_q(r, q)} (baseline {_q(r, r.baseline)})\n"
                f"drop {d:+.2f} points")

    def select_row(self, row: int) -> None:
        r = self.result
        if r is None or not 0 <= row < len(r.layers):
            return
        v = self.session.current
        names = {n.name for n in v.graph.nodes} if v is not None and v.graph is not None else set()
        self.session.select_layers([node_for(r.layers[row], names) or r.layers[row]])

    def show_selection(self) -> None:
        r = self.result
        keys = {layer_key(n) for n in self.session.selected_layers}
        rows = [i for i, name in enumerate(r.layers) if layer_key(name) in keys] if r is not None else []
        if not rows:
            self.chosen.hide()
            return
        self.chosen.setRect(QRectF(0, rows[0], len(self.columns()), 1))
        self.chosen.show()

    # -- excluding -------------------------------------------------------------------------
    def sensitive(self) -> list[str]:
        r = self.result
        if r is None:
            return []
        ratio = self.at_ratio.currentData() if r.kind == "prune" else None
        return sensitive_layers(r, self.max_drop.value() / 100.0, ratio)

    def _preview(self) -> None:
        layers = self.sensitive()
        self.preview.setText(f"{len(layers)} sensitive: {', '.join(layers)}" if layers else
                             ("no layer drops more than that" if self.result is not None else ""))

    def _exclude(self) -> None:
        r = self.result
        if r is not None:
            self.exclude_requested.emit(self.sensitive(), "quantize" if r.kind == "quant" else "prune")
