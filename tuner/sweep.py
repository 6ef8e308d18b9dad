"""The sweep: a Ray Tune Tuner over the trainable, with a HyperOpt (TPE) searcher from the spec."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit, urlunsplit

import ray
from ray import tune
from pyarrow import fs as pafs
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
from ray.tune.search.hyperopt import HyperOptSearch

from tuner import loggers, progress, raycompat, signals, warmstart
from tuner.data import Dataset, Split
from tuner.errors import InputError
from tuner.model import Weights
from tuner.results import TrialRecord, trial_params
from tuner.space import param_space
from tuner.spec import Spec, same_point, weights_key
from tuner.trainable import checkpoint_weights, test_checkpoint, train_trial

log = logging.getLogger(__name__)

TRIALS_DIR = "trials"  # Ray Tune's experiment folder inside the run directory
_verbose = False  # Ray Tune's status tables on the console instead of tuner.progress's lines


def set_verbose(on: bool) -> None:
    """--verbose: Ray Tune's own status tables while trials run, not a line per trial event."""
    global _verbose
    _verbose = on
    # Ray Tune's newer console output prints its experiment box and paths even at verbose 0;
    # its classic reporter is silent there (and prints the tables at 1, as --verbose asks).
    os.environ["RAY_AIR_NEW_OUTPUT"] = "1" if on else "0"


def initial_points(spec: Spec) -> int:
    """Random trials before TPE: Ray's default of 20 would make a 10-trial sweep random search."""
    return spec.search.n_initial_points or max(1, spec.search.num_samples // 2)


def concurrency(spec: Spec) -> tuple[int | None, str]:
    """The most trials that run at once (None: as many as the cluster fits), and why.

    HyperOpt counts running trials among its random start-up points: with c trials at once, its
    first TPE suggestion comes when at most c-1 trials are still running, so it sees a finished
    result only if c <= n_initial_points. Hence that is the default.
    """
    s, n_initial = spec.search, initial_points(spec)
    if s.searcher in ("random", "grid"):
        return s.max_concurrent, ("search.max_concurrent" if s.max_concurrent else
                                  f"{s.searcher} search learns nothing from results, so no limit")
    if s.max_concurrent is None:
        return n_initial, (f"search.max_concurrent defaults to n_initial_points ({n_initial}) so "
                           "that TPE's suggestions after them see finished results; raise it to "
                           "fill more devices at the cost of TPE suggesting blind")
    if s.max_concurrent > n_initial:
        return s.max_concurrent, (f"search.max_concurrent; above n_initial_points ({n_initial}), "
                                  f"so up to {s.max_concurrent - n_initial} TPE suggestions may "
                                  "come before any result")
    return s.max_concurrent, "search.max_concurrent"


def make_searcher(spec: Spec):
    """HyperOpt TPE (or random or grid search), seeded, with its concurrency limit.

    With search.warm_start, TPE starts from the finished trials of those runs as evidence (as if
    this sweep had run them). Its seed is then search.seed plus their number, so that a sweep
    given more trials (whose own run is among them) does not draw its earlier random points again.
    """
    s = spec.search
    limit, _ = concurrency(spec)
    evidence = warmstart.load_points(spec) if s.warm_start else []
    points = first_points(spec, evidence) or None
    seed = s.seed + len(evidence)
    if s.searcher in ("random", "grid") or not s.parameters:  # learns nothing (or has nothing to search)
        return BasicVariantGenerator(points_to_evaluate=points, random_state=seed,
                                     max_concurrent=limit or 0)
    searcher = warmstart.PrimedHyperOptSearch(
        evidence=evidence, points_to_evaluate=points, n_initial_points=initial_points(spec),
        random_state_seed=seed)
    return ConcurrencyLimiter(searcher, limit)


def first_points(spec: Spec, evidence: list = ()) -> list[dict]:
    """The points the searcher tries first: the spec's own settings (Spec.default_point), unless
    search.points_to_evaluate or the warm-start evidence (a sweep given more trials) has them
    already, then search.points_to_evaluate."""
    points = [dict(p) for p in spec.search.points_to_evaluate]
    default, _ = spec.default_point()
    if default is not None and not any(same_point(default, p) for p in
                                       [*points, *(e.config for e in evidence)]):
        points.insert(0, default)
    return points


# What a trial reports its length so far as, per unit of Spec.length_unit: ASHA's clock.
LENGTH_METRIC = {"epochs": "epoch", "images": "images_seen"}


def make_scheduler(spec: Spec):
    """FIFO (every trial runs all its epochs) or ASHA (weak trials stop at rungs, counted in the
    spec's length unit: epochs, or images seen)."""
    if spec.search.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr=LENGTH_METRIC[spec.length_unit], max_t=spec.longest,
                         grace_period=spec.search.grace_period)


def stop_points(scheduler) -> frozenset[float]:
    """Where `scheduler` may stop a trial early, in its length unit: ASHA's rungs (grace_period x
    reduction_factor^k, up to max_t), where it compares a trial with the others. A trial
    validates and checkpoints at the first epoch that reaches each (trainable.stop_epochs), so
    that one stopped at a rung is tested on the epoch it reported. FIFO stops no trial early."""
    if not isinstance(scheduler, ASHAScheduler):
        return frozenset()
    return frozenset(raycompat.asha_milestones(scheduler))  # Ray keeps them in its brackets only


def length_advice(spec: Spec) -> str | None:
    """What to say when ASHA meets a searched training length: it compares trials at its rungs by
    epochs trained, so a trial planned long meets one planned short at the same epoch, and with an
    lr schedule fitted to each plan, at a hotter point of its schedule. One planned length, with ASHA
    deciding where the weaker trials stop, compares like with like (docs/tuning.md)."""
    epochs = spec.search_for("train.epochs")
    if spec.search.scheduler != "asha" or epochs is None or len(set(epochs.extremes())) < 2:
        return None
    low, high = min(epochs.extremes()), max(epochs.extremes())
    why = (f"with train.schedule {spec.train.schedule}, one planned for {high} epochs is still at the "
           "hot start of its schedule there, one planned for fewer near its end"
           if spec.train.schedule != "constant" else
           f"at a rung a trial planned for {high} epochs has trained just as one planned for {low}, "
           "so the search spends trials on what ASHA decides anyway")
    return (f"search.parameters.epochs under ASHA: ASHA compares trials by epochs trained; {why}. "
            f"Comparing like with like: one planned length (train.epochs: {int(high)}, not searched), "
            "and ASHA stops the weaker trials at its rungs (docs/tuning.md)")


def check_buildable(spec: Spec) -> None:
    """Build the search space, searcher and scheduler once, so that anything Ray Tune or HyperOpt
    would reject is bad input now, not a crash after the run directory exists. Logs what is
    allowed but unsound (length_advice)."""
    if advice := length_advice(spec):
        log.warning(advice)
    loggers.check(spec)
    try:
        space = param_space(spec.search)
        if spec.search.searcher == "hyperopt" and space:
            HyperOptSearch.convert_search_space(space)
        make_searcher(spec)
        make_scheduler(spec)
    except (ValueError, AssertionError, TypeError) as e:
        raise InputError(f"search: Ray Tune rejects this search: {e}") from None


def experiment_path(spec: Spec, run_dir: Path) -> str:
    """Where Ray Tune keeps this run's trials and checkpoints.

    By default inside the run directory; with run.storage (a folder every node sees, or a URI such
    as s3://bucket/sweeps) in a folder named after the sweep and run id there. A URI's query (such
    as ?endpoint_override=host:port&scheme=http for an S3-compatible server) stays at its end.
    """
    if not spec.run.storage:
        return str((run_dir / TRIALS_DIR).resolve())
    storage = spec.run.storage
    if not is_uri(storage):
        storage = str(Path(storage).expanduser().resolve())
    return storage_join(storage, f"{spec.name}-{run_dir.name}")


def is_uri(location: str) -> bool:
    """s3://..., gs://...: storage that pyarrow reaches by URI, not a local folder."""
    return "://" in location


def storage_join(location: str, *parts: str) -> str:
    """A folder or URI with path parts appended, keeping a URI's query at its end, where pyarrow
    (and so Ray) reads the filesystem's options."""
    if not is_uri(location):
        return "/".join([location.rstrip("/"), *parts])
    u = urlsplit(location)
    return urlunsplit(u._replace(path="/".join([u.path.rstrip("/"), *parts])))


def storage_split(location: str) -> tuple[str, str]:
    """(parent, name) of a folder or URI; the parent keeps the URI's query."""
    if not is_uri(location):
        parent, name = location.rstrip("/").rsplit("/", 1)
        return parent, name
    u = urlsplit(location)
    parent, name = u.path.rstrip("/").rsplit("/", 1)
    return urlunsplit(u._replace(path=parent)), name


def checkpoint_location(checkpoint: tune.Checkpoint, experiment: str, run_dir: Path) -> str:
    """Where a trial's checkpoint is, as best.json names it: relative to the run folder when it is
    under it (a run folder can be moved), else the local path, or a URI in the experiment's storage
    (Ray's Checkpoint.path has the URI's scheme and query stripped off)."""
    if not is_uri(experiment):
        try:
            return str(Path(checkpoint.path).resolve().relative_to(Path(run_dir).resolve()))
        except ValueError:  # a --storage folder outside the run: its own absolute path
            return checkpoint.path
    u = urlsplit(experiment)
    root = PurePosixPath(u.netloc + u.path)
    try:
        relative = PurePosixPath(checkpoint.path).relative_to(root)
    except ValueError:  # not under the experiment (never seen): name it on its own filesystem
        return f"{u.scheme}://{checkpoint.path}"
    return storage_join(experiment, *relative.parts)


def make_tuner(spec: Spec, data: Dataset, weights: dict[str, Weights], experiment: str,
               callbacks: list[tune.Callback] = ()) -> tune.Tuner:
    """The sweep's Tuner. `callbacks` run on the driver (live tables); Tuner.restore brings them
    back with the rest of the RunConfig."""
    storage_path, name = storage_split(experiment)
    return tune.Tuner(
        _trainable(spec, data, weights),
        param_space=param_space(spec.search),
        tune_config=tune.TuneConfig(
            metric=spec.search.reported_metric,
            mode=spec.search.mode,
            search_alg=make_searcher(spec),
            scheduler=make_scheduler(spec),
            num_samples=spec.search.num_samples,
            # A worker process serves trial after trial: no new process, torch import or CUDA
            # context per trial.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            # Retries resume from the trial's latest checkpoint, not from epoch one.
            failure_config=tune.FailureConfig(max_failures=spec.run.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),  # ~135 MB each with Adam state
            verbose=1 if _verbose else 0,
            callbacks=[*callbacks, *([] if _verbose else [progress.ConsoleProgress(spec)]),
                       *loggers.callbacks(spec, name)],
        ),
    )


def restore_tuner(spec: Spec, data: Dataset, weights: dict[str, Weights],
                  experiment: str) -> tune.Tuner:
    """Continue an interrupted sweep: finished trials stay, unfinished ones resume from their
    checkpoints, and the searcher continues from its saved state."""
    return tune.Tuner.restore(experiment, trainable=_trainable(spec, data, weights),
                              resume_unfinished=True, resume_errored=False)


def run_step(spec: Spec, data: Dataset, weights: dict[str, Weights], path: str, done: bool):
    """One experiment of a run (a comparison's step, a sweep's confirming runs) at `path`: its
    ResultGrid, read back if it finished (`done`), else run, or continued if it started."""
    needed = {weights_key(m, weights) for m in spec.model_variants()}
    weights = {setting: w for setting, w in weights.items() if setting in needed}
    if done:
        return restore_tuner(spec, data, weights, path).get_results()
    tuner = (restore_tuner if started(path) else make_tuner)(spec, data, weights, path)
    with signals.fitting():
        return tuner.fit()


def started(path: str) -> bool:
    """Ray Tune saved the step's state (its trials and searcher), not only its tuner.pkl: a Tuner
    restored from a tuner.pkl alone, killed before its first save, has a HyperOpt without a space."""
    fs, root = pafs.FileSystem.from_uri(path)
    found = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    return any(Path(f.path).name.startswith("experiment_state") for f in found)


def check_restorable(experiment: str) -> None:
    if not tune.Tuner.can_restore(experiment):
        raise InputError(f"--resume: no Ray Tune experiment state at {experiment}; the sweep "
                         "was stopped before its first trial started. Start it again instead")


# What this driver put in Ray's object store: (node, job, id(object)) -> (object, its reference).
# Holding the object keeps its id from being reused while the entry lives.
_stored: dict[tuple[str, str, int], tuple[object, ray.ObjectRef]] = {}


def stored(value, shipped=None) -> ray.ObjectRef:
    """A reference to `shipped` (default: `value`) in Ray's object store, put once per driver and
    Ray session for each `value`. Every Tuner of the driver (a comparison makes two per arm, and
    one more per finished step on resume) passes the same reference: handed the object itself,
    tune.with_parameters puts a copy per call and keeps it for the driver's lifetime (in a hook
    Ray never clears)."""
    context = ray.get_runtime_context()
    session = (context.get_node_id(), context.get_job_id())  # a new cluster reuses job ids
    for key in [k for k in _stored if k[:2] != session]:  # an earlier session's: gone with it
        del _stored[key]
    key = (*session, id(value))
    if key not in _stored:
        _stored[key] = (value, ray.put(value if shipped is None else shipped))
    return _stored[key][1]


def _trainable(spec: Spec, data: Dataset, weights: dict[str, Weights]):
    # Checkpoints as often as run.checkpoint_* ask are what we want; Tune's warning about it is noise.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # An epoch that is not validated (run.validation: needed) reports no val_* metric. Tune's strict
    # check would call that a typo; its scheduler and searcher read the metric only where it is: ASHA
    # at its rungs, HyperOpt in a trial's last report, and a trial validates at both.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    # Fixed inputs travel once per node through Ray's object store, by reference (with_parameters
    # passes an ObjectRef through as it is); the test split stays here. A trial fetches only the
    # weights it starts from.
    trainable = tune.with_parameters(train_trial, spec=spec,
                                     data=stored(data, shipped=data.without_test()),
                                     weights={k: stored(w) for k, w in weights.items()},
                                     stop_points=stop_points(make_scheduler(spec)))
    return tune.with_resources(trainable, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})


def interrupted(grid: tune.ResultGrid, spec: Spec, experiment: str) -> bool:
    """True when the sweep stopped before every trial ended (Ctrl-C, SIGTERM).

    Asked of the experiment state Tune saved as fit() ended: the ResultGrid itself cannot tell, since
    Tune's clean-up marks the trials it stops as TERMINATED, like the ones that finished. A trial
    that failed for good (its retries used up) has ended too, though the saved state can still
    record it as PENDING (seen with Ray 2.60 when a trial's worker is killed): its Result carries
    the error, which Tune gives no trial that its clean-up stopped.
    """
    if len(grid) < spec.search.planned_trials():
        return True
    failed = {Path(r.path).name for r in grid if r.error is not None}
    saved = tune.ExperimentAnalysis(experiment).trials
    return any(t.status not in (Trial.TERMINATED, Trial.ERROR) and Path(t.path).name not in failed
               for t in saved)


def collect(grid: tune.ResultGrid, spec: Spec) -> list[TrialRecord]:
    """Plain records from Ray's results, in trial order."""
    records = []
    for result in grid:
        df = result.metrics_dataframe
        reports = []
        if df is not None and not df.empty:
            keep = [c for c in df.columns if not c.startswith("config/")]
            reports = df[keep].to_dict("records")
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        config = result.config or {}  # None for a trial that never started (interrupted sweep)
        params = trial_params(config, spec)
        error = None
        if result.error is not None:
            error = " ".join(str(result.error).split())[-500:]  # the end holds the real cause
        records.append(TrialRecord(
            trial_id=trial_id, params=params, reports=reports, error=error,
            checkpoint=result.checkpoint,
        ))
    return sorted(records, key=lambda r: r.trial_id)


def _import_trainable() -> None:
    import tuner.trainable  # noqa: F401  torch, torchvision, Ray Tune: seconds of imports


def warm_worker() -> None:
    """Have one Ray worker process import the trainable's module (torch, torchvision, Tune) now,
    while the sweep runs: the test of the chosen trial (and the model's fetch) then run in it at
    once, not in a new process that spends seconds importing first. Trial actors get processes
    of their own, so this helps the tasks after the sweep. It asks for no CPU, so it takes no
    trial's place; on these imports it spends about a core-second or three. (Ray runs a task
    whose result nobody keeps all the same.)"""
    ray.remote(num_cpus=0)(_import_trainable).remote()


def test_best(record: TrialRecord, spec: Spec, data: Dataset) -> dict:
    """Test loss and accuracy of a trial's final checkpoint (the one look at the test set), the
    epoch it holds (a warning if not the epoch the trial last reported), and the device, node and
    process that computed them.

    It runs as a Ray task with the trials' resources, so it is evaluated where and as the trials
    ran (their kind of device and precision), and the driver never holds a GPU the trials need.
    """
    return tested(record, start_test(record, spec, data))


def start_test(record: TrialRecord, spec: Spec, data: Dataset) -> ray.ObjectRef:
    """test_best's Ray task, started: the driver can do other work while it runs; `tested`
    waits for it."""
    trial_spec = spec.with_values(record.params)
    empty = Split(data.test.images[:0], data.test.labels[:0])
    test_only = replace(data, train=empty, val=empty, pool=None)  # ship only what is used
    task = ray.remote(test_checkpoint).options(num_cpus=spec.resources.cpu,
                                              num_gpus=spec.resources.gpu)
    return task.remote(record.checkpoint, trial_spec, test_only)


def tested(record: TrialRecord, started: ray.ObjectRef) -> dict:
    """The result of `start_test`'s task for `record`."""
    test = ray.get(started)
    reported = record.reports[-1]["epoch"] if record.reports else None
    if test["checkpoint_epoch"] != reported:  # run.checkpoint_every and a stop between checkpoints
        log.warning("trial %s: tested on its checkpoint of epoch %s, not of epoch %s whose "
                    "validation score chose it", record.trial_id, test["checkpoint_epoch"], reported)
    return test


def fetch_weights(record: TrialRecord, spec: Spec) -> bytes:
    """The model weights in a trial's final checkpoint (trainable.checkpoint_weights), read by a
    Ray task where the trials' storage is, so this works with checkpoints in object storage too."""
    task = ray.remote(checkpoint_weights).options(num_cpus=min(1, spec.resources.cpu))
    return ray.get(task.remote(record.checkpoint))


def prune_checkpoints(records: list[TrialRecord], keep: TrialRecord | None) -> int:
    """Delete every trial's checkpoint but `keep`'s (run.keep_checkpoints: best), wherever the
    storage is (a local folder or a URI). Returns how many were deleted."""
    deleted = 0
    for r in records:
        if r.checkpoint is None or r is keep:
            continue
        try:
            r.checkpoint.filesystem.delete_dir(r.checkpoint.path)
            deleted += 1
        except (OSError, FileNotFoundError) as e:  # already gone, or storage refused: keep going
            log.warning("could not delete %s: %s", r.checkpoint.path, e)
    return deleted
