"""`tuner bench --overhead`: the fixed cost of a sweep, phase by phase.

Runs a trivial sweep (1 trial, 1 epoch, 600 images) as a user would, in a fresh interpreter, and
splits its wall time into the driver's phases (status.json's `phases_s`: startup and imports, the
checks, weights and data, Ray's start, the sweep, tables, figure, test, model, report, shutdown),
with the trial's own training and validation (epochs.csv) taken out of the sweep. What is left
is what every sweep pays however small it is.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from tuner.errors import ArgumentParser, InputError

# The trivial sweep: one trial of one epoch on 600 images (540 train, 60 validate), tested on 300.
TRIVIAL = ["--set", "search.num_samples=1", "--set", "search.n_initial_points=1",
           "--set", "search.parameters.epochs={choice: [1]}",
           "--set", "search.parameters.batch_size={choice: [64]}",
           "--set", "data.train_subset=600", "--set", "data.test_subset=300"]

TRAINING = "trial: training + validation"
OUTSIDE = "outside training"


def measure_once(spec: str, overrides: list[str], results: Path) -> dict[str, float]:
    """One trivial sweep in a fresh interpreter: its wall time and each phase, in seconds."""
    cmd = [sys.executable, "-m", "tuner.run", spec, *TRIVIAL,
           *[a for o in overrides for a in ("--set", o)], "--results", str(results)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise InputError(f"the trivial sweep failed (exit {done.returncode}): {tail}")
    run_dir = next(p.parent for p in results.glob("*/*/status.json"))
    status = json.loads((run_dir / "status.json").read_text())
    phases = dict(status.get("phases_s", {}))  # none from a tuner that did not time them
    training = float(pd.read_csv(run_dir / "epochs.csv")["epoch_time_s"].sum())
    if "sweep" in phases:
        phases["sweep"] -= training  # Tune's own part: the worker's start, its imports, the data
        phases["exit"] = max(0.0, wall - training - sum(phases.values()))
    return {**phases, TRAINING: training, "wall": wall, OUTSIDE: wall - training}


def table(runs: list[dict[str, float]]) -> pd.DataFrame:
    """Median and range of each phase over the runs, in the order the phases ran."""
    names = list(dict.fromkeys(k for r in runs for k in r))
    rows = []
    for name in names:
        values = [r.get(name, 0.0) for r in runs]
        rows.append({"phase": "sweep (outside training)" if name == "sweep" else name,
                     "median_s": round(statistics.median(values), 2),
                     "min_s": round(min(values), 2), "max_s": round(max(values), 2)})
    return pd.DataFrame(rows)


def run(spec: str, overrides: list[str], repeats: int, csv: Path | None = None) -> pd.DataFrame:
    """Measure `repeats` trivial sweeps; print and return the table (appended to `csv` if given)."""
    runs = []
    for i in range(repeats):
        with tempfile.TemporaryDirectory(prefix="tuner-overhead-") as d:
            runs.append(measure_once(spec, overrides, Path(d)))
        print(f"run {i + 1}/{repeats}: {runs[-1]['wall']:.1f} s wall, "
              f"{runs[-1][OUTSIDE]:.1f} s outside training", file=sys.stderr)
    out = table(runs)
    if csv is not None:
        stamped = out.assign(spec=spec, repeats=repeats, measured=time.strftime("%Y-%m-%dT%H:%M:%S"))
        stamped.to_csv(csv, mode="a", header=not csv.exists(), index=False)
    return out


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="tuner bench --overhead", description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", default="sweeps/fashion-quick.yaml", help="the sweep to shrink")
    p.add_argument("--set", action="append", default=[], help="more spec overrides")
    p.add_argument("--repeats", type=int, default=3, help="trivial sweeps to run (default 3)")
    p.add_argument("--csv", type=Path, help="append the table to this CSV file")
    try:
        args = p.parse_args(argv)
        out = run(args.spec, args.set, max(1, args.repeats), args.csv)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
