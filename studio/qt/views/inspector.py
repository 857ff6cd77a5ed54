"""The selected layer of the shown variant: shapes, parameters, sparsity, dtype, a histogram of
its weights and a heatmap of its weight matrix (one row per output channel / neuron, conv
kernels flattened). Zeros are drawn white and everything else in colour, so a pruned row,
channel or N:M group is plain to see."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QSplitter, QVBoxLayout, QWidget

from .histogram import HistogramOptions, with_toggles

MAX_SIDE = 1024  # larger matrices are strided down for display (the numbers above are exact)


def heatmap_image(w: np.ndarray) -> np.ndarray:
    """0 for exact zeros, 0.1..1 for |w| scaled: the LUT makes 0 white."""
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        w = w.reshape(w.shape[0], -1)
    sr, sc = max(1, -(-w.shape[0] // MAX_SIDE)), max(1, -(-w.shape[1] // MAX_SIDE))
    w = w[::sr, ::sc]
    mag = np.abs(w)
    top = float(mag.max()) or 1.0
    return np.where(w == 0, 0.0, 0.1 + 0.9 * mag / top).astype(np.float32)


def zero_white_lut() -> np.ndarray:
    lut = pg.colormap.get("viridis").getLookupTable(0.0, 1.0, 256)
    lut[:26] = lut[26]
    lut[0] = (255, 255, 255)
    return lut


def layer_summary(s) -> str:
    return (f"<b>{s.name}</b> ({s.op})<br>tensor {s.tensor}: shape {tuple(s.shape)}, {s.dtype}<br>"
            f"parameters {s.numel:,} · nonzeros {s.nonzeros:,} · <b>sparsity {s.sparsity:.1%}</b><br>"
            f"min {s.min:.4g} · max {s.max:.4g} · mean {s.mean:.4g} · std {s.std:.4g}")


class LayerInspector(QWidget):
    def __init__(self, session, options: HistogramOptions | None = None, tasks=None, parent=None):
        """tasks: the job runner (workers.Tasks) that fetches heatmaps; without one, no heatmap."""
        super().__init__(parent)
        self.session = session
        self.tasks = tasks
        self.options = options or HistogramOptions(parent=self)
        self.title = QLabel("Select a layer in the graph.")
        self.title.setWordWrap(True)
        self.title.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.hist = pg.PlotWidget(title="Weight histogram")
        self.hist.setLabel("bottom", "value")
        self.hist.setLabel("left", "count")
        self.hist_curve = self.hist.plot([0, 1], [0], stepMode="center", fillLevel=0, brush=(70, 120, 200, 150))
        self.heat = pg.PlotWidget(title="Weight matrix (white = zero)")
        self.heat.invertY(True)
        self.heat.setLabel("left", "output")
        self.heat.setLabel("bottom", "input (kernel flattened)")
        self.image = pg.ImageItem(axisOrder="row-major")
        self.image.setLookupTable(zero_white_lut())
        self.image.setLevels((0.0, 1.0))
        self.heat.addItem(self.image)
        hist_box, self.toggles = with_toggles(self.hist, self.options)
        split = QSplitter(Qt.Vertical)
        split.addWidget(hist_box)
        split.addWidget(self.heat)
        lay = QVBoxLayout(self)
        lay.addWidget(self.title)
        lay.addWidget(split, 1)
        self.shown: tuple | None = None  # (variant key, layer) on screen
        self.shown_stats = None  # the LayerStats whose histogram is drawn
        self.options.changed.connect(self._draw_hist)
        self.options.apply_axes(self.hist, [self.hist_curve])
        session.selection_changed.connect(self.refresh)
        session.stage_selected.connect(self.refresh)
        session.stats_arrived.connect(self.refresh)

    def stats_for(self, variant, layer):
        return next((s for s in variant.stats if s.name == layer or s.tensor == layer), None)

    def refresh(self) -> None:
        variant, layer = self.session.current, self.session.selected_layer
        if variant is None or layer is None:
            self.title.setText("Select a layer in the graph.")
            self.hist_curve.setData([0, 1], [0])
            self.image.clear()
            self.shown = self.shown_stats = None
            return
        s = self.stats_for(variant, layer)
        if s is None:
            pending = getattr(variant, "stats_pending", False)
            self.title.setText(f"<b>{layer}</b>: " + ("computing weight statistics…" if pending
                                                       else "no weights in this layer."))
            self.hist_curve.setData([0, 1], [0])
            self.image.clear()
            self.shown, self.shown_stats = (variant.key, layer), None
            return
        title = layer_summary(s)
        graph = variant.graph
        module = graph.node(s.name).module if graph is not None and s.name in graph else ""
        if module and module != s.name:  # a dynamo export's `node_Conv_12` is `layer2.0.conv1`
            title = f"<b>{module}</b> · " + title
        self.title.setText(title)
        self.shown, self.shown_stats = (variant.key, layer), s
        self._draw_hist()
        # the matrix itself can be large (an embedding): fetch it on a worker
        if self.tasks is not None:
            from studio.core.stats import weight_matrix

            def job(model, name):
                return heatmap_image(weight_matrix(model, name))

            key = (variant.key, layer)
            self.tasks.start("heatmap", job, variant.model, s.name,
                             on_return=lambda img: self._show_heat(key, img),
                             on_error=lambda e: self.image.clear())

    def _draw_hist(self) -> None:
        if self.shown_stats is None:
            self.hist_curve.setData([0, 1], [0])
        else:
            self.hist_curve.setData(*self.options.data(self.shown_stats))
        self.hist.getPlotItem().enableAutoRange()
        self.options.apply_axes(self.hist, [self.hist_curve])  # after the data: a log axis over raw counts overflows

    def _show_heat(self, key, img) -> None:
        if key != self.shown:
            return
        self.image.setImage(img, autoLevels=False, levels=(0.0, 1.0))
        self.heat.getPlotItem().autoRange()
