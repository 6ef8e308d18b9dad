"""Which searched parameters mattered, over a sweep's finished trials: Optuna's PED-ANOVA
importances (Watanabe et al. 2023), as the report shows them.

PED-ANOVA compares where the best trials' values lie with where all trials' values lie, per
parameter, and needs no surrogate model (fANOVA's random forest wants far more trials than a sweep
of 5-20 has). With few trials the figures are rough: the report says how many trials they rest on.
A trial that ASHA stopped counts with the score it stopped at.
"""

from __future__ import annotations

import logging
import math

import pandas as pd

from tuner.spec import Param, Spec

log = logging.getLogger(__name__)

MIN_TRIALS = 4  # below this, no importance is given at all


def distribution(param: Param):
    """The Optuna distribution of one searched parameter."""
    from optuna.distributions import (CategoricalDistribution, FloatDistribution,
                                      IntDistribution)

    if param.kind == "choice":
        return CategoricalDistribution(list(param.choice))
    low, high = float(param.args[0]), float(param.args[1])
    if param.kind == "loguniform":
        return FloatDistribution(low, high, log=True)
    if param.kind == "quniform":
        return FloatDistribution(low, high, step=float(param.args[2]))
    if param.kind == "randint":  # [low, high): Optuna's bounds are inclusive
        return IntDistribution(int(low), int(high) - 1)
    return FloatDistribution(low, high)


def importances(trials: pd.DataFrame, spec: Spec) -> pd.DataFrame | None:
    """One row per searched parameter, most important first: `parameter`, `importance` (shares
    summing to 1), and `trials` (how many finished trials they rest on); None with fewer than
    MIN_TRIALS scored trials or nothing searched."""
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    metric, params = spec.search.metric, spec.search.parameters
    if not params or metric not in trials:
        return None
    ok = trials[trials["status"].isin(["finished", "stopped_early"])].dropna(subset=[metric])
    if not all(k in ok for k in params):
        return None
    if len(ok) < MIN_TRIALS:
        return None
    dists = {k: distribution(p) for k, p in params.items()}
    frozen = []
    for _, row in ok.iterrows():
        values = {k: _plain(row[k], dists[k]) for k in params}
        if any(v is None for v in values.values()):
            continue
        frozen.append(optuna.trial.create_trial(params=values, distributions=dists,
                                                value=float(row[metric])))
    if len(frozen) < MIN_TRIALS:
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if spec.search.mode == "max" else "minimize")
    study.add_trials(frozen)
    try:
        shares = get_param_importances(study, evaluator=PedAnovaImportanceEvaluator())
    except (ValueError, RuntimeError) as e:  # e.g. every trial scored the same
        log.info("parameter importance not computed: %s", e)
        return None
    return pd.DataFrame({"parameter": list(shares), "importance": [float(v) for v in shares.values()],
                         "trials": len(frozen)})


def _plain(value, dist):
    """A table cell as the distribution takes it (choices keep their own type), or None."""
    from optuna.distributions import CategoricalDistribution

    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(dist, CategoricalDistribution):
        for choice in dist.choices:  # a CSV gives 64 back as 64 or 64.0, "adam" as "adam"
            if choice == value or str(choice) == str(value):
                return choice
        return None
    return value.item() if hasattr(value, "item") else value
