"""Real sweeps (Ray, an image folder drawn here, random init) of architectures other than
ResNet-18: a MobileNetV3 sweep scored by each trial's best epoch (search.select: best_epoch), then
predict and export on its model; and a sweep that searches model.arch over two architectures."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from helpers import make_image_folder, run_cli

from tuner import export, predict
from tuner.model import model_state
from tuner.results import read_trials

# sweeps/folder-quick.yaml at 32x32 crops from random init, 3 epochs, both trials at once
SMALL = ["sweeps/folder-quick.yaml", "--set", "model.weights=none", "--set", "data.resize=40",
         "--set", "data.image_size=32", "--set", "train.batch_size=16",
         "--set", "model.head_lr_multiplier=1", "--set", "search.n_initial_points=null",
         "--set", "search.searcher=grid", "--set", "search.num_samples=1"]


def sweep(tmp_path, *args: str):
    root = make_image_folder(tmp_path / "imgs", train_per_class=24, test_per_class=8,
                             odd_files=False)
    results = tmp_path / "results"
    proc = run_cli(*SMALL, "--set", f"data.root={root}", "--set", f"data.cache={tmp_path / 'cache'}",
                   "--results", str(results), *args, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = list(results.glob("folder-quick/*"))
    return run, root


@pytest.mark.cluster
@pytest.mark.slow  # two trials of 3 epochs and the test, predict and export: ~40 s
def test_a_mobilenet_sweep_keeps_each_trial_s_best_epoch_then_predicts_and_exports(tmp_path, capsys):
    run, root = sweep(tmp_path, "--set", "model.arch=mobilenet_v3_small",
                      "--set", "search.select=best_epoch", "--set", "train.epochs=3",
                      # a hot lr beside a mild one: curves that need not peak at the last epoch
                      "--set", "search.parameters={lr: {choice: [1.0e-3, 5.0e-2]}}")
    trials = read_trials(run).set_index("trial_id")
    epochs = pd.read_csv(run / "epochs.csv", dtype={"trial_id": str})
    assert len(trials) == 2 and set(trials["status"]) == {"finished"}
    assert epochs["val_accuracy"].notna().all()  # best_epoch validates every epoch
    for trial_id, row in trials.iterrows():
        mine = epochs[epochs["trial_id"] == trial_id].set_index("epoch")
        first_best = int(mine["val_accuracy"].idxmax())  # the first of equals
        assert row["score_epoch"] == first_best, (trial_id, mine["val_accuracy"].tolist())
        assert row["val_accuracy"] == mine.loc[first_best, "val_accuracy"]
        assert row["val_loss"] == mine.loc[first_best, "val_loss"]
        assert row["last_val_accuracy"] == mine.loc[3, "val_accuracy"]
        # what the searcher read: the best so far, at every epoch
        assert list(mine["score"]) == list(mine["val_accuracy"].cummax())
    # the columns every trial shares are said once, in status.json
    raw = pd.read_csv(run / "trials.csv")
    assert "weights" not in raw and "node_id" not in raw and "epochs_planned" in raw
    shared = json.loads((run / "status.json").read_text())["trials_shared"]
    assert shared["weights"] == "none (random init)"

    best = json.loads((run / "best.json").read_text())
    chosen = trials.loc[best["trial_id"]]
    assert best["select"] == "best_epoch" and best["score_epoch"] == chosen["score_epoch"]
    assert best["model_epoch"] == best["score_epoch"] and best["checkpoint_epoch"] == 3
    assert best["val_accuracy"] == chosen["val_accuracy"]
    # the kept checkpoint (the rolling one, epoch 3) holds the best epoch's weights, and they
    # are the model folder's
    state = torch.load(run / best["checkpoint"] / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 3 and state["best"]["epoch"] == best["score_epoch"]
    assert ("model" in state["best"]) == (best["score_epoch"] != 3)
    saved = torch.load(run / "model" / "model.pt", weights_only=True)
    kept = model_state(state)
    assert saved.keys() == kept.keys() and all(torch.equal(saved[k], kept[k].float()) for k in saved)
    card = json.loads((run / "model" / "model.json").read_text())
    assert card["architecture"]["arch"] == "mobilenet_v3_small"

    # predict on the sweep's own test images gives the test accuracy of the model tested
    out = tmp_path / "test.csv"
    assert predict.main([str(run), str(root / "test"), "--out", str(out)]) == 0
    rows = pd.read_csv(out)
    assert len(rows) == best["test_images"] == 24
    assert (rows["label"] == rows["predicted"]).mean() == best["test_accuracy"]
    assert export.main([str(run), "--format", "torchscript"]) == 0
    assert "(tolerance 0.0001): OK" in capsys.readouterr().out
    traced = torch.jit.load(str(run / "model" / "model.torchscript.pt"))
    assert traced(torch.randn(2, 3, 32, 32)).shape == (2, 3)


@pytest.mark.cluster
@pytest.mark.slow  # a dry run, then one trial per arch (one epoch), the test and predict: ~40 s
def test_a_sweep_searches_the_arch(tmp_path):
    space = "search.parameters={model.arch: {choice: [mobilenet_v3_small, efficientnet_b0]}}"
    root = make_image_folder(tmp_path / "imgs", train_per_class=24, test_per_class=8,
                             odd_files=False)
    dry = run_cli(*SMALL, "--set", f"data.root={root}", "--set", f"data.cache={tmp_path / 'cache'}",
                  "--set", space, "--dry-run",
                  tmp_path=tmp_path)
    assert dry.returncode == 0, dry.stderr[-3000:]
    for arch in ("mobilenet_v3_small (mobilenet_v3)", "efficientnet_b0 (efficientnet)"):
        assert arch in dry.stdout  # each arch's stages, as freeze policies see them
    run, root = sweep(tmp_path, "--set", space, "--set", "train.epochs=1")
    trials = read_trials(run)
    assert sorted(trials["model.arch"]) == ["efficientnet_b0", "mobilenet_v3_small"]
    assert set(trials["status"]) == {"finished"}
    best = json.loads((run / "best.json").read_text())
    chosen = trials.set_index("trial_id").loc[best["trial_id"]]
    card = json.loads((run / "model" / "model.json").read_text())
    assert card["architecture"]["arch"] == chosen["model.arch"] == best["config"]["model.arch"]
    out = tmp_path / "test.csv"
    assert predict.main([str(run), str(root / "test"), "--out", str(out)]) == 0
    rows = pd.read_csv(out)
    assert (rows["label"] == rows["predicted"]).mean() == best["test_accuracy"]
