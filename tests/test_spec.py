"""Spec validation, loading, --set overrides and the search-space translation (no Ray cluster)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # plain `pytest` puts tests/, not the repo root, on sys.path
    sys.path.insert(0, str(ROOT))

from tuner.errors import InputError  # noqa: E402
from tuner.spec import Spec  # noqa: E402
from tuner.specfile import load_spec, parse_yaml, validate

SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))
FASHION = ROOT / "sweeps" / "fashion.yaml"


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_error(path: Path, overrides: list[str] = ()) -> str:
    """The InputError message of load_spec; it must be a single line."""
    with pytest.raises(InputError) as e:
        load_spec(path, list(overrides))
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


# --- shipped configs --------------------------------------------------------------------------


def test_sweeps_are_shipped():
    assert {p.name for p in SWEEPS} >= {"fashion.yaml", "fashion-quick.yaml", "hotdog.yaml",
                                        "folder-quick.yaml"}


@pytest.mark.parametrize("path", SWEEPS, ids=[p.name for p in SWEEPS])
def test_shipped_config_loads(path):
    spec = load_spec(path)
    assert isinstance(spec, Spec)
    assert spec.search.parameters, "a shipped sweep should search something"
    # Every searched value space is one the trial can apply.
    from tuner.space import param_space

    assert set(param_space(spec.search)) == set(spec.search.parameters)


def test_fashion_is_the_tutorial_sweep():
    spec = load_spec(FASHION)
    p = spec.search.parameters
    assert set(p) == {"epochs", "batch_size", "lr"}
    assert p["epochs"].kind == "choice" and list(p["epochs"].args) == [4, 5, 6, 7, 8, 9]
    assert p["batch_size"].kind == "choice" and list(p["batch_size"].args) == [32, 64, 128]
    assert p["lr"].kind == "uniform" and tuple(p["lr"].args) == (1e-4, 1e-3)
    assert all(isinstance(x, float) for x in p["lr"].args)
    assert spec.search.num_samples == 10
    assert spec.search.searcher == "hyperopt"
    assert spec.resources.gpu == 1
    assert spec.model.conv1 == "reinit"
    assert spec.model.freeze == "none"
    assert spec.model.weights == "imagenet"
    assert spec.model.weights_fallback is None
    assert spec.model.arch == "resnet18"
    assert spec.data.dataset == "fashion_mnist"


# --- schema: defaults, frozen, unknown keys ---------------------------------------------------


def test_empty_mapping_validates_to_schema_defaults():
    spec = validate({})
    assert spec == Spec()
    assert spec.name == "sweep"
    assert (spec.train.epochs, spec.train.batch_size, spec.train.lr) == (5, 64, 1e-3)
    assert spec.train.optimizer == "adam"
    assert spec.data.val_fraction == 0.1 and spec.data.dataset == "fashion_mnist"
    assert spec.model.weights == "imagenet" and spec.model.freeze == "none"
    assert spec.search.searcher == "hyperopt" and spec.search.num_samples == 10
    assert spec.search.parameters == {} and spec.search.points_to_evaluate == []
    assert spec.resources.cpu == 1 and spec.resources.gpu == 0


def test_file_with_only_a_name_gets_defaults_and_missing_name_is_the_file_stem(tmp_path):
    spec = load_spec(write(tmp_path, "train:\n  epochs: 3\n", "my-sweep.yaml"))
    assert spec.name == "my-sweep"
    assert spec.train.epochs == 3
    assert spec.train.batch_size == Spec().train.batch_size


def test_spec_is_frozen():
    spec = load_spec(FASHION)
    with pytest.raises(ValidationError):
        spec.name = "other"
    with pytest.raises(ValidationError):
        spec.train.lr = 0.5
    with pytest.raises(ValidationError):
        spec.search.num_samples = 3
    assert spec.train.lr == 1e-3 and spec.name == "fashion"


def test_unknown_key_lists_valid_keys(tmp_path):
    msg = load_error(write(tmp_path, "train:\n  learning_rate: 0.1\n"))
    assert "train.learning_rate" in msg and "unknown key" in msg
    for field in ("epochs", "batch_size", "lr", "optimizer", "momentum", "weight_decay"):
        assert field in msg
    msg = load_error(write(tmp_path, "trian:\n  lr: 0.1\n"))
    assert "trian" in msg and "name, data, model, train, search, resources" in msg


# --- each bad input names its key -------------------------------------------------------------

P = "search.parameters."
BAD = [
    # id, raw spec, pieces the message must contain
    ("unknown_top_key", {"bogus": 1}, ["bogus", "unknown key"]),
    ("unknown_nested_key", {"model": {"depth": 18}}, ["model.depth", "unknown key", "arch"]),
    ("wrong_type_int", {"train": {"epochs": "many"}}, ["train.epochs", "integer", "many"]),
    ("wrong_type_bool", {"data": {"download": "perhaps"}}, ["data.download", "perhaps"]),
    ("wrong_type_section", {"train": [1, 2]}, ["train"]),
    ("empty_choice", {"search": {"parameters": {"epochs": {"choice": []}}}}, [P + "epochs", "choice"]),
    ("uniform_low_ge_high", {"search": {"parameters": {"lr": {"uniform": [1e-3, 1e-4]}}}},
     [P + "lr", "low must be below high"]),
    ("uniform_low_eq_high", {"search": {"parameters": {"lr": {"uniform": [1e-3, 1e-3]}}}},
     [P + "lr", "low must be below high"]),
    ("randint_low_ge_high", {"search": {"parameters": {"epochs": {"randint": [5, 5]}}}},
     [P + "epochs", "low must be below high"]),
    ("loguniform_low_ge_high", {"search": {"parameters": {"lr": {"loguniform": [1e-2, 1e-5]}}}},
     [P + "lr", "low must be below high"]),
    ("no_distribution", {"search": {"parameters": {"lr": {}}}}, [P + "lr", "exactly one"]),
    ("two_distributions", {"search": {"parameters": {"lr": {"choice": [0.1], "uniform": [0.1, 0.2]}}}},
     [P + "lr", "exactly one", "choice, uniform"]),
    ("unknown_distribution", {"search": {"parameters": {"lr": {"normal": [0.1, 0.2]}}}},
     [P + "lr.normal", "unknown key", "choice, uniform, loguniform, quniform, randint"]),
    ("lr_zero", {"train": {"lr": 0}}, ["train.lr", "greater than 0"]),
    ("lr_negative", {"train": {"lr": -0.01}}, ["train.lr", "greater than 0"]),
    ("epochs_zero", {"train": {"epochs": 0}}, ["train.epochs", "greater than 0"]),
    ("batch_size_zero", {"train": {"batch_size": 0}}, ["train.batch_size", "greater than or equal to 2"]),
    ("batch_size_one", {"train": {"batch_size": 1}}, ["train.batch_size", "greater than or equal to 2"]),
    ("num_samples_zero", {"search": {"num_samples": 0}}, ["search.num_samples", "greater than 0"]),
    ("searched_lr_uniform_zero", {"search": {"parameters": {"lr": {"uniform": [0.0, 1e-3]}}}},
     [P + "lr", "value 0.0", "greater than 0"]),
    ("searched_lr_uniform_negative", {"search": {"parameters": {"lr": {"uniform": [-1e-3, 1e-3]}}}},
     [P + "lr", "-0.001", "greater than 0"]),
    ("searched_lr_choice_negative", {"search": {"parameters": {"lr": {"choice": [0.1, -0.1]}}}},
     [P + "lr", "-0.1", "greater than 0"]),
    ("searched_lr_loguniform_zero", {"search": {"parameters": {"lr": {"loguniform": [0.0, 1e-3]}}}},
     [P + "lr", "greater than 0"]),
    ("searched_epochs_choice_zero", {"search": {"parameters": {"epochs": {"choice": [0, 3]}}}},
     [P + "epochs", "value 0", "greater than 0"]),
    ("searched_epochs_randint_zero", {"search": {"parameters": {"epochs": {"randint": [0, 4]}}}},
     [P + "epochs", "value 0", "greater than 0"]),
    ("searched_batch_size_choice_zero", {"search": {"parameters": {"batch_size": {"choice": [0, 32]}}}},
     [P + "batch_size", "value 0", "greater than or equal to 2"]),
    ("searched_batch_size_quniform_zero",
     {"search": {"parameters": {"batch_size": {"quniform": [0, 64, 16]}}}},
     [P + "batch_size", "greater than or equal to 2"]),
    ("quniform_bounds_off_the_step",
     {"search": {"parameters": {"batch_size": {"quniform": [16, 128, 32]}}}},
     [P + "batch_size", "multiples of the step 32"]),
    ("asha_grace_beyond_max_epochs",
     {"search": {"scheduler": "asha", "grace_period": 5, "parameters": {"epochs": {"choice": [1, 2]}}}},
     ["search.grace_period", "most epochs a trial can have (2)"]),
    ("fixed_field_searched",
     {"search": {"parameters": {"data.train_subset": {"choice": [100, 200]}}}},
     [P + "data.train_subset", "fixed for the whole sweep"]),
    ("weights_searched_as_a_range",
     {"search": {"parameters": {"model.weights": {"uniform": [0, 1]}}}},
     [P + "model.weights", "only be searched with choice"]),
    ("arch_range",
     {"search": {"parameters": {"model.arch": {"uniform": [0, 1]}}}},
     [P + "model.arch", "only be searched with choice"]),
    ("arch_unknown",
     {"search": {"parameters": {"model.arch": {"choice": ["resnet18", "resnet19"]}}}},
     [P + "model.arch", "'resnet19'", "unknown architecture"]),
    ("select_unknown", {"search": {"select": "best"}}, ["search.select", "last", "best_epoch"]),
    ("same_field_twice",
     {"search": {"parameters": {"epochs": {"choice": [1, 2]}, "train.epochs": {"choice": [3]}}}},
     [P + "train.epochs", "searched twice"]),
    ("metric_mode_disagree", {"search": {"metric": "val_loss", "mode": "max"}},
     ["mode must be min for val_loss"]),
    ("searched_num_samples_zero", {"search": {"parameters": {"search.num_samples": {"choice": [0, 4]}}}},
     [P + "search.num_samples", "fixed for the whole sweep"]),
    ("searched_freeze_unknown", {"search": {"parameters": {"model.freeze": {"choice": ["none", "legs"]}}}},
     [P + "model.freeze", "legs", "unknown freeze policy"]),
    ("val_fraction_zero", {"data": {"val_fraction": 0}}, ["data.val_fraction", "greater than 0"]),
    ("val_fraction_one", {"data": {"val_fraction": 1}}, ["data.val_fraction", "less than 1"]),
    ("val_fraction_above_one", {"data": {"val_fraction": 1.5}}, ["data.val_fraction", "less than 1"]),
    ("unknown_dataset", {"data": {"dataset": "mnist"}}, ["data.dataset", "mnist", "fashion_mnist"]),
    ("unknown_arch", {"model": {"arch": "alexnet"}}, ["model.arch", "alexnet", "resnet18", "vit_b_16"]),
    ("vit_on_28px", {"model": {"arch": "vit_b_16"}}, ["model.arch", "224x224", "28x28"]),
    ("vit_on_other_size", {"model": {"arch": "vit_b_16"}, "data": {"dataset": "imagefolder",
                                                                   "image_size": 192}},
     ["model.arch", "224x224", "192x192", "data.image_size"]),
    ("convnext_too_small", {"model": {"arch": "convnext_tiny"}}, ["model.arch", "at least 32x32"]),
    ("stem_not_resnet", {"model": {"arch": "efficientnet_b0", "small_input_stem": "stride1"}},
     ["model.small_input_stem", "efficientnet_b0", "set it to false"]),
    ("freeze_stage_of_another_arch", {"model": {"arch": "regnet_y_400mf", "freeze": "until:layer2"}},
     ["model.freeze", "until:layer2", "regnet_y_400mf", "block1, block2"]),
    ("unknown_freeze_stage", {"model": {"freeze": "until:layer9"}},
     ["model.freeze", "until:layer9", "unknown freeze policy", "layer4"]),
    ("unknown_freeze_word", {"model": {"freeze": "partial"}}, ["model.freeze", "partial"]),
    ("unknown_searcher", {"search": {"searcher": "bohb"}}, ["search.searcher", "bohb", "hyperopt"]),
    ("unknown_mode", {"search": {"mode": "maximum"}}, ["search.mode", "maximum", "max", "min"]),
    ("n_initial_equal", {"search": {"num_samples": 10, "n_initial_points": 10}},
     ["search", "n_initial_points (10)", "num_samples (10)"]),
    ("n_initial_above", {"search": {"num_samples": 4, "n_initial_points": 7}},
     ["search", "n_initial_points (7)", "num_samples (4)"]),
    ("param_not_a_field", {"search": {"parameters": {"dropout": {"choice": [0.1, 0.2]}}}},
     [P + "dropout", "train.dropout", "not a spec field"]),
    ("param_dotted_not_a_field", {"search": {"parameters": {"model.depth": {"choice": [18, 34]}}}},
     [P + "model.depth", "not a spec field"]),
    ("point_unknown_key",
     {"search": {"parameters": {"lr": {"uniform": [1e-4, 1e-3]}}, "points_to_evaluate": [{"momentum": 0.5}]}},
     ["search.points_to_evaluate[0].momentum", "not a searched parameter"]),
    ("point_bad_value",
     {"search": {"parameters": {"lr": {"uniform": [1e-4, 1e-3]}}, "points_to_evaluate": [{"lr": -1.0}]}},
     ["search.points_to_evaluate[0].lr", "greater than 0"]),
    ("point_outside_uniform",
     {"search": {"parameters": {"lr": {"uniform": [1e-4, 1e-3]}}, "points_to_evaluate": [{"lr": 5e-3}]}},
     ["search.points_to_evaluate[0].lr", "0.005 lies outside its search space", "uniform"]),
    ("point_outside_randint",
     {"search": {"parameters": {"epochs": {"randint": [1, 5]}}, "points_to_evaluate": [{"epochs": 5}]}},
     ["search.points_to_evaluate[0].epochs", "5 lies outside", "randint [1, 5]"]),
    ("point_off_the_quniform_step",
     {"search": {"parameters": {"batch_size": {"quniform": [32, 128, 32]}},
                 "points_to_evaluate": [{"batch_size": 48}]}},
     ["search.points_to_evaluate[0].batch_size", "48 lies outside", "quniform"]),
    ("point_in_loguniform_is_fine_but_other_outside",
     {"search": {"parameters": {"lr": {"loguniform": [1e-4, 1e-2]}},
                 "points_to_evaluate": [{"lr": 1e-3}, {"lr": 1e-5}]}},
     ["search.points_to_evaluate[1].lr", "1e-05 lies outside"]),
    ("gpu_above_one", {"resources": {"gpu": 2}}, ["resources.gpu", "at most 1", "one device"]),
    ("bad_name", {"name": "my sweep"}, ["name", "my sweep"]),
    # a name is one folder inside the results root: never the root's parent or beside it
    ("name_dot_dot", {"name": ".."}, ["name: ", "letter or digit first", "(got '..')"]),
    ("name_dot", {"name": "."}, ["name: ", "(got '.')"]),
    ("name_dots_only", {"name": "..."}, ["name: ", "(got '...')"]),
    ("name_hidden", {"name": ".sweep"}, ["name: ", "(got '.sweep')"]),
    ("name_with_separator", {"name": "a/../../b"}, ["name: ", "(got 'a/../../b')"]),
    ("name_backslash", {"name": "a\\b"}, ["name: "]),
    ("name_dash_first", {"name": "-rf"}, ["name: ", "(got '-rf')"]),
]


@pytest.mark.parametrize("raw, pieces", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_names_the_key(tmp_path, raw, pieces):
    path = write(tmp_path, yaml.safe_dump(raw), "bad.yaml")
    msg = load_error(path)
    assert msg.startswith(f"{path}: "), msg
    for piece in pieces:
        assert piece in msg, f"{piece!r} not in {msg!r}"
    # validate() on the mapping itself gives the same problems, named with its source.
    with pytest.raises(InputError) as e:
        validate(raw, source="here")
    assert str(e.value) == msg.replace(str(path), "here", 1)


def test_n_initial_points_below_num_samples_is_fine():
    assert validate({"search": {"num_samples": 10, "n_initial_points": 9}}).search.n_initial_points == 9


def test_hyperopt_points_must_be_whole():
    raw = {"search": {"parameters": {"epochs": {"choice": [4, 5]}, "lr": {"uniform": [1e-4, 1e-3]}},
                      "points_to_evaluate": [{"epochs": 4}]}}
    with pytest.raises(InputError, match=r"points_to_evaluate\[0\]: .*missing lr"):
        validate(raw)


def test_point_outside_choice_is_rejected():
    raw = {"search": {"parameters": {"epochs": {"choice": [4, 5, 6]}},
                      "points_to_evaluate": [{"epochs": 3}]}}
    with pytest.raises(InputError, match=r"search\.points_to_evaluate\[0\]\.epochs"):
        validate(raw)


@pytest.mark.parametrize("dist", [{"uniform": [4, 9]}, {"loguniform": [4, 9]}])
def test_continuous_distribution_on_int_field_is_rejected(dist):
    with pytest.raises(InputError, match=r"search\.parameters\.epochs"):
        validate({"search": {"parameters": {"epochs": dist}}})


def test_several_errors_reported_together_on_one_line(tmp_path):
    path = write(tmp_path, "train:\n  lr: 0\n  epochs: 0\nmodel:\n  arch: vgg\ndata:\n  val_fraction: 1\n"
                           "bogus: 1\n", "many.yaml")
    msg = load_error(path)
    assert msg.startswith(f"{path}: 5 problems: "), msg
    for piece in ("train.lr", "train.epochs", "model.arch", "data.val_fraction", "bogus"):
        assert piece in msg
    assert msg.count(";") >= 4


def test_several_searched_parameter_errors_reported_together():
    raw = {"search": {"parameters": {"dropout": {"choice": [0.1]}, "epochs": {"choice": [0, 2]},
                                     "lr": {"uniform": [-1.0, 1.0]}}}}
    with pytest.raises(InputError) as e:
        validate(raw)
    msg = str(e.value)
    assert "\n" not in msg
    for piece in (P + "dropout", P + "epochs", P + "lr"):
        assert piece in msg


# --- YAML numbers -----------------------------------------------------------------------------


def test_exponent_without_dot_is_a_float(tmp_path):
    path = write(tmp_path, "train:\n  lr: 1e-4\n  weight_decay: 5E-5\n"
                           "search:\n  parameters:\n    lr: {loguniform: [1e-5, 1e-2]}\n")
    spec = load_spec(path)
    assert spec.train.lr == 1e-4 and isinstance(spec.train.lr, float)
    assert spec.train.weight_decay == 5e-5
    assert spec.search.parameters["lr"].args == (1e-5, 1e-2)


@pytest.mark.parametrize("text, value", [("1e-4", 1e-4), ("-1e-4", -1e-4), ("+2e3", 2000.0),
                                         ("1.5e-3", 1.5e-3), (".5e1", 5.0), ("3E2", 300.0)])
def test_parse_yaml_exponent_forms(text, value):
    got = parse_yaml(f"x: {text}")["x"]
    assert isinstance(got, float) and got == value


@pytest.mark.parametrize("text", ["1e-4x", "e5", "'1e-4'", "v1e5"])
def test_parse_yaml_non_numbers_stay_strings(text):
    assert isinstance(parse_yaml(f"x: {text}")["x"], str)


# --- --set overrides --------------------------------------------------------------------------


def test_override_plain_value():
    unsearched = "search.parameters={}"  # fashion.yaml searches epochs, batch_size and lr
    spec = load_spec(FASHION, ["train.lr=0.002", "train.epochs=3", "model.weights=none", unsearched])
    assert spec.train.lr == 0.002 and spec.train.epochs == 3 and spec.model.weights == "none"
    assert load_spec(FASHION, ["train.lr=1e-4", unsearched]).train.lr == 1e-4


def test_override_yaml_flow_value():
    spec = load_spec(FASHION, ["search.parameters.lr={loguniform: [1.0e-5, 1.0e-2]}"])
    lr = spec.search.parameters["lr"]
    assert lr.kind == "loguniform" and lr.args == (1e-5, 1e-2)
    assert set(spec.search.parameters) == {"epochs", "batch_size", "lr"}


def test_override_is_validated():
    msg = load_error(FASHION, ["train.lr=-1", "search.parameters={}"])
    assert "train.lr" in msg and "greater than 0" in msg


def test_any_field_can_be_searched_from_the_file(tmp_path):
    path = write(tmp_path, "search:\n  parameters:\n    model.freeze: {choice: [none, head]}\n"
                           "    lr: {uniform: [1.0e-4, 1.0e-3]}\n")
    spec = load_spec(path)
    assert list(spec.search.parameters["model.freeze"].args) == ["none", "head"]
    trial = spec.with_values({"model.freeze": "head", "lr": 5e-4})
    assert trial.model.freeze == "head" and trial.train.lr == 5e-4
    assert spec.model.freeze == "none"


def test_override_can_search_a_dotted_field():
    spec = load_spec(FASHION, ["search.parameters.model.freeze={choice: [none, head]}"])
    assert list(spec.search.parameters["model.freeze"].args) == ["none", "head"]
    assert spec.with_values({"model.freeze": "head"}).model.freeze == "head"


@pytest.mark.parametrize("item", ["train.lr", "train.lr0.1", "=0.1", "train lr=0.1"])
def test_override_malformed(item):
    msg = load_error(FASHION, [item])
    assert msg.startswith(f"--set {item!r}: expected path.to.key=value"), msg


def test_override_value_not_yaml():
    msg = load_error(FASHION, ["train.lr=[1"])
    assert msg.startswith("--set 'train.lr=[1'") and "not valid YAML" in msg


def test_override_unknown_key_lists_valid_keys():
    msg = load_error(FASHION, ["train.learning_rate=0.1"])
    assert "learning_rate" in msg and "unknown key" in msg
    assert "epochs, batch_size, lr, optimizer" in msg
    msg = load_error(FASHION, ["trian.lr=0.1"])
    assert "trian" in msg and "name, data, model, train, search, resources" in msg


def test_override_subkey_of_scalar():
    msg = load_error(FASHION, ["train.lr.value=0.1"])
    assert "train.lr" in msg and "no sub-keys" in msg
    msg = load_error(FASHION, ["name.x=1"])
    assert "name" in msg and "no sub-keys" in msg


# --- with_values ------------------------------------------------------------------------------


def test_with_values_applies_and_revalidates():
    spec = load_spec(FASHION)
    trial = spec.with_values({"epochs": 7, "batch_size": 128, "lr": 5e-4})
    assert (trial.train.epochs, trial.train.batch_size, trial.train.lr) == (7, 128, 5e-4)
    assert (spec.train.epochs, spec.train.batch_size, spec.train.lr) == (5, 64, 1e-3)  # unchanged
    assert trial.model == spec.model
    assert trial.search.parameters == {}  # a trial's spec has nothing left to search
    with pytest.raises(ValueError):  # pydantic's ValidationError is a ValueError
        spec.with_values({"epochs": 0})
    with pytest.raises(ValueError):
        spec.with_values({"model.freeze": "until:layer9"})


# --- search space -----------------------------------------------------------------------------


def test_param_space_samplers():
    from ray.tune.search import sample as S

    from tuner.space import param_space

    spec = validate({"search": {"parameters": {
        "epochs": {"choice": [4, 5, 6]},
        "lr": {"uniform": [1e-4, 1e-3]},
        "weight_decay": {"loguniform": [1e-6, 1e-2]},
        "momentum": {"quniform": [0.5, 0.9, 0.1]},
        "batch_size": {"randint": [16, 33]},
    }}})
    space = param_space(spec.search)
    assert list(space) == ["epochs", "lr", "weight_decay", "momentum", "batch_size"]

    c = space["epochs"]
    assert isinstance(c, S.Categorical) and list(c.categories) == [4, 5, 6]

    u = space["lr"]
    assert isinstance(u, S.Float) and isinstance(u.get_sampler(), S.Float._Uniform)
    assert (u.lower, u.upper) == (1e-4, 1e-3)

    lu = space["weight_decay"]
    assert isinstance(lu, S.Float) and isinstance(lu.get_sampler(), S.Float._LogUniform)
    assert (lu.lower, lu.upper) == (1e-6, 1e-2)

    q = space["momentum"]
    assert isinstance(q, S.Float) and isinstance(q.get_sampler(), S.Quantized)
    assert (q.lower, q.upper) == (0.5, 0.9) and q.get_sampler().q == 0.1

    r = space["batch_size"]
    assert isinstance(r, S.Integer) and isinstance(r.get_sampler(), S.Integer._Uniform)
    assert (r.lower, r.upper) == (16, 33)

    for _ in range(200):
        assert c.sample() in (4, 5, 6)
        assert 1e-4 <= u.sample() <= 1e-3
        assert 1e-6 <= lu.sample() <= 1e-2
        v = q.sample()
        assert 0.5 - 1e-9 <= v <= 0.9 + 1e-9
        assert math.isclose(round(v / 0.1) * 0.1, v, abs_tol=1e-9)
        n = r.sample()
        assert isinstance(n, int) and 16 <= n < 33
    # log-uniform spreads over decades: some samples fall below the arithmetic mid-point by far
    assert min(lu.sample() for _ in range(200)) < 1e-4


def test_param_space_of_fashion():
    from ray.tune.search import sample as S

    from tuner.space import describe, param_space

    spec = load_spec(FASHION)
    space = param_space(spec.search)
    assert list(space["epochs"].categories) == [4, 5, 6, 7, 8, 9]
    assert list(space["batch_size"].categories) == [32, 64, 128]
    assert isinstance(space["lr"], S.Float) and (space["lr"].lower, space["lr"].upper) == (1e-4, 1e-3)
    rows = dict(describe(spec.search))
    assert rows["lr"] == "uniform in [0.0001, 0.001]"
    assert rows["epochs"] == "choice of 4, 5, 6, 7, 8, 9"


# --- files ------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    msg = load_error(path)
    assert str(path) in msg and "no such file" in msg


def test_directory(tmp_path):
    msg = load_error(tmp_path)
    assert str(tmp_path) in msg and "directory" in msg


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n"])
def test_empty_file(tmp_path, text):
    path = write(tmp_path, text)
    msg = load_error(path)
    assert str(path) in msg and "empty" in msg


def test_yaml_syntax_error(tmp_path):
    path = write(tmp_path, "train:\n  lr: [0.1, 0.2\n  epochs: 3\n")
    msg = load_error(path)
    assert str(path) in msg and "YAML syntax error" in msg and "line" in msg


def test_top_level_list(tmp_path):
    path = write(tmp_path, "- train\n- search\n")
    msg = load_error(path)
    assert str(path) in msg and "mapping" in msg and "list" in msg


def test_top_level_scalar(tmp_path):
    path = write(tmp_path, "just words\n")
    msg = load_error(path)
    assert str(path) in msg and "mapping" in msg


def test_binary_file(tmp_path):
    path = tmp_path / "weights.yaml"
    path.write_bytes(b"\xff\xfe\x00\x01binary")
    msg = load_error(path)
    assert str(path) in msg


# --- --set of a searched field, grid search, the plan of a comparison ---------------------------


@pytest.mark.parametrize("override, entry", [
    ("train.epochs=3", "search.parameters.epochs"),
    ("train.lr=0.01", "search.parameters.lr"),
    ("train={epochs: 3}", "search.parameters.epochs"),  # a whole section holding a searched field
])
def test_set_of_a_searched_field_names_the_search_entry(override, entry):
    msg = load_error(FASHION, [override])
    assert msg.startswith(f"--set {override.split('=')[0]}: ") and entry in msg, msg
    assert f"--set '{entry}={{choice: [VALUE]}}'" in msg


def test_set_of_a_field_once_the_search_drops_it_is_fine():
    spec = load_spec(FASHION, ["train.epochs=3", "search.parameters={lr: {uniform: [1.0e-4, 1.0e-3]}}"])
    assert spec.train.epochs == 3 and set(spec.search.parameters) == {"lr"}


def test_bare_set_key_suggests_its_section():
    assert "did you mean train.lr?" in load_error(FASHION, ["lr=0.1"])
    assert "did you mean model.freeze?" in load_error(FASHION, ["freeze=head"])


GRID = ("search:\n  searcher: grid\n  parameters:\n    lr: {choice: [1.0e-3, 3.0e-3]}\n"
        "    model.freeze: {choice: [none, head, gradual]}\n")


def test_grid_runs_every_combination_once(tmp_path):
    from ray import tune

    from tuner.space import param_space

    spec = load_spec(write(tmp_path, GRID))
    assert spec.search.num_samples == 1 and spec.search.planned_trials() == 6
    assert param_space(spec.search) == {"lr": tune.grid_search([1e-3, 3e-3]),
                                        "model.freeze": tune.grid_search(["none", "head", "gradual"])}


@pytest.mark.parametrize("extra, pieces", [
    (["search.parameters.lr={uniform: [1.0e-4, 1.0e-3]}"], ["parameters.lr", "choice lists only", "uniform"]),
    (["search.num_samples=3"], ["num_samples", "must be 1", "seed: {choice"]),
    (["search.warm_start=[results/x/y]"], ["warm_start", "grid"]),
])
def test_grid_errors(tmp_path, extra, pieces):
    msg = load_error(write(tmp_path, GRID), extra)
    for piece in pieces:
        assert piece in msg, msg


def test_a_comparisons_plan_gives_its_total_trials_and_random_init(tmp_path):
    from types import SimpleNamespace

    import numpy as np

    from tuner.model import Weights
    from tuner.run import plan_text

    spec = load_spec(write(tmp_path, "model: {weights: none}\nsearch:\n  num_samples: 4\n"
                                     "  n_initial_points: 2\n  parameters: {lr: {uniform: [1.0e-4, 1.0e-3]}}\n"
                                     "compare:\n  repeats: 3\n  arms: {a: {model.freeze: head}, "
                                     "b: {model.freeze: none}}\n"))
    data = SimpleNamespace(train=np.zeros(30), val=np.zeros(5), test=np.zeros(8), num_classes=3,
                           source="photos", in_channels=3)
    plan = plan_text(spec, {"none": Weights(None, "none (random init)")}, data)
    # every run an arm makes: its search, its choice's repeats and its own settings' (no confirming
    # runs below 8 trials)
    assert "2 x (4 searched + 3 repeats of the choice + up to 3 of its own settings) = up to 20 trials" in plan
    assert "random init (model.weights: none)" in plan and "pretrained conv1" not in plan


def test_a_grid_plans_every_point_of_its_choices(tmp_path):
    raw = {"search": {"searcher": "grid", "parameters": {
        "batch_size": {"choice": [32, 64]}, "lr": {"choice": [1e-3, 1e-2, 1e-1]}}}}
    assert validate(raw).search.planned_trials() == 6
    assert validate({"search": {"num_samples": 4}}).search.planned_trials() == 4
