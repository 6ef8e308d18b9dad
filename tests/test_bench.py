"""`python -m tuner.bench` runs both loops on the CPU and reports in the documented form."""

import re
import subprocess
import sys

import pandas as pd
from conftest import ROOT, cli_env


def test_bench_runs_both_loops_and_ends_with_the_speedup_line(tmp_path):
    out_csv = tmp_path / "bench.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "tuner.bench", "--device", "cpu", "--batch-size", "16",
         "--steps", "3", "--warmup", "1", "--data-root", str(tmp_path / "data"), "--csv", str(out_csv)],
        cwd=ROOT, env=cli_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"speedup (\d+\.\d\d) \(tuner ([\d.]+) images/s, reference ([\d.]+) images/s\)", last)
    assert m, last
    speedup, own, ref = map(float, m.groups())
    assert own > 0 and ref > 0 and abs(speedup - own / ref) < 0.01
    row = pd.read_csv(out_csv).iloc[0]
    assert row["batch_size"] == 16 and row["device"] == "cpu" and row["speedup"] == round(own / ref, 2)
    # the reference read torchvision's own layout, unpacked from the local mirror
    assert (tmp_path / "data" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()


def test_bench_sweep_mode_runs_the_sweep_and_reports_its_wall_time(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tuner.bench", "--sweep", "2", "--spec", "sweeps/fashion-quick.yaml",
         "--results", str(tmp_path / "res"),
         "--set", "data.train_subset=300", "--set", "data.test_subset=200",
         "--set", "search.num_samples=2", "--set", "search.n_initial_points=1",
         "--set", "search.parameters.epochs={choice: [1]}"],
        cwd=ROOT, env=cli_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    pattern = r"sweep: 2 (trials per GPU|one-CPU trials at a time), exit 0, wall [\d.]+ s, .+"
    assert re.fullmatch(pattern, last), last
    (run,) = list((tmp_path / "res" / "fashion-quick").glob("*"))
    assert len(pd.read_csv(run / "trials.csv")) == 2
