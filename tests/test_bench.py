"""`python -m tuner.bench` runs both loops on the CPU and reports in the documented form."""

import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from helpers import ROOT, call_main, cli_env, needs_fashion, short_tmpdir


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
    # The three figures are printed rounded (speedup to 0.005, images/s to 0.05): the ratio of the
    # rounded rates may differ from the printed speedup by those roundings' own error, no more.
    rounding = 0.005 + (own / ref) * (0.05 / own + 0.05 / ref)
    assert own > 0 and ref > 0 and abs(speedup - own / ref) <= rounding + 1e-9
    row = pd.read_csv(out_csv).iloc[0]
    assert row["batch_size"] == 16 and row["device"] == "cpu"
    assert row["speedup"] == speedup  # the printed figure (own and ref are printed rounded)
    # the reference read torchvision's own layout, unpacked from the local mirror
    assert (tmp_path / "data" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()


@pytest.mark.slow
@pytest.mark.cluster
def test_bench_sweep_mode_compares_packings_and_records_them(tmp_path):
    out_csv = tmp_path / "sweeps.csv"
    ray_tmp = short_tmpdir()  # the sweeps' embedded Rays: their session folders go with it
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tuner.bench", "--sweep", "1,2", "--spec",
             "sweeps/fashion-quick.yaml", "--results", str(tmp_path / "res"), "--csv", str(out_csv),
             "--set", "data.train_subset=300", "--set", "data.test_subset=200",
             "--set", "search.num_samples=2", "--set", "search.n_initial_points=1",
             "--set", "search.parameters.epochs={choice: [1]}"],
            cwd=ROOT, env=cli_env(tmp_path, RAY_TMPDIR=str(ray_tmp)), capture_output=True,
            text=True, timeout=600)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("sweep: ")]
    pattern = (r"sweep: {n} trials on \d+ CPU cores, exit 0, wall [\d.]+ s, 2 trials, "
               r"(\d+) training images/s \(([\d.]+)x N=1\), no nvidia-smi")
    m1, m2 = (re.fullmatch(pattern.format(n=n), line) for n, line in zip((1, 2), lines, strict=True))
    assert m1 and m1.group(2) == "1.00", lines
    assert m2, lines
    # one run directory per packing, each with both trials; the CSV has the figures it printed
    runs = sorted((tmp_path / "res" / "fashion-quick").glob("*"))
    assert len(runs) == 2 and all(len(pd.read_csv(r / "trials.csv")) == 2 for r in runs)
    table = pd.read_csv(out_csv)
    assert list(table["trials_per_device"]) == [1, 2] and (table["exit"] == 0).all()
    n_train = 270  # 300 images less the 10% validation split, one epoch per trial
    assert (table["train_images"] == 2 * n_train).all()
    assert table["ratio"].iloc[1] == round(table["images_per_s"].iloc[1] / table["images_per_s"].iloc[0], 2)
    assert table["weights"].str.startswith("none").all()
    assert set(table["run_dir"]) == {str(r) for r in runs}


def test_bench_sweep_counts_are_checked(tmp_path, capsys, monkeypatch):
    """tuner bench's main in this process (test_bench_folder_mode_checks_the_folder runs the real
    command on bad input)."""
    from tuner.bench.cli import main

    proc = call_main(main, ["--sweep", "0,2"], capsys, monkeypatch, tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: argument --sweep: expected trial counts like 1,2,4,8")
    assert len(proc.stderr.splitlines()) == 1


def test_compile_payoff_counts_steps_to_break_even():
    from tuner.bench.throughput import compile_payoff

    # 10 s more warm-up compiled; a step of 100 images takes 1 s eager and 0.5 s compiled
    row = compile_payoff(200.0, 12.0, 100.0, 2.0, batch_size=100)
    assert row["compile_s"] == 10.0 and row["breakeven_steps"] == 20
    assert row["trial_steps"] == 3510  # 6.5 epochs of 540 steps
    assert row["verdict"].endswith("worth it") and "not worth" not in row["verdict"]
    row = compile_payoff(200.0, 5000.0, 100.0, 2.0, batch_size=100)  # 4998 s compiling: 9996 steps > 3510
    assert row["breakeven_steps"] == 9996 and row["verdict"].endswith("not worth it")
    row = compile_payoff(90.0, 12.0, 100.0, 2.0, batch_size=100)  # compiled is slower
    assert row["breakeven_steps"] is None and row["verdict"].startswith("never pays off")


def test_bench_folder_mode_compares_pipelines_alone_and_with_the_model(tmp_path):
    from helpers import make_image_folder

    root = make_image_folder(tmp_path / "imgs", train_per_class=8)
    out_csv = tmp_path / "folder.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "tuner.bench", "--folder", str(root), "--device", "cpu",
         "--image-size", "32", "--resize", "48", "--batch-size", "8", "--steps", "2", "--warmup", "1",
         "--repeats", "2", "--csv", str(out_csv)],
        cwd=ROOT, env=cli_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith(f"folder {root}: 29 train/ images in 3 classes")
    assert re.fullmatch(r"decode once: [\d.]+ s, [\d.]+ CPU-s \(\d+ images/s, [\d.]+ CPU-ms per image\)",
                        lines[1]), lines[1]
    m = re.match(r"pipeline alone, per epoch: chapter .* ([\d.]+) images/s, ([\d.]+) CPU-ms per image; "
                 r"tuner .* ([\d.]+) images/s, ([\d.]+) CPU-ms per image; ratio ([\d.]+)", lines[2])
    assert m, lines[2]
    assert re.fullmatch(r"speedup [\d.]+ \(tuner [\d.]+ images/s, reference [\d.]+ images/s\) with the "
                        r"model, 2 steps", lines[-1]), lines[-1]
    row = pd.read_csv(out_csv).iloc[0]
    assert row["train_images"] == 29 and row["image_size"] == 32 and row["repeats"] == 2
    assert len(str(row["pipeline_tuner_each"]).split()) == 2 and row["pipeline_ratio"] > 0
    assert row["model_tuner_images_per_s"] > 0 and row["decode_s"] > 0


def test_bench_folder_mode_checks_the_folder(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tuner.bench", "--folder", str(tmp_path)], cwd=ROOT,
                          env=cli_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: --folder") and "no train/ folder" in proc.stderr


@pytest.mark.slow
@pytest.mark.cluster
def test_bench_overhead_times_a_trivial_sweep_phase_by_phase(tmp_path):
    out_csv = tmp_path / "overhead.csv"
    ray_tmp = short_tmpdir()  # the timed sweep's embedded Ray: its session folder goes with it
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tuner", "bench", "--overhead", "--repeats", "1", "--csv",
             str(out_csv)],
            cwd=ROOT, env=cli_env(tmp_path, RAY_TMPDIR=str(ray_tmp)), capture_output=True,
            text=True, timeout=600)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_csv(out_csv).set_index("phase")["median_s"]
    for phase in ("startup", "imports", "weights", "data", "ray start", "sweep (outside training)",
                  "test", "model", "report", "shutdown", "exit", "trial: training + validation"):
        assert phase in table.index and table[phase] >= 0, (phase, table.to_dict())
    # the phases account for the wall time: nothing unnamed is left but the interpreter's exit
    parts = table.drop(["wall", "outside training"]).sum()
    assert abs(parts - table["wall"]) < 0.05 + 0.01 * table["wall"], table.to_dict()
    assert abs(table["wall"] - table["trial: training + validation"] - table["outside training"]) < 0.05
    # the test runs in a worker that imported torch during the sweep, not in a new process, and
    # the driver skips the interpreter's teardown (each took seconds)
    assert table["test"] < table["sweep (outside training)"] / 2, table.to_dict()
    assert table["exit"] < 1.0, table.to_dict()
    assert "outside training" in proc.stdout and "ray start" in proc.stdout


@needs_fashion
@pytest.mark.slow
def test_bench_grid_baseline_runs_a_plain_lr_grid_per_arm(tmp_path, capsys, monkeypatch):
    """--grid-baseline: per arm 3 lrs across the searched range, the best on validation re-run
    with compare.repeats seeds and tested, on the comparison's own images; a row per arm."""
    out_csv = tmp_path / "grid.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "tuner.bench", "--grid-baseline", "--spec", "sweeps/fashion-quick.yaml",
         "--csv", str(out_csv), "--set", "model.weights=none", "--set", "data.train_subset=300",
         "--set", "data.test_subset=100", "--set", "compare.repeats=2",
         "--set", "compare.arms={full: {model.freeze: none}, head: {model.freeze: head}}"],
        cwd=ROOT, env=cli_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"^grid baseline: 2 arms, 10 runs, wall \d+ s on ", proc.stdout, re.M)
    table = pd.read_csv(out_csv).set_index("arm")
    assert list(table.index) == ["full", "head"] and (table["repeats"] == 2).all()
    for arm, row in table.iterrows():
        grid = dict(pair.split(":") for pair in row["grid_val"].split())
        assert [float(lr) for lr in grid] == pytest.approx([1e-4, 10 ** -3.5, 1e-3], rel=1e-2)
        assert row["lr"] == pytest.approx(float(max(grid, key=lambda lr: float(grid[lr]))), rel=1e-2)
        tests = [float(t) for t in row["test_each"].split()]
        assert len(tests) == 2 and row["test_mean"] == pytest.approx(sum(tests) / 2, abs=1e-4)
        assert row["trial_epochs"] == 5 and row["weights"].startswith("none")
    # a spec without arms is bad input (tuner.bench's main in this process)
    from tuner.bench.cli import main

    bad = call_main(main, ["--grid-baseline", "--spec", "sweeps/fashion-quick.yaml"], capsys,
                    monkeypatch, tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --grid-baseline:")
