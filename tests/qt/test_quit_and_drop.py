"""Quitting never looks hung; a model dropped anywhere on the window opens."""

import time

import onnx
import torch
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication, QMessageBox


def test_quit_hides_at_once_and_leaves_within_its_budget(window, qtbot):
    w = window
    left = []
    w.leave_now = lambda: left.append(time.monotonic())
    w.quit_budget_s = 0.5
    w.tasks.start("stuck", time.sleep, 3)  # like one long onnxruntime call: no cancel point
    start = time.monotonic()
    w.close()
    assert not w.isVisible()
    assert left and left[0] - start < 1.5  # the process would leave here, not after 3 s


def test_quit_with_nothing_running_waits_for_nothing(window):
    window.quit_budget_s = 0.5
    window.leave_now = lambda: (_ for _ in ()).throw(AssertionError("left with no worker running"))
    window.close()
    assert not window.isVisible()


def test_a_file_dropped_on_the_graph_opens(demo, qtbot, tmp_path):
    w = demo
    path = tmp_path / "dropped.onnx"
    torch.onnx.export(torch.nn.Sequential(torch.nn.Linear(6, 3)), (torch.randn(1, 6),), str(path), dynamo=False)
    onnx.checker.check_model(onnx.load(str(path)))
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    target = w.graph_view.canvas.viewport()
    enter = QDragEnterEvent(target.rect().center(), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)
    QApplication.sendEvent(target, enter)  # as a real drag does: enter, then drop
    assert enter.isAccepted()
    event = QDropEvent(QPointF(target.rect().center()), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)
    QApplication.sendEvent(target, event)
    qtbot.waitUntil(lambda: w.session.model is not None and w.session.model.name == "dropped", timeout=60_000)


def test_help_lists_the_shortcuts_and_the_versions(window):
    import onnxruntime
    import torch as t

    from studio.qt.main_window import about_text

    menus = [a.text() for a in window.menuBar().actions()]
    assert "&Help" in menus
    text = window.shortcuts_text()
    for name, key in (("Run", "Ctrl+R"), ("Open…", "Ctrl+O"), ("Export selected variant…", "Ctrl+E")):
        assert f"<td>{name}</td><td>&nbsp;&nbsp;<b>{key}</b>" in text
    about = about_text()
    assert t.__version__ in about and onnxruntime.__version__ in about and "not installed" not in about.split("onnx2torch")[0]
    window.actions_["about"].trigger()  # opens without blocking the event loop
    (box,) = [b for b in window.findChildren(QMessageBox) if b.isVisible()]
    assert "Compression Studio" in box.text()
    box.close()
