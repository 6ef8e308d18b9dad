"""Every trial's per-epoch reports turned into pandas tables, and the files of a run directory.

Pure functions over `TrialRecord`s (plain data), so they can be tested from known reports without
Ray; `sweep.collect` builds the records from a Ray Tune ResultGrid.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import socket
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tuner.rundir import SESSIONS, STATUS_FILE, TEST_LEDGER, read_json, read_json_if_any, stored
from tuner.spec import Spec, get_path, param_path, same_point, weights_key

# Ray Tune's own bookkeeping in each report, left out of epochs.csv. (`timestamp`, the report's
# wall clock in whole seconds, and `time_total_s`, the trial's running time, stay: they time the sweep.)
# Ray's own per-report fields that say nothing new (training_iteration: the report's number, which
# is the epoch's; date: `time` says it in ISO 8601)
RAY_COLUMNS = ("checkpoint_dir_name", "should_checkpoint", "done", "date", "hostname",
               "time_since_restore", "iterations_since_restore", "time_this_iter_s", "trial_id",
               "config", "experiment_tag", "training_iteration")

# A trial's state while the sweep runs (live tables); a trial that ended gets its status from its
# reports instead.
LIVE_STATES = ("running", "pending", "paused")


@dataclass
class TrialRecord:
    trial_id: str
    params: dict[str, Any]  # searched values, keys as in search.parameters
    reports: list[dict[str, Any]]  # one per epoch, in order
    error: str | None = None  # the trial's failure, if it failed
    checkpoint: Any = None  # its latest ray.tune.Checkpoint
    state: str | None = None  # one of LIVE_STATES while the trial has not ended, else None


def trial_params(config: dict[str, Any], spec: Spec) -> dict[str, Any]:
    """A trial's searched values from its Ray config, as the trial used them (quniform's 64.0 is 64)."""
    params = {k: config[k] for k in spec.search.parameters if k in config}
    if len(params) == len(spec.search.parameters):
        trial_spec = spec.with_values(params)
        params = {k: get_path(trial_spec, param_path(k)) for k in params}
    return params


def devices_per_trial(spec: Spec) -> float:
    """What a trial's wall time is multiplied by to count its cost: its GPUs, or its CPUs if none."""
    return spec.resources.gpu or spec.resources.cpu


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
    """Every per-epoch report of every trial, with the trial's id and searched values, and `time`:
    when it was reported (UTC, ISO 8601, from Ray's `timestamp`, which stays for sweep_seconds)."""
    rows = [{"trial_id": r.trial_id, **r.params,
             **{k: v for k, v in rep.items() if k not in RAY_COLUMNS},
             **({"time": iso_time(rep["timestamp"])} if "timestamp" in rep else {})}
            for r in records for rep in r.reports]
    return pd.DataFrame(rows, columns=None if rows else ["trial_id", "epoch"])  # a header to read


def iso_time(seconds: float | None) -> str | None:
    """A Unix time as ISO 8601 in UTC, to the second."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return None
    return datetime.fromtimestamp(float(seconds), tz=timezone.utc).isoformat(timespec="seconds")


def trials_table(records: list[TrialRecord], spec: Spec, weights: str | dict[str, str],
                 interrupted: bool = False) -> pd.DataFrame:
    """One row per trial: status, error, searched values, final and best metrics, epochs, time.

    Each row's weights are those its trial reported starting from; a trial that never reported
    gets the label of its weights setting from `weights` (setting -> label, or one label).

    Status: finished, error, stopped_early (by the scheduler), or, in an interrupted sweep,
    unfinished; while the sweep runs (live tables), running, pending or paused.

    Costs: `trial_epochs` counts the epochs the trial trained and reported (an epoch retried after a
    failure once); `device_s` is its wall time x its GPUs (x its CPUs if it has no GPU). With ASHA,
    `stopped_at_epoch` is the epoch (a rung) where the scheduler stopped a trial early.

    The score: `val_accuracy` and `val_loss` are those of the epoch `score_epoch`, the trial's last
    validated one (search.select: last) or its best validated one by search.metric and
    search.mode (best_epoch; the first of equals), whose weights its checkpoint keeps. The
    planned length is `epochs_planned`, or the searched `epochs` column itself when train.epochs
    is searched (the two would be one column twice).
    """
    rows = []
    for r in records:
        reps = pd.DataFrame(r.reports)
        last = r.reports[-1] if r.reports else {}
        trial_spec = spec.with_values(r.params)
        planned = int(last.get("epochs_planned") or trial_spec.train.epochs)  # a length in images: the trial's own
        label = (weights if isinstance(weights, str)
                 else weights.get(weights_key(trial_spec.model, weights)))
        error = r.error or last.get("error")
        done = int(last.get("epoch", 0))
        status = ("error" if error else r.state if r.state in LIVE_STATES
                  else "finished" if done >= planned
                  else "unfinished" if interrupted else "stopped_early")
        row = {"trial_id": r.trial_id, "status": status, "error": error, **r.params}
        scored = score_report(r.reports, spec)
        for m in ("val_accuracy", "val_loss"):
            row[m] = scored.get(m)
            if m in reps:
                row[f"best_{m}"] = reps[m].max() if m.endswith("accuracy") else reps[m].min()
            else:
                row[f"best_{m}"] = None
        row["score_epoch"] = scored.get("epoch") if scored.get(spec.search.metric) is not None else None
        if spec.search.select == "best_epoch":  # the last epoch's, beside the best one's
            row.update(last_val_accuracy=last.get("val_accuracy"), last_val_loss=last.get("val_loss"))
        # Ray's running time of the trial (model build, data upload, every epoch, retries), seconds
        wall = float(last.get("time_total_s", 0.0))
        start = (reps["timestamp"] - reps["time_total_s"]).min() if {"timestamp", "time_total_s"} <= set(reps) else None
        row.update({
            "started": iso_time(start),  # UTC, from Ray's report times
            "ended": iso_time(last.get("timestamp")) if status not in LIVE_STATES else None,
            "train_accuracy": last.get("train_accuracy"),
            "epochs_completed": done,
            "epochs_planned": planned,
            "wall_time_s": wall,
            "trial_epochs": int(reps["epoch"].nunique()) if "epoch" in reps else 0,
            "device_s": wall * devices_per_trial(spec),
            "node_ip": last.get("node_ip"),
            "node_id": last.get("node_id"),
            "weights": last.get("weights") or label,
        })
        if spec.search.scheduler == "asha":
            row["stopped_at_epoch"] = done if status == "stopped_early" else None
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=["trial_id", "status", "error", *spec.search.parameters,
                                     "val_accuracy", "val_loss", "epochs_completed", "wall_time_s",
                                     "trial_epochs", "device_s"])
    table = pd.DataFrame(rows)
    if any(param_path(k) == "train.epochs" for k in spec.search.parameters):
        table = table.drop(columns="epochs_planned")  # the searched epochs column says it
    for column in ("stopped_at_epoch", "score_epoch"):
        if column in table:
            table[column] = pd.to_numeric(table[column]).astype("Int64")  # blank, not 1.0, in the CSV
    # 1 for the best score (search.select) among the trials that did not fail; blank for the rest
    metric = spec.search.metric
    scored = table[metric].where(table["status"] != "error")
    table["rank"] = scored.rank(ascending=spec.search.mode == "min", method="min").astype("Int64")
    return table


def score_report(reports: list[dict[str, Any]], spec: Spec) -> dict[str, Any]:
    """The report a trial is scored by: its last (search.select: last), or its validated one with
    the best search.metric (best_epoch; the first of equals, as the trainable keeps it). A trial
    that diverged is scored by its last report (the worst scores, and its error)."""
    if not reports:
        return {}
    last, metric = reports[-1], spec.search.metric
    if spec.search.select == "last" or last.get("error"):
        return last
    valid = [r for r in reports if r.get(metric) is not None and not pd.isna(r.get(metric))]
    if not valid:
        return last
    pick = max if spec.search.mode == "max" else min
    return pick(valid, key=lambda r: r[metric])  # max and min return the first of equals


# Columns of trials.csv that usually hold one value for every trial: long, and said once in
# status.json (`trials_shared`) instead; kept as columns where they differ (a comparison's arms
# from other weights, trials on several nodes).
SHARED_COLUMNS = ("weights", "node_id")
SHARED_KEY = "trials_shared"


def write_trials(run_dir: Path, table: pd.DataFrame) -> None:
    """trials.csv, with each SHARED_COLUMNS column that holds one value for all trials moved to
    status.json's `trials_shared` (read_trials puts it back)."""
    shared = {c: table[c].iloc[0] for c in SHARED_COLUMNS
              if c in table and len(table) and table[c].nunique(dropna=False) == 1
              and pd.notna(table[c].iloc[0])}
    write_csv(Path(run_dir) / "trials.csv", table.drop(columns=list(shared)))
    update_json(Path(run_dir) / STATUS_FILE, {SHARED_KEY: {k: plain(v) for k, v in shared.items()}})


def read_trials(run_dir: Path, **read_csv) -> pd.DataFrame:
    """A run's trials.csv with the columns write_trials moved to status.json put back (the same
    value in every row). Keyword arguments go to pandas.read_csv (trial ids stay text)."""
    table = pd.read_csv(Path(run_dir) / "trials.csv", **{"dtype": {"trial_id": str}, **read_csv})
    return with_shared(table, run_dir)


def with_shared(table: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
    """`table` (a run's trials.csv) with status.json's `trials_shared` columns filled in."""
    status = read_json_if_any(Path(run_dir) / STATUS_FILE)  # missing or damaged: the table as it is
    shared = (status.get(SHARED_KEY) or {}) if isinstance(status, dict) else {}
    for column, value in shared.items():
        if column not in table:
            table[column] = value
    return table


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
        mixed = column.map(lambda v: isinstance(v, str)).nunique() > 1  # e.g. false and stride1
        if mixed or column.map(lambda v: isinstance(v, (dict, list))).any():  # or mappings
            column = column.map(str)
        if param.kind in ("uniform", "loguniform", "quniform"):
            low, high = param.args[0], param.args[1]
            edges = (np.geomspace if param.kind == "loguniform" else np.linspace)(low, high, 5)
            labels = [f"[{lo:.3g}, {hi:.3g}]" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
            column = pd.cut(column, bins=edges, include_lowest=True, labels=labels).astype(str)
        best = "max" if spec.search.mode == "max" else "min"
        table = (done.groupby(column.rename(key), sort=False)[metric]
                 .agg(["mean", "std", best, "count"])
                 .rename(columns={"mean": f"{metric}_mean", "std": f"{metric}_std",
                                  best: f"{metric}_{best}", "count": "trials"}))
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


def default_trial(trials: pd.DataFrame, spec: Spec) -> pd.Series | None:
    """The first scored trial that ran the spec's own settings (Spec.default_point), or None."""
    point, _ = spec.default_point()
    if point is None or not set(point) <= set(trials.columns):
        return None
    for _, row in scored_trials(trials, spec).iterrows():
        if same_point(point, {k: plain(row[k]) for k in point}):
            return row
    return None


def plain(value: Any) -> Any:
    """A table cell as the Python value a spec holds (numpy scalars to int, float, bool)."""
    return value.item() if isinstance(value, np.generic) else value


def versus_default(trials: pd.DataFrame, spec: Spec, best: pd.Series,
                   selection: dict | None = None) -> dict[str, Any]:
    """What tuning gained over the spec's own settings, for best.json: the default trial (its id,
    config and metric) and `gain_vs_default`, the chosen trial's metric minus the default's
    (for a metric to minimise, the default's minus the chosen's: positive is better either way).
    On validation, where the choice was made; with no default trial, the reason. When the
    default was among the confirmed candidates (`selection`, tuner.confirm), both are compared on
    their means over the same seeds, as the choice was made; otherwise every candidate scored at
    least the default on its first seed, so the gain is never negative."""
    metric = spec.search.metric
    point, why = spec.default_point()
    row = default_trial(trials, spec)
    if row is None:
        why = why or "the trial of the spec's own settings did not finish"
        return {"default_trial": {"config": point, "reason": why}, "gain_vs_default": None}
    means = {c["trial_id"]: c["mean"] for c in (selection or {}).get("candidates", [])}
    ours, theirs, basis = float(best[metric]), float(row[metric]), "first seed"
    if row["trial_id"] in means and best["trial_id"] in means:
        ours, theirs = means[best["trial_id"]], means[row["trial_id"]]
        basis = "mean over the confirming seeds"
    gain = (ours - theirs) * (1 if spec.search.mode == "max" else -1)
    return {"default_trial": {"trial_id": row["trial_id"], "config": point,
                              metric: float(row[metric]), "basis": basis},
            "gain_vs_default": gain}


def accuracy_interval(accuracy: float, images: int) -> tuple[float, float]:
    """The 95% interval of an accuracy measured on `images` images (a binomial proportion, Wilson's
    interval): with 800 validation images one image is 0.125 points, and trials often differ by
    less than the interval is wide."""
    from scipy.stats import binomtest

    ci = binomtest(round(accuracy * images), images).proportion_ci(0.95, method="wilson")
    return float(ci.low), float(ci.high)


def gain_line(chosen: dict, spec: Spec) -> str:
    """One line on what tuning gained over the spec's own settings (best.json's fields)."""
    metric, default, gain = spec.search.metric, chosen.get("default_trial") or {}, chosen.get(
        "gain_vs_default")
    if gain is None:
        reason = default.get("reason", "not recorded")
        return f"gain over the spec's own settings: not measured ({reason})"
    if default.get("trial_id") == chosen.get("trial_id"):
        return (f"tuning gained nothing over the spec's own settings: they are the choice "
                f"(trial {default['trial_id']}, {metric} {default[metric]:.4f})")
    if metric == "val_accuracy":
        size = f"{100 * gain:+.1f} points of {metric}"
    else:
        size = f"{abs(gain):.4f} {'lower' if gain >= 0 else 'higher'} {metric}"
    basis = "" if default.get("basis", "first seed") == "first seed" else f", {default['basis']}"
    return (f"tuning gained {size} on validation over the spec's own settings (trial "
            f"{default['trial_id']}: {default[metric]:.4f}; chosen: {chosen[metric]:.4f}{basis})")


def repeat_rows(trials: pd.DataFrame, arm: str, role: str = "chosen") -> pd.DataFrame:
    """A comparison arm's repeats of its chosen config (role "chosen") or of its own settings
    (role "default"; compare.repeats_spec); tables without a role column hold chosen ones only."""
    rows = trials[(trials["arm"] == arm) & (trials["phase"] == "repeats")]
    if "role" in rows:
        return rows[rows["role"] == role]
    return rows if role == "chosen" else rows.iloc[:0]


def gain_lines(table: pd.DataFrame) -> list[str]:
    """Per arm of a comparison (compare.csv's rows), in words: what tuning gained on the test set
    over the arm's own settings."""
    lines = []
    for _, row in table.iterrows():
        if pd.isna(row.get("gain_vs_default", math.nan)):
            continue
        if row["gain_vs_default"] == 0 and row["gain_ci95_low"] == row["gain_ci95_high"] == 0:
            lines.append(f"{row['arm']}: tuning gained nothing over the arm's own settings: they "
                         "are its chosen config")
            continue
        interval = (f" [{100 * row['gain_ci95_low']:+.1f}, {100 * row['gain_ci95_high']:+.1f}]"
                    if pd.notna(row["gain_ci95_low"]) else "")
        lines.append(f"{row['arm']}: tuning gained {100 * row['gain_vs_default']:+.1f}{interval} "
                     f"points of test accuracy over the arm's own settings "
                     f"({100 * row['default_test_mean']:.1f}% with the same seeds)")
    return lines


def top_trials(trials: pd.DataFrame, spec: Spec, n: int = 5) -> pd.DataFrame:
    """The n trials with the best final metric, best first, with their searched values and cost."""
    metric = spec.search.metric
    cols = ["trial_id", "status", *spec.search.parameters, metric, "epochs_completed", "wall_time_s"]
    return (trials.sort_values(metric, ascending=spec.search.mode == "min", na_position="last")
            .head(n)[cols])


def cost_totals(trials: pd.DataFrame) -> dict[str, Any]:
    """The sweep's cost so far: trials, trial-epochs and device-seconds, summed over trials.csv."""
    return {"trials": len(trials),
            "trial_epochs": int(trials["trial_epochs"].sum()) if len(trials) else 0,
            "device_s": round(float(trials["device_s"].sum()), 1) if len(trials) else 0.0}


def trial_counts(trials: pd.DataFrame, planned: int) -> dict[str, int]:
    """How many trials are in each status, and how many the sweep plans in all."""
    counts = {s: 0 for s in ("finished", "stopped_early", "running", "pending", "error")}
    counts.update(trials["status"].value_counts().to_dict() if len(trials) else {})
    return {**{k: int(v) for k, v in counts.items()}, "planned": planned}


def sweep_seconds(epochs: pd.DataFrame) -> pd.Series:
    """For each report in epochs.csv, seconds since the sweep's first trial started.

    From Ray's per-report `timestamp` (wall clock, whole seconds) and `time_total_s` (the trial's
    running time when it reported): the first trial started at min(timestamp - time_total_s). So
    sweep time counts from the first trial's start (Ray start-up before it and the test evaluation
    after the sweep are left out), to about a second, and includes any time a resumed sweep was
    stopped.
    """
    if epochs.empty or "timestamp" not in epochs or "time_total_s" not in epochs:
        return pd.Series(np.nan, index=epochs.index, dtype=float)
    start = (epochs["timestamp"] - epochs["time_total_s"]).min()
    return (epochs["timestamp"] - start).clip(lower=0.0)


def best_so_far(epochs: pd.DataFrame, spec: Spec) -> pd.DataFrame:
    """The best validation metric any trial had reported so far, at each report's sweep time
    (columns sweep_s, the metric, trial_id), in time order."""
    metric = spec.search.metric
    if epochs.empty or metric not in epochs:
        return pd.DataFrame(columns=["sweep_s", metric, "trial_id"])
    ok = epochs.assign(sweep_s=sweep_seconds(epochs)).dropna(subset=[metric, "sweep_s"])
    if "error" in ok:
        ok = ok[ok["error"].isna()]
    ok = ok.sort_values("sweep_s", kind="stable")
    running = ok[metric].cummax() if spec.search.mode == "max" else ok[metric].cummin()
    better = running.ne(running.shift())  # only the reports that improved on everything before
    return ok.loc[better, ["sweep_s", metric, "trial_id"]].reset_index(drop=True)


def time_to_best(epochs: pd.DataFrame, trials: pd.DataFrame, spec: Spec) -> float | None:
    """Sweep time (s, see sweep_seconds) at which the eventual best trial first reported a score at
    least as good as its final one: how long the sweep took to find the answer it ended with."""
    best = best_trial(trials, spec)
    if best is None or epochs.empty:
        return None
    metric = spec.search.metric
    rows = epochs.assign(sweep_s=sweep_seconds(epochs))[epochs["trial_id"] == best["trial_id"]]
    final = best[metric]
    reached = rows[rows[metric] >= final] if spec.search.mode == "max" else rows[rows[metric] <= final]
    seconds = reached["sweep_s"].min()
    return None if pd.isna(seconds) else round(float(seconds), 1)


def format_table(table: pd.DataFrame) -> str:
    with pd.option_context("display.width", 160, "display.float_format", "{:.4g}".format):
        return table.to_string(index=False)


# --- writing, atomically: a crash never leaves a half-written file ------------------------------


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically and durably: a crash or power loss leaves the old file
    or the new one, never a truncated one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            # on disk before the rename: else a power loss can leave the new name on empty blocks
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these are ordinary result files
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable; where a folder cannot be opened or synced (some
    network file systems), the file's own fsync is what there is."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)




def record_test_use(run_dir: Path, trial_id: str, why: str) -> None:
    """Note, before it happens, that `trial_id`'s model is about to be tested: a driver that dies
    after the test but before it records the result still has it counted (a resume that tests
    again counts twice). Appended and flushed to disk, one JSON line per look."""
    line = json.dumps({"trial_id": str(trial_id), "why": why,
                       "at": datetime.now().astimezone().isoformat(timespec="seconds")})
    with open(Path(run_dir) / TEST_LEDGER, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def test_set_uses(run_dir: Path) -> dict[str, Any]:
    """How often this run has looked at the test set, and for which trials, from its ledger; a
    run from before the ledger: from its best.json (one look, for its chosen trial)."""
    ledger = Path(run_dir) / TEST_LEDGER
    if ledger.is_file():
        ids = []
        for line in ledger.read_text().splitlines():
            try:
                ids.append(json.loads(line)["trial_id"])
            except (ValueError, KeyError):
                continue  # a line cut short by a crash: that look was not made
        return {"count": len(ids), "trials": ids}
    best = Path(run_dir) / "best.json"
    if best.is_file():
        earlier = json.loads(best.read_text())
        return earlier.get("test_set_uses") or {"count": 1, "trials": [earlier["trial_id"]]}
    return {"count": 0, "trials": []}


def write_csv(path: Path, table: pd.DataFrame) -> None:
    write_text(path, table.to_csv(index=False))


def write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def update_json(path: Path, fields: dict) -> dict:
    """Set these keys of a JSON file, keeping its others (a comparison's progress in status.json);
    the file's new content. Raises InputError if the file is damaged (read_json)."""
    data = read_json(path) if path.exists() else {}
    data.update(fields)
    write_json(path, data)
    return data


def write_status(run_dir: Path, state: str, experiment: str, resume: str,
                 extra: dict | None = None) -> None:
    """status.json; `extra`: counts of trials by status and the cost totals, once known. The
    experiment's location is stored relative to the run folder, a URI without credentials
    (rundir.stored)."""
    extra = dict(extra or {})
    if SESSIONS in extra:  # tuner.resume's sessions: their experiments kept as the first one is
        extra[SESSIONS] = [{**s, "experiment": stored(s["experiment"], run_dir)}
                           for s in extra[SESSIONS]]
    update_json(run_dir / STATUS_FILE, {"state": state, "experiment": stored(experiment, run_dir),
                                        "resume": resume,
                                        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                        "driver": {"host": socket.gethostname(), "pid": os.getpid()},
                                        **extra})
