"""The trial's training step: eager or torch.compile'd, the same numbers and the same saved state."""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from tuner.batches import DeviceSplit, train_batches
from tuner.data import Split
from tuner.spec import Augment
from tuner.trainable import compiled, divergence, evaluate, train_epoch


def small_net() -> nn.Module:
    # no conv bias before BatchNorm (as in ResNet): its gradient is ~0, and Adam would turn
    # rounding noise there into full-size steps
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def split(n: int = 70) -> DeviceSplit:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    return DeviceSplit.put(Split(images, np.arange(n) % 10), torch.device("cpu"))


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


def test_tpe_ranks_the_worst_loss_a_diverged_trial_reports():
    """A diverged trial reports val_loss = inf: HyperOpt ranks it last and keeps suggesting (NaN
    would poison TPE's ordering of losses)."""
    from ray import tune
    from ray.tune.search.hyperopt import HyperOptSearch

    searcher = HyperOptSearch(n_initial_points=2, random_state_seed=0)
    searcher.set_search_properties("val_loss", "min", {"lr": tune.loguniform(1e-4, 1e-1)})
    for i, loss in enumerate([math.inf, 0.4, 0.3]):
        assert searcher.suggest(f"t{i}") is not None
        searcher.on_trial_complete(f"t{i}", {"val_loss": loss})
    assert searcher.suggest("t3") is not None
    done = [loss for loss in searcher._hpopt_trials.losses() if loss is not None]
    assert sorted(done) == [0.3, 0.4, math.inf]
