"""PySide6 6.12.0 on CPython 3.11 drops a reference to None on every void call and one to True
on every emit of a Python signal; enough calls abort the interpreter. Importing studio.qt must
make both harmless (studio/qt/compat.py)."""

import subprocess
import sys

CODE = """
import studio.qt
from PySide6.QtCore import QRectF
r = QRectF()
for _ in range(400_000):
    r.setWidth(1.0)
print("alive")
"""


def test_many_void_calls_do_not_abort():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-500:]
    assert out.stdout.strip() == "alive"


EMITS = """
import studio.qt
from PySide6.QtCore import QObject, Signal

class Busy(QObject):
    changed = Signal(bool)

b = Busy()
b.changed.connect(lambda busy: None)
for i in range(200_000):
    b.changed.emit(i % 2 == 0)
print("alive")
"""


def test_many_signal_emits_do_not_abort():
    """200,000 emits: without the guard the interpreter aborts with bool_dealloc (it did at the
    end of a test run, after every test had passed)."""
    out = subprocess.run([sys.executable, "-c", EMITS], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-500:]
    assert out.stdout.strip() == "alive"
