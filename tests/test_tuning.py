"""Tuning that pays: the spec's own settings as the first trial and what tuning gained over them
(plain sweeps and comparisons), each arm's own searcher seed. Without Ray: the searcher is asked
in process as Ray Tune asks it, and the tables are made from known scores."""

import math

import pandas as pd
import pytest
from helpers import ROOT

from tuner import results, sweep
from tuner.compare import compare_table, repeats_spec, with_roles
from tuner.errors import InputError
from tuner.space import param_space
from tuner.spec import same_point
from tuner.specfile import load_spec

QUICK = ROOT / "sweeps" / "fashion-quick.yaml"  # epochs {1, 2}, batch {32, 64, 128}, lr [1e-4, 1e-3]
OWN = {"epochs": 1, "batch_size": 64, "lr": 1e-3}  # its train section


def first_suggestion(spec) -> dict:
    searcher = sweep.make_searcher(spec)
    searcher.set_search_properties(spec.search.metric, spec.search.mode, param_space(spec.search))
    return searcher.suggest("t0")


def test_the_first_trial_runs_the_specs_own_settings():
    spec = load_spec(QUICK)
    assert spec.default_point() == (OWN, "")
    got = first_suggestion(spec)  # TPE's first
    assert same_point({k: got[k] for k in OWN}, OWN)
    random = load_spec(QUICK, ["search.searcher=random"])
    assert sweep.first_points(random) == [OWN]  # the random searcher's points_to_evaluate


def test_a_set_of_a_searched_field_inside_the_space_is_the_first_trials_value():
    spec = load_spec(QUICK, ["train.lr=5e-4", "train.epochs=2"])
    assert spec.default_point()[0] == {"epochs": 2, "batch_size": 64, "lr": 5e-4}
    got = first_suggestion(spec)
    assert got["lr"] == pytest.approx(5e-4) and got["epochs"] == 2


@pytest.mark.parametrize(("overrides", "why"), [
    (["search.default_trial=false"], "search.default_trial is off"),
    (["search.parameters.epochs={choice: [2]}"], "epochs=1 lies outside its search space"),
    (["search.searcher=grid", "search.num_samples=1",
      "search.parameters={batch_size: {choice: [32, 64]}}"],
     "a grid tries its own combinations"),
    (["search.parameters={}"], "nothing is searched"),
])
def test_no_default_trial_says_why(overrides, why):
    spec = load_spec(QUICK, overrides)
    point, reason = spec.default_point()
    assert point is None and why in reason
    if spec.search.parameters and spec.search.searcher != "grid":
        assert not any(same_point(OWN, p) for p in sweep.first_points(spec))


def test_a_set_of_a_searched_field_outside_the_space_is_still_refused():
    with pytest.raises(InputError, match="lies outside its search space"):
        load_spec(QUICK, ["train.epochs=3"])


def test_the_default_point_is_not_tried_again_when_given_or_already_seen():
    spec = load_spec(QUICK, ["search.points_to_evaluate=[{epochs: 1, batch_size: 64, lr: 0.001},"
                             " {epochs: 2, batch_size: 32, lr: 0.0005}]"])
    assert len(sweep.first_points(spec)) == 2  # given first already: not twice
    seen = [type("Point", (), {"config": {"epochs": 1, "batch_size": 64, "lr": 0.0010000000000000002}})]
    plain = load_spec(QUICK)
    assert sweep.first_points(plain, seen) == []  # a sweep given more trials ran it already


def _table(rows):
    base = {"status": "finished", "val_loss": 0.5, "epochs_completed": 1}
    return pd.DataFrame([{**base, **r} for r in rows])


def test_best_json_says_what_tuning_gained_over_the_specs_own_settings():
    spec = load_spec(QUICK)
    trials = _table([{"trial_id": "a", **OWN, "val_accuracy": 0.80},
                     {"trial_id": "b", "epochs": 2, "batch_size": 32, "lr": 5e-4, "val_accuracy": 0.83},
                     {"trial_id": "c", "epochs": 2, "batch_size": 64, "lr": 1e-3, "val_accuracy": 0.70}])
    best = results.best_trial(trials, spec)
    got = results.versus_default(trials, spec, best)
    assert got["default_trial"] == {"trial_id": "a", "config": OWN, "val_accuracy": 0.80,
                                    "basis": "first seed"}
    assert got["gain_vs_default"] == pytest.approx(0.03)
    line = results.gain_line({**got, "trial_id": "b", "val_accuracy": 0.83}, spec)
    assert line.startswith("tuning gained +3.0 points of val_accuracy on validation")
    # the default is the choice: nothing gained, and the words say so
    trials.loc[0, "val_accuracy"] = 0.9
    got = results.versus_default(trials, spec, results.best_trial(trials, spec))
    assert got["gain_vs_default"] == 0
    assert "gained nothing" in results.gain_line({**got, "trial_id": "a", "val_accuracy": 0.9}, spec)
    # the default trial failed: no gain, and why
    trials.loc[0, "status"] = "error"
    got = results.versus_default(trials, spec, results.best_trial(trials, spec))
    assert got["gain_vs_default"] is None and "did not finish" in got["default_trial"]["reason"]


ARMS = ["compare.arms={scratch: {model.weights: none}, tuned: {train.weight_decay: 1.0e-4}}",
        "compare.repeats=3"]


def test_arms_draw_their_own_random_points():
    spec = load_spec(QUICK, [*ARMS, "search.default_trial=false"])
    a, b = (first_suggestion(spec.arm(arm)) for arm in spec.compare.arms)
    assert spec.arm("tuned").search.seed == spec.search.seed + 1
    assert a != b


def test_repeats_train_the_arms_own_settings_with_the_same_seeds():
    spec = load_spec(QUICK, ARMS)
    arm = spec.arm("tuned")
    best = {"epochs": 2, "batch_size": 32, "lr": 5e-4}
    rep = repeats_spec(arm, best, 3, default=arm.default_point()[0])
    points = rep.search.points_to_evaluate
    assert rep.search.num_samples == 6 and not rep.search.default_trial
    assert [p["train.seed"] for p in points] == [1, 2, 3, 1, 2, 3]
    assert [p["lr"] for p in points] == [5e-4] * 3 + [1e-3] * 3
    # the own settings are the chosen config: 3 runs only
    same = repeats_spec(arm, OWN, 3, default=OWN)
    assert same.search.num_samples == 3


def _repeats(arm, chosen, own):
    rows = [{"arm": arm, "phase": "search", "status": "finished", "val_accuracy": 0.5,
             "trial_epochs": 2, "device_s": 10.0, "weights": "none", **OWN}]
    for config, scores in ((dict(OWN, lr=5e-4), chosen), (OWN, own)):
        rows += [{"arm": arm, "phase": "repeats", "status": "finished", "val_accuracy": t,
                  "test_accuracy": t, "train.seed": seed, "trial_epochs": 2, "device_s": 10.0,
                  "weights": "none", **config} for seed, t in zip((1, 2, 3), scores)]
    table = pd.DataFrame(rows)
    search, repeats = table[table["phase"] == "search"], table[table["phase"] == "repeats"]
    repeats = with_roles(repeats, dict(OWN, lr=5e-4), OWN)
    return pd.concat([search, repeats], ignore_index=True)


def test_compare_csv_gives_the_gain_over_the_own_settings_paired_by_seed():
    spec = load_spec(QUICK, ["compare.arms={A: {}, B: {}}"])
    trials = pd.concat([_repeats("A", [0.90, 0.91, 0.92], [0.88, 0.885, 0.90]),
                        _repeats("B", [0.85, 0.86, 0.87], [0.85, 0.86, 0.87])], ignore_index=True)
    assert list(trials.loc[trials["phase"] == "repeats", "role"][:6]) == ["chosen"] * 3 + ["default"] * 3
    table = compare_table(trials, {}, spec).set_index("arm")
    a = table.loc["A"]
    assert a["test_mean"] == pytest.approx(0.91) and a["repeats"] == 3
    assert a["default_test_mean"] == pytest.approx((0.88 + 0.885 + 0.90) / 3)
    assert a["gain_vs_default"] == pytest.approx(0.91 - a["default_test_mean"])
    assert a["gain_ci95_low"] < a["gain_vs_default"] < a["gain_ci95_high"]
    assert a["gain_ci95_low"] > 0  # paired by seed: the seeds' spread cancels
    assert table.loc["B", "gain_vs_default"] == pytest.approx(0)
    assert a["default_trial_epochs"] == 6 and a["trial_epochs"] == 14
    lines = results.gain_lines(table.reset_index())
    assert lines[0].startswith("A: tuning gained +2.2 [+1.4, +2.9] points") and "over the arm's own settings" in lines[0]
    # an older comparison, with no runs of the own settings: nothing is claimed
    old = trials[trials["role"].ne("default")].drop(columns="role")
    assert math.isnan(compare_table(old, {}, spec).set_index("arm").loc["A", "gain_vs_default"])


# --- lp-ft and layer-wise lr decay ------------------------------------------------------------

import torch  # noqa: E402

from tuner.model import (STAGE_MODULES, STAGES, Weights, apply_freeze, build_model,  # noqa: E402
                         frozen_stages, make_optimizer, param_groups, set_train_mode)
from tuner.spec import Model, Train  # noqa: E402
from tuner.trainable import train_epoch  # noqa: E402


def test_lp_ft_probes_linearly_then_trains_everything():
    assert frozen_stages("lp-ft", 0) == STAGES and frozen_stages("lp-ft", 1) == ()
    assert frozen_stages("lp-ft", 2, lp_epochs=3) == STAGES and frozen_stages("lp-ft", 3, 3) == ()
    assert Model(freeze="lp-ft", lp_epochs=2).lp_epochs == 2
    with pytest.raises(ValueError, match="lp-ft"):
        Model(freeze="lp_ft")


def test_lp_ft_trains_only_fc_in_its_probe_epochs_then_the_body_too():
    torch.manual_seed(0)
    spec = Model(freeze="lp-ft", lp_epochs=1, weights="none")
    model = build_model(spec, Weights(None, "none"), in_channels=1, num_classes=3)
    optimizer = make_optimizer(model, spec, Train(lr=1e-2))
    x, y = torch.randn(16, 1, 28, 28), torch.arange(16) % 3
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for epoch in range(2):
        frozen = apply_freeze(model, spec, epoch)
        set_train_mode(model, frozen)  # as the trainable: frozen BatchNorm keeps its statistics
        train_epoch(model, optimizer, [(x, y)], "fp32", torch.device("cpu"))
        after = model.state_dict()
        moved = {k for k, v in after.items() if v.is_floating_point() and not torch.equal(v, before[k])}
        if epoch == 0:  # the probe: fc learns, the body's weights stay (BatchNorm statistics too)
            assert frozen == STAGES and moved == {"fc.weight", "fc.bias"}
        else:
            assert frozen == () and "layer1.0.conv1.weight" in moved and "conv1.weight" in moved
        before = {k: v.clone() for k, v in after.items()}


def test_layer_decay_gives_each_earlier_stage_a_smaller_lr():
    model = build_model(Model(weights="none"), Weights(None, "none"), 1, 10)
    train = Train(lr=1e-3)
    plain = param_groups(model, Model(weights="none"), train)
    assert {g["name"] for g in plain} == {"body", "body_no_decay", "head", "head_no_decay"}
    spec = Model(weights="none", layer_decay=0.5, head_lr_multiplier=10)
    groups = param_groups(model, spec, train)
    lrs = {g["name"]: g["lr"] for g in groups if not g["name"].endswith("_no_decay")}
    assert lrs == pytest.approx({"layer4": 1e-3, "layer3": 5e-4, "layer2": 2.5e-4,
                                 "layer1": 1.25e-4, "conv1": 6.25e-5, "head": 1e-2})
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))  # each parameter once
    stem = {id(p) for name in STAGE_MODULES["conv1"] for p in getattr(model, name).parameters()}
    assert all(g["lr"] == pytest.approx(6.25e-5) for g in groups if stem & {id(p) for p in g["params"]})


def test_lp_ft_and_layer_decay_are_searchable():
    spec = load_spec(QUICK, ["search.parameters.model.freeze={choice: [none, lp-ft]}",
                             "search.parameters.model.layer_decay={uniform: [0.5, 1.0]}"])
    trial = spec.with_values({**OWN, "model.freeze": "lp-ft", "model.layer_decay": 0.7})
    assert trial.model.freeze == "lp-ft" and trial.model.layer_decay == 0.7
    with pytest.raises(InputError, match="layer_decay"):
        load_spec(QUICK, ["search.parameters.model.layer_decay={uniform: [0.5, 1.5]}"])


# --- robust selection: the top configs confirmed on another seed ---------------------------------

from tuner import confirm  # noqa: E402


def test_confirm_top_k_defaults_by_budget_and_can_be_set():
    assert confirm.top_k(load_spec(QUICK)) == 0  # 4 trials: a re-run is too large a share
    assert confirm.top_k(load_spec(QUICK, ["search.num_samples=8"])) == 2
    assert confirm.top_k(load_spec(QUICK, ["search.num_samples=20"])) == 3
    assert confirm.top_k(load_spec(QUICK, ["search.confirm_top_k=2"])) == 2


def test_the_top_configs_are_retrained_with_one_fresh_seed_and_chosen_on_their_mean():
    spec = load_spec(QUICK, ["search.confirm_top_k=2"])
    trials = _table([
        {"trial_id": "a", **OWN, "val_accuracy": 0.80},
        {"trial_id": "b", "epochs": 2, "batch_size": 32, "lr": 5e-4, "val_accuracy": 0.86},
        {"trial_id": "c", "epochs": 2, "batch_size": 32, "lr": 5e-4, "val_accuracy": 0.85},  # b's config
        {"trial_id": "d", "epochs": 2, "batch_size": 64, "lr": 2e-4, "val_accuracy": 0.84}])
    top = confirm.candidates(trials, spec, 2)
    assert list(top["trial_id"]) == ["b", "d"]  # distinct configs, best first
    configs = [confirm.point_of(r, list(spec.search.parameters)) for _, r in top.iterrows()]
    again = confirm.confirm_spec(spec, configs, used={0, 1})
    assert again.search.num_samples == 2 and again.search.scheduler == "fifo"
    assert [p["train.seed"] for p in again.search.points_to_evaluate] == [2, 2]  # one fresh seed
    assert [p["lr"] for p in again.search.points_to_evaluate] == [5e-4, 2e-4]
    # b was lucky: 0.86 then 0.78; d holds at 0.84 and 0.85
    confirmed = _table([{"trial_id": "x", "epochs": 2, "batch_size": 32, "lr": 5e-4,
                         "train.seed": 2, "val_accuracy": 0.78},
                        {"trial_id": "y", "epochs": 2, "batch_size": 64, "lr": 2e-4,
                         "train.seed": 2, "val_accuracy": 0.85}])
    chosen, selection = confirm.choose(spec, top, confirmed)
    assert chosen == "d" and selection["first_choice"] == "b"
    assert selection["candidates"][0]["scores"] == [0.86, 0.78]
    assert selection["regret"] == pytest.approx(0.84 - 0.845)
    line = confirm.describe(selection)
    assert "chose trial d" in line and "one seed would have chosen trial b" in line
    # the own settings among the candidates: the gain over them is on the means, as the choice
    own = _table([{"trial_id": "b", **OWN, "val_accuracy": 0.86},
                  {"trial_id": "d", "epochs": 2, "batch_size": 64, "lr": 2e-4, "val_accuracy": 0.84}])
    gain = results.versus_default(own, spec, own.iloc[1], selection)
    assert gain["gain_vs_default"] == pytest.approx(0.845 - 0.82)
    assert gain["default_trial"]["basis"] == "mean over the confirming seeds"
    # a confirming run that failed: the candidate keeps its one score
    confirmed.loc[1, "status"] = "error"
    chosen, selection = confirm.choose(spec, top, confirmed)
    assert chosen == "d" and selection["candidates"][1]["scores"] == [0.84]


@pytest.mark.parametrize(("second_seed", "limit", "challenged"), [
    ((0.70, 0.71), None, ["c", "d"]),  # both fell below c's and d's one score: both challenge
    ((0.70, 0.71), 1, ["c"]),          # search.confirm_challengers caps the second round
    ((0.70, 0.835), None, ["c"]),       # the choice (b2, mean 0.8375) still trails c's 0.84
    ((0.86, 0.85), None, []),           # the first round's choice holds against every score
    ((0.70, 0.71), 0, []),              # 0: no second round
])
def test_challengers_whose_one_score_beats_the_choices_mean_get_the_second_seed_too(
        second_seed, limit, challenged):
    sets = ["search.confirm_top_k=2"] + ([] if limit is None else
                                         [f"search.confirm_challengers={limit}"])
    spec = load_spec(QUICK, sets)
    trials = _table([
        {"trial_id": "a", "epochs": 2, "batch_size": 32, "lr": 5e-4, "val_accuracy": 0.88},
        {"trial_id": "b", "epochs": 2, "batch_size": 64, "lr": 5e-4, "val_accuracy": 0.84},
        {"trial_id": "b2", "epochs": 2, "batch_size": 64, "lr": 5e-4, "val_accuracy": 0.84},
        {"trial_id": "c", "epochs": 2, "batch_size": 32, "lr": 2e-4, "val_accuracy": 0.84},
        {"trial_id": "d", "epochs": 1, "batch_size": 32, "lr": 2e-4, "val_accuracy": 0.83},
        {"trial_id": "e", "epochs": 1, "batch_size": 64, "lr": 1e-4, "val_accuracy": 0.60}])
    top = confirm.candidates(trials, spec, 2)
    assert list(top["trial_id"]) == ["a", "b"]
    confirmed = _table([
        {"trial_id": "x", "epochs": 2, "batch_size": 32, "lr": 5e-4, "train.seed": 1,
         "val_accuracy": second_seed[0]},
        {"trial_id": "y", "epochs": 2, "batch_size": 64, "lr": 5e-4, "train.seed": 1,
         "val_accuracy": second_seed[1]}])
    more = confirm.challengers(trials, spec, top, confirmed)
    assert list(more["trial_id"]) == challenged
    if challenged == ["c", "d"]:  # c holds on its second seed and is chosen over all four
        again = _table([{"trial_id": "z", "epochs": 2, "batch_size": 32, "lr": 2e-4,
                         "train.seed": 1, "val_accuracy": 0.83},
                        {"trial_id": "w", "epochs": 1, "batch_size": 32, "lr": 2e-4,
                         "train.seed": 1, "val_accuracy": 0.70}])
        chosen, selection = confirm.choose(spec, pd.concat([top, more]),
                                           pd.concat([confirmed, again]))
        assert chosen == "c" and selection["first_choice"] == "a"
        assert [r["trial_id"] for r in selection["candidates"]] == ["a", "b", "c", "d"]


def test_prefer_chooses_within_one_standard_error_of_the_best_mean():
    """search.prefer: {lr: min}. On 800 validation images, 92% has a binomial standard error of
    0.96 points: a mean of 0.915 is as good as 0.921 for all validation can tell, and the smaller
    lr is taken; a mean of 0.905 is not, and stays behind."""
    spec = load_spec(QUICK, ["search.confirm_top_k=2", "search.prefer={lr: min}"])
    trials = _table([
        {"trial_id": "hot", "epochs": 2, "batch_size": 32, "lr": 1e-3, "val_accuracy": 0.921},
        {"trial_id": "mid", "epochs": 2, "batch_size": 32, "lr": 5e-4, "val_accuracy": 0.918},
        {"trial_id": "low", "epochs": 2, "batch_size": 32, "lr": 1e-4, "val_accuracy": 0.914},
        {"trial_id": "bad", "epochs": 2, "batch_size": 32, "lr": 2e-4, "val_accuracy": 0.80}])
    top = confirm.candidates(trials, spec, 2)
    confirmed = _table([
        {"trial_id": "x", "epochs": 2, "batch_size": 32, "lr": 1e-3, "train.seed": 1,
         "val_accuracy": 0.921},
        {"trial_id": "y", "epochs": 2, "batch_size": 32, "lr": 5e-4, "train.seed": 1,
         "val_accuracy": 0.912}])
    # the runner-up's one score (0.914) lies within the error of the best mean: it challenges
    more = confirm.challengers(trials, spec, top, confirmed, 800)
    assert list(more["trial_id"]) == ["low"]
    chosen, selection = confirm.choose(spec, top, confirmed, 800)
    assert selection["standard_error"] == pytest.approx(math.sqrt(0.921 * 0.079 / 800))
    assert chosen == "mid" and selection["best_mean_choice"] == "hot"  # 0.915 within 0.0095
    assert selection["within_error"] == ["hot", "mid"]
    assert spec.with_values(confirm.point_of(top.iloc[0], list(spec.search.parameters))).train.lr \
        == 1e-3  # a trial's own spec searches nothing, so it prefers nothing
    assert "preferred (lr min) within one standard error" in confirm.describe(selection)
    for second, expected in [(0.916, "low"), (0.896, "mid")]:  # the challenger: 0.915 / 0.905
        again = _table([{"trial_id": "z", "epochs": 2, "batch_size": 32, "lr": 1e-4,
                         "train.seed": 1, "val_accuracy": second}])
        chosen, _ = confirm.choose(spec, pd.concat([top, more]), pd.concat([confirmed, again]),
                                   800)
        assert chosen == expected
    # without search.prefer: the best mean, and challengers must beat it outright
    plain = load_spec(QUICK, ["search.confirm_top_k=2"])
    assert confirm.choose(plain, top, confirmed, 800)[0] == "hot"
    assert confirm.challengers(trials, plain, top, confirmed, 800).empty
    with pytest.raises(InputError, match="prefer.momentum: not a searched parameter"):
        load_spec(QUICK, ["search.prefer={momentum: min}"])
    with pytest.raises(InputError, match="needs an accuracy"):
        load_spec(QUICK, ["search.prefer={lr: min}", "search.metric=val_loss"])


def test_the_mode_follows_the_metric():
    assert load_spec(QUICK, ["search.metric=val_loss"]).search.mode == "min"
    assert load_spec(QUICK).search.mode == "max"
    with pytest.raises(InputError, match="mode must be min for val_loss"):
        load_spec(QUICK, ["search.metric=val_loss", "search.mode=max"])


def test_a_trial_shorter_than_ashas_grace_period_is_a_valid_trial():
    """grace_period 2 with epochs {1, 2}: the 1-epoch trial ends before ASHA's first rung."""
    spec = load_spec(QUICK, ["search.scheduler=asha", "search.grace_period=2"])
    trial = spec.with_values({"epochs": 1, "batch_size": 64, "lr": 1e-3})
    assert trial.train.epochs == 1


def test_summaries_of_a_choice_of_mixed_kinds():
    """model.small_input_stem searched over [false, stride1]: one table, its values as text."""
    spec = load_spec(QUICK, ["search.parameters.model.small_input_stem={choice: [false, stride1]}"])
    trials = _table([{"trial_id": "a", **OWN, "model.small_input_stem": False, "val_accuracy": 0.8},
                     {"trial_id": "b", **OWN, "model.small_input_stem": "stride1",
                      "val_accuracy": 0.9}])
    table = results.summary_tables(trials, spec)["model.small_input_stem"]
    assert sorted(table["model.small_input_stem"]) == ["False", "stride1"]
