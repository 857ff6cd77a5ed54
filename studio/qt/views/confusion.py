"""The confusion matrix of one stage (labelled data only): rows are the true class, columns the
predicted one, as sklearn counts them in the Measurement. Counts are written in the cells up to
20 classes; hovering a cell always says its numbers."""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

MAX_CELL_TEXTS = 20  # classes; more and the numbers would not fit in their cells
CELL_COLOURS = pg.ColorMap([0.0, 1.0], [(255, 255, 255), (20, 70, 150)])  # white: none of the row, blue: all


class _Cells(pg.ImageItem):
    """Hovering a cell shows its count as the plot's tool tip."""

    def __init__(self, tip):
        super().__init__(axisOrder="row-major")
        self._tip = tip

    def hoverEvent(self, ev):
        vb = self.getViewBox()
        if vb is None:
            return
        if ev.isExit():  # an exit event has no position
            vb.setToolTip("")
        else:
            vb.setToolTip(self._tip(math.floor(ev.pos().y()), math.floor(ev.pos().x())))


class ConfusionView(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.matrix: np.ndarray | None = None
        self.title = QLabel("Confusion matrix: run a recipe on labelled data.")
        self.title.setWordWrap(True)
        self.plot = pg.PlotWidget()
        self.plot.setMouseEnabled(False, False)
        self.plot.hideButtons()
        self.plot.setMenuEnabled(False)
        self.plot.invertY(True)  # true class 0 at the top, as the matrix is printed
        self.plot.getPlotItem().setAspectLocked(True)
        self.plot.setLabel("left", "true class")
        self.plot.setLabel("bottom", "predicted class")
        self.image = _Cells(self.tip_at)
        self.image.setLookupTable(CELL_COLOURS.getLookupTable(0.0, 1.0, 256))
        self.plot.addItem(self.image)
        self.texts: list[pg.TextItem] = []
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.title)
        lay.addWidget(self.plot, 1)

    def tip_at(self, row: int, col: int) -> str:
        m = self.matrix
        if m is None or not (0 <= row < m.shape[0] and 0 <= col < m.shape[1]):
            return ""
        share = m[row, col] / max(1, m[row].sum())
        kind = "correct" if row == col else "mistaken"
        return f"true {row}, predicted {col}: {int(m[row, col])} samples ({share:.1%} of class {row}, {kind})"

    def show_measurement(self, measurement, what: str) -> None:
        """Draw `measurement.confusion` (None: say why there is none)."""
        for t in self.texts:
            self.plot.removeItem(t)
        self.texts = []
        confusion = getattr(measurement, "confusion", None) if measurement is not None else None
        if not confusion:
            self.matrix = None
            self.image.clear()
            why = ("not measured" if measurement is None else
                   f"quality is {measurement.quality_label}: a confusion matrix needs labelled data")
            self.title.setText(f"Confusion matrix of {what}: {why}." if what else
                               "Confusion matrix: run a recipe on labelled data.")
            self.plot.hide()
            return
        m = np.asarray(confusion, dtype=np.int64)
        self.matrix = m
        self.plot.show()
        # a row's share, not the raw count, colours a cell: classes of different sizes read alike
        shares = m / np.maximum(1, m.sum(axis=1, keepdims=True))
        self.image.setImage(shares.astype(np.float32), levels=(0.0, 1.0))
        n = m.shape[0]
        self.image.setRect(QRectF(0, 0, n, n))
        ticks = [[(i + 0.5, str(i)) for i in range(n)]] if n <= MAX_CELL_TEXTS else None
        for axis in ("left", "bottom"):
            self.plot.getAxis(axis).setTicks(ticks)
        if n <= MAX_CELL_TEXTS:
            for (i, j), count in np.ndenumerate(m):
                if count == 0:
                    continue
                t = pg.TextItem(str(count), color="#ffffff" if shares[i, j] > 0.5 else "#111111", anchor=(0.5, 0.5))
                t.setPos(j + 0.5, i + 0.5)
                self.plot.addItem(t)
                self.texts.append(t)
        self.plot.getPlotItem().getViewBox().setRange(xRange=(0, n), yRange=(0, n), padding=0)
        right = int(np.trace(m))
        self.title.setText(f"Confusion matrix of {what}: {right} of {int(m.sum())} held-out samples right "
                           f"({measurement.quality_label} {measurement.quality_text}) · rows: true class, "
                           "columns: predicted · hover a cell")
