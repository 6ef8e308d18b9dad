"""The console while a sweep runs: one line per trial event (started, finished, stopped early,
failed) and where the sweep stands (trials done and running, best so far, elapsed, an estimate of
what is left), in place of Ray Tune's wide status tables (`--verbose` keeps those).

Plain lines, the same on a terminal and in a log file.
"""

from __future__ import annotations

import time
from typing import Any

from ray import tune

from tuner.spec import Spec, param_path


def clock(seconds: float) -> str:
    """62 -> 1m02s; 3725 -> 1h02m."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class ConsoleProgress(tune.Callback):
    """Ray Tune callback printing a line per trial event with the sweep's standing."""

    def __init__(self, spec: Spec, out=print):
        self.spec = spec
        self.out = out
        self._reset()

    def _reset(self) -> None:
        self._t0 = time.monotonic()
        self._started: set[str] = set()
        self._ended: set[str] = set()
        self._best: float | None = None

    def __getstate__(self) -> dict:  # pickled with the RunConfig: settings only
        return {"spec": self.spec}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.out = print
        self._reset()

    def _values(self, trial) -> str:
        config = trial.config or {}
        shown = [f"{k}={_short(config[k])}" for k in self.spec.search.parameters if k in config]
        return ", ".join(shown)

    def standing(self, trials: list) -> str:
        """Where the sweep stands: done and running trials, best so far, elapsed, time left."""
        planned = len(trials) if self.spec.search.searcher == "grid" else \
            self.spec.search.planned_trials()
        done = len(self._ended)
        running = sum(t.status in ("RUNNING", "PENDING") and t.trial_id not in self._ended
                      for t in trials if t.trial_id in self._started)
        elapsed = time.monotonic() - self._t0
        parts = [f"{done}/{planned} done", f"{running} running"]
        if self._best is not None:
            parts.append(f"best {self.spec.search.metric} {self._best:.4f}")
        parts.append(clock(elapsed))
        if 0 < done < planned:  # trials so far took elapsed / done each, side by side as now
            parts.append(f"~{clock(elapsed / done * (planned - done))} left")
        return "[" + ", ".join(parts) + "]"

    def _score(self, result: dict | None) -> None:
        metric = self.spec.search.metric
        value = (result or {}).get(metric)
        if value is None or "error" in (result or {}):
            return
        better = max if self.spec.search.mode == "max" else min
        self._best = value if self._best is None else better(self._best, value)

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self._started.add(trial.trial_id)
        self.out(f"trial {trial.trial_id} started: {self._values(trial)} {self.standing(trials)}",
                 flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._ended.add(trial.trial_id)
        result: dict[str, Any] = trial.last_result or {}
        self._score(result)
        metric, epoch = self.spec.search.metric, result.get("epoch")
        key = next((k for k in self.spec.search.parameters if param_path(k) == "train.epochs"), None)
        planned = result.get("epochs_planned") or (trial.config or {}).get(key, self.spec.train.epochs)
        if "error" in result:
            what = f"stopped: {result['error']}"
        elif epoch is not None and epoch < planned:
            what = f"stopped early at epoch {epoch} of {planned}: {metric} {result.get(metric, float('nan')):.4f}"
        else:
            what = f"finished: {metric} {result.get(metric, float('nan')):.4f} after {epoch} epoch(s)"
        self.out(f"trial {trial.trial_id} {what} {self.standing(trials)}", flush=True)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._ended.add(trial.trial_id)
        error = trial.get_error()
        text = " ".join(str(error).split())[-160:] if error else "see its error.txt"
        self.out(f"trial {trial.trial_id} failed: {text} {self.standing(trials)}", flush=True)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
