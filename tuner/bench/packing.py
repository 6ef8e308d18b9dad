"""Packing: the tutorial's sweep once per number of trials sharing a device, timed from the command
line (`tuner bench --sweep 1,2,4,8`)."""

from __future__ import annotations

import argparse
import itertools
import os
import shlex
import subprocess
import sys
import threading
import time
from importlib.metadata import version
from pathlib import Path

import pandas as pd
import torch

from tuner import results
from tuner.bench.common import append_csv, machine


def run(args: argparse.Namespace) -> int:
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
            append_csv(args.csv, row)
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
    try:  # trials.csv's columns shared by every trial live in status.json (results.read_trials)
        return results.read_trials(run_dir) if name == "trials.csv" else pd.read_csv(run_dir / name)
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


