"""List the runs under a results folder: `tuner ls [RESULTS] [--all]`.

One line per run folder (results/<name>/<run id>/), newest first: its state (running, partial,
finished, or stopped: a "running" run whose driver is gone), the best validation score and, once
finished, the test score of the chosen trial (a comparison: its best arm's test mean), its trials,
and its age. Reads only status.json, best.json and compare.csv, so it is instant on many runs.

Exit 0: listed (also when there is nothing to list). Exit 2: bad input, one line.
"""

from __future__ import annotations

import csv
import os
import socket
import sys
import time
from datetime import datetime
from pathlib import Path

from tuner.errors import ArgumentParser, InputError
from tuner.rundir import BEST_FILE, SPEC_FILE, STATUS_FILE, read_json_if_any


def runs_under(root: Path) -> list[Path]:
    """Run folders under a results root (results/<name>/<run id>), or the root itself if it is
    one, newest first."""
    if (root / SPEC_FILE).is_file():
        return [root]
    # results/<name>/<run id>, also one or two folders deeper (results/bench/sweeps/<name>/...)
    found = [p.parent for depth in (2, 3, 4) for p in root.glob("*/" * depth + SPEC_FILE)]
    return sorted(found, key=lambda p: updated(p, _json(p / STATUS_FILE)) if (p / STATUS_FILE)
                  .exists() else p.stat().st_mtime, reverse=True)


def _json(path: Path) -> dict:
    data = read_json_if_any(path)
    return {} if data is None else data


def live(status: dict) -> bool | None:
    """Whether the run's driver (status.json's pid and host) is alive: None when it ran on
    another machine. Asked of the process table, never of the run's lock, so that listing
    cannot get in the way of a driver taking it."""
    driver = status.get("driver") or {}
    if driver.get("host") != socket.gethostname() or "pid" not in driver:
        return None
    try:
        os.kill(int(driver["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def row(run: Path, now: float) -> dict:
    """One run's line, as fields."""
    status, best = _json(run / STATUS_FILE), _json(run / BEST_FILE)
    state = status.get("state", "not started")
    if state == "running" and live(status) is False:
        state = "stopped"  # its driver died: `tuner resume` continues it
    trials = status.get("trials") or {}
    metric = best.get("metric", "val_accuracy")
    val, test = best.get(metric), best.get("test_accuracy")
    compare = run / "compare.csv"
    if compare.is_file():  # a comparison: its best arm by test mean
        with open(compare, newline="") as f:
            arms = [r for r in csv.DictReader(f) if r.get("test_mean")]
        if arms:
            top = max(arms, key=lambda r: float(r["test_mean"]))
            val, test, metric = float(top["val_mean"] or "nan"), float(top["test_mean"]), \
                f"arm {top['arm']}: val_mean"
    age = now - updated(run, status) if status else None
    return {"run": str(run), "state": state,
            "trials": f"{trials.get('finished', 0)}/{trials.get('planned', '?')}",
            "best": "-" if val is None else f"{metric} {val:.4f}",
            "test": "-" if test is None else f"{test:.4f}",
            "age": "-" if age is None else _age(age)}


def updated(run: Path, status: dict) -> float:
    """When the run last changed, from status.json's own record (a copied or cloned run keeps
    it), else the file's modification time."""
    try:
        return datetime.strptime(status["updated"], "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except (KeyError, TypeError, ValueError):
        return (run / STATUS_FILE).stat().st_mtime


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="tuner ls", description="List the runs under a results folder.")
    p.add_argument("results", nargs="?", type=Path, default=Path("results"),
                   help="a results folder (default: results) or one run folder")
    p.add_argument("--limit", type=int, default=20, help="the newest N runs (default 20; 0: all)")
    try:
        args = p.parse_args(argv)
        if not args.results.is_dir():
            raise InputError(f"{args.results}: no such folder; give a results folder such as "
                             "results/")
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    runs = runs_under(args.results)
    if not runs:
        print(f"no runs under {args.results}")
        return 0
    now = time.time()
    rows = [row(r, now) for r in (runs[:args.limit] if args.limit else runs)]
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in rows[0]}
    print("  ".join(k.ljust(widths[k]) for k in rows[0]).rstrip())
    for r in rows:
        print("  ".join(v.ljust(widths[k]) for k, v in r.items()).rstrip())
    if args.limit and len(runs) > args.limit:
        print(f"... {len(runs) - args.limit} older run(s): --limit 0 lists all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
