import faulthandler
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Qt must never look for a screen in the tests; set before anything imports Qt.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("QTWEBENGINE_CHROMIUM_FLAGS", "--no-sandbox")


# ------------------------------------------------------------------ every test
@pytest.fixture(autouse=True)
def _hang_watchdog(request):
    """End this worker if a test hangs where pytest-timeout cannot reach it.

    pytest-timeout's thread method needs the GIL to act; a test stuck in C++ holding it (a Qt
    deadlock hung a CI run for its whole 90 minutes) never lets it. faulthandler's watchdog is
    a C thread: it prints every thread's stack and exits, xdist reports the worker lost and
    the run goes on. It fires two minutes after the test's own timeout would have."""
    marker = request.node.get_closest_marker("timeout")
    limit = float(marker.args[0]) if marker and marker.args else float(request.config.getini("timeout") or 300)
    faulthandler.dump_traceback_later(limit + 120, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(autouse=True)
def _qt_garbage_on_main_thread():
    """Once a test made a QApplication, cyclic garbage is collected on this (the GUI) thread only,
    as the window does (studio/qt/compat.py says why); after each test, what is due."""
    yield
    qt = sys.modules.get("PySide6.QtWidgets")
    if qt is not None and qt.QApplication.instance() is not None:
        from studio.qt.compat import collect_due_garbage, collect_garbage_on_gui_thread

        collect_garbage_on_gui_thread()
        collect_due_garbage()


# ------------------------------------------------------------------ the example plugin package
PLUGIN_SOURCE = Path(__file__).parent / "plugin_example"

BROKEN_ENTRY_POINTS = """\
[studio.passes]
broken = studio_plugin_broken_does_not_exist:Pass
taken = studio_plugin_broken:Impostor

[studio.evaluators]
nothing = studio_plugin_example.metrics:no_such_metric
"""


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    """A folder holding tests/plugin_example installed by pip (a real wheel build and install,
    entry points and all), and a broken plugin: its dist-info names a module that does not
    exist, a pass whose id is a built-in's and an evaluator that is not there. Put it on sys.path / PYTHONPATH to use them."""
    work = tmp_path_factory.mktemp("plugin")
    source = shutil.copytree(PLUGIN_SOURCE, work / "src")  # pip builds in the source folder: not in the repo
    site = work / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(source)], check=True, timeout=300)
    broken = site / "studio_plugin_broken-0.1.dist-info"
    broken.mkdir()
    (broken / "METADATA").write_text("Metadata-Version: 2.1\nName: studio-plugin-broken\nVersion: 0.1\n")
    (broken / "entry_points.txt").write_text(BROKEN_ENTRY_POINTS)
    (site / "studio_plugin_broken.py").write_text(
        "from studio.core.passes import Pass\n\n\nclass Impostor(Pass):\n    id = 'prune.magnitude'\n")
    return site
