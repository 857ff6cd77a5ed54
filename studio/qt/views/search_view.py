"""The Search tab: studio.core.search over the open model. Its settings (objective, quality
budget, time, workers, output folder), Start / Cancel on the window's one job runner, and a chart
where each candidate lands as a point as soon as it is measured (quality against the objective's
footprint), the Pareto front dashed, the best ringed. A point's height is its quality on the
selection set (a validation split carved from the training data, or half the held-out set when the
training data is small; what the search chose by); a candidate re-measured on the
confirmation set (the whole held-out set; the front, the best) also gets a cross at that confirmed quality, joined to
its point, and its tooltip says both. A click on a point puts its recipe in the recipe panel.
The search itself runs in jobs.Jobs.run_search."""

from __future__ import annotations

import os
from pathlib import Path

import pyqtgraph as pg
from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QSpinBox, QVBoxLayout, QWidget,
)

from studio.core.search import quality_text
from studio.core.units import byte_unit, fmt_bytes

from .job_controls import job_controls
from .tradeoff import PercentAxis, pareto_front

OBJECTIVES = {  # combo label -> objectives
    "Smallest shipped file": ("size",),
    "Fastest (latency)": ("latency",),
    "Fewest MACs": ("macs",),
    "Size and latency (multi-objective TPE)": ("size", "latency"),
}
X_OF = {"size": ("shipped_bytes", "shipped file (bytes)"), "latency": ("latency_ms", "latency (ms)"),
        "macs": ("macs", "MACs (batch 1)")}
INSTALL_HINT = "Search needs Optuna (and Ray for several workers): pip install -c constraints.txt -e '.[search]'"


def _spin(box, low, high, value, step=None, suffix=""):
    box.setRange(low, high)
    if step is not None:
        box.setSingleStep(step)
    box.setSuffix(suffix)
    box.setValue(value)
    return box


def search_available() -> str | None:
    """None, or what to install for the Search tab (checked without importing the libraries)."""
    import importlib.util

    return None if importlib.util.find_spec("optuna") is not None else INSTALL_HINT


class SearchView(QWidget):
    run_requested = Signal()
    cancel_requested = Signal()
    recipe_picked = Signal(dict)  # a candidate's recipe (plain data), clicked on the chart

    def __init__(self, session, parent=None):
        super().__init__(parent)
        self.session = session
        self.objective = QComboBox()
        self.objective.addItems(list(OBJECTIVES))
        self.max_drop = _spin(QDoubleSpinBox(), 0.0, 100.0, 0.5, step=0.25, suffix=" points")
        self.max_drop.setToolTip("Quality a candidate may lose against the original (accuracy or agreement points)")
        self.seconds = _spin(QSpinBox(), 10, 7 * 24 * 3600, 600, step=60, suffix=" s")
        self.seconds.setToolTip("No new candidate starts after this; the running ones finish")
        self.trials = _spin(QSpinBox(), 0, 100_000, 0)
        self.trials.setSpecialValueText("no limit")
        self.trials.setToolTip("At most this many candidates in the search (earlier runs of it count)")
        self.workers = _spin(QSpinBox(), 1, max(1, os.cpu_count() or 1), 1)
        self.workers.setToolTip("Candidates measured at once; more than 1 runs them on a local Ray")
        self.quick = QCheckBox("No training (quick)")
        self.quick.setToolTip("Leave fine-tuning and distillation out of the space: many more candidates, "
                              "less recovered quality")
        self.out = QLineEdit()
        self.out.setToolTip("Every candidate (recipe, measurements, model file) and the search's database go "
                            "here; the same search started again continues from it")
        job_controls(self, "Start search")
        self.summary = QLabel("Start a search: every candidate lands here as a point, the Pareto front dashed.")
        self.summary.setWordWrap(True)
        self.missing = search_available()
        if self.missing:
            self.run_button.setEnabled(False)
            self.summary.setText(self.missing)

        form = QFormLayout()
        form.addRow("Objective", self.objective)
        form.addRow("Quality budget", self.max_drop)
        row = QHBoxLayout()
        for label, widget in (("Time", self.seconds), ("Candidates", self.trials), ("Workers", self.workers)):
            row.addWidget(QLabel(label))
            row.addWidget(widget)
        row.addWidget(self.quick)
        row.addStretch(1)
        form.addRow(row)
        form.addRow("Folder", self.out)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.error, 1)

        self.plot = pg.PlotWidget(axisItems={"left": PercentAxis("left")})
        self.plot.setLabel("left", "quality (● selection, × confirmed)")
        self.plot.getAxis("left").enableAutoSIPrefix(False)
        self.front = self.plot.plot([], [], pen=pg.mkPen("#888888", width=1.5, style=pg.QtCore.Qt.DashLine))
        self.scatter = pg.ScatterPlotItem(hoverable=True, size=11, tip=self._tip, hoverPen=pg.mkPen("k", width=2),
                                          hoverSize=15)
        self.scatter.sigClicked.connect(self._clicked)
        self.plot.addItem(self.scatter)
        self.best_mark = pg.ScatterPlotItem(size=20, brush=None, pen=pg.mkPen("#2ca02c", width=3))
        self.plot.addItem(self.best_mark)
        # confirmed quality: a cross per confirmed candidate, a thin line from its selection point
        self.confirmed_links = self.plot.plot([], [], pen=pg.mkPen("#d62728", width=1), connect="pairs")
        self.confirmed = pg.ScatterPlotItem(symbol="x", size=11, pen=pg.mkPen("#d62728", width=1.5),
                                            brush=pg.mkBrush("#d62728"), hoverable=True, tip=self._tip)
        self.plot.addItem(self.confirmed)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addLayout(buttons)
        lay.addWidget(self.summary)
        lay.addWidget(self.plot, 1)
        self.candidates: list[dict] = []
        self.best: dict | None = None
        session.model_changed.connect(self._model_changed)

    # -- settings ------------------------------------------------------------------------
    def objectives(self) -> tuple:
        return OBJECTIVES[self.objective.currentText()]

    def folder(self) -> Path:
        return Path(self.out.text().strip() or self.default_folder())

    def default_folder(self) -> str:
        model = self.session.model
        name = model.name if model is not None else "model"
        return str(Path.home() / "studio-search" / "".join(c if c.isalnum() or c in "-_." else "_" for c in name))

    def _model_changed(self) -> None:
        self.out.setText(self.default_folder())
        self.clear()

    def set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running and not self.missing)
        self.cancel_button.setEnabled(running)

    # -- points --------------------------------------------------------------------------
    def clear(self) -> None:
        self.candidates, self.best = [], None
        self.refresh()

    def add_candidates(self, candidates: list[dict]) -> None:
        """Candidates earlier runs of this search measured: on the chart before new ones land."""
        trials = {c["trial"] for c in candidates}
        self.candidates = [c for c in self.candidates if c["trial"] not in trials] + list(candidates)
        self.refresh()

    def add_candidate(self, candidate: dict) -> None:
        """A candidate just measured: a point at once (the front is redrawn with it)."""
        self.candidates = [c for c in self.candidates if c["trial"] != candidate["trial"]] + [candidate]
        self.refresh()

    def show_summary(self, summary: dict) -> None:
        """The finished search: every candidate of the study (earlier runs too), the best ringed."""
        self.candidates = list(summary["candidates"])
        self.best = summary["best"]
        self.refresh()
        n, measured = len(self.candidates), summary["measured_this_run"]
        text = f"{n} candidates ({measured} measured now, the rest kept from earlier runs), executor " \
               f"{summary['executor']}, stopped by {summary['stopped']}. "
        held = summary.get("held_out") or {}
        if self.best:
            b = self.best
            label = b.get("quality_label", "quality")
            if b["confirmed"]:
                q = (f"{quality_text(label, b['quality'])} ({0.0 - b['quality_drop_points']:+.2f} points) confirmed on "
                     f"{held.get('confirmation')} held-out samples the search never chose by; "
                     f"{quality_text(label, b['selection_quality'])} ({0.0 - b['selection_drop_points']:+.2f}) on "
                     "the selection set")
            else:
                q = f"{quality_text(label, b['selection_quality'])} ({0.0 - b['selection_drop_points']:+.2f} points)"
            text += (f"Best: {b['recipe']['name']}: {q}, "
                     f"{fmt_bytes(b['shipped_bytes'])} ({b['x_smaller']}x smaller); {b['recipe_file']} "
                     f"{'verified' if b['verified'] else 'NOT verified'}.")
        else:
            text += f"No candidate within {summary['max_drop_points']} points yet."
        if held and not held.get("split"):
            text += f" Not confirmed: {held['note']}."
        elif summary.get("failed_confirmation"):
            text += (f" Within the budget on the selection set only (not best): trials "
                     f"{', '.join(str(f['trial']) for f in summary['failed_confirmation'])}.")
        self.summary.setText(text)

    def _x(self, c: dict):
        key = X_OF[self.objectives()[0]][0]
        return c.get(key)

    def refresh(self) -> None:
        key, label = X_OF[self.objectives()[0]]
        shown = [c for c in self.candidates if c.get(key) is not None and c.get("selection_quality") is not None]
        scale = 1
        if key == "shipped_bytes":  # in the unit of the largest point, as on the trade-off chart
            unit, scale = byte_unit(max((c[key] for c in shown), default=0))
            label = f"shipped file ({unit})"
        self.plot.setLabel("bottom", label, units=None)
        spots = [{"pos": (c[key] / scale, float(c["selection_quality"])), "data": c,
                  "brush": pg.mkBrush("#1f77b4" if c["selection_drop_points"] <= self.max_drop.value() else "#bbbbbb")}
                 for c in shown]
        self.scatter.setData(spots)
        front = pareto_front([(c[key] / scale, float(c["selection_quality"])) for c in shown])
        self.front.setData([p[0] for p in front], [p[1] for p in front])
        confirmed = [c for c in shown if c.get("confirmed") and c.get("quality") is not None]
        self.confirmed.setData([{"pos": (c[key] / scale, float(c["quality"])), "data": c} for c in confirmed])
        xs, ys = [], []
        for c in confirmed:
            xs += [c[key] / scale] * 2
            ys += [float(c["selection_quality"]), float(c["quality"])]
        self.confirmed_links.setData(xs, ys)
        best = self.best
        self.best_mark.setData(pos=[(best[key] / scale, float(best["selection_quality"]))]
                               if best and best.get(key) else [])

    def _tip(self, x, y, data):
        if not isinstance(data, dict):
            return ""
        c = data
        ms = f"{c['latency_ms']:.3f} ms" if c.get("latency_ms") else "-"
        label = c.get("quality_label", "quality")
        q = (f"{label} {quality_text(label, c['selection_quality'])} ({0.0 - c['selection_drop_points']:+.2f} points) "
             "on the selection set")
        if c.get("confirmed"):
            q = (f"{label} {quality_text(label, c['quality'])} ({0.0 - c['quality_drop_points']:+.2f} points) "
                 f"confirmed\n{q}")
        elif c.get("confirmed_within_budget") is None and c.get("quality") is not None:
            q += " (not confirmed: too few held-out samples to split)"
        else:
            q += " (not confirmed: off the front)"
        return (f"candidate {c['trial']}: {c['recipe']['name']}\n{q}\nshipped "
                f"{fmt_bytes(c['shipped_bytes'])} ({c['x_smaller']}x smaller)\nlatency {ms} · MACs {c['macs']:,}\n"
                "click: put its recipe in the recipe panel")

    def _clicked(self, item, points, ev=None) -> None:
        if len(points):
            self.recipe_picked.emit(points[0].data()["recipe"])
