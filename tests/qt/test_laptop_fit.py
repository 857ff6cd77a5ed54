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


def _options_fit(w, qtbot):
    """Every INT8 static option's label and field lie inside the options scroll area's viewport
    (nothing clipped on the right), and the area has no horizontal scroll bar to reach them."""
    from PySide6.QtCore import QPoint
    from PySide6.QtWidgets import QScrollArea

    panel = w.recipe_panel
    scroll = panel.form.parentWidget().parentWidget()
    assert isinstance(scroll, QScrollArea)
    viewport = scroll.viewport()
    fields = [f for _kind, f in panel.form.editors.values()]
    qtbot.waitUntil(lambda: all(f.isVisible() for f in fields) and panel.form.width() <= viewport.width())
    assert scroll.horizontalScrollBar().maximum() == 0
    assert not scroll.horizontalScrollBar().isVisible()
    assert len(panel.form.editors) >= 10
    for name, (_kind, field) in panel.form.editors.items():
        label = panel.form.form.labelForField(field)
        for widget in (label, field):
            left = widget.mapTo(viewport, QPoint(0, 0)).x()
            assert widget.isVisible() and 0 <= left and left + widget.width() <= viewport.width(), (name, widget)
            assert widget.width() >= min(widget.sizeHint().width(), 60), (name, widget)  # not squeezed
        assert label.width() >= label.sizeHint().width(), name  # the whole title shows


def test_int8_options_fit_at_1280x800(demo, qtbot):
    w = demo
    w.resize(1280, 800)
    w.recipe_panel.add_pass("quantize.int8_static")
    _options_fit(w, qtbot)
    assert w.recipe_panel.description.toolTip().endswith(w.recipe_panel.passes["quantize.int8_static"].description)


def test_int8_options_wrap_when_narrow(demo, qtbot):
    """Narrower than a label beside its field (a large font, a narrow dock): the labels go above
    the fields instead of a horizontal scroll bar."""
    w = demo
    w.resize(1280, 800)
    w.recipe_panel.form_box.setMaximumWidth(220)
    w.recipe_panel.add_pass("quantize.int8_static")
    _options_fit(w, qtbot)
