"""The folder of crafted hostile files (tests/hostile): each is refused with its one-line reason,
quickly, with nothing from it run; and the real CLI says the same in one line on stderr."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from studio.core import io
from studio.core.data import from_npz
from studio.core.errors import StudioError
from studio.core.recipe import Recipe
from tests.fuzz.seeds import ARCH
from tests.hostile.make_files import build, expected

EXPECTED = expected()
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile") / "files"
    marker = build(folder)
    return folder, marker


def open_as_the_studio_does(path: Path):
    if path.suffix == ".yaml":
        return Recipe.load(path)
    if path.suffix == ".npz":
        return from_npz(path)
    return io.load(path, arch=ARCH)


def test_the_table_lists_every_file(hostile):
    folder, _ = hostile
    made = {p.name for p in folder.iterdir() if not p.name.endswith(".data")}  # sidecars, opened via their model
    assert made == set(EXPECTED)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_file_is_refused_in_one_line(hostile, name):
    folder, marker = hostile
    start = time.perf_counter()
    with pytest.raises(StudioError) as err:
        open_as_the_studio_does(folder / name)
    message = str(err.value)
    assert "\n" not in message and "\r" not in message
    assert EXPECTED[name] in message
    assert message.startswith(" ".join(name.split())), "the refusal names the file"
    assert time.perf_counter() - start < 10, "refusing took too long"
    assert not marker.exists(), "a payload from the file ran"


@pytest.mark.parametrize("name", ["outside.onnx", "zip_bomb.pt", "pickled_module.pt", "lying_header.packed",
                                  "checksum.pth", "no_version.pt2", "short_record.pt", "new\nline.onnx"])
def test_the_cli_refuses_in_one_stderr_line(hostile, name):
    folder, marker = hostile
    result = subprocess.run([sys.executable, "-m", "studio", "inspect", str(folder / name)], cwd=REPO,
                            capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("studio: error: ") and EXPECTED[name] in lines[0], result.stderr
    assert not marker.exists()
