"""Batches drawn from data resident on the trial's device: no DataLoader workers in the hot loop.

The uint8 images go to the device once; each batch is a slice of a seeded permutation, converted,
normalised and (optionally) augmented there as a whole batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from tuner.data import MEAN, STD, Split
from tuner.spec import Augment


@dataclass(frozen=True)
class DeviceSplit:
    images: torch.Tensor  # uint8 [N, C, H, W] on the device
    labels: torch.Tensor  # int64 [N] on the device

    @classmethod
    def put(cls, split: Split, device: torch.device) -> DeviceSplit:
        images = torch.tensor(split.images)  # a copy: arrays from Ray's object store are read-only
        if images.ndim == 3:
            images = images.unsqueeze(1)  # [N, H, W] -> [N, 1, H, W]
        return cls(images.to(device), torch.tensor(split.labels).to(device))

    def __len__(self) -> int:
        return len(self.labels)


def epoch_order(n: int, batch_size: int, seed: int, epoch: int, device: torch.device) -> list[torch.Tensor]:
    """Index batches covering all n examples once, in a permutation fixed by (seed, epoch).

    The last batch keeps the remainder (as DataLoader does), except that a lone example is folded
    into the batch before it: BatchNorm cannot train on a batch of one.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)  # CPU generator: same order anywhere
    perm = torch.randperm(n, generator=g).to(device)
    chunks = list(torch.split(perm, batch_size))
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks[-2:] = [torch.cat(chunks[-2:])]
    return chunks


def steps_per_epoch(n: int, batch_size: int) -> int:
    """How many batches `epoch_order` makes of n examples (a lone last example joins the batch
    before it), so that a schedule knows its length before the first epoch."""
    steps = -(-n // batch_size)
    return steps - 1 if steps > 1 and n % batch_size == 1 else steps


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, C, H, W] -> float32 normalised with the training-set mean and std."""
    return (images.float() / 255 - MEAN) / STD


@dataclass(frozen=True)
class Draws:
    """Random crop offsets and flips, one per example, already on the device."""

    shift: torch.Tensor  # int64 [N, 2]: crop offset (y, x) into the padded image, 0..2*padding
    flip: torch.Tensor  # bool [N]

    def __getitem__(self, part: slice) -> Draws:
        return Draws(self.shift[part], self.flip[part])


def draw_augment(n: int, spec: Augment, generator: torch.Generator, device: torch.device) -> Draws:
    """The draws for n examples, made on the CPU (the same on any device) and sent in one copy per
    epoch: a plain CPU-to-GPU copy per batch would make each step wait for the GPU to finish."""
    shift = torch.randint(0, 2 * spec.crop_padding + 1, (n, 2), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    return Draws(shift.to(device), flip.to(device))


def augment(images: torch.Tensor, spec: Augment, draws: Draws) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, per example, on the whole batch.

    Works on uint8 (padding with 0, the background) so that it runs before normalisation.
    """
    b, _, h, w = images.shape
    dev = images.device
    if spec.crop_padding:
        p = spec.crop_padding
        padded = torch.nn.functional.pad(images, (p, p, p, p))
        rows = (torch.arange(h, device=dev)[None, :] + draws.shift[:, :1])[:, :, None]  # [B, H, 1]
        cols = (torch.arange(w, device=dev)[None, :] + draws.shift[:, 1:])[:, None, :]  # [B, 1, W]
        batch = torch.arange(b, device=dev)[:, None, None]
        images = padded[batch, :, rows, cols].permute(0, 3, 1, 2)  # [B, H, W, C] -> [B, C, H, W]
    if spec.hflip:
        images = torch.where(draws.flip[:, None, None, None], images.flip(3), images)
    return images.contiguous()


@dataclass(frozen=True)
class Erasures:
    """One random-erasing rectangle per example, already on the device."""

    box: torch.Tensor  # int64 [N, 4]: top, left, height, width in pixels
    on: torch.Tensor  # bool [N]: erase this example or not

    def __getitem__(self, part: slice) -> Erasures:
        return Erasures(self.box[part], self.on[part])


def draw_erasing(n: int, size: tuple[int, int], spec: Augment, generator: torch.Generator,
                 device: torch.device) -> Erasures:
    """Rectangles for n images of size (H, W), drawn on the CPU as `draw_augment` does.

    As torchvision's RandomErasing: area uniform in erase_scale x H x W, aspect ratio h/w
    log-uniform in erase_ratio. Where torchvision redraws a rectangle that does not fit (up to 10
    times, then skips the image), this clips it to the image: one draw per image keeps it simple
    and the draws fixed by the seed.
    """
    h, w = size
    area = torch.empty(n).uniform_(*spec.erase_scale, generator=generator) * h * w
    log_ratio = torch.empty(n).uniform_(*map(math.log, spec.erase_ratio), generator=generator)
    eh = (area * log_ratio.exp()).sqrt().round().clamp(1, h).long()
    ew = (area / log_ratio.exp()).sqrt().round().clamp(1, w).long()
    top = (torch.rand(n, generator=generator) * (h - eh + 1)).long()  # 0..h-eh
    left = (torch.rand(n, generator=generator) * (w - ew + 1)).long()
    on = torch.rand(n, generator=generator) < spec.erase_p
    return Erasures(torch.stack([top, left, eh, ew], 1).to(device), on.to(device))


def erase(images: torch.Tensor, erasures: Erasures) -> torch.Tensor:
    """Set each drawn rectangle to 0 in every channel of normalised [B, C, H, W] images.

    0 after normalisation is the training set's mean, as torchvision's RandomErasing(value=0) on
    normalised tensors: the erased patch carries no signal and shifts no statistics.
    """
    _, _, h, w = images.shape
    top, left, eh, ew = erasures.box.unbind(1)
    rows = torch.arange(h, device=images.device)[None, :]  # [1, H]
    cols = torch.arange(w, device=images.device)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])  # [B, H]
    in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])  # [B, W]
    mask = in_rows[:, :, None] & in_cols[:, None, :] & erasures.on[:, None, None]  # [B, H, W]
    return images.masked_fill(mask[:, None], 0.0)


def train_batches(
    data: DeviceSplit, batch_size: int, seed: int, epoch: int, aug: Augment,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of (normalised float images, labels), every example exactly once."""
    device = data.images.device
    augmenting = bool(aug.crop_padding or aug.hflip)
    if augmenting:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7)
        draws = draw_augment(len(data), aug, g, device)
    if aug.erase_p:  # its own generator: turning erasing on leaves the other draws as they were
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 11)
        erasures = draw_erasing(len(data), tuple(data.images.shape[2:]), aug, g, device)
    start = 0
    for idx in epoch_order(len(data), batch_size, seed, epoch, device):
        part = slice(start, start + len(idx))
        start += len(idx)
        x = data.images[idx]
        if augmenting:
            x = augment(x, aug, draws[part])
        x = normalize(x)
        if aug.erase_p:
            x = erase(x, erasures[part])
        yield x.contiguous(memory_format=memory_format), data.labels[idx]


def eval_batches(data: DeviceSplit, batch_size: int, memory_format=torch.contiguous_format):
    """The split in order, in large batches, for evaluation."""
    for start in range(0, len(data), batch_size):
        x = data.images[start:start + batch_size]
        yield normalize(x).contiguous(memory_format=memory_format), data.labels[start:start + batch_size]
