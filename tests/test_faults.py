"""Sweeps that survive: a killed trial worker, an interrupted driver, a killed driver, and resume.
(Ctrl-C and the --resume that completes the sweep: test_live.py, with the live tables; a killed
trial worker whose retry goes on from its checkpoint: test_recipe_e2e.py, with the schedule's state.)

Every test runs the real CLI on real data with an embedded Ray, and ends only what it started.
"""

import json
import os
import shutil
import signal

import pandas as pd
import pytest
from helpers import (QUICK, assert_epochs_once, call_main, processes_using, reports, run_cli, short_tmpdir,
                     start_cli, stop_group, wait_for)

# Three 2-epoch trials, one at a time: there is always a finished and an unfinished trial to check.
THREE_TRIALS = [*QUICK, "--set", "search.num_samples=3", "--set", "search.n_initial_points=2",
                "--set", "search.max_concurrent=1", "--set", "search.parameters.epochs={choice: [2]}"]


def run_dir_of(results_root):
    (run,) = list(results_root.glob("*/*/status.json"))
    return run.parent


@pytest.mark.slow  # a sweep with a killed worker: ~30 s alone on 2 idle cores
@pytest.mark.cluster
def test_a_trial_that_fails_for_good_ends_and_the_sweep_finishes(tmp_path):
    """run.max_failures: 0 and one trial's worker killed (the OOM killer, a lost node): that trial
    errors, the others run, and the sweep has finished, not been interrupted: exit 0, the error in
    trials.csv, the best of the others chosen and tested.

    Under ASHA with run.checkpoint_every above its rung (epoch 1), every trial still checkpoints
    the rung's epoch, where ASHA may stop it, and the chosen trial is tested on the checkpoint of the
    epoch it reported."""
    results = tmp_path / "results"
    # two at a time (2 cores): the others need not wait for each other
    proc = start_cli(*THREE_TRIALS, "--results", str(results), "--set", "run.max_failures=0",
                     "--set", "search.scheduler=asha", "--set", "search.grace_period=1",
                     "--set", "run.checkpoint_every=5", "--set", "search.max_concurrent=2",
                     tmp_path=tmp_path)
    try:
        first = wait_for(lambda: [r for r in reports(results) if r["epoch"] == 1], 300,
                         "the first epoch's report", proc)[0]
        os.kill(first["pid"], signal.SIGKILL)
        assert proc.wait(timeout=400) == 0, (tmp_path / "cli.log").read_text()[-3000:]
    finally:
        stop_group(proc)
    run = run_dir_of(results)
    trials = pd.read_csv(run / "trials.csv").set_index("trial_id")
    epochs = pd.read_csv(run / "epochs.csv")
    assert len(trials) == 3
    assert trials.loc[first["trial_id"], "status"] == "error"
    assert "killed" in trials.loc[first["trial_id"], "error"]  # Ray: "the process was killed by"
    others = trials.drop(first["trial_id"])
    assert set(others["status"]) <= {"finished", "stopped_early"}
    best = json.loads((run / "best.json").read_text())
    assert best["trial_id"] in others.index and 0 <= best["test_accuracy"] <= 1
    assert best["checkpoint_epoch"] == best["epochs_completed"]
    assert (epochs[epochs.epoch == 1]["checkpoint_bytes"] > 0).all()  # ASHA's rung, every trial
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished" and status["trials"]["error"] == 1
    assert "interrupted" not in (tmp_path / "cli.log").read_text()


@pytest.mark.slow  # a sweep stopped by SIGTERM: ~25 s alone
@pytest.mark.cluster
def test_sigterm_stops_like_ctrl_c_and_a_live_run_cannot_be_resumed_twice(tmp_path, capsys,
                                                                          monkeypatch):
    """`kill PID` (docker stop, Kubernetes, Slurm): partial tables, the resume command, exit 143,
    and no Ray process left. While the driver lives, a second driver's --resume is refused.

    Both trials exist and run when the signal comes, so only the state Tune saved can tell that the
    sweep did not finish (its clean-up marks stopped trials TERMINATED, like finished ones): nothing
    may be tested or deleted as if it had."""
    results, ray_tmp = tmp_path / "results", short_tmpdir()
    proc = start_cli(*QUICK, "--results", str(results), "--set", "search.num_samples=2",
                     "--set", "search.n_initial_points=1", "--set", "search.max_concurrent=2",
                     "--set", "search.parameters.epochs={choice: [3]}", tmp_path=tmp_path,
                     RAY_TMPDIR=str(ray_tmp))
    try:
        wait_for(lambda: len({r["trial_dir"] for r in reports(results)}) == 2, 300,
                 "both trials' first epochs", proc)
        run = run_dir_of(results)
        status = (run / "status.json").read_text()
        from tuner import run as tuner_run

        # the second driver: tuner.run's main in this process (refused before it imports torch or
        # starts Ray; test_live.py and test_compare.py resume with the real command)
        second = call_main(tuner_run.main, ["--resume", str(run)], capsys, monkeypatch, tmp_path)
        assert second.returncode == 2, second.stderr[-2000:]
        assert second.stderr.startswith(f"error: --resume {run}: the sweep is still running (pid "
                                        f"{proc.pid} on ")
        assert json.loads(status)["state"] == "running"
        assert proc.poll() is None  # the live driver goes on

        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=120) == 143
    finally:
        stop_group(proc)
    log = (tmp_path / "cli.log").read_text()
    assert json.loads((run / "status.json").read_text())["state"] == "partial"
    assert f"resume with: python -m tuner.run --resume {run}" in log
    trials = pd.read_csv(run / "trials.csv")
    assert len(trials) == 2 and set(trials["status"]) == {"unfinished"}
    assert not (run / "best.json").exists()  # no test score for an unfinished sweep
    assert len({c.parent for c in run.glob("trials/*/checkpoint_*")}) == 2  # none deleted
    assert "Traceback" not in log
    assert processes_using(ray_tmp) == []  # the embedded Ray ended with the driver
    shutil.rmtree(ray_tmp, ignore_errors=True)  # its session folder: nothing left behind


@pytest.mark.slow  # 70 s alone on 2 idle cores
@pytest.mark.cluster
def test_killed_driver_then_resume(tmp_path):
    results = tmp_path / "results"
    # half QUICK's images: what survives the killed driver is checked, not what the trials learn
    proc = start_cli(*THREE_TRIALS, "--results", str(results), "--set", "data.train_subset=300",
                     "--set", "data.test_subset=100", tmp_path=tmp_path)
    try:
        # kill once one trial has finished and the next has checkpointed its first epoch
        wait_for(lambda: len({r["trial_dir"] for r in reports(results)}) >= 2
                 and sum(r["epoch"] == 1 for r in reports(results)) >= 2, 300,
                 "a second trial's first epoch", proc)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its embedded Ray, with no warning
        proc.wait(timeout=60)
    finally:
        stop_group(proc)
    run = run_dir_of(results)
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "running" and status["driver"]["pid"] == proc.pid  # now dead
    assert (run / ".driver.lock").exists()  # left behind: the next driver takes it over
    before = reports(results)

    done = run_cli("--resume", str(run), tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    trials, epochs = pd.read_csv(run / "trials.csv"), pd.read_csv(run / "epochs.csv")
    assert len(trials) == 3 and set(trials["status"]) == {"finished"}
    assert_epochs_once(epochs, trials)
    first_pid = {r["trial_id"]: r["pid"] for r in before if r["epoch"] == 1}
    resumed = [t for t in first_pid if t in set(epochs.trial_id)]
    assert len(resumed) >= 2  # the finished trial and the interrupted one were kept, not re-run
    for trial_id, pid in first_pid.items():
        assert epochs[(epochs.trial_id == trial_id) & (epochs.epoch == 1)]["pid"].item() == pid


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "not a tuner run directory"),
    (lambda d: ((d / "spec.yaml").write_text("name: x\n"),
                (d / "status.json").write_text('{"state": "finished", "experiment": "x"}')),
     "finished already"),
])
def test_resume_of_a_non_run_or_finished_run_is_bad_input(tmp_path, setup, message, capsys,
                                                         monkeypatch):
    """tuner.run's main in this process (test_live.py resumes a finished run with the real
    command)."""
    from tuner import run as tuner_run

    run = tmp_path / "run"
    run.mkdir()
    setup(run)
    proc = call_main(tuner_run.main, ["--resume", str(run)], capsys, monkeypatch, tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and message in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
