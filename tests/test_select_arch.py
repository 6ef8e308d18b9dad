"""search.select (a trial scored by its last or its best validated epoch), model.arch searched as
a choice, and trials.csv's columns (score_epoch, one column for the planned epochs, the columns
every trial shares said once in status.json): rules and tables without Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from tuner import memory
from tuner.backbones import backbone
from tuner.model import Weights, model_state, resolve_all
from tuner.results import TrialRecord, read_trials, trials_table, write_trials
from tuner.spec import Spec, weights_key
from tuner.specfile import validate
from tuner.trainable import Best, diverged_report, epoch_plan, improves

ARCHS = ["mobilenet_v3_small", "efficientnet_b0"]


def folder_spec(**search) -> Spec:
    return validate({"data": {"dataset": "imagefolder", "resize": 40, "image_size": 32},
                     "model": {"weights": "none", "arch": ARCHS[0]},
                     "search": {"num_samples": 2, "parameters": {"model.arch": {"choice": ARCHS}},
                                **search}})


def spec_error(raw: dict) -> str:
    from tuner.errors import InputError

    with pytest.raises(InputError) as e:
        validate(raw)
    return str(e.value)


# --- model.arch as a choice -----------------------------------------------------------------------


def test_a_searched_arch_gives_a_model_section_per_arch():
    spec = folder_spec()
    assert spec.archs() == ARCHS
    assert [(m.arch, m.weights) for m in spec.model_variants()] == [(a, "none") for a in ARCHS]
    trial = spec.with_values({"model.arch": "efficientnet_b0"})
    assert trial.model.arch == "efficientnet_b0"


def test_every_arch_must_suit_the_fixed_and_searched_model_fields_all_errors_at_once():
    msg = spec_error({
        "data": {"dataset": "imagefolder", "resize": 40, "image_size": 32},
        "model": {"weights": "none", "freeze": "until:layer2", "arch": "resnet18"},
        "search": {"parameters": {
            "model.arch": {"choice": ["resnet18", "mobilenet_v3_small", "vit_b_32"]},
            "model.small_input_stem": {"choice": [False, "stride1"]}}}})
    # the fixed freeze policy names a ResNet stage; the stem is a ResNet's
    assert "model.arch: value 'mobilenet_v3_small'" in msg and "until:layer2" in msg
    assert "value 'vit_b_32'" in msg
    # ViT takes 224x224 only
    msg = spec_error({"data": {"dataset": "imagefolder", "resize": 40, "image_size": 32},
                      "model": {"weights": "none"},
                      "search": {"parameters": {"model.arch": {"choice": ["resnet18", "vit_b_32"]},
                                                "model.small_input_stem": {"choice": [False, "stride1"]}}}})
    assert "value 'vit_b_32'" in msg and "224x224" in msg
    assert "model.small_input_stem: value 'stride1' with model.arch vit_b_32" in msg


def test_a_searched_freeze_stage_must_be_a_stage_of_every_arch():
    msg = spec_error({
        "data": {"dataset": "imagefolder", "resize": 40, "image_size": 32},
        "model": {"weights": "none", "arch": "mobilenet_v3_small"},
        "search": {"parameters": {"model.arch": {"choice": ["mobilenet_v3_small", "resnet18"]},
                                  "model.freeze": {"choice": ["none", "until:stage2"]}}}})
    assert "model.freeze: value 'until:stage2' with model.arch resnet18" in msg
    assert "conv1, layer1" in msg  # resnet18's own stages are named
    # stages both archs have pass
    ok = validate({"data": {"dataset": "imagefolder", "resize": 40, "image_size": 32},
                   "model": {"weights": "none", "arch": "mobilenet_v3_small"},
                   "search": {"parameters": {"model.arch": {"choice": ARCHS},
                                             "model.freeze": {"choice": ["none", "until:stage2"]}}}})
    assert ok.archs() == ARCHS


def test_a_weights_file_and_an_arm_setting_the_arch_are_refused(tmp_path):
    msg = spec_error({"data": {"dataset": "imagefolder", "resize": 40, "image_size": 32},
                      "model": {"weights": str(tmp_path / "w.pt"), "arch": ARCHS[0]},
                      "search": {"parameters": {"model.arch": {"choice": ARCHS}}}})
    assert "a file of one architecture" in msg and "imagenet" in msg
    msg = spec_error({"compare": {"arms": {"a": {"model.arch": "resnet34"}, "b": {}}}})
    assert "compare.arms.a.model.arch" in msg and "every arm uses the spec's model.arch" in msg


def test_weights_are_resolved_per_arch_where_archs_share_a_setting():
    spec = folder_spec()
    weights = resolve_all(spec.model_variants())
    assert set(weights) == {f"none@{a}" for a in ARCHS}
    for m in spec.model_variants():
        assert weights_key(m, weights) == f"none@{m.arch}"
    one = resolve_all(folder_spec(parameters={}).model_variants())
    assert set(one) == {"none"} and weights_key(folder_spec().model, one) == "none"


def test_the_memory_check_takes_the_most_demanding_arch():
    import numpy as np

    from tuner import folder
    from tuner.data import Dataset, Pixels, Split

    def split(n):
        return Split(np.zeros((n, 3, 32, 32), np.uint8), np.arange(n) % 3)

    data = Dataset(split(8), split(4), split(4), "test", ("a", "b", "c"), 3,
                   Pixels(folder.IMAGENET_MEAN, folder.IMAGENET_STD, crop=32))
    both = memory.trial_bytes(folder_spec(), data)
    alone = [memory.trial_bytes(folder_spec(parameters={}).model_copy(
        update={"model": folder_spec().model.model_copy(update={"arch": a})}), data) for a in ARCHS]
    assert sum(both.values()) == max(sum(a.values()) for a in alone)
    assert sum(alone[0].values()) != sum(alone[1].values())  # the two archs do differ
    _, where = memory.worst_trial(folder_spec(), data)
    assert any(a in where for a in ARCHS)


# --- search.select ---------------------------------------------------------------------------------


def quick(**search) -> Spec:
    return Spec.model_validate({"train": {"epochs": 4}, "search": {
        "num_samples": 2, "parameters": {"lr": {"uniform": [1e-4, 1e-3]}}, **search}})


def report(epoch, acc, loss, **extra):
    return {"epoch": epoch, "epochs_planned": 4, "val_accuracy": acc, "val_loss": loss,
            "time_total_s": 10.0 * epoch, "timestamp": 1_796_000_000 + 10 * epoch,
            "weights": "none (random init)", "node_id": "ab" * 28, "node_ip": "127.0.0.1", **extra}


RECORDS = [
    TrialRecord("a", {"lr": 2e-4}, [report(1, 0.70, 0.9), report(2, 0.90, 0.5),
                                    report(3, 0.90, 0.4), report(4, 0.60, 1.1)]),
    TrialRecord("b", {"lr": 9e-4}, [report(1, 0.50, 1.2), report(2, 0.80, 0.6),
                                    report(3, 0.85, 0.3), report(4, 0.85, 0.35)]),
]


def test_select_defaults_to_the_last_epoch_and_best_epoch_validates_every_epoch():
    assert quick().search.select == "last" and quick().search.reported_metric == "val_accuracy"
    best = quick(select="best_epoch", metric="val_loss")
    assert best.search.reported_metric == "score" and best.search.mode == "min"
    plan = [epoch_plan(e, quick(select="best_epoch"), frozenset(), 0.0) for e in range(1, 5)]
    assert [validate for validate, _ in plan] == [True] * 4
    assert [validate for validate, _ in (epoch_plan(e, quick(), frozenset(), 0.0)
                                         for e in range(1, 5))] == [False, False, False, True]


def test_last_scores_a_trial_by_its_last_epoch():
    t = trials_table(RECORDS, quick(), "w").set_index("trial_id")
    assert t.loc["a", "val_accuracy"] == 0.60 and t.loc["a", "score_epoch"] == 4
    assert t.loc["a", "best_val_accuracy"] == 0.90
    assert list(t["rank"]) == [2, 1]
    assert "last_val_accuracy" not in t


def test_best_epoch_scores_a_trial_by_its_best_validated_epoch_in_the_metric_s_mode():
    t = trials_table(RECORDS, quick(select="best_epoch"), "w").set_index("trial_id")
    # epochs 2 and 3 tie at 0.90: the first counts, as the trainable keeps it; val_loss is that
    # epoch's, not the best loss
    assert t.loc["a", "val_accuracy"] == 0.90 and t.loc["a", "score_epoch"] == 2
    assert t.loc["a", "val_loss"] == 0.5 and t.loc["a", "last_val_accuracy"] == 0.60
    assert t.loc["b", "score_epoch"] == 3
    assert list(t["rank"]) == [1, 2]  # a's best epoch beats b's
    by_loss = trials_table(RECORDS, quick(select="best_epoch", metric="val_loss"), "w")
    assert list(by_loss["score_epoch"]) == [3, 3] and list(by_loss["val_loss"]) == [0.4, 0.3]
    # an epoch without validation is never the score's
    gaps = [TrialRecord("c", {"lr": 5e-4}, [report(1, None, None), report(2, 0.4, 2.0)])]
    assert trials_table(gaps, quick(select="best_epoch"), "w")["score_epoch"].item() == 2


def test_a_diverged_trial_is_scored_by_its_worst_last_report():
    worst = diverged_report({"epoch": 3, "score": 0.9, "val_accuracy": 0.9}, "loss became nan", "max")
    assert worst["score"] == 0.0 and worst["val_accuracy"] == 0.0
    assert "score" not in diverged_report({"epoch": 3}, "loss became nan")
    rec = TrialRecord("d", {"lr": 5e-4}, [report(1, 0.9, 0.2), report(2, 0.0, 3e38,
                                                                      error="loss became nan")])
    row = trials_table([rec], quick(select="best_epoch"), "w").iloc[0]
    assert row["status"] == "error" and row["val_accuracy"] == 0.0


def test_improvement_is_strict_and_ignores_non_finite_scores():
    assert improves(0.5, None, "max") and not improves(float("nan"), None, "max")
    b = Best(2, 0.8, None)
    assert improves(0.81, b, "max") and not improves(0.8, b, "max")
    assert improves(0.7, b, "min") and not improves(0.8, b, "min")


def test_a_checkpoint_stands_for_its_best_epoch_s_weights():
    latest, earlier = {"w": torch.zeros(1)}, {"w": torch.ones(1)}
    assert model_state({"model": latest, "epoch": 4}) is latest
    assert model_state({"model": latest, "best": {"epoch": 4, "score": 0.9}}) is latest
    assert model_state({"model": latest, "best": {"epoch": 2, "score": 0.9, "model": earlier}}) \
        is earlier


# --- trials.csv's columns ----------------------------------------------------------------------------


def test_the_planned_epochs_are_one_column():
    t = trials_table(RECORDS, quick(), "w")
    assert "epochs_planned" in t and "epochs" not in t
    searched = Spec.model_validate({"search": {"parameters": {"epochs": {"choice": [4, 5]}}}})
    recs = [TrialRecord("a", {"epochs": 4}, RECORDS[0].reports)]
    t = trials_table(recs, searched, "w")
    assert "epochs_planned" not in t and t["epochs"].item() == 4
    assert t["status"].item() == "finished"  # 4 of 4 planned epochs


def test_columns_every_trial_shares_are_said_once_in_status_json(tmp_path):
    (tmp_path / "status.json").write_text(json.dumps({"state": "finished"}))
    table = trials_table(RECORDS, quick(), "w")
    write_trials(tmp_path, table)
    written = pd.read_csv(tmp_path / "trials.csv")
    assert "weights" not in written and "node_id" not in written and "node_ip" in written
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "finished"  # the other fields stay
    assert status["trials_shared"] == {"weights": "none (random init)", "node_id": "ab" * 28}
    back = read_trials(tmp_path)
    assert (back["weights"] == "none (random init)").all() and (back["node_id"] == "ab" * 28).all()
    # where trials differ (other weights, another node), the column stays and nothing is shared
    other = [RECORDS[0], TrialRecord("b", {"lr": 9e-4},
                                     [report(1, 0.5, 1.0, weights="imagenet x", node_id="cd")])]
    write_trials(tmp_path, trials_table(other, quick(), "w"))
    written = pd.read_csv(tmp_path / "trials.csv")
    assert list(written["weights"]) == ["none (random init)", "imagenet x"]
    assert json.loads((tmp_path / "status.json").read_text())["trials_shared"] == {}
    assert list(read_trials(tmp_path)["node_id"]) == ["ab" * 28, "cd"]


def test_a_run_report_reads_the_shared_columns_back(tmp_path):
    from tuner import report

    (tmp_path / "spec.yaml").write_text("name: x\n")
    (tmp_path / "status.json").write_text(json.dumps({"state": "finished"}))
    write_trials(tmp_path, trials_table(RECORDS, quick(), "w"))
    view = report.load_run(tmp_path)
    assert (view.trials["weights"] == "none (random init)").all()


def test_every_searched_arch_has_stages_for_the_dry_run():
    # the dry run prints one stage line per arch (run.plan_text): each arch's own
    for arch in ARCHS:
        assert backbone(arch).describe().startswith(arch)
    assert Weights(None, "x").state_dict is None


# --- the trainable under search.select: best_epoch, with Ray's calls stood in for -------------------


def run_trial(monkeypatch, tmp_path, accuracies, checkpoint=None, epochs=4):
    """train_trial of a tiny ResNet-18 trial in this process, its validation accuracies scripted;
    returns its reports, each with the checkpoint.pt it saved (or None)."""
    import numpy as np

    from tuner import trainable
    from tuner.data import Dataset, Pixels, Split

    def split(n):
        return Split(np.zeros((n, 28, 28), np.uint8), np.arange(n) % 3)

    data = Dataset(split(6), split(3), split(3), "test", ("a", "b", "c"), 1, Pixels((0.5,), (0.5,)))
    spec = Spec.model_validate({"model": {"weights": "none"}, "train": {
        "epochs": epochs, "batch_size": 3}, "search": {"select": "best_epoch"}})
    scripted = iter(accuracies)
    monkeypatch.setattr(trainable, "evaluate", lambda *a: (1.0, next(scripted)))
    monkeypatch.setattr(trainable.ray, "get", lambda ref: ref)
    monkeypatch.setattr(trainable, "trial_device", lambda: torch.device("cpu"))  # no Ray asked

    class Context:
        def get_node_id(self):
            return "node"

    monkeypatch.setattr(trainable.ray, "get_runtime_context", lambda: Context())
    monkeypatch.setattr(trainable.ray.util, "get_node_ip_address", lambda: "127.0.0.1")
    monkeypatch.setattr(trainable.tune, "get_checkpoint", lambda: checkpoint)
    reports = []

    def report(metrics, checkpoint=None):
        saved = None
        if checkpoint is not None:  # its folder is gone after the call: keep a copy
            saved = tmp_path / f"ckpt-{metrics['epoch']}"
            saved.mkdir(parents=True)
            (saved / "checkpoint.pt").write_bytes(
                (Path(checkpoint.path) / "checkpoint.pt").read_bytes())
        reports.append((metrics, saved))

    monkeypatch.setattr(trainable.tune, "report", report)
    trainable.train_trial({}, spec=spec, data=data, weights={"none": Weights(None, "none")})
    return reports


def test_the_trainable_keeps_its_best_epoch_in_every_later_checkpoint(monkeypatch, tmp_path):
    reports = run_trial(monkeypatch, tmp_path, [0.5, 0.9, 0.7, 0.9])
    assert [m["score"] for m, _ in reports] == [0.5, 0.9, 0.9, 0.9]
    assert [m["score_epoch"] for m, _ in reports] == [1, 2, 2, 2]  # a tie does not replace it
    saved = {m["epoch"]: path for m, path in reports}
    assert saved[2] is not None and saved[4] is not None  # the improving epoch and the last
    at_best = torch.load(saved[2] / "checkpoint.pt", weights_only=True)
    last = torch.load(saved[4] / "checkpoint.pt", weights_only=True)
    assert at_best["best"] == {"epoch": 2, "score": 0.9}  # the model itself is the best
    assert last["best"]["epoch"] == 2
    best = model_state(last)
    assert all(torch.equal(best[k], at_best["model"][k]) for k in best)
    assert not all(torch.equal(last["model"][k], at_best["model"][k]) for k in best)


def test_a_resumed_trial_goes_on_from_the_best_it_had(monkeypatch, tmp_path):
    from ray import tune

    first = run_trial(monkeypatch, tmp_path / "a", [0.5, 0.9, 0.7, 0.6])
    third = next(path for m, path in first if m["epoch"] == 3)
    assert third is None  # not improving, not the last: no checkpoint
    second = next(path for m, path in first if m["epoch"] == 2)
    again = run_trial(monkeypatch, tmp_path / "b", [0.8, 0.95], tune.Checkpoint.from_directory(second))
    assert [(m["epoch"], m["score"], m["score_epoch"]) for m, _ in again] == [(3, 0.9, 2), (4, 0.95, 4)]
