"""benchmarks/results/chart.png from results.json: per model, quality against x-smaller (zipped)
and x-faster (largest batch), studio variants against the plain libraries. Drawn with pyqtgraph
offscreen, the same plotting library the window uses."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
COLORS = {"baseline": (120, 120, 120), "peer": (70, 130, 220), "studio": (230, 90, 40)}


def short(name: str) -> str:
    return name.replace("studio: ", "").replace("by hand: ", "hand: ").replace(" + ft", "")


def render(results: dict, path: Path) -> Path:
    """Per model two panels (quality vs x smaller zipped, vs x faster at the largest batch), log x
    axes; studio variants and the hand-stacked peers are labelled, single peers are blue dots."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    import pyqtgraph as pg
    import pyqtgraph.exporters
    from PySide6.QtGui import QFont
    from PySide6.QtWidgets import QApplication

    from studio.qt.compat import guard_none_refcount

    app = QApplication.instance() or QApplication(sys.argv[:1])
    guard_none_refcount()  # PySide6 6.12 on CPython 3.11 leaks None refs (see studio/qt/compat.py)
    pg.setConfigOptions(antialias=True, background="w", foreground="k")
    models = list(results["models"].items())
    layout = pg.GraphicsLayoutWidget()
    layout.resize(1200, 320 * len(models))
    font = QFont("Sans", 8)
    for row, (name, model) in enumerate(models):
        big = str(max(model["batches"]))
        panels = [("x_smaller_zipped", "x smaller than FP32 (zipped or packed file)"),
                  (big, f"x faster than FP32 (onnxruntime, batch {big})")]
        for col, (key, label) in enumerate(panels):
            quality = "accuracy" if model["trained"] else "agreement with FP32"
            plot = layout.addPlot(row=row, col=col, title=f"{name}: {quality}")
            plot.setLabel("bottom", label)
            plot.showGrid(x=True, y=True, alpha=0.3)
            plot.setLogMode(x=True, y=False)  # PlotDataItems take raw x; text goes at log10(x)
            for kind, color in COLORS.items():
                pts = [r for r in model["variants"] if r["kind"] == kind and "quality" in r]
                xs = [max(r[key] if key == "x_smaller_zipped" else r["x_faster"].get(key, 1.0), 1e-3) for r in pts]
                plot.plot(xs, [r["quality"] for r in pts], pen=None, symbol="o", symbolSize=10,
                          symbolBrush=pg.mkBrush(*color), symbolPen=pg.mkPen("k"))
                for x, r in zip(xs, pts):
                    if kind == "peer" and not r["variant"].startswith("by hand"):
                        continue
                    text = pg.TextItem(short(r["variant"]), color=color, anchor=(0.5, 1.2 if kind == "studio" else -0.2))
                    text.setFont(font)
                    text.setPos(math.log10(x), r["quality"])
                    plot.addItem(text)
            every = [max(r[key] if key == "x_smaller_zipped" else r["x_faster"].get(key, 1.0), 1e-3)
                     for r in model["variants"] if "quality" in r]
            # room on the right for the labels of the best points
            plot.setXRange(math.log10(min(every)) - 0.08, math.log10(max(every)) + 0.35, padding=0)
            qs = [r["quality"] for r in model["variants"] if "quality" in r]
            low = min(qs)
            plot.setYRange(max(0.0, low - 0.05 * (1.05 - low)) if model["trained"] else -0.05, 1.03 if not model["trained"] else min(1.0, max(qs) + 0.02), padding=0)
    layout.show()
    app.processEvents()  # lay the plots out before the scene is rendered
    exporter = pg.exporters.ImageExporter(layout.scene())
    exporter.parameters()["width"] = 1200
    exporter.export(str(path))
    return path


if __name__ == "__main__":
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS
    results = json.loads((folder / "results.json").read_text())
    print(render(results, folder / "chart.png"), flush=True)
    # PySide6 6.12 on CPython 3.11 over-releases True/False somewhere in this scene's teardown
    # ("bool_dealloc" at exit; None has a guard in studio/qt/compat.py, bools do not): the
    # picture is written, so leave without the teardown. run.py calls this in a subprocess.
    os._exit(0)
