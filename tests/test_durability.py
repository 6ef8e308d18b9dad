"""A run folder's files survive crashes: every replacement is synced to disk before it takes the
old file's place, a file damaged anyway (a truncated status.json) is bad input naming it for every
command that reads it, and the driver's lock covers all it writes. A run folder names its trials
relative to itself, so a copy never writes into the original (test_live.py adds trials to a copy of
its run and checks the original)."""

import os
from pathlib import Path

import pytest
from helpers import call_logged, needs_fashion
from test_report import make_run

from tuner import results
from tuner.errors import InputError


def test_a_replacement_is_synced_before_it_takes_the_files_place(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(
        f"/proc/self/fd/{fd}"))), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(b))),
                                                     real_replace(a, b))[1])
    path = tmp_path / "status.json"
    results.write_json(path, {"state": "running"})
    kinds = [kind for kind, _ in events]
    assert kinds == ["fsync", "replace", "fsync"], events
    assert Path(events[0][1]).name.startswith(".status.json.")  # the temporary file
    assert events[2][1] == str(tmp_path)  # then the folder, so the rename itself is durable
    assert results.read_json(path) == {"state": "running"}


@pytest.mark.parametrize("text", ['{"state": "runn', "", "[1, 2]", "\udcff".encode(
    "utf-8", "surrogateescape").decode("latin-1")])
def test_a_damaged_json_file_is_bad_input_naming_it(tmp_path, text):
    path = tmp_path / "status.json"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(InputError, match=r"status.json: damaged, .*restore it") as e:
        results.read_json(path)
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="status.json: damaged"):
        results.update_json(path, {"state": "finished"})  # never overwritten with half its keys


def in_process(args: list[str], tmp_path: Path, capsys, monkeypatch, caplog):
    """`python -m MODULE ARGS` as that module's main in this process (tuner.run's or the tuner
    command's), its log lines counted as stderr's (test_cli.py runs each console script for real)."""
    from tuner import cli, run

    module, *argv = args
    return call_logged({"tuner.run": run.main, "tuner": cli.main}[module], argv, capsys,
                       monkeypatch, caplog, tmp_path)


@pytest.mark.parametrize("command", [
    ["tuner.run", "--resume", "{run}"],
    ["tuner", "resume", "{run}"],
    ["tuner", "resume", "{run}", "--more", "1"],
    ["tuner", "report", "{run}"],
    pytest.param(["tuner", "export", "{run}"], marks=needs_fashion),
])
def test_every_command_on_a_truncated_status_json_says_which_file(tmp_path, command, capsys,
                                                                  monkeypatch, caplog):
    run = make_run(tmp_path / "run", finished=True)
    status = run / "status.json"
    status.write_text(status.read_text()[:40])  # a crash mid-write, before writes were synced
    before = {p: p.read_bytes() for p in run.rglob("*")}
    proc = in_process([a.format(run=run) for a in command], tmp_path, capsys, monkeypatch, caplog)
    out = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 2, out
    assert "Traceback" not in proc.stderr, out
    assert proc.stderr.startswith(f"error: {status}: damaged, not valid JSON"), out
    assert proc.stderr.count("\n") == 1, out
    assert "restore it from a copy of the run folder" in proc.stderr
    assert {p: p.read_bytes() for p in run.rglob("*")} == before  # nothing written


def test_predict_on_a_run_folder_does_not_need_its_status(tmp_path, capsys, monkeypatch, caplog):
    """predict reads the model folder only: a damaged status.json is no reason to refuse."""
    run = make_run(tmp_path / "run", finished=True)
    (run / "status.json").write_text("{")
    (tmp_path / "x.png").write_bytes(b"")
    proc = in_process(["tuner", "predict", str(run), str(tmp_path / "x.png")], tmp_path, capsys,
                      monkeypatch, caplog)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "no model/model.pt here" in proc.stderr


def test_the_run_lock_is_held_until_the_last_status_write(tmp_path, monkeypatch):
    """The driver's lock covers everything it writes: Ray's shutdown and the final status.json
    update (the driver's timeline) come before it is released, so a `--resume` that takes the run
    over never races them. The sweep itself is faked: only the driver's bookkeeping runs."""
    import fcntl
    from types import SimpleNamespace

    import ray

    from tuner import cluster, leakage, live, memory, model, run, sweep
    from tuner.specfile import validate

    def locked() -> bool:
        (lock,) = tmp_path.glob("results/*/*/.driver.lock")
        with open(lock) as f:  # a new open file: flock conflicts with the driver's own
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
            return False

    seen = []
    data = SimpleNamespace(train=[0], val=[0], test=[0], source="fake")
    monkeypatch.setattr(run, "check_inputs", lambda *a, **k: ({}, data))
    monkeypatch.setattr(model, "weights_label", lambda w: "none")
    monkeypatch.setattr(cluster, "connect", lambda *a: True)  # as if it started Ray here
    for name in ("check_resources", "check_storage"):
        monkeypatch.setattr(cluster, name, lambda *a: None)
    monkeypatch.setattr(cluster, "describe_cluster", lambda: "fake")
    monkeypatch.setattr(memory, "check_resident", lambda *a: None)
    monkeypatch.setattr(ray, "nodes", list)
    monkeypatch.setattr(ray, "shutdown", lambda: seen.append(("shutdown", locked())))
    monkeypatch.setattr(sweep, "warm_worker", lambda: None)
    monkeypatch.setattr(sweep, "make_tuner", lambda *a, **k: SimpleNamespace(fit=lambda: None))
    monkeypatch.setattr(live, "LiveTables", lambda *a: None)
    monkeypatch.setattr(run, "spec_record", lambda *a: "name: x\n")
    monkeypatch.setattr(run, "surgeries", lambda *a: {})
    monkeypatch.setattr(leakage, "write_split", lambda *a: None)  # the data is fake
    monkeypatch.setattr(run, "write_ending", lambda *a: seen.append(("finish", locked())) or 0)
    real_update = results.update_json

    def update_json(path, fields):
        if "phases_s" in fields:  # the driver's last write
            seen.append(("last status write", locked()))
        return real_update(path, fields)

    monkeypatch.setattr(results, "update_json", update_json)
    args = SimpleNamespace(address=None, results=tmp_path / "results", resume=None)
    assert run.run(validate({"name": "x"}), args) == 0
    assert seen == [("finish", True), ("shutdown", True), ("last status write", True)]
    assert not locked()  # and released once the driver is done


# --- a run folder is where it is now: copied or moved, it names its own trials -------------------


def test_status_json_keeps_the_trials_relative_to_the_run_folder(tmp_path):
    from tuner import rundir as run
    from tuner.specfile import validate

    spec, folder = validate({"name": "x"}), tmp_path / "run"
    (folder / "trials").mkdir(parents=True)
    assert run.stored(str(folder / "trials"), folder) == "trials"
    assert run.stored(str(folder / "trials-more1"), folder) == "trials-more1"
    assert run.stored("/shared/sweeps/x-1", folder) == "/shared/sweeps/x-1"  # a --storage folder
    assert run.located("trials", folder, spec) == str(folder / "trials")
    copy = tmp_path / "copy"
    assert run.located("trials-more1", copy, spec) == str(copy / "trials-more1")
    for outside in ("../run/trials", str(folder / "trials"), "/elsewhere/trials"):
        with pytest.raises(InputError, match=r"copy/status.json: the trials it names, .* are outside "
                                             r"this run folder \(was it copied\?\)"):
            run.located(outside, copy, spec)
    shared = validate({"name": "x", "run": {"storage": "/shared/sweeps"}})
    assert run.located("/shared/sweeps/x-1", copy, shared) == "/shared/sweeps/x-1"
