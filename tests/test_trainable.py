"""The trial's training step: eager or torch.compile'd, the same numbers and the same saved state."""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from tuner.batches import DeviceSplit, train_batches
from tuner.data import Pixels, Split
from tuner.spec import Augment
from tuner.trainable import (
    DIVERGED_LOSS,
    compiled,
    divergence,
    diverged_report,
    evaluate,
    train_epoch,
)


def small_net() -> nn.Module:
    # no conv bias before BatchNorm (as in ResNet): its gradient is ~0, and Adam would turn
    # rounding noise there into full-size steps
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def split(n: int = 70) -> DeviceSplit:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    return DeviceSplit.put(Split(images, np.arange(n) % 10), torch.device("cpu"), Pixels((0.5,), (0.25,)))


def one_epoch(model: nn.Module, step_model: nn.Module, data: DeviceSplit):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = train_batches(data, 32, seed=0, epoch=0, aug=Augment())  # 32 + 32 + 6: two shapes
    return train_epoch(step_model.train(), optimizer, batches, "fp32", torch.device("cpu"))


def test_not_compiled_is_the_module_itself():
    model = small_net()
    assert compiled(model, "none") is model


def test_compiled_steps_train_the_plain_module_as_eager_steps_do(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    data = split()
    eager = small_net()
    plain = copy.deepcopy(eager)
    step_model = compiled(plain, "default")
    assert step_model is not plain

    eager_loss, eager_acc, eager_seen = one_epoch(eager, eager, data)
    loss, acc, seen = one_epoch(plain, step_model, data)

    assert seen == eager_seen == 70  # the short last batch went through the compiled model too
    assert abs(loss - eager_loss) < 1e-4 * abs(eager_loss) and acc == eager_acc
    # the updates landed in the plain module, whose saved state has its own key names
    for (name, p), (eager_name, q) in zip(plain.state_dict().items(), eager.state_dict().items(),
                                          strict=True):
        assert name == eager_name and not name.startswith("_orig_mod")
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4)
    assert not torch.equal(plain[0].weight, small_net()[0].weight)  # it did train
    assert np.allclose(evaluate(plain, data, 1024, "fp32"), evaluate(eager, data, 1024, "fp32"), rtol=1e-3)


@pytest.mark.parametrize("train_loss, val_loss, message", [
    (0.5, 0.6, None),
    (float("nan"), 0.6, "loss became nan in epoch 3"),
    (float("inf"), float("nan"), "loss became inf in epoch 3"),
    (0.5, float("nan"), "validation loss became nan in epoch 3"),
    (0.5, float("inf"), "validation loss became inf in epoch 3"),
])
def test_a_non_finite_training_or_validation_loss_stops_the_trial(train_loss, val_loss, message):
    assert divergence(train_loss, val_loss, 3) == message


def test_a_diverged_trial_reports_the_worst_scores_in_a_form_hyperopt_takes():
    """NaN logits: evaluate() scores the share of class 0 (the argmax of NaN) and a NaN loss. The
    trial's last report says accuracy 0 and a finite loss above any other, which HyperOpt ranks
    last under either metric and keeps suggesting after (NaN would poison TPE's ordering)."""
    from ray import tune
    from ray.tune.search.hyperopt import HyperOptSearch

    data = split()
    model = small_net().eval()
    with torch.no_grad():
        model[-1].bias.fill_(math.nan)
    val_loss, val_acc = evaluate(model, data, 1024, "fp32")
    assert math.isnan(val_loss) and val_acc == pytest.approx(0.1)  # 7 of 70 images are class 0
    error = divergence(0.5, val_loss, 2)
    report = diverged_report({"epoch": 2, "val_loss": val_loss, "val_accuracy": val_acc}, error)
    assert report == {"epoch": 2, "val_loss": DIVERGED_LOSS, "val_accuracy": 0.0, "error": error}
    assert math.isfinite(DIVERGED_LOSS) and DIVERGED_LOSS >= torch.finfo(torch.float32).max

    for metric, mode, others in (("val_loss", "min", [0.4, 1e30]), ("val_accuracy", "max", [0.1, 0.3])):
        searcher = HyperOptSearch(n_initial_points=2, random_state_seed=0)
        searcher.set_search_properties(metric, mode, {"lr": tune.loguniform(1e-4, 1e-1)})
        for i, value in enumerate([report[metric], *others]):
            assert searcher.suggest(f"t{i}") is not None
            searcher.on_trial_complete(f"t{i}", {metric: value})
        assert searcher.suggest("t3") is not None
        trials = searcher._hpopt_trials
        losses = [t["result"].get("loss") for t in trials.trials][:3]  # HyperOpt minimises
        assert losses[0] == max(losses) and losses.count(losses[0]) == 1, (metric, losses)
        assert math.isfinite(trials.average_best_error())  # its summary of the results


def test_label_smoothing_changes_the_training_loss_not_the_validation_loss():
    data = split()
    eps = 0.3
    model = small_net()
    with torch.no_grad():
        model[-1].weight *= 50  # confident logits, where smoothing matters most

    def epoch(smoothing):  # on a copy: BatchNorm's running statistics move in training mode
        net = copy.deepcopy(model)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.0)  # lr 0: the weights stay
        batches = train_batches(data, 32, seed=0, epoch=0, aug=Augment())
        loss, *_ = train_epoch(net.train(), optimizer, batches, "fp32", torch.device("cpu"),
                               label_smoothing=smoothing)
        return loss, evaluate(net, data, 1024, "fp32")

    (plain, val_plain), (smoothed, val_smoothed) = epoch(0.0), epoch(eps)
    # by hand: (1 - eps) x CE + eps x the mean over classes of -log p (BatchNorm in training mode
    # sees the same batches, so the logits are those train_epoch saw)
    ce = uniform = 0.0
    with torch.no_grad():
        for x, y in train_batches(data, 32, seed=0, epoch=0, aug=Augment()):
            logp = model.train()(x).log_softmax(1)
            ce += -logp.gather(1, y[:, None]).sum().item()
            uniform += -logp.mean(1).sum().item()
    ce, uniform = ce / len(data), uniform / len(data)
    assert plain == pytest.approx(ce, rel=1e-5)
    assert smoothed == pytest.approx((1 - eps) * ce + eps * uniform, rel=1e-5)
    assert abs(smoothed - plain) > 0.01
    assert val_smoothed == val_plain  # val_loss is plain cross-entropy whatever trains


def test_the_scheduler_steps_once_per_batch():
    data = split()  # 70 images at batch 32: 2 batches (the 6 left over join the second)
    model = small_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** step)
    train_epoch(model.train(), optimizer, train_batches(data, 32, 0, 0, Augment()), "fp32",
                torch.device("cpu"), scheduler)
    assert scheduler.last_epoch == 2 and optimizer.param_groups[0]["lr"] == 0.25
