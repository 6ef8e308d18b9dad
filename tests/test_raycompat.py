"""Ray's private parts that tuner relies on (tuner.raycompat), checked against the installed Ray:
if one of these fails after a Ray upgrade, adapt raycompat and widen pyproject's Ray bound."""

from importlib.metadata import version

import pytest
from ray.tune.schedulers import ASHAScheduler

from tuner import raycompat


def test_the_installed_ray_is_one_the_bound_admits():
    major, minor = map(int, version("ray").split(".")[:2])
    assert (major, minor) == (2, 60)  # pyproject: ray[tune]>=2.60,<2.61


def test_asha_milestones():
    asha = ASHAScheduler(time_attr="epoch", max_t=16, grace_period=1, reduction_factor=4)
    assert sorted(raycompat.asha_milestones(asha)) == [1, 4, 16]
    asha = ASHAScheduler(time_attr="epoch", max_t=8, grace_period=2, reduction_factor=2)
    assert sorted(raycompat.asha_milestones(asha)) == [2, 4, 8]


def test_the_hyperopt_hook_fires_and_reaches_hyperopts_trials():
    from ray import tune

    class Counting(raycompat.HookedHyperOptSearch):
        calls = 0

        def after_setup(self):
            Counting.calls += 1
            config = {"lr": 0.1, "freeze": "head"}
            self.to_indices(config)
            assert config["freeze"] == 1  # the index of "head" among the choices

    searcher = Counting(random_state_seed=0)
    searcher.set_search_properties("val_accuracy", "max", {
        "lr": tune.uniform(0.01, 1.0), "freeze": tune.choice(["none", "head"])})
    assert Counting.calls == 1
    assert len(searcher.hyperopt_trials.trials) == 0
    searcher.suggest("t0")
    assert len(searcher.hyperopt_trials.trials) == 1


def test_tune_env_vars_and_the_cluster_switch(monkeypatch):
    from ray.tune.execution import class_cache

    # Ray Tune keeps them here (an embedded sweep run in this process may have emptied them)
    assert isinstance(class_cache.DEFAULT_ENV_VARS, dict)
    assert hasattr(class_cache, "ENV_VARS_TO_PROPAGATE")
    monkeypatch.setattr(class_cache, "DEFAULT_ENV_VARS", {"TUNER_TEST_PER_TRIAL": "1"})
    monkeypatch.setattr(class_cache, "ENV_VARS_TO_PROPAGATE", frozenset({"TUNER_TEST_PER_TRIAL"}))
    monkeypatch.delenv("TUNER_TEST_PER_TRIAL", raising=False)
    assert raycompat.adopt_tune_env_vars()
    assert __import__("os").environ["TUNER_TEST_PER_TRIAL"] == "1"  # every worker inherits it
    assert class_cache.DEFAULT_ENV_VARS == {} and class_cache.ENV_VARS_TO_PROPAGATE == frozenset()
    assert isinstance(raycompat.cluster_enabled(), bool)


@pytest.mark.parametrize("name", ["HookedHyperOptSearch"])
def test_warmstart_builds_on_the_hook(name):
    from tuner.warmstart import PrimedHyperOptSearch

    assert issubclass(PrimedHyperOptSearch, getattr(raycompat, name))
