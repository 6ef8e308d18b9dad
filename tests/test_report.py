"""The HTML report: built from a run folder's files (hand-made here from known reports, and from a
real sweep in test_live.py), bad input, and the page rendered by a real headless browser."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import CHROMIUM, check_in_browser, images
from PIL import Image

from tuner import report, results
from tuner.errors import InputError
from tuner.report import comparison_table, load_run, write_report
from tuner.results import TrialRecord
from tuner.spec import Spec
from tuner.specfile import dump_spec

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_800_000_000  # unix seconds: when the first trial started


def make_spec(scheduler="asha") -> Spec:
    return Spec.model_validate({"name": "handmade", "search": {
        "num_samples": 4, "scheduler": scheduler, "parameters": {
            "epochs": {"choice": [1, 3]},
            "batch_size": {"choice": [32, 64]},
            "lr": {"loguniform": [1e-4, 1e-2]},
        }}})


def rep(epoch, val_acc, start):
    return {"epoch": epoch, "train_loss": 1.0, "train_accuracy": 0.5, "val_loss": 1.0 - val_acc,
            "val_accuracy": val_acc, "epoch_time_s": 10.0, "time_total_s": 10.0 * epoch,
            "timestamp": start + 10 * epoch, "node_ip": "127.0.0.1"}


def make_run(folder: Path, scheduler="asha", finished=True) -> Path:
    """A run folder as the sweep writes it, from known reports."""
    spec = make_spec(scheduler)
    records = [
        TrialRecord("aaaa", {"epochs": 3, "batch_size": 32, "lr": 2e-4},
                    [rep(1, 0.60, T0), rep(2, 0.70, T0), rep(3, 0.72, T0)]),
        TrialRecord("bbbb", {"epochs": 3, "batch_size": 64, "lr": 5e-3},
                    [rep(1, 0.80, T0 + 30), rep(2, 0.85, T0 + 30), rep(3, 0.88, T0 + 30)]),
        TrialRecord("1234e567", {"epochs": 3, "batch_size": 64, "lr": 1e-4}, [rep(1, 0.40, T0 + 5)]),
        TrialRecord("dddd", {"epochs": 1, "batch_size": 32, "lr": 9e-3}, [rep(1, 0.50, T0 + 10)],
                    error="RuntimeError: boom"),
    ]
    folder.mkdir(parents=True)
    provenance = {"weights": "none (random init)", "data": "/data/fashion-mnist",
                  "machine": "testbox x86_64, 2 CPUs, no GPU", "address": "embedded",
                  "command": "python -m tuner.run handmade.yaml", "started": "2026-11-22T10:00:00+0000"}
    results.write_text(folder / "spec.yaml", dump_spec(spec) + yaml.safe_dump({"provenance": provenance}))
    trials = results.trials_table(records, spec, provenance["weights"], interrupted=not finished)
    results.write_csv(folder / "trials.csv", trials)
    results.write_csv(folder / "epochs.csv", results.epochs_table(records))
    status = {"state": "finished" if finished else "running", "updated": "2026-11-22T10:02:00+0000",
              "trials": results.trial_counts(trials, 4), "cost": results.cost_totals(trials)}
    if finished:
        status["wall_time_s"] = 75.0
        results.write_json(folder / "best.json", {
            "trial_id": "bbbb", "config": {"epochs": 3, "batch_size": 64, "lr": 5e-3},
            "metric": "val_accuracy", "val_accuracy": 0.88, "test_accuracy": 0.8642,
            "test_images": 500, "sweep_wall_time_s": 75.0,
            "default_trial": {"trial_id": "aaaa", "config": {"epochs": 3, "batch_size": 64,
                                                             "lr": 1e-3}, "val_accuracy": 0.85},
            "gain_vs_default": 0.03})
    results.write_json(folder / "status.json", status)
    return folder


def test_report_of_a_finished_asha_run(tmp_path):
    run = make_run(tmp_path / "run")
    out = write_report([run], run / "report.html")
    page = out.read_text()
    for piece in ("handmade", "none (random init)", "testbox x86_64", "asha scheduler",
                  "test accuracy 0.8642", "Chosen trial <b>bbbb</b>", "val_accuracy 0.8800",
                  "Top trials", "Failed trials", "RuntimeError: boom", "ASHA",
                  "<td>1234e567</td>",  # a trial id that looks like a number stays as it was
                  "tuning gained +3.0 points of val_accuracy on validation over the spec&#39;s own "
                  "settings (trial aaaa: 0.8500; chosen: 0.8800)"):
        assert piece in page, piece
    # costs: 3 + 3 + 1 + 1 trial-epochs, 10 s per epoch on 1 CPU
    assert re.search(r"<th>trial-epochs</th><td>8</td>", page)
    assert re.search(r"<th>device-seconds</th><td>80.0</td>", page)
    # time to best: bbbb started at T0+30 and first had its final 0.88 after its 3rd epoch: 60 s
    assert re.search(r"<th>time to best</th><td>60 s</td>", page)
    figs = images(page)
    assert len(figs) == 3  # curves + best so far + ASHA; metric by value; parallel coordinates
    for fig in figs:
        assert fig.format == "PNG" and np.asarray(fig.convert("L")).std() > 10  # drawn on
    # self-contained: nothing fetched, nothing run
    assert "<script" not in page and not re.search(r'(src|href)="(https?:)?//', page)


def test_report_of_a_running_sweep_and_of_one_not_started(tmp_path):
    run = make_run(tmp_path / "run", finished=False)
    page = write_report([run], tmp_path / "r.html").read_text()
    assert "Best trial so far <b>bbbb</b>" in page and "No test score" in page
    assert "running (tables as of 2026-11-22T10:02:00+0000)" in page
    assert "(not finished) last report at 60 s of sweep time" in page  # bbbb's: T0 + 30 + 30
    assert len(images(page)) == 3

    for name in ("trials.csv", "epochs.csv", "best.json"):
        (run / name).unlink(missing_ok=True)
    page = write_report([run], tmp_path / "r.html").read_text()
    assert "No trial has a validation score yet" in page and not images(page)


def test_comparison_arms_are_shown_when_the_run_has_them(tmp_path):
    from matplotlib.figure import Figure

    run = make_run(tmp_path / "run")
    pd.DataFrame({
        "arm": ["fine-tune", "feature-extraction"], "val_mean": [0.9, 0.8], "val_std": [0.01, 0.02],
        "test_mean": [0.89, 0.79], "test_std": [0.012, 0.021], "test_ci95_low": [0.86, 0.74],
        "test_ci95_high": [0.92, 0.84], "trials": [4, 4], "trial_epochs": [8, 7],
        "device_s": [60.0, 55.5]}).to_csv(run / "compare.csv", index=False)
    fig = Figure(figsize=(3, 2))
    fig.subplots().errorbar([0, 1], [0.89, 0.79], yerr=[0.03, 0.05], fmt="o")
    fig.savefig(run / "compare.png")
    page = write_report([run], run / "report.html").read_text()
    assert "Comparison arms" in page and "feature-extraction" in page and "0.86" in page
    assert len(images(page)) == 4 and images(page)[0].size == (300, 200)  # compare.png first


def make_comparison(folder: Path, finished=True, data=None, arms=None, provenance=None) -> Path:
    """A comparison's run folder as compare.py writes it: trials.csv and epochs.csv with arm and
    phase columns. Arm "wide"'s best trial overall is one of its repeats (0.95); arm "narrow"
    searches worse than wide's search but better than wide's worst. Unfinished: narrow's search is
    still running (its best so far), and it has no repeats yet. `data`, `arms`: the spec's data
    section and arms' overrides (the arms are always wide and narrow)."""
    spec = Spec.model_validate({"name": "handcompare", "data": data or {}, "search": {
        "num_samples": 2, "parameters": {"lr": {"loguniform": [1e-4, 1e-2]}}},
        "compare": {"arms": arms or {"wide": {"batch_size": 64}, "narrow": {"batch_size": 32}},
                    "repeats": 2}})
    steps = {
        ("wide", "search"): [("w-s1", 1e-3, 0.81), ("w-s2", 5e-3, 0.70)],
        ("narrow", "search"): [("n-s1", 2e-4, 0.78), ("n-s2", 8e-4, 0.74)],
        ("wide", "repeats"): [("w-r1", 1e-3, 0.95), ("w-r2", 1e-3, 0.80)],
        ("narrow", "repeats"): [("n-r1", 2e-4, 0.77), ("n-r2", 2e-4, 0.76), ("n-rx", 2e-4, None)],
    }
    if not finished:
        del steps[("narrow", "repeats")], steps[("wide", "repeats")]
    trials, epochs = [], []
    for i, ((arm, phase), runs) in enumerate(steps.items()):
        arm_spec = spec.arm(arm)
        records = [TrialRecord(tid, {"lr": lr}, [rep(e, acc - 0.1 * (5 - e), T0 + 100 * i)
                                                 for e in range(1, 6)]) if acc else
                   TrialRecord(tid, {"lr": lr}, [], error="RuntimeError: worker died")
                   for tid, lr, acc in runs]
        table = results.trials_table(records, arm_spec, "none (random init)")
        trials.append(table.assign(arm=arm, phase=phase)[["arm", "phase", *table.columns]])
        ep = results.epochs_table(records)
        epochs.append(ep.assign(arm=arm, phase=phase)[["arm", "phase", *ep.columns]])
    folder.mkdir(parents=True)
    results.write_text(folder / "spec.yaml",
                       dump_spec(spec) + yaml.safe_dump({"provenance": provenance or {}}))
    results.write_csv(folder / "trials.csv", pd.concat(trials, ignore_index=True))
    results.write_csv(folder / "epochs.csv", pd.concat(epochs, ignore_index=True))
    done = [f"{phase}:{arm}" for phase, arm in
            (("search", "wide"), ("search", "narrow"), ("repeats", "wide"), ("repeats", "narrow"))]
    results.write_json(folder / "status.json", {
        "state": "finished" if finished else "running",
        "compare": {"done": done if finished else done[:1], "tests": {}}})
    return folder


def arm_block(page: str, arm: str) -> str:
    """The page from the arm's heading to the next heading."""
    return page.split(f"<h3>Arm {arm}</h3>")[1].split("<h")[0]


def test_a_comparison_shows_its_best_and_top_trials_per_arm(tmp_path):
    run = make_comparison(tmp_path / "cmp")
    page = write_report([run], run / "report.html").read_text()
    assert page.index("<h3>Arm wide</h3>") < page.index("<h3>Arm narrow</h3>")  # the spec's order
    assert "<h3>Top trials</h3>" not in page and "Best trial so far <b>" not in page  # nothing pooled
    wide, narrow = arm_block(page, "wide"), arm_block(page, "narrow")
    # each arm's choice is the best of its own search, never a repeat's luck nor another arm's trial
    assert "Chosen trial of its search <b>w-s1</b>" in wide and "val_accuracy 0.8100" in wide
    assert "Chosen trial of its search <b>n-s1</b>" in narrow and "val_accuracy 0.7800" in narrow
    assert "<code>lr=0.001</code>" in wide and "<code>lr=0.0002</code>" in narrow
    # each arm's top trials: its own, of both phases, with the phase, best first
    ids = {arm: re.findall(r"<td>([nw]-[sr]\d)</td>", block) for arm, block in
           (("wide", wide), ("narrow", narrow))}
    assert ids == {"wide": ["w-r1", "w-s1", "w-r2", "w-s2"], "narrow": ["n-s1", "n-r1", "n-r2", "n-s2"]}
    assert "<th>phase</th>" in wide and "<td>repeats</td>" in wide and "<td>search</td>" in wide
    failed = page.split("<h3>Failed trials</h3>")[1]  # which step the failed trial was in
    assert re.search(r"<td>narrow</td>\s*<td>repeats</td>\s*<td>n-rx</td>", failed)

    running = make_comparison(tmp_path / "running", finished=False)
    page = write_report([running], tmp_path / "r.html").read_text()
    assert "Chosen trial of its search <b>w-s1</b>" in arm_block(page, "wide")
    narrow = arm_block(page, "narrow")
    assert "Best trial so far of its search <b>n-s1</b>" in narrow and "has not finished" in narrow
    # a plain sweep is shown as before: one best, one table
    plain = write_report([make_run(tmp_path / "plain")], tmp_path / "p.html").read_text()
    assert "<h3>Arm" not in plain and "<h3>Top trials</h3>" in plain


def test_several_runs_side_by_side(tmp_path):
    fifo = make_run(tmp_path / "fifo", scheduler="fifo")
    asha = make_run(tmp_path / "asha")
    out, csv = tmp_path / "both.html", tmp_path / "both.csv"
    # tuner.report's main in this process (test_bad_input's "missing" runs the real command)
    assert report.main([str(fifo), str(asha), "--out", str(out), "--csv", str(csv)]) == 0
    table = pd.read_csv(csv)
    assert table["scheduler"].tolist() == ["fifo", "asha"] and table["run"].tolist() == ["fifo", "asha"]
    assert (table["trial_epochs"] == 8).all() and (table["test_accuracy"] == 0.8642).all()
    assert (table["best_val"] == 0.88).all() and (table["time_to_best_s"] == 60).all()
    page = out.read_text()
    assert "The runs side by side" in page and page.count('<h2 id="run-') == 2
    assert len(comparison_table([load_run(fifo), load_run(asha)])) == 2


SOURCE = ("file /r/transfer-source/run1/model/model.pt sha256:0123456789abcdef (tuner model); "
          "119 backbone tensors loaded, conv1 loaded (1 channels), fc re-initialised (5->5 classes)")
SCRATCH = "none (random init)"


def make_size_run(folder: Path, per_class, scores: dict, arms=None, provenance=None) -> Path:
    """A finished comparison (make_comparison) and its compare.csv: arm -> (test mean, 95% interval
    low, high, repeats); wide starts from SOURCE, narrow from scratch. `per_class`: the spec's
    data.train_per_class (None: all the images, or what `arms` override)."""
    run = make_comparison(folder, data={"train_per_class": per_class} if per_class else None,
                          arms=arms, provenance=provenance)
    overrides = load_run(run).spec.compare.arms
    pd.DataFrame([{
        "arm": arm, "best_config": json.dumps({"lr": 1e-3}), "val_mean": mean, "val_std": 0.01,
        "test_mean": mean, "test_std": 0.02, "test_ci95_low": low, "test_ci95_high": high,
        "repeats": n, "trials": 2, "trial_epochs": 12, "device_s": 30.5,
        "weights": SOURCE if arm == "wide" else SCRATCH, "overrides": json.dumps(overrides[arm]),
    } for arm, (mean, low, high, n) in scores.items()]).to_csv(run / "compare.csv", index=False)
    return run


def test_a_learning_curve_over_comparisons_of_several_sizes(tmp_path):
    small = make_size_run(tmp_path / "s20", 20, {"wide": (0.60, 0.52, 0.68, 3),
                                                 "narrow": (0.41, 0.30, 0.52, 3)})
    medium = make_size_run(tmp_path / "s100", 100, {"narrow": (0.70, 0.66, 0.74, 3),
                                                    "wide": (0.78, 0.75, 0.81, 3)})
    # sizes from the arms: wide's override; narrow trains on all the images, 5,000 per epoch over
    # 5 classes (epochs.csv), and has one repeat only (no interval)
    mixed = make_size_run(tmp_path / "mixed", None, {"wide": (0.90, 0.88, 0.92, 3),
                                                      "narrow": (0.87, None, None, 1)},
                          arms={"wide": {"batch_size": 64, "data.train_per_class": 500},
                                "narrow": {"batch_size": 32}},
                          provenance={"classes": ["a", "b", "c", "d", "e"]})
    epochs = pd.read_csv(mixed / "epochs.csv")
    epochs.assign(train_images=np.where(epochs["phase"] == "repeats", 5000, 4000)).to_csv(
        mixed / "epochs.csv", index=False)
    plain = make_run(tmp_path / "plain")  # not a comparison: no points
    out = tmp_path / "study.html"
    write_report([plain, medium, small, mixed], out, csv=tmp_path / "runs.csv")

    curve = pd.read_csv(tmp_path / "study_curve.csv")
    got = [(r.images_per_class, r.arm, r.test_mean, r.test_ci95_low, r.test_ci95_high, r.run)
           for r in curve.itertuples()]
    nan = pytest.approx(float("nan"), nan_ok=True)
    assert got == [(20, "narrow", 0.41, 0.30, 0.52, "s20"),  # by arm (first run's order), size
                   (100, "narrow", 0.70, 0.66, 0.74, "s100"),
                   (1000, "narrow", 0.87, nan, nan, "mixed"),
                   (20, "wide", 0.60, 0.52, 0.68, "s20"),
                   (100, "wide", 0.78, 0.75, 0.81, "s100"),
                   (500, "wide", 0.90, 0.88, 0.92, "mixed")]
    assert (curve["trial_epochs"] == 12).all() and curve["repeats"].tolist() == [3, 3, 1, 3, 3, 3]
    assert (curve.loc[curve["arm"] == "wide", "weights"] == SOURCE).all()
    assert len(pd.read_csv(tmp_path / "runs.csv")) == 4  # --csv: still one row per run

    from tuner.plots import curve_title
    assert curve_title(curve) == ("weights: narrow: none (random init); wide: file "
                                  "/r/transfer-source/run1/model/model.pt sha256:0123456789abcdef "
                                  "(tuner model)")
    wide = curve[curve["arm"] == "wide"]
    assert curve_title(wide).startswith("weights: file /r/transfer-source/")  # one label

    figure = Image.open(tmp_path / "study_curve.png")
    assert figure.format == "PNG" and figure.size == (840, 360)
    pixels = np.asarray(figure.convert("RGB")).astype(int)
    assert pixels.std() > 10
    # both arms' lines are drawn: matplotlib's C0 (blue) and C1 (orange) pixels
    for colour in ((31, 119, 180), (255, 127, 14)):
        assert (np.abs(pixels - colour).sum(axis=2) < 30).sum() > 200, colour
    page = out.read_text()
    assert "<h2>Learning curve</h2>" in page and "study_curve.png and study_curve.csv" in page
    assert images(page)[0].size == figure.size  # the curve comes first, before every run's figures


def test_no_learning_curve_without_two_comparisons(tmp_path):
    one = make_size_run(tmp_path / "s20", 20, {"wide": (0.6, 0.5, 0.7, 3),
                                               "narrow": (0.4, 0.3, 0.5, 3)})
    plain = [make_run(tmp_path / "a"), make_run(tmp_path / "b", scheduler="fifo")]
    for runs in (plain, [*plain, one]):
        page = write_report(runs, tmp_path / "r.html").read_text()
        assert "Learning curve" not in page
        assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["r.html"]
    # a compare.csv without the test scores: a clear error, nothing written
    two = make_size_run(tmp_path / "s100", 100, {"wide": (0.8, 0.7, 0.9, 3)})
    table = pd.read_csv(two / "compare.csv").drop(columns="test_mean")
    table.to_csv(two / "compare.csv", index=False)
    with pytest.raises(InputError, match=r"s100/compare.csv: not a tuner comparison table \(no test_m"):
        write_report([one, two], tmp_path / "bad.html")
    assert not list(tmp_path.glob("bad*"))


@pytest.mark.parametrize("case", ["missing", "not_a_run", "several_without_out", "out_folder_missing",
                                  "bad_trials_csv", "bad_spec"])
def test_bad_input(tmp_path, case, capsys):
    """tuner.report's main in this process; case `missing` runs the real command too (its exit
    code and its one line on stderr, as a process gives them)."""
    run = make_run(tmp_path / "run")
    before = sorted(p.name for p in run.iterdir())
    args = {
        "missing": [str(tmp_path / "nowhere")],
        "not_a_run": [str(tmp_path)],
        "several_without_out": [str(run), str(run)],
        "out_folder_missing": [str(run), "--out", str(tmp_path / "no" / "r.html")],
        "bad_trials_csv": [str(run)],
        "bad_spec": [str(run)],
    }[case]
    if case == "bad_trials_csv":
        (run / "trials.csv").write_text("just,some\n1,2\n")
        before = sorted(p.name for p in run.iterdir())
    if case == "bad_spec":
        (run / "spec.yaml").write_text("train:\n  epochs: many\n")
    if case == "missing":
        proc = subprocess.run([sys.executable, "-m", "tuner.report", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        code, stderr = proc.returncode, proc.stderr
    else:
        capsys.readouterr()
        try:
            code = report.main(args)
        except SystemExit as e:  # argparse's own errors
            code = e.code
        stderr = capsys.readouterr().err
    assert code == 2, stderr
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr
    assert sorted(p.name for p in run.iterdir()) == before  # nothing written


# --- a real browser -------------------------------------------------------------------------------

@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_the_page_renders_its_figures_in_chromium(tmp_path):
    fifo, asha = make_run(tmp_path / "fifo", scheduler="fifo"), make_run(tmp_path / "asha")
    sizes = [make_size_run(tmp_path / f"s{n}", n, {"wide": (0.6 + n / 1000, 0.5, 0.75, 3),
                                                  "narrow": (0.5 + n / 1000, 0.45, 0.7, 3)})
             for n in (20, 100)]
    write_report([fifo, asha, *sizes], tmp_path / "both.html")  # the learning curve first
    check_in_browser(tmp_path / "both.html", tmp_path)


def test_parallel_coordinate_axes_span_the_search_space():
    from tuner.plots import _unit_axis

    spec = Spec.model_validate({"search": {"parameters": {
        "batch_size": {"choice": [32, 64, 128]}, "lr": {"loguniform": [1e-4, 1e-2]},
        "model.freeze": {"choice": ["none", "head"]}}}})
    unit, ticks = _unit_axis(pd.Series([64.0, 128, 32]), "batch_size", spec)  # 64.0 is the choice 64
    assert unit.tolist() == [0.5, 1.0, 0.0] and [t[1] for t in ticks] == ["32", "64", "128"]
    unit, ticks = _unit_axis(pd.Series([1e-4, 1e-3, 1e-2]), "lr", spec)  # log scale: 1e-3 mid-way
    assert unit.tolist() == pytest.approx([0.0, 0.5, 1.0]) and ticks == [(0.0, "0.0001"), (1.0, "0.01")]
    assert _unit_axis(pd.Series(["head"]), "model.freeze", spec)[0].tolist() == [1.0]
