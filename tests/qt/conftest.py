import os

import pytest


@pytest.fixture
def window(qtbot, tmp_path, monkeypatch):
    """The real main window, with settings in a temp file; every worker is waited for at the end."""
    monkeypatch.setenv("STUDIO_SETTINGS", str(tmp_path / "settings.ini"))
    monkeypatch.setenv("STUDIO_CACHE", os.environ.get("STUDIO_CACHE", str(tmp_path / "cache")))
    from studio.qt.app import create_app

    create_app()
    from studio.qt.main_window import MainWindow

    w = MainWindow()
    w.jobs.latency_batches = (1, 8)  # small latency batches keep the tests quick
    qtbot.addWidget(w)
    w.show()
    yield w
    w.shutdown()
    assert not w.tasks.running(), "a worker was left running"
    from PySide6.QtCore import QThreadPool

    assert QThreadPool.globalInstance().activeThreadCount() == 0


@pytest.fixture
def demo(window, qtbot):
    window.open_demo("cnn")
    qtbot.waitUntil(lambda: window.session.model is not None, timeout=60_000)
    return window


@pytest.fixture
def tiny_model(tmp_path):
    """A small classifier as an ONNX file (64 features, 10 classes) for the Search tab's tests."""
    import onnx
    import torch
    from torch import nn

    from tests.core.onnx_models import export_module

    torch.manual_seed(0)
    path = tmp_path / "tiny.onnx"
    onnx.save(export_module(nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)).eval(), (1, 64)), str(path))
    return path
