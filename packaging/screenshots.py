"""Screenshots of the real window for the README, taken offscreen:

    .venv/bin/python packaging/screenshots.py [NAME ...]   (writes docs/screenshots/*.png;
                                                           names: only those, e.g. sensitivity)

sensitivity.png: the per-layer pruning sensitivity heatmap of the demo CNN, a row selected;
graph.png: the layer graph of a pruned variant with a pruned layer selected (inspector
heatmap shows the zeros); tradeoff.png: the trade-off chart after two runs; compare.png;
search.png: the Search tab after a short search (12 quick candidates)."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ["STUDIO_SETTINGS"] = str(Path(tempfile.mkdtemp()) / "settings.ini")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "docs" / "screenshots"


def wait(app, condition, timeout=600.0):
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("the window did not get there in time")
        app.processEvents()
        time.sleep(0.005)


def settle(app, seconds=0.5):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.01)


def main(names: list[str]) -> int:
    from studio.core.recipe import Recipe, RecipeStep
    from studio.qt.app import create_app

    app = create_app()
    from studio.qt.main_window import MainWindow

    w = MainWindow()
    w.resize(1280, 800)  # a laptop screen: what most users have
    w.show()
    w.jobs.latency_batches = (1, 32)
    w.open_demo("cnn")
    wait(app, lambda: w.session.model is not None and not w.tasks.running())
    OUT.mkdir(parents=True, exist_ok=True)

    def wanted(name: str) -> bool:
        return not names or name in names

    if wanted("sensitivity"):  # the original CNN, each layer pruned alone at four ratios
        view = w.sensitivity_view
        w.tabs.setCurrentWidget(view)
        view.ratios.setText("0.3, 0.5, 0.7, 0.9")
        w.jobs.run_sensitivity()
        wait(app, lambda: w.session.sensitivity is not None and not w.tasks.running())
        view.select_row(1)
        w.recipe_panel.add_pass("prune.magnitude")
        view.max_drop.setValue(10.0)
        view.at_ratio.setCurrentIndex(view.at_ratio.findData(0.9))
        view.exclude_button.click()  # the recipe's form shows the ignore list
        settle(app)
        w.grab().save(str(OUT / "sensitivity.png"))
        w.session.set_recipe(Recipe([]))
    if names and not {"graph", "tradeoff", "compare", "search"} & set(names):
        return done(w)
    recipes = [
        Recipe([RecipeStep("prune.magnitude", {"sparsity": 0.9, "fine_tune_epochs": 3}),
                RecipeStep("quantize.int8_static", {})], "prune 90% + INT8"),
        Recipe([RecipeStep("prune.magnitude", {"sparsity": 0.6, "scope": "per_layer", "fine_tune_epochs": 2}),
                RecipeStep("quantize.fp16", {})], "prune 60% + FP16"),
    ]
    for recipe in recipes:
        w.session.set_recipe(recipe)
        count = len(w.session.runs)
        w.jobs.run_recipe()
        wait(app, lambda: len(w.session.runs) > count and not w.tasks.running())  # noqa: B023 - waited for here

    # the pruned stage of run 1, its most pruned layer selected
    run = w.session.runs[0]
    w.show_stage(run.id, 1)
    wait(app, lambda: w.session.current.run_id == run.id and w.session.current.index == 1 and not w.tasks.running())
    w.tabs.setCurrentWidget(w.graph_view)
    w.graph_view.colour.setCurrentIndex(w.graph_view.colour.findData("sparsity"))
    w.graph_view.select("fc1")
    w.recipe_panel.list.setCurrentRow(0)
    wait(app, lambda: not w.tasks.running())
    settle(app)
    if wanted("graph"):
        w.grab().save(str(OUT / "graph.png"))

    w.tabs.setCurrentWidget(w.chart)
    w.show_stage(run.id, 2)
    wait(app, lambda: w.session.current.index == 2 and not w.tasks.running())
    settle(app)
    if wanted("tradeoff"):
        w.grab().save(str(OUT / "tradeoff.png"))

    w.tabs.setCurrentWidget(w.compare)
    settle(app)
    if wanted("compare"):
        w.grab().save(str(OUT / "compare.png"))

    if wanted("search"):  # a short search on the demo CNN: quick candidates (no training), 12 of them
        view = w.search_view
        w.tabs.setCurrentWidget(view)
        view.out.setText(tempfile.mkdtemp(prefix="studio-search-"))
        view.quick.setChecked(True)
        view.trials.setValue(12)
        view.max_drop.setValue(1.0)
        view.run_button.click()
        wait(app, lambda: not w.tasks.running())
        settle(app)
        w.grab().save(str(OUT / "search.png"))
    return done(w)


def done(w) -> int:
    w.shutdown()
    w.close()
    print("\n".join(str(p) for p in sorted(OUT.glob("*.png"))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
