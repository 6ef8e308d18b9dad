"""Batches from device-resident data: coverage, seeded order, normalisation, augmentation."""

import numpy as np
import pytest
import torch

from tuner.batches import (DeviceSplit, augment, draw_augment, epoch_order, largest_batch, normalize,
                           steps_per_epoch, train_batches)
from tuner.data import Pixels, Split
from tuner.fashion_mnist import MEAN, STD
from tuner.spec import Augment

CPU = torch.device("cpu")


def make_split(n: int) -> DeviceSplit:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    return DeviceSplit.put(Split(images, np.arange(n, dtype=np.int64)), CPU, Pixels((MEAN,), (STD,)))


@pytest.mark.parametrize("n, batch", [(1000, 32), (1000, 128), (129, 64), (65, 64), (10, 128),
                                      (100, 32), (2500, 32), (500, 32), (96, 64)])
def test_every_example_exactly_once_per_epoch(n, batch):
    chunks = epoch_order(n, batch, seed=0, epoch=3, device=CPU)
    seen = torch.cat(chunks).sort().values
    assert torch.equal(seen, torch.arange(n))
    assert len(chunks) == steps_per_epoch(n, batch)  # what a schedule plans for
    # no step on a scrap of a batch (BatchNorm trains on its statistics): at least half a batch,
    # or all there is; and no batch as large as 1.5 batches
    assert all(2 * len(c) >= min(batch, n) for c in chunks), [len(c) for c in chunks]
    assert max(len(c) for c in chunks) == largest_batch(n, batch)  # what the memory check counts
    assert all(2 * len(c) < 3 * batch for c in chunks)


def test_order_is_seeded_and_changes_each_epoch():
    a = torch.cat(epoch_order(500, 64, seed=1, epoch=0, device=CPU))
    assert torch.equal(a, torch.cat(epoch_order(500, 64, seed=1, epoch=0, device=CPU)))
    assert not torch.equal(a, torch.cat(epoch_order(500, 64, seed=1, epoch=1, device=CPU)))
    assert not torch.equal(a, torch.cat(epoch_order(500, 64, seed=2, epoch=0, device=CPU)))


def test_batches_are_normalised_labelled_images():
    data = make_split(200)
    off = Augment()
    got = list(train_batches(data, 64, seed=0, epoch=0, aug=off))
    labels = torch.cat([y for _, y in got])
    images = torch.cat([x for x, _ in got])
    assert images.shape == (200, 1, 28, 28) and images.dtype == torch.float32
    # labels are the example indices here, so each image must be its own example, normalised
    assert torch.allclose(images, normalize(data.images[labels], data))
    assert images.min() >= (0 - MEAN) / STD - 1e-6 and images.max() <= (1 - MEAN) / STD + 1e-6


def test_augmentation_off_means_untouched():
    data = make_split(64)
    off = Augment(crop_padding=0, hflip=False)
    x = augment(data.images, off, draw_augment(64, off, torch.Generator().manual_seed(0), CPU))
    assert torch.equal(x, data.images)
    # and train_batches, with augmentation off, yields the examples as they are
    (x, y), = train_batches(data, 64, seed=0, epoch=0, aug=off)
    assert torch.equal(x, normalize(data.images[y], data))


def test_random_crop_shifts_within_padding():
    images = torch.zeros(16, 1, 28, 28, dtype=torch.uint8)
    images[:, :, 14, 14] = 255  # one bright pixel in the middle
    aug = Augment(crop_padding=4)
    out = augment(images, aug, draw_augment(16, aug, torch.Generator().manual_seed(0), CPU))
    assert out.shape == images.shape and out.dtype == torch.uint8
    ys, xs = [], []
    for img in out[:, 0]:
        (y,), (x,) = torch.nonzero(img == 255, as_tuple=True)
        ys.append(int(y)), xs.append(int(x))
        assert img.sum() == 255  # the pixel moved, nothing else appeared
    assert all(10 <= v <= 18 for v in ys + xs)
    assert len(set(zip(ys, xs))) > 1  # examples are cropped independently


def test_hflip_flips_some_examples_whole():
    data = make_split(64)
    aug = Augment(hflip=True)
    out = augment(data.images, aug, draw_augment(64, aug, torch.Generator().manual_seed(0), CPU))
    same = [(o == i).all().item() for o, i in zip(out, data.images)]
    flipped = [(o == i.flip(2)).all().item() for o, i in zip(out, data.images)]
    assert all(s or f for s, f in zip(same, flipped))
    assert 10 < sum(flipped) < 54


def test_augmented_batches_keep_range_and_shape():
    data = make_split(100)
    aug = Augment(crop_padding=2, hflip=True)
    for x, y in train_batches(data, 32, seed=0, epoch=0, aug=aug):
        assert x.shape[1:] == (1, 28, 28) and len(x) == len(y)
        assert x.min() >= (0 - MEAN) / STD - 1e-6 and x.max() <= (1 - MEAN) / STD + 1e-6


def test_augmented_epochs_are_seeded_and_differ_by_epoch():
    data = make_split(100)
    aug = Augment(crop_padding=2, hflip=True)

    def epoch(seed, e):
        return torch.cat([x for x, _ in train_batches(data, 32, seed=seed, epoch=e, aug=aug)])

    assert torch.equal(epoch(0, 0), epoch(0, 0))
    assert not torch.equal(epoch(0, 0), epoch(0, 1)) and not torch.equal(epoch(0, 0), epoch(1, 0))


def test_draws_are_made_once_per_epoch_and_sliced_per_batch():
    aug = Augment(crop_padding=3, hflip=True)
    draws = draw_augment(10, aug, torch.Generator().manual_seed(0), CPU)
    assert draws.shift.shape == (10, 2) and draws.flip.shape == (10,)
    assert int(draws.shift.min()) >= 0 and int(draws.shift.max()) <= 6
    part = draws[4:7]
    assert torch.equal(part.shift, draws.shift[4:7]) and torch.equal(part.flip, draws.flip[4:7])
