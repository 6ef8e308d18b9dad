"""The trial's training step: eager or torch.compile'd, the same numbers and the same saved state."""

import copy

import numpy as np
import torch
from torch import nn

from tuner.batches import DeviceSplit, train_batches
from tuner.data import Split
from tuner.spec import Augment
from tuner.trainable import compiled, evaluate, train_epoch


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
