"""Command line: `python -m tuner.run SPEC [--set k=v ...] [--address ADDR] [--storage URI]
[--results DIR] [--dry-run]`, or `python -m tuner.run --resume RUN_DIR [--more N]` (the same as
`tuner run ...` and `tuner resume ...`); `python -m tuner.resume RUN_DIR --more N` adds trials.

Exit 0: the sweep ran and at least one trial finished. Exit 1: it ran but no trial finished.
Exit 2: bad input, reported as one `error: ...` line on stderr, with nothing written.
Exit 130: interrupted (Ctrl-C), 143: terminated (SIGTERM, as from `kill`, docker stop, Kubernetes,
Slurm); either way the tables so far are written, marked partial, and the resume command is printed.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shlex
import subprocess
import sys
import time
from contextlib import ExitStack, redirect_stdout
from importlib.metadata import version
from pathlib import Path

import yaml

from tuner import phases, rayenv
from tuner.ending import labels, write_ending, write_report
from tuner.errors import ArgumentParser, InputError
from tuner.rundir import STATUS_FILE, driver_lock, load_resumable
from tuner.signals import fitting, handle_sigterm, stopped_code, stopped_word
from tuner.spec import Spec, weights_key
from tuner.specfile import dump_spec, load_spec, redact

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
            spec, status = load_resumable(args.resume)
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
            check_surgery(m, weights[weights_key(m, weights)], data.classes)
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
    from tuner.model import describe as describe_model
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
        from tuner import confirm

        arms, r, k = len(spec.compare.arms), spec.compare.repeats, confirm.top_k(spec)
        c = confirm.challenger_limit(spec) if k else 0
        steps = [f"{s.planned_trials()} searched", *([f"{k} confirming"] if k else []),
                 *([f"up to {c} challengers"] if c else []), f"{r} repeats of the choice"]
        if default is not None:  # unless the choice is the own settings: then they are the same runs
            steps.append(f"up to {r} of its own settings")
        most = s.planned_trials() + k + c + r * (2 if default is not None else 1)
        out += ["", f"arms (each searched as above, then its choice re-run with {r} seeds and "
                    f"tested once per seed): {arms} x ({' + '.join(steps)}) = up to "
                    f"{arms * most} trials"]
        for name, overrides in spec.compare.arms.items():
            out.append(f"  {name:<16} " + (", ".join(f"{k}={v}" for k, v in overrides.items())
                                           or "the spec as is"))
    out += ["", f"weights: {weights_label(weights)}",
            f"data: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test, "
            f"{data.num_classes} classes, from {data.source}"]
    # The spec's own model section (a searched or per-arm weights setting may not be among them);
    # with model.arch searched, each arch's
    for arch in spec.archs():
        model = spec.model.model_copy(update={"arch": arch})
        out += describe_model(model, weights.get(weights_key(model, weights)), data.in_channels,
                              data.num_classes)
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
        results.write_status(run_dir, "running", experiment, resume)
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
        return write_ending(spec, data, weights, run_dir, experiment, grid, wall, resume)


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

    out = {}
    for m in spec.model_variants():
        key = weights_key(m, weights)
        if weights[key].state_dict is not None:
            out[key] = (f"{weights[key].label}; "
                        f"{surgery(m, weights[key], data.in_channels, data.num_classes)}")
    return out


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
