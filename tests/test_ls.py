"""`tuner ls`: the runs under a results folder, newest first, from their own files (no Ray)."""

import json
import os
import socket

import pytest

from tuner import ls


def make(root, name, run_id, status, best=None, compare=None):
    run = root / name / run_id
    run.mkdir(parents=True)
    (run / "spec.yaml").write_text(f"name: {name}\n")
    (run / "status.json").write_text(json.dumps(status))
    if best:
        (run / "best.json").write_text(json.dumps(best))
    if compare:
        (run / "compare.csv").write_text(compare)
    return run


def test_ls_lists_state_scores_trials_and_age_newest_first(tmp_path, capsys):
    gone = 2 ** 22 + 12345  # a pid above Linux's limit: no such process
    make(tmp_path, "a", "1", {"state": "finished", "updated": "2026-01-01T10:00:00+0000",
                              "trials": {"finished": 4, "planned": 4}},
         {"metric": "val_accuracy", "val_accuracy": 0.91, "test_accuracy": 0.9}),
    make(tmp_path, "a", "2", {"state": "running", "updated": "2026-01-02T10:00:00+0000",
                              "driver": {"host": socket.gethostname(), "pid": gone},
                              "trials": {"finished": 1, "planned": 4}})
    make(tmp_path, "b", "3", {"state": "running", "updated": "2026-01-03T10:00:00+0000",
                              "driver": {"host": socket.gethostname(), "pid": os.getpid()}})
    make(tmp_path, "c", "4", {"state": "finished", "updated": "2025-12-31T10:00:00+0000"},
         compare="arm,val_mean,test_mean\nx,0.8,0.75\ny,0.85,0.8\n")
    assert ls.main([str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "state", "trials", "best", "test", "age"]
    rows = [line.split() for line in lines[1:]]
    assert [r[0] for r in rows] == [str(tmp_path / p) for p in ("b/3", "a/2", "a/1", "c/4")]
    assert rows[0][1] == "running"  # its driver (this process) lives
    assert rows[1][1] == "stopped"  # "running" in status.json, but its driver is gone
    assert rows[2][1:6] == ["finished", "4/4", "val_accuracy", "0.9100", "0.9000"]
    assert "arm y: val_mean 0.8500" in lines[4] and lines[4].split()[-3] == "0.8000"


def test_ls_of_an_empty_or_missing_folder(tmp_path, capsys):
    assert ls.main([str(tmp_path)]) == 0 and "no runs under" in capsys.readouterr().out
    assert ls.main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


@pytest.mark.parametrize("limit, shown", [("1", 1), ("0", 3)])
def test_ls_limit(tmp_path, capsys, limit, shown):
    for i in range(3):
        make(tmp_path, "a", str(i), {"state": "finished", "updated": f"2026-01-0{i + 1}T10:00:00+0000"})
    ls.main([str(tmp_path), "--limit", limit])
    out = capsys.readouterr().out.splitlines()
    assert len([line for line in out if line.startswith(str(tmp_path))]) == shown
