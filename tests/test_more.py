"""Sweeps that go on: `tuner resume RUN_DIR --more N` and `search.warm_start`.

`more_trials_join_the_run` runs the real CLI (`python -m tuner resume --more`) on real data with an
embedded Ray, on the finished run of test_live.py's sweep; the rest checks the warm-start points
and the primed searcher without a cluster.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import QUICK, ROOT, cli_env, short_tmpdir
from test_faults import assert_epochs_once

from tuner.errors import InputError
from tuner.spec import load_spec


def tuner(*args, tmp_path: Path, timeout: float = 600, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuner", *args], cwd=ROOT,
                          env=cli_env(tmp_path, **env), capture_output=True, text=True,
                          timeout=timeout)


def suggestions(spec, n: int) -> list[tuple]:
    """The first n configs the sweep's searcher proposes, asked in process as Ray Tune asks it
    (all before any result: n trials start at once)."""
    from tuner import sweep
    from tuner.space import param_space

    searcher = sweep.make_searcher(spec)
    searcher.set_search_properties(spec.search.metric, spec.search.mode, param_space(spec.search))
    return sorted(_key(searcher.suggest(f"t{i}")) for i in range(n))


def _key(config: dict) -> tuple:
    return int(config["batch_size"]), round(float(config["lr"]), 12)


def more_trials_join_the_run(run: Path, tmp_path: Path) -> None:
    """`tuner resume RUN --more 2` of a finished run of 3 trials (test_live.py's, 2 epochs each,
    one at a time): 5 trials in the same tables, each epoch once, and the searcher went on from
    the 3 earlier trials."""
    from tuner.more import session_spec

    before = tmp_path / "before"  # the run as the new session found it: 3 trials
    before.mkdir()
    for name in ("trials.csv", "spec.yaml"):
        shutil.copy(run / name, before / name)
    chosen_first = json.loads((run / "best.json").read_text())["trial_id"]
    ray_tmp = short_tmpdir()
    try:
        more = tuner("resume", str(run), "--more", "2", tmp_path=tmp_path, RAY_TMPDIR=str(ray_tmp))
        assert more.returncode == 0, more.stderr[-3000:]
        assert "the searcher starts from 3 earlier trial(s)" in more.stdout
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)

    trials = pd.read_csv(run / "trials.csv", dtype={"trial_id": str})
    epochs = pd.read_csv(run / "epochs.csv", dtype={"trial_id": str})
    assert len(trials) == 5 and trials["trial_id"].is_unique
    assert (trials["status"] == "finished").all(), trials
    assert_epochs_once(epochs, trials)  # nothing trained twice or lost
    old = set(pd.read_csv(before / "trials.csv", dtype={"trial_id": str})["trial_id"])
    added = trials[~trials["trial_id"].isin(old)]
    assert len(added) == 2

    # The searcher went on from the 3 earlier trials: one new trial (the first; trial ids do not
    # say which) is what a searcher primed with them proposes first (TPE, since 3 >=
    # n_initial_points), not what a fresh one draws. The second follows the first's result: the
    # run trains one trial at a time.
    spec = load_spec(run / "spec.yaml")
    primed = session_spec(spec, before, 2)
    fresh = primed.model_copy(update={"search": primed.search.model_copy(update={"warm_start": []})})
    got = {_key(r) for r in added.to_dict("records")}
    assert suggestions(primed, 1)[0] in got
    assert suggestions(fresh.model_copy(update={"search": fresh.search.model_copy(
        update={"seed": spec.search.seed + 3})}), 1)[0] not in got  # no evidence: random draws

    status = json.loads((run / "status.json").read_text())
    best = json.loads((run / "best.json").read_text())
    assert status["state"] == "finished"
    assert status["trials"]["finished"] == 5 and status["trials"]["planned"] == 5
    assert status["cost"]["trials"] == 5
    assert status["cost"]["trial_epochs"] == len(epochs) == trials["trial_epochs"].sum()
    assert [s["trials"] for s in status["more"]] == [2]
    assert status["more"][0]["experiment"].endswith("trials-more1")
    uses = best["test_set_uses"]
    assert status["test_set_uses"] == uses
    changed = best["trial_id"] != chosen_first
    assert uses["count"] == (2 if changed else 1)
    assert uses["trials"] == [chosen_first, *([best["trial_id"]] if changed else [])]
    # the chosen checkpoint is named relative to the run folder, whichever experiment holds it
    assert not Path(best["checkpoint"]).is_absolute() and (run / best["checkpoint"]).is_dir()
    assert best["trial_id"] == trials.loc[trials["val_accuracy"].idxmax(), "trial_id"]
    from tuner import report

    page = report.summary(report.load_run(run))  # what report.html shows of the run
    assert (page["trials"], page["trial_epochs"], page["best_trial"]) == (
        5, len(epochs), best["trial_id"])
    assert (run / "report.html").stat().st_mtime >= (run / "trials.csv").stat().st_mtime

    # The run warm-starts a new sweep; its dry run says so, on stdout, with nothing else there.
    plan = tuner("run", *QUICK, "--set", "model.weights=none", "--set",
                 f"search.warm_start=[{run}]", "--dry-run", tmp_path=tmp_path)
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.startswith("name: ")
    assert f"warm start: 5 finished trial(s) of {run}; TPE starts from them" in plan.stdout
    assert "INFO" not in plan.stdout
    # A finished run with sessions is resumed by tuner resume, never by tuner.run --resume.
    again = subprocess.run([sys.executable, "-m", "tuner.run", "--resume", str(run)], cwd=ROOT,
                           env=cli_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "tuner resume" in again.stderr


# --- warm-start points, without Ray ---------------------------------------------------------


def fake_run(folder: Path, parameters: dict, rows: list[dict]) -> Path:
    """A finished run directory as the warm start reads it: spec.yaml and trials.csv."""
    folder.mkdir(parents=True)
    (folder / "spec.yaml").write_text(yaml.safe_dump(
        {"name": "old", "model": {"weights": "none"}, "search": {"parameters": parameters}}))
    pd.DataFrame(rows).to_csv(folder / "trials.csv", index=False)
    return folder


SPACE = {"lr": {"loguniform": [1.0e-4, 1.0e-2]}, "model.freeze": {"choice": ["none", "head"]}}
ROWS = [{"trial_id": "a1", "status": "finished", "lr": 3e-4, "model.freeze": "none",
         "val_accuracy": 0.8},
        {"trial_id": "b2", "status": "error", "lr": 5e-3, "model.freeze": "head",
         "val_accuracy": None},
        {"trial_id": "c3", "status": "stopped_early", "lr": 2e-3, "model.freeze": "head",
         "val_accuracy": 0.6}]


def new_spec(tmp_path, parameters: dict, runs: list[Path]):
    path = tmp_path / "new.yaml"
    path.write_text(yaml.safe_dump({"model": {"weights": "none"}, "search": {
        "num_samples": 10, "n_initial_points": 2, "parameters": parameters,
        "warm_start": [str(r) for r in runs]}}))
    return load_spec(path)


def test_warm_start_reads_the_scored_trials_with_their_values(tmp_path):
    from tuner.warmstart import load_points

    run = fake_run(tmp_path / "old", SPACE, ROWS)
    points = load_points(new_spec(tmp_path, SPACE, [run]))
    assert [(p.config, p.value) for p in points] == [
        ({"lr": 3e-4, "model.freeze": "none"}, 0.8), ({"lr": 2e-3, "model.freeze": "head"}, 0.6)]


@pytest.mark.parametrize("space, pieces", [
    ({**SPACE, "epochs": {"choice": [1, 2]}}, ["did not search epochs"]),
    ({"lr": SPACE["lr"]}, ["also searched model.freeze", "leaves fixed"]),
    ({**SPACE, "lr": {"loguniform": [1.0e-3, 1.0e-2]}}, ["trial a1", "lr=0.0003", "outside"]),
    ({**SPACE, "model.freeze": {"choice": ["none"]}}, ["trial c3", "model.freeze='head'"]),
], ids=["missing", "extra", "below_range", "not_a_choice"])
def test_warm_start_from_an_incompatible_space_names_the_parameter(tmp_path, space, pieces):
    from tuner.warmstart import load_points

    run = fake_run(tmp_path / "old", SPACE, ROWS)
    with pytest.raises(InputError) as e:
        load_points(new_spec(tmp_path, space, [run]))
    msg = str(e.value)
    assert msg.startswith(f"search.warm_start: {run}") and "\n" not in msg
    for piece in pieces:
        assert piece in msg, msg


def test_primed_tpe_proposes_where_the_evidence_is_good(tmp_path):
    """30 earlier trials whose accuracy grows with lr: TPE, primed with them, proposes high lr at
    once (no random start-up left: 30 >= n_initial_points); unprimed, it draws at random."""
    from tuner import sweep
    from tuner.space import param_space

    lrs = [1e-4 + i * (1e-2 - 1e-4) / 29 for i in range(30)]
    rows = [{"trial_id": f"t{i}", "status": "finished", "lr": lr, "val_accuracy": lr * 50}
            for i, lr in enumerate(lrs)]
    space = {"lr": {"uniform": [1.0e-4, 1.0e-2]}}
    run = fake_run(tmp_path / "old", space, rows)

    def proposals(spec):
        searcher = sweep.make_searcher(spec).searcher  # HyperOpt's, without the concurrency limit
        searcher.set_search_properties("val_accuracy", "max", param_space(spec.search))
        return sorted(searcher.suggest(f"s{i}")["lr"] for i in range(8))  # 8 at once, no results

    primed = proposals(new_spec(tmp_path, space, [run]))
    fresh = proposals(new_spec(tmp_path, space, []))
    assert primed[len(primed) // 2] > 7e-3, primed  # the median: in the top third of the range
    assert fresh[len(fresh) // 2] < 6e-3, fresh  # random: about the middle of the range
