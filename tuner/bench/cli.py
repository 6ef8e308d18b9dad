"""`tuner bench` (`python -m tuner.bench`): one command for the benchmarks, one module each.

    python -m tuner.bench [--device cpu|cuda] [--batch-size 128] [--steps 50] [--precision fp32]
    python -m tuner.bench --sweep 1,2,4,8 [--set key=value ...]   # the tutorial's sweep at each packing
    python -m tuner.bench --folder PATH [--image-size 224] [--resize 256]  # an image folder vs d2l
    python -m tuner.bench --overhead [--repeats 3]   # a trivial sweep's fixed cost, phase by phase
    python -m tuner.bench --grid-baseline --spec COMPARE.yaml [--set ...]  # a plain lr grid per arm
    python -m tuner.bench --epoch-cost [--spec S --arm A --epochs N]  # a trial-epoch, phase by phase
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from tuner.bench import common
from tuner.errors import ArgumentParser, InputError

def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m tuner.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=50, help="timed training steps (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    p.add_argument("--repeats", type=common.positive, default=1,
                   help="run the loops this many times, alternated, and compare medians (default 1)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: autocast on CUDA, or on a CPU with native bf16")
    p.add_argument("--memory-format", choices=["auto", *common.FORMATS], default="auto",
                   help="tuner's layout: auto is what trials use (tuner.device.memory_format)")
    p.add_argument("--compile", choices=["none", "default", "reduce-overhead", "max-autotune"],
                   default="none", help="torch.compile tuner's loop in this mode, and compare with eager")
    p.add_argument("--data-root", default="data", help="torchvision layout root (default data)")
    p.add_argument("--csv", type=Path, help="append the figures to this CSV file")
    p.add_argument("--sweep", type=common.counts, metavar="N[,N...]",
                   help="run the sweep instead, once with N trials per GPU for each N (e.g. 1,2,4,8)")
    p.add_argument("--spec", default="sweeps/fashion.yaml", help="the sweep for --sweep")
    p.add_argument("--set", action="append", default=[], help="spec overrides for --sweep")
    p.add_argument("--results", type=Path, default=Path("results/bench/sweeps"),
                   help="results root for --sweep (default results/bench/sweeps)")
    p.add_argument("--folder", type=Path, metavar="PATH",
                   help="an image folder (PATH/train/<class>/...): tuner's resident pipeline against "
                        "the d2l chapter's, alone and with the model (--steps 0: pipelines only)")
    p.add_argument("--grid-baseline", action="store_true",
                   help="a plain PyTorch lr grid per arm of --spec's comparison (3 lrs, the arm's "
                        "fixed epochs; the best on validation re-run with compare.repeats seeds "
                        "and tested), on the same images: what tuner's arms must beat "
                        "(tuner.bench.grid)")
    p.add_argument("--overhead", action="store_true",
                   help="time a trivial sweep (1 trial, 1 epoch, 600 images of --spec) phase by phase, "
                        "--repeats times (tuner.bench.overhead)")
    p.add_argument("--epoch-cost", action="store_true",
                   help="one trial-epoch's cost, phase by phase, against a plain PyTorch loop on "
                        "the same images (--spec's arm --arm, default sweeps/transfer-target.yaml's "
                        "first arm with model.weights none; tuner.bench.epochcost)")
    p.add_argument("--arm", help="--epoch-cost: which arm of a comparison's spec")
    p.add_argument("--epochs", type=common.positive, help="--epoch-cost: epochs per run (the spec's)")
    p.add_argument("--image-size", type=common.positive, default=224, help="--folder: crop size (224)")
    p.add_argument("--resize", type=common.positive, default=256, help="--folder: stored size (256)")
    try:
        args = p.parse_args(argv)
        return run(args, p.get_default("spec"))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(args, default_spec: str) -> int:
    """The mode the arguments ask for, its module imported only then. Raises InputError."""
    if args.grid_baseline:
        from tuner.bench import grid

        return grid.run(args)
    if args.epoch_cost:
        from tuner.bench import epochcost

        return epochcost.run(args, default_spec)
    if args.overhead:
        from tuner.bench import overhead

        spec = args.spec if args.spec != default_spec else "sweeps/fashion-quick.yaml"
        rest = [f"--spec={spec}", f"--repeats={args.repeats}",
                *[f"--set={o}" for o in args.set], *([f"--csv={args.csv}"] if args.csv else [])]
        return overhead.main(rest)
    if args.folder:
        if not (args.folder / "train").is_dir():
            raise InputError(f"--folder {args.folder}: no train/ folder there")
        if args.image_size > args.resize:
            raise InputError(f"--image-size {args.image_size} is larger than --resize {args.resize}")
        from tuner.bench import pipelines

        return pipelines.run(args)
    if args.sweep:
        from tuner.bench import packing

        return packing.run(args)
    from tuner.bench import throughput

    return throughput.run(args)
