"""tuner from Python: a run folder as tables and a model, as Ray Tune's ResultGrid gives a sweep.

    import tuner

    run = tuner.load("results/fashion-quick/20261206-101500-1a2b")
    run.trials                    # one row per trial (trials.csv), a DataFrame
    run.epochs                    # one row per trial and epoch (epochs.csv)
    run.best                      # the chosen trial (best.json): config, scores, test accuracy
    model = run.model()           # the chosen model (eval mode), as `tuner predict` builds it
    run.predict(["shoe.png", "photos/"])   # a DataFrame, the rows `tuner predict` writes

    run = tuner.run_sweep("sweeps/fashion-quick.yaml", {"search.num_samples": 2})

Everything is read from the run folder's files, so a run can be loaded while it runs (its tables
so far, no `best` yet) and on another machine than the one that ran it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tuner.errors import InputError
from tuner.spec import Spec


@dataclass(frozen=True)
class RunResult:
    """One run folder, read: its spec, status, tables and chosen trial; its model on demand."""

    path: Path
    spec: Spec
    status: dict[str, Any]
    best: dict[str, Any] | None  # None until the sweep finished (or for a comparison: compare)
    trials: pd.DataFrame
    epochs: pd.DataFrame
    compare: pd.DataFrame | None  # a comparison's arms (compare.csv), else None

    @property
    def state(self) -> str:
        """running, partial, finished (status.json), or "not started"."""
        return self.status.get("state", "not started")

    def model(self, arm: str | None = None, device: str = "cpu"):
        """The chosen model (a comparison's: give `arm`) in eval mode on `device`."""
        from tuner import artifact

        model, _, _ = artifact.load(self.path, arm, device)
        return model

    def card(self, arm: str | None = None) -> dict[str, Any]:
        """model.json: the architecture, classes and preprocessing the model needs."""
        from tuner import artifact

        return artifact.read_card(artifact.find(self.path, arm))

    def predict(self, paths: Iterable[str | Path], arm: str | None = None, device: str = "cpu",
                top_k: int = 3, batch_size: int = 64) -> pd.DataFrame:
        """Classify image files or folders with the chosen model: one row per file, as
        `tuner predict` writes them (predicted class, probability, top-k, or the error)."""
        from tuner import artifact, predict

        model, card, _ = artifact.load(self.path, arm, device)
        classes = card["classes"]
        files, labels, _, _ = predict.gather([Path(p) for p in paths], classes)
        if not files:
            raise InputError(f"no files to classify in {', '.join(map(str, paths))}")
        probs, errors = predict.predict(model, card, files, predict.pick_device(str(device)),
                                        batch_size)
        return predict.table(files, labels, probs, errors, classes, top_k)


def load(run_dir: str | Path) -> RunResult:
    """Read a run folder (results/<name>/<run id>). Raises InputError if it is not one."""
    from tuner import report

    run = report.load_run(Path(run_dir))
    return RunResult(path=run.path, spec=run.spec, status=run.status, best=run.best,
                     trials=run.trials, epochs=run.epochs, compare=run.compare)


def run_sweep(spec: str | Path, overrides: Mapping[str, Any] | Iterable[str] = (), *,
              results: str | Path = "results", address: str | None = None) -> RunResult:
    """Run a sweep here (an embedded Ray, or the cluster at `address`) as `tuner run` does, and
    return its run folder, read. `overrides`: {"search.num_samples": 2} or ["train.lr=0.01"].
    Raises InputError for bad input, RuntimeError if the sweep did not finish."""
    import yaml

    from tuner import run as cli
    from tuner.specfile import load_spec

    items = ([f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
              for k, v in overrides.items()] if isinstance(overrides, Mapping) else list(overrides))
    name = load_spec(spec, items).name  # bad input: raised here, before anything runs
    parent = Path(results) / name
    before = set(parent.iterdir()) if parent.is_dir() else set()
    argv = [str(spec), "--results", str(results), *[a for i in items for a in ("--set", i)]]
    if address:
        argv += ["--address", address]
    t0 = time.time()
    code = cli.main(argv)
    made = [p for p in parent.iterdir() if p not in before and p.stat().st_mtime >= t0 - 1] \
        if parent.is_dir() else []
    if code != 0 or len(made) != 1:
        raise RuntimeError(f"the sweep of {spec} ended with exit code {code}"
                           + (f"; its run folder: {made[0]}" if len(made) == 1 else ""))
    return load(made[0])
