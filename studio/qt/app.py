"""`studio` / `studio gui [MODEL]`: start the window."""

from __future__ import annotations

import os
import sys

from .. import resource_dir

ICON = resource_dir() / "icons" / "studio.svg"


def _webengine_env() -> None:
    # QtWebEngine's Chromium refuses to start as root unless its sandbox is off; must be set
    # before the first QtWebEngine import (the Netron tab imports it lazily).
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        flags = os.environ.get("QTWEBENGINE_CHROMIUM_FLAGS", "")
        if "--no-sandbox" not in flags:
            os.environ["QTWEBENGINE_CHROMIUM_FLAGS"] = (flags + " --no-sandbox").strip()


def create_app(argv=None, plots: bool = True):
    """The QApplication; plots=False leaves pyqtgraph unimported (the window imports it with its
    views, after its first paint)."""
    _webengine_env()
    from PySide6.QtCore import QCoreApplication, Qt
    from PySide6.QtGui import QIcon
    from PySide6.QtWidgets import QApplication

    # QtWebEngine (the Netron tab, imported on its first visit) needs shared OpenGL contexts set
    # before the QApplication exists; importing it here cost ~0.1 s of every start
    QCoreApplication.setAttribute(Qt.AA_ShareOpenGLContexts)
    app = QApplication.instance() or QApplication(list(argv or sys.argv[:1]))
    app.setApplicationName("Compression Studio")
    app.setOrganizationName("compression-studio")
    app.setDesktopFileName("studio")
    if ICON.is_file():
        app.setWindowIcon(QIcon(str(ICON)))
    from .compat import collect_garbage_on_gui_thread

    collect_garbage_on_gui_thread()  # never on a worker thread: see compat.py
    from studio.core import outputs_child

    outputs_child.ENABLED = True  # a big model's runs in a child process: the GIL stays the window's
    if plots:
        _plots_follow_palette(app)
    return app


def _plots_follow_palette(app) -> None:
    """pyqtgraph draws black plots by default; use the system palette (light or dark) instead."""
    import pyqtgraph as pg
    from PySide6.QtGui import QPalette

    pal = app.palette()
    pg.setConfigOptions(background=pal.color(QPalette.Base), foreground=pal.color(QPalette.Text), antialias=True)


def main(argv: list[str] | None = None) -> int:
    """Open the window; with a path, open that model. On a first start, open the demo."""
    argv = list(sys.argv[1:] if argv is None else argv)
    app = create_app([sys.argv[0]], plots=False)
    from .main_window import MainWindow

    # painted first (title, welcome page), the views built right after: the window is on
    # screen within a second, not after every plotting and model library has loaded
    window = MainWindow(warm_up=True, deferred=True)
    window.show()
    if argv:
        window.when_ready(lambda: window.open_path(argv[0]))
    elif not window.settings.value("started", False, type=bool):
        window.when_ready(lambda: window.open_demo("cnn"))  # a first start shows something to work on
    window.settings.setValue("started", True)
    window.quit_budget_s = 1.5
    code = app.exec()
    # Python's own teardown of torch, onnxruntime and Qt takes seconds and saves nothing: the
    # settings are synced and the workers stopped. Run the exit handlers (temporary folders), go.
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    raise SystemExit(main())
