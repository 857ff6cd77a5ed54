"""Every heavy job runs on a superqt worker (QThreadPool). A task has a name; starting a task
with the same name makes the earlier one stale: its results are dropped, never shown over
newer ones (the napari histogram pattern). `wait()` blocks until no worker is left: the window
calls it on quit and the tests in teardown."""

from __future__ import annotations

import inspect
import os
import sys
import threading
import time
import traceback

from PySide6.QtCore import QObject, QThreadPool, Signal
from PySide6.QtWidgets import QApplication
from superqt.utils import create_worker


WORKER_NICE = 5  # how much less CPU a job's threads get than the window's when they compete for a core


def in_background() -> None:
    """This thread (a job's) at a lower CPU priority than the window's: on 2 cores a BERT-base
    run keeps three threads busy (two onnxruntime streams and the zip of the model), and the
    window's thread waited for a core 90-140 ms at a time. Linux sets it per thread; the threads
    and child processes the job starts inherit it. Idle, the machine runs the job as fast."""
    if sys.platform.startswith("linux") and hasattr(os, "setpriority"):
        try:
            now = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
            if now < WORKER_NICE:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICE)
        except OSError:
            pass


def _backgrounded(func):
    """func (a function or a generator function, as superqt tells them apart) run in_background()."""
    if inspect.isgeneratorfunction(func):
        def generator(*args, **kwargs):
            in_background()
            return (yield from func(*args, **kwargs))
        return generator

    def function(*args, **kwargs):
        in_background()
        return func(*args, **kwargs)
    return function


class Tasks(QObject):
    busy_changed = Signal(bool)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._serial = 0
        self._latest: dict[str, int] = {}
        self._active: dict[int, tuple[str, object, threading.Event]] = {}

    def start(self, name, func, *args, on_yield=None, on_return=None, on_error=None, on_finish=None, **kwargs):
        """Run func(*args, **kwargs) (a function or generator function) on a worker.
        `_cancel=` an Event the job checks; it is set on quit. Returns that event."""
        self._serial += 1
        token = self._serial
        self._latest[name] = token
        cancel = kwargs.pop("_cancel", None) or threading.Event()

        def fresh():
            return self._latest.get(name) == token

        # errors go to on_error (or are printed), never re-raised into the event loop
        worker = create_worker(_backgrounded(func), *args, _start_thread=False, _ignore_errors=True, **kwargs)
        if on_yield is not None and hasattr(worker, "yielded"):
            worker.yielded.connect(lambda v: fresh() and on_yield(v))
        if on_return is not None:
            worker.returned.connect(lambda v: fresh() and on_return(v))

        def errored(exc):
            if fresh() and on_error is not None:
                on_error(exc)
            elif on_error is None:
                traceback.print_exception(exc)

        worker.errored.connect(errored)

        def finished():
            self._active.pop(token, None)
            if on_finish is not None and fresh():
                on_finish()
            if not self._active:
                self.busy_changed.emit(False)

        worker.finished.connect(finished)
        self._active[token] = (name, worker, cancel)
        self.busy_changed.emit(True)
        worker.start()
        return cancel

    def drop(self, name: str) -> None:
        """Make the running task `name` stale (its results will not land)."""
        self._latest.pop(name, None)

    def running(self, name: str | None = None) -> bool:
        return any(n == name or name is None for n, _, _ in self._active.values())

    def wait(self, timeout: float = 60.0) -> bool:
        """Block until every worker finished and its signals were delivered."""
        for _, worker, cancel in list(self._active.values()):
            cancel.set()
            if hasattr(worker, "quit"):
                worker.quit()
        deadline = time.monotonic() + timeout
        QThreadPool.globalInstance().waitForDone(int(timeout * 1000))
        while self._active and time.monotonic() < deadline:
            QApplication.processEvents()
            time.sleep(0.005)
        return not self._active
