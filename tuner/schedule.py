"""The learning-rate schedule of a trial, stepped once per batch by torch.optim.lr_scheduler.

The scheduler's state goes into the trial's checkpoint, so a resumed trial continues the schedule
where it stopped.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from tuner.spec import Train


def warmup_steps(train: Train, steps_per_epoch: int) -> int:
    """Warm-up in optimizer steps: warmup_epochs x steps per epoch, capped at the whole training."""
    return min(round(train.warmup_epochs * steps_per_epoch), train.epochs * steps_per_epoch)


ONECYCLE_START = 1 / 25  # onecycle starts at lr / 25 and ends at lr / 25 / 1e4 (OneCycleLR's defaults)
ONECYCLE_END = ONECYCLE_START / 1e4
ONECYCLE_RISE = 0.3  # of the training, when warmup_epochs is 0 (OneCycleLR's pct_start)


def lr_factor(step: int, total: int, warmup: int, schedule: str, min_fraction: float) -> float:
    """The multiple of each group's lr used for optimizer step `step` (0-based) of `total`.

    constant and cosine: a linear warm-up, (step + 1) / warmup, so that the first step is not
    wasted at lr 0 and the last warm-up step is at the full lr; then constant, or a cosine from 1
    down to min_fraction over the remaining steps (its last step just above, as CosineAnnealingLR).
    onecycle (Smith 2018, in OneCycleLR's cosine form): a cosine rise from 1/25 to 1 over the
    warm-up (30% of the training if none), then a cosine fall to min_fraction, or 1/25/1e4 if 0.
    """
    if schedule == "onecycle":
        rise = warmup or round(ONECYCLE_RISE * total)
        if step < rise:
            return _cosine(step / rise, 1.0, ONECYCLE_START)
        end = min_fraction or ONECYCLE_END
        return _cosine((step - rise) / max(1, total - rise), end, 1.0)
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    return _cosine((step - warmup) / max(1, total - warmup), min_fraction, 1.0)


def _cosine(progress: float, low: float, high: float) -> float:
    """From high at progress 0 to low at progress 1 along half a cosine (low > high: a rise)."""
    return low + (high - low) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def make_lr_schedule(optimizer: torch.optim.Optimizer, train: Train, steps_per_epoch: int) -> LambdaLR:
    """The spec's schedule over train.epochs x steps_per_epoch optimizer steps, as one LambdaLR
    for all three kinds: one state format in checkpoints, every group (head_lr_multiplier) scaled
    alike, and no degenerate short trials (OneCycleLR divides by zero when a phase has no steps).

    Make it after the optimizer and before loading either's checkpoint state.
    """
    total = train.epochs * steps_per_epoch
    warmup = warmup_steps(train, steps_per_epoch)
    return LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup, train.schedule,
                                                      train.min_lr_fraction))
