import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Qt must never look for a screen in the tests; set before anything imports Qt.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("QTWEBENGINE_CHROMIUM_FLAGS", "--no-sandbox")


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
