"""A guard against two PySide6 bugs seen with PySide6 6.12.0 on CPython 3.11:
- every call of a method returning void (QPainter.setPen, QWidget.setEnabled, ...) drops one
  reference to None;
- every emit() of a signal declared in Python (ours and pyqtgraph's, whatever its argument
  types) drops one reference to True, the value emit() returns.
On Python < 3.12 None and True are not immortal, so after some ten thousand calls the
interpreter aborts with "Fatal Python error: none_dealloc" / "bool_dealloc" (a 3000-node graph
repaint is enough for None; a few hundred jobs for True, or the end of a test run).
PySide6 6.11.3 has neither bug; 6.12.0 is what pip picks today.

If (and only if) a bug is detected, its object gets a very large reference count: what CPython
3.12+ does for every immortal object. The real fix is a PySide6 without the bugs or Python
>= 3.12; this keeps the window alive until then.

And one PySide6 hazard on every version: cyclic garbage holding a Qt object must be collected
on the GUI thread (`collect_garbage_on_gui_thread`); what lives from start-up to the end is
taken out of the collector's walks once the window is warm (`freeze_start_up`)."""

from __future__ import annotations

import ctypes
import gc
import sys

_applied = False


def void_calls_leak_none() -> bool:
    from PySide6.QtCore import QRectF

    r = QRectF()
    before = sys.getrefcount(None)
    for _ in range(64):
        r.setWidth(1.0)
    return sys.getrefcount(None) < before - 32


def emits_leak_true() -> bool:
    from PySide6.QtCore import QObject, Signal

    class Probe(QObject):
        ping = Signal(int)

    p = Probe()
    before = sys.getrefcount(True)
    for _ in range(64):
        p.ping.emit(1)
    return sys.getrefcount(True) < before - 32


def _make_immortal(obj) -> None:
    ctypes.c_ssize_t.from_address(id(obj)).value += 1 << 40


def guard_none_refcount() -> bool:
    """Returns True when a guard was needed (and applied)."""
    global _applied
    if _applied or sys.version_info >= (3, 12) or sys.implementation.name != "cpython":
        return _applied
    if void_calls_leak_none():
        _make_immortal(None)
        _applied = True
    if emits_leak_true():
        _make_immortal(True)
        _applied = True
    return _applied


_collector = None
_THRESHOLD = gc.get_threshold()


def collect_due_garbage() -> None:
    """Collect the oldest generation that is due, as the automatic collector would."""
    count = gc.get_count()
    for generation in (2, 1, 0):
        if all(count[g] > _THRESHOLD[g] for g in range(generation + 1)):
            gc.collect(generation)
            return


def collect_garbage_on_gui_thread(interval_ms: int = 1000) -> None:
    """Turn Python's automatic cyclic collection off and collect on a GUI-thread timer instead.

    Why: the collector runs on whichever thread crosses its allocation threshold, and our jobs
    allocate hard on worker threads. When it frees a cycle holding Qt objects there (a closed
    dialog, a dropped window), Shiboken queues their C++ destructors for the main thread and
    runs them at an arbitrary bytecode boundary there. In the test suite that deadlocked a
    QMenu's destructor on a Qt mutex (seen with gdb) and hung CI; others report crashes.
    pyqtgraph ships the same remedy (pyqtgraph.util.garbage_collector); this copy avoids importing
    pyqtgraph before the window's first paint. Same thresholds, so the same amount of work."""
    global _collector
    if _collector is not None:
        return
    from PySide6.QtCore import QCoreApplication, QTimer

    timer = QTimer(QCoreApplication.instance())
    timer.setObjectName("studio-gc")
    timer.timeout.connect(collect_due_garbage)
    timer.start(interval_ms)
    gc.disable()
    _collector = timer


def freeze_start_up() -> None:
    """Move every object alive now (after start-up and the warm-up: the modules, classes and
    functions of torch, onnx, onnxruntime, Qt and the studio, ~460k objects) to the collector's
    permanent generation (gc.freeze). A full collection walked them all each time generation 2
    was due: 0.5 s on the GUI thread, measured while opening a BERT-base ONNX. Later full
    collections walk only what was made since. Cycles among the frozen objects are never
    collected: these live until the process ends anyway. The young generations are collected
    first, so little of the start-up's short-lived garbage is frozen with them."""
    gc.collect(1)
    gc.freeze()
