"""PySide6 6.12.0 on CPython 3.11 drops a reference to None on every void call; enough calls
abort the interpreter. Importing studio.qt must make that harmless (studio/qt/compat.py)."""

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
