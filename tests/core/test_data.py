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


def write_photo_crops(folder, count: int, size=96) -> list:
    """`count` crops of scikit-learn's two bundled photos (china.jpg, flower.jpg: 427x640 RGB),
    written alternately as JPEG and PNG; returns the crops as arrays, in file-name order."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    crops = []
    for i in range(count):
        photo = photos[i % 2]
        top, left = rng.integers(0, photo.shape[0] - size), rng.integers(0, photo.shape[1] - size)
        crop = photo[top:top + size, left:left + size]
        Image.fromarray(crop).save(folder / f"{i:03d}.{'jpg' if i % 4 < 2 else 'png'}", quality=95)
        crops.append(crop)
    return crops


def test_a_flat_folder_of_photos_is_unlabelled_data_resized_to_the_input(tmp_path):
    """A detector's photos, no classes: every image read, resized to the model's (C, H, W),
    scaled to [0, 1], no labels; other files left alone."""
    crops = write_photo_crops(tmp_path, 10)
    (tmp_path / "notes.txt").write_text("not an image")
    data = from_image_folder(tmp_path, (1, 3, 32, 24))
    assert not data.labelled and data.y_train is None and data.classes is None
    assert data.x_train.shape[1:] == (3, 32, 24) and len(data.x_train) + len(data.x_test) == 10
    assert data.x_train.dtype == np.float32 and 0 <= data.x_train.min() and data.x_train.max() <= 1
    # each sample is one of the photos' crops (a PNG exactly, a JPEG within its compression)
    every = np.concatenate([data.x_train, data.x_test])
    for i, crop in enumerate(crops):
        want = np.asarray(Image.fromarray(crop).resize((24, 32)), np.float32).transpose(2, 0, 1) / 255
        nearest = np.abs(every - want).mean(axis=(1, 2, 3)).min()
        assert nearest < (1e-6 if i % 4 >= 2 else 0.03), (i, nearest)
    assert every.std() > 0.1  # real photos, not a constant
    gray = open_data(str(tmp_path), (1, 1, 16, 16))  # the command line's way in
    assert gray.x_test.shape[1:] == (1, 16, 16) and not gray.labelled


def test_a_folder_with_both_subfolders_and_loose_images_is_refused_in_one_line(tmp_path):
    write_photo_crops(tmp_path, 3)
    write_photo_crops(tmp_path / "cats", 3)
    with pytest.raises(StudioError, match=r"holds both subfolders \(cats\) and 3 loose images \(000\.jpg") as info:
        from_image_folder(tmp_path, (1, 3, 16, 16))
    assert len(str(info.value).splitlines()) == 1
    (tmp_path / "cats").rename(tmp_path.parent / f"{tmp_path.name}-cats")  # only the photos left: fine
    assert len(from_image_folder(tmp_path, (1, 3, 16, 16)).x_test) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StudioError, match="no images and no class subfolders"):
        from_image_folder(empty, (1, 3, 16, 16))


def test_hidden_entries_are_neither_classes_nor_images(tmp_path):
    """A notebook's .ipynb_checkpoints is not a class, and macOS's ._photo.jpg (a resource fork,
    not an image) is not read: both in a flat folder and in class folders."""
    write_photo_crops(tmp_path / "flat", 4)
    (tmp_path / "flat" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "flat" / "._000.jpg").write_bytes(b"\x00\x05\x16\x07 not an image")
    flat = from_image_folder(tmp_path / "flat", (1, 3, 16, 16))
    assert not flat.labelled and len(flat.x_train) + len(flat.x_test) == 4
    for cls in ("cats", "dogs"):
        write_photo_crops(tmp_path / "classes" / cls, 4)
        (tmp_path / "classes" / cls / "._001.png").write_bytes(b"\x00\x05\x16\x07")
    (tmp_path / "classes" / ".ipynb_checkpoints").mkdir()
    labelled = from_image_folder(tmp_path / "classes", (1, 3, 16, 16))
    assert labelled.classes == ["cats", "dogs"] and len(labelled.x_train) + len(labelled.x_test) == 8


def test_a_detector_on_unlabelled_photos_is_judged_by_output_fidelity(tmp_path):
    """A detector-like model (a feature map out, not class scores) measured on a flat folder of
    photos: no accuracy, no agreement; the quality is the cosine of its outputs to the original's."""
    import torch

    from studio.core.evaluate import measure, reference_outputs
    from studio.core.model import TORCH, Model

    write_photo_crops(tmp_path / "photos", 20)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 6, 3, padding=1)).eval()  # [N, 6, 16, 16] out
    original = Model(net, TORCH, (1, 3, 32, 32))
    data = open_data(str(tmp_path / "photos"), original.input_shape)
    ref = reference_outputs(original, data)
    noisy = torch.nn.Sequential(*[torch.nn.Conv2d(m.in_channels, m.out_channels, 3, stride=m.stride, padding=1)
                                  if isinstance(m, torch.nn.Conv2d) else m for m in net]).eval()
    noisy.load_state_dict({k: v + 0.05 * torch.randn_like(v) for k, v in net.state_dict().items()})
    m = measure(Model(noisy, TORCH, (1, 3, 32, 32)), data, reference=ref)
    assert m.accuracy is None and m.agreement is None and not m.classifier
    assert m.quality_label == "cosine" and 0.5 < m.quality < 0.9999 and m.samples == 4
    assert measure(original, data, reference=ref).quality > 0.99999
