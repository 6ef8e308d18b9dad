"""Every trial's per-epoch reports turned into pandas tables, and the files of a run directory.

Pure functions over `TrialRecord`s (plain data), so they can be tested from known reports without
Ray; `sweep.collect` builds the records from a Ray Tune ResultGrid.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tuner.spec import Spec

# Ray Tune's own bookkeeping in each report, left out of epochs.csv.
RAY_COLUMNS = ("checkpoint_dir_name", "should_checkpoint", "done", "date", "hostname",
               "time_since_restore", "iterations_since_restore", "time_this_iter_s", "trial_id")


@dataclass
class TrialRecord:
    trial_id: str
    params: dict[str, Any]  # searched values, keys as in search.parameters
    reports: list[dict[str, Any]]  # one per epoch, in order
    error: str | None = None  # the trial's failure, if it failed
    checkpoint: Any = None  # its latest ray.tune.Checkpoint


def new_run_dir(root: Path, name: str) -> Path:
    """A fresh results/<name>/<run id>/; never an existing one, even for two runs started at once."""
    parent = Path(root) / name
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        run = parent / f"{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
        try:
            run.mkdir()
            return run
        except FileExistsError:
            continue


def epochs_table(records: list[TrialRecord]) -> pd.DataFrame:
    """Every per-epoch report of every trial, with the trial's id and searched values."""
    rows = [{"trial_id": r.trial_id, **r.params,
             **{k: v for k, v in rep.items() if k not in RAY_COLUMNS}}
            for r in records for rep in r.reports]
    return pd.DataFrame(rows)


def trials_table(records: list[TrialRecord], spec: Spec, weights: str,
                 interrupted: bool = False) -> pd.DataFrame:
    """One row per trial: status, error, searched values, final and best metrics, epochs, time.

    Status: finished, error, stopped_early (by the scheduler), or, in an interrupted sweep,
    unfinished.
    """
    rows = []
    for r in records:
        reps = pd.DataFrame(r.reports)
        last = r.reports[-1] if r.reports else {}
        planned = spec.with_values(r.params).train.epochs
        error = r.error or last.get("error")
        done = int(last.get("epoch", 0))
        status = ("error" if error else "finished" if done >= planned
                  else "unfinished" if interrupted else "stopped_early")
        row = {"trial_id": r.trial_id, "status": status, "error": error, **r.params}
        for m in ("val_accuracy", "val_loss"):
            row[m] = last.get(m)
            if m in reps:
                row[f"best_{m}"] = reps[m].max() if m.endswith("accuracy") else reps[m].min()
            else:
                row[f"best_{m}"] = None
        row.update({
            "train_accuracy": last.get("train_accuracy"),
            "epochs_completed": done,
            "epochs_planned": planned,
            # Ray's running time of the trial (model build, data upload, every epoch, retries)
            "wall_time_s": float(last.get("time_total_s", 0.0)),
            "node_ip": last.get("node_ip"),
            "node_id": last.get("node_id"),
            "weights": weights,
        })
        rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else ["trial_id", "status", "error",
                                                          *spec.search.parameters, "val_accuracy",
                                                          "val_loss", "epochs_completed"])


def scored_trials(trials: pd.DataFrame, spec: Spec) -> pd.DataFrame:
    """The trials that did not fail and have the metric: the ones to summarise, plot and choose from."""
    return trials[trials["status"] != "error"].dropna(subset=[spec.search.metric])


def summary_tables(trials: pd.DataFrame, spec: Spec) -> dict[str, pd.DataFrame]:
    """For each searched parameter: mean, std, max and count of the metric over finished trials.

    Continuous parameters are grouped into 4 bins of equal width over their search range
    (equal width in log space for loguniform).
    """
    metric = spec.search.metric
    done = scored_trials(trials, spec)
    out = {}
    for key, param in spec.search.parameters.items():
        if done.empty or key not in done:
            continue
        column = done[key]
        if column.map(lambda v: isinstance(v, (dict, list))).any():  # choices of mappings
            column = column.map(str)
        if param.kind in ("uniform", "loguniform", "quniform"):
            low, high = param.args[0], param.args[1]
            edges = (np.geomspace if param.kind == "loguniform" else np.linspace)(low, high, 5)
            labels = [f"[{lo:.3g}, {hi:.3g}]" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
            column = pd.cut(column, bins=edges, include_lowest=True, labels=labels).astype(str)
        table = (done.groupby(column.rename(key), sort=False)[metric]
                 .agg(["mean", "std", "max", "count"]))
        out[key] = table.loc[sorted(table.index, key=_bin_order)].reset_index()
    return out


def _bin_order(label):
    """Sort bins '[a, b]' by their low edge, plain values by value."""
    return float(label[1:].split(",")[0]) if isinstance(label, str) and label.startswith("[") else label


def best_trial(trials: pd.DataFrame, spec: Spec) -> pd.Series | None:
    """The trial with the best final metric among those that did not fail; None if none did."""
    ok = scored_trials(trials, spec)
    if ok.empty:
        return None
    idx = ok[spec.search.metric].idxmax() if spec.search.mode == "max" else ok[spec.search.metric].idxmin()
    return ok.loc[idx]


def top_trials(trials: pd.DataFrame, spec: Spec, n: int = 5) -> pd.DataFrame:
    metric = spec.search.metric
    cols = ["trial_id", "status", *spec.search.parameters, metric, "epochs_completed", "wall_time_s"]
    return (trials.sort_values(metric, ascending=spec.search.mode == "min", na_position="last")
            .head(n)[cols])


def format_table(table: pd.DataFrame) -> str:
    with pd.option_context("display.width", 160, "display.float_format", "{:.4g}".format):
        return table.to_string(index=False)


# --- writing, atomically: a crash never leaves a half-written file ------------------------------


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these are ordinary result files
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_csv(path: Path, table: pd.DataFrame) -> None:
    write_text(path, table.to_csv(index=False))


def write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")
