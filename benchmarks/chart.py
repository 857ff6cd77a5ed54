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


NICE = [m * 10 ** e for e in range(-3, 5) for m in (1, 2, 5)]  # the log axes' labelled ticks
PANEL_PX = (520, 230)  # about the plotting area of one panel in the exported picture
CHAR_PX, LINE_PX = 6.0, 13.0  # a label's size at font size 8


def _ticks(low: float, high: float) -> list:
    """(log10 x, text) at 1, 2, 5 x 10^k between 10^low and 10^high: pyqtgraph's own log ticks
    crowd their labels into each other over a wide range."""
    values = [v for v in NICE if low <= math.log10(v) <= high]
    if len(values) > 9:  # a range over many decades: 1 and 10^k only
        values = [v for v in values if str(v).lstrip("0.").startswith("1")]
    return [[(math.log10(v), f"{v:g}") for v in values]]


def _place(labels: list, xspan: tuple, yspan: tuple) -> list:
    """labels: (x in log10, y, text, must) in drawing order; returns (x, y, text, anchor) of those
    placed inside the panel where they overlap no label placed before, trying above, below, right
    and left of the point; a label with `must` is placed above when nothing is free, one without
    is left out."""
    sx = PANEL_PX[0] / max(xspan[1] - xspan[0], 1e-9)
    sy = PANEL_PX[1] / max(yspan[1] - yspan[0], 1e-9)
    placed, boxes = [], []
    for x, y, text, must in labels:
        px, py, w, h = (x - xspan[0]) * sx, (y - yspan[0]) * sy, CHAR_PX * len(text), LINE_PX
        tries = [((0.5, 1.2), (px - w / 2, py + 4)), ((0.5, -0.2), (px - w / 2, py - 4 - h)),
                 ((-0.08, 0.5), (px + 7, py - h / 2)), ((1.08, 0.5), (px - 7 - w, py - h / 2))]
        for anchor, (left, bottom) in tries:
            box = (left, bottom, left + w, bottom + h)
            inside = box[0] >= 0 and box[1] >= 0 and box[2] <= PANEL_PX[0] and box[3] <= PANEL_PX[1]
            if inside and not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes):
                placed.append((x, y, text, anchor))
                boxes.append(box)
                break
        else:
            if must:
                placed.append((x, y, text, tries[0][0]))
    return placed


def render(results: dict, path: Path) -> Path:
    """Per model two panels (quality vs x smaller zipped, vs x faster at the largest batch), log x
    axes; the studio's variants are labelled (those at one point in one label), the hand-stacked
    peers where their label fits, single peers are blue dots (results.md names every row)."""
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
            rows = [r for r in model["variants"] if "quality" in r]

            def at(r, key=key):
                return max(r[key] if key == "x_smaller_zipped" else r["x_faster"].get(key, 1.0), 1e-3)

            xspan = (math.log10(min(at(r) for r in rows)) - 0.08, math.log10(max(at(r) for r in rows)) + 0.35)
            qs = [r["quality"] for r in rows]
            low = min(qs)
            yspan = ((max(0.0, low - 0.05 * (1.05 - low)), min(1.0, max(qs) + 0.02)) if model["trained"]
                     else (-0.05, 1.03))
            labels: dict[tuple, list] = {}  # (x, quality) -> (kind, text) of the rows drawn there
            for kind, color in COLORS.items():
                pts = [r for r in rows if r["kind"] == kind]
                plot.plot([at(r) for r in pts], [r["quality"] for r in pts], pen=None, symbol="o", symbolSize=10,
                          symbolBrush=pg.mkBrush(*color), symbolPen=pg.mkPen("k"))
                for r in pts:
                    if kind != "peer" or r["variant"].startswith("by hand"):
                        labels.setdefault((round(math.log10(at(r)), 2), round(r["quality"], 4)), []).append(
                            (kind, short(r["variant"])))
            ordered = sorted(labels.items(), key=lambda item: [k for k, _ in item[1]] != ["studio"] * len(item[1]))
            texts = {(x, y): (items[0][0], ", ".join(dict.fromkeys(t for _, t in items))) for (x, y), items in ordered}
            spots = [(x, y, texts[(x, y)][1], texts[(x, y)][0] != "peer") for (x, y), _ in ordered]
            for x, y, text, anchor in _place(spots, xspan, yspan):
                item = pg.TextItem(text, color=COLORS[texts[(x, y)][0]], anchor=anchor)
                item.setFont(font)
                item.setPos(x, y)
                plot.addItem(item)
            plot.getAxis("bottom").setTicks(_ticks(*xspan))
            plot.setXRange(*xspan, padding=0)  # room on the right for the labels of the best points
            plot.setYRange(*yspan, padding=0)
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
