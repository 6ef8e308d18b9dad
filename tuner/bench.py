"""Throughput benchmark: tuner's trial loop against a loop built like the tutorial's, in one process.

    python -m tuner.bench [--device cpu|cuda] [--batch-size 128] [--steps 50] [--precision fp32]
    python -m tuner.bench --sweep 1,2,4,8 [--set key=value ...]   # the tutorial's sweep at each packing
    python -m tuner.bench --folder PATH [--image-size 224] [--resize 256]  # an image folder vs d2l
    python -m tuner.bench --overhead [--repeats 3]   # a trivial sweep's fixed cost, phase by phase
    python -m tuner.bench --grid-baseline --spec COMPARE.yaml [--set ...]  # a plain lr grid per arm
    python -m tuner.bench --epoch-cost [--spec S --arm A --epochs N]  # a trial-epoch, phase by phase

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
import csv
import itertools
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import threading
import time
from importlib.metadata import version
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from tuner import folder
from tuner.batches import DeviceSplit, train_batches
from tuner.data import Dataset, Pixels, Split, load_dataset
from tuner.errors import ArgumentParser, InputError
from tuner.fashion_mnist import torchvision_layout
from tuner.model import Weights, build_model, make_optimizer
from tuner.spec import Spec
from tuner.device import memory_format
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
            _sync(device)
            t0, seen = time.perf_counter(), 0
        images, labels = images.to(device), labels.to(device)
        outputs = model(images)
        loss = criterion(outputs, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        running_loss += loss.item()  # as the tutorial does: a device sync every step
        seen += len(labels)
    _sync(device)
    return seen / (time.perf_counter() - t0)


FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


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
    _sync(device)
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    *_, seen = train_epoch(step_model, optimizer, itertools.islice(stream, steps), spec.train.precision,
                           device)  # ends with .item(): the device is done when it returns
    return seen / (time.perf_counter() - t0), warmup_s


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


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


def compare(args: argparse.Namespace) -> int:
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
        _append_csv(args.csv, {
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


# --- folder mode: an image folder, tuner's resident pipeline against the d2l chapter's ------------


def chapter_loader(train_dir: Path, image_size: int, batch_size: int, workers: int = 2):
    """The d2l fine-tuning chapter's training input: ImageFolder with PIL RandomResizedCrop,
    RandomHorizontalFlip, ToTensor and ImageNet Normalize, every image decoded every epoch, in a
    shuffled DataLoader with `workers` worker processes."""
    from torchvision import datasets, transforms

    augs = transforms.Compose([
        transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize(folder.IMAGENET_MEAN, folder.IMAGENET_STD)])
    return torch.utils.data.DataLoader(datasets.ImageFolder(str(train_dir), transform=augs),
                                       batch_size=batch_size, shuffle=True, num_workers=workers)


def cpu_seconds() -> float:
    """CPU seconds used so far by this process and its finished children (DataLoader workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn):
    """(wall seconds, CPU seconds, fn's result)."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    out = fn()
    return time.perf_counter() - wall, cpu_seconds() - cpu, out


def chapter_epoch(loader) -> int:
    """One epoch of the chapter's batches, untouched; its workers have exited when it returns."""
    return sum(len(y) for _, y in loader)


def tuner_epoch(train: DeviceSplit, spec: Spec, epoch: int) -> int:
    """One epoch of tuner's batches (crops, flips and normalisation on the device)."""
    n = 0
    for x, y in train_batches(train, spec.train.batch_size, spec.train.seed, epoch, spec.data.augment):
        n += len(y)
    _sync(x.device)
    return n


def compare_folder(args: argparse.Namespace) -> int:
    """--folder: decode once, then (b) the input pipelines alone, one epoch of the folder's train/
    images at a time, and (a) each pipeline feeding the same model for the same steps."""
    device = torch.device(args.device)
    spec = Spec.model_validate({
        "data": {"dataset": "imagefolder", "root": args.folder, "resize": args.resize,
                 "image_size": args.image_size, "cache": False},
        "model": {"weights": "none"},
        "train": {"batch_size": args.batch_size},
    })
    decode_s, decode_cpu, found = timed(lambda: folder.read_folder(spec.data))
    images, labels = found.splits["train"]
    n, classes = len(labels), found.classes
    empty = Split(images[:0], labels[:0])
    pixels = Pixels(folder.IMAGENET_MEAN, folder.IMAGENET_STD, crop=args.image_size)
    data = Dataset(Split(images, labels), empty, empty, found.source, classes, 3, pixels)
    print(f"folder {args.folder}: {n} train/ images in {len(classes)} classes | device "
          f"{machine(device)} | stored {args.resize}x{args.resize}, crops {args.image_size} | batch "
          f"{args.batch_size} | medians of {args.repeats}")
    print(f"decode once: {decode_s:.1f} s, {decode_cpu:.1f} CPU-s ({n / decode_s:.0f} images/s, "
          f"{1000 * decode_cpu / n:.1f} CPU-ms per image)")

    loader = chapter_loader(Path(args.folder) / "train", args.image_size, args.batch_size)
    train = DeviceSplit.put(data.train, device, pixels)
    tuner_epoch(train, spec, 0)  # warm-up: the timed epochs are the second and later
    pipe = {"chapter": [], "tuner": []}  # (images/s, CPU-s per image) per epoch
    for i in range(args.repeats):  # which goes first alternates: drift hits both
        runs = [("chapter", lambda: chapter_epoch(loader)), ("tuner", lambda: tuner_epoch(train, spec, i + 1))]
        for name, run in runs if i % 2 == 0 else runs[::-1]:
            wall, cpu, seen = timed(run)
            pipe[name].append((seen / wall, cpu / seen))
    med = {k: (statistics.median(v[0] for v in rows), statistics.median(v[1] for v in rows))
           for k, rows in pipe.items()}
    pipe_ratio = med["tuner"][0] / med["chapter"][0]
    saved_per_epoch = n / med["chapter"][0] - n / med["tuner"][0]  # seconds
    payback = decode_s / saved_per_epoch if saved_per_epoch > 0 else None
    print(f"pipeline alone, per epoch: chapter (ImageFolder + PIL, DataLoader 2 workers) "
          f"{med['chapter'][0]:.0f} images/s, {1000 * med['chapter'][1]:.1f} CPU-ms per image; tuner "
          f"(resident, roi_align crops) {med['tuner'][0]:.0f} images/s, {1000 * med['tuner'][1]:.1f} "
          f"CPU-ms per image; ratio {pipe_ratio:.2f}"
          + (f"; decoding once pays for itself after {payback:.1f} epochs" if payback else ""))

    model_rows = {"reference": [], "tuner": []}
    for i in range(args.repeats if args.steps else 0):
        runs = [("reference", lambda: _chapter_training(spec, data, loader, device, args)),
                ("tuner", lambda: tuner_loop(spec, device, args.warmup, args.steps, data=data)[0])]
        for name, run in runs if i % 2 == 0 else runs[::-1]:
            model_rows[name].append(run())
    ref = statistics.median(model_rows["reference"]) if args.steps else None
    own = statistics.median(model_rows["tuner"]) if args.steps else None
    if args.csv:
        _append_csv(args.csv, {
            "machine": machine(device), "device": device.type, "folder": str(args.folder),
            "train_images": n, "classes": len(classes), "resize": args.resize,
            "image_size": args.image_size, "batch_size": args.batch_size, "repeats": args.repeats,
            "decode_s": round(decode_s, 2), "decode_cpu_s": round(decode_cpu, 2),
            "pipeline_chapter_images_per_s": round(med["chapter"][0], 1),
            "pipeline_tuner_images_per_s": round(med["tuner"][0], 1),
            "pipeline_ratio": round(pipe_ratio, 2),
            "chapter_cpu_ms_per_image": round(1000 * med["chapter"][1], 2),
            "tuner_cpu_ms_per_image": round(1000 * med["tuner"][1], 2),
            "payback_epochs": round(payback, 2) if payback else None,
            "pipeline_chapter_each": " ".join(f"{r[0]:.1f}" for r in pipe["chapter"]),
            "pipeline_tuner_each": " ".join(f"{r[0]:.1f}" for r in pipe["tuner"]),
            "steps": args.steps, "warmup": args.warmup,
            "model_reference_images_per_s": round(ref, 1) if ref else None,
            "model_tuner_images_per_s": round(own, 1) if own else None,
            "model_ratio": round(own / ref, 2) if ref else None,
            "model_reference_each": " ".join(f"{r:.1f}" for r in model_rows["reference"]),
            "model_tuner_each": " ".join(f"{r:.1f}" for r in model_rows["tuner"]),
            "torch": version("torch"), "torchvision": version("torchvision"),
            "pillow": version("pillow"),
            "command": shlex.join(["python", "-m", "tuner.bench", *sys.argv[1:]]),
            "date": time.strftime("%Y-%m-%d"),
        })
    if ref:
        print(f"speedup {own / ref:.2f} (tuner {own:.1f} images/s, reference {ref:.1f} images/s) "
              f"with the model, {args.steps} steps")
    return 0


def _chapter_training(spec: Spec, data: Dataset, loader, device: torch.device,
                      args: argparse.Namespace) -> float:
    """The chapter's loader feeding the model tuner would train, with the same optimizer."""
    torch.manual_seed(0)
    model = build_model(spec.model, Weights(None, "none"), data.in_channels, data.num_classes)
    model = model.to(device)
    return reference_steps(loader, model, make_optimizer(model, spec.model, spec.train), device,
                           args.warmup, args.steps)


def sweep(args: argparse.Namespace) -> int:
    """The tutorial's sweep (sweeps/fashion.yaml) once for each packing N (trials per GPU), each
    timed from the command line (Ray start-up included), with GPU utilisation sampled where
    nvidia-smi answers. Aggregate throughput is every trial's training images over the wall time,
    and each packing is compared with the first. Without a GPU, N trials share the CPU cores."""
    first = None
    status = 0
    for n in args.sweep:
        row = sweep_once(args, n)
        first = first or row
        row["ratio"] = round(row["images_per_s"] / first["images_per_s"], 2) if first["images_per_s"] else 0
        print(f"sweep: {row['packing']}, exit {row['exit']}, wall {row['wall_s']:.1f} s, "
              f"{row['trials']} trials, {row['images_per_s']:.0f} training images/s "
              f"({row['ratio']:.2f}x N={first['trials_per_device']}), {row['gpu_util']}")
        if args.csv:
            _append_csv(args.csv, row)
        status = status or row["exit"]
    return status


def sweep_once(args: argparse.Namespace, n: int) -> dict:
    """Run the sweep with N trials per device; return its measured row."""
    if torch.cuda.is_available():
        per_trial, packing = [f"resources.gpu={1 / n:.4g}"], f"{n} trials per GPU"
    else:  # the cores shared out: N=1 is one trial on every core
        cores = os.cpu_count() or 1
        per_trial = ["resources.gpu=0", f"resources.cpu={cores / n:.4g}"]
        packing = f"{n} trials on {cores} CPU cores"
    sets = [*per_trial, f"search.max_concurrent={n}", *args.set]
    cmd = [sys.executable, "-m", "tuner.run", args.spec, "--results", str(args.results),
           *itertools.chain(*(("--set", s) for s in sets))]
    print("running:", shlex.join(cmd), flush=True)
    before = set(args.results.glob("*/*"))
    samples: list[float] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_sample_gpu, args=(samples, stop), daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False)
    wall = time.perf_counter() - t0  # seconds, Ray start-up and the test evaluation included
    stop.set()
    watcher.join()
    (run_dir,) = set(args.results.glob("*/*")) - before or {None}
    epochs, trial_rows = _table(run_dir, "epochs.csv"), _table(run_dir, "trials.csv")
    images = int(epochs["train_images"].sum()) if "train_images" in epochs else 0
    weights = str(trial_rows["weights"].iloc[0]) if "weights" in trial_rows else ""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return {
        "machine": machine(device), "device": device.type, "trials_per_device": n,
        "packing": packing, "exit": proc.returncode, "trials": len(trial_rows),
        "wall_s": round(wall, 1), "train_images": images,
        "images_per_s": round(images / wall, 1),  # aggregate: all trials' training images / wall
        "ratio": None,
        "gpu_util": f"{sum(samples) / len(samples):.0f}% mean GPU utilisation" if samples
        else "no nvidia-smi",
        "weights": weights, "run_dir": str(run_dir), "torch": version("torch"), "ray": version("ray"),
        "command": shlex.join(["python", "-m", "tuner.bench", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d"),
    }


def _table(run_dir: Path | None, name: str) -> pd.DataFrame:
    try:
        return pd.read_csv(run_dir / name)
    except (TypeError, FileNotFoundError, pd.errors.EmptyDataError):  # no run, or no trial ran
        return pd.DataFrame()


def _sample_gpu(samples: list[float], stop: threading.Event) -> None:
    while not stop.wait(1.0):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu",
                                  "--format=csv,noheader,nounits"],
                                 check=False, capture_output=True, text=True, timeout=5).stdout
            samples.append(float(out.split()[0]))
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            return


def grid_baseline(args: argparse.Namespace) -> int:
    """--grid-baseline: tuner.baseline's plain grid for every arm of the spec's comparison; prints
    each run and the table, appends the table's rows to --csv. Raises InputError."""
    from tuner import baseline, results
    from tuner.data import load_for
    from tuner.model import check_surgery, resolve_all, weights_label
    from tuner.spec import load_spec

    spec = load_spec(args.spec, args.set)
    if spec.compare is None:
        raise InputError(f"--grid-baseline: {args.spec} has no compare section; give a "
                         "comparison's spec (its arms are the strategies to run)")
    weights = resolve_all(spec.model_variants())
    data = load_for(spec)
    for m in spec.model_variants():
        check_surgery(m, weights[m.weights], data.classes)
    t0 = time.perf_counter()
    runs = []
    for arm in spec.compare.arms:
        runs += baseline.run_arm(spec, arm, weights, data, log=lambda line: print(line, flush=True))
    wall = time.perf_counter() - t0
    table = pd.DataFrame(baseline.summary(runs))
    print(results.format_table(table[["arm", "lr", "test_mean", "test_ci95_low", "test_ci95_high",
                                      "repeats", "trial_epochs", "wall_s"]]))
    print(f"grid baseline: {len(spec.compare.arms)} arms, {len(runs)} runs, wall {wall:.0f} s on "
          f"{machine(torch.device('cpu'))}")
    if args.csv:
        for row in table.to_dict("records"):
            _append_csv(args.csv, {
                **row, "weights": weights_label(weights), "machine": machine(torch.device("cpu")),
                "torch": version("torch"), "wall_total_s": round(wall, 1),
                "command": shlex.join(["python", "-m", "tuner.bench", *sys.argv[1:]]),
                "date": time.strftime("%Y-%m-%d")})
    return 0


def epoch_cost(args: argparse.Namespace, default_spec: str) -> int:
    """--epoch-cost: tuner.epochcost's table and its summary line; appends the rows to --csv.
    Raises InputError."""
    from tuner import epochcost, results

    spec, sets = args.spec, list(args.set)
    if spec == default_spec:  # no source model exists here: the transfer arm's cost from random init
        spec, sets = "sweeps/transfer-target.yaml", ["model.weights=none", *sets]
    table = epochcost.measure(spec, sets, args.arm, args.epochs,
                              log=lambda line: print(line, file=sys.stderr, flush=True))
    print(results.format_table(table.round(3)))
    print(epochcost.summary_line(table))
    if args.csv:
        for row in table.to_dict("records"):
            _append_csv(args.csv, {**row, "spec": spec, "sets": " ".join(sets),
                                   "machine": machine(torch.device("cpu")), "torch": version("torch"),
                                   "date": time.strftime("%Y-%m-%d")})
    return 0


def _append_csv(path: Path, row: dict) -> None:
    """Add a row; a file whose columns differ (from another mode or version) is refused, not mixed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size:
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        if header != list(row):
            print(f"error: --csv {path}: its columns differ from this run's (figures above); name "
                  "another file", file=sys.stderr)
            sys.exit(2)
    new = not path.exists() or not path.stat().st_size
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def _counts(text: str) -> list[int]:
    try:
        counts = [int(n) for n in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected trial counts like 1,2,4,8, got {text!r}")
    return counts


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m tuner.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=50, help="timed training steps (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    p.add_argument("--repeats", type=_positive, default=1,
                   help="run the loops this many times, alternated, and compare medians (default 1)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: autocast on CUDA, or on a CPU with native bf16")
    p.add_argument("--memory-format", choices=["auto", *FORMATS], default="auto",
                   help="tuner's layout: auto is what trials use (tuner.device.memory_format)")
    p.add_argument("--compile", choices=["none", "default", "reduce-overhead", "max-autotune"],
                   default="none", help="torch.compile tuner's loop in this mode, and compare with eager")
    p.add_argument("--data-root", default="data", help="torchvision layout root (default data)")
    p.add_argument("--csv", type=Path, help="append the figures to this CSV file")
    p.add_argument("--sweep", type=_counts, metavar="N[,N...]",
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
                        "(tuner.baseline)")
    p.add_argument("--overhead", action="store_true",
                   help="time a trivial sweep (1 trial, 1 epoch, 600 images of --spec) phase by phase, "
                        "--repeats times (tuner.overhead)")
    p.add_argument("--epoch-cost", action="store_true",
                   help="one trial-epoch's cost, phase by phase, against a plain PyTorch loop on "
                        "the same images (--spec's arm --arm, default sweeps/transfer-target.yaml's "
                        "first arm with model.weights none; tuner.epochcost)")
    p.add_argument("--arm", help="--epoch-cost: which arm of a comparison's spec")
    p.add_argument("--epochs", type=_positive, help="--epoch-cost: epochs per run (the spec's)")
    p.add_argument("--image-size", type=_positive, default=224, help="--folder: crop size (224)")
    p.add_argument("--resize", type=_positive, default=256, help="--folder: stored size (256)")
    try:
        args = p.parse_args(argv)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.grid_baseline:
        try:
            return grid_baseline(args)
        except InputError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if args.epoch_cost:
        try:
            return epoch_cost(args, p.get_default("spec"))
        except InputError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if args.overhead:
        from tuner import overhead

        spec = args.spec if args.spec != p.get_default("spec") else "sweeps/fashion-quick.yaml"
        rest = [f"--spec={spec}", f"--repeats={args.repeats}",
                *[f"--set={o}" for o in args.set], *([f"--csv={args.csv}"] if args.csv else [])]
        return overhead.main(rest)
    if args.folder:
        try:
            if not (args.folder / "train").is_dir():
                raise InputError(f"--folder {args.folder}: no train/ folder there")
            if args.image_size > args.resize:
                raise InputError(f"--image-size {args.image_size} is larger than --resize "
                                 f"{args.resize}")
            return compare_folder(args)
        except InputError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return sweep(args) if args.sweep else compare(args)


if __name__ == "__main__":
    sys.exit(main())
