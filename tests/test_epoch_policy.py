"""Where a trial validates and checkpoints (run.validation, run.checkpoint_every,
run.checkpoint_minutes): the rule, and a real sweep that follows it."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from helpers import QUICK, run_cli

from tuner.specfile import load_spec
from tuner.trainable import epoch_plan


def spec(**run):
    return load_spec("sweeps/fashion-quick.yaml",
                     ["train.epochs=6", "search.parameters={}",
                      *[f"run.{k}={v}" for k, v in run.items()]])


@pytest.mark.parametrize("run, stops, minutes_trained, expected", [
    # by default: validate and checkpoint where a decision reads the epoch; the first epoch's
    # checkpoint as well
    ({}, set(), 0, {1: (False, True), 6: (True, True)}),
    ({}, {2}, 0, {1: (False, True), 2: (True, True), 6: (True, True)}),
    # curves: every epoch validated, checkpoints unchanged
    ({"validation": "every_epoch"}, {2}, 0,
     {1: (True, True), 2: (True, True), 3: (True, False), 4: (True, False), 5: (True, False),
      6: (True, True)}),
    # every third epoch checkpointed as well, without its validation
    ({"checkpoint_every": 3}, set(), 0, {1: (False, True), 3: (False, True), 6: (True, True)}),
    # five minutes of training since the last checkpoint: this epoch is saved
    ({}, set(), 5, {e: (e == 6, True) for e in range(1, 7)}),
    ({"checkpoint_minutes": 10}, set(), 5, {1: (False, True), 6: (True, True)}),
])
def test_an_epoch_is_validated_and_checkpointed_where_it_is_needed(run, stops, minutes_trained,
                                                                   expected):
    s = spec(**run)
    plan = {e: epoch_plan(e, s, frozenset(stops), 60.0 * minutes_trained) for e in range(1, 7)}
    assert plan == {e: expected.get(e, (False, False)) for e in range(1, 7)}


def test_the_defaults_validate_and_checkpoint_only_where_needed():
    r = load_spec("sweeps/fashion-quick.yaml").run
    assert (r.validation, r.checkpoint_every, r.checkpoint_minutes) == ("needed", None, 5.0)


@pytest.mark.slow  # a real sweep with MLflow and W&B logging: ~25 s alone
def test_a_trial_reports_scores_only_for_the_epochs_it_validated(tmp_path):
    """One trial of three epochs (its length given as train.images) under FIFO: epochs 1 and 2 train and report without val_* scores,
    epoch 2 without a checkpoint; epoch 3 (the last) is validated, checkpointed, chosen and tested. The sweep's
    tables, best.json and report treat the unvalidated epochs as unscored, not as zero.
    With run.log [mlflow, wandb], the same reports reach an MLflow SQLite store and W&B offline."""
    results = tmp_path / "results"
    proc = run_cli(*QUICK, "--results", str(results), "--set", "search.parameters={}",
                   "--set", "search.num_samples=1", "--set", "search.scheduler=fifo",
                   "--set", "train.images=800", "--set", "data.train_subset=300",
                   "--set", "run.log=[mlflow, wandb]", tmp_path=tmp_path,
                   MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db", WANDB_MODE="offline",
                   WANDB_DIR=str(tmp_path), WANDB_API_KEY=None)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = [p.parent for p in results.glob("*/*/best.json")]
    epochs = pd.read_csv(run / "epochs.csv").sort_values("epoch")
    assert epochs["epoch"].tolist() == [1, 2, 3]
    # train.images: 800 images on 270 training images (300, 10% validating) is ceil(800/270) = 3 epochs
    per_epoch = epochs["images_seen"].iloc[0]
    assert per_epoch == 270 and epochs["images_seen"].tolist() == [270, 540, 810]
    assert epochs["epochs_planned"].eq(3).all()
    assert epochs["val_accuracy"].isna().tolist() == [True, True, False]
    assert epochs["validate_s"].iloc[:2].eq(0).all() and epochs["validate_s"].iloc[2] > 0
    assert epochs["checkpoint_bytes"].iloc[1] == 0 and (epochs["checkpoint_bytes"].iloc[[0, 2]] > 0).all()
    assert (epochs["train_s"] > 0).all() and epochs["train_loss"].notna().all()
    trials = pd.read_csv(run / "trials.csv")
    assert trials["val_accuracy"].iloc[0] == pytest.approx(epochs["val_accuracy"].iloc[2])
    best = json.loads((run / "best.json").read_text())
    assert best["checkpoint_epoch"] == 3 and 0 <= best["test_accuracy"] <= 1
    assert (run / "report.html").is_file()
    # run.log: the same reports in MLflow (a SQLite store) and W&B (offline), one run per trial
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    (experiment,) = [e for e in client.search_experiments() if e.name == "fashion-quick"]
    (logged,) = client.search_runs([experiment.experiment_id])
    history = client.get_metric_history(logged.info.run_id, "train_loss")
    assert [round(m.value, 6) for m in sorted(history, key=lambda m: m.step)] == \
        [round(v, 6) for v in epochs["train_loss"]]
    assert client.get_metric_history(logged.info.run_id, "val_accuracy")[-1].value == \
        pytest.approx(epochs["val_accuracy"].iloc[2])
    assert list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb")), "no W&B offline run"


@pytest.mark.slow  # a plain loop and two real one-trial sweeps
def test_bench_epoch_cost_times_a_trial_epoch_phase_by_phase_against_a_plain_loop(tmp_path):
    """`tuner bench --epoch-cost`: the plain loop's, tuner's and tuner's every-epoch rows, each
    epoch's phases adding up to its total, ratios against the plain loop's total, and a last line
    that says the same as the table."""
    import subprocess
    import sys

    from helpers import ROOT, cli_env

    table = tmp_path / "cost.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "tuner.bench", "--epoch-cost", "--epochs", "2",
         "--set", "data.train_per_class=60", "--set", "data.train_subset=2000",
         "--set", "data.test_subset=200", "--csv", str(table)],
        cwd=ROOT, env=cli_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = pd.read_csv(table).set_index("loop")
    assert list(rows.index) == ["plain loop", "tuner", "tuner, every epoch"]
    phases = ["train_s", "validate_s", "checkpoint_s", "report_s"]
    assert (rows[phases].sum(axis=1) - rows["epoch_s"]).abs().max() < 1e-9
    assert (rows["ratio"] - rows["epoch_s"] / rows.loc["plain loop", "epoch_s"]).abs().max() < 1e-9
    assert (rows["train_s"] > 0).all() and (rows["validate_s"] > 0).all()
    assert rows.loc["plain loop", ["checkpoint_s", "report_s"]].eq(0).all()
    assert rows.loc["tuner", "checkpoint_s"] > 0  # the first and the last epoch's
    assert rows["val_accuracy"].between(0.2, 1).all()  # 5 classes: above chance
    assert rows["spec"].eq("sweeps/transfer-target.yaml").all()
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith(f"trial-epoch {rows.loc['tuner', 'ratio']:.2f}x the plain loop's"), last


def test_wandb_without_a_login_or_offline_mode_is_bad_input(tmp_path, monkeypatch):
    from tuner import loggers
    from tuner.errors import InputError

    spec = load_spec("sweeps/fashion-quick.yaml", ["run.log=[wandb]"])
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # none there
    with pytest.raises(InputError, match="run.log: wandb has no login here"):
        loggers.check(spec)
    monkeypatch.setenv("WANDB_MODE", "offline")
    loggers.check(spec)
    assert loggers.callbacks(load_spec("sweeps/fashion-quick.yaml"), "g") == []
