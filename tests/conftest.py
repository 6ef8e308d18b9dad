"""Shared fixtures: tiny IDX files written the way Fashion-MNIST publishes them."""

import gzip
from pathlib import Path

import numpy as np
import pytest

from tuner.data import FILES


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an IDX file of unsigned bytes (gzip'd if the name ends in .gz)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_fake_split_files(folder: Path, n_train: int, n_test: int, fill: int, gz: bool) -> None:
    """A tiny, recognisable dataset: every image filled with `fill`, labels cycling 0..9."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = FILES[split]
        suffix = ".gz" if gz else ""
        write_idx(folder / (images + suffix), np.full((n, 28, 28), fill, np.uint8))
        write_idx(folder / (labels + suffix), np.arange(n) % 10)


@pytest.fixture
def tiny_mirror(tmp_path):
    folder = tmp_path / "mirror"
    write_fake_split_files(folder, 200, 50, fill=7, gz=True)
    return folder
