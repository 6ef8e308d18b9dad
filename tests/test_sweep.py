"""How the spec becomes Ray Tune's searcher, scheduler and storage (no Ray cluster needed)."""

from pathlib import Path
from types import SimpleNamespace

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
from ray.tune.search.hyperopt import HyperOptSearch

from tuner.specfile import load_spec, validate
from tuner.sweep import (
    check_buildable,
    concurrency,
    experiment_path,
    make_scheduler,
    make_searcher,
    stop_points,
)
from tuner.trainable import stop_epochs

FASHION = Path(__file__).resolve().parents[1] / "sweeps" / "fashion.yaml"
LR = {"lr": {"loguniform": [1e-4, 1e-2]}}


def hyperopt(searcher) -> HyperOptSearch:
    assert isinstance(searcher, ConcurrencyLimiter)
    return searcher.searcher


def test_tutorial_sweep_uses_tpe_after_five_random_points():
    searcher = hyperopt(make_searcher(load_spec(FASHION)))
    # Ray's default (20) would make a 10-trial sweep pure random search
    assert searcher.algo.keywords["n_startup_jobs"] == 5


def test_default_initial_points_are_half_the_trials():
    spec = validate({"search": {"num_samples": 8, "parameters": LR}})
    assert hyperopt(make_searcher(spec)).algo.keywords["n_startup_jobs"] == 4


def test_a_spec_that_searches_nothing_runs_its_trials_without_a_searcher():
    """HyperOpt cannot sample an empty space (Ray raises mid-sweep): nothing to learn, no TPE."""
    searcher = make_searcher(validate({"search": {"num_samples": 2}}))
    assert isinstance(searcher, BasicVariantGenerator)


def test_tpe_never_suggests_before_it_has_a_result():
    """HyperOpt counts running trials among its start-up points. With packed trials (a quarter GPU
    each, no max_concurrent) the default limit holds suggestion n_initial+1 back until a trial has
    finished, so TPE always fits at least one result."""
    spec = load_spec(FASHION, ["resources.gpu=0.25", "search.num_samples=10",
                               "search.n_initial_points=3"])
    searcher = make_searcher(spec)
    searcher.set_search_properties("val_accuracy", "max", {
        "lr": tune.uniform(1e-4, 1e-3), "epochs": tune.choice([4, 5]),
        "batch_size": tune.choice([32, 64])})
    running = [f"t{i}" for i in range(10) if searcher.suggest(f"t{i}") is not None]
    assert running == ["t0", "t1", "t2"]  # the rest wait: no result exists yet
    searcher.on_trial_complete("t0", {"val_accuracy": 0.8, "lr": 1e-4})
    assert searcher.suggest("t3") is not None  # the first TPE suggestion, fitted to t0's result
    assert len(hyperopt(searcher)._hpopt_trials.losses()) and \
        hyperopt(searcher)._hpopt_trials.losses()[0] == -0.8


def test_concurrency_is_explained():
    limit, why = concurrency(load_spec(FASHION))
    assert limit == 5 and "defaults to n_initial_points (5)" in why
    limit, why = concurrency(load_spec(FASHION, ["search.max_concurrent=8"]))
    assert limit == 8 and "up to 3 TPE suggestions may come before any result" in why
    assert concurrency(load_spec(FASHION, ["search.searcher=random"]))[0] is None


def test_concurrency_limit_and_random_search():
    limited = make_searcher(validate({"search": {"max_concurrent": 3, "parameters": LR}}))
    assert isinstance(limited, ConcurrencyLimiter) and limited.max_concurrent == 3
    assert isinstance(limited.searcher, HyperOptSearch)
    assert isinstance(make_searcher(validate({"search": {"searcher": "random"}})), BasicVariantGenerator)


def test_schedulers():
    assert isinstance(make_scheduler(load_spec(FASHION)), FIFOScheduler)
    asha = make_scheduler(load_spec(FASHION, ["search.scheduler=asha", "search.grace_period=2"]))
    assert isinstance(asha, ASHAScheduler)
    assert asha._time_attr == "epoch" and asha._max_t == 9  # the largest searched epochs


def test_a_length_in_images_puts_ashas_rungs_at_the_same_images_at_every_size():
    """train.images: ASHA counts images seen; its rungs (grace 1,000 images, x4, up to 4,000) are
    reached at epochs 10 and 40 on 100 training images, and at epochs 1 and 2 on 2,500 (the first
    epoch at or past each); each run's length is ceil(images / its training images) epochs."""
    spec = load_spec(FASHION, ["train.images=4000", "search.parameters={lr: {loguniform: [1e-4, 1e-2]}}",
                               "search.scheduler=asha", "search.grace_period=1000"])
    asha = make_scheduler(spec)
    assert asha._time_attr == "images_seen" and asha._max_t == 4000
    assert stop_points(asha) == {1000, 4000}
    assert stop_epochs(stop_points(asha), spec, 100) == {10, 40}
    assert stop_epochs(stop_points(asha), spec, 2500) == {1, 2}
    assert [spec.epochs_for(n) for n in (100, 500, 2500, 5000)] == [40, 8, 2, 1]
    assert spec.for_training_set(500).train.epochs == 8
    searched = load_spec(FASHION, ["train.images=4000", "search.scheduler=asha",
                                   "search.parameters={images: {choice: [2000, 4000, 8000]}}",
                                   "search.grace_period=500"])
    assert make_scheduler(searched)._max_t == 8000 and stop_points(make_scheduler(searched)) == {500, 2000, 8000}


def test_trials_checkpoint_at_every_epoch_where_asha_can_stop_them():
    """ASHA compares a trial with the others at its rungs (grace_period x 4^k, up to max_t) and
    stops it only there: exactly the epochs stop_points (and trainable.stop_epochs) give the trials
    to validate and checkpoint."""
    assert stop_points(make_scheduler(load_spec(FASHION))) == frozenset()  # FIFO stops none early
    for grace, rungs in ((1, {1, 4}), (2, {2, 8}), (3, {3})):  # max_t 9
        spec = load_spec(FASHION, ["search.scheduler=asha", f"search.grace_period={grace}"])
        asha = make_scheduler(spec)
        assert stop_epochs(stop_points(asha), spec, 54_000) == rungs
        # 20 good trials, then for each epoch e a trial as good until e and far worse at e:
        # where can ASHA stop a trial that reports every epoch?
        bracket, stopped = asha._brackets[0], set()
        for i in range(20):
            for epoch in range(1, 10):
                bracket.on_result(SimpleNamespace(trial_id=f"good{i}"), epoch, 1.0)
        for worse in range(1, 10):
            trial = SimpleNamespace(trial_id=f"worse-at-{worse}")
            for epoch in range(1, worse + 1):
                if bracket.on_result(trial, epoch, 1.0 if epoch < worse else 0.0) == "STOP":
                    stopped.add(epoch)
        assert stopped == rungs  # (and max_t, a trial's last epoch, which always checkpoints)


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
