"""A guard against a PySide6 bug seen with PySide6 6.12.0 on CPython 3.11: every call of a
method returning void (QPainter.setPen, QWidget.setEnabled, ...) drops one reference to None.
On Python < 3.12 None is not immortal, so after some ten thousand calls the interpreter
aborts with "Fatal Python error: none_dealloc" (a 3000-node graph repaint is enough).

If (and only if) the bug is detected, None gets a very large reference count: what CPython
3.12+ does for every immortal object. The real fix is a PySide6 without the bug or Python
>= 3.12; this keeps the window alive until then."""

from __future__ import annotations

import ctypes
import sys

_applied = False


def void_calls_leak_none() -> bool:
    from PySide6.QtCore import QRectF

    r = QRectF()
    before = sys.getrefcount(None)
    for _ in range(64):
        r.setWidth(1.0)
    return sys.getrefcount(None) < before - 32


def guard_none_refcount() -> bool:
    """Returns True when the guard was needed (and applied)."""
    global _applied
    if _applied or sys.version_info >= (3, 12) or sys.implementation.name != "cpython":
        return _applied
    if void_calls_leak_none():
        ctypes.c_ssize_t.from_address(id(None)).value += 1 << 40
        _applied = True
    return _applied
