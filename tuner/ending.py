"""A sweep's ending, written once for every way a sweep ends: `tuner run` (and its `--resume`)
and `tuner resume --more N` (a session of added trials) both end with `write_ending`: the tables
of every trial, the figure, the chosen trial tested once (unless it was tested before),
best.json with the model folder, status.json and report.html.

It sits above the modules it draws on (results, sweep, confirm, artifact, plots, report) and
below the command lines that call it (run, resume); their heavy imports are made when it runs.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from tuner import phases
from tuner.rundir import BEST_FILE, SESSIONS, STATUS_FILE, TEST_LEDGER, read_json_if_any, stored
from tuner.signals import stopped_code, stopped_word
from tuner.spec import Spec
from tuner.specfile import redact

log = logging.getLogger("tuner")


@dataclass(frozen=True)
class AddedTrials:
    """A session of trials added to a finished or interrupted sweep (tuner resume --more N)."""

    spec: Spec  # the session's own spec: its number of trials, its searcher's evidence
    earlier: list[str]  # the experiments before this session's: the first sweep's, then sessions'
    sessions: list[dict]  # status.json's SESSIONS, this one included


def planned(spec: Spec, sessions: list[dict]) -> int:
    """Trials the run plans in all: the first sweep's and every session's."""
    return spec.search.planned_trials() + sum(s["trials"] for s in sessions)


def write_ending(spec: Spec, data, weights, run_dir: Path, experiment: str, grid, wall: float,
                 resume: str, added: AddedTrials | None = None) -> int:
    """Write the tables; evaluate the chosen trial on the test set unless the sweep is partial;
    write best.json, the model folder, status.json and the report. Returns the exit code.

    `grid`: what Tune's fit() returned for `experiment`. `added`: a session of added trials, whose
    tables cover every trial of every session; its chosen trial is tested only if the choice
    changed (the earlier test result stands otherwise), and it is not confirmed again
    (search.confirm_top_k is the first sweep's)."""
    import pandas as pd

    from tuner import artifact, confirm, results, sweep

    with phases.phase("tables"):
        old_records = [] if added is None else sweep.collect(earlier_trials(added.earlier), spec)
        new_records = sweep.collect(grid, spec)
        records = new_records if added is None else sorted(old_records + new_records,
                                                           key=lambda r: r.trial_id)
        partial = sweep.interrupted(grid, spec if added is None else added.spec, experiment)
        trials = results.trials_table(records, spec, labels(weights), interrupted=partial)
        results.write_trials(run_dir, trials)
        epochs = results.epochs_table(records)
        results.write_csv(run_dir / "epochs.csv", epochs)
        for key, table in results.summary_tables(trials, spec).items():
            results.write_csv(run_dir / f"summary_by_{key}.csv", table)
    best = None if partial else results.best_trial(trials, spec)
    selection, confirmed = None, None
    if best is not None and added is None and confirm.top_k(spec) > 0:
        with phases.phase("confirm"):
            outcome = confirm_choice(spec, data, weights, run_dir, experiment, trials, records)
        if outcome is None:
            partial, best = True, None
        else:
            best, selection, confirmed = outcome
    record = None if best is None else next(r for r in records if r.trial_id == best["trial_id"])
    previous = None if added is None else read_json_if_any(run_dir / BEST_FILE)
    # added trials: a choice that stands keeps its one test result; no second look at the test set
    stands = record is not None and bool(previous) and previous.get("trial_id") == record.trial_id
    if record is not None and not stands:  # the test runs in a Ray worker while the figure is drawn
        with phases.phase("test"):
            if added is None:
                results.record_test_use(run_dir, record.trial_id, "the chosen trial")
            else:
                uses = results.test_set_uses(run_dir)
                if not (run_dir / TEST_LEDGER).is_file() and uses["count"]:
                    for trial in uses["trials"]:  # a run from before the ledger: its earlier looks
                        results.record_test_use(run_dir, trial, "an earlier session's chosen trial")
                results.record_test_use(run_dir, record.trial_id,
                                        "the chosen trial, after more trials")
            started = sweep.start_test(record, spec, data)
    write_plot(spec, epochs, trials, run_dir)
    every = trials if confirmed is None else pd.concat([trials, confirmed], ignore_index=True)
    cost = {**results.cost_totals(every), "time_to_best_s": results.time_to_best(epochs, trials, spec)}
    counts = {"trials": results.trial_counts(trials, spec.search.planned_trials() if added is None
                                             else planned(spec, added.sessions)),
              "cost": cost,
              "wall_time_s": round(wall, 1),  # this session's: a resumed sweep counts from the resume
              **({} if added is None else {SESSIONS: added.sessions})}
    first = experiment if added is None else added.earlier[0]  # status.json's: the first sweep's

    if partial:
        results.write_status(run_dir, "partial", first, resume, counts)
        write_report(run_dir)
        how_many = ("" if added is not None else f" ({grid.num_terminated} of "
                    f"{spec.search.planned_trials()} trials finished)")
        print(f"\nsweep {stopped_word()} after {wall:.0f} s: the tables in {run_dir} are "
              f"partial{how_many}.\nresume with: {resume}", file=sys.stderr)
        return stopped_code()
    if best is None:
        if added is None:
            keep_checkpoints(spec, records, None)
        results.write_status(run_dir, "finished", first, resume, counts)
        write_report(run_dir)
        print(f"\nno trial finished; see {run_dir / 'trials.csv'} for the errors", file=sys.stderr)
        return 1
    metric = spec.search.metric
    if stands:
        uses = results.test_set_uses(run_dir)
        chosen = {**previous, "cost": cost, "test_set_uses": uses}
        test = {"test_accuracy": previous["test_accuracy"]}
        print(f"\nthe chosen trial is still {record.trial_id}: not tested again")
    else:
        with phases.phase("test"):
            test = sweep.tested(record, started)
        uses = results.test_set_uses(run_dir)  # once, unless a driver died after an earlier look
        with phases.phase("model"):
            model_dir = artifact.save_best(run_dir, spec, data, weights, record, best, test)
        chosen = {
            "trial_id": record.trial_id,
            "config": record.params,
            "metric": metric,
            metric: best[metric],
            "val_accuracy": best["val_accuracy"],
            "val_loss": best["val_loss"],
            # the epoch whose validation scores and weights these are (search.select)
            "select": spec.search.select,
            "score_epoch": None if pd.isna(best.get("score_epoch")) else int(best["score_epoch"]),
            "val_images": len(data.val),
            "epochs_completed": int(best["epochs_completed"]),
            **test,  # test_accuracy, evaluated once after the sweep and never used to choose; where
            "test_images": len(data.test),
            "classes": list(data.classes),
            "model": model_dir,  # model.pt and model.json, relative to the run folder
            "checkpoint": redact(sweep.checkpoint_location(record.checkpoint, experiment, run_dir)),
            "weights": best["weights"],
            "sweep_wall_time_s": round(wall, 1),
            "cost": cost,  # totals over all trials; time_to_best_s: see results.time_to_best
            "test_set_uses": uses,
        }
    chosen.update(results.versus_default(trials, spec, best, selection))  # on validation only
    if selection:
        chosen["selection"] = selection
    results.write_json(run_dir / BEST_FILE, chosen)
    # Added trials: only this session's checkpoints, and the one chosen before (the others are
    # gone already).
    gone_best = [r for r in old_records if previous and r.trial_id == previous.get("trial_id")]
    keep_checkpoints(spec, [*new_records, *gone_best], record)
    # a crash before it: resumable
    results.write_status(run_dir, "finished", first, resume, {**counts, "test_set_uses": uses})
    write_report(run_dir)
    if added is None:
        print(f"\nsweep finished in {wall:.0f} s; results in {run_dir}")
    else:
        print(f"\n{len(new_records)} trial(s) added in {wall:.0f} s; {len(records)} in {run_dir}")
    print(results.format_table(results.top_trials(trials, spec)))
    looks = ("test set used once, after selection" if added is None else
             f"the test set used {uses['count']} time(s) in this run, for "
             f"{', '.join(uses['trials'])}")
    print(f"\nbest: trial {record.trial_id} {metric}={best[metric]:.4f} "
          f"test_accuracy={test['test_accuracy']:.4f} ({looks})")
    print(results.gain_line(chosen, spec))
    if selection:
        print(confirm.describe(selection))
    if added is None:
        print(f"model: {run_dir / chosen['model']} (predict with: python -m tuner.predict "
              f"{run_dir} IMAGES...)")
    return 0


def earlier_trials(experiments: list[str]) -> list:
    """The results of every trial of these experiments, as Tune's fit() gives a sweep's own."""
    from ray import tune

    return [r for exp in experiments for r in tune.ResultGrid(tune.ExperimentAnalysis(exp))]


def confirm_choice(spec: Spec, data, weights, run_dir: Path, experiment: str, trials, records):
    """search.confirm_top_k: the top configs trained again with a fresh seed (an experiment of
    their own beside the search's, resumed like it), then the challengers with the same seed
    (tuner.confirm.challengers: a second experiment, when any), confirm.csv written, and the
    choice made on the mean. Returns (the chosen trial's row, the selection record, the
    confirming trials' table), or None if the confirming runs were interrupted."""
    import pandas as pd

    from tuner import confirm, results, sweep

    used = {spec.with_values(r.params).train.seed for r in records}
    parent, name = sweep.storage_split(experiment)
    crecords = []

    def round_of(key: str, rows: pd.DataFrame, what: str) -> pd.DataFrame | None:
        """One round's experiment (status.json's `key` once it is done): its table, or None if
        it was interrupted. Both rounds train with the same fresh seed."""
        this = confirm.confirm_spec(spec, confirm.configs(rows, spec), used)
        path = sweep.storage_join(parent, f"{name}-{key.replace('_', '-')}")
        done = results.read_json(run_dir / STATUS_FILE).get(key, {}).get("done", False)
        if not done:
            print(f"\nconfirming {what} {len(rows)} config(s) with another seed "
                  f"(search.confirm_top_k)", flush=True)
        grid = sweep.run_step(this, data, weights, path, done)
        mine = sweep.collect(grid, this)
        crecords.extend(mine)
        if not done and sweep.interrupted(grid, this, path):
            return None
        results.update_json(run_dir / STATUS_FILE,
                            {key: {"experiment": stored(path, run_dir), "done": True}})
        return results.trials_table(mine, this, labels(weights))

    top = confirm.candidates(trials, spec, confirm.top_k(spec))
    table = round_of("confirm", top, "the top")
    if table is None:
        return None
    more = confirm.challengers(trials, spec, top, table, len(data.val))
    if len(more):  # the second round: whose one score beats (or, with prefer, nears) the choice
        extra = round_of("confirm_more", more, "the challenging")
        if extra is None:
            return None
        top, table = pd.concat([top, more]), pd.concat([table, extra], ignore_index=True)
    results.write_csv(run_dir / "confirm.csv", table)
    chosen, selection = confirm.choose(spec, top, table, len(data.val))
    if spec.run.keep_checkpoints == "best":  # never the model: the search trial's is
        sweep.prune_checkpoints(crecords, keep=None)
    return trials[trials["trial_id"] == chosen].iloc[0], selection, table


def keep_checkpoints(spec: Spec, records, best) -> None:
    """run.keep_checkpoints: best deletes every checkpoint but the chosen trial's, once the sweep has
    finished and nothing can resume it (a partial sweep keeps them all)."""
    if spec.run.keep_checkpoints == "best":
        from tuner import sweep

        deleted = sweep.prune_checkpoints(records, keep=best)
        log.info("deleted %d checkpoint(s) of trials not chosen (run.keep_checkpoints: best)",
                 deleted)


def labels(weights: dict) -> dict[str, str]:
    """Weights setting -> the label of what it resolved to (for rows of trials that never reported)."""
    return {setting: w.label for setting, w in weights.items()}


def write_plot(spec: Spec, epochs, trials, run_dir: Path) -> None:
    try:
        with phases.phase("figure"):
            from tuner import plots  # matplotlib: counted as the figure's

            plots.plot_sweep(epochs, trials, spec, run_dir / "sweep.png")
    except Exception as e:  # noqa: BLE001  a figure is a convenience: never lose a run's results to it
        log.warning("sweep.png not written: %s: %s", type(e).__name__, e)


def write_report(run_dir: Path) -> None:
    try:
        with phases.phase("report"):
            from tuner import report

            report.write_report([run_dir], run_dir / "report.html")
    except Exception as e:  # noqa: BLE001  like the figure: never lose a run's results to it
        log.warning("report.html not written: %s: %s", type(e).__name__, e)

