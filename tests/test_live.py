"""Tables that grow while a real sweep runs (a Ray Tune callback on the driver), through a Ctrl-C and
a --resume that completes it, the costs and report the sweep writes at the end, and two more
trials added to a copy of the finished run (`tuner resume --more`), the original left as it was."""

import json
import os
import shutil
import signal
from pathlib import Path

import pandas as pd
import pytest
from helpers import (CHROMIUM, QUICK, assert_epochs_once, call_logged, call_main, check_in_browser,
                     config_key, images, short_tmpdir, start_cli, stop_group, suggestions, tuner,
                     wait_for)

from tuner.cli import main as tuner_main
from tuner.results import read_json, write_json
from tuner.run import main as run_main
from tuner.specfile import load_spec

pytestmark = pytest.mark.cluster

# Three 2-epoch trials, one at a time. (test_faults.py interrupts a sweep whose trials all exist.)
# Half QUICK's images: the tables, the resume and --more are checked here, not what the trials learn.
SWEEP = [*QUICK, "--set", "search.num_samples=3", "--set", "search.n_initial_points=2",
         "--set", "search.max_concurrent=1", "--set", "search.parameters.epochs={choice: [2]}",
         "--set", "data.train_subset=300", "--set", "data.test_subset=100",
         # every epoch validated, so that the live epochs.csv has a score from the first epoch on
         # (run.validation's default validates where a decision reads it: the last epoch here)
         "--set", "run.validation=every_epoch"]


def live_tables(results, proc):
    """(trials, epochs, status) as a reader sees them now, while the sweep runs; None until the
    sweep has written them. Fails if the sweep has ended: these must be read during it."""
    runs = list(results.glob("*/*/status.json"))
    if not runs or not (runs[0].parent / "trials.csv").exists():
        return None
    run = runs[0].parent
    status = json.loads((run / "status.json").read_text())
    tables = pd.read_csv(run / "trials.csv"), pd.read_csv(run / "epochs.csv")
    assert proc.poll() is None, "the sweep ended: the tables were not read while it ran"
    return (*tables, status, run)


@pytest.mark.slow  # 124 s alone on 2 idle cores (a sweep, its resume and --more)
def test_tables_grow_while_the_sweep_runs_after_resume_and_with_more_trials(tmp_path, capsys,
                                                                          monkeypatch, caplog):
    results = tmp_path / "results"
    proc = start_cli(*SWEEP, "--results", str(results), tmp_path=tmp_path)
    try:
        def reported(n):
            def check():
                got = live_tables(results, proc)
                # each file is replaced whole, but three files are no snapshot: wait for all three
                return (got if got and len(got[1]) >= n and "trials" in got[2]
                        and got[2]["cost"]["trial_epochs"] >= n else None)
            return check

        trials, epochs, status, run = wait_for(reported(1), 300, "a live epochs.csv", proc)
        assert status["state"] == "running" and status["trials"]["planned"] == 3
        assert status["trials"]["running"] + status["trials"]["pending"] >= 1
        assert {"trial_epochs", "device_s", "status"} <= set(trials.columns)
        assert epochs["val_accuracy"].between(0, 1).all()

        # It grows: the first trial ends (2 epochs) before the sweep does.
        def first_finished():
            got = reported(2)()
            return got if got and (got[0]["status"] == "finished").any() else None

        trials, epochs, status, _ = wait_for(first_finished, 300, "the first trial's end", proc)
        first = trials[trials["status"] == "finished"]
        assert len(first) >= 1 and (first["trial_epochs"] == 2).all() and (first["device_s"] > 0).all()
        assert status["trials"]["finished"] >= 1 and status["cost"]["trial_epochs"] >= 2
        kept = first.set_index("trial_id")["val_accuracy"]
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=120) == 130
    finally:
        stop_group(proc)
    partial = json.loads((run / "status.json").read_text())
    assert partial["state"] == "partial" and partial["trials"]["finished"] >= 1
    assert (run / "report.html").exists()  # a partial run gets its report too
    assert f"resume with: python -m tuner.run --resume {run}" in (tmp_path / "cli.log").read_text()
    assert "finished" in set(pd.read_csv(run / "trials.csv")["status"])
    assert not (run / "best.json").exists()  # no look at the test set before the sweep is done

    # --resume: the callback comes back with Ray's saved RunConfig and keeps the ended trials' rows.
    proc = start_cli("--resume", str(run), tmp_path=tmp_path)
    try:
        def resumed():
            got = live_tables(results, proc)
            if not got or got[2]["state"] != "running" or "trials" not in got[2]:
                return None  # run.py's status at the resume has no counts: the callback's has
            trials = got[0].set_index("trial_id")
            return got if set(kept.index) <= set(trials.index) else None

        trials, _, status, _ = wait_for(resumed, 300, "live tables after --resume", proc)
        assert (trials.set_index("trial_id").loc[kept.index, "val_accuracy"] == kept).all()
        assert proc.wait(timeout=400) == 0, (tmp_path / "cli.log").read_text()[-3000:]
    finally:
        stop_group(proc)

    trials = pd.read_csv(run / "trials.csv")
    assert set(trials["status"]) == {"finished"} and (trials["trial_epochs"] == 2).all()
    assert_epochs_once(pd.read_csv(run / "epochs.csv"), trials)  # nothing trained twice or lost
    assert (trials["device_s"] == trials["wall_time_s"]).all()  # 1 CPU per trial, no GPU
    best = json.loads((run / "best.json").read_text())
    status = json.loads((run / "status.json").read_text())
    assert best["cost"] == status["cost"]
    assert best["cost"]["trials"] == 3 and best["cost"]["trial_epochs"] == 6
    assert best["cost"]["device_s"] == round(trials["device_s"].sum(), 1)
    assert 0 < best["cost"]["time_to_best_s"]
    assert status["trials"] == {"finished": 3, "stopped_early": 0, "running": 0, "pending": 0,
                                "error": 0, "planned": 3}
    again = call_main(run_main, ["--resume", str(run)], capsys, monkeypatch, tmp_path)  # in process
    assert again.returncode == 2 and "finished already" in again.stderr
    page = (run / "report.html").read_text()  # written by the sweep at its end
    assert f"test accuracy {best['test_accuracy']:.4f}" in page and len(images(page)) == 3
    if CHROMIUM is not None:
        check_in_browser(run / "report.html", tmp_path)

    # Ten more trials is the most common thing done to a sweep: here two, on a copy of this
    # finished run. A run folder names its trials relative to itself: the copy's new trials leave
    # the original as it was.
    copy = run.with_name(run.name + "-copy")
    shutil.copytree(run, copy, symlinks=True)
    before = snapshot(run)
    more_trials_join_the_run(copy, tmp_path, capsys, monkeypatch)
    assert snapshot(run) == before  # not a file of the original changed, added or deleted
    assert read_json(run / "status.json")["experiment"] == "trials"
    status = read_json(copy / "status.json")
    assert [s["experiment"] for s in status["more"]] == ["trials-more1"]
    assert (copy / "trials-more1").is_dir()
    assert len(pd.read_csv(copy / "trials.csv")) == len(trials) + 2 == 5

    # a status.json that names another run's trials is refused, not followed (the tuner command's
    # main in this process, its log lines counted as stderr's)
    status["experiment"] = str(run / "trials")
    write_json(copy / "status.json", status)
    proc = call_logged(tuner_main, ["resume", copy, "--more", "1"], capsys, monkeypatch, caplog,
                       tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr[-3000:]
    assert "are outside this run folder" in proc.stderr
    assert snapshot(run) == before
    if CHROMIUM is None:
        pytest.skip("the sweep and --more passed; the browser check needs Debian's chromium")


def snapshot(folder: Path) -> dict:
    """Every file under the folder -> the sha256 of its bytes."""
    import hashlib

    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file()}


def more_trials_join_the_run(run: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """`tuner resume RUN --more 2` of a finished run of 3 trials (test_live.py's, 2 epochs each,
    one at a time): 5 trials in the same tables, each epoch once, and the searcher went on from
    the 3 earlier trials."""
    from tuner.resume import session_spec

    before = tmp_path / "before"  # the run as the new session found it: 3 trials
    before.mkdir()
    for name in ("trials.csv", "spec.yaml"):
        shutil.copy(run / name, before / name)
    chosen_first = json.loads((run / "best.json").read_text())["trial_id"]
    ray_tmp = short_tmpdir()
    try:
        more = tuner("resume", str(run), "--more", "2", tmp_path=tmp_path, RAY_TMPDIR=str(ray_tmp))
        assert more.returncode == 0, more.stderr[-3000:]
        assert "the searcher starts from 3 earlier trial(s)" in more.stdout
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)

    trials = pd.read_csv(run / "trials.csv", dtype={"trial_id": str})
    epochs = pd.read_csv(run / "epochs.csv", dtype={"trial_id": str})
    assert len(trials) == 5 and trials["trial_id"].is_unique
    assert (trials["status"] == "finished").all(), trials
    assert_epochs_once(epochs, trials)  # nothing trained twice or lost
    old = set(pd.read_csv(before / "trials.csv", dtype={"trial_id": str})["trial_id"])
    added = trials[~trials["trial_id"].isin(old)]
    assert len(added) == 2

    # The searcher went on from the 3 earlier trials: one new trial (the first; trial ids do not
    # say which) is what a searcher primed with them proposes first (TPE, since 3 >=
    # n_initial_points), not what a fresh one draws. The second follows the first's result: the
    # run trains one trial at a time.
    spec = load_spec(run / "spec.yaml")
    primed = session_spec(spec, before, 2)
    fresh = primed.model_copy(update={"search": primed.search.model_copy(update={"warm_start": []})})
    got = {config_key(r) for r in added.to_dict("records")}
    assert suggestions(primed, 1)[0] in got
    assert suggestions(fresh.model_copy(update={"search": fresh.search.model_copy(
        update={"seed": spec.search.seed + 3})}), 1)[0] not in got  # no evidence: random draws

    status = json.loads((run / "status.json").read_text())
    best = json.loads((run / "best.json").read_text())
    assert status["state"] == "finished"
    assert status["trials"]["finished"] == 5 and status["trials"]["planned"] == 5
    assert status["cost"]["trials"] == 5
    assert status["cost"]["trial_epochs"] == len(epochs) == trials["trial_epochs"].sum()
    assert [s["trials"] for s in status["more"]] == [2]
    assert status["more"][0]["experiment"].endswith("trials-more1")
    uses = best["test_set_uses"]
    assert status["test_set_uses"] == uses
    changed = best["trial_id"] != chosen_first
    assert uses["count"] == (2 if changed else 1)
    assert uses["trials"] == [chosen_first, *([best["trial_id"]] if changed else [])]
    # the chosen checkpoint is named relative to the run folder, whichever experiment holds it
    assert not Path(best["checkpoint"]).is_absolute() and (run / best["checkpoint"]).is_dir()
    assert best["trial_id"] == trials.loc[trials["val_accuracy"].idxmax(), "trial_id"]
    from tuner import report

    page = report.summary(report.load_run(run))  # what report.html shows of the run
    assert (page["trials"], page["trial_epochs"], page["best_trial"]) == (
        5, len(epochs), best["trial_id"])
    assert (run / "report.html").stat().st_mtime >= (run / "trials.csv").stat().st_mtime

    # The run warm-starts a new sweep; its dry run says so, on stdout, with nothing else there.
    plan = call_main(tuner_main, ["run", *QUICK, "--set", "model.weights=none", "--set",
                                  f"search.warm_start=[{run}]", "--dry-run"],
                     capsys, monkeypatch, tmp_path)  # `tuner run ...`, in process
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.startswith("name: ")
    assert f"warm start: 5 finished trial(s) of {run}; TPE starts from them" in plan.stdout
    assert "INFO" not in plan.stdout
    # A finished run with sessions is resumed by tuner resume, never by tuner.run --resume.
    again = call_main(run_main, ["--resume", str(run)], capsys, monkeypatch, tmp_path)
    assert again.returncode == 2 and "tuner resume" in again.stderr
