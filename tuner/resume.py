"""More trials for a sweep: `python -m tuner.resume RUN_DIR --more N` (also `tuner resume RUN_DIR
--more N`). A finished or interrupted sweep goes on with N more trials of the same space, in the
same run directory, its searcher starting from every earlier trial as evidence (TPE goes on from
where it was rather than from a fresh random phase).

Each such session is a Ray Tune experiment of its own next to the first (trials-more1, ...: Ray's
Tuner.restore cannot change num_samples), recorded in status.json under "more". The tables,
report and cost totals cover every trial of every session. If the chosen trial changes, the new
one is tested once; best.json and status.json list each use of the test set (`test_set_uses`).
Without --more it resumes the run as `python -m tuner.run --resume` does, an interrupted session
included.

Exit codes as tuner.run's: 0 done, 1 no trial finished, 2 bad input, 130/143 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from tuner import rayenv, run, signals
from tuner.ending import AddedTrials, planned, write_ending
from tuner.errors import ArgumentParser, InputError
from tuner.rundir import SESSIONS, STATUS_FILE, driver_lock, load_resumable, read_json_if_any
from tuner.spec import Spec
from tuner.specfile import redact

log = logging.getLogger("tuner")

EPILOG = """examples:
  tuner resume results/fashion-quick/RUN_ID              (an interrupted sweep goes on)
  tuner resume results/fashion-quick/RUN_ID --more 10    (ten more trials, TPE continuing)
  python -m tuner.resume results/fashion-quick/RUN_ID --more 5 --address head:6379

exit codes:
  0    done
  1    the sweep ran but no trial finished
  2    bad input: one `error: ...` line on stderr, nothing written
  130  interrupted (Ctrl-C); 143 terminated (SIGTERM): the tables so far are written, marked
       partial, and the resume command is printed"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(prog="tuner resume", epilog=EPILOG,
                    formatter_class=argparse.RawDescriptionHelpFormatter,
                    description="Continue a sweep from its run directory: an interrupted one from "
                                "where it stopped; with --more N, a finished or interrupted one "
                                "with N more trials of the same space.")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="results/<name>/<run id>")
    p.add_argument("--more", type=int, metavar="N", help="add N trials to the sweep")
    p.add_argument("--address", default=None,
                   help="join the Ray cluster at host:port (default: $RAY_ADDRESS, else start Ray "
                        "here)")
    p.add_argument("--verbose", action="store_true",
                   help="Ray Tune's status tables while trials run (default: a line per trial event)")
    args = p.parse_args(argv)
    if args.more is not None and args.more < 1:
        raise InputError(f"--more {args.more}: give the number of trials to add, 1 or more")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    signals.handle_sigterm()
    try:
        args = parse_args(argv)
        sessions = _sessions(args.run_dir)
        if args.more is None and not sessions:  # a plain resume: tuner.run's own
            return run.main(["--resume", str(args.run_dir)]
                            + (["--address", args.address] if args.address else [])
                            + (["--verbose"] if args.verbose else []))
        args.address = args.address or os.environ.get("RAY_ADDRESS")
        spec, status = load_resumable(args.run_dir, finished_ok=True)
        check_continuable(spec, status, args)
        with driver_lock(args.run_dir):
            if status["state"] != "finished":
                # An interrupted sweep (the first, or a session of added trials) finishes first;
                # then the new trials come.
                code = (go_on(spec, status, args) if sessions else
                        run.run(spec, argparse.Namespace(address=args.address, resume=args.run_dir,
                                                         verbose=args.verbose),
                                run_dir=args.run_dir, experiment=status["experiment"],
                                recorded_weights=status["provenance"]["weights"]))
                if code != 0 or args.more is None:
                    return code
                spec, status = load_resumable(args.run_dir, finished_ok=True)
            return go_on(spec, status, args)
    except InputError as e:
        print(f"error: {redact(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return signals.stopped_code()


def _sessions(run_dir: Path) -> list[dict]:
    status = read_json_if_any(run_dir / STATUS_FILE)
    return [] if status is None else status.get(SESSIONS, [])  # None: load_resumable says why


def check_continuable(spec: Spec, status: dict, args: argparse.Namespace) -> None:
    """What cannot be given more trials is bad input, before anything starts."""
    where = f"tuner resume {args.run_dir}"
    if spec.compare is not None:
        raise InputError(f"{where} --more: a comparison's arms are searched and then re-run with "
                         "seeds, so trials cannot be added to it; start a new comparison with a "
                         "larger search.num_samples")
    if spec.search.searcher == "grid":
        raise InputError(f"{where} --more: a grid sweep has run its whole grid; widen the grid "
                         "in a new run (or warm-start a hyperopt sweep from it)")
    if args.more is None and status["state"] == "finished":
        raise InputError(f"{where}: this sweep finished already; add trials with --more N")


def session_spec(spec: Spec, run_dir: Path, trials: int) -> Spec:
    """The spec one session of N more trials runs: its searcher starts from the run's earlier
    trials (and the runs it was warm-started from), with the first sweep's random start-up count."""
    from tuner.sweep import initial_points

    search = spec.search.model_copy(update={
        "num_samples": trials,
        "n_initial_points": initial_points(spec),
        "warm_start": [*spec.search.warm_start, run_dir.resolve()],
    })
    return spec.model_copy(update={"search": search})


def go_on(spec: Spec, status: dict, args: argparse.Namespace) -> int:
    """Run a new session of args.more trials, or resume an interrupted one; then write every
    session's trials into the run's tables."""
    rayenv.prepare(args.address)
    import ray

    from tuner import cluster, memory, results, sweep, warmstart

    sweep.set_verbose(args.verbose)

    run_dir = args.run_dir
    sessions = list(status.get(SESSIONS, []))
    resuming = status["state"] != "finished"  # an interrupted session of added trials
    if resuming:
        experiment, trials = sessions[-1]["experiment"], sessions[-1]["trials"]
    else:
        experiment, trials = session_experiment(status["experiment"], len(sessions) + 1), args.more
        sessions.append({"experiment": experiment, "trials": trials})
    this = session_spec(spec, run_dir, trials)
    weights, data = run.check_inputs(this, status["provenance"]["weights"], run_dir)
    with ExitStack() as stack:
        if cluster.connect(args.address, spec.resources):
            stack.callback(ray.shutdown)
            sweep.warm_worker()  # for the test, should the choice change
        signals.handle_sigterm()
        cluster.check_resources(spec.resources)
        memory.check_resident(spec, data, [n["Resources"] for n in ray.nodes() if n.get("Alive")])
        cluster.check_storage(args.address, spec.run.storage)
        from ray import tune

        # Stopped before Ray saved the session's first state: it starts again, as it would have.
        restore = resuming and tune.Tuner.can_restore(experiment)
        resume = f"tuner resume {shlex.quote(str(run_dir))}"
        results.write_status(run_dir, "running", status["experiment"], resume,
                             {SESSIONS: sessions})
        earlier = [status["experiment"], *(s["experiment"] for s in sessions[:-1])]
        print(f"run directory: {run_dir}")
        print(f"{'resuming' if resuming else 'adding'} {trials} trial(s) to the sweep "
              f"({planned(spec, sessions)} in all); the searcher starts from "
              f"{len(warmstart.load_points(this))} earlier trial(s)")
        t0 = time.perf_counter()
        # No live tables here: they would show this session's trials alone until it ends.
        tuner = (sweep.restore_tuner(this, data, weights, experiment) if restore
                 else sweep.make_tuner(this, data, weights, experiment))
        with signals.fitting():
            grid = tuner.fit()
        wall = time.perf_counter() - t0
        return write_ending(spec, data, weights, run_dir, experiment, grid, wall, resume,
                            AddedTrials(this, earlier, sessions))


def session_experiment(first: str, k: int) -> str:
    """Where session k's trials live: next to the first experiment, named after it (a storage
    URI's query, such as an S3 endpoint, stays at the end)."""
    base, sep, query = first.partition("?")
    return f"{base.rstrip('/')}-more{k}{sep}{query}"


if __name__ == "__main__":
    from tuner.fastexit import exit_now

    exit_now(main())
