"""The long jobs (recipe run, sensitivity analysis) against opening another model, what the
progress bars say during and after a job, and the menus' keyboard shortcuts: the real window,
real workers, real key presses."""

import onnx
import pytest
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QKeySequence
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

from studio.core.recipe import Recipe, RecipeStep
from studio.qt.views.log_panel import duration
from tests.qt.test_window import weights_digest


def drop_file(window, path) -> None:
    """What a drag from a file manager delivers: enter, then drop."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    enter = QDragEnterEvent(QPoint(50, 50), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)
    QApplication.sendEvent(window, enter)
    assert enter.isAccepted()
    QApplication.sendEvent(window, QDropEvent(QPointF(50, 50), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier))


def key(window, k, modifiers=Qt.NoModifier) -> None:
    QTest.keyClick(window, k, modifiers)


def idle_ui(w) -> bool:
    return (w.recipe_panel.run_button.isEnabled() and w.sensitivity_view.run_button.isEnabled()
            and w.actions_["run"].isEnabled() and w.actions_["sensitivity"].isEnabled()
            and not w.recipe_panel.cancel_button.isEnabled() and not w.sensitivity_view.cancel_button.isEnabled()
            and not w.actions_["cancel"].isEnabled())


def busy_ui(w) -> bool:
    return (not w.recipe_panel.run_button.isEnabled() and not w.sensitivity_view.run_button.isEnabled()
            and not w.actions_["run"].isEnabled() and not w.actions_["sensitivity"].isEnabled()
            and w.recipe_panel.cancel_button.isEnabled() and w.sensitivity_view.cancel_button.isEnabled()
            and w.actions_["cancel"].isEnabled())


@pytest.mark.parametrize("job", ["run", "sensitivity"])
def test_opening_during_a_job_is_refused_then_works_after_cancel(demo, qtbot, tmp_path, job):
    w = demo
    from studio.core import zoo
    from studio.core.convert import to_onnx_proto

    other = tmp_path / "other.onnx"
    onnx.save(to_onnx_proto(zoo.load("mlp")), str(other))
    obj = w.session.model.obj
    before = weights_digest(obj)
    assert w.log_panel.bar_texts() == ("stage: idle", "overall: idle")

    if job == "run":  # long enough to be interrupted: 200 epochs of fine-tuning
        w.session.set_recipe(Recipe([RecipeStep("prune.magnitude", {"sparsity": 0.9, "fine_tune_epochs": 200})]))
        key(w, Qt.Key_R, Qt.ControlModifier)
        qtbot.waitUntil(lambda: w.log_panel.status.text().startswith("step 2/"), timeout=60_000)
        what = "recipe run"
    else:  # 49 ratios per layer
        w.sensitivity_view.ratios.setText(", ".join(f"{x / 100:.2f}" for x in range(2, 99, 2)))
        key(w, Qt.Key_R, Qt.ControlModifier | Qt.ShiftModifier)
        assert w.tabs.currentWidget() is w.sensitivity_view
        qtbot.waitUntil(lambda: " at " in w.log_panel.status.text(), timeout=60_000)
        what = "sensitivity analysis"
    assert w.tasks.running("run") and busy_ui(w)
    # while it runs the overall bar says how long is left, once that means something
    qtbot.waitUntil(lambda: "left" in w.log_panel.bar_texts()[1], timeout=30_000)
    stage_text, overall_text = w.log_panel.bar_texts()
    assert overall_text.startswith("overall: ") and "% · about " in overall_text and " s left" in overall_text

    # every way of opening another model is refused with a message; the job goes on untouched
    attempts = [lambda: w.actions_["demo_mlp"].trigger(), lambda: drop_file(w, other),
                lambda: w.open_path(str(other)), lambda: w.open_demo("cnn")]
    for attempt in attempts:
        w.statusBar().clearMessage()
        attempt()
        message = w.statusBar().currentMessage()
        assert f"A {what} is in progress" in message and "cancel it (Esc)" in message
        assert not w.tasks.running("load")
    assert w.session.model.name == "demo-cnn" and w.session.model.obj is obj
    assert w.tasks.running("run") and busy_ui(w)
    assert "is in progress" in w.log_panel.text.toPlainText()

    key(w, Qt.Key_Escape)  # cancel from the keyboard
    qtbot.waitUntil(lambda: not w.tasks.running("run"), timeout=30_000)
    assert idle_ui(w)
    assert "cancelled" in w.log_panel.status.text()
    stage_text, overall_text = w.log_panel.bar_texts()
    assert stage_text.startswith("stage: cancelled at ") and overall_text.startswith("overall: cancelled at ")
    assert " after " in overall_text and "left" not in overall_text
    assert w.session.runs == [] and w.session.sensitivity is None
    assert weights_digest(obj) == before

    # now the drop opens it, the bars go back to idle, and a run on it works to the end
    drop_file(w, other)
    qtbot.waitUntil(lambda: w.session.model.name == "other", timeout=30_000)
    assert w.log_panel.bar_texts() == ("stage: idle", "overall: idle")
    w.session.set_recipe(Recipe([RecipeStep("quantize.fp16", {})]))
    w.actions_["run"].trigger()
    try:
        qtbot.waitUntil(lambda: len(w.session.runs) == 1, timeout=60_000)
    except Exception:  # noqa: BLE001 - pytest-qt's TimeoutError: fail with what the window said
        pytest.fail(f"the run after the cancel did not land in 60 s; running {w.tasks.running()}; "
                    f"error {w.recipe_panel.error.text()!r}; log:\n{w.log_panel.text.toPlainText()[-3000:]}")
    qtbot.waitUntil(lambda: not w.tasks.running("run"), timeout=10_000)
    assert idle_ui(w)
    stage_text, overall_text = w.log_panel.bar_texts()
    assert stage_text == "stage: done" and overall_text.startswith("overall: done in ") and overall_text.endswith(" s")
    assert w.log_panel.stage_bar.value() == w.log_panel.overall_bar.value() == 100


def test_run_waits_while_a_model_is_being_opened(demo, qtbot):
    w = demo
    w.session.set_recipe(Recipe([RecipeStep("quantize.fp16", {})]))
    w.open_demo("mlp")
    assert w.tasks.running("load")
    w.actions_["run"].trigger()
    w.sensitivity_view.run_button.click()
    assert not w.tasks.running("run")
    assert "being opened" in w.recipe_panel.error.text() and "being opened" in w.sensitivity_view.error.text()
    qtbot.waitUntil(lambda: w.session.model.name == "demo-mlp", timeout=30_000)
    assert idle_ui(w)
    w.actions_["run"].trigger()
    qtbot.waitUntil(lambda: len(w.session.runs) == 1, timeout=60_000)
    assert w.recipe_panel.error.text() == ""


def test_a_failed_run_says_failed(demo, qtbot, tmp_path):
    w = demo
    w.session.set_recipe(Recipe([RecipeStep("quantize.fp16", {})]))
    w.session.set_data_spec(str(tmp_path / "missing.npz"))
    w.jobs.run_recipe()
    qtbot.waitUntil(lambda: not w.tasks.running("run"), timeout=30_000)
    assert "failed" in w.log_panel.status.text() and w.recipe_panel.error.text()
    stage_text, overall_text = w.log_panel.bar_texts()
    assert stage_text.startswith("stage: failed at ") and overall_text.startswith("overall: failed at ")
    assert idle_ui(w) and w.session.runs == []


def test_menus_list_every_command_with_its_shortcut(window):
    w = window
    expected = {
        "open": QKeySequence(QKeySequence.Open), "export": QKeySequence("Ctrl+E"),
        "report": QKeySequence("Ctrl+Shift+S"), "quit": QKeySequence(QKeySequence.Quit),
        "load_recipe": QKeySequence("Ctrl+L"), "save_recipe": QKeySequence(QKeySequence.Save),
        "run": QKeySequence("Ctrl+R"), "cancel": QKeySequence("Esc"),
        "sensitivity": QKeySequence("Ctrl+Shift+R"), "fit": QKeySequence("Ctrl+0"),
        "zoom_in": QKeySequence("Ctrl+="), "zoom_out": QKeySequence("Ctrl+-"),
        "find": QKeySequence(QKeySequence.Find), "original": QKeySequence("Ctrl+Home"),
        "tab_graph": QKeySequence("Ctrl+1"), "tab_trade-off": QKeySequence("Ctrl+2"),
        "tab_results": QKeySequence("Ctrl+3"), "tab_compare": QKeySequence("Ctrl+4"),
        "tab_sensitivity": QKeySequence("Ctrl+5"), "tab_netron": QKeySequence("Ctrl+6"),
    }
    for name, sequence in expected.items():
        assert w.actions_[name].shortcut() == sequence, name
    assert "exclude" in w.actions_ and all(f"demo_{n}" in w.actions_ for n in ("cnn", "mlp", "resnet"))

    # every action is in a menu, and no shortcut is taken twice or is the start of another
    # (an earlier "Ctrl+O, O" for the original model could never be typed: Ctrl+O opened a file)
    def walk(menu):
        for a in menu.actions():
            if a.menu():
                yield from walk(a.menu())
            elif not a.isSeparator():
                yield a

    in_menus = [a for m in w.menuBar().actions() for a in walk(m.menu())]
    assert set(w.actions_.values()) <= set(in_menus)
    keys = [a.shortcut() for a in in_menus if not a.shortcut().isEmpty()]
    assert len({k.toString() for k in keys}) == len(keys)
    for a in keys:
        for b in keys:
            if a != b:
                assert a.matches(b) != QKeySequence.PartialMatch and b.matches(a) != QKeySequence.PartialMatch, \
                    (a.toString(), b.toString())
    # the buttons name the shortcuts of their commands
    assert "Ctrl+R" in w.recipe_panel.run_button.text() and "Esc" in w.recipe_panel.cancel_button.text()
    assert "Ctrl+Shift+R" in w.sensitivity_view.run_button.toolTip()  # button text kept short for a laptop
    assert not w.actions_["cancel"].isEnabled()  # Esc is free for the widgets while nothing runs


def test_view_shortcuts_switch_tabs_and_show_the_original(demo, qtbot):
    w = demo
    w.session.set_recipe(Recipe([RecipeStep("quantize.fp16", {})]))
    key(w, Qt.Key_R, Qt.ControlModifier)
    qtbot.waitUntil(lambda: len(w.session.runs) == 1 and not w.tasks.running(), timeout=60_000)
    qtbot.waitUntil(lambda: w.tabs.currentWidget() is w.chart, timeout=5000)
    key(w, Qt.Key_3, Qt.ControlModifier)
    assert w.tabs.currentWidget() is w.results
    key(w, Qt.Key_1, Qt.ControlModifier)
    assert w.tabs.currentWidget() is w.graph_view
    w.show_stage(w.session.runs[0].id, 1)
    qtbot.waitUntil(lambda: w.session.current.index == 1, timeout=30_000)
    key(w, Qt.Key_Home, Qt.ControlModifier)
    assert w.session.current is w.session.original


def test_duration():
    assert [duration(s) for s in (0.4, 8, 59.6, 125, 3780)] == ["0 s", "8 s", "1 min 00 s", "2 min 05 s",
                                                                 "1 h 03 min"]


@pytest.mark.skipif(not hasattr(__import__("os"), "getpriority"), reason="per-thread priority is a POSIX call")
def test_a_job_runs_below_the_window_s_priority(qtbot):
    """A job's thread (a function or a generator) and a thread it starts run at a lower CPU
    priority than the window's, which keeps its own: on 2 cores a BERT-base run's three busy
    threads kept the window's thread off a core 90-140 ms at a time."""
    import os
    import threading

    from studio.qt.workers import WORKER_NICE, Tasks

    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def started_thread() -> int:
        got: list[int] = []
        t = threading.Thread(target=lambda: got.append(nice()))
        t.start()
        t.join()
        return got[0]

    def steps():
        yield nice()
        return started_thread()

    window_nice = nice()
    tasks = Tasks()
    seen: dict = {}
    tasks.start("plain", nice, on_return=lambda v: seen.setdefault("plain", v))
    tasks.start("generator", steps, on_yield=lambda v: seen.setdefault("yielded", v),
                on_return=lambda v: seen.setdefault("started", v))
    qtbot.waitUntil(lambda: len(seen) == 3, timeout=10_000)
    assert tasks.wait(10)
    expected = max(WORKER_NICE, window_nice)
    assert seen == {"plain": expected, "yielded": expected, "started": expected}
    assert nice() == window_nice
