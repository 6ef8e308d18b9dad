"""model.arch beyond ResNet-18: one architecture per family, at random init and small sizes on the
CPU (a ViT only takes 224x224): the first convolution adapted from its own filters, the classifier
replaced, a training step, freeze policies and layer_decay by the arch's own stages, weights files
and torchvision's entries, the memory estimate and the model folder."""

import copy
import hashlib
from functools import cache, partial

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from helpers import draw_picture
from torch import nn
from torchvision.models import Weights as TorchvisionWeights
from torchvision.models import WeightsEnum
from torchvision.transforms._presets import ImageClassification

from tuner import artifact, folder, memory, predict
from tuner.backbones import ARCHS, BACKBONES, backbone
from tuner.data import Dataset, Pixels, Split
from tuner.errors import InputError
from tuner.model import (
    Weights,
    adapt_input_conv,
    apply_freeze,
    build_model,
    describe,
    imagenet_weights,
    make_optimizer,
    param_groups,
    pretrained_card,
    resolve_weights,
    set_train_mode,
    stage_parameters,
    surgery,
)
from tuner.spec import Model, Train
from tuner.specfile import validate

# One architecture per family; the side of the square inputs it is tried at.
FAMILIES = {"resnet50": 32, "efficientnet_b0": 32, "mobilenet_v3_small": 32, "convnext_tiny": 32,
            "regnet_y_400mf": 32, "vit_b_16": 224}
CLASSES = 3


@cache
def source(arch: str) -> dict[str, torch.Tensor]:
    """A random state_dict of torchvision's arch (3 channels, 1000 classes): pretrained stand-in."""
    torch.manual_seed(0)
    return torchvision.models.get_model(arch, weights=None).state_dict()


def pretrained(arch: str, in_channels: int = 1, **spec) -> tuple[nn.Module, Model]:
    """The arch built from `source` for `in_channels` and CLASSES classes."""
    model_spec = Model(arch=arch, **spec)
    return build_model(model_spec, Weights(source(arch), "test"), in_channels, CLASSES), model_spec


@cache
def grey(arch: str) -> nn.Module:
    """pretrained(arch) for 1 channel, built once (building is most of a test's time): tests only
    change its requires_grad and train mode, or train a copy."""
    return pretrained(arch)[0]


def trainable(model: nn.Module) -> set[int]:
    return {id(p) for p in model.parameters() if p.requires_grad}


def ids(params) -> set[int]:
    return {id(p) for p in params}


# --- the table -----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_every_parameter_is_in_exactly_one_stage_or_the_head(arch):
    """So that freezing and layer_decay miss no parameter and count none twice. Built on the meta
    device (no memory, no init); RegNets cannot be (their widths are computed with tensors): the
    two smallest are built for real, the larger ones share their layout."""
    if arch.startswith("regnet") and arch not in ("regnet_y_400mf", "regnet_y_800mf"):
        pytest.skip("same layout as regnet_y_400mf; too large to build in a test")
    device = "cpu" if arch.startswith("regnet") else "meta"
    with torch.device(device):
        model = torchvision.models.get_model(arch, weights=None)
    b = backbone(arch)
    counted = [id(p) for stage in b.stage_names for p in stage_parameters(model, arch, stage)]
    counted += [id(p) for p in model.get_submodule(b.head).parameters()]
    assert sorted(counted) == sorted(id(p) for p in model.parameters())
    assert isinstance(model.get_submodule(b.stem), nn.Conv2d)
    assert isinstance(model.get_submodule(b.head), nn.Linear)
    assert model.get_submodule(b.stem).in_channels == 3  # the first convolution indeed
    # apply_freeze trains the first stage with a re-initialised stem: the stem must be there
    assert id(model.get_submodule(b.stem).weight) in ids(stage_parameters(model, arch, b.stage_names[0]))


def test_adapt_input_conv_sums_keeps_or_repeats_the_filters():
    w = torch.randn(8, 3, 3, 3)
    assert torch.equal(adapt_input_conv(w, 3), w)
    assert torch.allclose(adapt_input_conv(w, 1), w.sum(dim=1, keepdim=True))
    five = adapt_input_conv(w, 5)
    assert five.shape == (8, 5, 3, 3)
    assert torch.allclose(five[:, :3], w * 3 / 5) and torch.allclose(five[:, 3:], w[:, :2] * 3 / 5)


# --- surgery and a training step -------------------------------------------------------------------


@pytest.mark.parametrize("arch", FAMILIES)
def test_the_first_convolution_is_adapted_from_its_own_filters_and_the_head_replaced(arch):
    b = backbone(arch)
    stem_key = f"{b.stem}.weight"
    assert torch.allclose(grey(arch).get_submodule(b.stem).weight,
                          source(arch)[stem_key].sum(1, keepdim=True))
    rgb, spec = pretrained(arch, in_channels=3)
    assert torch.equal(rgb.get_submodule(b.stem).weight, source(arch)[stem_key])
    state = rgb.state_dict()
    body = [k for k in source(arch) if k not in (stem_key, f"{b.head}.weight", f"{b.head}.bias")]
    assert all(torch.equal(state[k], source(arch)[k]) for k in body)  # loaded strictly, as they were
    head = rgb.get_submodule(b.head)
    assert head.out_features == CLASSES and head.in_features == source(arch)[f"{b.head}.weight"].shape[1]
    said = surgery(spec, Weights(source(arch), "test"), 1, CLASSES)
    assert f"{b.stem} adapted 3->1 channels (summed)" in said and f"{b.head} re-initialised (1000->3" in said


@pytest.mark.parametrize("arch", FAMILIES)
def test_a_forward_and_a_training_step_run(arch):
    torch.manual_seed(0)
    spec = Model(arch=arch)
    model = copy.deepcopy(grey(arch))
    side = FAMILIES[arch]
    # BatchNorm needs two images; a ViT (LayerNorm) trains on one, at a sixth of a CNN's cost here
    batch = 1 if arch.startswith("vit") else 2
    x, y = torch.randn(batch, 1, side, side), torch.tensor([0, 2][:batch])
    set_train_mode(model, apply_freeze(model, spec, 0), arch)
    optimizer = make_optimizer(model, spec, Train(lr=1e-3))
    head = model.get_submodule(backbone(arch).head)
    before = head.weight.detach().clone()
    logits = model(x)
    assert logits.shape == (batch, CLASSES)
    nn.functional.cross_entropy(logits, y).backward()
    optimizer.step()
    assert not torch.equal(head.weight, before)
    assert model.eval()(x).isfinite().all()


# --- freezing and layer_decay by the arch's stages --------------------------------------------------


@pytest.mark.parametrize("arch", FAMILIES)
def test_freeze_policies_freeze_the_stages_they_name(arch):
    b = backbone(arch)
    stages = b.stage_names
    model = grey(arch)
    head = ids(model.get_submodule(b.head).parameters())

    def of(names):
        return set().union(*(ids(stage_parameters(model, arch, s)) for s in names))

    def trains(freeze, epoch=0, **extra):
        apply_freeze(model, Model(arch=arch, freeze=freeze, **extra), epoch)
        return trainable(model)

    everything = ids(model.parameters())
    assert trains("none") == everything
    assert trains("head") == head
    assert trains("head", conv1="reinit") == head | of(stages[:1])  # a fresh stem always trains
    assert trains(f"until:{stages[1]}") == everything - of(stages[:2])
    assert trains("gradual", 0) == head
    assert trains("gradual", 1) == head | of(stages[-1:])
    assert trains("gradual", len(stages)) == everything
    assert trains("lp-ft", 0) == head and trains("lp-ft", 1) == everything
    # BatchNorm in a frozen stage keeps its running statistics; elsewhere it trains
    frozen = apply_freeze(model, Model(arch=arch, freeze=f"until:{stages[1]}"), 0)
    set_train_mode(model, frozen, arch)
    for stage in stages:
        for p in stage_parameters(model, arch, stage):
            assert p.requires_grad == (stage not in frozen)
    norms = {stage: [m for path in dict(b.stages)[stage] if not path.endswith(("token", "embedding"))
                     for m in model.get_submodule(path).modules()
                     if isinstance(m, nn.modules.batchnorm._BatchNorm)] for stage in stages}
    assert all(not m.training for s in frozen for m in norms[s])
    assert all(m.training for s in stages if s not in frozen for m in norms[s])


@pytest.mark.parametrize("arch", FAMILIES)
def test_layer_decay_gives_each_earlier_stage_a_smaller_lr(arch):
    model = grey(arch)
    spec = Model(arch=arch, layer_decay=0.5, head_lr_multiplier=10)
    groups = param_groups(model, spec, Train(lr=0.1, weight_decay=1e-4))
    lrs = {g["name"].removesuffix("_no_decay"): g["lr"] for g in groups}
    stages = backbone(arch).stage_names
    assert [lrs[s] for s in stages] == pytest.approx([0.1 * 0.5 ** (len(stages) - 1 - i)
                                                      for i in range(len(stages))])
    assert lrs["head"] == pytest.approx(1.0)
    every = [id(p) for g in groups for p in g["params"]]
    assert sorted(every) == sorted(id(p) for p in model.parameters())  # each once
    no_decay = ids(p for g in groups if g["weight_decay"] == 0 for p in g["params"])
    if arch.startswith("vit"):  # the class token and position embeddings, as timm
        assert {id(model.class_token), id(model.encoder.pos_embedding)} <= no_decay


def test_the_spec_takes_each_archs_own_stage_names():
    for arch, b in BACKBONES.items():
        assert Model(arch=arch, freeze=f"until:{b.stage_names[-1]}").freeze.endswith(b.stage_names[-1])
    with pytest.raises(ValueError, match="stage one of stem, stage1"):
        Model(arch="efficientnet_b0", freeze="until:layer3")


def test_the_dry_run_names_the_archs_stages_and_what_freeze_and_layer_decay_do():
    lines = describe(Model(arch="vit_b_16", freeze="until:block3", layer_decay=0.5), None, 3, 3)
    assert lines[0].startswith("model: vit_b_16 (vit): first convolution conv_proj, classifier "
                               "heads.head; stages (input to output): embed, block0, block1")
    assert "freeze until:block3: the first epoch trains heads.head and block4, block5" in lines[1]
    assert lines[1].endswith("frozen: embed, block0, block1, block2, block3")
    assert lines[2].startswith("  layer_decay 0.5: lr x embed 0.000244, block0 0.000488")
    assert lines[2].endswith("block11 1, heads.head 1")


# --- weights --------------------------------------------------------------------------------------


def test_a_state_dict_of_another_arch_is_bad_input(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(InputError, match="does not fit mobilenet_v3_small: missing features"):
        resolve_weights(Model(arch="mobilenet_v3_small", weights=str(path)))
    mine = tmp_path / "mobilenet.pt"
    state = dict(source("mobilenet_v3_small"))
    state["features.0.0.weight"] = state["features.0.0.weight"].sum(1, keepdim=True)  # 1 channel
    state["classifier.3.weight"], state["classifier.3.bias"] = torch.zeros(5, 1024), torch.zeros(5)
    torch.save(state, mine)
    w = resolve_weights(Model(arch="mobilenet_v3_small", weights=str(mine)))
    model = build_model(Model(arch="mobilenet_v3_small", keep_head=True), w, 1, 5)
    assert torch.equal(model.classifier[3].weight, state["classifier.3.weight"])
    state["classifier.3.weight"] = torch.zeros(5, 512)
    torch.save(state, mine)
    with pytest.raises(InputError, match=r"misshapen classifier.3.weight \(5, 512\) "
                                         r"\(mobilenet_v3_small: \(classes, 1024\)\)"):
        resolve_weights(Model(arch="mobilenet_v3_small", weights=str(mine)))


@pytest.mark.parametrize("arch, entry", [("resnet18", "ResNet18_Weights.IMAGENET1K_V1"),
                                         ("resnet50", "ResNet50_Weights.IMAGENET1K_V2"),
                                         ("efficientnet_b0", "EfficientNet_B0_Weights.IMAGENET1K_V1"),
                                         ("convnext_tiny", "ConvNeXt_Tiny_Weights.IMAGENET1K_V1"),
                                         ("vit_b_16", "ViT_B_16_Weights.IMAGENET1K_V1")])
def test_imagenet_is_the_archs_torchvision_default(arch, entry):
    card = pretrained_card(imagenet_weights(arch))
    assert card["weights"] == entry
    assert card["crop"] == 224 and card["mean"] == [0.485, 0.456, 0.406] and card["resize"] >= 224


def test_planted_imagenet_weights_of_another_arch_load_and_are_recorded(tmp_path, monkeypatch):
    """A file planted in the hub cache under torchvision's naming rule (no download here)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    tmp = ckpt / "planted.tmp"
    torch.save(source("mobilenet_v3_small"), tmp)
    name = f"mobilenet_v3_small-{hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]}.pth"
    tmp.rename(ckpt / name)

    class Planted(WeightsEnum):
        V1 = TorchvisionWeights(url=f"https://download.invalid/models/{name}",
                                transforms=partial(ImageClassification, crop_size=224, resize_size=256),
                                meta={})

    w = resolve_weights(Model(arch="mobilenet_v3_small", weights="imagenet"), imagenet=Planted.V1)
    assert w.label.startswith("imagenet Planted.V1 sha256:")
    assert w.pretrained == {"weights": "Planted.V1", "resize": 256, "crop": 224,
                            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                            "interpolation": "bilinear"}
    model = build_model(Model(arch="mobilenet_v3_small"), w, 1, CLASSES)
    assert torch.equal(model.features[1].block[0][0].weight,
                       source("mobilenet_v3_small")["features.1.block.0.0.weight"])


# --- memory and the model folder -------------------------------------------------------------------


def dataset(side: int, channels: int = 3) -> Dataset:
    shape = (channels, side, side) if channels == 3 else (side, side)

    def split(n):
        return Split(np.zeros((n, *shape), np.uint8), np.arange(n) % CLASSES)

    pixels = (Pixels(folder.IMAGENET_MEAN, folder.IMAGENET_STD, crop=side) if channels == 3
              else Pixels((0.5,), (0.5,)))
    return Dataset(split(8), split(4), split(4), "test", ("a", "b", "c"), channels, pixels)


# vit_b_32 for the ViT: the same modules as vit_b_16 (attention's tuple outputs in the peak's
# hooks) at a quarter of the cost of the five forward passes the check measures.
@pytest.mark.parametrize("arch, side", [("mobilenet_v3_small", 32), ("vit_b_32", 224)])
def test_the_memory_check_measures_any_arch(arch, side):
    spec = validate({"data": {"dataset": "imagefolder", "resize": side, "image_size": side},
                     "model": {"arch": arch, "weights": "none"}, "train": {"batch_size": 4}})
    need = memory.trial_bytes(spec, dataset(side, channels=1))
    params = sum(p.numel() for p in build_model(spec.model, Weights(None, "n"), 1, CLASSES).parameters())
    assert need["model"] == params * 4 * 4  # fp32 weights, gradients and Adam's two moments
    assert need["activations"] > 4 * side * side * 4  # more than the batch itself


def test_a_model_folder_of_another_arch_loads_back(tmp_path):
    spec = validate({"data": {"dataset": "imagefolder", "resize": 40, "image_size": 32},
                     "model": {"arch": "efficientnet_b0", "weights": "none"}})
    data = dataset(32)
    card = artifact.make_card(spec, data, trial_id="t1", config={}, scores={}, weights=None,
                              started_from="imagenet EfficientNet_B0_Weights.IMAGENET1K_V1 sha256:00")
    assert card["architecture"]["arch"] == "efficientnet_b0"
    assert card["layers"] == {"features.0.0.weight": [32, 3, 3, 3], "classifier.1.weight": [3, 1280]}
    assert card["pretrained"]["weights"] == "EfficientNet_B0_Weights.IMAGENET1K_V1"
    assert card["pretrained"]["crop"] == 224 and card["pretrained"]["resize"] == 256
    torch.manual_seed(1)
    model = build_model(spec.model, Weights(None, "n"), 3, CLASSES).eval()
    artifact.write_model(tmp_path / "model", artifact.state_bytes(model), card)
    loaded, read, _ = artifact.load(tmp_path / "model")
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(loaded(x), model(x), atol=1e-6)
    assert read["pretrained"] == card["pretrained"]
    draw_picture("red", (50, 40), np.random.default_rng(0)).save(tmp_path / "a.png")
    out = tmp_path / "p.csv"
    assert predict.main([str(tmp_path / "model"), str(tmp_path / "a.png"), "--out", str(out)]) == 0
    assert pd.read_csv(out)["predicted"].isin(["a", "b", "c"]).all()
