"""The trade-off chart: one point per stage of every run, quality against a footprint the user
picks, the Pareto front drawn. Hover shows the recipe and numbers; a click selects the variant.
Items are created once and updated with setData (pyqtgraph's fast path)."""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Signal
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from studio.core.evaluate import FOOTPRINTS, OPTIONAL_FOOTPRINTS
from studio.core.pipeline import run_titles
from studio.core.runtimes import title
from studio.core.units import byte_unit, fmt_bytes

RUN_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


MAX_STAGE_LABELS = 80  # past this many points the numbers would only hide them


def stage_points(runs, key: str):
    """[(x, quality, run_id, index, tip)] for every measured stage with that footprint."""
    points = []
    titles = run_titles(runs)
    for run in runs:
        for stage in run.stages:
            m = stage.measurement
            if m is None or m.quality is None:
                continue
            x = m.footprint(key)
            if x is None:
                continue
            steps = " → ".join(s.label() for s in stage.steps) or "original"
            judged = f" of output '{m.class_output}'" if m.class_output and len(m.fidelity) > 1 else ""
            tip = (f"{titles[run.id]} · stage {stage.label}\n{steps}\n{m.quality_label}{judged} {m.quality_text}\n"
                   f"file {fmt_bytes(m.size_bytes)} · zipped {fmt_bytes(m.zip_bytes)}\nparameters {m.parameters:,} · "
                   f"nonzeros {m.nonzeros:,}\nMACs {m.macs:,}\n"
                   + " · ".join(f"batch {b}: {ms:.3f} ms" for b, ms in sorted(m.latency_ms.items()))
                   + "".join(f"\n{title(r)}, batch 1: {ms:.3f} ms" for r, ms in sorted(m.runtime_ms.items())))
            points.append((float(x), float(m.quality), run.id, stage.index, tip))
    return points


def pareto_front(points):
    """Smaller footprint and higher quality win: the points no other point beats on both."""
    front, best = [], -np.inf
    for p in sorted(points, key=lambda p: (p[0], -p[1])):
        if p[1] > best:
            front.append(p)
            best = p[1]
    return front


class PercentAxis(pg.AxisItem):
    """Quality ticks as percentages (0.978 -> 97.8%), with as many decimals as the spacing needs;
    plain numbers when the quality is a cosine similarity (0.9993 is not "99.93%" of anything)."""

    percent = True

    def tickStrings(self, values, scale, spacing):
        if not self.percent:
            decimals = max(0, min(6, -math.floor(math.log10(spacing)) if spacing > 0 else 2))
            return [f"{v:.{decimals}f}" for v in values]
        step = spacing * 100
        decimals = 0 if step >= 1 else 1 if step >= 0.1 else 2
        return [f"{v * 100:.{decimals}f}%" for v in values]


class TradeoffChart(QWidget):
    variant_clicked = Signal(str, int)  # run id, stage index

    def __init__(self, session, parent=None):
        super().__init__(parent)
        self.session = session
        self.axis = QComboBox()
        for key, label in FOOTPRINTS.items():
            if key not in OPTIONAL_FOOTPRINTS:  # those come once a run has measured them
                self.axis.addItem(label, key)
        self.axis.setCurrentIndex(list(FOOTPRINTS).index("zip_bytes"))
        self.axis.currentIndexChanged.connect(self.refresh)
        self.plot = pg.PlotWidget(axisItems={"left": PercentAxis("left")})
        # no grid: pyqtgraph's axis grid redraws every tick line at every level, and it alone was
        # 20-40 ms of the window's longest stall when the chart appears (benchmarks/ui_stall.py);
        # the hover tip gives each point's exact numbers
        self.plot.setLabel("left", "quality (held-out)")
        self.plot.getAxis("left").enableAutoSIPrefix(False)
        self.front = self.plot.plot([], [], pen=pg.mkPen("#888888", width=1.5, style=pg.QtCore.Qt.DashLine))
        self.scatter = pg.ScatterPlotItem(hoverable=True, size=12, tip=self._tip,
                                          hoverPen=pg.mkPen("k", width=2), hoverSize=16)
        self.scatter.sigClicked.connect(self._clicked)
        self.plot.addItem(self.scatter)
        self.chosen = pg.ScatterPlotItem(size=20, brush=None, pen=pg.mkPen("#d62728", width=3))
        self.plot.addItem(self.chosen)
        self.legend = QLabel()
        bar = QHBoxLayout()
        bar.addWidget(QLabel("Footprint"))
        bar.addWidget(self.axis)
        bar.addWidget(self.legend, 1)
        lay = QVBoxLayout(self)
        lay.addLayout(bar)
        lay.addWidget(self.plot)
        self.points = []
        self.stage_labels: list[pg.TextItem] = []  # reused across refreshes, hidden when not needed
        session.runs_changed.connect(self.refresh)
        session.stage_selected.connect(self._mark_selected)

    def _tip(self, x, y, data):
        return data[2] if isinstance(data, tuple) else ""

    def _offer_measured(self) -> None:
        """Add the footprints only some runs measure (ExecuTorch latency, RAM) once one has."""
        for key in OPTIONAL_FOOTPRINTS:
            if self.axis.findData(key) < 0 and any(
                    s.measurement is not None and s.measurement.footprint(key) is not None
                    for r in self.session.runs for s in r.stages):
                self.axis.blockSignals(True)
                self.axis.addItem(FOOTPRINTS[key], key)
                self.axis.blockSignals(False)

    def refresh(self) -> None:
        self._offer_measured()
        key = self.axis.currentData()
        label = FOOTPRINTS[key]
        points = stage_points(self.session.runs, key)
        if label.endswith(" (bytes)"):  # the unit of the largest point, binary as in the table and report
            unit, scale = byte_unit(max((p[0] for p in points), default=0))
            self.plot.setLabel("bottom", f"{label[: -len(' (bytes)')]} ({unit})", units=None)
            points = [(x / scale, *rest) for x, *rest in points]
        else:
            self.plot.setLabel("bottom", label, units=None)
        self.points = points
        # say which measure the y-axis is: accuracy, agreement, or cosine (output fidelity)
        kinds = sorted({s.measurement.quality_label for r in self.session.runs for s in r.stages
                        if s.measurement is not None and s.measurement.quality is not None})
        self.plot.setLabel("left", f"{' / '.join(kinds) or 'quality'} (held-out)")
        self.plot.getAxis("left").percent = kinds != ["cosine"]
        self.plot.getAxis("left").picture = None  # redraw the ticks in the new form
        colours = {run.id: RUN_COLOURS[i % len(RUN_COLOURS)] for i, run in enumerate(self.session.runs)}
        spots = [{"pos": (x, q), "data": (rid, idx, tip), "brush": pg.mkBrush(colours[rid]),
                  "symbol": "s" if idx == 0 else "o"} for x, q, rid, idx, tip in self.points]
        self.scatter.setData(spots)
        self._label_stages()
        front = pareto_front(self.points)
        self.front.setData([p[0] for p in front], [p[1] for p in front])
        titles = run_titles(self.session.runs)
        self.legend.setText("  ".join(f"<span style='color:{c}'>●</span> {titles[rid]}" for rid, c in colours.items()))
        self.legend.setToolTip("\n".join(titles.values()))
        self.plot.autoRange()
        self._mark_selected()

    def _label_stages(self) -> None:
        """Each point's stage number beside it (0 = the original), while they stay readable."""
        shown = self.points if len(self.points) <= MAX_STAGE_LABELS else []
        while len(self.stage_labels) < len(shown):
            text = pg.TextItem(anchor=(-0.3, 0.5), color=self.palette().text().color())
            self.plot.addItem(text)
            self.stage_labels.append(text)
        for text, (x, q, _, idx, _) in zip(self.stage_labels, shown):
            text.setText(str(idx))
            text.setPos(x, q)
            text.show()
        for text in self.stage_labels[len(shown):]:
            text.hide()

    def _mark_selected(self) -> None:
        v = self.session.current
        if v is None or v.run_id is None:
            self.chosen.setData([])
            return
        hit = [(x, q) for x, q, rid, idx, _ in self.points if rid == v.run_id and idx == v.index]
        self.chosen.setData(pos=hit)

    def _clicked(self, item, points, ev=None) -> None:
        if len(points):
            rid, idx, _ = points[0].data()
            self.variant_clicked.emit(rid, idx)

    def png_bytes(self) -> bytes:
        """The chart as PNG (for the HTML report), via pyqtgraph's exporter."""
        from PySide6.QtCore import QBuffer, QByteArray, QIODevice
        from pyqtgraph.exporters import ImageExporter

        exporter = ImageExporter(self.plot.getPlotItem())
        exporter.parameters()["width"] = 900
        image = exporter.export(toBytes=True)
        buf = QByteArray()
        qbuf = QBuffer(buf)
        qbuf.open(QIODevice.WriteOnly)
        image.save(qbuf, "PNG")
        return bytes(buf.data())
