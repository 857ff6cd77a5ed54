"""Weight histograms after pruning: "Hide zeros" takes the zero spike out, "Log counts" puts the
counts on a log axis; both change what is plotted, and both are remembered in the settings."""

import numpy as np

from studio.core import zoo
from studio.core.passes import Context, create
from studio.core.stats import zero_bin
from studio.core.training import drain


def test_toggles_change_the_plotted_histogram_of_a_pruned_layer(window, qtbot):
    from studio.qt.main_window import MainWindow, prepare_variant

    w = window
    pruned = drain(create("prune.magnitude", sparsity=0.9).apply(zoo.load("cnn"), Context())).model
    w.session.set_model(prepare_variant(pruned))
    w.session.select_layers(["fc1"])
    s = w.inspector.shown_stats
    assert s is not None and s.name == "fc1" and s.sparsity > 0.85
    b = zero_bin(s.hist_edges)
    assert s.hist_zeros == s.numel - s.nonzeros  # 131k weights: all in the sample, zeros counted exactly

    def plotted(curve):
        x, y = curve.getData()
        return np.asarray(x), np.asarray(y)

    _, plain = plotted(w.inspector.hist_curve)
    assert plain[b] == s.hist_counts[b] and plain[b] >= 0.85 * s.numel  # the spike flattens the rest
    others = np.delete(plain, b)
    assert plain[b] > 50 * others.max()

    w.inspector.toggles.hide_zeros.click()
    _, hidden = plotted(w.inspector.hist_curve)
    assert hidden[b] == s.hist_counts[b] - s.hist_zeros  # the zero spike is gone...
    assert np.array_equal(np.delete(hidden, b), others)  # ...and nothing else moved
    assert hidden.sum() == s.nonzeros
    # Compare draws the same layer with the same toggles (one pair for the window)
    assert w.compare.toggles.hide_zeros.isChecked()
    _, after = plotted(w.compare.after_curve)
    assert np.array_equal(after, hidden)

    w.inspector.toggles.log_counts.click()
    _, logged = plotted(w.inspector.hist_curve)
    nonempty = hidden > 0
    assert np.allclose(logged[nonempty], np.log10(hidden[nonempty]))
    assert (logged[~nonempty] < 0).all()  # empty bins sit below a count of 1
    assert w.inspector.hist.getAxis("left").logMode

    # remembered: a new window starts with both on
    w.settings.sync()
    again = MainWindow()
    qtbot.addWidget(again)
    assert again.histogram_options.hide_zeros and again.histogram_options.log_counts
    assert again.inspector.toggles.log_counts.isChecked() and again.compare.toggles.hide_zeros.isChecked()
    again.shutdown()

    w.inspector.toggles.hide_zeros.click()  # off again: the spike is back
    _, back = plotted(w.inspector.hist_curve)
    assert np.isclose(back[b], np.log10(s.hist_counts[b]))
