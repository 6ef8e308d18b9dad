"""Strategies compared on equal terms: the arms of `compare:` in one run directory and one Ray session.

Phase "search": each arm runs the spec's own search (same space and `num_samples`; a searcher seed
of its own, Spec.arm) with its overrides, the arm's own settings as its first trial; one Ray Tune
experiment per arm, `<experiment>/<arm>/search`. Phase "confirm" (search.confirm_top_k): each
arm's top configs trained again with a fresh seed, and its choice made on the mean
(tuner.confirm). Phase "repeats": each arm's chosen config is trained again once per fresh
`train.seed`, and so are the arm's own settings, with the same seeds; each of those runs is tested
once. The confirming runs of every arm are one experiment, and so are the repeats
(`<experiment>/_arms/<phase>`, tuner.arms): fixed points, so the two cores stay busy across arms.
status.json records the finished steps and the test scores, so `--resume` continues with the step
it stopped in and never tests a run twice.

Writes trials.csv and epochs.csv (every trial of every step, with `arm` and `phase` columns, and
`role` for the repeats: chosen or default), compare.csv (one row per arm), compare.png, and prints
the answer in words.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import sys
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from tuner import arms, confirm, results, sweep
from tuner.data import Dataset
from tuner.model import Weights
from tuner.rundir import STATUS_FILE
from tuner.spec import Spec, param_path, same_point

log = logging.getLogger(__name__)

CONFIDENCE = 0.95


def seed_key(best: dict) -> str:
    """The key of train.seed among a point's keys ("seed" when searched as such)."""
    return next((k for k in best if param_path(k) == "train.seed"), "train.seed")


def repeats_spec(arm_spec: Spec, best: dict, repeats: int, used: Iterable[int] = (),
                 default: dict | None = None) -> Spec:
    """The arm's best config trained once per fresh seed: the first `repeats` seeds after
    train.seed that no search trial trained with (`used`: their seeds, when train.seed is searched;
    a repeat must not reproduce the chosen trial). With `default` (the arm's own settings,
    Spec.default_point) other than the best config, those settings are trained with the same
    seeds too: what tuning gained is then measured on the test set, paired by seed. The points
    are the searcher's whole plan (random searcher, one trial per point), under FIFO so that
    every run trains all its epochs."""
    key = seed_key(best)
    taken = {arm_spec.train.seed, *used}
    fresh = (s for s in itertools.count(arm_spec.train.seed + 1) if s not in taken)
    seeds = list(itertools.islice(fresh, repeats))
    configs = [best]
    if default is not None and not same_config(default, best):
        configs.append({**default, **({key: best[key]} if key in best else {})})
    choices = {k: list(dict.fromkeys(c[k] for c in configs)) for k in best}
    raw = arm_spec.model_dump()
    raw["search"].update(
        searcher="random", num_samples=len(configs) * repeats, n_initial_points=None,
        scheduler="fifo", default_trial=False,
        parameters={**{k: {"choice": v} for k, v in choices.items()}, key: {"choice": seeds}},
        points_to_evaluate=[{**c, key: s} for c in configs for s in seeds],
    )
    return Spec.model_validate(raw)


def same_config(a: dict, b: dict) -> bool:
    """Two points of an arm's search, train.seed aside."""
    key = seed_key(a)
    return same_point({k: v for k, v in a.items() if k != key},
                      {k: v for k, v in b.items() if k != key})


def with_roles(table: pd.DataFrame, best: dict, default: dict | None) -> pd.DataFrame:
    """A repeats table with a `role` column: "chosen" for runs of the best config, "default" for
    runs of the arm's own settings (when they differ)."""
    keys = [k for k in best if k != seed_key(best)]

    def role(row) -> str:
        values = {k: results.plain(row[k]) for k in keys}
        if default is not None and not same_config(default, best) and same_config(
                values, {k: default[k] for k in keys}):
            return "default"
        return "chosen"

    roles = [role(r) for _, r in table.iterrows()] if len(table) else []
    return table.assign(role=roles)


MERGED = "_arms"  # the folder of the steps that hold every arm (an arm's name starts with a letter)


def run_comparison(spec: Spec, data: Dataset, weights: dict[str, Weights], run_dir: Path,
                   experiment: str, resume: str) -> int:
    """Run (or continue) every step, write the tables and figure, and print the answer.
    Exit code: 0 answered, 1 no arm has a test score, 130 interrupted (resume with `resume`)."""
    status_path = run_dir / STATUS_FILE
    progress = results.read_json(status_path).get("compare") or {"done": [], "tests": {}}
    labels = {setting: w.label for setting, w in weights.items()}
    t0 = time.perf_counter()
    trials, epochs, best, seeds = [], [], {}, {}
    defaults = {arm: spec.arm(arm).default_point()[0] for arm in spec.compare.arms}
    search_records = []  # their checkpoints go once the repeats are done (keep_checkpoints: best)
    searched, selections = {}, {}  # arm -> its search's table and records; its selection record
    repeat_records = {}  # arm -> its repeats: the models come from them

    def run(step: str, step_spec: Spec, path: str, arm: str | None = None):
        done = step in progress["done"]
        if not done:
            phase = step.split(":")[0]
            _status(status_path, state="running", phase=phase, arm=arm)
            print(f"\n== {phase} {arm or 'all arms'} ==", flush=True)
        grid = sweep.run_step(step_spec, data, weights, path, done)
        records = sweep.collect(grid, step_spec)
        return records, done, not done and sweep.interrupted(grid, step_spec, path)

    def keep(table: pd.DataFrame, records, arm: str, phase: str) -> None:
        trials.append(_tagged(table, arm, phase))
        epochs.append(_tagged(results.epochs_table(records), arm, phase))
        _write_tables(run_dir, trials, epochs)

    def stopped(phase: str, arm: str | None) -> int:
        _status(status_path, state="partial", compare=progress)
        print(f"\ncomparison interrupted in {phase}{f' of arm {arm}' if arm else ''} after "
              f"{time.perf_counter() - t0:.0f} s; the tables in {run_dir} are partial.\n"
              f"resume with: {resume}", file=sys.stderr)
        return 130

    def finished(step: str, done: bool) -> None:
        if not done:
            progress["done"].append(step)
            progress["best"] = {a: best.get(a) for a in spec.compare.arms}  # for a reader
            _status(status_path, compare=progress)

    for arm in spec.compare.arms:  # each arm's search: a searcher and a scheduler of its own
        arm_spec = spec.arm(arm)
        records, done, interrupted = run(f"search:{arm}", arm_spec,
                                         sweep.storage_join(experiment, arm, "search"), arm)
        table = results.trials_table(records, arm_spec, labels, interrupted=interrupted)
        search_records += records
        seeds[arm] = {arm_spec.with_values(r.params).train.seed for r in records}
        searched[arm] = table, records
        chosen = results.best_trial(table, arm_spec)
        if chosen is not None:
            best[arm] = next(r.params for r in records if r.trial_id == chosen["trial_id"])
        keep(table, records, arm, "search")
        if interrupted:
            return stopped("search", arm)
        finished(f"search:{arm}", done)
    for arm in spec.compare.arms:
        if arm not in best:
            log.warning("arm %s: no trial of its search finished; nothing to confirm or repeat",
                        arm)

    # Every arm's confirming runs (search.confirm_top_k) as one experiment, then every arm's
    # repeats as one: fixed points, no searcher (tuner.arms)
    tops = {arm: confirm.candidates(searched[arm][0], spec.arm(arm), confirm.top_k(spec.arm(arm)))
            for arm in best if confirm.top_k(spec.arm(arm)) > 0}
    plans = {arm: confirm.confirm_spec(spec.arm(arm), confirm.configs(top, spec), seeds[arm])
             for arm, top in tops.items()}
    confirmed, second = {}, {}  # arm -> its confirming runs' table (both rounds), their seeds
    for phase in ("confirm", "confirm-more"):  # the top configs, then challengers (tuner.confirm)
        if not plans:
            break
        mine, interrupted = _merged_step(run, finished, phase, spec, plans, experiment)
        for arm, step_spec in plans.items():
            records = mine[arm]
            table = results.trials_table(records, step_spec, labels, interrupted=interrupted)
            search_records += records  # never a model: their checkpoints go too
            second.setdefault(arm, set()).update(
                step_spec.with_values(r.params).train.seed for r in records)
            confirmed[arm] = pd.concat([confirmed.get(arm), table], ignore_index=True)
            keep(table, records, arm, "confirm")
        if interrupted:
            return stopped("confirm", None)
        if phase == "confirm":  # the same second seed for the challengers as for the top configs
            more = {arm: confirm.challengers(searched[arm][0], spec.arm(arm), tops[arm],
                                             confirmed[arm], len(data.val)) for arm in plans}
            plans = {arm: confirm.confirm_spec(spec.arm(arm), confirm.configs(rows, spec),
                                               seeds[arm]) for arm, rows in more.items() if len(rows)}
            tops = {arm: pd.concat([tops[arm], more[arm]]) for arm in tops}
    for arm in confirmed:  # the choice on the mean over both seeds
        seeds[arm] |= second[arm]
        chosen, selections[arm] = confirm.choose(spec.arm(arm), tops[arm], confirmed[arm],
                                                 len(data.val))
        best[arm] = next(r.params for r in searched[arm][1] if r.trial_id == chosen)

    plans = {arm: repeats_spec(spec.arm(arm), best[arm], spec.compare.repeats, seeds[arm],
                               defaults[arm]) for arm in best}
    if plans:
        mine, interrupted = _merged_step(run, finished, "repeats", spec, plans, experiment)
        if not interrupted:
            _test_all(mine, plans, data, progress, status_path)
        for arm, step_spec in plans.items():
            records = mine[arm]
            table = results.trials_table(records, step_spec, labels, interrupted=interrupted)
            if not interrupted:
                table = _with_tests(table, progress["tests"].get(arm, {}))
                repeat_records[arm] = records
            keep(with_roles(table, best[arm], defaults[arm]), records, arm, "repeats")
        if interrupted:
            return stopped("repeats", None)
    if spec.run.keep_checkpoints == "best":  # the repeats' checkpoints are the tested models
        deleted = sweep.prune_checkpoints(search_records, keep=None)
        log.info("deleted %d search checkpoint(s) (run.keep_checkpoints: best)", deleted)
    return _finish(spec, run_dir, pd.concat(trials, ignore_index=True), best, status_path,
                   time.perf_counter() - t0, (data, weights, repeat_records), selections)


def _merged_step(run, finished, phase: str, spec: Spec, plans: dict[str, Spec], experiment: str):
    """Every arm's step `phase` as one experiment (or one per group of arms that tuner.arms can
    tell apart): arm -> its records (params as its own step names them), and whether it was
    interrupted."""
    mine, values, interrupted = {arm: [] for arm in plans}, spec.arm_settings(), False
    for i, group in enumerate(arms.groups(spec, list(plans))):
        step = phase if i == 0 else f"{phase}-{i + 1}"
        merged = arms.merged_spec(spec, {arm: plans[arm] for arm in group})
        records, read_back, interrupted = run(step, merged,
                                              sweep.storage_join(experiment, MERGED, step))
        for r in records:
            if not r.params:  # never started (an interrupted step)
                continue
            arm = arms.arm_of({a: values[a] for a in group}, r.params)
            keys = [*plans[arm].search.parameters]
            mine[arm].append(replace(r, params={k: v for k, v in r.params.items() if k in keys}))
        if interrupted:
            break
        finished(step, read_back)
    return mine, interrupted


def _test_all(records: dict[str, list], plans: dict[str, Spec], data: Dataset, progress: dict,
              status_path: Path) -> None:
    """Each finished repeat of every arm tested once, as Ray tasks that run side by side (as many
    at a time as the trials' resources allow). Scores are kept in status.json as they come, so a
    resumed run never tests again."""
    tests = progress.setdefault("tests", {})
    started = []
    for arm, mine in records.items():
        done = tests.setdefault(arm, {})
        for r in mine:
            if r.error is None and r.checkpoint is not None and r.trial_id not in done:
                results.record_test_use(status_path.parent, r.trial_id, "a repeat")
                started.append((arm, r, sweep.start_test(r, plans[arm], data)))
    for arm, r, task in started:
        tests[arm][r.trial_id] = sweep.tested(r, task)
        _status(status_path, compare=progress)


def _with_tests(table: pd.DataFrame, tests: dict) -> pd.DataFrame:
    """A repeats table with test_accuracy and test_loss columns (NaN where a run was not tested)."""
    scores = pd.DataFrame([tests.get(t, {}) for t in table["trial_id"]], index=table.index)
    return table.assign(test_accuracy=scores.get("test_accuracy", math.nan),
                        test_loss=scores.get("test_loss", math.nan))


def _status(path: Path, **fields) -> None:
    """Update status.json (results.write_status's file), keeping its other keys."""
    results.update_json(path, {**fields, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def _tagged(table: pd.DataFrame, arm: str, phase: str) -> pd.DataFrame:
    return table.assign(arm=arm, phase=phase)[["arm", "phase", *table.columns]]


def _write_tables(run_dir: Path, trials: list[pd.DataFrame], epochs: list[pd.DataFrame]) -> None:
    results.write_csv(run_dir / "trials.csv", pd.concat(trials, ignore_index=True))
    results.write_csv(run_dir / "epochs.csv", pd.concat(epochs, ignore_index=True))


def _finish(spec: Spec, run_dir: Path, trials: pd.DataFrame, best: dict, status_path: Path,
            wall: float, models: tuple = None, selections: dict | None = None) -> int:
    """`models`: (data, weights, arm -> repeat records), for each arm's model folder;
    `selections`: arm -> its selection record (search.confirm_top_k)."""
    from tuner import artifact, plots  # noqa: PLC0415  matplotlib only when there is something to draw

    table = compare_table(trials, best, spec)
    regret = {arm: s["regret"] for arm, s in (selections or {}).items()}
    changed = {arm: s["chosen"] != s["first_choice"] for arm, s in (selections or {}).items()}
    table["confirm_regret"] = table["arm"].map(regret)  # chosen config's first seed - its mean
    table["confirm_changed_choice"] = table["arm"].map(changed)
    if models is not None:
        folders = artifact.save_arms(run_dir, spec, *models[:2], trials, models[2])
        table["model"] = table["arm"].map(folders)
    results.write_csv(run_dir / "compare.csv", table)
    try:
        plots.plot_compare(trials, table, spec, run_dir / "compare.png")
    except Exception as e:  # noqa: BLE001  a figure is a convenience: never lose a run's results to it
        log.warning("compare.png not written: %s: %s", type(e).__name__, e)
    planned = len(trials[trials["phase"] != "search"]) + len(spec.compare.arms) * \
        spec.search.planned_trials()
    _status(status_path, state="finished", phase=None, arm=None,
            trials=results.trial_counts(trials, planned), cost=results.cost_totals(trials),
            test_set_uses=results.test_set_uses(run_dir),  # one look per tested repeat
            wall_time_s=round(wall, 1))  # this session's, as a plain sweep's
    shown = ["arm", "test_mean", "test_ci95_low", "test_ci95_high", "val_mean", "repeats",
             "default_test_mean", "gain_vs_default", "trials", "trial_epochs", "device_s"]
    print(f"\ncomparison finished in {wall:.0f} s; results in {run_dir}")
    print(results.format_table(table[shown]))
    print()
    for line in results.gain_lines(table) + verdict(trials, table, spec):
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
    test scores of the repeats (mean, std, 95% interval of the test mean), what tuning gained over
    the arm's own settings (trained with the same seeds: `gain_vs_default`, the paired difference
    of test means, and its 95% interval; 0 when the settings are the choice), and what the arm
    cost in all (search and repeats): trials, and the sums of trials.csv's trial_epochs and
    device_s (`default_trial_epochs`: the part spent on the own settings' repeats)."""
    metric = spec.search.metric
    rows = []
    for arm in spec.compare.arms:
        mine = trials[trials["arm"] == arm]
        repeats = results.repeat_rows(trials, arm)
        repeats = repeats[repeats["status"] == "finished"]
        test = repeats["test_accuracy"].dropna() if "test_accuracy" in repeats else pd.Series([])
        low, high = t_interval(test)
        own = results.repeat_rows(trials, arm, "default")
        arm_spec = spec.arm(arm)
        measured = arm_spec.default_point()[0] is not None
        gain = _gain(trials, arm, own, measured)
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
            **gain,
            "searcher_seed": arm_spec.search.seed,
            "trials": int((mine["phase"] == "search").sum()),
            "trial_epochs": int(mine["trial_epochs"].sum()),
            "device_s": round(float(mine["device_s"].sum()), 1),
            "default_trial_epochs": int(own["trial_epochs"].sum()) if len(own) else 0,
            "weights": "; ".join(sorted(set(mine["weights"].dropna()))),
            "overrides": json.dumps(spec.compare.arms[arm]),
        })
    return pd.DataFrame(rows)


def _gain(trials: pd.DataFrame, arm: str, own: pd.DataFrame, measured: bool = True) -> dict:
    """The arm's own settings' test mean and what the chosen config gained over them, paired by
    seed (`difference`). NaN when not `measured` (no trial of the own settings could run). No
    runs of the own settings: they are the chosen config (gain 0), or none ran (an older run)."""
    chosen = _scores(trials, arm)
    empty = {"default_test_mean": math.nan, "gain_vs_default": math.nan,
             "gain_ci95_low": math.nan, "gain_ci95_high": math.nan}
    if not measured:
        return empty
    if own.empty:
        if "role" not in trials or not len(chosen):
            return empty
        mean = float(chosen.mean())
        return {"default_test_mean": mean, "gain_vs_default": 0.0, "gain_ci95_low": 0.0,
                "gain_ci95_high": 0.0}
    theirs = _scores(trials, arm, "default")
    if not len(theirs) or not len(chosen):
        return empty
    out = {**empty, "default_test_mean": float(theirs.mean()),
           "gain_vs_default": float(chosen.mean() - theirs.mean())}
    if min(len(chosen), len(theirs)) >= 2:
        d = difference(chosen, theirs)
        out.update(gain_ci95_low=d["low"], gain_ci95_high=d["high"])
    return out


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


def _scores(trials: pd.DataFrame, arm: str, role: str = "chosen") -> pd.Series:
    """The test scores of the arm's repeats of its chosen config (or, role "default", of its own
    settings), indexed by train.seed when the table has it (a plain index if not)."""
    rows = results.repeat_rows(trials, arm, role)
    if "test_accuracy" not in rows:
        return pd.Series([], dtype=float)
    scores = rows["test_accuracy"]
    seed = next((c for c in rows.columns if param_path(str(c)) == "train.seed"), None)
    if seed is not None:
        scores = scores.set_axis(pd.Index(rows[seed].to_numpy(), name="train.seed"))
    return scores.dropna()
