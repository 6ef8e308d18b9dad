"""The parts of Ray and Ray Tune that are not public API and that tuner relies on, in one place.

Each is checked against the installed Ray by tests/test_raycompat.py, and pyproject.toml bounds
Ray to the minor versions that test has passed on: a Ray upgrade that moves one of these fails
there, named, not somewhere in a sweep.

- ASHA keeps its rungs (the epochs where it compares trials) in private brackets: a trial must
  checkpoint there, so that one stopped at a rung is tested on the epoch it reported.
- HyperOptSearch sets HyperOpt up in a private method once Tune gives it the space, and keeps
  HyperOpt's trials privately: a warm start adds earlier trials to them.
- Ray Tune's per-trial environment variables (class_cache) keep trial actors out of the workers
  an embedded Ray starts with itself.
- Whether Ray was told it may run a cluster over the network (ray_constants), for the loopback
  guarantee of an embedded Ray.
"""

from __future__ import annotations

import os

from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.hyperopt import HyperOptSearch


def asha_milestones(scheduler: ASHAScheduler) -> list[float]:
    """Every milestone (in the scheduler's time unit) where ASHA may compare and stop a trial."""
    return [m for bracket in scheduler._brackets for m, _ in bracket._rungs]


class HookedHyperOptSearch(HyperOptSearch):
    """HyperOptSearch with a hook once HyperOpt is set up (Tune has given the space, metric and
    mode), and access to HyperOpt's trials and to its encoding of choice values."""

    def _setup_hyperopt(self) -> None:
        super()._setup_hyperopt()
        self.after_setup()

    def after_setup(self) -> None:
        """Called once HyperOpt's state exists; subclasses add to it here."""

    @property
    def hyperopt_trials(self):
        """HyperOpt's Trials object: every trial it has suggested or been told of."""
        return self._hpopt_trials

    def to_indices(self, config: dict) -> None:
        """Replace, in place, each choice value of `config` by its index, as HyperOpt stores it."""
        self._convert_categories_to_indices(config)


def adopt_tune_env_vars() -> bool:
    """Move Ray Tune's per-trial environment variables into this process's environment and empty
    Tune's per-trial copy, so that trial actors have no runtime environment of their own (see
    cluster.adopt_prestarted_workers). Returns False where this Ray Tune has no such variables."""
    try:
        from ray.tune.execution import class_cache
    except ImportError:
        return False
    defaults = getattr(class_cache, "DEFAULT_ENV_VARS", None)
    if not isinstance(defaults, dict) or not hasattr(class_cache, "ENV_VARS_TO_PROPAGATE"):
        return False
    for name, value in defaults.items():
        os.environ.setdefault(name, value)
    defaults.clear()
    class_cache.ENV_VARS_TO_PROPAGATE = frozenset()
    return True


def cluster_enabled() -> bool:
    """Whether this Ray may run a cluster across machines (not only on loopback)."""
    from ray._private import ray_constants

    return bool(ray_constants.ENABLE_RAY_CLUSTER)
