"""Finding Fashion-MNIST, the stratified split and subsets, on real files."""

import numpy as np
import pytest
from helpers import write_fake_split_files

from tuner import fashion_mnist as data
from tuner.data import load_dataset, stratified_split
from tuner.errors import InputError
from tuner.fashion_mnist import find_fashion_mnist, read_idx
from tuner.spec import Data

needs_debian = pytest.mark.skipif(not (data.DEBIAN_DIR / "train-images-idx3-ubyte.gz").exists(),
                                  reason="apt-get install dataset-fashion-mnist")


@needs_debian
def test_real_fashion_mnist_from_the_debian_mirror(tmp_path, monkeypatch):
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    raw, source = find_fashion_mnist(tmp_path, download=False)
    assert source == str(data.DEBIAN_DIR)
    assert raw["train"][0].shape == (60000, 28, 28) and raw["train"][0].dtype == np.uint8
    assert raw["test"][0].shape == (10000, 28, 28)
    assert np.bincount(raw["train"][1]).tolist() == [6000] * 10
    assert raw["train"][1].dtype == np.int64


@needs_debian
def test_full_dataset_split_is_stratified_and_honest(tmp_path, monkeypatch):
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    ds = load_dataset(Data(root=tmp_path, download=False))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (54000, 6000, 10000)
    assert np.bincount(ds.val.labels).tolist() == [600] * 10
    # validation images come from the training file, never from the test file
    assert ds.num_classes == 10 and ds.in_channels == 1


def test_env_mirror_comes_before_debian(tiny_mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tiny_mirror))
    raw, source = find_fashion_mnist(tmp_path / "root", download=False)
    assert source == str(tiny_mirror)
    assert len(raw["train"][1]) == 200 and (raw["train"][0] == 7).all()


def test_torchvision_layout_under_root_comes_first(tiny_mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tiny_mirror))
    write_fake_split_files(tmp_path / "root" / "FashionMNIST" / "raw", 100, 20, fill=9, gz=False)
    raw, source = find_fashion_mnist(tmp_path / "root", download=False)
    assert source.endswith("FashionMNIST/raw")
    assert len(raw["train"][1]) == 100 and (raw["train"][0] == 9).all()


def test_not_found_names_every_place_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "no-debian")
    with pytest.raises(InputError) as e:
        find_fashion_mnist(tmp_path / "root", download=False)
    msg = str(e.value)
    assert "\n" not in msg
    for place in ("root/FashionMNIST/raw", "empty", "no-debian", "data.download"):
        assert place in msg


def test_failed_download_is_bad_input(tmp_path, monkeypatch):
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "no-debian")

    def offline(root):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(data, "_download", offline)
    with pytest.raises(InputError, match="download into .* failed"):
        find_fashion_mnist(tmp_path / "root", download=True)


def test_split_is_stratified_disjoint_complete_and_seeded():
    labels = np.repeat(np.arange(10), 100)
    keep, held = stratified_split(labels, 0.1, seed=0)
    assert np.bincount(labels[held]).tolist() == [10] * 10
    assert len(np.intersect1d(keep, held)) == 0
    assert sorted(np.concatenate([keep, held]).tolist()) == list(range(1000))
    again, _ = stratified_split(labels, 0.1, seed=0)
    other, _ = stratified_split(labels, 0.1, seed=1)
    assert np.array_equal(keep, again) and not np.array_equal(keep, other)


def test_subsets_are_seeded_and_stratified(tiny_mirror, monkeypatch):
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tiny_mirror))
    spec = Data(root="nowhere", download=False, train_subset=100, test_subset=30, val_fraction=0.2)
    ds = load_dataset(spec)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (80, 20, 30)
    assert np.bincount(ds.val.labels).tolist() == [2] * 10


def test_read_idx_rejects_other_files(tmp_path):
    bad = tmp_path / "x"
    bad.write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(InputError, match="not an IDX file"):
        read_idx(bad)


# --- data.classes and data.train_per_class --------------------------------------------------------


@needs_debian
def test_classes_and_train_per_class_on_the_real_files(tmp_path, monkeypatch):
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    spec = Data(root=tmp_path, download=False, classes=[9, "Sandal", "Bag"], train_per_class=20)
    assert spec.classes == ["Ankle boot", "Sandal", "Bag"]  # by name, in the order given
    ds = load_dataset(spec)
    assert ds.classes == ("Ankle boot", "Sandal", "Bag") and ds.num_classes == 3
    assert ds.record == {"classes": ["Ankle boot", "Sandal", "Bag"]}
    assert np.bincount(ds.train.labels).tolist() == [20] * 3
    assert np.bincount(ds.val.labels).tolist() == [600] * 3 and len(ds.test) == 3000
    # re-indexed: label 0 is the raw file's class 9 (Ankle boot), 1 is 5 (Sandal), 2 is 8 (Bag)
    raw, _ = find_fashion_mnist(tmp_path, download=False)
    test_images, test_labels = raw["test"]
    boots = test_images[test_labels == 9]
    assert np.array_equal(ds.test.images[ds.test.labels == 0], boots)
    # validation and test do not change with the training size; a smaller draw is part of a larger
    bigger = load_dataset(spec.model_copy(update={"train_per_class": 100}))
    whole = load_dataset(spec.model_copy(update={"train_per_class": None}))
    for other in (bigger, whole):
        assert np.array_equal(other.val.images, ds.val.images)
        assert np.array_equal(other.test.images, ds.test.images)
    assert len(whole.train) == 3 * 5400 and np.bincount(bigger.train.labels).tolist() == [100] * 3
    rows = lambda s: {a.tobytes() for a in s.images}  # noqa: E731
    assert rows(ds.train) <= rows(bigger.train) <= rows(whole.train)
    # the same draw whichever size the dataset was loaded with first
    assert np.array_equal(bigger.for_training(spec).train.images, ds.train.images)
    with pytest.raises(InputError, match=r"train_per_class: 6000 images per class.*Ankle boot "
                                         r"\(5400\).*at most 5400"):
        load_dataset(spec.model_copy(update={"train_per_class": 6000}))


def test_unknown_classes_are_named_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown class 'Boot', 10; the classes are T-shirt/top, "
                                         r".*Ankle boot \(or their indices 0-9\)"):
        Data(classes=[0, "Boot", 10])
    with pytest.raises(ValueError, match="Trouser given more than once"):
        Data(classes=["Trouser", 1])
    with pytest.raises(ValueError, match="at least 2 classes"):
        Data(classes=["Trouser"])


def test_arms_train_on_their_own_draws_and_evaluate_on_the_same_images(tiny_mirror, monkeypatch):
    """What a trial of each arm gets (train_trial's Dataset.for_training): its own training draw
    from the one loaded dataset, the very same validation and test images."""
    from tuner.data import load_for
    from tuner.specfile import validate

    monkeypatch.setenv("FASHION_MNIST_DIR", str(tiny_mirror))  # 20 per class in train
    spec = validate({"data": {"root": "nowhere", "download": False, "val_fraction": 0.25},
                     "search": {"parameters": {"lr": {"loguniform": [1e-4, 1e-2]}}},
                     "compare": {"arms": {"few": {"data.train_per_class": 3},
                                          "more": {"data.train_per_class": 10,
                                                   "model.freeze": "head"},
                                          "all": {}}}})
    data = load_for(spec).without_test()
    seen = {}
    for arm in spec.compare.arms:
        trial = spec.arm(arm).with_values({"lr": 1e-3})
        seen[arm] = data.for_training(trial.data)
    assert np.bincount(seen["few"].train.labels).tolist() == [3] * 10
    assert np.bincount(seen["more"].train.labels).tolist() == [10] * 10
    assert len(seen["all"].train) == 150
    for arm, got in seen.items():
        assert np.array_equal(got.val.images, data.val.images), arm
        assert np.array_equal(got.val.labels, data.val.labels), arm
    full = load_for(spec)
    assert all(np.array_equal(full.for_training(spec.arm(a).data).test.images, full.test.images)
               for a in spec.compare.arms)
    # too many for one arm is bad input before anything runs
    bad = spec.model_copy(update={"compare": spec.compare.model_copy(
        update={"arms": {**spec.compare.arms, "many": {"data.train_per_class": 16}}})})
    with pytest.raises(InputError, match="16 images per class"):
        load_for(bad)


def test_train_per_class_can_be_searched_and_each_value_is_checked(tiny_mirror, monkeypatch):
    from tuner.data import load_for
    from tuner.specfile import validate

    monkeypatch.setenv("FASHION_MNIST_DIR", str(tiny_mirror))  # 18 per class after validation
    raw = {"data": {"root": "nowhere", "download": False},
           "search": {"parameters": {"data.train_per_class": {"choice": [4, 12]}}}}
    spec = validate(raw)
    data = load_for(spec)
    trial = spec.with_values({"data.train_per_class": 4})
    assert np.bincount(data.for_training(trial.data).train.labels).tolist() == [4] * 10
    raw["search"]["parameters"]["data.train_per_class"] = {"choice": [4, 19]}
    with pytest.raises(InputError, match="19 images per class"):
        load_for(validate(raw))
    with pytest.raises(InputError, match="data.train_per_class is also searched"):
        validate({**raw, "compare": {"arms": {"a": {"data.train_per_class": 4}, "b": {}}}})
