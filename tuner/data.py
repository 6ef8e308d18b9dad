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
from tuner.spec import Data, Spec

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
    # With data.train_per_class: the training images train was drawn from (validation carved out
    # already), so that an arm or a trial with another train_per_class draws its own. None: train
    # is all of them.
    pool: Split | None = None
    train_per_class: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def without_test(self) -> Dataset:
        """The same dataset with an empty test split: what trials get (they never see the test set)."""
        return dataclasses.replace(self, test=self.test[np.arange(0)])

    def for_training(self, spec: Data) -> Dataset:
        """The dataset a trial of `spec` (an arm's, or with a searched train_per_class) trains on:
        its own training draw, the same validation and test splits. Raises InputError."""
        n = spec.train_per_class
        if n == self.train_per_class:
            return self
        pool = self.train if self.pool is None else self.pool
        train = pool if n is None else per_class(pool, n, spec.seed, self.classes)
        return dataclasses.replace(self, train=train, pool=pool, train_per_class=n)


def load_dataset(spec: Data) -> Dataset:
    """Read the spec's dataset, then carve out the seeded subsets and the stratified splits."""
    if spec.dataset == "imagefolder":
        data = _from_folder(spec)
    else:
        data = _from_fashion_mnist(spec)
    return data.for_training(spec)


def load_for(spec: Spec) -> Dataset:
    """The sweep's dataset, checked against every training size a trial can ask for (each arm's
    data.train_per_class, each searched value), so that too few images is bad input now, not a
    failed trial. Raises InputError."""
    data = load_dataset(spec.data)
    for s in [spec.arm(name) for name in spec.compare.arms] if spec.compare else [spec]:
        searched = s.search_for("data.train_per_class")
        for n in searched.extremes() if searched else [s.data.train_per_class]:
            data.for_training(s.data.model_copy(update={"train_per_class": n}))
    return data


def _from_fashion_mnist(spec: Data) -> Dataset:
    raw, source = fashion_mnist.find_fashion_mnist(spec.root, spec.download)
    classes, train, test = fashion_mnist.CLASSES, Split(*raw["train"]), Split(*raw["test"])
    if spec.classes is not None:  # names already (checked with the spec)
        keep = [classes.index(c) for c in spec.classes]
        classes = tuple(spec.classes)
        train, test = keep_classes(train, keep), keep_classes(test, keep)
    train, val, test = _split(spec, train, None, test)
    return Dataset(train, val, test, source=source, classes=classes, in_channels=1,
                   pixels=Pixels((fashion_mnist.MEAN,), (fashion_mnist.STD,)),
                   record={"classes": list(classes)})


def keep_classes(split: Split, keep: list[int]) -> Split:
    """The images of the classes `keep` (indices), labelled by their position in `keep`."""
    relabel = np.full(max(keep) + 1, -1, dtype=np.int64)
    relabel[keep] = np.arange(len(keep))
    idx = np.flatnonzero(np.isin(split.labels, keep))
    return Split(split.images[idx], relabel[split.labels[idx]])


def per_class(split: Split, n: int, seed: int, classes: tuple[str, ...]) -> Split:
    """n images of every class, seeded: each class's images in one seeded order, the first n taken
    (so a smaller n draws a part of a larger one). Raises InputError when a class has fewer."""
    counts = np.bincount(split.labels, minlength=len(classes))
    short = [f"{classes[c]} ({counts[c]})" for c in range(len(classes)) if counts[c] < n]
    if short:
        raise InputError(f"data.train_per_class: {n} images per class, but the training split "
                         f"(after validation is carved out) has fewer of {', '.join(short)}; "
                         f"lower it to at most {counts.min()}")
    rng = np.random.default_rng(seed)
    idx = [rng.permutation(np.flatnonzero(split.labels == c))[:n] for c in range(len(classes))]
    return split[np.sort(np.concatenate(idx))]


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
