"""The window fits a laptop: 1280x800, 1366x768, and 2x scaling on 2560x1600 (1280x800 logical)."""

import pytest

LAPTOP = (1280, 768)  # the narrowest width and the lowest height of the screens above (less a panel)


def test_the_demo_window_fits_a_laptop_screen(demo, qtbot):
    w = demo
    w.graph_view.info.setText("a very long model name " * 20)  # data-driven labels elide, never widen
    w.recipe_panel.data_label.setText("/a/deeply/nested/folder/of/evaluation/images/" * 10)
    w.log_panel.status.setText("measuring the original model " * 20)
    w.status.setText("a status line that goes on " * 20)
    for key in ("prune.magnitude", "cluster.kmeans", "quantize.int8_static"):
        w.recipe_panel.add_pass(key)  # each pass draws its option form
    hint = w.minimumSizeHint()
    assert hint.width() <= LAPTOP[0] and hint.height() <= LAPTOP[1], hint


@pytest.mark.parametrize("tab", range(6))
def test_every_tab_fits(demo, tab):
    demo.tabs.setCurrentIndex(tab)
    assert demo.minimumSizeHint().width() <= LAPTOP[0]


def test_working_does_not_cover_the_status_text(demo, qtbot):
    w = demo
    w.tasks.busy_changed.emit(True)
    assert w.working.isVisible() and w.status.isVisible()
    w.tasks.busy_changed.emit(False)
    assert not w.working.isVisible()
