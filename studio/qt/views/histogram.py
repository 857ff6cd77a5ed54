"""How weight histograms are drawn, shared by the inspector and Compare. After pruning, the
exact zeros (90 % of the weights) are one spike that flattens every other bar: "Hide zeros"
takes them out of the bin holding 0, "Log counts" draws counts on a log axis. Both choices are
kept in the settings."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QVBoxLayout, QWidget

from studio.core.stats import zero_bin

LOG_FLOOR = -0.5  # where an empty bin sits on the log axis: below a count of 1 (log10 = 0)


class HistogramOptions(QObject):
    """The two toggles, one object for every histogram in the window."""

    changed = Signal()

    def __init__(self, settings=None, parent=None):
        super().__init__(parent)
        self.settings = settings
        self.hide_zeros = self._read("histogram/hide_zeros")
        self.log_counts = self._read("histogram/log_counts")

    def _read(self, key: str) -> bool:
        return bool(self.settings is not None and self.settings.value(key, False, type=bool))

    def set(self, hide_zeros: bool | None = None, log_counts: bool | None = None) -> None:
        new = (self.hide_zeros if hide_zeros is None else bool(hide_zeros),
               self.log_counts if log_counts is None else bool(log_counts))
        if new == (self.hide_zeros, self.log_counts):
            return
        self.hide_zeros, self.log_counts = new
        if self.settings is not None:
            self.settings.setValue("histogram/hide_zeros", self.hide_zeros)
            self.settings.setValue("histogram/log_counts", self.log_counts)
        self.changed.emit()

    def data(self, stats) -> tuple[np.ndarray, np.ndarray]:
        """(edges, heights) of a layer's histogram as the toggles ask."""
        edges = np.asarray(stats.hist_edges, dtype=np.float64)
        counts = np.asarray(stats.hist_counts, dtype=np.float64).copy()
        b = zero_bin(edges)
        if self.hide_zeros and b is not None:
            counts[b] = max(0.0, counts[b] - stats.hist_zeros)
        if self.log_counts:
            with np.errstate(divide="ignore"):
                counts = np.where(counts > 0, np.log10(np.maximum(counts, 1)), LOG_FLOOR)
        return edges, counts

    def apply_axes(self, plot, curves) -> None:
        """The count axis labelled for the mode (log ticks read 1, 10, 100), bars filled from
        the bottom of that axis."""
        plot.getPlotItem().autoRange()  # to the new data now: a log axis over the old counts' range overflows
        plot.getAxis("left").setLogMode(self.log_counts)
        plot.setLabel("left", "count (log)" if self.log_counts else "count")
        for c in curves:
            c.setFillLevel(LOG_FLOOR if self.log_counts else 0)


class HistogramToggles(QWidget):
    """The two check boxes, following (and setting) a HistogramOptions."""

    def __init__(self, options: HistogramOptions, parent=None):
        super().__init__(parent)
        self.options = options
        self.hide_zeros = QCheckBox("Hide zeros")
        self.hide_zeros.setToolTip("Leave the exact zeros (pruned weights) out of the histogram")
        self.log_counts = QCheckBox("Log counts")
        self.log_counts.setToolTip("Counts on a logarithmic axis: small bars stay visible beside a spike")
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.hide_zeros)
        lay.addWidget(self.log_counts)
        lay.addStretch(1)
        self._sync()
        self.hide_zeros.toggled.connect(lambda on: options.set(hide_zeros=on))
        self.log_counts.toggled.connect(lambda on: options.set(log_counts=on))
        options.changed.connect(self._sync)

    def _sync(self) -> None:
        for box, on in ((self.hide_zeros, self.options.hide_zeros), (self.log_counts, self.options.log_counts)):
            if box.isChecked() != on:
                box.blockSignals(True)
                box.setChecked(on)
                box.blockSignals(False)


def with_toggles(plot: QWidget, options: HistogramOptions) -> tuple[QWidget, HistogramToggles]:
    """The histogram `plot` under its Hide zeros / Log counts toggles, as one widget (the inspector
    and Compare show the same pair)."""
    box = QWidget()
    lay = QVBoxLayout(box)
    lay.setContentsMargins(0, 0, 0, 0)
    toggles = HistogramToggles(options)
    lay.addWidget(toggles)
    lay.addWidget(plot, 1)
    return box, toggles
