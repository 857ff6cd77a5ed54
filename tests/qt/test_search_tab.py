"""The Search tab on a real window: a real search (Optuna on SQLite, candidates measured by the
pipeline) started with its button, points landing on its chart, the search started again
continuing from its folder, and a click on a point putting that recipe in the recipe panel."""

import json

import pytest


@pytest.mark.slow
def test_search_tab_lands_points_and_continues_a_search(window, qtbot, tmp_path, tiny_model):
    w = window
    view = w.search_view
    w.open_path(str(tiny_model))
    # the load task ends just after the model lands; Start refuses while it runs ("being opened")
    qtbot.waitUntil(lambda: w.session.model is not None and not w.tasks.running("load"), timeout=60_000)
    assert w.tabs.tabText(w.tabs.indexOf(view)) == "Search"
    assert view.out.text().endswith("tiny")  # a folder named after the model
    view.out.setText(str(tmp_path / "search"))
    view.quick.setChecked(True)
    view.trials.setValue(2)
    view.max_drop.setValue(100.0)  # an untrained model: every candidate is within the budget
    landed = []
    original = view.add_candidate
    view.add_candidate = lambda c: (landed.append(c["trial"]), original(c))  # record the order they land
    view.run_button.click()
    assert view.cancel_button.isEnabled() and not view.run_button.isEnabled(), view.error.text()
    qtbot.waitUntil(lambda: not w.tasks.running("run"), timeout=240_000)
    assert view.error.text() == "", view.error.text()
    assert landed == [0, 1]  # each as it was measured, before the search ended
    assert len(view.scatter.points()) == 2
    assert "2 candidates" in view.summary.text() and "verified" in view.summary.text()
    assert len(view.best_mark.points()) == 1
    summary = json.loads((tmp_path / "search" / "search.json").read_text())
    assert summary["executor"] == "local" and summary["best"] is not None

    # the same search started again goes on from its folder: the two earlier points come back
    view.trials.setValue(3)
    view.run_button.click()
    qtbot.waitUntil(lambda: not w.tasks.running("run"), timeout=240_000)
    assert len(view.scatter.points()) == 3
    summary = json.loads((tmp_path / "search" / "search.json").read_text())
    assert len(summary["candidates"]) == 3 and summary["measured_this_run"] + summary["reused_this_run"] == 1

    # a click on a point: its recipe is the recipe panel's
    point = view.scatter.points()[-1]
    view._clicked(view.scatter, [point])
    assert [s.id for s in w.session.recipe.passes] == [p["id"] for p in point.data()["recipe"]["passes"]]
