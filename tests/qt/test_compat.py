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


GC_THREAD = """
import sys, threading, weakref
from PySide6.QtCore import QCoreApplication, QElapsedTimer
from PySide6.QtWidgets import QApplication, QMenu, QWidget
from studio.qt.app import create_app

app = create_app(plots=False) if sys.argv[1] == "studio" else QApplication([])
finalised_on = []

class Cycle:
    def __init__(self):
        self.widget = QWidget()
        QMenu(self.widget).addAction("Open")
        self.me = self  # only the cyclic collector can free this
        weakref.finalize(self, lambda: finalised_on.append(threading.current_thread().name))

Cycle()

def churn():  # a job allocating hard, as torch and onnx do
    for _ in range(200):
        junk = [[{}] for _ in range(5_000)]
        junk.append(junk)

worker = threading.Thread(target=churn, name="job")
worker.start(); worker.join()
clock = QElapsedTimer(); clock.start()
while not finalised_on and clock.elapsed() < 5_000:
    app.processEvents()
print(finalised_on)
"""


def test_cyclic_garbage_holding_widgets_is_collected_on_the_gui_thread():
    """A Qt object freed by the collector on a worker thread has its destructor run later on the
    main thread at an arbitrary point; that deadlocked CI. The window collects on its own thread."""
    def run(mode):
        out = subprocess.run([sys.executable, "-c", GC_THREAD, mode], capture_output=True, text=True,
                             timeout=120, env={**__import__("os").environ, "QT_QPA_PLATFORM": "offscreen"})
        assert out.returncode == 0, out.stderr[-800:]
        return out.stdout.strip()

    assert run("plain") == "['job']"  # Python's default: the job's thread frees the window
    assert run("studio") == "['MainThread']"
