"""Results aggregation from a known set of reports, and the run directory's files."""

import json
import threading

import pandas as pd
import pytest

from tuner.results import (
    TrialRecord,
    best_so_far,
    best_trial,
    cost_totals,
    epochs_table,
    new_run_dir,
    summary_tables,
    sweep_seconds,
    time_to_best,
    top_trials,
    trial_counts,
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
            "time_total_s": 10.0 * epoch, "timestamp": 1_796_000_000 + 10 * epoch,
            "training_iteration": epoch,
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
    # when each trial ran, in UTC: from its first report's time less its running time, to its last
    assert t["started"].notna().all() and t["started"].str.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$").all()
    assert t.loc["a", "started"] == "2026-11-30T00:53:20+00:00"  # 1,796,000,000: its first report less 10 s
    assert t.loc["a", "ended"] == "2026-11-30T00:53:40+00:00"  # its last report
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
    # when each report came, in ISO 8601 (UTC); Ray's report counter, the epoch again, is left out
    assert e[e.trial_id == "b"]["time"].tolist() == ["2026-11-30T00:53:30+00:00", "2026-11-30T00:53:40+00:00"]
    assert "training_iteration" not in e


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
    # the columns name the metric they summarise
    assert list(by_batch.columns) == ["val_accuracy_mean", "val_accuracy_std", "val_accuracy_max", "trials"]
    assert by_batch.loc[32, "trials"] == 1 and by_batch.loc[64, "val_accuracy_max"] == 0.85
    assert by_batch.loc[32, "val_accuracy_mean"] == pytest.approx(0.78)
    lr = s["lr"]
    # 4 equal bins over [1e-4, 1e-3]; the failed trials (5e-4, 8e-4) are left out
    assert lr["lr"].tolist() == ["[0.0001, 0.000325]", "[0.000775, 0.001]"]
    assert lr["trials"].tolist() == [1, 1] and lr["val_accuracy_max"].tolist() == [0.78, 0.85]


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


# --- costs, live states and sweep time --------------------------------------------------------


def test_costs_count_a_retried_epoch_once_and_use_gpus_else_cpus(spec):
    # epoch 2 reported twice (a retry after the driver lost the first report): trained once
    rec = TrialRecord("r", {"epochs": 2, "batch_size": 32, "lr": 2e-4},
                      [report(1, 0.5, 1.0), report(2, 0.6, 0.9), report(2, 0.6, 0.9, time_total_s=25.0)])
    cpu = trials_table([rec], spec, "w").iloc[0]
    assert cpu["trial_epochs"] == 2 and cpu["epochs_completed"] == 2
    assert cpu["wall_time_s"] == 25.0 and cpu["device_s"] == 25.0  # 1 CPU by default
    two_cpus = spec.model_copy(update={"resources": spec.resources.model_copy(update={"cpu": 2.0})})
    assert trials_table([rec], two_cpus, "w").iloc[0]["device_s"] == 50.0
    quarter_gpu = spec.model_copy(update={"resources": spec.resources.model_copy(
        update={"cpu": 4.0, "gpu": 0.25})})
    assert trials_table([rec], quarter_gpu, "w").iloc[0]["device_s"] == 6.25  # GPUs, not CPUs
    assert "stopped_at_epoch" not in cpu  # FIFO: no rung column


def test_asha_records_where_trials_stopped(records, spec):
    asha = spec.model_copy(update={"search": spec.search.model_copy(update={"scheduler": "asha"})})
    early = TrialRecord("e", {"epochs": 2, "batch_size": 32, "lr": 2e-4}, [report(1, 0.5, 1.0)])
    t = trials_table([*records, early], asha, "w").set_index("trial_id")
    assert t.loc["e", "status"] == "stopped_early" and t.loc["e", "stopped_at_epoch"] == 1
    assert t["stopped_at_epoch"].drop("e").isna().all()  # finished or failed: not stopped
    assert str(t["stopped_at_epoch"].dtype) == "Int64"  # written as 1, not 1.0


def test_cost_totals_and_counts_with_live_states(records, spec):
    running = TrialRecord("r", {"epochs": 2, "batch_size": 32, "lr": 2e-4}, [report(1, 0.5, 1.0)],
                          state="running")
    pending = TrialRecord("p", {"epochs": 2, "batch_size": 32, "lr": 3e-4}, [], state="pending")
    t = trials_table([*records, running, pending], spec, "w")
    assert t.set_index("trial_id").loc[["r", "p"], "status"].tolist() == ["running", "pending"]
    assert trial_counts(t, planned=8) == {"finished": 2, "stopped_early": 0, "running": 1,
                                          "pending": 1, "error": 2, "planned": 8}
    # a, b: 2 epochs each; c, d, r: 1 each; p: none. 10 s per epoch on 1 CPU.
    assert cost_totals(t) == {"trials": 6, "trial_epochs": 7, "device_s": 70.0}
    assert cost_totals(trials_table([], spec, "w")) == {"trials": 0, "trial_epochs": 0,
                                                        "device_s": 0.0}


def timed(epoch, val_acc, start, **extra):
    """A report of a trial that started at `start` (unix s) and trains 10 s per epoch."""
    return report(epoch, val_acc, 1.0, timestamp=start + 10 * epoch, time_total_s=10.0 * epoch,
                  **extra)


def test_sweep_time_best_so_far_and_time_to_best(spec):
    t0 = 1_800_000_000
    recs = [
        TrialRecord("a", {"epochs": 2, "batch_size": 32, "lr": 2e-4},
                    [timed(1, 0.70, t0), timed(2, 0.60, t0)]),  # best early, worse at the end
        TrialRecord("b", {"epochs": 2, "batch_size": 64, "lr": 9e-4},
                    [timed(1, 0.80, t0 + 5), timed(2, 0.80, t0 + 5)]),  # reaches its final at once
        TrialRecord("c", {"epochs": 2, "batch_size": 64, "lr": 5e-4},
                    [timed(1, 0.99, t0 + 30, error="loss became nan in epoch 1")]),  # failed: ignored
    ]
    epochs, trials = epochs_table(recs), trials_table(recs, spec, "w")
    assert sweep_seconds(epochs).tolist() == [10, 20, 15, 25, 40]  # from a's start at t0
    best = best_so_far(epochs, spec)
    assert best["sweep_s"].tolist() == [10, 15] and best["val_accuracy"].tolist() == [0.70, 0.80]
    assert best["trial_id"].tolist() == ["a", "b"]
    assert best_trial(trials, spec)["trial_id"] == "b"
    assert time_to_best(epochs, trials, spec) == 15.0  # b's first epoch already had its final 0.80
    assert time_to_best(epochs.iloc[:0], trials.iloc[:0], spec) is None


def test_each_look_at_the_test_set_is_counted_before_it_is_made(tmp_path):
    """The ledger is written before each test: a driver that dies after testing but before
    recording the result has the look counted, and a resume that tests again counts twice."""
    from tuner.results import record_test_use, test_set_uses
    from tuner.rundir import TEST_LEDGER

    assert test_set_uses(tmp_path) == {"count": 0, "trials": []}
    record_test_use(tmp_path, "t1", "the chosen trial")
    record_test_use(tmp_path, "t1", "the chosen trial")  # resumed after a crash: tested again
    with open(tmp_path / TEST_LEDGER, "a") as f:
        f.write('{"trial_id": "t2"')  # cut short by a crash mid-write: not a look
    assert test_set_uses(tmp_path) == {"count": 2, "trials": ["t1", "t1"]}
    # a run from before the ledger: its best.json's record, or its one chosen trial
    old = tmp_path / "old"
    old.mkdir()
    (old / "best.json").write_text('{"trial_id": "a1"}')
    assert test_set_uses(old) == {"count": 1, "trials": ["a1"]}
