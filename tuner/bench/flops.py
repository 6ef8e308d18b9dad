"""What a trial costs for each small_input_stem: counted FLOPs per training image and this machine's
measured training throughput.

    tuner cost [--batch-size 128] [--steps 8] [--size 28] [--images 54000] [--epochs 9]

FLOPs are counted by torch.utils.flop_counter.FlopCounterMode over one training step (forward and
backward; convolutions and matrix products, which are nearly all of a ResNet's work) and divided by
the batch. Throughput is tuner's own training loop (tuner.batches + tuner.trainable.train_epoch,
AdamW) on random uint8 images, timed after a warm-up, on the device given.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tuner.batches import DeviceSplit, train_batches
from tuner.data import Pixels, Split
from tuner.errors import ArgumentParser, InputError
from tuner.model import Weights, build_model, make_optimizer
from tuner.spec import Augment, Model, Train
from tuner.trainable import train_epoch

STEMS = (False, "stride1_pool", "stride1")


def model_for(stem: str | bool, in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    return build_model(Model(weights="none", small_input_stem=stem), Weights(None, "none"),
                       in_channels, num_classes)


def train_flops_per_image(stem: str | bool, size: int = 28, batch_size: int = 8) -> float:
    """FLOPs of one training step (forward + backward) per image of size x size, 1 channel."""
    model = model_for(stem).train()
    x, y = torch.randn(batch_size, 1, size, size), torch.arange(batch_size) % 10
    with FlopCounterMode(display=False) as counter:
        nn.functional.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / batch_size


def images_per_s(stem: str | bool, device: torch.device, batch_size: int, steps: int,
                 size: int = 28, warmup: int = 2) -> float:
    """Training images per second of tuner's loop with this stem (after `warmup` steps)."""
    n = batch_size * (warmup + steps)
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (n, size, size), dtype=np.uint8), np.arange(n) % 10)
    data = DeviceSplit.put(split, device, Pixels((0.5,), (0.5,)))  # what is timed, not what is learnt
    torch.manual_seed(0)
    model = model_for(stem).to(device).train()
    optimizer = make_optimizer(model, Model(), Train(optimizer="adamw", weight_decay=0.05))
    batches = train_batches(data, batch_size, seed=0, epoch=0, aug=Augment())
    train_epoch(model, optimizer, (next(batches) for _ in range(warmup)), "fp32", device)
    t0 = time.perf_counter()
    *_, seen = train_epoch(model, optimizer, batches, "fp32", device)  # ends with .item(): synced
    return seen / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m tuner.bench.flops", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=8, help="timed steps per stem (default 8)")
    p.add_argument("--size", type=int, default=28, help="image side in pixels (default 28)")
    p.add_argument("--images", type=int, default=54_000, help="training images per epoch")
    p.add_argument("--epochs", type=int, default=9, help="epochs per trial, for the totals")
    p.add_argument("--no-timing", action="store_true", help="count FLOPs only")
    try:
        args = p.parse_args(argv)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    print(f"{args.size}x{args.size}, 1 channel, batch {args.batch_size}; device {device}, "
          f"{torch.get_num_threads()} torch threads; a trial = {args.epochs} epochs x "
          f"{args.images} images")
    print("stem          GFLOP/image  PFLOP/trial  images/s  s/epoch  achieved GFLOP/s")
    for stem in STEMS:
        flops = train_flops_per_image(stem, args.size)
        trial = flops * args.images * args.epochs
        row = f"{str(stem):<13} {flops / 1e9:11.3f}  {trial / 1e15:11.2f}"
        if not args.no_timing:
            ips = images_per_s(stem, device, args.batch_size, args.steps, args.size)
            row += f"  {ips:8.1f}  {args.images / ips:7.0f}  {flops * ips / 1e9:16.1f}"
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
