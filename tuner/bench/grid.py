"""A plain grid, as a user would write it without tuner: the baseline a comparison's tuned arms must
beat, on the same task and images (`tuner bench --grid-baseline`).

Per arm of a comparison spec: three learning rates (geometric across the searched lr range, or
lr/10, lr, 10 lr when lr is fixed), the arm's other settings as the spec fixes them (its epochs,
batch size, optimizer, freeze policy, starting weights), trained by a plain PyTorch loop (a
shuffled DataLoader over normalised tensors, one optimizer step per batch, no scheduler tricks) on
the same training, validation and test images as tuner's trials; the lr best on validation is
then trained with `compare.repeats` fresh seeds (train.seed + 1 onwards), each run tested once
(a plain loop's seed and tuner's draw different batches and inits, so the two are compared
unpaired). The model is built by the same surgery as tuner's (conv1 adapted, fc new), so that only the
tuning differs.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from importlib.metadata import version
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.transforms.v2.functional import center_crop

from tuner.bench.common import append_csv, machine
from tuner.compare import t_interval
from tuner.errors import InputError
from tuner.data import Dataset, Split
from tuner.model import Weights, apply_freeze, build_model, make_optimizer, set_train_mode
from tuner.spec import Spec


@dataclass(frozen=True)
class Run:
    arm: str
    lr: float
    seed: int
    phase: str  # "grid" (choosing the lr) or "repeat" (tested)
    val_accuracy: float
    test_accuracy: float | None
    epochs: int
    seconds: float


def grid_lrs(spec: Spec) -> list[float]:
    """Three learning rates: geometric across the searched lr range, or around the fixed lr."""
    param = spec.search_for("train.lr")
    if param is not None and param.kind in ("loguniform", "uniform"):
        low, high = param.args[0], param.args[1]
        return [low, math.sqrt(low * high), high]
    if param is not None and param.kind == "choice" and len(param.choice) >= 3:
        values = sorted(param.choice)
        return [values[0], values[len(values) // 2], values[-1]]
    lr = spec.train.lr
    return [lr / 10, lr, lr * 10]


def tensors(split: Split, data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """A split as float images normalised as tuner's batches are (an image folder's centre crop,
    no augmentation), and labels."""
    images = torch.from_numpy(np.ascontiguousarray(split.images)).float().div_(255)
    if images.ndim == 3:
        images = images.unsqueeze(1)  # N x H x W -> N x 1 x H x W
    if data.pixels.crop is not None:
        images = center_crop(images, [data.pixels.crop, data.pixels.crop])
    mean = torch.tensor(data.pixels.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.pixels.std).view(1, -1, 1, 1)
    return (images - mean) / std, torch.from_numpy(split.labels).long()


@torch.inference_mode()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    model.eval()
    correct = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
                  for i in range(0, len(y), batch))
    return correct / len(y)


@dataclass(frozen=True)
class Trained:
    """One plain training run's scores and where its time went (seconds)."""

    val_accuracy: float
    test_accuracy: float | None
    train_s: float  # the epochs' training, model build and data included
    validate_s: float  # the one pass over the validation images, after the last epoch

    @property
    def seconds(self) -> float:
        return self.train_s + self.validate_s


def train_once(spec: Spec, weights: Weights, data: Dataset, lr: float, seed: int,
               test: bool) -> Trained:
    """One plain training run: its validation accuracy (and test accuracy if asked) and times."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    run = spec.model_copy(update={"train": spec.train.model_copy(update={"lr": lr, "seed": seed})})
    model = build_model(run.model, weights, data.in_channels, data.num_classes)
    optimizer = make_optimizer(model, run.model, run.train)
    x, y = tensors(data.train, data)
    loader = DataLoader(TensorDataset(x, y), batch_size=run.train.batch_size, shuffle=True,
                        drop_last=len(y) > run.train.batch_size,  # BatchNorm: no batch of one
                        generator=torch.Generator().manual_seed(seed))
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(run.train.epochs):
        set_train_mode(model, apply_freeze(model, run.model, epoch), run.model.arch)
        for xb, yb in loader:
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(xb), yb).backward()
            optimizer.step()
    t1 = time.perf_counter()
    val = accuracy(model, *tensors(data.val, data))
    t2 = time.perf_counter()
    tested = accuracy(model, *tensors(data.test, data)) if test else None
    return Trained(val, tested, t1 - t0, t2 - t1)


def run_arm(spec: Spec, arm: str, weights: dict[str, Weights], data: Dataset,
            lrs: list[float] | None = None, log=print) -> list[Run]:
    """The grid for one arm: each lr once (seed train.seed), then the best on validation with the
    repeat seeds, tested."""
    arm_spec = spec.arm(arm)
    mine = data.for_training(arm_spec.data)
    arm_spec = arm_spec.for_training_set(len(mine.train))  # a length in images: epochs for this size
    start = weights[arm_spec.model.weights]
    runs = []
    for lr in lrs or grid_lrs(arm_spec):
        t = train_once(arm_spec, start, mine, lr, arm_spec.train.seed, test=False)
        runs.append(Run(arm, lr, arm_spec.train.seed, "grid", t.val_accuracy, None,
                        arm_spec.train.epochs, t.seconds))
        log(f"  {arm} lr {lr:.3g}: val {t.val_accuracy:.4f} ({t.seconds:.0f} s)")
    best = max((r for r in runs), key=lambda r: r.val_accuracy)
    for seed in range(arm_spec.train.seed + 1, arm_spec.train.seed + 1 + spec.compare.repeats):
        t = train_once(arm_spec, start, mine, best.lr, seed, test=True)
        runs.append(Run(arm, best.lr, seed, "repeat", t.val_accuracy, t.test_accuracy,
                        arm_spec.train.epochs, t.seconds))
        log(f"  {arm} lr {best.lr:.3g} seed {seed}: val {t.val_accuracy:.4f} "
            f"test {t.test_accuracy:.4f}")
    return runs


def summary(runs: list[Run]) -> list[dict]:
    """Per arm: the chosen lr, the repeats' test mean, std and 95% interval, its cost."""
    import pandas as pd

    rows = []
    for arm in dict.fromkeys(r.arm for r in runs):
        mine = [r for r in runs if r.arm == arm]
        tests = pd.Series([r.test_accuracy for r in mine if r.phase == "repeat"], dtype=float)
        low, high = t_interval(tests)
        rows.append({
            "arm": arm, "lr": next(r.lr for r in mine if r.phase == "repeat"),
            "test_mean": float(tests.mean()), "test_std": float(tests.std()) if len(tests) > 1
            else math.nan, "test_ci95_low": low, "test_ci95_high": high, "repeats": len(tests),
            "trials": len(mine), "trial_epochs": sum(r.epochs for r in mine),
            "wall_s": round(sum(r.seconds for r in mine), 1),
            "grid_val": " ".join(f"{r.lr:.3g}:{r.val_accuracy:.4f}" for r in mine
                                 if r.phase == "grid"),
            "test_each": " ".join(f"{r.test_accuracy:.4f}" for r in mine if r.phase == "repeat"),
        })
    return rows


def run(args: argparse.Namespace) -> int:
    """--grid-baseline: the plain grid for every arm of the spec's comparison; prints
    each run and the table, appends the table's rows to --csv. Raises InputError."""
    from tuner import results
    from tuner.data import load_for
    from tuner.model import check_surgery, resolve_all, weights_label
    from tuner.specfile import load_spec

    spec = load_spec(args.spec, args.set)
    if spec.compare is None:
        raise InputError(f"--grid-baseline: {args.spec} has no compare section; give a "
                         "comparison's spec (its arms are the strategies to run)")
    weights = resolve_all(spec.model_variants())
    data = load_for(spec)
    for m in spec.model_variants():
        check_surgery(m, weights[m.weights], data.classes)
    t0 = time.perf_counter()
    runs = []
    for arm in spec.compare.arms:
        runs += run_arm(spec, arm, weights, data, log=lambda line: print(line, flush=True))
    wall = time.perf_counter() - t0
    table = pd.DataFrame(summary(runs))
    print(results.format_table(table[["arm", "lr", "test_mean", "test_ci95_low", "test_ci95_high",
                                      "repeats", "trial_epochs", "wall_s"]]))
    print(f"grid baseline: {len(spec.compare.arms)} arms, {len(runs)} runs, wall {wall:.0f} s on "
          f"{machine(torch.device('cpu'))}")
    if args.csv:
        for row in table.to_dict("records"):
            append_csv(args.csv, {
                **row, "weights": weights_label(weights), "machine": machine(torch.device("cpu")),
                "torch": version("torch"), "wall_total_s": round(wall, 1),
                "command": shlex.join(["python", "-m", "tuner.bench", *sys.argv[1:]]),
                "date": time.strftime("%Y-%m-%d")})
    return 0
