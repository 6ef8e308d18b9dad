"""Command line: `python -m tuner.run SPEC [--set k=v ...] [--address ADDR] [--results DIR] [--dry-run]`.

Exit 0: the sweep ran and at least one trial finished. Exit 1: it ran but no trial finished.
Exit 2: bad input, reported as one `error: ...` line on stderr, with nothing written.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from importlib.metadata import version
from pathlib import Path

import yaml

from tuner.errors import InputError
from tuner.spec import Spec, dump_spec, load_spec

log = logging.getLogger("tuner")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: same one-line form, exit 2
        raise InputError(message)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(prog="python -m tuner.run", description="Run a hyperparameter sweep from a YAML spec.")
    p.add_argument("spec", help="the sweep YAML file, e.g. sweeps/fashion.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec field, e.g. --set train.lr=0.001 (repeatable)")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="join the Ray cluster at host:port (default: $RAY_ADDRESS, else start Ray here)")
    p.add_argument("--results", default="results", type=Path, help="results root (default: results)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate, print the resolved spec and search space, start nothing")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        args = parse_args(argv)
        spec = load_spec(args.spec, args.overrides)
        if args.dry_run:
            print_dry_run(spec)
            return 0
        return run(spec, args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def print_dry_run(spec: Spec) -> None:
    from tuner.space import describe  # imports Ray: only when needed

    print(dump_spec(spec), end="")
    print(f"\nsearch space ({spec.search.searcher}, {spec.search.num_samples} trials, "
          f"{spec.search.mode}imise {spec.search.metric}):")
    for key, text in describe(spec.search):
        print(f"  {key:<16} {text}")


def run(spec: Spec, args: argparse.Namespace) -> int:
    if not args.address:
        # Ray reads this once, when first imported: 0 keeps every Ray process on 127.0.0.1 (on
        # Linux Ray otherwise binds the machine's network address). Not for --address: a driver
        # joining a cluster must be reachable from the other nodes.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # Heavy imports here so that --help, --dry-run and bad input stay fast.
    import ray

    from tuner import cluster, results, sweep
    from tuner.data import load_dataset
    from tuner.model import resolve_weights

    # Everything that can be bad input is checked before the run directory exists.
    weights = resolve_weights(spec.model)
    data = load_dataset(spec.data)
    started_ray = cluster.connect(args.address)
    try:
        cluster.check_resources(spec.resources)
        run_dir = results.new_run_dir(args.results, spec.name)
        print(f"run directory: {run_dir}")
        print(f"cluster: {cluster.describe_cluster()}; weights: {weights.label}; "
              f"data: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test "
              f"from {data.source}")
        results.write_text(run_dir / "spec.yaml", spec_record(spec, weights.label, data.source, args))

        t0 = time.perf_counter()
        grid = sweep.make_tuner(spec, data, weights, run_dir).fit()
        wall = time.perf_counter() - t0
        records = sweep.collect(grid, spec)

        trials = results.trials_table(records, spec, weights.label)
        results.write_csv(run_dir / "trials.csv", trials)
        results.write_csv(run_dir / "epochs.csv", results.epochs_table(records))
        for key, table in results.summary_tables(trials, spec).items():
            results.write_csv(run_dir / f"summary_by_{key}.csv", table)

        best = results.best_trial(trials, spec)
        if best is None:
            print(f"\nno trial finished; see {run_dir / 'trials.csv'} for the errors", file=sys.stderr)
            return 1
        record = next(r for r in records if r.trial_id == best["trial_id"])
        test_loss, test_acc = sweep.test_best(record, spec, data, weights)
        results.write_json(run_dir / "best.json", {
            "trial_id": record.trial_id,
            "config": record.params,
            "metric": spec.search.metric,
            spec.search.metric: best[spec.search.metric],
            "val_accuracy": best["val_accuracy"],
            "val_loss": best["val_loss"],
            "epochs_completed": int(best["epochs_completed"]),
            "test_accuracy": test_acc,  # evaluated once, after the sweep; never used to choose
            "test_loss": test_loss,
            "test_images": len(data.test),
            "checkpoint": record.checkpoint.path,
            "weights": weights.label,
            "sweep_wall_time_s": round(wall, 1),
        })
        print(f"\nsweep finished in {wall:.0f} s; results in {run_dir}")
        with_pd_options(lambda: print(results.top_trials(trials, spec).to_string(index=False)))
        print(f"\nbest: trial {record.trial_id} {spec.search.metric}={best[spec.search.metric]:.4f} "
              f"test_accuracy={test_acc:.4f} (test set used once, after selection)")
        return 0
    finally:
        if started_ray:
            ray.shutdown()


def with_pd_options(fn) -> None:
    import pandas as pd

    with pd.option_context("display.width", 160, "display.float_format", "{:.4g}".format):
        fn()


def spec_record(spec: Spec, weights: str, data_source: str, args: argparse.Namespace) -> str:
    """spec.yaml: the resolved spec, then a provenance block (ignored when the file is re-run)."""
    provenance = {
        "weights": weights,
        "data": data_source,
        "command": " ".join([Path(sys.executable).name, "-m", "tuner.run", *sys.argv[1:]]),
        "address": args.address or "embedded",
        "machine": f"{platform.node()} {platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
        "versions": {p: version(p) for p in ("torch", "torchvision", "ray", "hyperopt", "pandas",
                                              "pydantic")},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return dump_spec(spec) + yaml.safe_dump({"provenance": provenance}, sort_keys=False)


if __name__ == "__main__":
    sys.exit(main())
