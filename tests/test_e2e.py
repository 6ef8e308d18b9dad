"""One real sweep end to end: real Fashion-MNIST files, real Ray Tune and HyperOpt, real training.
The sweep is runs.py's quick_sweep (shared with nothing else, started once): four given points,
a learner, a diverging trial, and two from planted weights with gradual unfreezing, under ASHA."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import QUICK, call_main, needs_fashion, run_cli
from runs import QUICK_SPACE

pytestmark = [needs_fashion, pytest.mark.cluster]


def trials_of(quick_sweep) -> pd.DataFrame:
    """trials.csv with a column `point`: which of runs.QUICK_POINTS each trial was given."""
    trials = pd.read_csv(quick_sweep.run / "trials.csv")
    keys = ("model.weights", "optimizer", "epochs", "batch_size", "lr")  # unique to each point

    def point(row):
        (name,) = [n for n, p in quick_sweep.points.items()
                   if all(row[k] == pytest.approx(p[k]) if k == "lr" else row[k] == p[k]
                          for k in keys)]
        return name

    trials["point"] = trials.apply(point, axis=1)
    return trials.set_index("point")


def test_the_chosen_trial_learned(quick_sweep):
    """One epoch on 630 real images from random init is far above chance (0.1) on the test set."""
    best = json.loads((quick_sweep.run / "best.json").read_text())
    assert best["test_accuracy"] > 0.4, best
    assert best["val_accuracy"] > 0.4, best


def test_sweep_exits_cleanly_and_writes_one_run(quick_sweep):
    proc, runs = quick_sweep.proc, quick_sweep.runs
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(runs) == 1
    assert f"run directory: {runs[0]}" in proc.stdout
    assert "test_accuracy=" in proc.stdout
    assert "over the spec's own settings" in proc.stdout
    # a line per trial event (tuner.progress), not Ray Tune's status tables (--verbose has those)
    assert len(re.findall(r"^trial \w+ started: ", proc.stdout, re.M)) == 4
    ended = r"^trial \w+ (finished: val_accuracy|stopped early at epoch|stopped: |failed: )"
    assert len(re.findall(ended, proc.stdout, re.M)) == 4
    assert "Trial status" not in proc.stdout and "╭" not in proc.stdout
    assert "Traceback" not in proc.stderr


def test_trials_csv(quick_sweep):
    trials = trials_of(quick_sweep)
    assert len(trials) == 4 and set(trials.index) == set(quick_sweep.points)
    learner = trials.loc["learner"]
    assert learner["status"] == "finished"
    assert learner["epochs"] == 1 and learner["epochs_completed"] == 1
    assert trials["batch_size"].isin([64, 128]).all() and trials["epochs"].isin([1, 2]).all()
    healthy = trials.drop(index="diverging")
    assert healthy["lr"].between(1e-4, 1e-3).all()
    assert healthy["val_accuracy"].between(0, 1).all()
    assert (healthy["epochs_completed"] >= 1).all()
    # the sandbox has no ImageNet weights: the fallback must be written in every row that asked
    # for them
    imagenet = trials[trials["model.weights"] == "imagenet"]
    assert len(imagenet) == 2 and imagenet["weights"].str.startswith("none (fallback").all()
    assert trials["node_ip"].eq("127.0.0.1").all()  # embedded Ray stays on loopback


def test_epochs_csv(quick_sweep):
    epochs = pd.read_csv(quick_sweep.run / "epochs.csv")
    trials = trials_of(quick_sweep)
    healthy = trials.drop(index="diverging")
    rows = epochs[epochs["trial_id"].isin(healthy["trial_id"])]
    assert len(rows) == healthy["epochs_completed"].sum()  # one row per epoch trained
    for col in ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                "epoch_time_s", "images_per_s"):
        assert rows[col].notna().all(), col
    assert (rows["images_per_s"] > 0).all()


def test_sweep_figure_is_written(quick_sweep):
    assert (quick_sweep.run / "sweep.png").read_bytes().startswith(b"\x89PNG")


def test_summaries_and_best(quick_sweep):
    run = quick_sweep.run
    trials = pd.read_csv(run / "trials.csv")
    for key in ("epochs", "batch_size", "lr"):
        table = pd.read_csv(run / f"summary_by_{key}.csv")
        assert {"val_accuracy_mean", "val_accuracy_std", "val_accuracy_max", "trials"} <= set(table.columns)
        assert table["trials"].sum() == (trials["status"] != "error").sum() == 3  # not the diverged
    best = json.loads((run / "best.json").read_text())
    assert best["val_accuracy"] == pytest.approx(trials["val_accuracy"].max())
    assert best["test_images"] == 500
    assert set(best["config"]) == set(QUICK_SPACE)  # the searched parameters
    assert not Path(best["checkpoint"]).is_absolute() and (run / best["checkpoint"]).is_dir()
    # tested by a Ray worker on the trials' kind of device, not by the driver
    status = json.loads((run / "status.json").read_text())
    assert best["test_pid"] != status["driver"]["pid"] and best["test_device"] == "cpu"
    # the test set was looked at once, for the chosen trial, and both files say so
    assert best["test_set_uses"] == status["test_set_uses"] == {"count": 1, "trials": [best["trial_id"]]}
    assert status["trials"]["planned"] == 4
    (look,) = [json.loads(line) for line in (run / "test_set.jsonl").read_text().splitlines()]
    assert look["trial_id"] == best["trial_id"]  # written before the look, counted from
    # the spec's own settings (set to the learner's: epochs 1, batch 128, its lr) ran as a trial,
    # not as a fifth one; best.json says what tuning gained over them, on validation
    learner = trials_of(quick_sweep).loc["learner"]
    assert best["default_trial"]["trial_id"] == learner["trial_id"]
    assert best["gain_vs_default"] == pytest.approx(best["val_accuracy"] - learner["val_accuracy"])
    assert best["gain_vs_default"] >= 0  # the choice is never worse than the spec's own settings


def test_only_the_chosen_trials_checkpoint_is_kept(quick_sweep):
    """run.keep_checkpoints: best (the default): the others are deleted once the sweep finished."""
    run = quick_sweep.run
    best = json.loads((run / "best.json").read_text())
    left = sorted(run.glob("trials/*/checkpoint_*"))
    assert left == [run / best["checkpoint"]]
    epochs = pd.read_csv(run / "epochs.csv")
    trained = epochs[epochs["checkpoint_bytes"].notna()]
    assert len(trained) and (trained["checkpoint_bytes"] > 40e6).all()  # ResNet-18 (+ Adam state)


def test_spec_yaml_records_provenance_and_reruns(quick_sweep, tmp_path, capsys, monkeypatch):
    from tuner.run import main as run_main

    run = quick_sweep.run
    record = yaml.safe_load((run / "spec.yaml").read_text())
    assert record["data"]["train_subset"] == 700
    assert "imagenet: none (fallback" in record["provenance"]["weights"]
    assert set(record["provenance"]["versions"]) >= {"torch", "ray", "hyperopt"}
    # tuner.run's main in this process (test_cli.py runs the real command)
    proc = call_main(run_main, [run / "spec.yaml", "--dry-run"], capsys, monkeypatch, tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_a_diverging_trial_is_recorded_and_the_sweep_goes_on(quick_sweep):
    trials = trials_of(quick_sweep)
    diverged = trials.loc["diverging"]
    assert diverged["status"] == "error"
    assert "loss became nan in epoch 1" in diverged["error"]
    assert diverged["epochs_completed"] == 1  # stopped at once, not retried or trained on
    assert trials.loc["learner", "status"] == "finished"
    best = json.loads((quick_sweep.run / "best.json").read_text())
    assert best["config"]["lr"] != 1e4  # the diverged trial is never chosen
    assert best["trial_id"] != diverged["trial_id"]


def test_pretrained_weights_gradual_unfreezing_asha_and_augmentation(quick_sweep):
    """Weights from a state_dict file go into the trials that name it, labelled as that file, with
    the other controlled variables that the quick sweep leaves at their defaults (searched here,
    given by the points: trials.csv has each trial's values). (A file planted
    under torchvision's ImageNet name would be refused: its hash is not ImageNet's; test_model.py
    covers the hub path with a file named by torchvision's rule.)"""
    run, weights = quick_sweep.run, quick_sweep.weights
    trials = trials_of(quick_sweep)
    planted = trials.loc[["planted", "planted_slow"]]
    assert planted["weights"].str.startswith(f"file {weights} sha256:").all()
    assert set(planted["status"]) <= {"finished", "stopped_early"}
    assert set(trials["status"]) <= {"finished", "stopped_early", "error"}
    assert "finished" in set(planted["status"])
    assert (planted["model.freeze"] == "gradual").all()
    assert (planted["model.conv1"] == "sum").all() and (planted["model.head_lr_multiplier"] == 10).all()
    assert (planted["data.augment.crop_padding"] == 2).all()
    assert planted["data.augment.hflip"].astype(str).isin(["True", "true"]).all()
    spec = yaml.safe_load((run / "spec.yaml").read_text())
    assert spec["search"]["scheduler"] == "asha"
    assert {"model.freeze", "model.conv1", "data.augment.hflip"} <= set(spec["search"]["parameters"])
    best = json.loads((run / "best.json").read_text())
    assert best["weights"] == trials.set_index("trial_id").loc[best["trial_id"], "weights"]


def own_sweep(tmp_path, *overrides: str, **env: str):
    """The quick sweep on a small subset with these --set overrides (and environment variables);
    it must exit 0. Its run dir."""
    results = tmp_path / "results"
    sets = [arg for item in overrides for arg in ("--set", item)]
    proc = run_cli(*QUICK, "--results", str(results), *sets, tmp_path=tmp_path, **env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = list(results.glob("*/*"))
    return run


@pytest.mark.slow
def test_compiled_training_steps(tmp_path):
    """train.compile: trials train through torch.compile (its cache fills), checkpoint after each
    epoch, and the chosen one's checkpoint loads into a plain model for the test evaluation."""
    inductor = tmp_path / "inductor"
    # 712 images: 640 train, 10 batches of 64, so it compiles once (a short last batch costs a
    # second compile of the same length, docs/performance.md)
    run = own_sweep(
        tmp_path, "train.compile=default", "data.train_subset=712",
        "search.num_samples=1", "search.n_initial_points=1",
        "search.parameters={epochs: {choice: [2]}, lr: {choice: [1.0e-3]}}",
        TORCHINDUCTOR_CACHE_DIR=str(inductor),
    )
    trials = pd.read_csv(run / "trials.csv")
    assert list(trials["status"]) == ["finished"]
    assert any(inductor.rglob("*.py")), "nothing was compiled"
    assert yaml.safe_load((run / "spec.yaml").read_text())["train"]["compile"] == "default"
    epochs = pd.read_csv(run / "epochs.csv")
    for _, rows in epochs.groupby("trial_id"):  # the compiled steps train: loss falls by epoch 2
        assert list(rows["epoch"]) == [1, 2]
        assert rows["train_loss"].iloc[1] < 0.8 * rows["train_loss"].iloc[0]
    # (validation accuracy on 70 images after 2 epochs from random init is too noisy to bound)
    best = json.loads((run / "best.json").read_text())
    assert 0 <= best["test_accuracy"] <= 1 and best["test_images"] == 300  # checkpoint evaluated
