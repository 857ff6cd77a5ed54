"""Opening a big ONNX file in the real window never holds the GIL for long: the parse (one C call
that held it ~0.3 s for 200 MB on the worker thread) runs in the warm child process, and the
tensors are read from the file one at a time. A crash of that child is refused in one line."""

import os
import signal
import tempfile
import threading
import time

import pytest

from tests.core.test_onnx_child import chain


class GilMeter:
    """A thread that ticks every 2 ms. Of each gap between its ticks it keeps the part this
    process spent computing (min of the gap and the process's CPU time in it): a thread that
    held the GIL; time the OS gave to other processes on a shared machine is left out."""

    def __init__(self):
        self.longest = 0.0
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        wall, cpu = time.perf_counter(), time.process_time()
        while self.running:
            time.sleep(0.002)
            now, now_cpu = time.perf_counter(), time.process_time()
            self.longest = max(self.longest, min(now - wall, now_cpu - cpu) - 0.002)
            wall, cpu = now, now_cpu

    def stop(self) -> float:
        self.running = False
        self.thread.join()
        return self.longest


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.mark.slow
def test_a_200_mb_onnx_opens_without_holding_the_gil_long(window, qtbot, tmp_path, private_tmp):
    path = chain(tmp_path, layers=48, width=1024)  # 48 weights of 4 MB
    from studio.core.io.onnx_child import PARSER

    PARSER.start()
    holds = []
    for _ in range(2):  # the better of two: a shared machine can be busy in one
        generation = window.session.generation
        meter = GilMeter()
        window.open_path(str(path))
        qtbot.waitUntil(lambda g=generation: window.session.generation != g and not window.tasks.running(),
                        timeout=120_000)
        holds.append(meter.stop())
    assert window.session.model is not None and window.session.current.graph.total_parameters > 50_000_000
    # in-process, the parse alone held it ~110 ms here (BERT-base, 440 MB: 300+ ms); now the
    # longest hold is one tensor's copy into the model (~12 ms measured, on a loaded machine)
    assert min(holds) < 0.05, f"the GIL was held {min(holds) * 1000:.0f} ms in one piece"
    assert list(private_tmp.iterdir()) == [], "something was written in the temporary folder"


@pytest.mark.slow
def test_a_crashing_parse_is_refused_in_one_line_and_the_window_goes_on(window, qtbot, tmp_path, private_tmp):
    path = chain(tmp_path, layers=40, width=1024, constants=True)  # 160 MB the child parses and sends
    from studio.core.io.onnx_child import PARSER

    PARSER.start()
    child = PARSER.pid()
    window.open_path(str(path))
    qtbot.waitUntil(lambda: PARSER.lock.locked(), timeout=60_000)  # the child has the file
    os.kill(child, signal.SIGSEGV)
    qtbot.waitUntil(lambda: window.error_box is not None and window.error_box.isVisible(), timeout=60_000)
    assert window.error_box.text() == "chain.onnx: parsing it crashed onnx (SIGSEGV); refused"
    window.error_box.done(0)
    assert window.session.model is None and list(private_tmp.iterdir()) == []
    window.open_path(str(chain(tmp_path, name="small.onnx")))  # a new child opens the next file
    qtbot.waitUntil(lambda: window.session.model is not None and not window.tasks.running(), timeout=60_000)


@pytest.mark.slow
def test_statistics_stop_when_another_model_is_opened_and_resume_if_it_is_refused(window, qtbot, tmp_path):
    """A big model's weight statistics (seconds of copies that hold the GIL on a worker) stop when
    another file is opened; if that file is refused, they start again for the model still shown."""
    path = chain(tmp_path, layers=48, width=1024)  # 48 weights of 4 MB: statistics on a worker
    window.open_path(str(path))
    qtbot.waitUntil(lambda: window.session.model is not None
                    and window.tasks.running(f"stats {window.session.current.key}"), timeout=120_000)
    first, (cancel, stopped) = window.session.current, window._stats_running
    (tmp_path / "broken.onnx").write_bytes(b"\x08\x07not onnx at all")
    window.open_path(str(tmp_path / "broken.onnx"))
    assert cancel.is_set()
    # the load waits for the stopped statistics to let go (their copies and its reads held the
    # GIL back to back otherwise); the worker says so once it has returned
    qtbot.waitUntil(stopped.is_set, timeout=10_000)
    qtbot.waitUntil(lambda: window.error_box is not None and window.error_box.isVisible(), timeout=60_000)
    window.error_box.done(0)
    assert window.session.current is first and window._stats_running is not None  # started again
    assert window._stats_running[0] is not cancel
    qtbot.waitUntil(lambda: not first.stats_pending, timeout=120_000)
    assert {s.tensor for s in first.stats} >= {f"w{k}" for k in range(48)}
    assert "weight statistics failed" not in window.log_panel.text.toPlainText()  # the stopped run says nothing


def test_the_window_runs_a_big_models_outputs_in_a_child(qapp):
    """The window's application turns core.outputs_child on: a big model's quality runs, INT8
    references and comparisons go to a child process and leave the GIL to the window."""
    from studio.core import outputs_child
    from studio.qt.app import create_app

    assert create_app() is qapp and outputs_child.ENABLED
    assert outputs_child.wanted(outputs_child.CHILD_OVER + 1)
