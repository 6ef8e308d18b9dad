"""The dataset a sweep trains on, as uint8 arrays: read by its source module, then split (seeded,
stratified) and subset once per process.

Sources: `tuner.fashion_mnist` (data.dataset: fashion_mnist) and `tuner.folder` (imagefolder). A
`Dataset` also says how its pixels become model input (`Pixels`: normalisation and crop size), so
the batching and training code needs no dataset of its own.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import numpy as np

from tuner import fashion_mnist, folder
from tuner.errors import InputError
from tuner.spec import Data

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8 [N, H, W] (one channel) or [N, C, H, W]
    labels: np.ndarray  # int64 [N]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx: np.ndarray) -> Split:
        return Split(self.images[idx], self.labels[idx])


@dataclass(frozen=True)
class Pixels:
    """How a dataset's stored uint8 images become model input."""

    mean: tuple[float, ...]  # per channel, in [0, 1] units
    std: tuple[float, ...]
    # None: images are used whole (Fashion-MNIST's 28x28). Else pixels: the training crop
    # (RandomResizedCrop) and the evaluation centre crop cut from the stored image.
    crop: int | None = None


@dataclass(frozen=True)
class Dataset:
    train: Split
    val: Split
    test: Split
    source: str  # where the files came from, for the record
    classes: tuple[str, ...]
    in_channels: int
    pixels: Pixels
    record: dict = field(default_factory=dict)  # provenance for spec.yaml (classes, skipped files)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def without_test(self) -> Dataset:
        """The same dataset with an empty test split: what trials get (they never see the test set)."""
        return dataclasses.replace(self, test=self.test[np.arange(0)])


def load_dataset(spec: Data) -> Dataset:
    """Read the spec's dataset, then carve out the seeded subsets and the stratified splits."""
    if spec.dataset == "imagefolder":
        return _from_folder(spec)
    return _from_fashion_mnist(spec)


def _from_fashion_mnist(spec: Data) -> Dataset:
    raw, source = fashion_mnist.find_fashion_mnist(spec.root, spec.download)
    train, val, test = _split(spec, Split(*raw["train"]), None, Split(*raw["test"]))
    return Dataset(train, val, test, source=source, classes=fashion_mnist.CLASSES, in_channels=1,
                   pixels=Pixels((fashion_mnist.MEAN,), (fashion_mnist.STD,)),
                   record={"classes": list(fashion_mnist.CLASSES)})


def _from_folder(spec: Data) -> Dataset:
    found = folder.read_folder(spec)
    train = Split(*found.splits["train"])
    val = Split(*found.splits["val"]) if "val" in found.splits else None
    if "test" in found.splits:
        test = Split(*found.splits["test"])
    else:
        keep, held = _carve(train, spec.test_fraction, spec.seed, "data.test_fraction")
        train, test = train[keep], train[held]
        log.info("no test/ folder: %d of the train/ images held out as the test split "
                 "(data.test_fraction %g)", len(test), spec.test_fraction)
    train, val, test = _split(spec, train, val, test)
    return Dataset(train, val, test, source=found.source, classes=found.classes, in_channels=3,
                   pixels=Pixels(folder.IMAGENET_MEAN, folder.IMAGENET_STD, crop=spec.image_size),
                   record={"classes": list(found.classes), **found.record})


def _split(spec: Data, train: Split, val: Split | None, test: Split) -> tuple[Split, Split, Split]:
    """Seeded subsets of train and test, then the validation split carved from train (unless the
    source has its own)."""
    if spec.train_subset and spec.train_subset < len(train):
        train = subset(train, spec.train_subset, spec.seed)
    if spec.test_subset and spec.test_subset < len(test):
        test = subset(test, spec.test_subset, spec.seed)
    if val is None:
        keep, held = _carve(train, spec.val_fraction, spec.seed, "data.val_fraction")
        train, val = train[keep], train[held]
    return train, val, test


def _carve(split: Split, fraction: float, seed: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    keep, held = stratified_split(split.labels, fraction, seed)
    if len(keep) == 0 or len(held) == 0:
        raise InputError(f"{name}: {fraction} of {len(split)} images leaves an empty split; use "
                         "more images or another fraction")
    return keep, held


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out): about `fraction` of every class held out, seeded, each sorted."""
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n = int(round(fraction * len(idx)))
        held.append(idx[:n])
        kept.append(idx[n:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def subset(split: Split, n: int, seed: int) -> Split:
    """A seeded, stratified subset of about n images."""
    _, idx = stratified_split(split.labels, n / len(split), seed)
    return split[idx]
