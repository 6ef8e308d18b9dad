"""What the report says about uncertainty and about which searched values mattered."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tuner.importance import MIN_TRIALS, importances
from tuner.results import accuracy_interval
from tuner.specfile import validate

SPACE = {"lr": {"loguniform": [1e-4, 1e-2]}, "batch_size": {"choice": [32, 64, 128]},
         "optimizer": {"choice": ["adam", "sgd"]}}


def test_an_accuracy_on_n_images_has_a_binomial_interval_that_narrows_with_n():
    low, high = accuracy_interval(0.5, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)  # Wilson
    for acc, n in ((0.9, 800), (0.9144, 10_000), (1.0, 50), (0.0, 50)):
        low, high = accuracy_interval(acc, n)
        assert 0 <= low <= acc <= high <= 1
    assert np.diff(accuracy_interval(0.9, 10_000)) < np.diff(accuracy_interval(0.9, 800)) / 3


def trials(n: int, seed: int = 0) -> pd.DataFrame:
    """Trials as trials.csv has them: the score is driven by lr alone; the batch size and the
    optimizer are noise. Choices come back from a CSV as strings or floats."""
    rng = np.random.default_rng(seed)
    lr = 10 ** rng.uniform(-4, -2, n)
    return pd.DataFrame({
        "trial_id": [f"t{i}" for i in range(n)], "status": ["finished"] * (n - 1) + ["error"],
        "lr": lr, "batch_size": rng.choice([32.0, 64.0, 128.0], n),
        "optimizer": rng.choice(["adam", "sgd"], n),
        "val_accuracy": 0.9 - 0.1 * np.abs(np.log10(lr) + 3) + rng.normal(0, 0.002, n)})


def test_the_parameter_that_drives_the_score_is_the_most_important():
    spec = validate({"search": {"parameters": SPACE, "num_samples": 20}})
    table = importances(trials(20), spec)
    assert list(table["parameter"])[0] == "lr" and set(table["parameter"]) == set(SPACE)
    assert table["importance"].sum() == pytest.approx(1.0)
    assert table.set_index("parameter")["importance"]["lr"] > 0.5
    assert (table["trials"] == 19).all()  # the failed trial does not count


def test_no_importance_from_too_few_trials_or_nothing_searched():
    spec = validate({"search": {"parameters": SPACE}})
    assert importances(trials(MIN_TRIALS), spec) is None  # one of them failed: MIN_TRIALS - 1 left
    assert importances(trials(MIN_TRIALS + 1), spec) is not None
    assert importances(trials(10), validate({})) is None


def test_the_report_of_a_finished_sweep_gives_intervals_and_importance(quick_sweep, tmp_path):
    from tuner.report import main

    run = quick_sweep.run
    best = json.loads((run / "best.json").read_text())
    assert best["val_images"] > 0
    assert main([str(run), "--out", str(tmp_path / "report.html")]) == 0
    page = (tmp_path / "report.html").read_text()
    low, high = accuracy_interval(best["test_accuracy"], best["test_images"])
    assert f"test [{low:.4f}, {high:.4f}] (95%, {best['test_images']} images)" in page
    low, high = accuracy_interval(best["val_accuracy"], best["val_images"])
    assert f"validation [{low:.4f}, {high:.4f}]" in page
    table = pd.read_csv(run / "trials.csv")
    scored = table["status"].isin(["finished", "stopped_early"]).sum()
    # the quick sweep's diverging trial is an error: 3 scored of 4, too few for an importance
    assert ("Which searched values mattered" in page) == (scored >= MIN_TRIALS)
