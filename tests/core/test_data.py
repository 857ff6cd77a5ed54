import numpy as np
import pytest
from PIL import Image

from studio.core.data import digits, from_image_folder, from_npz, open_data
from studio.core.errors import StudioError


def test_digits_split_is_fixed_stratified_and_disjoint():
    a, b = digits(), digits()
    assert len(a.x_train) == 1437 and len(a.x_test) == 360
    assert np.array_equal(a.x_test, b.x_test)  # same seed, same split
    assert np.bincount(a.y_test).min() >= 35  # every class in the held-out part
    assert a.x_train.shape[1:] == (1, 8, 8) and 0 <= a.x_train.min() and a.x_train.max() <= 1
    assert a.shaped(a.x_test, (1, 64)).shape == (360, 64)
    with pytest.raises(StudioError, match="wants"):
        a.shaped(a.x_test, (1, 3, 32, 32))


def test_image_folder_one_subfolder_per_class(tmp_path):
    rng = np.random.default_rng(0)
    for cls, value in (("cats", 40), ("dogs", 200)):
        (tmp_path / cls).mkdir()
        for i in range(10):
            pixels = np.clip(rng.normal(value, 10, (20, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "cats" / "notes.txt").write_text("not an image")
    data = from_image_folder(tmp_path, (1, 3, 8, 8))
    assert data.classes == ["cats", "dogs"]
    assert data.x_train.shape[1:] == (3, 8, 8) and len(data.x_train) + len(data.x_test) == 20
    # labels follow the folders: dogs are the bright ones
    assert data.x_test[data.y_test == 1].mean() > data.x_test[data.y_test == 0].mean() + 0.4
    gray = from_image_folder(tmp_path, (1, 1, 8, 8))
    assert gray.x_test.shape[1:] == (1, 8, 8)


def test_npz_with_and_without_labels_and_presplit(tmp_path):
    x = np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32)
    np.savez(tmp_path / "xy.npz", x=x, y=np.arange(50) % 2)
    np.savez(tmp_path / "x.npz", x=x)
    np.savez(tmp_path / "split.npz", x_train=x[:40], x_test=x[40:], y_train=np.zeros(40, int), y_test=np.ones(10, int))
    assert from_npz(tmp_path / "xy.npz").labelled and len(from_npz(tmp_path / "xy.npz").x_test) == 10
    assert not from_npz(tmp_path / "x.npz").labelled
    assert np.array_equal(from_npz(tmp_path / "split.npz").x_test, x[40:])


@pytest.mark.parametrize(
    "arrays, message",
    [({"y": np.arange(3)}, "needs an array named 'x'"),
     ({"x": np.zeros((4, 2)), "y": np.zeros(3, int)}, "has 4 samples but 'y' has 3"),
     ({"x": np.array(["a", "b"])}, "numeric"),
     ({"x": np.zeros((4, 2)), "y": np.zeros(4)}, "labels must be integers")],
)
def test_bad_npz_files_are_explained(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(StudioError, match=message):
        from_npz(tmp_path / "bad.npz")


def test_npz_with_pickled_objects_is_refused(tmp_path):
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(StudioError, match="x is an object array"):
        from_npz(tmp_path / "obj.npz")


def test_random_data_is_shaped_like_the_model():
    data = open_data("random", (1, 3, 16, 16))
    assert not data.labelled and data.x_test.shape[1:] == (3, 16, 16)
    with pytest.raises(StudioError, match="input shape"):
        open_data("random", None)
