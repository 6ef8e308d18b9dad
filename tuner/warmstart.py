"""Earlier trials as evidence for a new searcher: search.warm_start (other runs' finished trials),
and the trials of a sweep that is given more (tuner resume --more puts the run itself in warm_start).

A point is a finished trial's searched values and its final metric, read from its run's
trials.csv; HyperOpt's TPE then counts it among the trials it has seen (its random start-up phase
included), as if this sweep had run it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from hyperopt import JOB_STATE_DONE, STATUS_OK
from hyperopt.fmin import generate_trial

from tuner.errors import InputError
from tuner.raycompat import HookedHyperOptSearch
from tuner.spec import Spec, param_path
from tuner.specfile import load_spec, parse_yaml

log = logging.getLogger(__name__)

SCORED = ("finished", "stopped_early")  # statuses whose final metric the searcher was told of


@dataclass(frozen=True)
class Point:
    """A finished trial: its searched values (keys as in this sweep's search.parameters) and its
    final metric."""

    config: dict[str, Any]
    value: float
    source: str  # run directory and trial id


def load_points(spec: Spec) -> list[Point]:
    """Every finished trial of the runs in spec.search.warm_start, checked against this sweep's
    space. Raises InputError naming what does not fit."""
    return [p for run_dir in spec.search.warm_start for p in run_points(Path(run_dir), spec)]


def run_points(run_dir: Path, spec: Spec) -> list[Point]:
    """One run directory's finished trials as points of `spec`'s search space."""
    where = f"search.warm_start: {run_dir}"
    table_file, spec_file = run_dir / "trials.csv", run_dir / "spec.yaml"
    if not table_file.is_file() or not spec_file.is_file():
        raise InputError(f"{where}: not a finished tuner run (no trials.csv and spec.yaml); give a "
                         "folder such as results/<name>/<run id>")
    earlier = load_spec(spec_file)
    if earlier.compare is not None:
        raise InputError(f"{where}: a comparison; warm-start from a plain sweep's run directory")
    ours = {param_path(k): k for k in spec.search.parameters}
    theirs = {param_path(k): k for k in earlier.search.parameters}
    missing = [k for p, k in ours.items() if p not in theirs]
    if missing:
        raise InputError(f"{where}: that sweep did not search {', '.join(missing)}, so its trials "
                         "have no values to place in this search space")
    extra = [k for p, k in theirs.items() if p not in ours]
    if extra:
        raise InputError(f"{where}: that sweep also searched {', '.join(extra)}, which this one "
                         "leaves fixed; its results would mislead the search")
    # Searched values as text, parsed as the spec's YAML is (64 an int, 'none' a string).
    columns = [theirs[p] for p in ours]
    table = pd.read_csv(table_file, dtype={c: str for c in ["trial_id", *columns]},
                        keep_default_na=False, na_values={spec.search.metric: [""]})
    metric = spec.search.metric
    done = table[table["status"].isin(SCORED) & pd.to_numeric(table[metric], errors="coerce").notna()]
    points = []
    for row in done.to_dict("records"):
        config = {}
        for path, key in ours.items():
            value = parse_yaml(row[theirs[path]])
            param = spec.search.parameters[key]
            if not param.contains(value):
                raise InputError(f"{where}: trial {row['trial_id']} has {key}={value!r}, outside "
                                 f"this sweep's search space ({param.kind} {list(param.args)})")
            config[key] = value
        points.append(Point(config, float(row[metric]), f"{run_dir} trial {row['trial_id']}"))
    return points


class PrimedHyperOptSearch(HookedHyperOptSearch):
    """HyperOptSearch that starts from earlier trials (Ray 2.60's HyperOptSearch has no
    `evaluated_rewards`; this implements Ray's Searcher.add_evaluated_point hook for it)."""

    def __init__(self, evidence: list[Point] = (), **kwargs):
        self._evidence = list(evidence)
        super().__init__(**kwargs)

    def after_setup(self) -> None:  # Tune has given the space, metric and mode
        for point in self._evidence:
            self.add_evaluated_point(point.config, point.value)
        if self._evidence:
            log.info("searcher starts from %d earlier trial(s)", len(self._evidence))

    def add_evaluated_point(self, parameters: dict, value: float, error: bool = False,
                            pruned: bool = False, intermediate_values=None) -> None:
        """Record a trial evaluated elsewhere, as HyperOptSearch records its own finished ones."""
        config = dict(parameters)
        self.to_indices(config)  # HyperOpt stores a choice's index
        (tid,) = self.hyperopt_trials.new_trial_ids(1)
        doc = generate_trial(tid, config)
        doc["state"] = JOB_STATE_DONE
        doc["result"] = {"loss": self.metric_op * value, "status": STATUS_OK}
        self.hyperopt_trials.insert_trial_docs([doc])
        self.hyperopt_trials.refresh()
