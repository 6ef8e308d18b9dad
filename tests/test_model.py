"""Model surgery, freezing, optimizer groups, and weights through torchvision's own API."""

import hashlib
import urllib.error
from functools import partial

import pytest
import torch
import torchvision
from torch import nn

from tuner.errors import InputError
from torchvision.models import WeightsEnum
from torchvision.models import Weights as TorchvisionWeights
from torchvision.transforms._presets import ImageClassification

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

HUB_FILE = "resnet18-f37072fd.pth"  # torchvision's name for the ImageNet file: sha256 f37072fd...


@pytest.fixture(scope="module")
def pretrained() -> Weights:
    torch.manual_seed(123)
    return Weights(torchvision.models.resnet18(weights=None).state_dict(), "test")


def planted_enum(state_dict: dict, torch_home) -> WeightsEnum:
    """A torchvision weights entry for a file we plant in the hub cache, named by torchvision's
    rule (name-<first sha256 digits>.pth), so it passes the same hash check as the real file."""
    ckpt = torch_home / "hub" / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    tmp = ckpt / "planted.tmp"
    torch.save(state_dict, tmp)
    name = f"resnet18-{hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]}.pth"
    tmp.rename(ckpt / name)

    class Planted(WeightsEnum):
        V1 = TorchvisionWeights(url=f"https://download.invalid/models/{name}",
                                transforms=partial(ImageClassification, crop_size=224), meta={})

    return Planted.V1


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path


def trainable_names(model: nn.Module) -> set[str]:
    return {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}


# --- weights ------------------------------------------------------------------------------------


def test_hub_weights_come_from_the_cache_through_torchvisions_api(torch_home, pretrained):
    enum = planted_enum(pretrained.state_dict, torch_home)
    w = resolve_weights(Model(weights="imagenet"), imagenet=enum)
    assert w.label.startswith("imagenet Planted.V1 sha256:" + enum.url.split("-")[-1][:8])
    for k, v in pretrained.state_dict.items():
        assert torch.equal(w.state_dict[k], v)
    model = build_model(Model(conv1="sum"), w, in_channels=1, num_classes=10)
    assert torch.equal(model.layer3[0].conv1.weight, pretrained.state_dict["layer3.0.conv1.weight"])


def test_a_file_under_the_imagenet_name_that_is_not_torchvisions_is_bad_input(torch_home, pretrained):
    """Any resnet18 state_dict saved as resnet18-f37072fd.pth fits the model, but is not ImageNet:
    it must never be labelled so, even with a fallback allowed."""
    ckpt = torch_home / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(pretrained.state_dict, ckpt / HUB_FILE)
    for fallback in (None, "none"):
        with pytest.raises(InputError, match="is not torchvision's file.*name says f37072fd"):
            resolve_weights(Model(weights="imagenet", weights_fallback=fallback))


def test_planted_file_that_does_not_fit_is_bad_input(torch_home):
    enum = planted_enum({"conv1.weight": torch.zeros(3, 3)}, torch_home)
    with pytest.raises(InputError, match="does not fit resnet18"):
        resolve_weights(Model(weights="imagenet"), imagenet=enum)


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


@pytest.mark.parametrize("stem, stride, pooled, layer1_size", [
    (False, 2, True, 7),  # ImageNet's stem: 28 -> 14 -> 7
    ("stride1", 1, False, 28),
    ("stride1_pool", 1, True, 14),
])
def test_shapes(pretrained, stem, stride, pooled, layer1_size):
    model = build_model(Model(small_input_stem=stem), pretrained, in_channels=1, num_classes=10)
    assert model.conv1.in_channels == 1 and model.conv1.weight.shape == (64, 1, 7, 7)
    assert model.conv1.stride == (stride, stride)
    assert isinstance(model.maxpool, nn.MaxPool2d) == pooled
    assert (model.fc.in_features, model.fc.out_features) == (512, 10)
    model.eval()
    x = torch.zeros(3, 1, 28, 28)
    stem_out = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    assert model.layer1(stem_out).shape == (3, 64, layer1_size, layer1_size)
    assert model(x).shape == (3, 10)


def test_old_specs_small_input_stem_true_is_stride1():
    assert Model(small_input_stem=True).small_input_stem == "stride1"
    assert Model(small_input_stem=False).small_input_stem is False


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
    ("head", "reinit", {"fc", "conv1", "bn1"}),  # a fresh conv1 must learn, and its bn1 with it
    ("until:layer2", "sum", {"layer3", "layer4", "fc"}),
    ("until:conv1", "sum", {"layer1", "layer2", "layer3", "layer4", "fc"}),
    ("until:layer4", "reinit", {"conv1", "bn1", "fc"}),
    ("gradual", "reinit", {"conv1", "bn1", "fc"}),
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


@pytest.mark.parametrize("policy", ["head", "gradual", "until:conv1", "until:layer3"])
def test_a_fresh_conv1_trains_with_its_bn1_statistics(pretrained, policy):
    """bn1's ImageNet running statistics describe the old conv1's outputs: with a new conv1 they
    start afresh and bn1 learns (train mode, statistics updated) even when its stage is frozen."""
    state = {**pretrained.state_dict, "bn1.running_mean": torch.full((64,), 0.5)}
    spec = Model(freeze=policy, conv1="reinit")
    model = build_model(spec, Weights(state, "test"), 1, 10)
    assert torch.equal(model.bn1.running_mean, torch.zeros(64))  # the planted 0.5 is gone
    set_train_mode(model, apply_freeze(model, spec, 0))
    assert model.bn1.training and model.bn1.weight.requires_grad
    before = model.bn1.running_var.clone()
    model(torch.randn(4, 1, 28, 28))
    assert not torch.equal(before, model.bn1.running_var)


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


@pytest.mark.parametrize("optimizer, cls", [
    ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD),
])
def test_head_learning_rate_multiplier(pretrained, optimizer, cls):
    model = build_model(Model(), pretrained, 1, 10)
    opt = make_optimizer(model, Model(head_lr_multiplier=10), Train(lr=1e-4, optimizer=optimizer))
    assert isinstance(opt, cls)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == pytest.approx({"body": 1e-4, "body_no_decay": 1e-4, "head": 1e-3, "head_no_decay": 1e-3})
    head = [p for g in opt.param_groups if g["name"].startswith("head") for p in g["params"]]
    assert {id(p) for p in head} == {id(p) for p in model.fc.parameters()}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


@pytest.mark.parametrize("decay_norm_and_bias", [False, True])
def test_no_weight_decay_on_norm_and_bias_unless_asked(pretrained, decay_norm_and_bias):
    model = build_model(Model(), pretrained, 1, 10)
    train = Train(optimizer="adamw", weight_decay=0.05, decay_norm_and_bias=decay_norm_and_bias)
    opt = make_optimizer(model, Model(), train)
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    names = dict(model.named_parameters())
    norm_and_bias = {f"{m_name}.{p_name}" for m_name, m in model.named_modules()
                     if isinstance(m, nn.BatchNorm2d) for p_name in ("weight", "bias")}
    norm_and_bias |= {n for n in names if n.endswith(".bias")}
    assert {"layer1.0.bn1.weight", "layer2.0.downsample.1.weight", "fc.bias"} <= norm_and_bias
    for name, p in names.items():
        expected = 0.0 if name in norm_and_bias and not decay_norm_and_bias else 0.05
        assert decay[id(p)] == expected, name
    # and AdamW really leaves them alone: with no gradient, only decoupled decay could move them
    bn = model.layer1[0].bn1.weight
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    before, conv_before = bn.detach().clone(), model.conv1.weight.detach().clone()
    opt.step()
    assert torch.equal(bn, before) != decay_norm_and_bias
    assert not torch.equal(model.conv1.weight, conv_before)  # decayed: 1 - lr * wd


def test_sgd_nesterov_reaches_torch(pretrained):
    model = build_model(Model(), pretrained, 1, 10)
    opt = make_optimizer(model, Model(), Train(optimizer="sgd", momentum=0.9, nesterov=True))
    assert all(g["nesterov"] and g["momentum"] == 0.9 for g in opt.param_groups)
