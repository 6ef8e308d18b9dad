"""Throughput: tuner's trial loop against a loop built like the tutorial's, in one process
(`tuner bench`, the default mode).

(a) reference: torchvision's FashionMNIST with ToTensor (a PIL image per sample),
    DataLoader(num_workers=2, shuffle=True), batches copied to the device, loss.item() every step;
(b) tuner: the split resident on the device as uint8, batches by a seeded permutation, converted and
    normalised there (tuner.batches), and tuner.trainable.train_epoch (bf16 autocast and
    channels_last as tuner.device picks them for the precision asked).
Both train the same model (ResNet-18, conv1 1-channel 7x7 re-initialised, fc 10, random weights),
with Adam, at the same batch size, for the same number of timed steps after the same warm-up.
The last line is `speedup X.XX (tuner N images/s, reference M images/s)`; with --repeats R both
loops run R times, which goes first alternating, and the figures are medians.
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch
from torch import nn

from tuner.batches import DeviceSplit, train_batches
from tuner.bench.common import FORMATS, append_csv, machine, sync
from tuner.data import Dataset, load_dataset
from tuner.device import memory_format
from tuner.fashion_mnist import torchvision_layout
from tuner.model import Weights, build_model, make_optimizer
from tuner.spec import Spec
from tuner.trainable import compiled, train_epoch


def tutorial_model() -> nn.Module:
    """The tutorial's surgery, written out as it does: a new 1-channel conv1 and a 10-way fc."""
    import torchvision

    model = torchvision.models.resnet18(weights=None)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.xavier_uniform_(model.conv1.weight)
    model.fc = nn.Linear(512, 10)
    nn.init.xavier_uniform_(model.fc.weight)
    return model


def reference_loop(root: Path, device: torch.device, batch_size: int, warmup: int, steps: int) -> float:
    """Images per second of the tutorial-style loop (after `warmup` steps)."""
    from torchvision import datasets, transforms

    train = datasets.FashionMNIST(root, train=True, download=False, transform=transforms.ToTensor())
    loader = torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True, num_workers=2)
    torch.manual_seed(0)
    model = tutorial_model().to(device)
    return reference_steps(loader, model, torch.optim.Adam(model.parameters(), lr=1e-3), device,
                           warmup, steps)


def reference_steps(loader, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
                    warmup: int, steps: int) -> float:
    """Images per second of a tutorial-style training loop over `loader` (after `warmup` steps):
    batches copied to the device, loss.item() every step."""
    criterion = nn.CrossEntropyLoss()
    model.train()
    running_loss, t0, seen = 0.0, None, 0
    batches = itertools.chain.from_iterable(itertools.repeat(loader))  # more epochs if needed
    for i, (images, labels) in enumerate(itertools.islice(batches, warmup + steps)):
        if i == warmup:
            sync(device)
            t0, seen = time.perf_counter(), 0
        images, labels = images.to(device), labels.to(device)
        outputs = model(images)
        loss = criterion(outputs, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        running_loss += loss.item()  # as the tutorial does: a device sync every step
        seen += len(labels)
    sync(device)
    return seen / (time.perf_counter() - t0)


def tuner_loop(spec: Spec, device: torch.device, warmup: int, steps: int,
               layout: str = "auto", data: Dataset | None = None) -> tuple[float, float]:
    """Images per second of tuner's own trial loop (after `warmup` steps), and the seconds the
    warm-up took (torch.compile compiles there, when the spec asks for it). `layout` overrides the
    memory format tuner.device picks (auto); `data` is loaded from the spec when not given."""
    data = data or load_dataset(spec.data)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    fmt = FORMATS.get(layout) or memory_format(device, spec.train.precision)
    model = build_model(spec.model, Weights(None, "none"), data.in_channels, data.num_classes)
    model = model.to(device, memory_format=fmt).train()
    optimizer = make_optimizer(model, spec.model, spec.train)
    step_model = compiled(model, spec.train.compile)
    train = DeviceSplit.put(data.train, device, data.pixels)

    def batches():  # epochs back to back, as many as the steps need
        for epoch in itertools.count():
            yield from train_batches(train, spec.train.batch_size, spec.train.seed, epoch,
                                     spec.data.augment, fmt)

    stream = batches()
    t0 = time.perf_counter()
    train_epoch(step_model, optimizer, itertools.islice(stream, warmup), spec.train.precision, device)
    sync(device)
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    *_, seen = train_epoch(step_model, optimizer, itertools.islice(stream, steps), spec.train.precision,
                           device)  # ends with .item(): the device is done when it returns
    return seen / (time.perf_counter() - t0), warmup_s


def compile_payoff(compiled_ips: float, compiled_warmup_s: float, eager_ips: float,
                   eager_warmup_s: float, batch_size: int) -> dict:
    """Whether torch.compile pays for itself within a trial of the tutorial's sweep length."""
    compile_s = max(0.0, compiled_warmup_s - eager_warmup_s)  # seconds spent compiling
    saved_per_step = batch_size / eager_ips - batch_size / compiled_ips  # seconds
    trial_steps = round(6.5 * -(-54_000 // batch_size))  # mean of epochs 4-9, 54k training images
    if saved_per_step <= 0:
        verdict = "never pays off (compiled steps are no faster)"
        breakeven = None
    else:
        breakeven = round(compile_s / saved_per_step)
        verdict = (f"pays off after {breakeven} steps; a mean tutorial trial is {trial_steps} steps at "
                   f"batch {batch_size}: {'worth it' if breakeven < trial_steps else 'not worth it'}")
    return {"eager_images_per_s": round(eager_ips, 1), "compile_s": round(compile_s, 1),
            "breakeven_steps": breakeven, "trial_steps": trial_steps, "verdict": verdict}


def run(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    spec = Spec.model_validate({
        "data": {"root": args.data_root},
        "model": {"weights": "none", "conv1": "reinit"},
        "train": {"batch_size": args.batch_size, "precision": args.precision,
                  "compile": args.compile},
    })
    root = torchvision_layout(spec.data.root)
    print(f"device: {machine(device)} | batch {args.batch_size} | {args.steps} timed steps after "
          f"{args.warmup} warm-up | precision {args.precision} | memory format "
          f"{args.memory_format} | compile {args.compile} | "
          f"weights none (random init)")
    eager_spec = spec.model_copy(update={"train": spec.train.model_copy(update={"compile": "none"})})
    refs, owns, eagers, own_warmups, eager_warmups = [], [], [], [], []

    def run_reference(tag: str) -> None:
        refs.append(reference_loop(root, device, args.batch_size, args.warmup, args.steps))
        print(f"reference (torchvision ToTensor + DataLoader(num_workers=2, shuffle=True)){tag}: "
              f"{refs[-1]:.1f} images/s", flush=True)

    def run_tuner(tag: str) -> None:
        own, own_warmup_s = tuner_loop(spec, device, args.warmup, args.steps, args.memory_format)
        owns.append(own)
        own_warmups.append(own_warmup_s)
        print(f"tuner (device-resident uint8 data, batched on the device){tag}: {own:.1f} images/s",
              flush=True)
        if args.compile != "none":
            eager, eager_warmup_s = tuner_loop(eager_spec, device, args.warmup, args.steps,
                                               args.memory_format)
            eagers.append(eager)
            eager_warmups.append(eager_warmup_s)
            print(f"tuner, not compiled{tag}: {eager:.1f} images/s (compiled warm-up "
                  f"{own_warmup_s:.1f} s, eager {eager_warmup_s:.1f} s)", flush=True)

    for i in range(args.repeats):  # order swapped each time: drift on a shared machine hits both
        tag = f" [{i + 1}/{args.repeats}]" if args.repeats > 1 else ""
        for loop in (run_reference, run_tuner) if i % 2 == 0 else (run_tuner, run_reference):
            loop(tag)
    ref, own = statistics.median(refs), statistics.median(owns)
    compile_row = dict.fromkeys(["eager_images_per_s", "compile_s", "breakeven_steps", "trial_steps",
                                 "verdict"])  # same columns in every row of a CSV
    if args.compile != "none":
        # compile time: the first (cold) warm-up; later repeats may find inductor's cache warm
        compile_row = compile_payoff(own, own_warmups[0], statistics.median(eagers),
                                     statistics.median(eager_warmups), args.batch_size)
        print(f"compiling took {compile_row['compile_s']:.1f} s: {compile_row['verdict']}")
    if args.csv:
        append_csv(args.csv, {
            "machine": machine(device), "device": device.type, "batch_size": args.batch_size,
            "steps": args.steps, "warmup": args.warmup, "precision": args.precision,
            "memory_format": args.memory_format, "repeats": args.repeats,
            "reference_images_per_s": round(ref, 1), "tuner_images_per_s": round(own, 1),  # medians
            "speedup": round(own / ref, 2),
            "reference_each": " ".join(f"{r:.1f}" for r in refs),
            "tuner_each": " ".join(f"{r:.1f}" for r in owns),
            "torch": version("torch"), "ray": version("ray"), "compile": args.compile, **compile_row,
            "command": shlex.join(["python", "-m", "tuner.bench", *sys.argv[1:]]),
            "date": time.strftime("%Y-%m-%d"),
        })
    median = " (medians)" if args.repeats > 1 else ""
    print(f"speedup {own / ref:.2f} (tuner {own:.1f} images/s, reference {ref:.1f} images/s){median}")
    return 0


