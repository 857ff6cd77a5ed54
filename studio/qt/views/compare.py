"""Original vs the selected variant, per layer: parameters, nonzeros, dtype, shape before and
after, and the selected layer's weight histograms overlaid. Layers are matched by their weight
tensor ("conv1.weight" in torch is "conv1.weight_quantized" in a QDQ ONNX stage)."""

from __future__ import annotations

import re

import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QHeaderView,
    QLabel,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .histogram import HistogramOptions, with_toggles

HEADERS = ["Layer", "Op before → after", "Shape before → after", "Params before", "Params after",
           "Nonzeros before", "Nonzeros after", "Sparsity after", "Dtype before → after"]


def tensor_key(tensor: str) -> str:
    """The module a weight belongs to, whatever the framework or pass renamed it to."""
    return re.split(r"\.(?:weight|bias)|_quantized|_scale|_zero_point", tensor.lstrip("/"))[0]


def match_layers(before: list, after: list) -> list[tuple]:
    after_by_key = {}
    for s in after:
        after_by_key.setdefault(tensor_key(s.tensor), s)
    rows, seen = [], set()
    for s in before:
        k = tensor_key(s.tensor)
        rows.append((k, s, after_by_key.get(k)))
        seen.add(k)
    rows += [(k, None, s) for k, s in after_by_key.items() if k not in seen]
    return rows


class CompareView(QWidget):
    def __init__(self, session, options: HistogramOptions | None = None, parent=None):
        super().__init__(parent)
        self.session = session
        self.options = options or HistogramOptions(parent=self)
        self.title = QLabel("Select a variant on the chart or in the results table.")
        self.table = QTableWidget(0, len(HEADERS))
        self.table.setHorizontalHeaderLabels(HEADERS)
        self.table.setSortingEnabled(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.table.cellClicked.connect(self._row_clicked)
        self.hist = pg.PlotWidget(title="Weights: original (blue) vs selected (red)")
        self.hist.addLegend()
        self.before_curve = self.hist.plot([0, 1], [0], stepMode="center", fillLevel=0,
                                           brush=(60, 110, 220, 110), pen="#3c6edc", name="original")
        self.after_curve = self.hist.plot([0, 1], [0], stepMode="center", fillLevel=0,
                                          brush=(220, 60, 60, 110), pen="#dc3c3c", name="selected")
        hist_box, self.toggles = with_toggles(self.hist, self.options)
        split = QSplitter(Qt.Vertical)
        split.addWidget(self.table)
        split.addWidget(hist_box)
        lay = QVBoxLayout(self)
        lay.addWidget(self.title)
        lay.addWidget(split)
        self.rows = []
        self.options.changed.connect(self.show_histograms)
        self.options.apply_axes(self.hist, [self.before_curve, self.after_curve])
        session.stage_selected.connect(self.refresh)
        session.stats_arrived.connect(self.refresh)
        session.selection_changed.connect(self.show_histograms)

    def refresh(self) -> None:
        o, c = self.session.original, self.session.current
        self.table.setRowCount(0)
        self.rows = []
        if o is None or c is None:
            return
        name = "original" if c.run_id is None else f"run {c.run_id}, stage {c.index}"
        self.title.setText(f"Original vs {name}{self._quality(c)}")
        self.rows = match_layers(o.stats, c.stats)
        self.table.setRowCount(len(self.rows))
        for r, (key, b, a) in enumerate(self.rows):
            def pair(f, b=b, a=a):  # this row's before and after
                return f"{f(b) if b else '–'} → {f(a) if a else '–'}"

            cells = [key, pair(lambda s: s.op), pair(lambda s: "×".join(map(str, s.shape))),
                     f"{b.numel:,}" if b else "–", f"{a.numel:,}" if a else "–",
                     f"{b.nonzeros:,}" if b else "–", f"{a.nonzeros:,}" if a else "–",
                     f"{a.sparsity:.1%}" if a else "–", pair(lambda s: s.dtype)]
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if b and a and col in (4, 6, 8) and cells[col - 1 if col != 8 else 8] != text:
                    item.setForeground(Qt.darkRed)
                self.table.setItem(r, col, item)
        self.show_histograms()

    def _quality(self, variant) -> str:
        """' · agreement 100.00% → 98.44%': the stage's quality against its run's original, named
        by its measure (accuracy, agreement or cosine)."""
        stage = self.session.stage(variant.run_id, variant.index)
        base = self.session.stage(variant.run_id, 0)
        m, b = (s.measurement if s else None for s in (stage, base))
        if m is None or m.quality is None:
            return ""
        before = f"{b.quality_text} → " if b is not None and b.quality is not None and variant.index else ""
        return f" · {m.quality_label} {before}{m.quality_text}"

    def _row_clicked(self, row: int, col: int) -> None:
        key, b, a = self.rows[row]
        layer = (a or b).name
        if self.session.current and any(s.name == layer for s in self.session.current.stats):
            self.session.select_layers([layer])
        elif b:
            self.session.select_layers([b.name])

    def show_histograms(self) -> None:
        layer = self.session.selected_layer
        o, c = self.session.original, self.session.current
        if layer is None or o is None or c is None:
            return
        key = next((tensor_key(s.tensor) for s in c.stats + o.stats if s.name == layer), None)
        b = next((s for s in o.stats if tensor_key(s.tensor) == key), None)
        a = next((s for s in c.stats if tensor_key(s.tensor) == key), None)
        for curve, s in ((self.before_curve, b), (self.after_curve, a)):
            if s is None:
                curve.setData([0, 1], [0])
            else:
                curve.setData(*self.options.data(s))
        self.hist.getPlotItem().enableAutoRange()
        self.options.apply_axes(self.hist, [self.before_curve, self.after_curve])
