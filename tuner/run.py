"""Command line: `python -m tuner.run SPEC [--set k=v ...] [--address ADDR] [--storage URI]
[--results DIR] [--dry-run]`, or `python -m tuner.run --resume RUN_DIR [--more N]` (the same as
`tuner run ...` and `tuner resume ...`); `python -m tuner.more RUN_DIR --more N` adds trials.

Exit 0: the sweep ran and at least one trial finished. Exit 1: it ran but no trial finished.
Exit 2: bad input, reported as one `error: ...` line on stderr, with nothing written.
Exit 130: interrupted (Ctrl-C), 143: terminated (SIGTERM, as from `kill`, docker stop, Kubernetes,
Slurm); either way the tables so far are written, marked partial, and the resume command is printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager, redirect_stdout
from importlib.metadata import version
from pathlib import Path

import yaml
from filelock import FileLock, Timeout

from tuner import phases, rayenv
from tuner.errors import ArgumentParser, InputError
from tuner.rundir import LOCK_FILE, STATUS_FILE
from tuner.signals import fitting, handle_sigterm, stopped_code, stopped_word
from tuner.spec import Spec, dump_spec, load_spec, redact

log = logging.getLogger("tuner")



EPILOG = """examples:
  {prog} sweeps/fashion-quick.yaml
  {prog} sweeps/fashion.yaml --set model.freeze=head --dry-run > plan.txt
  {resume} results/fashion-quick/RUN_ID

exit codes:
  0    the sweep ran and at least one trial finished
  1    it ran but no trial finished
  2    bad input: one `error: ...` line on stderr, nothing written
  130  interrupted (Ctrl-C); 143 terminated (SIGTERM): the tables so far are written, marked
       partial, and the resume command is printed"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(prog="python -m tuner.run", description="Run a hyperparameter sweep from a YAML spec.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.epilog = EPILOG.format(prog=p.prog, resume="tuner resume" if p.prog == "tuner run"
                             else f"{p.prog} --resume")
    p.add_argument("spec", nargs="?", help="the sweep YAML file, e.g. sweeps/fashion.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec field, e.g. --set train.lr=0.001 (repeatable)")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="join the Ray cluster at host:port (default: $RAY_ADDRESS, else start Ray here)")
    p.add_argument("--storage", help="where trial checkpoints live: a folder every node sees, or a "
                                     "URI such as s3://bucket/path (sets run.storage); credentials "
                                     "in the URI are used but never printed or written, so a resume "
                                     "needs them in the environment")
    p.add_argument("--results", default="results", type=Path, help="results root (default: results)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",  # tuner run: tuner resume does it
                   help=argparse.SUPPRESS if p.prog == "tuner run" else
                   "continue an interrupted sweep from its run directory")
    p.add_argument("--verbose", action="store_true",
                   help="Ray Tune's status tables while trials run (default: a line per trial event)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate, print the resolved spec and search space, start nothing")
    args = p.parse_args(argv)
    if bool(args.spec) == bool(args.resume):
        raise InputError("give a spec file to start a sweep, or --resume RUN_DIR to continue one")
    if args.resume and (args.overrides or args.storage or args.dry_run):
        raise InputError("--resume continues a sweep as it was started: drop --set, --storage "
                         "and --dry-run")
    if args.storage:
        args.overrides.append(f"run.storage={args.storage}")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    phases.record("startup", phases.since_start())  # the interpreter and tuner.run's imports
    handle_sigterm()
    try:
        args = parse_args(argv)
        if args.resume:
            spec, status = load_run(args.resume)
            with driver_lock(args.resume):
                return run(spec, args, run_dir=args.resume, experiment=status["experiment"],
                           recorded_weights=status["provenance"]["weights"])
        spec = load_spec(args.spec, args.overrides)
        if args.dry_run:
            return dry_run(spec, args)
        return run(spec, args)
    except InputError as e:
        print(f"error: {redact(str(e))}", file=sys.stderr)  # a storage URI's credentials never shown
        return 2
    except KeyboardInterrupt:  # before or after the sweep itself (Tune handles Ctrl-C within it)
        print(stopped_word(), file=sys.stderr)
        return stopped_code()


def check_inputs(spec: Spec, recorded_weights: str | None = None, run_dir: Path | None = None):
    """Everything about the spec that can be bad input, checked before anything is written or Ray
    starts: the search, the weights (present, genuine, fitting), the data. Returns (weights, data)."""
    with phases.phase("imports"):
        from tuner import sweep  # imports Ray: only when needed
        from tuner.data import load_for
        from tuner import leakage
        from tuner.model import check_surgery, resolve_all, weights_label

    with phases.phase("checks"):
        sweep.check_buildable(spec)
    with phases.phase("weights"):
        weights = resolve_all(spec.model_variants())  # every arm's, every searched choice's
    if recorded_weights is not None and recorded_weights != weights_label(weights):
        raise InputError(f"--resume {run_dir}: the run started with weights {recorded_weights!r} "
                         f"but now gets {weights_label(weights)!r}; resuming would mix them")
    with phases.phase("data"):
        data = load_for(spec)
    with phases.phase("checks"):
        for m in spec.model_variants():
            check_surgery(m, weights[m.weights], data.classes)
        leakage.check(spec, data)  # no start from a run that saw this run's test images
    return weights, data


def dry_run(spec: Spec, args: argparse.Namespace) -> int:
    """Check everything that can be checked without training, print the resolved spec, the search
    space and how the trials would run; start no trial (and no Ray, unless --address is given).

    Standard output is the plan alone (`--dry-run > plan.txt`): what the checks print (a download's
    progress, Ray's messages) goes to stderr with the logging. When the resources do not fit, the
    plan is printed before the error."""
    rayenv.prepare(args.address)
    from tuner import cluster, sweep

    with redirect_stdout(sys.stderr):
        weights, data = check_inputs(spec)
    plan = plan_text(spec, weights, data)
    try:
        with redirect_stdout(sys.stderr):
            if args.address:  # join, check the request against the nodes, leave the cluster as it was
                cluster.connect(args.address, spec.resources)
                try:
                    cluster.check_resources(spec.resources)
                    cluster.check_storage(args.address, spec.run.storage)
                    where, slots = cluster.describe_cluster(), cluster.trial_slots(spec.resources)
                finally:
                    import ray

                    ray.shutdown()  # a client's shutdown disconnects; the cluster keeps running
            else:
                cluster.check_fits_here(spec.resources)
                if spec.run.storage:  # a storage URI's bucket and credentials, as the sweep would
                    cluster.check_storage(None, spec.run.storage)
                where, slots = "this machine", cluster.trial_slots_here(spec.resources)
    except InputError:
        print(plan, end="", flush=True)
        raise
    limit, why = sweep.concurrency(spec)
    at_once = min(slots, limit or slots)
    print(plan, end="")
    print(f"trials at once: {at_once} ({where} fits {slots} at {spec.resources.cpu:g} CPU and "
          f"{spec.resources.gpu:g} GPU each; limit {limit or 'none'}: {why})")
    return 0


def plan_text(spec: Spec, weights: dict, data) -> str:
    """The dry run's plan: the resolved spec, the search and what it starts from, the arms, the
    weights and the data."""
    from tuner import sweep, warmstart
    from tuner.model import weights_label
    from tuner.space import describe

    s = spec.search
    out = [dump_spec(spec).rstrip("\n"), "",
           f"search space ({s.searcher}, {s.planned_trials()} trials, {s.mode}imise {s.metric}):"]
    out += [f"  {key:<16} {text}" for key, text in describe(s)]
    default, why = spec.default_point()
    first = sweep.first_points(spec)  # the default point, unless points_to_evaluate has it
    if default is not None:
        out.append("  the first trial runs the spec's own settings (search.default_trial): "
                   + ", ".join(f"{k}={v}" for k, v in default.items()))
    elif s.parameters:
        out.append(f"  no trial of the spec's own settings: {why}")
    given = first[1:] if default is not None and len(first) > len(s.points_to_evaluate) else first
    if given:
        out.append(f"  then {len(given)} trial(s) try these points (points_to_evaluate):")
        out += ["    " + ", ".join(f"{k}={v}" for k, v in p.items()) for p in given]
    for run_dir in s.warm_start:
        n = len(warmstart.run_points(run_dir, spec))
        use = ("TPE starts from them as if this sweep had run them" if s.searcher == "hyperopt"
               else f"{s.searcher} search does not learn from them")
        out.append(f"  warm start: {n} finished trial(s) of {run_dir}; {use}")
    if spec.compare is not None:
        arms, per_arm = len(spec.compare.arms), s.planned_trials() + spec.compare.repeats
        out += ["", f"arms (each searched as above, then its best config re-run with "
                    f"{spec.compare.repeats} seeds and tested once per seed): {arms} x "
                    f"({s.planned_trials()} + {spec.compare.repeats}) = {arms * per_arm} trials"]
        for name, overrides in spec.compare.arms.items():
            out.append(f"  {name:<16} " + (", ".join(f"{k}={v}" for k, v in overrides.items())
                                           or "the spec as is"))
    out += ["", f"weights: {weights_label(weights)}",
            f"data: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test, "
            f"{data.num_classes} classes, from {data.source}"]
    if data.in_channels == 3:  # RGB: the pretrained conv1's filters fit as they are
        random_init = all(w.state_dict is None for w in weights.values())
        out.append("model.conv1: 3-channel RGB images, nothing to adapt: "
                   + ("random init (model.weights: none)" if random_init
                      else "the pretrained conv1 is kept" if spec.model.conv1 == "sum"
                      else "reinit starts it afresh anyway"))
    if spec.data.dataset == "imagefolder":
        out.append(f"decode cache: {spec.data.cache} (this dry run decoded the images once and "
                   "left the arrays there; the run starts from them)" if spec.data.cache else
                   "decode cache: off (data.cache: false): every run decodes the images again")
    return "\n".join(out) + "\n"


@contextmanager
def driver_lock(run_dir: Path):
    """Hold the run directory's lock while this driver lives: a second driver (a `--resume` of a
    live run) is bad input. The lock is an OS file lock, so a driver that died, however it died,
    leaves nothing stale behind and the next `--resume` takes the run over."""
    lock = FileLock(run_dir / LOCK_FILE, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        try:
            who = json.loads((run_dir / STATUS_FILE).read_text())["driver"]
            holder = f"pid {who['pid']} on {who['host']}"
        except (OSError, ValueError, KeyError):
            holder = "another process"
        raise InputError(f"--resume {run_dir}: the sweep is still running ({holder}); stop that "
                         "driver first (Ctrl-C or kill PID), or wait for it") from None
    try:
        yield
    finally:
        lock.release()


def load_run(run_dir: Path, finished_ok: bool = False) -> tuple[Spec, dict]:
    """The spec and status (with the run's provenance) of a run directory that can be resumed
    (or, with finished_ok, given more trials: tuner.more). Raises InputError."""
    status_file = run_dir / STATUS_FILE
    if not (run_dir / "spec.yaml").is_file() or not status_file.is_file():
        raise InputError(f"--resume {run_dir}: not a tuner run directory (no spec.yaml and "
                         f"{STATUS_FILE}); give a folder such as results/<name>/<run id>")
    from tuner.results import read_json  # pandas: not for --help

    status = read_json(status_file)
    if status.get("more") and not finished_ok:  # tuner.more's sessions: it resumes them itself
        raise InputError(f"--resume {run_dir}: trials were added to this sweep; continue it with "
                         f"tuner resume {shlex.quote(str(run_dir))}")
    if status["state"] == "finished" and not finished_ok:
        raise InputError(f"--resume {run_dir}: this sweep finished already; its results are in "
                         f"{run_dir}. Add trials with tuner resume {shlex.quote(str(run_dir))} "
                         "--more N, or start a new run")
    status["provenance"] = yaml.safe_load((run_dir / "spec.yaml").read_text())["provenance"]
    spec = load_spec(run_dir / "spec.yaml")
    status["experiment"] = located(status["experiment"], run_dir, spec)
    for session in status.get("more", []):  # tuner.more's sessions, each an experiment of its own
        session["experiment"] = located(session["experiment"], run_dir, spec)
    return spec, status


def stored(location: str, run_dir: Path) -> str:
    """A Ray Tune experiment's location as status.json keeps it: relative to the run folder when
    inside it, so a copied or moved run folder names its own trials, not the original's; else as it
    is (a --storage folder or URI), without credentials (redact)."""
    if "://" in location:
        return redact(location)
    try:
        return Path(location).resolve().relative_to(run_dir.resolve()).as_posix()
    except ValueError:
        return location


def located(location: str, run_dir: Path, spec: Spec) -> str:
    """An experiment's location from status.json (see `stored`), as a path from where the run
    folder is now. Raises InputError for one that leads outside the run folder where the trials
    must be inside it (no run.storage): a run folder copied from one that kept absolute paths, or
    a status.json edited by hand; resuming it would write into another run."""
    if "://" in location:
        return location
    path = Path(location)
    if path.is_absolute() and spec.run.storage:  # a --storage folder: its own place
        return location
    full = (run_dir / path).resolve()  # an absolute path stays as it is
    if not full.is_relative_to(run_dir.resolve()):
        raise InputError(f"{run_dir / STATUS_FILE}: the trials it names, {location}, are outside "
                         f"this run folder (was it copied?); resuming would write into another run."
                         f" Resume the run that holds them, or start a new run")
    return str(full)


def run(spec: Spec, args: argparse.Namespace, run_dir: Path | None = None,
        experiment: str | None = None, recorded_weights: str | None = None) -> int:
    """Check every input, start or join Ray, run (or resume) the sweep, and write the results."""
    rayenv.prepare(args.address)  # before the first import of ray
    # Heavy imports here so that --help, --dry-run and bad input stay fast.
    with phases.phase("imports"):
        import ray

        from tuner import cluster, leakage, live, memory, results, sweep
        from tuner.model import weights_label

        sweep.set_verbose(getattr(args, "verbose", False))

    # Everything that can be bad input is checked before anything is written.
    weights, data = check_inputs(spec, recorded_weights, run_dir)
    label = weights_label(weights)
    folder = [run_dir] if run_dir else []  # where the driver's phases go, once there is a folder
    with ExitStack() as stack:
        # Entered first, so left last: the run folder's lock (taken below, once there is a folder)
        # is held through Ray's shutdown and the last status write.
        locked = stack.enter_context(ExitStack())
        # Registered before Ray starts, so it runs after Ray's shutdown, which the timeline
        # includes. command_s: the whole command, from the interpreter's start (wall_time_s is
        # fit()'s).
        stack.callback(lambda: folder and results.update_json(folder[0] / STATUS_FILE, {
            "phases_s": phases.seconds(), "command_s": round(phases.since_start(), 1)}))
        with phases.phase("ray start"):
            started = cluster.connect(args.address, spec.resources)
        if started:  # the embedded Ray we started: no process left behind
            stack.callback(phases.timed("shutdown", ray.shutdown))
            sweep.warm_worker()  # for the test after the sweep
        handle_sigterm()  # ray.init installed its own, which exits without writing anything
        with phases.phase("checks"):
            cluster.check_resources(spec.resources)
            memory.check_resident(spec, data, [n["Resources"] for n in ray.nodes() if n.get("Alive")])
            cluster.check_storage(args.address, spec.run.storage)
        if run_dir is None:
            run_dir = results.new_run_dir(args.results, spec.name)
            locked.enter_context(driver_lock(run_dir))
            experiment = sweep.experiment_path(spec, run_dir)
            folder.append(run_dir)
            with phases.phase("run folder"):
                results.write_text(run_dir / "spec.yaml", spec_record(spec, label, data, args,
                                                                      surgeries(spec, weights, data)))
                leakage.write_split(run_dir, data)  # what a later run starting from this one checks
        elif spec.compare is None:  # a comparison checks each of its experiments itself
            sweep.check_restorable(experiment)
        resume = f"python -m tuner.run --resume {shlex.quote(str(run_dir))}"
        write_status(run_dir, "running", experiment, resume)
        print(f"run directory: {run_dir}")
        print(f"cluster: {cluster.describe_cluster()}; weights: {label}; "
              f"data: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test "
              f"from {data.source}")
        if spec.compare is not None:
            from tuner import compare

            with phases.phase("sweep"):
                code = compare.run_comparison(spec, data, weights, run_dir, experiment, resume)
            if code == 130:
                return stopped_code()  # 143 after SIGTERM
            write_report(run_dir)
            return code

        t0 = time.perf_counter()
        with phases.phase("sweep"):  # the trials' training, and Tune's work around it
            # On --resume the LiveTables given at the start comes back with Ray's saved RunConfig.
            tuner = (sweep.make_tuner(spec, data, weights, experiment,
                                      callbacks=[live.LiveTables(run_dir, spec, labels(weights))])
                     if not args.resume else sweep.restore_tuner(spec, data, weights, experiment))
            with fitting():
                grid = tuner.fit()
        wall = time.perf_counter() - t0
        return finish(spec, data, weights, run_dir, experiment, grid, wall, resume)


def finish(spec: Spec, data, weights, run_dir: Path, experiment: str, grid, wall: float,
           resume: str) -> int:
    """Write the tables; evaluate the best trial on the test set unless the sweep is partial."""
    import pandas as pd

    from tuner import artifact, confirm, results, sweep

    with phases.phase("tables"):
        records = sweep.collect(grid, spec)
        partial = sweep.interrupted(grid, spec, experiment)
        trials = results.trials_table(records, spec, labels(weights), interrupted=partial)
        results.write_csv(run_dir / "trials.csv", trials)
        epochs = results.epochs_table(records)
        results.write_csv(run_dir / "epochs.csv", epochs)
        for key, table in results.summary_tables(trials, spec).items():
            results.write_csv(run_dir / f"summary_by_{key}.csv", table)
    best = None if partial else results.best_trial(trials, spec)
    selection, confirmed = None, None
    if best is not None and confirm.top_k(spec) > 0:
        with phases.phase("confirm"):
            outcome = confirm_choice(spec, data, weights, run_dir, experiment, trials, records)
        if outcome is None:
            partial, best = True, None
        else:
            best, selection, confirmed = outcome
    record = None if best is None else next(r for r in records if r.trial_id == best["trial_id"])
    if record is not None:  # the test runs in a Ray worker while the driver draws the figure
        with phases.phase("test"):
            results.record_test_use(run_dir, record.trial_id, "the chosen trial")
            started = sweep.start_test(record, spec, data)
    write_plot(spec, epochs, trials, run_dir)
    every = trials if confirmed is None else pd.concat([trials, confirmed], ignore_index=True)
    cost = {**results.cost_totals(every), "time_to_best_s": results.time_to_best(epochs, trials, spec)}
    counts = {"trials": results.trial_counts(trials, spec.search.planned_trials()), "cost": cost,
              "wall_time_s": round(wall, 1)}  # this session's: a resumed sweep counts from the resume

    if partial:
        write_status(run_dir, "partial", experiment, resume, counts)
        write_report(run_dir)
        print(f"\nsweep {stopped_word()} after {wall:.0f} s: the "
              f"tables in {run_dir} are partial ({grid.num_terminated} of "
              f"{spec.search.planned_trials()} trials finished).\nresume with: {resume}", file=sys.stderr)
        return stopped_code()
    if best is None:
        keep_checkpoints(spec, records, None)
        write_status(run_dir, "finished", experiment, resume, counts)
        write_report(run_dir)
        print(f"\nno trial finished; see {run_dir / 'trials.csv'} for the errors", file=sys.stderr)
        return 1
    with phases.phase("test"):
        test = sweep.tested(record, started)
    uses = results.test_set_uses(run_dir)  # once, unless a driver died after an earlier look
    with phases.phase("model"):
        model_dir = artifact.save_best(run_dir, spec, data, weights, record, best, test)
    metric = spec.search.metric
    chosen = {
        "trial_id": record.trial_id,
        "config": record.params,
        "metric": metric,
        metric: best[metric],
        "val_accuracy": best["val_accuracy"],
        "val_loss": best["val_loss"],
        "epochs_completed": int(best["epochs_completed"]),
        **test,  # test_accuracy, evaluated once after the sweep and never used to choose; where
        "test_images": len(data.test),
        "classes": list(data.classes),
        "model": model_dir,  # model.pt and model.json, relative to the run folder
        "checkpoint": redact(sweep.checkpoint_location(record.checkpoint, experiment, run_dir)),
        "weights": best["weights"],
        "sweep_wall_time_s": round(wall, 1),
        "cost": cost,  # totals over all trials; time_to_best_s: see results.time_to_best
        "test_set_uses": uses,
        **results.versus_default(trials, spec, best, selection),  # on validation only
        **({"selection": selection} if selection else {}),
    }
    results.write_json(run_dir / "best.json", chosen)
    keep_checkpoints(spec, records, record)
    # a crash before it: resumable
    write_status(run_dir, "finished", experiment, resume, {**counts, "test_set_uses": uses})
    write_report(run_dir)
    print(f"\nsweep finished in {wall:.0f} s; results in {run_dir}")
    print(results.format_table(results.top_trials(trials, spec)))
    print(f"\nbest: trial {record.trial_id} {metric}={best[metric]:.4f} "
          f"test_accuracy={test['test_accuracy']:.4f} (test set used once, after selection)")
    print(results.gain_line(chosen, spec))
    if selection:
        print(confirm.describe(selection))
    print(f"model: {run_dir / model_dir} (predict with: python -m tuner.predict {run_dir} IMAGES...)")
    return 0


def confirm_choice(spec: Spec, data, weights, run_dir: Path, experiment: str, trials, records):
    """search.confirm_top_k: the top configs trained again with a fresh seed (an experiment of
    their own beside the search's, resumed like it), confirm.csv written, and the choice made on
    the mean. Returns (the chosen trial's row, the selection record, the confirming trials'
    table), or None if the confirming runs were interrupted."""
    from tuner import confirm, results, sweep

    top = confirm.candidates(trials, spec, confirm.top_k(spec))
    configs = [confirm.point_of(row, list(spec.search.parameters)) for _, row in top.iterrows()]
    used = {spec.with_values(r.params).train.seed for r in records}
    this = confirm.confirm_spec(spec, configs, used)
    parent, name = sweep.storage_split(experiment)
    path = sweep.storage_join(parent, f"{name}-confirm")
    status = json.loads((run_dir / STATUS_FILE).read_text())
    done = status.get("confirm", {}).get("done", False)
    if not done:
        print(f"\nconfirming the top {len(configs)} config(s) with another seed "
              f"(search.confirm_top_k)", flush=True)
    grid = sweep.run_step(this, data, weights, path, done)
    crecords = sweep.collect(grid, this)
    if not done and sweep.interrupted(grid, this, path):
        return None
    table = results.trials_table(crecords, this, labels(weights))
    results.write_csv(run_dir / "confirm.csv", table)
    results.update_json(run_dir / STATUS_FILE,
                        {"confirm": {"experiment": stored(path, run_dir), "done": True}})
    chosen, selection = confirm.choose(spec, top, table)
    if spec.run.keep_checkpoints == "best":  # never the model: the search trial's is
        sweep.prune_checkpoints(crecords, keep=None)
    return trials[trials["trial_id"] == chosen].iloc[0], selection, table


def keep_checkpoints(spec: Spec, records, best) -> None:
    """run.keep_checkpoints: best deletes every checkpoint but the chosen trial's, once the sweep has
    finished and nothing can resume it (a partial sweep keeps them all)."""
    if spec.run.keep_checkpoints == "best":
        from tuner import sweep

        deleted = sweep.prune_checkpoints(records, keep=best)
        log.info("deleted %d checkpoint(s) of trials not chosen (run.keep_checkpoints: best)",
                 deleted)


def labels(weights: dict) -> dict[str, str]:
    """Weights setting -> the label of what it resolved to (for rows of trials that never reported)."""
    return {setting: w.label for setting, w in weights.items()}


def write_plot(spec: Spec, epochs, trials, run_dir: Path) -> None:
    try:
        with phases.phase("figure"):
            from tuner import plots  # matplotlib: counted as the figure's

            plots.plot_sweep(epochs, trials, spec, run_dir / "sweep.png")
    except Exception as e:  # noqa: BLE001  a figure is a convenience: never lose a run's results to it
        log.warning("sweep.png not written: %s: %s", type(e).__name__, e)


def write_report(run_dir: Path) -> None:
    try:
        with phases.phase("report"):
            from tuner import report

            report.write_report([run_dir], run_dir / "report.html")
    except Exception as e:  # noqa: BLE001  like the figure: never lose a run's results to it
        log.warning("report.html not written: %s: %s", type(e).__name__, e)


def write_status(run_dir: Path, state: str, experiment: str, resume: str,
                 extra: dict | None = None) -> None:
    """status.json; `extra`: counts of trials by status and the cost totals, once known. The
    experiment's location is stored relative to the run folder, a URI without credentials
    (`stored`)."""
    from tuner.results import update_json

    extra = dict(extra or {})
    if "more" in extra:  # tuner.more's sessions: their experiments kept as the first one is
        extra["more"] = [{**s, "experiment": stored(s["experiment"], run_dir)} for s in extra["more"]]
    update_json(run_dir / STATUS_FILE, {"state": state, "experiment": stored(experiment, run_dir),
                                        "resume": resume,
                                        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                        "driver": {"host": socket.gethostname(), "pid": os.getpid()},
                                        **extra})


def gpu_names() -> str:
    """This machine's GPUs, from nvidia-smi: asking torch would hold a CUDA context in the driver
    for the whole sweep, on a GPU the trials need."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    return ", ".join(out.splitlines()) if out else "no GPU"


def surgeries(spec: Spec, weights: dict, data) -> dict[str, str]:
    """For each weights file a trial can start from: which tensors are loaded, adapted or
    re-initialised (model.surgery), keyed by its model.weights setting."""
    from tuner.model import surgery

    return {m.weights: f"{weights[m.weights].label}; "
                       f"{surgery(m, weights[m.weights], data.in_channels, data.num_classes)}"
            for m in spec.model_variants() if weights[m.weights].state_dict is not None}


def spec_record(spec: Spec, weights: str, data, args: argparse.Namespace,
                loaded: dict[str, str] | None = None) -> str:
    """spec.yaml: the resolved spec, then a provenance block (ignored when the file is re-run)."""
    provenance = {
        "weights": weights,
        **({"weights_tensors": loaded} if loaded else {}),
        "data": data.source,
        **data.record,  # the classes, and any images skipped
        "command": redact(shlex.join(["python", "-m", "tuner.run", *sys.argv[1:]])),
        "address": args.address or "embedded",
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, {gpu_names()}",
        "python": platform.python_version(),
        "versions": {p: version(p) for p in ("torch", "torchvision", "ray", "hyperopt", "pandas",
                                              "pydantic")},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return dump_spec(spec) + yaml.safe_dump({"provenance": provenance}, sort_keys=False)


if __name__ == "__main__":
    from tuner.fastexit import exit_now

    exit_now(main())
