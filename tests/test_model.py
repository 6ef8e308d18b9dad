"""Model surgery, freezing, optimizer groups, and weights through torchvision's own API."""

import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from tuner.errors import InputError
from tuner.model import (
    Weights,
    apply_freeze,
    build_model,
    frozen_stages,
    make_optimizer,
    resolve_weights,
    set_train_mode,
)
from tuner.spec import STAGES, Model, Train

HUB_FILE = "resnet18-f37072fd.pth"


@pytest.fixture(scope="module")
def pretrained() -> Weights:
    torch.manual_seed(123)
    return Weights(torchvision.models.resnet18(weights=None).state_dict(), "test")


@pytest.fixture
def torch_home(tmp_path, monkeypatch, pretrained):
    """A TORCH_HOME whose hub cache holds a planted resnet18 state_dict (no network needed)."""
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(pretrained.state_dict, ckpt / HUB_FILE)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path


def trainable_names(model: nn.Module) -> set[str]:
    return {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}


# --- weights ------------------------------------------------------------------------------------


def test_imagenet_weights_come_from_the_hub_cache(torch_home, pretrained):
    w = resolve_weights(Model(weights="imagenet"))
    assert w.label.startswith("imagenet ResNet18_Weights.IMAGENET1K_V1 sha256:")
    for k, v in pretrained.state_dict.items():
        assert torch.equal(w.state_dict[k], v)
    model = build_model(Model(conv1="sum"), w, in_channels=1, num_classes=10)
    assert torch.equal(model.layer3[0].conv1.weight, pretrained.state_dict["layer3.0.conv1.weight"])


def test_planted_file_that_does_not_fit_is_bad_input(tmp_path, monkeypatch):
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save({"conv1.weight": torch.zeros(3, 3)}, ckpt / HUB_FILE)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(InputError, match="does not fit resnet18"):
        resolve_weights(Model(weights="imagenet"))


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty hub cache and a download that fails as it does on a machine with no network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", refuse)


def test_missing_imagenet_weights_are_bad_input_when_strict(offline, tmp_path):
    with pytest.raises(InputError) as e:
        resolve_weights(Model(weights="imagenet"))
    assert str(tmp_path / "hub" / "checkpoints" / HUB_FILE) in str(e.value)
    assert "model.weights: none" in str(e.value)


def test_missing_imagenet_weights_fall_back_loudly(offline, caplog):
    w = resolve_weights(Model(weights="imagenet", weights_fallback="none"))
    assert w.state_dict is None
    assert w.label.startswith("none (fallback")
    assert "RANDOM INIT" in caplog.text


def test_weights_file_path(tmp_path, pretrained):
    path = tmp_path / "w.pt"
    torch.save({"model": pretrained.state_dict, "optimizer": {}}, path)  # a tuner checkpoint
    w = resolve_weights(Model(weights=str(path)))
    assert w.label.startswith(f"file {path}")
    assert torch.equal(w.state_dict["fc.weight"], pretrained.state_dict["fc.weight"])


def test_weights_file_missing_or_misshaped(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        resolve_weights(Model(weights=str(tmp_path / "nope.pt")))
    bad = tmp_path / "bad.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, bad)
    with pytest.raises(InputError, match="does not fit resnet18"):
        resolve_weights(Model(weights=str(bad)))
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(InputError, match="not a torch state_dict"):
        resolve_weights(Model(weights=str(tmp_path / "junk.pt")))


def test_no_weights_means_random_init():
    assert resolve_weights(Model(weights="none")) == Weights(None, "none (random init)")


# --- surgery ------------------------------------------------------------------------------------


@pytest.mark.parametrize("small", [False, True])
def test_shapes(pretrained, small):
    model = build_model(Model(small_input_stem=small), pretrained, in_channels=1, num_classes=10)
    assert model.conv1.in_channels == 1 and model.conv1.weight.shape == (64, 1, 7, 7)
    assert model.conv1.stride == ((1, 1) if small else (2, 2))
    assert isinstance(model.maxpool, nn.Identity) == small
    assert (model.fc.in_features, model.fc.out_features) == (512, 10)
    assert model.eval()(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_conv1_sum_keeps_pretrained_filters(pretrained):
    model = build_model(Model(conv1="sum"), pretrained, 1, 10)
    expected = pretrained.state_dict["conv1.weight"].sum(dim=1, keepdim=True)
    assert torch.allclose(model.conv1.weight, expected)


def test_conv1_reinit_is_fresh_xavier(pretrained):
    model = build_model(Model(conv1="reinit"), pretrained, 1, 10)
    w = model.conv1.weight
    expected = pretrained.state_dict["conv1.weight"].sum(dim=1, keepdim=True)
    assert not torch.allclose(w, expected)
    bound = (6 / (1 * 49 + 64 * 49)) ** 0.5  # xavier_uniform: sqrt(6 / (fan_in + fan_out))
    assert w.abs().max() <= bound and w.abs().max() > 0.8 * bound


def test_fc_init(pretrained):
    model = build_model(Model(), pretrained, 1, 10)
    bound = (6 / (512 + 10)) ** 0.5
    assert model.fc.weight.abs().max() <= bound
    assert model.fc.bias.abs().max() <= 1 / 512**0.5


def test_conv1_three_channels_keeps_weights(pretrained):
    model = build_model(Model(conv1="sum"), pretrained, 3, 10)
    assert torch.equal(model.conv1.weight, pretrained.state_dict["conv1.weight"])


# --- freezing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("policy, conv1, trains", [
    ("none", "sum", {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"}),
    ("head", "sum", {"fc"}),
    ("head", "reinit", {"fc", "conv1"}),  # a fresh conv1 must learn
    ("until:layer2", "sum", {"layer3", "layer4", "fc"}),
    ("until:conv1", "sum", {"layer1", "layer2", "layer3", "layer4", "fc"}),
    ("until:layer4", "reinit", {"conv1", "fc"}),
])
def test_which_parameters_train(pretrained, policy, conv1, trains):
    spec = Model(freeze=policy, conv1=conv1)
    model = build_model(spec, pretrained, 1, 10)
    apply_freeze(model, spec, epoch=0)
    assert trainable_names(model) == trains


def test_gradual_unfreezes_one_stage_per_epoch_from_the_head():
    assert frozen_stages("gradual", 0) == STAGES
    assert frozen_stages("gradual", 1) == ("conv1", "layer1", "layer2", "layer3")
    assert frozen_stages("gradual", 4) == ("conv1",)
    assert frozen_stages("gradual", 5) == ()
    assert frozen_stages("gradual", 9) == ()


def test_frozen_batchnorm_stays_in_eval_mode(pretrained):
    spec = Model(freeze="until:layer2")
    model = build_model(spec, pretrained, 1, 10)
    set_train_mode(model, apply_freeze(model, spec, 0))
    assert not model.bn1.training and not model.layer2[1].bn2.training
    assert model.layer3[0].bn1.training and model.fc.training


def test_a_training_step_changes_only_what_trains(pretrained):
    spec = Model(freeze="head", conv1="sum")
    model = build_model(spec, pretrained, 1, 10)
    opt = make_optimizer(model, spec, Train(lr=1e-2))
    set_train_mode(model, apply_freeze(model, spec, 0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = nn.functional.cross_entropy(model(torch.randn(8, 1, 28, 28)), torch.arange(8))
    loss.backward()
    opt.step()
    after = model.state_dict()
    assert not torch.equal(before["fc.weight"], after["fc.weight"])
    for key in ("conv1.weight", "layer2.0.conv1.weight", "bn1.running_mean", "layer4.1.bn2.running_var"):
        assert torch.equal(before[key], after[key]), key


@pytest.mark.parametrize("optimizer, cls", [("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)])
def test_head_learning_rate_multiplier(pretrained, optimizer, cls):
    model = build_model(Model(), pretrained, 1, 10)
    opt = make_optimizer(model, Model(head_lr_multiplier=10), Train(lr=1e-4, optimizer=optimizer))
    assert isinstance(opt, cls)
    body, head = opt.param_groups
    assert body["lr"] == pytest.approx(1e-4) and head["lr"] == pytest.approx(1e-3)
    assert head["params"] == list(model.fc.parameters())
    assert len(body["params"]) + 2 == len(list(model.parameters()))
