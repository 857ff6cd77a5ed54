"""Cheap checks of packaging/ (building the package takes minutes: `make package`, then
`dist/studio/studio selftest`): the spec parses and names files that exist, its trimming keeps
what the studio loads, the .desktop entry is complete, the launcher's self-test runs."""

import ast
import configparser
import fnmatch
import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGING = ROOT / "packaging"


def spec_tree():
    return ast.parse((PACKAGING / "studio.spec").read_text())


def test_spec_parses_and_names_existing_files():
    tree = spec_tree()
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert {"launch.py", "zoo", "icons", "studio.png"} <= strings
    assert (PACKAGING / "launch.py").is_file()
    assert (ROOT / "resources" / "icons" / "studio.png").is_file()
    assert (ROOT / "resources" / "icons" / "studio.svg").is_file()
    assert sorted(p.name for p in (ROOT / "resources" / "zoo").glob("*.safetensors")) == [
        "cnn.safetensors", "mlp.safetensors", "resnet.safetensors"]
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert {"Analysis", "PYZ", "EXE", "COLLECT"} <= calls


def spec_filter():
    """The spec's DROP / KEEP lists and dropped(), run on their own (no PyInstaller needed)."""
    tree = spec_tree()
    keep = [n for n in tree.body
            if isinstance(n, ast.Assign) and any(getattr(t, "id", "") in ("DROP", "KEEP") for t in n.targets)
            or isinstance(n, ast.FunctionDef) and n.name == "dropped"]
    namespace = {"fnmatch": fnmatch, "os": os}
    exec(compile(ast.Module(keep, []), "studio.spec", "exec"), namespace)  # noqa: S102 - our own file
    return namespace["dropped"]


@pytest.mark.parametrize("dest, gone", [
    ("torch/bin/torch_shm_manager", False),  # `import torch` refuses to start without it
    ("torch/bin/protoc", True),
    ("torch/test/atest", True),
    ("torch/lib/libtorch_cpu.so", False),
    ("torch/lib/libtorchbind_test.so", True),
    ("PySide6/Qt/lib/libQt6WebEngineCore.so.6", False),
    ("PySide6/Qt/translations/qtwebengine_locales/en-US.pak", False),  # QtWebEngine's fallback locale
    ("PySide6/Qt/translations/qtwebengine_locales/de.pak", True),
    ("PySide6/Qt/translations/qt_de.qm", True),
    ("PySide6/Qt/qml/QtQuick3D/qmldir", True),
    ("PySide6/Qt/resources/qtwebengine_resources.pak", False),
    ("PySide6/Qt/libexec/QtWebEngineProcess", False),
    ("resources/zoo/cnn.safetensors", False),
    ("netron/index.html", False),
])
def test_spec_trims_only_what_the_studio_never_loads(dest, gone):
    assert spec_filter()(dest) is gone


def test_desktop_entry():
    entry = configparser.ConfigParser(interpolation=None)
    entry.optionxform = str
    entry.read(PACKAGING / "studio.desktop")
    e = entry["Desktop Entry"]
    assert e["Type"] == "Application" and e["Name"] and e["Icon"] == "studio"
    assert e["Exec"].split()[0].endswith("/studio") and e["Exec"].split()[1] == "gui"
    assert e["Categories"].endswith(";")


def test_launcher_selftest_core_checks(capsys):
    spec = importlib.util.spec_from_file_location("studio_launch", PACKAGING / "launch.py")
    launch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch)
    assert launch.selftest(["--no-window"]) == 0
    out = capsys.readouterr().out
    assert out.count("ok  ") == 4 and "FAIL" not in out
