"""The example plugin (installed by pip, conftest.plugin_site) in the window: its pass is in the
recipe panel with the form its config draws, and the broken plugin beside it is one log line."""

import importlib
import sys

import pytest


@pytest.fixture
def plugins_on_path(plugin_site):
    """The plugin folder on sys.path, the registry looking again; all undone afterwards."""
    from studio.core.passes import registry

    sys.path.insert(0, str(plugin_site))
    importlib.invalidate_caches()
    registry.refresh()
    yield plugin_site
    sys.path.remove(str(plugin_site))
    for name in [m for m in sys.modules if m.startswith(("studio_plugin_example", "studio_plugin_broken"))]:
        del sys.modules[name]
    registry.refresh()


def test_plugin_pass_in_the_recipe_panel_and_broken_plugins_in_the_log(plugins_on_path, window, qtbot):
    panel = window.recipe_panel
    ids = [panel.add_box.itemData(i) for i in range(panel.add_box.count())]
    assert "example.round" in ids and "prune.magnitude" in ids
    panel.add_pass("example.round")
    assert "step" in panel.form.editors  # the form drawn from the plugin's config
    assert window.session.recipe.passes[-1].id == "example.round"
    log = window.log_panel.text.toPlainText()
    assert "plugin 'broken'" in log and "ModuleNotFoundError" in log
    assert "'prune.magnitude' is taken" in log


@pytest.mark.slow
def test_plugin_pass_runs_in_the_window_measured_by_the_plugin_evaluator(plugins_on_path, window, qtbot):
    w = window
    w.open_demo("mlp")
    qtbot.waitUntil(lambda: w.session.model is not None, timeout=60_000)
    panel = w.recipe_panel
    panel.add_pass("example.round")
    panel.form.set_value("step", 0.25)
    assert w.session.recipe.passes[-1].options == {"step": 0.25}
    panel.quality_box.setCurrentIndex(panel.quality_box.findData("top2"))
    panel.quality_box.activated.emit(panel.quality_box.currentIndex())  # as a click does
    assert w.session.recipe.evaluator == "top2"
    w.jobs.run_recipe()
    qtbot.waitUntil(lambda: len(w.session.runs) == 1 and not w.tasks.running(), timeout=120_000)
    run = w.session.runs[0]
    assert [s.name for s in run.stages] == ["original", "example.round"]
    assert all(s.measurement.quality_label == "top2" for s in run.stages)
    assert w.results.model.item(1, 2).text().endswith("top2")
    assert w.session.recipe.to_dict()["evaluator"] == "top2"  # Recipe > Save keeps it


def test_metric_as_module_function_is_imported_only_when_asked(plugins_on_path):
    from studio.core import plugins
    from studio.core.errors import StudioError

    with pytest.raises(StudioError, match="a recipe names an installed evaluator"):
        plugins.evaluator("studio_plugin_example.metrics:top2")  # as a recipe would: refused
    top2 = plugins.evaluator("studio_plugin_example.metrics:top2", allow_import=True)  # typed by the user
    import numpy as np

    scores = np.array([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1]])
    assert top2([scores], np.array([2, 2]), None) == 0.5  # row 2: top two are 0 and 1
    assert plugins.evaluators()["top2"].fn is top2.fn
