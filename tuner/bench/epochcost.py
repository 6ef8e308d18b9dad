"""What one trial-epoch costs, phase by phase: tuner's trial against a plain PyTorch loop on the
same images (`tuner bench --epoch-cost`).

    python -m tuner.bench --epoch-cost [--spec sweeps/transfer-target.yaml] [--arm scratch]
        [--epochs 4] [--set key=value ...]

The plain loop is what a short script does (tuner.bench.grid's: a shuffled DataLoader over normalised
tensors, one optimizer step per batch, the validation images once after the last epoch), in this
process, on the threads one trial gets. tuner's side is a real one-trial sweep of the same arm's
own settings (an embedded Ray, FIFO, nothing searched), run twice: with the run.validation and
run.checkpoint_* defaults, and with a validation and a checkpoint after every epoch (what every
trial did before those settings existed). Its phases come from the trial's own reports: training,
validation, the checkpoint's local write, and the rest of each epoch as Ray measures it between two
reports (the report itself, the checkpoint's copy to the trial's storage, the batches' set-up).
Validation and checkpoints, which happen at some epochs only, are spread over all of them; the
first epoch's clock also holds the trial's start (model build, data upload), so training and the
rest are averaged over the later epochs, and the first epoch's clock is shown on its own.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import pandas as pd
import torch
import yaml

from tuner.bench.common import append_csv, machine
from tuner.errors import InputError
from tuner.spec import Spec

# the reported phases of one trial-epoch, in the order they run
PHASES = ["train_s", "validate_s", "checkpoint_s", "report_s"]


def plain_loop(spec: Spec, epochs: int) -> dict[str, float]:
    """The short script's epoch: seconds of training per epoch and its one validation pass."""
    from tuner.bench import grid
    from tuner.data import load_for
    from tuner.model import resolve_all

    data = load_for(spec).for_training(spec.data)
    weights = resolve_all([spec.model])[spec.model.weights]
    torch.set_num_threads(max(1, int(spec.resources.cpu)))  # what one trial gets
    trained = grid.train_once(spec.model_copy(update={"train": spec.train.model_copy(
        update={"epochs": epochs})}), weights, data, spec.train.lr, spec.train.seed, test=False)
    return {"train_s": trained.train_s / epochs, "validate_s": trained.validate_s / epochs,
            "checkpoint_s": 0.0, "report_s": 0.0, "first_epoch_s": trained.train_s / epochs,
            "val_accuracy": trained.val_accuracy}


def tuner_trial(spec_file: Path, epochs: int, results: Path, every_epoch: bool) -> dict[str, float]:
    """One real one-trial sweep of the spec in `spec_file`; its epochs' phases, from epochs.csv."""
    from tuner import api

    overrides = {"search.parameters": {}, "search.points_to_evaluate": [], "search.prefer": {},
                 "search.num_samples": 1, "search.scheduler": "fifo", "search.confirm_top_k": 0,
                 "train.epochs": epochs, "train.images": None}  # the spec's own settings alone
    if every_epoch:
        overrides.update({"run.validation": "every_epoch", "run.checkpoint_every": 1})
    run = api.run_sweep(spec_file, overrides, results=results)
    e = run.epochs.sort_values("epoch")
    phases = e[["train_s", "validate_s", "checkpoint_s"]].fillna(0.0)
    clock = e["time_total_s"].diff()  # Ray's time between two reports: the whole epoch
    later = e["epoch"] > 1  # the first report's clock also holds the trial's start
    # validation and checkpoints happen at some epochs only: their cost is spread over all of them
    return {"train_s": float(phases.loc[later, "train_s"].mean()),
            "validate_s": float(phases["validate_s"].sum() / len(e)),
            "checkpoint_s": float(phases["checkpoint_s"].sum() / len(e)),
            "report_s": float((clock - phases.sum(axis=1))[later].mean()),
            "first_epoch_s": float(e["time_total_s"].iloc[0]),
            "val_accuracy": float(e["val_accuracy"].dropna().iloc[-1])}


def measure(spec_path: str, overrides: list[str], arm: str | None, epochs: int | None,
            log=print) -> pd.DataFrame:
    """The plain loop's and tuner's trial-epoch, phase by phase (seconds per epoch), with each
    side's total and its ratio to the plain loop's. Raises InputError."""
    from tuner.specfile import load_spec

    spec = load_spec(spec_path, overrides)
    if spec.compare is not None:
        name = arm or next(iter(spec.compare.arms))
        if name not in spec.compare.arms:
            raise InputError(f"--arm {name}: not an arm of {spec_path} "
                             f"(its arms: {', '.join(spec.compare.arms)})")
        spec = spec.arm(name)
    elif arm:
        raise InputError(f"--arm {arm}: {spec_path} has no compare section")
    if spec.train.images is not None:  # --epochs, or the epochs its length in images means here
        from tuner.data import load_for

        spec = spec.for_training_set(len(load_for(spec).for_training(spec.data).train))
        spec = spec.model_copy(update={"train": spec.train.model_copy(update={"images": None})})
    epochs = epochs or spec.train.epochs
    if epochs < 2:
        raise InputError("--epochs: at least 2 (the first epoch carries the trial's start)")
    rows = {}
    with tempfile.TemporaryDirectory(prefix="tuner-epochcost-") as d:
        spec_file = Path(d) / "spec.yaml"
        spec_file.write_text(yaml.safe_dump(json.loads(spec.model_dump_json())))
        log(f"plain loop: {epochs} epochs ...")
        rows["plain loop"] = plain_loop(spec, epochs)
        for label, every in (("tuner", False), ("tuner, every epoch", True)):
            log(f"{label}: a one-trial sweep of {epochs} epochs ...")
            rows[label] = tuner_trial(spec_file, epochs, Path(d) / "results", every)
    table = pd.DataFrame(rows).T
    table["epoch_s"] = table[PHASES].sum(axis=1)
    table["ratio"] = table["epoch_s"] / table.loc["plain loop", "epoch_s"]
    return table.rename_axis("loop").reset_index()


def summary_line(table: pd.DataFrame) -> str:
    """The last line the bench prints: tuner's trial-epoch against the plain loop's."""
    t = table.set_index("loop")
    return (f"trial-epoch {t.loc['tuner', 'ratio']:.2f}x the plain loop's "
            f"({t.loc['tuner', 'epoch_s']:.2f} s against {t.loc['plain loop', 'epoch_s']:.2f} s; "
            f"validating and checkpointing every epoch: {t.loc['tuner, every epoch', 'ratio']:.2f}x)")


def run(args: argparse.Namespace, default_spec: str) -> int:
    """--epoch-cost: The table and its summary line; appends the rows to --csv.
    Raises InputError."""
    from tuner import results

    spec, sets = args.spec, list(args.set)
    if spec == default_spec:  # no source model exists here: the transfer arm's cost from random init
        spec, sets = "sweeps/transfer-target.yaml", ["model.weights=none", *sets]
    table = measure(spec, sets, args.arm, args.epochs,
                              log=lambda line: print(line, file=sys.stderr, flush=True))
    print(results.format_table(table.round(3)))
    print(summary_line(table))
    if args.csv:
        for row in table.to_dict("records"):
            append_csv(args.csv, {**row, "spec": spec, "sets": " ".join(sets),
                                   "machine": machine(torch.device("cpu")), "torch": version("torch"),
                                   "date": time.strftime("%Y-%m-%d")})
    return 0
