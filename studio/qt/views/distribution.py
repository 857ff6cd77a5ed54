"""Parameters of the whole model, per layer: counts (bars) and sparsity (bars, 0..1)."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QVBoxLayout, QWidget


class DistributionView(QWidget):
    def __init__(self, session, parent=None):
        super().__init__(parent)
        self.session = session
        self.layout_ = pg.GraphicsLayoutWidget()
        self.params = self.layout_.addPlot(row=0, col=0, title="Parameters per layer")
        self.sparsity = self.layout_.addPlot(row=1, col=0, title="Sparsity per layer")
        self.sparsity.setYRange(0, 1)
        self.sparsity.setXLink(self.params)
        self.param_bars = pg.BarGraphItem(x=[], height=[], width=0.8, brush="#4c78a8")
        self.sparse_bars = pg.BarGraphItem(x=[], height=[], width=0.8, brush="#e45756")
        self.params.addItem(self.param_bars)
        self.sparsity.addItem(self.sparse_bars)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.layout_)
        session.stage_selected.connect(self.refresh)
        session.stats_arrived.connect(self.refresh)

    def refresh(self) -> None:
        v = self.session.current
        stats = v.stats if v else []
        x = np.arange(len(stats))
        self.param_bars.setOpts(x=x, height=[s.numel for s in stats], width=0.8)
        self.sparse_bars.setOpts(x=x, height=[s.sparsity for s in stats], width=0.8)
        step = max(1, len(stats) // 12)
        ticks = [[(i, s.name[-14:]) for i, s in enumerate(stats) if i % step == 0]]
        self.sparsity.getAxis("bottom").setTicks(ticks)
        self.params.getAxis("bottom").setTicks(ticks)
        self.params.autoRange()
