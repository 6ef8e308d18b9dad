"""What every benchmark shares: the machine's name, a device sync, CSV rows appended, argument types."""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
from pathlib import Path

import torch

# --memory-format's layouts, by name
FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def append_csv(path: Path, row: dict) -> None:
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


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def counts(text: str) -> list[int]:
    try:
        counts = [int(n) for n in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected trial counts like 1,2,4,8, got {text!r}")
    return counts


