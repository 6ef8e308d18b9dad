"""One real sweep end to end: real Fashion-MNIST files, real Ray Tune and HyperOpt, real training."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import QUICK, needs_fashion, run_cli

pytestmark = [needs_fashion, pytest.mark.cluster]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("e2e")
    proc = run_cli(
        "sweeps/fashion-quick.yaml",
        "--results", str(tmp_path / "results"),
        "--set", "data.train_subset=700",
        "--set", "data.test_subset=500",
        "--set", "search.num_samples=3",
        "--set", "search.n_initial_points=2",
        "--set", "search.parameters.epochs={choice: [1]}",
        # batches of 32 (or 64): enough steps in one epoch for BatchNorm's running statistics,
        # which evaluation uses, to follow the training
        "--set", "search.parameters.batch_size={choice: [32, 64]}",
        "--set", "train.batch_size=32",
        "--set", "search.confirm_top_k=2",
        tmp_path=tmp_path,
    )
    runs = list((tmp_path / "results" / "fashion-quick").glob("*"))
    return proc, runs


def test_the_chosen_trial_learned(quick_run):
    """One epoch on 630 real images from random init is far above chance (0.1) on the test set."""
    _, (run,) = quick_run
    best = json.loads((run / "best.json").read_text())
    assert best["test_accuracy"] > 0.4, best
    assert best["val_accuracy"] > 0.4, best


def test_sweep_exits_cleanly_and_writes_one_run(quick_run):
    proc, runs = quick_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(runs) == 1
    assert f"run directory: {runs[0]}" in proc.stdout
    assert "test_accuracy=" in proc.stdout
    assert "over the spec's own settings" in proc.stdout
    # a line per trial event (tuner.progress), not Ray Tune's status tables (--verbose has those)
    assert len(re.findall(r"^trial \w+ started: ", proc.stdout, re.M)) == 5  # 3 + 2 confirming
    assert len(re.findall(r"^trial \w+ finished: val_accuracy ", proc.stdout, re.M)) == 5
    assert "Trial status" not in proc.stdout and "╭" not in proc.stdout
    assert "Traceback" not in proc.stderr


def test_trials_csv(quick_run):
    _, (run,) = quick_run
    trials = pd.read_csv(run / "trials.csv")
    assert len(trials) == 3
    assert set(trials["status"]) == {"finished"}
    assert trials["batch_size"].isin([32, 64]).all() and (trials["epochs"] == 1).all()
    assert trials["lr"].between(1e-4, 1e-3).all()
    assert trials["val_accuracy"].between(0, 1).all() and (trials["epochs_completed"] == 1).all()
    # the sandbox has no ImageNet weights: the fallback must be written in every row
    assert trials["weights"].str.startswith("none (fallback").all()
    assert trials["node_ip"].eq("127.0.0.1").all()  # embedded Ray stays on loopback


def test_epochs_csv(quick_run):
    _, (run,) = quick_run
    epochs = pd.read_csv(run / "epochs.csv")
    assert len(epochs) == 3
    for col in ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                "epoch_time_s", "images_per_s"):
        assert epochs[col].notna().all(), col
    assert (epochs["images_per_s"] > 0).all()


def test_sweep_figure_is_written(quick_run):
    _, (run,) = quick_run
    assert (run / "sweep.png").read_bytes().startswith(b"\x89PNG")


def test_summaries_and_best(quick_run):
    _, (run,) = quick_run
    for key in ("epochs", "batch_size", "lr"):
        table = pd.read_csv(run / f"summary_by_{key}.csv")
        assert {"mean", "std", "max", "count"} <= set(table.columns) and table["count"].sum() == 3
    best = json.loads((run / "best.json").read_text())
    trials = pd.read_csv(run / "trials.csv")
    chosen = trials[trials["trial_id"].astype(str) == best["trial_id"]].iloc[0]
    assert best["val_accuracy"] == pytest.approx(chosen["val_accuracy"])
    assert best["test_images"] == 500
    assert set(best["config"]) == {"epochs", "batch_size", "lr"}
    assert not Path(best["checkpoint"]).is_absolute() and (run / best["checkpoint"]).is_dir()
    # tested by a Ray worker on the trials' kind of device, not by the driver
    status = json.loads((run / "status.json").read_text())
    assert best["test_pid"] != status["driver"]["pid"] and best["test_device"] == "cpu"
    # the test set was looked at once, for the chosen trial, and both files say so
    assert best["test_set_uses"] == status["test_set_uses"] == {"count": 1, "trials": [best["trial_id"]]}
    (look,) = [json.loads(line) for line in (run / "test_set.jsonl").read_text().splitlines()]
    assert look["trial_id"] == best["trial_id"]  # written before the look, counted from
    assert status["trials"]["planned"] == 3
    # the spec's own settings (epochs 1, batch 32, lr 1e-3) ran as a trial; best.json says what
    # tuning gained over them, on validation, where the choice was made (on the means over both
    # seeds when they were confirmed too)
    default = best["default_trial"]
    assert default["config"] == {"epochs": 1, "batch_size": 32, "lr": 1e-3}
    row = trials[trials["trial_id"].astype(str) == default["trial_id"]].iloc[0]
    assert row["batch_size"] == 32 and row["lr"] == pytest.approx(1e-3)
    means = {c["trial_id"]: c["mean"] for c in best["selection"]["candidates"]}
    expected = (means[best["trial_id"]] - means[default["trial_id"]]
                if default["trial_id"] in means else best["val_accuracy"] - row["val_accuracy"])
    assert best["gain_vs_default"] == pytest.approx(expected)
    assert best["gain_vs_default"] >= 0  # the choice is never worse than the spec's own settings


def test_the_top_two_configs_were_confirmed_on_another_seed(quick_run):
    """search.confirm_top_k=2: the two best configs trained again with seed 1; the choice is the
    best mean over both seeds, and best.json says what one seed would have chosen."""
    proc, (run,) = quick_run
    best = json.loads((run / "best.json").read_text())
    trials = pd.read_csv(run / "trials.csv", dtype={"trial_id": str})
    selection = best["selection"]
    assert selection["confirm_top_k"] == 2 and best["trial_id"] == selection["chosen"]
    top2 = trials.sort_values("val_accuracy", ascending=False)["trial_id"].tolist()[:2]
    assert [c["trial_id"] for c in selection["candidates"]] == top2
    assert selection["first_choice"] == top2[0]
    confirmed = pd.read_csv(run / "confirm.csv")
    assert len(confirmed) == 2 and (confirmed["status"] == "finished").all()
    assert (confirmed["train.seed"] == 1).all()  # one fresh seed: the search trained with 0
    for c in selection["candidates"]:
        assert len(c["scores"]) == 2 and c["mean"] == pytest.approx(sum(c["scores"]) / 2)
        assert c["scores"][1] in confirmed["val_accuracy"].tolist()
    means = {c["trial_id"]: c["mean"] for c in selection["candidates"]}
    assert means[best["trial_id"]] == max(means.values())
    mine = next(c for c in selection["candidates"] if c["trial_id"] == best["trial_id"])
    assert selection["regret"] == pytest.approx(mine["scores"][0] - mine["mean"])
    status = json.loads((run / "status.json").read_text())
    assert status["cost"]["trials"] == 5  # the confirming runs are counted
    assert "selection: the top 2 configs trained again with another seed" in proc.stdout
    assert not list(run.glob("trials-confirm/*/checkpoint_*"))  # never the model: deleted


def test_only_the_chosen_trials_checkpoint_is_kept(quick_run):
    """run.keep_checkpoints: best (the default): the others are deleted once the sweep finished."""
    _, (run,) = quick_run
    best = json.loads((run / "best.json").read_text())
    left = sorted(run.glob("trials/*/checkpoint_*"))
    assert left == [run / best["checkpoint"]]
    epochs = pd.read_csv(run / "epochs.csv")
    assert (epochs["checkpoint_bytes"] > 40e6).all()  # ResNet-18 and its Adam state, every epoch


def test_spec_yaml_records_provenance_and_reruns(quick_run, tmp_path):
    _, (run,) = quick_run
    record = yaml.safe_load((run / "spec.yaml").read_text())
    assert record["data"]["train_subset"] == 700
    assert record["provenance"]["weights"].startswith("none (fallback")
    assert set(record["provenance"]["versions"]) >= {"torch", "ray", "hyperopt"}
    proc = run_cli(str(run / "spec.yaml"), "--dry-run", tmp_path=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr


def quick_sweep(tmp_path, *overrides: str, **env: str):
    """The quick sweep on a small subset with these --set overrides (and environment variables);
    it must exit 0. Its run dir."""
    results = tmp_path / "results"
    sets = [arg for item in overrides for arg in ("--set", item)]
    proc = run_cli(*QUICK, "--results", str(results), *sets, tmp_path=tmp_path, **env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = list(results.glob("*/*"))
    return run


def test_a_diverging_trial_is_recorded_and_the_sweep_goes_on(tmp_path):
    run = quick_sweep(
        tmp_path, "train.optimizer=sgd", "search.num_samples=2", "search.n_initial_points=1",
        "search.parameters={lr: {choice: [1.0e+4, 1.0e-2]}, epochs: {choice: [2]}}",
        "search.points_to_evaluate=[{lr: 1.0e+4, epochs: 2}, {lr: 1.0e-2, epochs: 2}]",
    )
    trials = pd.read_csv(run / "trials.csv").set_index("lr")
    assert trials.loc[1e4, "status"] == "error"
    assert "loss became nan in epoch 1" in trials.loc[1e4, "error"]
    assert trials.loc[1e4, "epochs_completed"] == 1  # stopped at once, not retried or trained on
    assert trials.loc[1e-2, "status"] == "finished"
    best = json.loads((run / "best.json").read_text())
    assert best["config"]["lr"] == 1e-2  # the diverged trial is never chosen


def test_pretrained_weights_gradual_unfreezing_asha_and_augmentation(tmp_path):
    """Weights from a state_dict file go into every trial, labelled as that file, with the other
    controlled variables that the quick sweep leaves at their defaults. (A file planted under
    torchvision's ImageNet name would be refused: its hash is not ImageNet's; test_model.py covers
    the hub path with a file named by torchvision's rule.)"""
    import torch
    import torchvision

    torch.manual_seed(0)
    weights = tmp_path / "pretrained.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    run = quick_sweep(
        tmp_path, f"model.weights={weights}", "model.conv1=sum", "model.small_input_stem=true",
        "model.freeze=gradual", "model.head_lr_multiplier=10",
        "data.augment={crop_padding: 2, hflip: true}",
        "search.scheduler=asha", "search.num_samples=3", "search.n_initial_points=2",
        "search.parameters={epochs: {choice: [2]}, lr: {loguniform: [1.0e-4, 1.0e-2]}}",
    )
    trials = pd.read_csv(run / "trials.csv")
    assert trials["weights"].str.startswith(f"file {weights} sha256:").all()
    assert set(trials["status"]) <= {"finished", "stopped_early"} and "finished" in set(trials["status"])
    assert trials["lr"].between(1e-4, 1e-2).all()
    spec = yaml.safe_load((run / "spec.yaml").read_text())
    assert spec["model"]["freeze"] == "gradual" and spec["data"]["augment"]["hflip"] is True
    assert json.loads((run / "best.json").read_text())["weights"] == trials["weights"][0]


@pytest.mark.slow
def test_compiled_training_steps(tmp_path):
    """train.compile: trials train through torch.compile (its cache fills), checkpoint after each
    epoch, and the chosen one's checkpoint loads into a plain model for the test evaluation."""
    inductor = tmp_path / "inductor"
    # 712 images: 640 train, 10 batches of 64, so it compiles once (a short last batch costs a
    # second compile of the same length, docs/performance.md)
    run = quick_sweep(
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
