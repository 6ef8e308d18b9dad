"""The controlled variables: a torchvision ResNet-18, its weights, and small named surgery functions.

Weights are resolved once in the driver (`resolve_all`: every setting any trial can use) and the
resulting state_dicts are shipped to every trial, so a missing or mis-shaped file is a bad input
before any trial starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import ResNet18_Weights, WeightsEnum

from tuner.errors import InputError
from tuner.spec import STAGES, Model, Train

log = logging.getLogger(__name__)

# Which modules make up each stage; "conv1" is the whole stem.
STAGE_MODULES = {
    "conv1": ("conv1", "bn1"),
    "layer1": ("layer1",),
    "layer2": ("layer2",),
    "layer3": ("layer3",),
    "layer4": ("layer4",),
}


@dataclass(frozen=True)
class Weights:
    """The initial weights for every trial, and a label saying what they really are."""

    state_dict: dict[str, torch.Tensor] | None  # None: random init
    label: str  # recorded in spec.yaml and in every row of trials.csv
    sha256: str | None = None  # of the file they came from
    classes: tuple[str, ...] | None = None  # the file's fc classes, when a model.json names them


IMAGENET = ResNet18_Weights.IMAGENET1K_V1  # what `model.weights: imagenet` means
CHECKPOINT_FILE = "checkpoint.pt"  # a trial checkpoint's file (trainable.CHECKPOINT_FILE)
MODEL_FILE, CARD_FILE = "model.pt", "model.json"  # a run's model folder (tuner.artifact)
BACKBONE_SKIP = ("conv1.weight", "fc.weight", "fc.bias")  # adapted or replaced, never loaded as is


def resolve_weights(spec: Model, imagenet: WeightsEnum = IMAGENET) -> Weights:
    """Load and check the spec's weights: imagenet, none, a tuner run folder, a model.pt, a trial
    checkpoint (file or folder), or a torchvision-layout state_dict. Raises InputError.

    `imagenet` is the torchvision weights entry behind `model.weights: imagenet` (a parameter so that
    tests can plant a file of their own under torchvision's naming rule).
    """
    if spec.weights == "none":
        return Weights(None, "none (random init)")
    if spec.weights == "imagenet":
        cache = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(imagenet.url)
        # torch checks the hash in the name only when it downloads: check a cached file here.
        digest = check_hub_file(cache) if cache.is_file() else None
        said = io.StringIO()  # torch hub's "Downloading: ..." line: shown only if it downloaded
        try:
            # torchvision's own API: reads the torch hub cache, downloads (hash-checked) when absent.
            with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
                state = imagenet.get_state_dict(progress=False, check_hash=True)
            sys.stderr.write(said.getvalue())
        except Exception as e:  # URLError, OSError, a truncated file...
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip()
            if spec.weights_fallback == "none":
                log.warning(
                    "IMAGENET WEIGHTS UNAVAILABLE (%s; not in %s); falling back to RANDOM INIT as "
                    "model.weights_fallback says. Results are NOT fine-tuned from ImageNet.",
                    reason, cache,
                )
                return Weights(None, "none (fallback: ImageNet weights unavailable)")
            raise InputError(
                f"model.weights: imagenet: could not load {imagenet.url} ({reason}); put the file at "
                f"{cache} (set TORCH_HOME to move it), or set model.weights: none"
            ) from None
        _check_fits(state, "model.weights: imagenet", cache)
        digest = digest or _sha256(cache)
        return Weights(state, f"imagenet {imagenet} sha256:{digest[:16]}", digest,
                       tuple(imagenet.meta.get("categories") or ()) or None)
    path, kind = _weights_file(Path(spec.weights).expanduser(), spec.weights)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        said = " ".join(str(e).split())  # torch's message runs to many lines: the gist, in one
        raise InputError(f"model.weights: {path}: not a torch state_dict file of tensors "
                         f"({type(e).__name__}: {said[:200]}{'...' if len(said) > 200 else ''})"
                         ) from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state, kind = state["model"], "tuner checkpoint"
    _check_fits(state, f"model.weights: {path}", path)
    classes = None
    card = path.with_name(CARD_FILE)
    if path.name == MODEL_FILE and card.is_file():
        try:
            classes = tuple(json.loads(card.read_text())["classes"])
        except (ValueError, KeyError, TypeError):
            classes = None
        kind = "tuner model"
    digest = _sha256(path)
    return Weights(state, f"file {path.resolve()} sha256:{digest[:16]} ({kind})", digest, classes)


def _weights_file(path: Path, given: str) -> tuple[Path, str]:
    """The file behind model.weights: itself, a run folder's model/model.pt, or a checkpoint
    folder's checkpoint.pt; and what kind of file it is. Raises InputError."""
    if path.is_file():
        return path, "state_dict"
    if path.is_dir():
        for inside, kind in ((Path("model") / MODEL_FILE, "tuner model"),
                             (Path(MODEL_FILE), "tuner model"),
                             (Path(CHECKPOINT_FILE), "tuner checkpoint")):
            if (path / inside).is_file():
                return path / inside, kind
        arms = sorted(p.parent.name for p in path.glob(f"model/*/{MODEL_FILE}"))
        if arms:
            raise InputError(f"model.weights: {given} is a comparison with one model per arm "
                             f"({', '.join(arms)}); give one, e.g. {path / 'model' / arms[0]}")
        raise InputError(f"model.weights: {given}: this folder holds no model/{MODEL_FILE}, "
                         f"{MODEL_FILE} or {CHECKPOINT_FILE} (a run that has not finished? export "
                         "its best trial so far with python -m tuner.export RUN_DIR)")
    raise InputError(
        f"model.weights: {given}: no such file; give imagenet, none, a tuner run folder, a "
        "model.pt, a trial checkpoint or a state_dict path"
    )


def resolve_all(models: Iterable[Model]) -> dict[str, Weights]:
    """Each distinct weights setting among these model sections resolved once: setting (imagenet,
    none, a path) -> Weights. Trials look theirs up by their own model.weights. Raises InputError."""
    out: dict[str, Weights] = {}
    for m in models:
        if m.weights not in out:
            out[m.weights] = resolve_weights(m)
    return out


def weights_label(weights: dict[str, Weights]) -> str:
    """One line naming the weights a run uses (spec.yaml's provenance, the resume check)."""
    if len(weights) == 1:
        return next(iter(weights.values())).label
    return "; ".join(f"{setting}: {w.label}" for setting, w in sorted(weights.items()))


def _check_fits(state: object, where: str, path: Path) -> None:
    """A state_dict must hold every tensor of a torchvision resnet18 and nothing else, each of its
    shape, except conv1's input channels and fc's classes (adapted and replaced by build_model)."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{where}: {path} does not hold a state_dict (a mapping of tensors)")
    reference = torchvision.models.resnet18(weights=None).state_dict()
    missing = [k for k in reference if k not in state]
    unexpected = [k for k in state if k not in reference]
    wrong = [f"{k} {tuple(state[k].shape)} (resnet18: {tuple(v.shape)})"
             for k, v in reference.items()
             if k in state and k not in BACKBONE_SKIP and state[k].shape != v.shape]
    conv1, fc_w, fc_b = (state.get(k) for k in BACKBONE_SKIP)
    if conv1 is not None and (conv1.ndim != 4 or conv1.shape[0] != 64 or conv1.shape[2:] != (7, 7)):
        wrong.append(f"conv1.weight {tuple(conv1.shape)} (resnet18: (64, C, 7, 7))")
    if fc_w is not None and (fc_w.ndim != 2 or fc_w.shape[1] != 512):
        wrong.append(f"fc.weight {tuple(fc_w.shape)} (resnet18: (classes, 512))")
    elif fc_w is not None and fc_b is not None and fc_b.shape != fc_w.shape[:1]:
        wrong.append(f"fc.bias {tuple(fc_b.shape)} (fc.weight has {fc_w.shape[0]} classes)")
    problems = [f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"] if missing else []
    problems += [f"unexpected {', '.join(unexpected[:3])}"] if unexpected else []
    problems += [f"misshapen {', '.join(wrong[:3])}"] if wrong else []
    if problems:
        raise InputError(f"{where}: {path} does not fit resnet18: {'; '.join(problems)}")


def source_shape(state: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(conv1 input channels, fc classes) of a state_dict that passed _check_fits."""
    return int(state["conv1.weight"].shape[1]), int(state["fc.weight"].shape[0])


def check_surgery(spec: Model, weights: Weights, classes: tuple[str, ...]) -> None:
    """model.keep_head needs weights whose fc has these very classes. Raises InputError."""
    if not spec.keep_head:
        return
    if weights.state_dict is None:
        raise InputError(f"model.keep_head: true needs trained weights; {spec.weights} is "
                         f"{weights.label}")
    _, n = source_shape(weights.state_dict)
    if n != len(classes) or (weights.classes is not None and tuple(weights.classes) != tuple(classes)):
        theirs = ", ".join(weights.classes) if weights.classes else f"{n} unnamed classes"
        raise InputError(f"model.keep_head: true, but {spec.weights}'s fc has [{theirs}] and the "
                         f"data has [{', '.join(classes)}]; set model.keep_head: false for a new fc")


def surgery(spec: Model, weights: Weights, in_channels: int, num_classes: int) -> str:
    """In words, what build_model does with the weights: which tensors are loaded as they are,
    adapted, or initialised afresh (for spec.yaml and every trial row)."""
    if weights.state_dict is None:
        return "all tensors randomly initialised"
    channels, classes = source_shape(weights.state_dict)
    loaded = len(weights.state_dict) - len(BACKBONE_SKIP)
    if spec.conv1 == "reinit":
        conv1 = "conv1 re-initialised (and bn1's running statistics)"
    elif channels == in_channels:
        conv1 = f"conv1 loaded ({channels} channels)"
    else:
        how = "summed" if in_channels == 1 else "repeated"
        conv1 = f"conv1 adapted {channels}->{in_channels} channels ({how})"
    fc = (f"fc kept ({classes} classes, model.keep_head)" if spec.keep_head
          else f"fc re-initialised ({classes}->{num_classes} classes)")
    return f"{loaded} backbone tensors loaded, {conv1}, {fc}"


def check_hub_file(path: Path) -> str:
    """A hub file's sha256 must start with the hash in its name (torchvision's naming rule,
    resnet18-f37072fd.pth), so that no other file is ever labelled as torchvision's weights.
    Returns the file's sha256."""
    digest = _sha256(path)
    match = torch.hub.HASH_REGEX.search(path.name)
    expected = match.group(1) if match else ""
    if not digest.startswith(expected):
        raise InputError(
            f"model.weights: imagenet: {path} is not torchvision's file (its sha256 starts "
            f"{digest[:len(expected)]}, its name says {expected}); delete it so torchvision "
            "downloads the real one, or give your own file as model.weights: PATH"
        )
    return digest


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# --- surgery ------------------------------------------------------------------------------------


def adapt_conv1(model: nn.Module, in_channels: int, mode: str, stem: str | bool = False) -> None:
    """Fit conv1 to the data's channels: `sum` keeps the pretrained filters, `reinit` starts fresh.

    `stem` (model.small_input_stem) keeps small inputs' resolution: `stride1` makes conv1 stride 1
    and drops the max-pool, `stride1_pool` makes conv1 stride 1 and keeps the max-pool.
    """
    old = model.conv1
    new = nn.Conv2d(
        in_channels, old.out_channels, old.kernel_size, stride=1 if stem else old.stride,
        padding=old.padding, bias=False,
    )
    with torch.no_grad():
        if mode == "reinit":
            nn.init.xavier_uniform_(new.weight)
            # bn1's ImageNet statistics describe the old conv1's outputs: start them afresh.
            model.bn1.reset_running_stats()
        elif in_channels == old.in_channels:
            new.weight.copy_(old.weight)
        elif in_channels == 1:
            new.weight.copy_(old.weight.sum(dim=1, keepdim=True))  # as timm's adapt_input_conv
        else:  # repeat the RGB filters and rescale so activations keep their size
            reps = math.ceil(in_channels / old.in_channels)
            w = old.weight.repeat(1, reps, 1, 1)[:, :in_channels]
            new.weight.copy_(w * old.in_channels / in_channels)
    model.conv1 = new
    if stem == "stride1":
        model.maxpool = nn.Identity()


def replace_fc(model: nn.Module, num_classes: int) -> None:
    """A fresh output layer: Xavier-uniform weight, bias uniform in +-1/sqrt(fan_in)."""
    fc = nn.Linear(model.fc.in_features, num_classes)
    nn.init.xavier_uniform_(fc.weight)
    bound = 1 / math.sqrt(fc.in_features)
    nn.init.uniform_(fc.bias, -bound, bound)
    model.fc = fc


def build_model(spec: Model, weights: Weights, in_channels: int, num_classes: int) -> nn.Module:
    """ResNet-18 with the given initial weights loaded strictly (conv1 of the file's channels, fc
    of its classes), conv1 adapted and fc replaced (or kept: model.keep_head)."""
    model = torchvision.models.resnet18(weights=None)
    if weights.state_dict is not None:
        channels, classes = source_shape(weights.state_dict)
        model.conv1 = nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False)
        model.fc = nn.Linear(model.fc.in_features, classes)
        model.load_state_dict(weights.state_dict)
    adapt_conv1(model, in_channels, spec.conv1, spec.small_input_stem)
    if not (spec.keep_head and weights.state_dict is not None and model.fc.out_features == num_classes):
        replace_fc(model, num_classes)
    return model


# --- freezing -----------------------------------------------------------------------------------


def frozen_stages(policy: str, epoch: int, lp_epochs: int = 1) -> tuple[str, ...]:
    """The stages (input side first) whose weights stay fixed in this epoch (0-based)."""
    if policy == "none":
        return ()
    if policy == "head":
        return STAGES
    if policy == "lp-ft":  # the linear probe (fc alone), then the whole model
        return STAGES if epoch < lp_epochs else ()
    if policy == "gradual":  # epoch 0: head only; each epoch unfreezes one more stage, top down
        return STAGES[: max(0, len(STAGES) - epoch)]
    stop = policy.removeprefix("until:")
    return STAGES[: STAGES.index(stop) + 1]


def apply_freeze(model: nn.Module, spec: Model, epoch: int) -> tuple[str, ...]:
    """Set requires_grad for this epoch's policy and return the frozen stages.

    A re-initialised conv1 always trains, and its bn1 with it (weights and running statistics):
    the stem then holds nothing pretrained worth keeping.
    """
    frozen = frozen_stages(spec.freeze, epoch, spec.lp_epochs)
    if spec.conv1 == "reinit":
        frozen = tuple(s for s in frozen if s != "conv1")
    for stage in STAGES:
        for name in STAGE_MODULES[stage]:
            for p in getattr(model, name).parameters():
                p.requires_grad = stage not in frozen
    return frozen


def set_train_mode(model: nn.Module, frozen: tuple[str, ...]) -> None:
    """model.train(), but BatchNorm in frozen stages stays in eval mode (fixed running stats)."""
    model.train()
    for stage in frozen:
        for name in STAGE_MODULES[stage]:
            for m in getattr(model, name).modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()


def stage_lrs(model_spec: Model, lr: float) -> dict[str, float]:
    """Each stage's learning rate under model.layer_decay: layer4 at lr, each earlier stage at
    layer_decay times the next one's."""
    last = len(STAGES) - 1
    return {stage: lr * model_spec.layer_decay ** (last - i) for i, stage in enumerate(STAGES)}


def param_groups(model: nn.Module, model_spec: Model, train: Train) -> list[dict]:
    """Parameter groups: body and head (fc at head_lr_multiplier x lr), the body split by stage
    when model.layer_decay < 1 (each stage at its own lr: stage_lrs), each split into parameters
    that get weight decay and those that do not: BatchNorm weights and all biases (1-D tensors, as
    timm's rule) are not decayed unless train.decay_norm_and_bias. Decaying them only pulls the
    normalisation scales towards 0, which regularises nothing. Empty groups are left out."""
    parts = [("head", train.lr * model_spec.head_lr_multiplier, list(model.fc.parameters()))]
    if model_spec.layer_decay == 1:
        head_ids = {id(p) for p in parts[0][2]}
        parts.insert(0, ("body", train.lr, [p for p in model.parameters() if id(p) not in head_ids]))
    else:
        lrs = stage_lrs(model_spec, train.lr)
        parts[:0] = [(stage, lrs[stage], [p for name in STAGE_MODULES[stage]
                                          for p in getattr(model, name).parameters()])
                     for stage in STAGES]
    groups = []
    for part, lr, params in parts:
        if train.decay_norm_and_bias:
            split = {part: params}
        else:
            split = {part: [p for p in params if p.ndim > 1],
                     f"{part}_no_decay": [p for p in params if p.ndim <= 1]}
        for name, ps in split.items():
            if ps:
                decay = 0.0 if name.endswith("_no_decay") else train.weight_decay
                groups.append({"name": name, "params": ps, "lr": lr, "weight_decay": decay})
    return groups


def make_optimizer(model: nn.Module, model_spec: Model, train: Train) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD over all parameters, in the groups of `param_groups`.

    Frozen parameters are included (their grad stays None, so they are skipped) so that gradual
    unfreezing needs no new optimizer.
    """
    groups = param_groups(model, model_spec, train)
    if train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=train.lr, momentum=train.momentum, nesterov=train.nesterov)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=train.lr)
    return torch.optim.Adam(groups, lr=train.lr)
