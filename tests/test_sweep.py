"""How the spec becomes Ray Tune's searcher, scheduler and storage (no Ray cluster needed)."""

from pathlib import Path

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
from ray.tune.search.hyperopt import HyperOptSearch

from tuner.spec import load_spec, validate
from tuner.sweep import check_buildable, experiment_path, make_scheduler, make_searcher

FASHION = Path(__file__).resolve().parents[1] / "sweeps" / "fashion.yaml"


def test_tutorial_sweep_uses_tpe_after_five_random_points():
    searcher = make_searcher(load_spec(FASHION))
    assert isinstance(searcher, HyperOptSearch)
    # Ray's default (20) would make a 10-trial sweep pure random search
    assert searcher.algo.keywords["n_startup_jobs"] == 5


def test_default_initial_points_are_half_the_trials():
    spec = validate({"search": {"num_samples": 8}})
    assert make_searcher(spec).algo.keywords["n_startup_jobs"] == 4


def test_concurrency_limit_and_random_search():
    limited = make_searcher(validate({"search": {"max_concurrent": 3}}))
    assert isinstance(limited, ConcurrencyLimiter) and limited.max_concurrent == 3
    assert isinstance(limited.searcher, HyperOptSearch)
    assert isinstance(make_searcher(validate({"search": {"searcher": "random"}})), BasicVariantGenerator)


def test_schedulers():
    assert isinstance(make_scheduler(load_spec(FASHION)), FIFOScheduler)
    asha = make_scheduler(load_spec(FASHION, ["search.scheduler=asha", "search.grace_period=2"]))
    assert isinstance(asha, ASHAScheduler)
    assert asha._time_attr == "epoch" and asha._max_t == 9  # the largest searched epochs


def test_experiment_paths(tmp_path):
    run = tmp_path / "results" / "fashion" / "20261122-000000-abcd"
    spec = load_spec(FASHION)
    assert experiment_path(spec, run) == str(run / "trials")
    shared = load_spec(FASHION, [f"run.storage={tmp_path / 'nfs'}"])
    assert experiment_path(shared, run) == f"{tmp_path / 'nfs'}/fashion-20261122-000000-abcd"
    s3 = load_spec(FASHION, ["run.storage=s3://bucket/sweeps/"])
    assert experiment_path(s3, run) == "s3://bucket/sweeps/fashion-20261122-000000-abcd"


def test_shipped_sweeps_build():
    for path in sorted(FASHION.parent.glob("*.yaml")):
        check_buildable(load_spec(path))
