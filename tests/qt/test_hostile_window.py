"""Hostile files opened in the real window: each gets its one-line refusal in a message box (no
traceback), nothing from it runs, and the window stays alive and usable afterwards."""

import time

import pytest

from tests.hostile.make_files import build, expected

EXPECTED = expected()
MODELS = ["outside.onnx", "symlink.onnx", "lying_tensor.onnx", "zip_bomb.pt", "checksum.pth", "from_file.pt",
          "short_record.pt", "lying_header.safetensors", "lying_header.packed", "pickled_weight.pt2",
          "new\nline.onnx", "empty.onnx"]
RECIPES = ["deep.yaml", "billion_laughs.yaml", "not_utf8.yaml"]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile") / "files"
    return folder, build(folder)


def refusal(window, qtbot, shown_before):
    qtbot.waitUntil(lambda: window.error_box is not None and window.error_box is not shown_before
                    and window.error_box.isVisible(), timeout=60_000)
    box = window.error_box
    text, details = box.text(), box.detailedText()
    box.done(0)
    return text, details


@pytest.mark.slow
def test_hostile_files_are_refused_and_the_window_survives(window, qtbot, hostile):
    folder, marker = hostile
    for name in MODELS:
        before = window.error_box
        window.open_path(str(folder / name))
        text, details = refusal(window, qtbot, before)
        assert "\n" not in text and EXPECTED[name] in text, (name, text)
        assert "Traceback" not in details, (name, details)
        assert window.isVisible() and window.session.model is None and window.stack.currentIndex() == 0
    for name in RECIPES:  # recipes are read on the window's own thread: a slow parse would freeze it
        before = window.error_box
        start = time.perf_counter()
        window.load_recipe(str(folder / name))
        assert time.perf_counter() - start < 5, f"{name} held the window for too long"
        text, _ = refusal(window, qtbot, before)
        assert "\n" not in text and EXPECTED[name] in text, (name, text)
    # a pickled module asks for trust; declining opens nothing and runs nothing
    window.open_path(str(folder / "pickled_module.pt"))
    qtbot.waitUntil(lambda: window.trust_box is not None and window.trust_box.isVisible(), timeout=60_000)
    window.trust_box.button(window.trust_box.StandardButton.No).click()
    assert window.session.model is None and not marker.exists()
    # still a working window: the demo opens
    window.open_demo("cnn")
    qtbot.waitUntil(lambda: window.session.model is not None, timeout=60_000)
    assert window.stack.currentIndex() == 1
