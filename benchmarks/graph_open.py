"""How long real networks take to open and draw in the graph view, and how readable they are.

For ResNet-50, MobileNetV2, ViT-Tiny and a BERT-base-sized encoder (12 layers, width 768) exported
to ONNX: seconds from `open_path` until the graph is drawn (load, graph, layout, statistics on the
worker; drawing on the UI thread), the drawing alone, the boxes shown (closed module groups) and
the time of a Find that opens a group and centres its match. Also writes
docs/screenshots/graph-groups.png (ResNet-18 at 1280x800: closed, then layer2 open).

    QT_QPA_PLATFORM=offscreen .venv/bin/python benchmarks/graph_open.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("STUDIO_SETTINGS", str(Path(tempfile.mkdtemp()) / "settings.ini"))
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = Path(__file__).parent / "results" / "graph_open.json"
SHOT = ROOT / "docs" / "screenshots" / "graph-groups.png"


def export(name: str, folder: Path, **sizes) -> Path:
    """`name` exported to ONNX in `folder`, random weights. bert_base: 12 layers, width 768, 12 heads,
    vocab 30522, 128 int64 token ids (108.6M parameters); `sizes` (dim, depth, heads) shrink it."""
    import torch

    from studio.core.zoo.archs import ARCHS, BertSmall

    torch.manual_seed(0)
    if name == "bert_base":
        module, shape = BertSmall(**{"dim": 768, "depth": 12, "heads": 12, **sizes}), (1, 128)
        example = torch.randint(0, 30522, shape)
    else:
        factory, shape = ARCHS[name]
        module, example = factory(), torch.randn(*shape)
    path = folder / f"{name}.onnx"
    # with grad on: under no_grad the attention takes a fused path the exporter cannot write
    torch.onnx.export(module.eval(), (example,), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["output"])
    return path


def wait(app, condition, timeout=600.0):
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError
        app.processEvents()
        time.sleep(0.001)


def main() -> int:
    from PySide6.QtGui import QPainter, QPixmap

    from studio.qt.app import create_app

    app = create_app()
    from studio.qt.main_window import MainWindow

    load_before = [round(x, 2) for x in os.getloadavg()]  # a shared machine: how busy it was
    folder = Path(tempfile.mkdtemp())
    w = MainWindow()
    w.resize(1280, 800)
    w.show()
    view = w.graph_view
    rows = {}
    for name, find in (("resnet18", "layer2.0.downsample.0.weight"), ("resnet50", "layer3.4.conv2"),
                       ("mobilenet_v2", "features.12"), ("vit_tiny", "blocks.11.mlp"),
                       ("bert_base", "blocks.7.attn")):
        path = export(name, folder)
        generation = w.session.generation
        t = time.perf_counter()
        w.open_path(str(path))
        # drawn: the new model's graph is on screen (a large model's statistics still come)
        wait(app, lambda g=generation: w.session.generation != g and w.session.current.graph is not None
             and not w.tasks.running("load") and (view.items or view.groups))
        opened = time.perf_counter() - t
        t = time.perf_counter()
        view.rebuild()  # the drawing alone, on the UI thread
        drawn = time.perf_counter() - t
        t = time.perf_counter()
        view.canvas.viewport().grab()
        painted = time.perf_counter() - t
        boxes, groups = len(view.items) + len(view.groups), len(view.groups)
        if name == "resnet18":
            app.processEvents()
            collapsed = w.grab()
            view.expand(("layer2",))
            view.fit()
            app.processEvents()
            expanded = w.grab()
            shot = QPixmap(collapsed.width() * 2 + 8, collapsed.height())
            shot.fill()
            p = QPainter(shot)
            p.drawPixmap(0, 0, collapsed)
            p.drawPixmap(collapsed.width() + 8, 0, expanded)
            p.end()
            SHOT.parent.mkdir(parents=True, exist_ok=True)
            shot.save(str(SHOT))
        view.search.setText(find)
        t = time.perf_counter()
        view.find_next()
        wait(app, lambda: bool(w.session.selected_layers))
        found = time.perf_counter() - t
        rows[name] = {"nodes": len(w.session.current.graph.nodes), "boxes_at_open": boxes,
                      "groups_at_open": groups, "open_to_drawn_s": round(opened, 2),
                      "draw_s": round(drawn, 3), "paint_s": round(painted, 3), "find": find,
                      "found": w.session.selected_layers[0], "find_s": round(found, 3),
                      "file_mb": round(path.stat().st_size / 1e6, 1)}
        print(name, rows[name], flush=True)
    w.shutdown()
    w.close()
    result = {"benchmark": "graph_open", "goal_s": 2.0, "models": rows, "cpus": os.cpu_count(),
              "qpa": os.environ["QT_QPA_PLATFORM"], "load_before": load_before,
              "load_after": [round(x, 2) for x in os.getloadavg()]}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
