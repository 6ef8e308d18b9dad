"""Strategies compared as arms: the spec section, weights per arm, the statistics and words, and one
real comparison (real Ray, HyperOpt, training, Fashion-MNIST) interrupted and resumed."""

from __future__ import annotations

import json
import math
import shutil
import signal

import pandas as pd
import pytest
import torch
from helpers import ROOT, call_main, needs_fashion, reports, short_tmpdir
from runs import planted_weights
from scipy import stats

from tuner import arms
from tuner.compare import _scores, compare_table, difference, repeats_spec, t_interval, verdict
from tuner.errors import InputError
from tuner.model import build_model, resolve_all
from tuner.specfile import load_spec, validate

QUICK = ROOT / "sweeps" / "fashion-quick.yaml"  # searches epochs, batch_size and lr
ARMS = "compare.arms={full: {model.freeze: none}, head: {model.freeze: head}}"


# --- the spec ------------------------------------------------------------------------------------


def test_arms_give_their_own_specs():
    spec = load_spec(QUICK, [ARMS, "compare.repeats=2",
                             "compare.arms.head={model.freeze: head, train.weight_decay: 1.0e-4}"])
    assert spec.compare.repeats == 2 and list(spec.compare.arms) == ["full", "head"]
    head = spec.arm("head")
    assert head.model.freeze == "head" and head.train.weight_decay == 1e-4 and head.compare is None
    assert spec.arm("full").model.freeze == "none"
    # the same search in every arm, but each arm's searcher draws its own random points
    assert head.search == spec.search.model_copy(update={"seed": spec.search.seed + 1})
    assert spec.arm("full").search == spec.search


@pytest.mark.parametrize(("compare", "pieces"), [
    ({"arms": {"a": {"lr": 0.01}, "b": {}}},
     ["compare.arms.a.lr", "train.lr is also searched"]),
    ({"arms": {"a": {"data.augment": {"hflip": True}}, "b": {}}},
     []),  # not searched here: fine (the case below searches it)
    ({"arms": {"a": {"model.dropout": 0.1}, "b": {"trian.momentum": 0.5}}},
     ["compare.arms.a.model.dropout: model.dropout is not a spec field",
      "compare.arms.b.trian.momentum: trian.momentum is not a spec field"]),
    ({"arms": {"a": {"data.train_subset": 100}, "b": {"resources.cpu": 2}}},
     ["compare.arms.a.data.train_subset: an arm can set", "compare.arms.b.resources.cpu"]),
    ({"arms": {"a": {"train.momentum": 1.5}, "b": {"model.freeze": "legs"}}},
     ["compare.arms.a.train.momentum: value 1.5", "compare.arms.b.model.freeze", "legs"]),
    ({"arms": {"only": {}}}, ["compare.arms", "at least two arms to compare (got 1)"]),
    ({"arms": {"a": {}, "b": {}}, "repeats": 0}, ["compare.repeats", "greater than or equal to 1"]),
    ({"arms": {"a b": {}}, "repeats": 0},  # every problem at once
     ["at least two arms to compare (got 1)", "'a b'", "folder name", "compare.repeats"]),
    ({"arms": {"a": {}, "b": {}}, "seeds": 3}, ["compare.seeds", "unknown key", "arms, repeats"]),
    # an arm's name is a folder of its own under trials/ and model/: never '.', '..' or a path
    ({"arms": {".": {}, "..": {}, "b": {}}},
     ["arm '.': an arm's name is a folder name", "arm '..'", "letter or digit first"]),
    ({"arms": {"a/b": {}, "...": {}, ".hidden": {}}}, ["arm 'a/b'", "arm '...'", "arm '.hidden'"]),
])
def test_bad_arms(compare, pieces):
    raw = {"search": {"parameters": {"lr": {"uniform": [1e-4, 1e-3]}}}, "compare": compare}
    if not pieces:
        validate(raw)
        raw["search"]["parameters"]["data.augment.hflip"] = {"choice": [True, False]}
        pieces = ["compare.arms.a.data.augment", "data.augment.hflip is also searched"]
    with pytest.raises(InputError) as e:
        validate(raw)
    for piece in pieces:
        assert piece in str(e.value)


def test_an_arm_is_checked_as_a_whole():
    raw = {"search": {"scheduler": "asha", "grace_period": 3},
           "compare": {"arms": {"short": {"train.epochs": 2}, "long": {"train.epochs": 5}}}}
    with pytest.raises(InputError, match=r"compare.arms.short: search.grace_period: 3 is more"):
        validate(raw)


def test_weights_are_searchable_by_choice_only():
    spec = validate({"search": {"parameters": {"model.weights": {"choice": ["imagenet", "none"]}}}})
    assert [m.weights for m in spec.model_variants()] == ["imagenet", "none"]
    with pytest.raises(InputError, match="only be searched with choice"):
        validate({"search": {"parameters": {"model.weights": {"uniform": [0, 1]}}}})


def run_main(argv, capsys, monkeypatch, tmp_path):
    """tuner.run's main(argv) in this process (call_main): bad input and dry runs, no subprocess."""
    from tuner import run

    return call_main(run.main, argv, capsys, monkeypatch, tmp_path)


def test_the_cli_rejects_a_bad_comparison_before_writing(tmp_path, capsys, monkeypatch):
    proc = run_main([str(QUICK), "--results", str(tmp_path / "results"),
                     "--set", "compare.arms={a: {lr: 0.01}, b: {}}"], capsys, monkeypatch, tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "train.lr is also searched" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "results").exists()


def test_dry_run_lists_the_arms(tmp_path, capsys, monkeypatch):
    proc = run_main([str(QUICK), "--dry-run", "--set", ARMS], capsys, monkeypatch, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "re-run with 3 seeds" in proc.stdout and "head             model.freeze=head" in proc.stdout


# --- weights per arm ---------------------------------------------------------------------------


def test_each_arm_gets_the_weights_it_names(tmp_path):
    path, planted = planted_weights(tmp_path)
    spec = load_spec(QUICK, [f"compare.arms={{tuned: {{model.weights: {path}}}, "
                             "scratch: {model.weights: none}}"])
    weights = resolve_all(spec.model_variants())
    assert set(weights) == {str(path), "none"}
    assert weights[str(path)].label.startswith(f"file {path} sha256:")
    assert weights["none"].label == "none (random init)" and weights["none"].state_dict is None
    for arm, same in (("tuned", True), ("scratch", False)):
        arm_model = spec.arm(arm).model
        torch.manual_seed(1)
        model = build_model(arm_model, weights[arm_model.weights], in_channels=1, num_classes=10)
        assert torch.equal(model.layer1[0].conv1.weight, planted["layer1.0.conv1.weight"]) is same


def test_missing_weights_stop_a_comparison_before_anything_runs(tmp_path, capsys, monkeypatch):
    proc = run_main([str(QUICK), "--results", str(tmp_path / "results"),
                     "--set", "model.weights_fallback=null",
                     "--set", "compare.arms={tuned: {model.weights: imagenet}, scratch: {model.weights: none}}"],
                    capsys, monkeypatch, tmp_path)
    assert proc.returncode == 2 and "model.weights: imagenet: could not load" in proc.stderr
    assert not (tmp_path / "results").exists()


# --- the statistics and the words ---------------------------------------------------------------


def test_repeats_are_the_best_config_over_fresh_seeds():
    spec = load_spec(QUICK, [ARMS, "search.scheduler=asha", "train.seed=7"])
    rep = repeats_spec(spec.arm("head"), {"epochs": 2, "batch_size": 64, "lr": 5e-4}, 3)
    s = rep.search
    assert s.num_samples == 3 and s.scheduler == "fifo" and s.searcher == "random"
    assert [p["train.seed"] for p in s.points_to_evaluate] == [8, 9, 10]
    assert all(p["lr"] == 5e-4 and p["epochs"] == 2 for p in s.points_to_evaluate)
    assert rep.model.freeze == "head"


def test_repeats_never_reuse_a_seed_a_search_trial_trained_with():
    """train.seed searched: the search trials' seeds (the chosen trial's among them) are skipped,
    so no repeat reproduces a search trial."""
    spec = load_spec(QUICK, [ARMS, "search.parameters.seed={choice: [7, 8, 10, 11]}"])
    # train.seed 7 as well (a --set of a searched field is refused, as it would be ignored)
    spec = spec.model_copy(update={"train": spec.train.model_copy(update={"seed": 7})})
    best = {"epochs": 2, "batch_size": 64, "lr": 5e-4, "seed": 8}
    rep = repeats_spec(spec.arm("head"), best, 3, used=[8, 10, 7])
    assert [p["seed"] for p in rep.search.points_to_evaluate] == [9, 11, 12]
    assert rep.search.parameters["seed"].args == [9, 11, 12]
    assert all(rep.with_values(p).train.seed == p["seed"] for p in rep.search.points_to_evaluate)


def test_every_arms_repeats_are_one_experiment_whose_trials_go_back_to_their_arm():
    spec = load_spec(QUICK, ["compare.arms={full: {model.freeze: none}, head: {model.freeze: head},"
                             " few: {model.freeze: head, data.train_per_class: 10}}"])
    best = {"epochs": 2, "batch_size": 64, "lr": 5e-4}
    plans = {arm: repeats_spec(spec.arm(arm), {**best, "lr": lr}, 2)
             for arm, lr in [("full", 5e-4), ("head", 1e-2), ("few", 1e-3)]}
    assert arms.groups(spec, list(plans)) == [["full", "head", "few"]]
    merged = arms.merged_spec(spec, plans)
    points = merged.search.points_to_evaluate
    assert merged.search.num_samples == len(points) == 6 and merged.search.scheduler == "fifo"
    # each point carries its arm's value of every field an arm sets, and runs as that arm would
    values = spec.arm_settings()
    for point, arm in zip(points, ["full", "full", "head", "head", "few", "few"], strict=True):
        assert arms.arm_of(values, point) == arm
        trial, own = merged.with_values(point), spec.arm(arm)
        assert (trial.model.freeze, trial.data.train_per_class) == (
            own.model.freeze, own.data.train_per_class)
        assert trial.train.lr == plans[arm].search.points_to_evaluate[0]["lr"]
    assert [p["train.seed"] for p in points] == [1, 2] * 3


def test_arms_that_set_the_same_values_get_experiments_of_their_own():
    """An A/A comparison: one experiment could not tell the two arms' trials apart."""
    spec = load_spec(QUICK, ["compare.arms={A: {}, B: {}, C: {model.freeze: head}}"])
    assert arms.groups(spec, ["A", "B", "C"]) == [["A", "C"], ["B"]]


def test_t_interval():
    low, high = t_interval(pd.Series([0.80, 0.82, 0.84]))
    assert (low, high) == pytest.approx((0.82 - 4.3027 * 0.02 / 3**0.5, 0.82 + 4.3027 * 0.02 / 3**0.5),
                                        abs=1e-4)
    assert all(math.isnan(v) for v in t_interval(pd.Series([0.8])))


def _trials(scores: dict[str, list[float]]) -> pd.DataFrame:
    rows = []
    for arm, tests in scores.items():
        rows += [{"arm": arm, "phase": "search", "status": "finished", "val_accuracy": 0.5,
                  "trial_epochs": 2, "device_s": 10.0, "weights": "none"}] * 2
        rows += [{"arm": arm, "phase": "repeats", "status": "finished", "val_accuracy": t,
                  "test_accuracy": t, "trial_epochs": 2, "device_s": 10.0, "weights": "none"}
                 for t in tests]
    return pd.DataFrame(rows)


def test_compare_table_and_the_answer_in_words():
    spec = load_spec(QUICK, ["compare.arms={tuned: {}, scratch: {}, other: {}}",
                             "search.num_samples=2", "search.n_initial_points=1"])
    trials = _trials({"scratch": [0.70, 0.71, 0.72], "tuned": [0.80, 0.81, 0.82],
                      "other": [0.79, 0.81, 0.83]})
    table = compare_table(trials, {"tuned": {"lr": 1e-3}}, spec)
    assert {"arm", "best_config", "val_mean", "val_std", "test_mean", "test_std", "test_ci95_low",
            "test_ci95_high", "trials", "trial_epochs", "device_s"} <= set(table.columns)
    tuned = table.set_index("arm").loc["tuned"]
    assert tuned["test_mean"] == pytest.approx(0.81) and tuned["trials"] == 2
    assert tuned["trial_epochs"] == 10 and tuned["device_s"] == 50.0  # 5 trials' sums
    assert json.loads(tuned["best_config"]) == {"lr": 1e-3}
    lines = verdict(trials, table, spec)
    assert lines[0].startswith("tuned and other are within noise: tuned leads by 0.0 +- ")
    assert lines[1].startswith("tuned beats scratch by 10.0 +- ")
    assert lines[1].endswith(" points of test accuracy (Welch t, p < 0.001) over 3 seeds, each "
                             "tuned with 2 trials")


def _seeded(scores: dict[str, list[float]], seeds=(1, 2, 3, 1, 2, 3)) -> pd.DataFrame:
    """The repeats' rows carry train.seed, the arms' in turn from `seeds`."""
    trials = _trials(scores)
    trials.loc[trials["phase"] == "repeats", "train.seed"] = list(seeds)
    return trials


@pytest.mark.parametrize("order", [["A", "B"], ["B", "A"]])
def test_a_two_point_lead_of_three_seeds_is_a_win_whichever_arm_has_it(order):
    """A = [.900 .905 .910], B = [.880 .885 .890]: Welch's p is 0.008, so A beats B; the rule of
    the arms' own intervals not overlapping would have called it noise."""
    spec = load_spec(QUICK, [f"compare.arms={{{order[0]}: {{}}, {order[1]}: {{}}}}"])
    scores = {"A": [0.900, 0.905, 0.910], "B": [0.880, 0.885, 0.890]}
    if order[0] == "B":  # B is the arm that leads
        scores = {"A": scores["B"], "B": scores["A"]}
    win, lose = ("A", "B") if order[0] == "A" else ("B", "A")
    trials = _trials(scores)  # no seeds recorded: Welch
    lines = verdict(trials, compare_table(trials, {}, spec), spec)
    assert lines == [f"{win} beats {lose} by 2.0 +- 1.1 points of test accuracy (Welch t, p = 0.008) "
                     "over 3 seeds, each tuned with 4 trials"]
    # the same seeds in both arms, each seed 2 points apart: paired, and both figures shown
    trials = _seeded(scores)
    lines = verdict(trials, compare_table(trials, {}, spec), spec)
    assert lines == [f"{win} beats {lose} by 2.0 +- 0.0 points of test accuracy (paired t, p < 0.001; "
                     "Welch: +- 1.1, p = 0.008) over 3 seeds, each tuned with 4 trials"]


def test_within_noise_only_when_the_interval_holds_zero():
    spec = load_spec(QUICK, ["compare.arms={A: {}, B: {}}"])
    trials = _seeded({"A": [0.900, 0.880, 0.912], "B": [0.890, 0.889, 0.895]})
    d = difference(_scores(trials, "A"), _scores(trials, "B"))
    assert d["test"] == "paired t" and d["low"] < 0 < d["high"]
    assert d["p"] == pytest.approx(stats.ttest_rel([0.900, 0.880, 0.912], [0.890, 0.889, 0.895]).pvalue)
    [line] = verdict(trials, compare_table(trials, {}, spec), spec)
    assert line.startswith("A and B are within noise: A leads by 0.6 +- ")
    assert line.endswith("+- 3.3 points of test accuracy (paired t, p = 0.52; Welch: +- 3.8, "
                         "p = 0.59) over 3 seeds, each tuned with 4 trials")
    # seeds that differ between the arms: not paired, Welch
    other = _seeded({"A": [0.900, 0.880, 0.912], "B": [0.890, 0.889, 0.895]},
                    seeds=(1, 2, 3, 4, 5, 6))
    assert difference(_scores(other, "A"), _scores(other, "B"))["test"] == "Welch t"


# --- one real comparison, interrupted and resumed ---------------------------------------------


def object_store_bytes() -> int:
    """Bytes in use in the object store of the Ray session this process is connected to: its
    object_store_memory resource less what is available, once two readings a second apart agree
    (the raylet reports its usage every few hundred ms)."""
    import time

    import ray

    def used():
        return int(ray.cluster_resources()["object_store_memory"]
                   - ray.available_resources().get("object_store_memory", 0))

    last = used()
    for _ in range(30):
        time.sleep(1)
        now, last = last, used()
        if now == last:
            break
    return last


@needs_fashion
@pytest.mark.slow  # 71 s alone on 2 idle cores (six Tuners in one driver)
@pytest.mark.cluster
def test_a_comparison_keeps_one_copy_of_the_data_and_weights_in_the_object_store(tmp_path):
    """Three arms, six steps (six Tuners) in one driver: the dataset and the weights are put in
    Ray's object store once and passed by reference, so what it holds does not grow per step."""
    import pickle

    import ray

    from tuner import compare, run, sweep

    path, _ = planted_weights(tmp_path)
    spec = load_spec(QUICK, [
        "data.train_subset=300", "data.test_subset=100",
        "search.num_samples=1", "search.n_initial_points=1", "train.epochs=1", "compare.repeats=1",
        "search.parameters={lr: {choice: [1.0e-3]}}",
        f"compare.arms={{planted: {{model.weights: {path}}}, scratch: {{model.weights: none}}, "
        f"head: {{model.weights: {path}, model.freeze: head}}}}"])
    weights, data = run.check_inputs(spec)
    one_copy = sum(len(pickle.dumps(x)) for x in (data.without_test(), *weights.values()))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "status.json").write_text("{}")
    from ray._private.authentication_test_utils import reset_auth_token_state

    # Ray caches its auth token per process: an earlier test's cluster (its own token) must not
    # be what this new local cluster is asked for
    reset_auth_token_state()
    # "local": a Ray of its own, never one another test left running on this machine
    ray_tmp = short_tmpdir()
    # Ray and Tune install their own SIGINT and SIGTERM handlers in this process: put pytest's
    # back afterwards, or Ctrl-C would no longer stop the test run
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False,
             log_to_driver=False, _temp_dir=str(ray_tmp))
    try:
        before = object_store_bytes()
        code = compare.run_comparison(spec, data, weights, run_dir,
                                      sweep.experiment_path(spec, run_dir), "resume")
        after = object_store_bytes()
    finally:
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)  # Ray's session folder and spill
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    print(f"object store: {before} bytes before, {after} after 6 steps; one copy of the data "
          f"and weights pickles to {one_copy} bytes")
    assert code == 0
    trials = pd.read_csv(run_dir / "trials.csv")
    assert len(trials) == 6 and set(trials["status"]) == {"finished"}
    assert one_copy > 40e6  # the planted resnet18 weights: copies per step would show
    assert 0.9 * one_copy < after - before < 1.3 * one_copy


@needs_fashion
@pytest.mark.slow  # the comparison fixture: over a minute (two drivers, eight trials)
@pytest.mark.cluster
def test_a_comparison_runs_is_interrupted_and_resumes(comparison):
    """runs.py's comparison: two arms (planted weights / none), killed once arm planted's search
    was done, then resumed."""
    run, path, first, resumed = (comparison.run, comparison.weights, comparison.first,
                                 comparison.resumed)
    assert comparison.state_after_kill == "running"
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # the finished step was read back, not trained again
    assert sorted(r["trial_dir"] for r in reports(run / "trials" / "planted" / "search")) == first
    trials = pd.read_csv(run / "trials.csv")
    # per arm: 2 search trials (the first: the spec's own lr, 1e-3), the best confirmed with seed
    # 1 (and the other with seed 1 too when its one score beats that mean: a challenger), 2
    # repeats of the chosen config, and 2 of the own settings unless they are the choice
    size = trials.groupby(["arm", "phase"]).size()
    assert (size.loc[:, "search"] == 2).all()
    challenged = {}
    for arm, rows in trials.groupby("arm"):
        search = rows[rows["phase"] == "search"].sort_values("val_accuracy", ascending=False,
                                                             kind="stable")
        confirming = rows[rows["phase"] == "confirm"]
        top = confirming[confirming["lr"] == search["lr"].iloc[0]]["val_accuracy"]
        challenged[arm] = search["val_accuracy"].iloc[1] > (search["val_accuracy"].iloc[0]
                                                            + top.iloc[0]) / 2
        assert len(confirming) == 1 + challenged[arm]
    print(f"challenged: {challenged}")
    assert set(trials["status"]) == {"finished"}
    for arm, rows in trials[trials["phase"] == "search"].groupby("arm"):
        assert (rows["lr"] == 1e-3).sum() == 1
    by_arm = trials.groupby("arm")["weights"].unique()
    assert len(by_arm["planted"]) == 1
    assert by_arm["planted"][0].startswith(f"file {path} sha256:")
    assert list(by_arm["scratch"]) == ["none (random init)"]
    assert (trials.loc[trials["phase"] == "confirm", "train.seed"] == 1).all()
    every = trials[trials["phase"] == "repeats"]
    repeats = every[every["role"] == "chosen"]
    # fresh seeds: the search used 0, the confirming runs 1
    assert sorted(repeats["train.seed"]) == [2, 2, 3, 3]
    assert every["test_accuracy"].between(0, 1).all()
    for arm, rows in repeats.groupby("arm"):  # each arm's repeats re-run its chosen config: the
        mine = trials[(trials["arm"] == arm) & trials["phase"].isin(["search", "confirm"])]
        means = mine.groupby("lr")["val_accuracy"].mean()  # best mean over both seeds
        assert set(rows["lr"]) == {means.idxmax()}
        own = every[(every["arm"] == arm) & (every["role"] == "default")]
        assert len(own) == (0 if means.idxmax() == pytest.approx(1e-3) else 2)
        assert set(own["train.seed"]) <= {2, 3} and (own["lr"] == 1e-3).all()

    table = pd.read_csv(run / "compare.csv").set_index("arm")
    assert list(table.index) == ["planted", "scratch"]
    assert (table["repeats"] == 2).all() and (table["trials"] == 2).all()
    assert (table["trial_epochs"] == trials.groupby("arm")["trial_epochs"].sum()).all()
    assert (table["device_s"] > 0).all() and table["gain_vs_default"].notna().all()
    assert table["confirm_regret"].notna().all()
    assert (table["test_ci95_low"] <= table["test_mean"]).all()
    assert (table["test_mean"] <= table["test_ci95_high"]).all()
    assert (run / "compare.png").read_bytes().startswith(b"\x89PNG")
    for arm, rows in repeats.groupby("arm"):  # each arm's model: its repeat best on validation
        card = json.loads((run / "model" / arm / "model.json").read_text())
        chosen = rows.loc[rows["val_accuracy"].idxmax()]
        assert card["arm"] == arm and card["test_accuracy"] == pytest.approx(chosen["test_accuracy"])
        assert (run / "model" / arm / "model.pt").stat().st_size > 40e6
        assert table.loc[arm, "model"] == f"model/{arm}"
    epochs = pd.read_csv(run / "epochs.csv")
    assert {"arm", "phase", "weights"} <= set(epochs.columns) and len(epochs) == len(trials)
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished"
    # two searches, then every arm's confirming runs as one experiment and its repeats as one
    assert status["compare"]["done"] == ["search:planted", "search:scratch", "confirm",
                                         *(["confirm-more"] if any(challenged.values()) else []),
                                         "repeats"]
    assert status["trials"]["finished"] == len(trials) == status["cost"]["trial_epochs"]
    assert "Comparison" in (run / "report.html").read_text()  # the report shows compare.csv
    last = resumed.stdout.strip().splitlines()[-1]
    assert " points of test accuracy (paired t, " in last  # both arms' repeats use seeds 2 and 3
    assert last.endswith(" over 2 seeds, each tuned with 2 trials")
    assert last.startswith(("planted ", "scratch "))


@needs_fashion
@pytest.mark.cluster
def test_a_plain_sweep_searches_the_weights(quick_sweep):
    """runs.py's quick_sweep searches model.weights (imagenet, which falls back to random init
    here, and a planted file) without arms: each trial gets the weights its point names."""
    path = quick_sweep.weights
    assert quick_sweep.proc.returncode == 0, quick_sweep.proc.stderr[-3000:]
    trials = pd.read_csv(quick_sweep.run / "trials.csv")
    by_setting = trials.groupby("model.weights")["weights"].unique()
    assert set(by_setting.index) == {str(path), "imagenet"}
    assert len(by_setting[str(path)]) == 1 and by_setting[str(path)][0].startswith(f"file {path} sha256:")
    assert len(by_setting["imagenet"]) == 1 and by_setting["imagenet"][0].startswith("none (fallback")
    best = json.loads((quick_sweep.run / "best.json").read_text())
    assert best["weights"] == by_setting[best["config"]["model.weights"]][0]
