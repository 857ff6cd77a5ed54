"""Start-up and large models: `studio` paints its window (welcome page) before the views are
built; a large model's graph is drawn before its weight statistics, which follow from a worker."""

import pytest


@pytest.fixture
def settings_file(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_SETTINGS", str(tmp_path / "settings.ini"))
    monkeypatch.setenv("STUDIO_CACHE", str(tmp_path / "cache"))


def test_deferred_window_paints_first_then_builds_its_views(settings_file, qtbot):
    from studio.qt.app import create_app

    create_app()
    from studio.qt.main_window import MainWindow

    w = MainWindow(deferred=True)
    qtbot.addWidget(w)
    calls = []
    w.when_ready(lambda: calls.append(w.ready))
    assert not w.ready and not hasattr(w, "graph_view") and calls == []
    w.show()  # the first paint of the welcome page builds the rest
    qtbot.waitUntil(lambda: w.ready, timeout=30_000)
    assert calls == [True] and w.stack.count() == 2 and w.stack.currentIndex() == 0
    assert w.demo_button.isVisible() and set(w.docks) == {"recipe", "inspector", "distribution", "log"}
    w.when_ready(lambda: calls.append("now"))  # once ready: at once
    assert calls == [True, "now"]
    w.shutdown()
    hidden = MainWindow(deferred=True)  # never painted (started minimized): it builds all the same
    qtbot.addWidget(hidden)
    qtbot.waitUntil(lambda: hidden.ready, timeout=15_000)
    hidden.shutdown()


def test_large_model_graph_first_then_its_statistics(window, qtbot, monkeypatch):
    from studio.qt import main_window

    monkeypatch.setattr(main_window, "STATS_INLINE_PARAMS", 1000)  # the demo CNN (151k) counts as large
    w = window
    arrived = []
    w.session.stats_arrived.connect(lambda: arrived.append(len(w.session.current.stats)))
    w.open_demo("cnn")
    qtbot.waitUntil(lambda: w.session.model is not None, timeout=60_000)
    first = w.session.current
    assert first.graph is not None and "fc1" in w.graph_view.items  # drawn...
    w.session.select_layers(["fc1"])
    if first.stats_pending:  # ...before the statistics (unless the worker was quicker than this line)
        assert first.stats == [] and "computing weight statistics" in w.inspector.title.text()
    qtbot.waitUntil(lambda: not first.stats_pending, timeout=60_000)
    qtbot.waitUntil(lambda: "(128, 1024)" in w.inspector.title.text(), timeout=10_000)
    assert arrived == [4] and {s.name for s in first.stats} == {"conv1", "conv2", "fc1", "fc2"}
    assert len(w.distribution.param_bars.opts["height"]) == 4  # the distribution view followed


def test_after_the_warm_up_full_collections_skip_the_start_up_objects(settings_file, qtbot):
    """Once warm, what start-up made (torch, onnx, Qt: hundreds of thousands of objects) is
    frozen out of the collector's walks: a full collection on the GUI thread took ~0.5 s."""
    import gc
    import time

    from studio.qt.app import create_app

    create_app()
    from studio.qt.main_window import MainWindow

    gc.collect()  # the earlier tests' garbage is not frozen with this window
    w = MainWindow(warm_up=True)
    qtbot.addWidget(w)
    try:
        qtbot.waitUntil(lambda: not w.tasks.running(), timeout=60_000)
        frozen = gc.get_freeze_count()
        assert frozen > 100_000, frozen
        t = time.perf_counter()
        gc.collect(2)
        walk_frozen = time.perf_counter() - t
        gc.unfreeze()
        t = time.perf_counter()
        gc.collect(2)
        walk_all = time.perf_counter() - t
        assert walk_frozen < walk_all / 5, (walk_frozen, walk_all)
    finally:
        gc.unfreeze()  # the next tests' garbage collects as before
        w.shutdown()
