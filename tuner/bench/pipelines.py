"""Image folders: tuner's resident input pipeline against the d2l fine-tuning chapter's, alone and
feeding the same model (`tuner bench --folder PATH`)."""

from __future__ import annotations

import argparse
import resource
import shlex
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch

from tuner import folder
from tuner.batches import DeviceSplit, train_batches
from tuner.bench.common import append_csv, machine, sync
from tuner.bench.throughput import reference_steps, tuner_loop
from tuner.data import Dataset, Pixels, Split
from tuner.model import Weights, build_model, make_optimizer
from tuner.spec import Spec


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
    sync(x.device)
    return n


def run(args: argparse.Namespace) -> int:
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
        append_csv(args.csv, {
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


