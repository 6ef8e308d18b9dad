"""Finding Fashion-MNIST, the stratified split and subsets, on real files."""

import numpy as np
import pytest
from conftest import write_fake_split_files

from tuner import fashion_mnist as data
from tuner.data import load_dataset, stratified_split
from tuner.fashion_mnist import find_fashion_mnist, read_idx
from tuner.errors import InputError
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
