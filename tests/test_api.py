"""tuner from Python (tuner.api): `tuner.load` and `tuner.run_sweep` on a real sweep, in process."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import ROOT, needs_fashion
from PIL import Image

import tuner
from tuner.errors import InputError

QUICK = str(ROOT / "sweeps" / "fashion-quick.yaml")


def test_import_tuner_stays_instant():
    """`import tuner` loads neither pandas nor torch nor Ray: the CLI's --help stays fast."""
    code = "import sys, tuner; print(sorted(m for m in ('pandas', 'torch', 'ray') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def test_run_sweep_refuses_bad_input_before_anything_runs(tmp_path):
    with pytest.raises(InputError, match="train.lr"):
        tuner.run_sweep(QUICK, {"train.lr": -1}, results=tmp_path / "res")
    assert not (tmp_path / "res").exists()
    with pytest.raises(InputError):
        tuner.load(tmp_path)  # not a run folder


@needs_fashion
@pytest.mark.cluster
def test_a_sweep_run_and_read_from_python(tmp_path):
    run = tuner.run_sweep(QUICK, {"data.train_subset": 300, "data.test_subset": 100,
                                  "model.weights": "none", "search.num_samples": 2,
                                  "search.n_initial_points": 1, "search.confirm_top_k": 1,
                                  "search.parameters": {"epochs": {"choice": [1]},
                                                        "lr": {"choice": [1.0e-3, 5.0e-4]}},
                                  # two configs (the first: the spec's own settings)
                                  "search.points_to_evaluate": [{"epochs": 1, "lr": 1.0e-3},
                                                                {"epochs": 1, "lr": 5.0e-4}]},
                          results=tmp_path / "res")
    assert run.state == "finished" and run.path.parent == tmp_path / "res" / "fashion-quick"
    assert len(run.trials) == 2 and len(run.epochs) == 2
    assert run.best["trial_id"] in set(run.trials["trial_id"])
    assert set(run.best["config"]) == {"epochs", "lr"}
    # the spec's own settings (lr 1e-3) were a trial, and best.json says what tuning gained
    own = run.trials.set_index("trial_id").loc[run.best["default_trial"]["trial_id"]]
    assert own["lr"] == pytest.approx(1e-3) and run.best["gain_vs_default"] >= 0
    # search.confirm_top_k=1: the best config trained again with seed 1; the other one too (a
    # challenger, same seed) if its one score beats that mean; the choice on the means
    selection = run.best["selection"]
    assert run.best["trial_id"] == selection["chosen"]
    ranked = run.trials.sort_values("val_accuracy", ascending=False, kind="stable")
    top, other = ranked.iloc[0], ranked.iloc[1]
    confirmed = pd.read_csv(run.path / "confirm.csv")
    assert (confirmed["train.seed"] == 1).all()
    first = selection["candidates"][0]
    assert first["trial_id"] == top["trial_id"] == selection["first_choice"]
    challenged = other["val_accuracy"] > first["mean"]
    print(f"top {first['scores']}, runner-up {other['val_accuracy']}: challenged {challenged}")
    assert len(confirmed) == selection["confirm_top_k"] == 1 + challenged
    assert ("confirm_more" in run.status) == challenged
    for c in selection["candidates"]:
        assert len(c["scores"]) == 2 and c["mean"] == pytest.approx(sum(c["scores"]) / 2)
        assert c["scores"][1] in confirmed["val_accuracy"].tolist()
    means = {c["trial_id"]: c["mean"] for c in selection["candidates"]}
    assert means[run.best["trial_id"]] == max(means.values())
    mine = means[run.best["trial_id"]]
    chosen = next(c for c in selection["candidates"] if c["trial_id"] == run.best["trial_id"])
    assert selection["regret"] == pytest.approx(chosen["scores"][0] - mine)
    assert run.status["cost"]["trials"] == 2 + len(confirmed)  # the confirming runs are counted
    assert not list(run.path.glob("trials-confirm*/*/checkpoint_*"))  # never the model: deleted
    assert (run.path / "split.npz").is_file()  # what a run starting from this one checks
    again = tuner.load(run.path)
    assert again.best == run.best and again.trials.equals(run.trials)
    # the chosen model, built from its card, as predict and export build it
    model = run.model()
    assert not model.training
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    card = run.card()
    assert card["classes"][0] == "T-shirt/top"
    # the card alone says how to call the model: its input and output, its first and last layers
    assert card["input"]["shape"] == [None, 1, 28, 28] and card["input"]["layout"] == "NCHW"
    assert card["output"]["shape"] == [None, 10] and card["output"]["kind"].startswith("logits")
    state = model.state_dict()
    assert [list(state[k].shape) for k in card["layers"]] == list(card["layers"].values())
    # readable tables: the trials' ranks, the lr each epoch ended at (constant schedule)
    assert sorted(run.trials["rank"].tolist()) in ([1, 2], [1, 1])
    by_trial = run.trials.set_index("trial_id")["lr"]
    assert (run.epochs["learning_rate"] == run.epochs["trial_id"].map(by_trial)).all()
    # predict image files and a folder, with a file that is not an image among them
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(pictures / f"{i}.png")
    (pictures / "notes.txt").write_text("not an image")
    (pictures / "bad.png").write_bytes(b"not an image either")
    rows = run.predict([pictures])
    assert len(rows) == 4  # notes.txt is left out, as training leaves it out
    read = rows.dropna(subset=["predicted"])
    assert len(read) == 3 and read["predicted"].isin(run.card()["classes"]).all()
    assert rows.loc[rows["path"].str.endswith("bad.png"), "error"].notna().all()
