"""Strategies compared on equal terms: the arms of `compare:` in one run directory and one Ray session.

Phase "search": each arm runs the spec's own search (same space, `num_samples` and searcher seed)
with its overrides. Phase "repeats": each arm's best config (chosen on validation) is trained again
once per fresh `train.seed`, and each of those runs is tested once. Every step (phase, arm) is its own
Ray Tune experiment, `<experiment>/<arm>/<phase>`; status.json records the finished steps and the
test scores, so `--resume` continues with the step it stopped in and never tests a run twice.

Writes trials.csv and epochs.csv (every trial of every step, with `arm` and `phase` columns),
compare.csv (one row per arm), compare.png, and prints the answer in words.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from pyarrow import fs as pafs
from scipy import stats

from tuner import results, sweep
from tuner.data import Dataset
from tuner.model import Weights
from tuner.spec import Spec, param_path

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"  # the run's status (run.STATUS_FILE); the progress is its "compare" key
PHASES = ("search", "repeats")
CONFIDENCE = 0.95


def steps(spec: Spec) -> list[tuple[str, str]]:
    """(phase, arm) in the order they run: every arm's search, then every arm's repeats."""
    return [(phase, arm) for phase in PHASES for arm in spec.compare.arms]


def repeats_spec(arm_spec: Spec, best: dict, repeats: int, used: Iterable[int] = ()) -> Spec:
    """The arm's best config trained once per fresh seed: the first `repeats` seeds after
    train.seed that no search trial trained with (`used`: their seeds, when train.seed is searched;
    a repeat must not reproduce the chosen trial). The seeds are the searcher's whole plan (random
    searcher, one point per seed: exactly `repeats` trials), under FIFO so that every run trains
    all its epochs."""
    seed_key = next((k for k in best if param_path(k) == "train.seed"), "train.seed")
    taken = {arm_spec.train.seed, *used}
    fresh = (s for s in itertools.count(arm_spec.train.seed + 1) if s not in taken)
    seeds = list(itertools.islice(fresh, repeats))
    raw = arm_spec.model_dump()
    raw["search"].update(
        searcher="random", num_samples=repeats, n_initial_points=None, scheduler="fifo",
        parameters={**{k: {"choice": [v]} for k, v in best.items()}, seed_key: {"choice": seeds}},
        points_to_evaluate=[{**best, seed_key: s} for s in seeds],
    )
    return Spec.model_validate(raw)


def run_comparison(spec: Spec, data: Dataset, weights: dict[str, Weights], run_dir: Path,
                   experiment: str, resume: str) -> int:
    """Run (or continue) every step, write the tables and figure, and print the answer.
    Exit code: 0 answered, 1 no arm has a test score, 130 interrupted (resume with `resume`)."""
    status_path = run_dir / STATUS_FILE
    progress = results.read_json(status_path).get("compare") or {"done": [], "tests": {}}
    labels = {setting: w.label for setting, w in weights.items()}
    t0 = time.perf_counter()
    trials, epochs, best, seeds = [], [], {}, {}
    search_records = []  # their checkpoints go once the repeats are done (keep_checkpoints: best)
    repeat_records = {}  # arm -> its repeats: the models come from them
    for phase, arm in steps(spec):
        arm_spec = spec.arm(arm)
        if phase == "repeats":
            if arm not in best:
                log.warning("arm %s: no trial of its search finished; nothing to repeat", arm)
                continue
            arm_spec = repeats_spec(arm_spec, best[arm], spec.compare.repeats, seeds[arm])
        step = f"{phase}:{arm}"
        done = step in progress["done"]
        if not done:
            _status(status_path, state="running", phase=phase, arm=arm)
            print(f"\n== {phase} {arm} ==", flush=True)
        path = sweep.storage_join(experiment, arm, phase)
        grid = _run_step(arm_spec, data, weights, path, done)
        records = sweep.collect(grid, arm_spec)
        interrupted = not done and sweep.interrupted(grid, arm_spec, path)
        table = results.trials_table(records, arm_spec, labels, interrupted=interrupted)
        if phase == "search":
            search_records += records
            seeds[arm] = {arm_spec.with_values(r.params).train.seed for r in records}
            chosen = results.best_trial(table, arm_spec)
            if chosen is not None:
                best[arm] = next(r.params for r in records if r.trial_id == chosen["trial_id"])
        elif not interrupted:
            table = _tested(table, records, arm_spec, data, progress["tests"].setdefault(arm, {}),
                            status_path, progress)
            repeat_records[arm] = records
        trials.append(_tagged(table, arm, phase))
        epochs.append(_tagged(results.epochs_table(records), arm, phase))
        _write_tables(run_dir, trials, epochs)
        if interrupted:
            _status(status_path, state="partial", compare=progress)
            print(f"\ncomparison interrupted in {phase} of arm {arm} after "
                  f"{time.perf_counter() - t0:.0f} s; the tables in {run_dir} are partial.\n"
                  f"resume with: {resume}", file=sys.stderr)
            return 130
        if not done:
            progress["done"].append(step)
            if phase == "search":  # for a reader of status.json; a resume recomputes it
                progress.setdefault("best", {})[arm] = best.get(arm)
            _status(status_path, compare=progress)
    if spec.run.keep_checkpoints == "best":  # the repeats' checkpoints are the tested models
        deleted = sweep.prune_checkpoints(search_records, keep=None)
        log.info("deleted %d search checkpoint(s) (run.keep_checkpoints: best)", deleted)
    return _finish(spec, run_dir, pd.concat(trials, ignore_index=True), best, status_path,
                   time.perf_counter() - t0, (data, weights, repeat_records))


def _run_step(spec: Spec, data: Dataset, weights: dict[str, Weights], path: str, done: bool):
    """The step's ResultGrid: read back if it finished, else run (continuing it if it started)."""
    needed = {m.weights for m in spec.model_variants()}
    weights = {setting: w for setting, w in weights.items() if setting in needed}
    if done:
        return sweep.restore_tuner(spec, data, weights, path).get_results()
    tuner = (sweep.restore_tuner if _started(path) else sweep.make_tuner)(spec, data, weights, path)
    return tuner.fit()


def _started(path: str) -> bool:
    """Ray Tune saved the step's state (its trials and searcher), not only its tuner.pkl: a Tuner
    restored from a tuner.pkl alone, killed before its first save, has a HyperOpt without a space."""
    fs, root = pafs.FileSystem.from_uri(path)
    found = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    return any(Path(f.path).name.startswith("experiment_state") for f in found)


def _tested(table: pd.DataFrame, records, spec: Spec, data: Dataset, tests: dict,
            status_path: Path, progress: dict) -> pd.DataFrame:
    """Each finished repeat tested once (scores kept in status.json, so a resumed run never tests
    again); the table with test_accuracy and test_loss columns."""
    finished = set(table.loc[table["status"] == "finished", "trial_id"])
    for r in records:
        if r.trial_id in finished and r.trial_id not in tests:
            tests[r.trial_id] = sweep.test_best(r, spec, data)
            _status(status_path, compare=progress)
    scores = pd.DataFrame([tests.get(t, {}) for t in table["trial_id"]], index=table.index)
    return table.assign(test_accuracy=scores.get("test_accuracy", math.nan),
                        test_loss=scores.get("test_loss", math.nan))


def _status(path: Path, **fields) -> None:
    """Update status.json (run.write_status's file), keeping its other keys."""
    results.update_json(path, {**fields, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def _tagged(table: pd.DataFrame, arm: str, phase: str) -> pd.DataFrame:
    return table.assign(arm=arm, phase=phase)[["arm", "phase", *table.columns]]


def _write_tables(run_dir: Path, trials: list[pd.DataFrame], epochs: list[pd.DataFrame]) -> None:
    results.write_csv(run_dir / "trials.csv", pd.concat(trials, ignore_index=True))
    results.write_csv(run_dir / "epochs.csv", pd.concat(epochs, ignore_index=True))


def _finish(spec: Spec, run_dir: Path, trials: pd.DataFrame, best: dict, status_path: Path,
            wall: float, models: tuple = None) -> int:
    """`models`: (data, weights, arm -> repeat records), for each arm's model folder."""
    from tuner import artifact, plots  # noqa: PLC0415  matplotlib only when there is something to draw

    table = compare_table(trials, best, spec)
    if models is not None:
        folders = artifact.save_arms(run_dir, spec, *models[:2], trials, models[2])
        table["model"] = table["arm"].map(folders)
    results.write_csv(run_dir / "compare.csv", table)
    try:
        plots.plot_compare(trials, table, spec, run_dir / "compare.png")
    except Exception as e:  # noqa: BLE001  a figure is a convenience: never lose a run's results to it
        log.warning("compare.png not written: %s: %s", type(e).__name__, e)
    planned = len(spec.compare.arms) * (spec.search.planned_trials() + spec.compare.repeats)
    _status(status_path, state="finished", phase=None, arm=None,
            trials=results.trial_counts(trials, planned), cost=results.cost_totals(trials),
            wall_time_s=round(wall, 1))  # this session's, as a plain sweep's
    shown = ["arm", "test_mean", "test_ci95_low", "test_ci95_high", "val_mean", "repeats",
             "trials", "trial_epochs", "device_s"]
    print(f"\ncomparison finished in {wall:.0f} s; results in {run_dir}")
    print(results.format_table(table[shown]))
    print()
    for line in verdict(trials, table, spec):
        print(line)
    return 0 if table["test_mean"].notna().any() else 1


def t_interval(values: pd.Series) -> tuple[float, float]:
    """The 95% interval of the mean of `values` (Student's t); NaN for fewer than two."""
    n = len(values)
    if n < 2:
        return math.nan, math.nan
    mean, sem = float(values.mean()), float(stats.sem(values))
    if sem == 0:
        return mean, mean
    low, high = stats.t.interval(CONFIDENCE, n - 1, loc=mean, scale=sem)
    return float(low), float(high)


def compare_table(trials: pd.DataFrame, best: dict, spec: Spec) -> pd.DataFrame:
    """One row per arm: its best config (chosen on validation in its search), the validation and
    test scores of the repeats (mean, std, 95% interval of the test mean), and what the arm cost in
    all (search and repeats): trials, and the sums of trials.csv's trial_epochs and device_s."""
    metric = spec.search.metric
    rows = []
    for arm in spec.compare.arms:
        mine = trials[trials["arm"] == arm]
        repeats = mine[(mine["phase"] == "repeats") & (mine["status"] == "finished")]
        test = repeats["test_accuracy"].dropna() if "test_accuracy" in repeats else pd.Series([])
        low, high = t_interval(test)
        rows.append({
            "arm": arm,
            "best_config": json.dumps(best.get(arm)),
            "val_mean": repeats[metric].mean(),
            "val_std": repeats[metric].std(),
            "test_mean": test.mean() if len(test) else math.nan,
            "test_std": test.std() if len(test) > 1 else math.nan,
            "test_ci95_low": low,
            "test_ci95_high": high,
            "repeats": len(test),
            "trials": int((mine["phase"] == "search").sum()),
            "trial_epochs": int(mine["trial_epochs"].sum()),
            "device_s": round(float(mine["device_s"].sum()), 1),
            "weights": "; ".join(sorted(set(mine["weights"].dropna()))),
            "overrides": json.dumps(spec.compare.arms[arm]),
        })
    return pd.DataFrame(rows)


def verdict(trials: pd.DataFrame, table: pd.DataFrame, spec: Spec) -> list[str]:
    """The answer in words: the arm with the best mean test accuracy against each other arm, with
    the 95% interval of the difference and its p-value (`difference`). It "beats" the other arm when
    that interval excludes 0, and is "within noise" of it when the interval holds 0."""
    ranked = table.dropna(subset=["test_mean"]).sort_values("test_mean", ascending=False)
    if ranked.empty:
        return ["no arm has a test score: no repeat of any arm's best config finished; see "
                "trials.csv for the errors"]
    top = ranked.iloc[0]
    budget = f"each tuned with {spec.search.planned_trials()} trials"
    if len(ranked) == 1:
        return [f"only {top['arm']} has test scores: {100 * top['test_mean']:.1f}% test accuracy"]
    lines = []
    for _, other in ranked.iloc[1:].iterrows():
        a, b = _scores(trials, top["arm"]), _scores(trials, other["arm"])
        diff = 100 * (a.mean() - b.mean())
        seeds = f"{len(a)} seeds" if len(a) == len(b) else f"{len(a)} and {len(b)} seeds"
        if min(len(a), len(b)) < 2:
            lines.append(f"{top['arm']} leads {other['arm']} by {diff:.1f} points of test accuracy "
                         f"over {seeds}, {budget} (one seed: no spread to judge the difference by)")
            continue
        d = difference(a, b)
        half = 100 * (d["high"] - d["low"]) / 2
        how = f"{d['test']}, {_p(d['p'])}"
        if d["test"] == "paired t":
            how += f"; Welch: +- {100 * d['welch_half']:.1f}, {_p(d['welch_p'])}"
        if d["low"] > 0:
            lines.append(f"{top['arm']} beats {other['arm']} by {diff:.1f} +- {half:.1f} points of "
                         f"test accuracy ({how}) over {seeds}, {budget}")
        else:
            lines.append(f"{top['arm']} and {other['arm']} are within noise: {top['arm']} leads by "
                         f"{diff:.1f} +- {half:.1f} points of test accuracy ({how}) over {seeds}, "
                         f"{budget}")
    return lines


def difference(a: pd.Series, b: pd.Series) -> dict:
    """The 95% interval (low, high) and two-sided p-value of mean(a) - mean(b), and the test used.

    The repeats of every arm use the same seeds (repeats_spec), so when both arms have the same
    seeds (Series indexed by "train.seed", as `_scores` gives) the scores are paired by seed: a
    paired t on the differences (scipy's ttest_rel), which removes what a seed does to both arms
    alike. Otherwise Welch's t (unequal variances). Both figures are returned for a paired test
    (welch_half, welch_p) so that the words can show the other one too.
    """
    welch = stats.ttest_ind(a, b, equal_var=False)
    welch_ci = welch.confidence_interval(CONFIDENCE)
    out = {"test": "Welch t", "low": float(welch_ci.low), "high": float(welch_ci.high),
           "p": float(welch.pvalue), "welch_half": float(welch_ci.high - welch_ci.low) / 2,
           "welch_p": float(welch.pvalue)}
    paired = (a.index.name == b.index.name == "train.seed" and a.index.is_unique
              and b.index.is_unique and set(a.index) == set(b.index))
    if paired:
        b = b.loc[a.index]
        diffs = a.to_numpy() - b.to_numpy()
        if np.ptp(diffs) <= 1e-12 * max(1.0, float(np.abs(diffs).max())):  # no spread at all
            value = float(diffs.mean())
            return {**out, "test": "paired t", "low": value, "high": value,
                    "p": 1.0 if value == 0 else 0.0}
        rel = stats.ttest_rel(a.to_numpy(), b.to_numpy())
        ci = rel.confidence_interval(CONFIDENCE)
        out.update(test="paired t", low=float(ci.low), high=float(ci.high), p=float(rel.pvalue))
    if not np.isfinite(out["low"]):  # no spread in either arm (Welch): nothing to judge by
        out.update(low=-math.inf, high=math.inf, p=1.0)
    return out


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def _scores(trials: pd.DataFrame, arm: str) -> pd.Series:
    """The arm's test scores, indexed by train.seed when the table has it (a plain index if not)."""
    rows = trials[(trials["arm"] == arm) & (trials["phase"] == "repeats")]
    if "test_accuracy" not in rows:
        return pd.Series([], dtype=float)
    scores = rows["test_accuracy"]
    seed = next((c for c in rows.columns if param_path(str(c)) == "train.seed"), None)
    if seed is not None:
        scores = scores.set_axis(pd.Index(rows[seed].to_numpy(), name="train.seed"))
    return scores.dropna()
