"""The learning-rate schedule: lr at known steps, per group, and continued from a checkpoint."""

import math

import pytest
import torch
from torch import nn

from tuner.schedule import lr_factor, make_lr_schedule, warmup_steps
from tuner.spec import Train


def optimizer(lr: float = 0.1) -> torch.optim.Optimizer:
    body, head = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    return torch.optim.SGD([{"params": [body], "lr": lr}, {"params": [head], "lr": 10 * lr}], lr=lr)


def lrs(train: Train, steps_per_epoch: int, steps: int | None = None) -> list[float]:
    """The body lr used by each optimizer step, as the trial steps it."""
    opt = optimizer(train.lr)
    sched = make_lr_schedule(opt, train, steps_per_epoch)
    out = []
    for _ in range(steps if steps is not None else train.epochs * steps_per_epoch):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("train, steps_per_epoch, expected", [
    # constant: no warm-up is the old behaviour, lr throughout
    (Train(lr=0.1, epochs=2), 3, [0.1] * 6),
    # linear warm-up over 1.5 epochs = 3 steps: lr/3, 2lr/3, lr, then constant
    (Train(lr=0.1, epochs=2, warmup_epochs=1.5), 2, [0.1 / 3, 0.2 / 3, 0.1, 0.1]),
    # cosine over 4 steps to 0: 1, (1 + cos(pi/4)) / 2, 1/2, (1 + cos(3pi/4)) / 2
    (Train(lr=0.1, epochs=2, schedule="cosine"), 2,
     [0.1, 0.05 * (1 + math.cos(math.pi / 4)), 0.05, 0.05 * (1 + math.cos(3 * math.pi / 4))]),
    # cosine to min_lr_fraction 0.2 after a 1-step warm-up: 3 cosine steps from 1 towards 0.2
    (Train(lr=1.0, epochs=4, schedule="cosine", warmup_epochs=1, min_lr_fraction=0.2), 1,
     [1.0, 1.0, 0.2 + 0.4 * (1 + math.cos(math.pi / 3)), 0.2 + 0.4 * (1 + math.cos(2 * math.pi / 3))]),
    # warm-up longer than the training is capped at the training: 2 steps, 1/2 then 1
    (Train(lr=1.0, epochs=1, schedule="cosine", warmup_epochs=5), 2, [0.5, 1.0]),
    # onecycle: a cosine rise from lr/25 over 2 steps, then a cosine fall over 2 steps to lr/25/1e4
    (Train(lr=1.0, epochs=2, schedule="onecycle", warmup_epochs=1), 2,
     [0.04, 0.52, 1.0, 0.5 * (1 + 4e-6)]),
])
def test_lr_at_known_steps(train, steps_per_epoch, expected):
    assert lrs(train, steps_per_epoch) == pytest.approx(expected)


def test_onecycle_rises_for_30_percent_without_warmup_and_ends_near_zero():
    got = lrs(Train(lr=1.0, epochs=10, schedule="onecycle"), 10)
    assert got[0] == pytest.approx(0.04) and max(got) == got[30] == pytest.approx(1.0)
    assert got[-1] < 1e-3 and got == sorted(got[:31]) + got[31:]


def test_every_group_keeps_its_multiple():
    opt = optimizer(0.1)
    sched = make_lr_schedule(opt, Train(lr=0.1, epochs=3, schedule="cosine", warmup_epochs=1), 4)
    for _ in range(7):
        opt.step()
        sched.step()
        body, head = (g["lr"] for g in opt.param_groups)
        assert head == pytest.approx(10 * body)


@pytest.mark.parametrize("schedule", ["cosine", "onecycle", "constant"])
def test_resumed_schedule_continues_where_it_stopped(schedule):
    """As a retried trial does: a fresh optimizer and scheduler, then both states loaded."""
    train = Train(lr=0.1, epochs=3, schedule=schedule, warmup_epochs=0.5)
    whole = lrs(train, steps_per_epoch=4)
    opt = optimizer(train.lr)
    sched = make_lr_schedule(opt, train, 4)
    for _ in range(4):  # one epoch, then a checkpoint
        opt.step()
        sched.step()
    saved = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
    opt = optimizer(train.lr)
    sched = make_lr_schedule(opt, train, 4)
    opt.load_state_dict(saved["optimizer"])
    sched.load_state_dict(saved["scheduler"])
    rest = []
    for _ in range(8):
        rest.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rest == pytest.approx(whole[4:])


def test_warmup_steps_round_and_cap():
    assert warmup_steps(Train(epochs=3, warmup_epochs=0.25), 10) == 2  # 2.5 rounds to even
    assert warmup_steps(Train(epochs=3, warmup_epochs=9), 10) == 30


def test_cosine_ends_at_its_floor():
    assert lr_factor(100, 100, 0, "cosine", 0.1) == pytest.approx(0.1)
