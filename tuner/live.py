"""Tables that grow while the sweep runs: a Ray Tune callback on the driver rewrites trials.csv,
epochs.csv and status.json (with counts of trials by status) as reports arrive, at most every few
seconds, so a user can read them, or load them in pandas, during a long sweep.

Every file is replaced atomically (results.write_csv/write_json), so a reader never sees half of
one. The sweep's final write at the end (from Ray's ResultGrid) is the authoritative one.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd
from ray import tune

from tuner import results
from tuner.rundir import STATUS_FILE
from tuner.spec import Spec

log = logging.getLogger(__name__)

_STATES = {"PENDING": "pending", "RUNNING": "running", "PAUSED": "paused"}  # Ray's -> ours


class LiveTables(tune.Callback):
    """Rewrite a run directory's tables from the reports seen so far, at most every `every_s`.

    Ray 2.60's `Tuner.restore` takes no RunConfig (nor callbacks), but it restores the one the
    Tuner was made with, callbacks included, from the experiment's tuner.pkl: so a `--resume`d
    sweep gets this callback back (its settings; see __getstate__). It then starts from the run
    directory's epochs.csv, so the trials that ended before the resume keep their rows.
    """

    def __init__(self, run_dir: Path, spec: Spec, weights: str | dict[str, str],
                 every_s: float = 5.0):
        self.run_dir = Path(run_dir).resolve()  # a resume may start from another working directory
        self.spec = spec
        self.weights = weights
        self.every_s = every_s  # seconds between rewrites, at most one per this
        self._reset()

    def _reset(self) -> None:
        self._reports: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)  # id -> epoch -> report
        self._errors: dict[str, str] = {}
        self._ended: set[str] = set()
        self._last_write = 0.0  # time.monotonic() of the last rewrite
        self._dirty = False  # something changed since then

    def __getstate__(self) -> dict:  # pickled into Ray's tuner.pkl: settings only, not reports
        return {k: self.__dict__[k] for k in ("run_dir", "spec", "weights", "every_s")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    def setup(self, **info) -> None:
        """Before the first trial: a resumed sweep starts from the reports already written."""
        path = self.run_dir / "epochs.csv"
        if not path.is_file():
            return
        try:
            old = pd.read_csv(path, dtype={"trial_id": str})  # hex ids such as 1234e567
        except (pd.errors.EmptyDataError, OSError) as e:
            log.warning("live tables: %s not read (%s); they start empty", path, e)
            return
        params = set(self.spec.search.parameters)
        for row in old.to_dict("records"):
            report = {k: v for k, v in row.items() if k not in params and k != "trial_id"
                      and not (isinstance(v, float) and pd.isna(v))}
            if "epoch" in report:
                self._reports[row["trial_id"]][int(report["epoch"])] = report
        self._dirty = True

    # Events mark the tables stale; on_step_end (every turn of Tune's loop) rewrites them once
    # `every_s` has passed, so a report is never held back until the next event.

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self._dirty = True

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        report = {k: v for k, v in result.items() if k not in results.RAY_COLUMNS}
        by_epoch = self._reports[trial.trial_id]
        by_epoch[int(report.get("epoch", len(by_epoch) + 1))] = report  # a retried epoch once
        self._dirty = True

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._ended.add(trial.trial_id)
        self._dirty = True

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._ended.add(trial.trial_id)
        error = trial.get_error()
        self._errors[trial.trial_id] = (" ".join(str(error).split())[-500:] if error
                                        else _ray_error(trial) or "failed")
        self._dirty = True

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        if self._dirty:
            self.write(trials)

    def on_experiment_end(self, trials: list, **info) -> None:
        self.write(trials, force=True)

    def records(self, trials: list) -> list[results.TrialRecord]:
        """Every trial Ray knows of (pending ones too) with the reports seen so far."""
        out = []
        for t in trials:
            reports = [r for _, r in sorted(self._reports.get(t.trial_id, {}).items())]
            state = None if t.trial_id in self._ended else _STATES.get(t.status)
            out.append(results.TrialRecord(
                trial_id=t.trial_id, params=results.trial_params(t.config or {}, self.spec),
                reports=reports, error=self._errors.get(t.trial_id) or _ray_error(t), state=state))
        return sorted(out, key=lambda r: r.trial_id)

    def write(self, trials: list, force: bool = False) -> None:
        """Rewrite the tables if `every_s` has passed since the last time (or if forced).

        A failure is logged and the sweep goes on: these tables are a view, rewritten at the end."""
        now = time.monotonic()
        if not force and now - self._last_write < self.every_s:
            return
        self._last_write, self._dirty = now, False
        try:
            records = self.records(trials)
            table = results.trials_table(records, self.spec, self.weights)
            results.write_trials(self.run_dir, table)
            results.write_csv(self.run_dir / "epochs.csv", results.epochs_table(records))
            self._write_status(table)
        except Exception as e:  # noqa: BLE001  never stop a sweep over its progress view
            log.warning("live tables not written: %s: %s", type(e).__name__, e)

    def _write_status(self, table: pd.DataFrame) -> None:
        results.update_json(self.run_dir / STATUS_FILE, {  # keeping run.py's fields
            "trials": results.trial_counts(table, self.spec.search.planned_trials()),
            "cost": results.cost_totals(table),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })


def _ray_error(trial) -> str | None:
    """For a trial Ray restored as failed (a resumed sweep), where its error is."""
    return "failed; see the trial's error.txt" if trial.status == "ERROR" else None
