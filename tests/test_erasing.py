"""Random erasing on the device: shapes kept, only the drawn rectangles changed, seeded, any size."""

import numpy as np
import pytest
import torch

from tuner.batches import (
    DeviceSplit,
    draw_erasing,
    epoch_order,
    erase,
    normalize,
    steps_per_epoch,
    train_batches,
)
from tuner.data import Pixels, Split
from tuner.fashion_mnist import MEAN, STD
from tuner.spec import Augment

CPU = torch.device("cpu")


def boxes_mask(erasures, shape) -> torch.Tensor:
    """The erased pixels, computed independently, one image at a time with slicing."""
    b, _, h, w = shape
    mask = torch.zeros(b, h, w, dtype=torch.bool)
    for i, ((top, left, eh, ew), on) in enumerate(zip(erasures.box.tolist(), erasures.on.tolist())):
        if on:
            mask[i, top:top + eh, left:left + ew] = True
    return mask


@pytest.mark.parametrize("shape", [(64, 1, 28, 28), (16, 3, 32, 48), (8, 3, 224, 224)])
def test_erasing_keeps_shape_and_touches_only_the_drawn_areas(shape):
    spec = Augment(erase_p=0.5, erase_scale=(0.02, 0.33), erase_ratio=(0.3, 3.3))
    erasures = draw_erasing(shape[0], shape[2:], spec, torch.Generator().manual_seed(1), CPU)
    images = torch.randn(shape) + 5  # never 0 before erasing
    out = erase(images, erasures)
    assert out.shape == images.shape and out.dtype == images.dtype
    mask = boxes_mask(erasures, shape)[:, None].expand(shape)
    assert (out[mask] == 0).all()  # every channel of the rectangle is the mean
    assert torch.equal(out[~mask], images[~mask])  # and nothing else moved
    assert 0 < erasures.on.sum() < shape[0]


def test_drawn_rectangles_follow_the_spec():
    n, h, w = 4000, 28, 28
    spec = Augment(erase_p=0.25, erase_scale=(0.1, 0.2), erase_ratio=(0.5, 2.0))
    e = draw_erasing(n, (h, w), spec, torch.Generator().manual_seed(0), CPU)
    top, left, eh, ew = e.box.T
    assert ((top >= 0) & (top + eh <= h) & (left >= 0) & (left + ew <= w)).all()  # inside the image
    area = (eh * ew).float() / (h * w)
    assert area.min() > 0.07 and area.max() < 0.25  # 0.1..0.2, give or take rounding to pixels
    assert (eh / ew).min() >= 0.5 / 1.3 and (eh / ew).max() <= 2.0 * 1.3
    assert abs(e.on.float().mean() - 0.25) < 0.03


def test_draws_are_seeded():
    spec = Augment(erase_p=0.5)
    a = draw_erasing(100, (28, 28), spec, torch.Generator().manual_seed(3), CPU)
    b = draw_erasing(100, (28, 28), spec, torch.Generator().manual_seed(3), CPU)
    c = draw_erasing(100, (28, 28), spec, torch.Generator().manual_seed(4), CPU)
    assert torch.equal(a.box, b.box) and torch.equal(a.on, b.on)
    assert not torch.equal(a.box, c.box)


def split(n: int, size=(28, 28)) -> DeviceSplit:
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, size=(n, *size), dtype=np.uint8)
    return DeviceSplit.put(Split(images, np.arange(n, dtype=np.int64)), CPU, Pixels((MEAN,), (STD,)))


def test_train_batches_erase_after_normalising_and_leave_other_draws_alone():
    data = split(300)
    crop = Augment(crop_padding=2, hflip=True)
    erasing = Augment(crop_padding=2, hflip=True, erase_p=1.0)
    plain = list(train_batches(data, 64, seed=0, epoch=1, aug=crop))
    erased = list(train_batches(data, 64, seed=0, epoch=1, aug=erasing))
    for (x, y), (xe, ye) in zip(plain, erased, strict=True):
        assert torch.equal(y, ye) and x.shape == xe.shape
        changed = (x != xe).flatten(1).any(1)
        assert changed.all()  # p = 1: every image has a rectangle
        assert ((xe == x) | (xe == 0)).all()  # the crops and flips are the same; erased pixels are 0
    assert not torch.equal(torch.cat([x for x, _ in erased]),
                           torch.cat([x for x, _ in train_batches(data, 64, 0, 2, erasing)]))


def test_erasing_off_is_the_old_stream():
    data = split(100)
    off = list(train_batches(data, 32, 0, 0, Augment()))
    assert all(torch.equal(x, normalize(data.images[y], data)) for x, y in off)


@pytest.mark.parametrize("n, batch", [(1000, 32), (129, 64), (65, 64), (10, 128), (64, 64), (2, 2)])
def test_steps_per_epoch_counts_epoch_order(n, batch):
    assert steps_per_epoch(n, batch) == len(epoch_order(n, batch, seed=0, epoch=0, device=CPU))
