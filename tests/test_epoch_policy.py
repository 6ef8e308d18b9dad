"""Where a trial validates and checkpoints (run.validation, run.checkpoint_every,
run.checkpoint_minutes): the rule, and a real sweep that follows it."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from helpers import QUICK, run_cli

from tuner.spec import load_spec
from tuner.trainable import epoch_plan


def spec(**run):
    return load_spec("sweeps/fashion-quick.yaml",
                     ["train.epochs=6", "search.parameters={}",
                      *[f"run.{k}={v}" for k, v in run.items()]])


@pytest.mark.parametrize("run, stops, minutes_trained, expected", [
    # by default: validate and checkpoint where a decision reads the epoch, nowhere else
    ({}, set(), 0, {6: (True, True)}),
    ({}, {2}, 0, {2: (True, True), 6: (True, True)}),
    # curves: every epoch validated, checkpoints unchanged
    ({"validation": "every_epoch"}, {2}, 0,
     {1: (True, False), 2: (True, True), 3: (True, False), 4: (True, False), 5: (True, False),
      6: (True, True)}),
    # every third epoch checkpointed as well, without its validation
    ({"checkpoint_every": 3}, set(), 0, {3: (False, True), 6: (True, True)}),
    # five minutes of training since the last checkpoint: this epoch is saved
    ({}, set(), 5, {e: (e == 6, True) for e in range(1, 7)}),
    ({"checkpoint_minutes": 10}, set(), 5, {6: (True, True)}),
])
def test_an_epoch_is_validated_and_checkpointed_where_it_is_needed(run, stops, minutes_trained,
                                                                   expected):
    s = spec(**run)
    plan = {e: epoch_plan(e, s, frozenset(stops), 60.0 * minutes_trained) for e in range(1, 7)}
    assert plan == {e: expected.get(e, (False, False)) for e in range(1, 7)}


def test_the_defaults_validate_and_checkpoint_only_where_needed():
    r = load_spec("sweeps/fashion-quick.yaml").run
    assert (r.validation, r.checkpoint_every, r.checkpoint_minutes) == ("needed", None, 5.0)


def test_a_trial_reports_scores_only_for_the_epochs_it_validated(tmp_path):
    """One trial of three epochs under FIFO: epochs 1 and 2 train and report without val_* scores
    or a checkpoint; epoch 3 (the last) is validated, checkpointed, chosen and tested. The sweep's
    tables, best.json and report treat the unvalidated epochs as unscored, not as zero."""
    results = tmp_path / "results"
    proc = run_cli(*QUICK, "--results", str(results), "--set", "search.parameters={}",
                   "--set", "search.num_samples=1", "--set", "search.scheduler=fifo",
                   "--set", "train.epochs=3", "--set", "data.train_subset=300",
                   tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = [p.parent for p in results.glob("*/*/best.json")]
    epochs = pd.read_csv(run / "epochs.csv").sort_values("epoch")
    assert epochs["epoch"].tolist() == [1, 2, 3]
    assert epochs["val_accuracy"].isna().tolist() == [True, True, False]
    assert epochs["validate_s"].iloc[:2].eq(0).all() and epochs["validate_s"].iloc[2] > 0
    assert epochs["checkpoint_bytes"].tolist()[:2] == [0, 0] and epochs["checkpoint_bytes"].iloc[2] > 0
    assert (epochs["train_s"] > 0).all() and epochs["train_loss"].notna().all()
    trials = pd.read_csv(run / "trials.csv")
    assert trials["val_accuracy"].iloc[0] == pytest.approx(epochs["val_accuracy"].iloc[2])
    best = json.loads((run / "best.json").read_text())
    assert best["checkpoint_epoch"] == 3 and 0 <= best["test_accuracy"] <= 1
    assert (run / "report.html").is_file()
