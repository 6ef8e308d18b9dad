"""The recipe's spec fields (issue 11): defaults, validation, and that each can be searched."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tuner.errors import InputError  # noqa: E402
from tuner.spec import Augment, Model, Spec, Train  # noqa: E402
from tuner.specfile import load_spec, validate

RECIPE_FIELDS = {
    "train.schedule": "{choice: [constant, cosine, onecycle]}",
    "train.warmup_epochs": "{uniform: [0.0, 1.5]}",
    "train.min_lr_fraction": "{uniform: [0.0, 0.1]}",
    "train.label_smoothing": "{choice: [0.0, 0.1, 0.2]}",
    "train.optimizer": "{choice: [adam, adamw, sgd]}",
    "train.nesterov": "{choice: [false, true]}",
    "train.decay_norm_and_bias": "{choice: [false, true]}",
    "data.augment.erase_p": "{uniform: [0.0, 0.5]}",
    "data.augment.erase_scale": "{choice: [[0.02, 0.2], [0.02, 0.33]]}",
    "model.small_input_stem": "{choice: [false, stride1, stride1_pool]}",
}


def test_defaults_are_the_old_behaviour():
    t, a, m = Train(), Augment(), Model()
    assert (t.schedule, t.warmup_epochs, t.label_smoothing, t.optimizer) == ("constant", 0, 0, "adam")
    assert a.erase_p == 0 and m.small_input_stem is False


@pytest.mark.parametrize("raw, pieces", [
    ({"train": {"schedule": "step"}}, ["train.schedule", "constant", "cosine", "onecycle"]),
    ({"train": {"warmup_epochs": -1}}, ["train.warmup_epochs"]),
    ({"train": {"label_smoothing": 1.0}}, ["train.label_smoothing"]),
    ({"train": {"min_lr_fraction": 1.5}}, ["train.min_lr_fraction"]),
    ({"train": {"optimizer": "lamb"}}, ["train.optimizer", "adamw"]),
    ({"train": {"optimizer": "sgd", "momentum": 0, "nesterov": True}}, ["train", "nesterov", "momentum"]),
    ({"data": {"augment": {"erase_p": 1.5}}}, ["data.augment.erase_p"]),
    ({"data": {"augment": {"erase_scale": [0.5, 0.1]}}}, ["erase_scale", "low <= high"]),
    ({"data": {"augment": {"erase_ratio": [0, 1]}}}, ["data.augment.erase_ratio"]),
    ({"model": {"small_input_stem": "stride2"}}, ["model.small_input_stem", "stride1_pool"]),
])
def test_nonsense_is_one_clear_error(raw, pieces):
    with pytest.raises(InputError) as e:
        validate(raw)
    msg = str(e.value)
    assert "\n" not in msg and all(p in msg for p in pieces), msg


def test_old_spec_true_reads_as_stride1_and_nesterov_is_sgd_only():
    assert validate({"model": {"small_input_stem": True}}).model.small_input_stem == "stride1"
    # like momentum, nesterov is ignored by adam/adamw, so that the optimizer can be searched
    assert validate({"train": {"optimizer": "adamw", "nesterov": True}}).train.nesterov


def test_searched_values_are_checked_against_the_fields_rules(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("train: {optimizer: sgd, momentum: 0.9, nesterov: true}\n"
                    "search: {parameters: {momentum: {uniform: [0.0, 0.9]},"
                    " label_smoothing: {uniform: [0.0, 1.0]}}}\n")
    with pytest.raises(InputError) as e:
        load_spec(spec)
    msg = str(e.value)
    assert "search.parameters.momentum: value 0.0: nesterov needs momentum > 0" in msg
    assert "search.parameters.label_smoothing: value 1.0" in msg


def test_a_trial_gets_the_searched_recipe_values():
    spec = Spec.model_validate({"search": {"parameters": {
        "schedule": {"choice": ["cosine"]}, "data.augment.erase_p": {"uniform": [0, 0.5]},
        "model.small_input_stem": {"choice": [False, "stride1_pool"]}}}})
    trial = spec.with_values({"schedule": "onecycle", "data.augment.erase_p": 0.3,
                              "model.small_input_stem": "stride1_pool"})
    assert trial.train.schedule == "onecycle" and trial.data.augment.erase_p == 0.3
    assert trial.model.small_input_stem == "stride1_pool"


def test_dry_run_searches_every_recipe_field(tmp_path, capsys, monkeypatch):
    """The CLI's main, in process: a spec searching all the new fields at once is valid and shows
    its space."""
    from helpers import call_main

    from tuner import run

    lines = ["model: {weights: none}", "train: {optimizer: sgd, momentum: 0.9}", "search:",
             "  parameters:"]
    lines += [f"    {key}: {dist}" for key, dist in RECIPE_FIELDS.items()]
    path = tmp_path / "recipe.yaml"
    path.write_text("\n".join(lines) + "\n")
    proc = call_main(run.main, [str(path), "--dry-run", "--results", str(tmp_path / "results")],
                     capsys, monkeypatch, tmp_path)
    assert proc.returncode == 0, proc.stderr
    space = proc.stdout.split("search space")[1]
    for key in RECIPE_FIELDS:
        assert f"\n  {key} " in space, key
    assert "choice of False, stride1, stride1_pool" in space
    assert not (tmp_path / "results").exists()  # a dry run writes nothing


def test_shipped_recipe_sweeps_load():
    best = load_spec(ROOT / "sweeps" / "fashion-best.yaml")
    assert best.search.num_samples <= 10 and max(best.search_for("train.epochs").extremes()) <= 9
    assert best.model.small_input_stem and best.train.label_smoothing > 0
    assert best.data.augment.erase_p > 0 and best.model.weights == "imagenet"
    for key in ("lr", "weight_decay"):
        assert best.search_for(f"train.{key}").kind == "loguniform"
    compare = load_spec(ROOT / "sweeps" / "recipe-compare-cpu.yaml")
    assert compare.search.num_samples == 1 and compare.model.small_input_stem is False
