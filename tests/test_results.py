"""Results aggregation from a known set of reports, and the run directory's files."""

import json
import threading

import pandas as pd
import pytest

from tuner.results import (
    TrialRecord,
    best_trial,
    epochs_table,
    new_run_dir,
    summary_tables,
    top_trials,
    trials_table,
    write_csv,
    write_json,
)
from tuner.spec import Spec


@pytest.fixture
def spec() -> Spec:
    return Spec.model_validate({"search": {"num_samples": 4, "parameters": {
        "epochs": {"choice": [1, 2]},
        "batch_size": {"choice": [32, 64]},
        "lr": {"uniform": [1e-4, 1e-3]},
    }}})


def report(epoch, val_acc, val_loss, **extra):
    return {"epoch": epoch, "train_loss": 1.0, "train_accuracy": 0.5, "val_loss": val_loss,
            "val_accuracy": val_acc, "epoch_time_s": 10.0, "images_per_s": 100.0,
            "time_total_s": 10.0 * epoch,
            "node_ip": "127.0.0.1", "done": False, "hostname": "x", **extra}


@pytest.fixture
def records():
    return [
        TrialRecord("a", {"epochs": 2, "batch_size": 32, "lr": 2e-4},
                    [report(1, 0.80, 0.6), report(2, 0.78, 0.65)]),  # last is worse than best
        TrialRecord("b", {"epochs": 2, "batch_size": 64, "lr": 9e-4},
                    [report(1, 0.70, 0.9), report(2, 0.85, 0.4)]),
        TrialRecord("c", {"epochs": 1, "batch_size": 64, "lr": 5e-4}, [report(1, 0.95, 0.2)],
                    error="OutOfMemoryError: CUDA out of memory"),
        TrialRecord("d", {"epochs": 2, "batch_size": 32, "lr": 8e-4},
                    [report(1, 0.10, float("nan"), error="loss became nan in epoch 1")]),
    ]


def test_trials_table(records, spec):
    t = trials_table(records, spec, weights="none (random init)").set_index("trial_id")
    assert list(t["status"]) == ["finished", "finished", "error", "error"]
    assert t.loc["a", "val_accuracy"] == 0.78 and t.loc["a", "best_val_accuracy"] == 0.80
    assert t.loc["b", "best_val_loss"] == 0.4
    assert t.loc["c", "error"].startswith("OutOfMemoryError")
    assert "nan" in t.loc["d", "error"]
    assert t.loc["a", "epochs_completed"] == 2 and t.loc["a", "wall_time_s"] == 20.0
    assert (t["weights"] == "none (random init)").all()
    assert {"epochs", "batch_size", "lr", "node_ip"} <= set(t.columns)


def test_stopped_early_or_unfinished_status(spec):
    rec = TrialRecord("e", {"epochs": 2, "batch_size": 32, "lr": 2e-4}, [report(1, 0.5, 1.0)])
    assert trials_table([rec], spec, "w")["status"].item() == "stopped_early"
    assert trials_table([rec], spec, "w", interrupted=True)["status"].item() == "unfinished"
    never = TrialRecord("f", {}, [])
    assert trials_table([never], spec, "w", interrupted=True)["status"].item() == "unfinished"


def test_epochs_table_keeps_every_report_without_ray_bookkeeping(records):
    e = epochs_table(records)
    assert len(e) == 6
    assert list(e[e.trial_id == "b"]["val_accuracy"]) == [0.70, 0.85]
    assert "done" not in e and "hostname" not in e
    assert {"trial_id", "epoch", "lr", "batch_size", "images_per_s"} <= set(e.columns)


def test_best_is_chosen_on_validation_among_trials_that_did_not_fail(records, spec):
    t = trials_table(records, spec, "w")
    assert best_trial(t, spec)["trial_id"] == "b"  # c scored higher but failed
    minimise = spec.model_copy(update={"search": spec.search.model_copy(
        update={"metric": "val_loss", "mode": "min"})})
    assert best_trial(t, minimise)["trial_id"] == "b"
    assert top_trials(t, spec, n=2)["trial_id"].tolist() == ["c", "b"]


def test_interrupted_before_any_trial(spec):
    trials = trials_table([], spec, "w", interrupted=True)
    assert trials.empty and {"status", "lr"} <= set(trials.columns)
    assert best_trial(trials, spec) is None and summary_tables(trials, spec) == {}


def test_no_trial_finished(spec):
    rec = TrialRecord("x", {"epochs": 1, "batch_size": 32, "lr": 2e-4}, [], error="boom")
    assert best_trial(trials_table([rec], spec, "w"), spec) is None


def test_summary_tables(records, spec):
    s = summary_tables(trials_table(records, spec, "w"), spec)
    assert set(s) == {"epochs", "batch_size", "lr"}
    by_batch = s["batch_size"].set_index("batch_size")
    assert by_batch.loc[32, "count"] == 1 and by_batch.loc[64, "max"] == 0.85
    assert by_batch.loc[32, "mean"] == pytest.approx(0.78)
    lr = s["lr"]
    # 4 equal bins over [1e-4, 1e-3]; the failed trials (5e-4, 8e-4) are left out
    assert lr["lr"].tolist() == ["[0.0001, 0.000325]", "[0.000775, 0.001]"]
    assert lr["count"].tolist() == [1, 1] and lr["max"].tolist() == [0.78, 0.85]


def test_files_are_written_whole(tmp_path):
    write_csv(tmp_path / "t.csv", pd.DataFrame({"a": [1, 2]}))
    write_json(tmp_path / "b.json", {"x": 1.5})
    assert pd.read_csv(tmp_path / "t.csv")["a"].tolist() == [1, 2]
    assert json.loads((tmp_path / "b.json").read_text()) == {"x": 1.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "t.csv"]  # no temp files left


def test_run_dirs_never_collide(tmp_path):
    made = []
    threads = [threading.Thread(target=lambda: made.append(new_run_dir(tmp_path, "s")))
               for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 20 and all(p.is_dir() and p.parent.name == "s" for p in made)


def test_sweep_figure(records, spec, tmp_path):
    import matplotlib.image

    from tuner.plots import PANEL_INCHES, plot_sweep

    trials = trials_table(records, spec, weights="none (random init)")
    path = tmp_path / "sweep.png"
    assert plot_sweep(epochs_table(records), trials, spec, path)
    image = matplotlib.image.imread(path)
    # one panel of curves, then one per searched parameter (3), at 100 dpi
    assert image.shape[:2] == (round(PANEL_INCHES[1] * 100), round(PANEL_INCHES[0] * 4 * 100))
    assert image[..., :3].std() > 0.05  # something was drawn
    assert not list(tmp_path.glob(".sweep.png.*"))  # written atomically: no temp file left


def test_no_figure_without_reports(spec, tmp_path):
    from tuner.plots import plot_sweep

    empty = trials_table([], spec, weights="none")
    assert not plot_sweep(epochs_table([]), empty, spec, tmp_path / "sweep.png")
    assert not (tmp_path / "sweep.png").exists()
