"""The torchvision classifiers model.arch can name, and where each keeps what tuner changes.

A table, without torch (spec validation reads it, and must stay light): for each architecture the
first convolution (adapted to the data's channels), the classifier layer (replaced), and the
stages, input to output, that freeze policies and layer_decay work by. tuner/model.py does the
surgery on the torchvision model by these paths.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backbone:
    """Where tuner's surgery happens in one torchvision architecture (dotted attribute paths)."""

    name: str  # torchvision.models.get_model's name
    family: str
    stem: str  # the first convolution: fitted to the data's channels (model.conv1)
    stem_norm: str | None  # its BatchNorm, whose statistics restart with a re-initialised stem
    head: str  # the classifier's last Linear: replaced for the data's classes
    # (stage name, module or parameter paths), input to output; with the head they hold every
    # parameter exactly once (tests/test_backbones.py checks it)
    stages: tuple[tuple[str, tuple[str, ...]], ...]
    input_side: int | None = None  # the one input size it takes (ViT: its position embeddings)
    min_side: int = 1  # the smallest input side whose feature maps do not shrink to nothing

    @property
    def stage_names(self) -> tuple[str, ...]:
        """The stages' names, input to output."""
        return tuple(name for name, _ in self.stages)

    def describe(self) -> str:
        """One line for the dry run: the stages and where the adapted and replaced layers are."""
        return (f"{self.name} ({self.family}): first convolution {self.stem}, classifier "
                f"{self.head}; stages (input to output): {', '.join(self.stage_names)}")


def _resnet(name: str) -> Backbone:
    return Backbone(name, "resnet", "conv1", "bn1", "fc",
                    (("conv1", ("conv1", "bn1")),
                     *((f"layer{i}", (f"layer{i}",)) for i in range(1, 5))))


def _efficientnet(name: str) -> Backbone:
    # features[0] is the stem, features[1..7] torchvision's seven MBConv stages, features[8] the
    # last 1x1 convolution ("top", as Keras calls it); classifier is Dropout then Linear.
    return Backbone(name, "efficientnet", "features.0.0", "features.0.1", "classifier.1",
                    (("stem", ("features.0",)),
                     *((f"stage{i}", (f"features.{i}",)) for i in range(1, 8)),
                     ("top", ("features.8",))))


def _mobilenet_v3(name: str, groups: tuple[tuple[int, ...], ...]) -> Backbone:
    # The inverted-residual blocks grouped by resolution: each group starts at a stride-2 block
    # (torchvision keeps them in one flat Sequential). The last 1x1 convolution and the
    # classifier's hidden Linear are pretrained too: they make the "top" stage.
    last = groups[-1][-1] + 1
    return Backbone(name, "mobilenet_v3", "features.0.0", "features.0.1", "classifier.3",
                    (("stem", ("features.0",)),
                     *((f"stage{i}", tuple(f"features.{b}" for b in blocks))
                       for i, blocks in enumerate(groups, 1)),
                     ("top", (f"features.{last}", "classifier.0"))))


def _convnext(name: str) -> Backbone:
    # features: stem, stage, downsample, stage, ... ; each downsample goes with the stage after it.
    # The classifier's LayerNorm is pretrained: with the last stage. Four 2x downsamplings after
    # the 4x stem: smaller inputs end in 0x0 maps.
    return Backbone(name, "convnext", "features.0.0", None, "classifier.2",
                    (("stem", ("features.0",)), ("stage1", ("features.1",)),
                     ("stage2", ("features.2", "features.3")),
                     ("stage3", ("features.4", "features.5")),
                     ("stage4", ("features.6", "features.7", "classifier.0"))),
                    min_side=32)


def _regnet(name: str) -> Backbone:
    return Backbone(name, "regnet", "stem.0", "stem.1", "fc",
                    (("stem", ("stem",)),
                     *((f"block{i}", (f"trunk_output.block{i}",)) for i in range(1, 5))))


def _vit(name: str, layers: int) -> Backbone:
    # The patch embedding, class token and position embeddings come first; then one stage per
    # encoder block (as BEiT's layer-wise decay); the final LayerNorm goes with the last block.
    blocks = [(f"block{i}", (f"encoder.layers.encoder_layer_{i}",)) for i in range(layers)]
    blocks[-1] = (blocks[-1][0], (*blocks[-1][1], "encoder.ln"))
    return Backbone(name, "vit", "conv_proj", None, "heads.head",
                    (("embed", ("conv_proj", "class_token", "encoder.pos_embedding")), *blocks),
                    input_side=224)


BACKBONES: dict[str, Backbone] = {
    b.name: b for b in (
        *(_resnet(f"resnet{d}") for d in (18, 34, 50, 101, 152)),
        *(_efficientnet(f"efficientnet_b{i}") for i in range(8)),
        _mobilenet_v3("mobilenet_v3_small", ((1,), (2, 3), (4, 5, 6, 7, 8), (9, 10, 11))),
        _mobilenet_v3("mobilenet_v3_large",
                      ((1,), (2, 3), (4, 5, 6), (7, 8, 9, 10, 11, 12), (13, 14, 15))),
        *(_convnext(f"convnext_{s}") for s in ("tiny", "small", "base", "large")),
        # regnet_y_128gf is left out: its only ImageNet weights are SWAG's, at 384x384.
        *(_regnet(f"regnet_y_{s}") for s in ("400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf",
                                             "32gf")),
        _vit("vit_b_16", 12), _vit("vit_b_32", 12), _vit("vit_l_16", 24), _vit("vit_l_32", 24),
    )
}
ARCHS = tuple(BACKBONES)


def backbone(arch: str) -> Backbone:
    """The table entry of a supported architecture. Raises ValueError naming the supported ones."""
    try:
        return BACKBONES[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; supported: {', '.join(ARCHS)}") from None


def input_problem(arch: str, side: int) -> str | None:
    """Why square inputs of `side` pixels do not fit the architecture, or None."""
    b = backbone(arch)
    if b.input_side is not None and side != b.input_side:
        return (f"{arch} takes {b.input_side}x{b.input_side} inputs only (its position embeddings "
                f"are made for that size), not {side}x{side}")
    if side < b.min_side:
        return (f"{arch} needs inputs of at least {b.min_side}x{b.min_side} (its downsamplings "
                f"leave nothing of {side}x{side})")
    return None
