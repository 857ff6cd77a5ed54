"""The studio installs like a Python application: the wheel `pip install .` builds carries the demo
weights and icons (package studio.resources, mapped onto resources/ in pyproject.toml), and the
code finds them from an installed copy, outside the repository. No network: the wheel is built
with the test environment's setuptools (--no-build-isolation, --no-index)."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESOURCES = ["studio/resources/__init__.py", "studio/resources/icons/studio.png", "studio/resources/icons/studio.svg"] + [
    f"studio/resources/zoo/{n}.safetensors" for n in ("cnn", "mlp", "resnet")]


def declared_packages():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]


def test_pyproject_lists_every_package_under_studio():
    # the list is explicit (studio.resources lives outside studio/): a new subpackage left out of
    # it would be missing from the wheel while every test in the checkout still passes
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "studio").rglob("__init__.py")}
    assert set(declared_packages()) == on_disk | {"studio.resources"}


def test_resources_beside_the_package_when_not_installed(tmp_path):
    # a checkout run without installing, and the PyInstaller bundle (resources/ at its root): no
    # package studio.resources, the folder beside studio/ is used. -S: no site-packages, so no
    # editable install of some checkout can answer instead
    shutil.copytree(ROOT / "studio", tmp_path / "studio", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "resources" / "zoo", tmp_path / "resources" / "zoo")
    code = "import sys; sys.path.insert(0, sys.argv[1]); import studio; print(studio.resource_dir())"
    out = subprocess.run([sys.executable, "-S", "-c", code, str(tmp_path)], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert Path(out) == tmp_path / "resources"


@pytest.mark.slow
def test_wheel_carries_resources_and_finds_them_installed(tmp_path):
    # build from a copy of what the wheel is made of, so the checkout gets no build/ folder
    src = tmp_path / "src"
    for name in ("studio", "resources"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    env = {**os.environ, "PIP_NO_INDEX": "1"}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, env=env, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("compression_studio-*.whl")

    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
        metadata = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
        zf.extractall(tmp_path / "site")
    assert set(RESOURCES) <= names
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "studio").rglob("*.py")}
    assert modules <= names, f"missing from the wheel: {sorted(modules - names)}"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "studio = studio.cli:main" in entry_points
    assert "License-Expression: MIT" in metadata

    # the installed copy, imported from a folder outside the repository: resources come from it
    site = tmp_path / "site"
    code = """
import sys
from pathlib import Path
import studio
from studio.core import zoo
from studio.qt import app
site = Path(sys.argv[1])
assert Path(studio.__file__).resolve().parent == site / "studio", studio.__file__
assert studio.resource_dir() == site / "studio" / "resources", studio.resource_dir()
assert app.ICON == site / "studio" / "resources" / "icons" / "studio.svg" and app.ICON.is_file()
m = zoo.load("cnn", train_if_missing=False)  # the shipped weights, no training
print(m.name, sum(p.numel() for p in m.obj.parameters()))
"""
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(site), STUDIO_CACHE=str(tmp_path / "cache"))
    run = subprocess.run([sys.executable, "-c", code, str(site)], cwd=work, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["demo-cnn", "151306"]
    assert not (tmp_path / "cache").exists()  # nothing was trained for want of weights


@pytest.mark.slow
def test_without_onnx2torch_a_pass_needing_torch_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    # onnx2torch is not a declared dependency (see pyproject.toml): an install without it must
    # tell the user in one line what to do, not crash
    from studio.cli import main

    onnx_file = tmp_path / "mlp.onnx"
    assert main(["export", "demo:mlp", "--format", "onnx", "--out", str(onnx_file), "-q"]) == 0
    recipe = tmp_path / "r.yaml"
    recipe.write_text("studio_recipe: 1\npasses:\n  - id: prune.structured\n    ratio: 0.5\n    fine_tune_epochs: 1\n")
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "onnx2torch", None)  # what `import onnx2torch` meets when it is not installed
    rc = main(["run", str(onnx_file), "--recipe", str(recipe), "--data", "digits", "--out", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert len(err.splitlines()) == 1 and 'pip install --no-deps "onnx2torch>=1.5,<2"' in err, err
