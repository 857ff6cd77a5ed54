"""benchmarks/results/chart.png from results.json: per model, quality against x-smaller (zipped)
and x-faster (largest batch), studio variants against the plain libraries. Drawn with pyqtgraph
offscreen, the same plotting library the window uses."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
COLORS = {"baseline": (120, 120, 120), "peer": (70, 130, 220), "studio": (230, 90, 40)}


def render(results: dict, path: Path) -> Path:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    import pyqtgraph as pg
    import pyqtgraph.exporters
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv[:1])  # noqa: F841 - Qt needs one
    pg.setConfigOptions(antialias=True, background="w", foreground="k")
    models = list(results["models"].items())
    layout = pg.GraphicsLayoutWidget()
    layout.resize(560 * 2, 300 * len(models))
    for row, (name, model) in enumerate(models):
        big = str(max(model["batches"]))
        for col, (key, label) in enumerate([("x_smaller_zipped", "x smaller (zipped)"), (big, f"x faster (batch {big})")]):
            plot = layout.addPlot(row=row, col=col, title=f"{name}")
            plot.setLabel("bottom", label)
            plot.setLabel("left", "accuracy" if model["trained"] else "agreement")
            plot.showGrid(x=True, y=True, alpha=0.3)
            plot.setLogMode(x=True, y=False)
            legend = plot.addLegend(offset=(-5, 5), labelTextSize="7pt") if row == 0 and col == 0 else None
            for kind, color in COLORS.items():
                pts = [r for r in model["variants"] if r["kind"] == kind and "quality" in r]
                xs = [r[key] if key == "x_smaller_zipped" else r["x_faster"].get(key, 1) for r in pts]
                item = pg.ScatterPlotItem([max(x, 1e-3) for x in xs], [r["quality"] for r in pts], size=10,
                                          brush=pg.mkBrush(*color), pen=pg.mkPen("k"), name=kind)
                plot.addItem(item)
                for x, r in zip(xs, pts):
                    text = pg.TextItem(r["variant"], color=color, anchor=(0, 1))
                    text.setFont(pg.QtGui.QFont("Sans", 6))
                    text.setPos(__import__("math").log10(max(x, 1e-3)), r["quality"])
                    plot.addItem(text)
            if legend is None:
                continue
    exporter = pg.exporters.ImageExporter(layout.scene())
    exporter.parameters()["width"] = 1120
    exporter.export(str(path))
    return path


if __name__ == "__main__":
    results = json.loads((RESULTS / "results.json").read_text())
    print(render(results, RESULTS / "chart.png"))
