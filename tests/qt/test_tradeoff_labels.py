"""The trade-off chart names runs after their recipe, numbers each point by its stage and shows
sizes in the same binary units as the table and the report."""

import pytest

from studio.core.recipe import Recipe, RecipeStep


@pytest.mark.slow
def test_two_identical_runs_are_named_and_marked(demo, qtbot):
    w = demo
    recipe = Recipe([RecipeStep("prune.magnitude", {"sparsity": 0.5})], "half")
    for k in (1, 2):
        w.session.set_recipe(recipe)
        w.actions_["run"].trigger()
        qtbot.waitUntil(lambda: len(w.session.runs) == k and not w.tasks.running(), timeout=120_000)  # noqa: B023
    chart = w.chart
    assert "#1 half" in chart.legend.text() and "#2 half (re-run of #1)" in chart.legend.text()
    shown = [t for t in chart.stage_labels if t.isVisible()]
    assert sorted(t.toPlainText() for t in shown) == ["0", "0", "1", "1"]
    assert "(KiB)" in chart.plot.getAxis("bottom").labelText
    zipped = w.session.runs[0].stages[0].measurement.zip_bytes
    assert any(abs(x - zipped / 1024) < 1e-9 for x, *_ in chart.points)  # plotted in the unit it says
    assert w.results.model.item(0, 0).text() == "#1 half" and w.results.model.item(0, 4).text().endswith("KiB")
