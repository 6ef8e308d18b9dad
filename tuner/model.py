"""The controlled variables: a torchvision classifier (model.arch), its weights, and small named
surgery functions. Where each architecture keeps its first convolution, classifier and stages is
tuner/backbones.py's table.

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
from functools import lru_cache
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import ResNet18_Weights, WeightsEnum

from tuner.backbones import Backbone, backbone
from tuner.errors import InputError
from tuner.spec import STAGES, Model, Train, weights_key  # noqa: F401  (weights_key: re-exported)

log = logging.getLogger(__name__)

# ResNet's stages and the modules that make them up ("conv1" is the whole stem); other
# architectures' are in tuner.backbones.
STAGE_MODULES = dict(backbone("resnet18").stages)


@dataclass(frozen=True)
class Weights:
    """The initial weights for every trial, and a label saying what they really are."""

    state_dict: dict[str, torch.Tensor] | None  # None: random init
    label: str  # recorded in spec.yaml and in every row of trials.csv
    sha256: str | None = None  # of the file they came from
    classes: tuple[str, ...] | None = None  # the file's fc classes, when a model.json names them
    # model.weights: imagenet: torchvision's weights entry and its evaluation transforms (model.json)
    pretrained: dict | None = None


IMAGENET = ResNet18_Weights.IMAGENET1K_V1  # what `model.weights: imagenet` means for resnet18
CHECKPOINT_FILE = "checkpoint.pt"  # a trial checkpoint's file (trainable.CHECKPOINT_FILE)
MODEL_FILE, CARD_FILE = "model.pt", "model.json"  # a run's model folder (tuner.artifact)


def skipped(arch: str) -> tuple[str, str, str]:
    """The tensors adapted or replaced, never loaded as they are: the first convolution's weight
    and the classifier's weight and bias."""
    b = backbone(arch)
    return f"{b.stem}.weight", f"{b.head}.weight", f"{b.head}.bias"


BACKBONE_SKIP = skipped("resnet18")


def imagenet_weights(arch: str) -> WeightsEnum:
    """What `model.weights: imagenet` means for an architecture: torchvision's default weights."""
    return torchvision.models.get_model_weights(arch).DEFAULT


def pretrained_card(entry: WeightsEnum) -> dict:
    """A torchvision weights entry's name and the evaluation transforms it was trained for
    (resize, centre crop, mean, std, interpolation), for model.json."""
    out: dict = {"weights": str(entry)}
    try:
        t = entry.transforms()
        def one(v):  # torchvision keeps a side as a list of one
            return v[0] if len(v) == 1 else list(v)

        out.update(resize=one(t.resize_size), crop=one(t.crop_size), mean=list(t.mean),
                   std=list(t.std), interpolation=t.interpolation.value)
    except (AttributeError, TypeError):  # an entry whose transforms are not ImageClassification's
        pass
    return out


def resolve_weights(spec: Model, imagenet: WeightsEnum | None = None) -> Weights:
    """Load and check the spec's weights: imagenet, none, a tuner run folder, a model.pt, a trial
    checkpoint (file or folder), or a torchvision-layout state_dict of model.arch. Raises InputError.

    `imagenet` is the torchvision weights entry behind `model.weights: imagenet` (default: the
    arch's DEFAULT entry; a parameter so that tests can plant a file of their own under
    torchvision's naming rule).
    """
    if spec.weights == "none":
        return Weights(None, "none (random init)")
    if spec.weights == "imagenet":
        imagenet = imagenet or imagenet_weights(spec.arch)
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
        _check_fits(state, "model.weights: imagenet", cache, spec.arch)
        digest = digest or _sha256(cache)
        return Weights(state, f"imagenet {imagenet} sha256:{digest[:16]}", digest,
                       tuple(imagenet.meta.get("categories") or ()) or None,
                       pretrained_card(imagenet))
    path, kind = _weights_file(Path(spec.weights).expanduser(), spec.weights)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        said = " ".join(str(e).split())  # torch's message runs to many lines: the gist, in one
        raise InputError(f"model.weights: {path}: not a torch state_dict file of tensors "
                         f"({type(e).__name__}: {said[:200]}{'...' if len(said) > 200 else ''})"
                         ) from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state, kind = model_state(state), "tuner checkpoint"
    _check_fits(state, f"model.weights: {path}", path, spec.arch)
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
    none, a path) -> Weights; where one setting is used by several architectures (model.arch
    searched), once per arch, keyed `setting@arch` (imagenet is each arch's own). Trials look
    theirs up with weights_key. Raises InputError."""
    models = list(models)
    archs: dict[str, set[str]] = {}
    for m in models:
        archs.setdefault(m.weights, set()).add(m.arch)
    out: dict[str, Weights] = {}
    for m in models:
        key = f"{m.weights}@{m.arch}" if len(archs[m.weights]) > 1 else m.weights
        if key not in out:
            out[key] = resolve_weights(m)
    return out


def model_state(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The model a trial checkpoint stands for: its best validated epoch's weights when it keeps
    them (search.select: best_epoch), else the weights it was saved with."""
    best = checkpoint.get("best") or {}
    return best.get("model") or checkpoint["model"]


def weights_label(weights: dict[str, Weights]) -> str:
    """One line naming the weights a run uses (spec.yaml's provenance, the resume check)."""
    if len(weights) == 1:
        return next(iter(weights.values())).label
    return "; ".join(f"{setting}: {w.label}" for setting, w in sorted(weights.items()))


@lru_cache(maxsize=4)
def reference_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """Every state_dict tensor's shape of torchvision's model (1000 ImageNet classes)."""
    return {k: tuple(v.shape) for k, v in
            torchvision.models.get_model(arch, weights=None).state_dict().items()}


def _check_fits(state: object, where: str, path: Path, arch: str = "resnet18") -> None:
    """A state_dict must hold every tensor of torchvision's `arch` and nothing else, each of its
    shape, except the first convolution's input channels and the classifier's classes (adapted
    and replaced by build_model)."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{where}: {path} does not hold a state_dict (a mapping of tensors)")
    reference = reference_shapes(arch)
    skip = skipped(arch)
    missing = [k for k in reference if k not in state]
    unexpected = [k for k in state if k not in reference]
    wrong = [f"{k} {tuple(state[k].shape)} ({arch}: {v})"
             for k, v in reference.items()
             if k in state and k not in skip and tuple(state[k].shape) != v]
    (stem_key, head_key, bias_key), (stem, head_w, head_b) = skip, (state.get(k) for k in skip)
    want = reference[stem_key]
    if stem is not None and (stem.ndim != 4 or stem.shape[0] != want[0] or stem.shape[2:] != want[2:]):
        wrong.append(f"{stem_key} {tuple(stem.shape)} ({arch}: ({want[0]}, C, {want[2]}, {want[3]}))")
    features = reference[head_key][1]
    if head_w is not None and (head_w.ndim != 2 or head_w.shape[1] != features):
        wrong.append(f"{head_key} {tuple(head_w.shape)} ({arch}: (classes, {features}))")
    elif head_w is not None and head_b is not None and head_b.shape != head_w.shape[:1]:
        wrong.append(f"{bias_key} {tuple(head_b.shape)} ({head_key} has {head_w.shape[0]} classes)")
    problems = [f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"] if missing else []
    problems += [f"unexpected {', '.join(unexpected[:3])}"] if unexpected else []
    problems += [f"misshapen {', '.join(wrong[:3])}"] if wrong else []
    if problems:
        raise InputError(f"{where}: {path} does not fit {arch}: {'; '.join(problems)}")


def source_shape(state: dict[str, torch.Tensor], arch: str = "resnet18") -> tuple[int, int]:
    """(first convolution's input channels, classifier classes) of a state_dict that passed
    _check_fits."""
    stem, head, _ = skipped(arch)
    return int(state[stem].shape[1]), int(state[head].shape[0])


def check_surgery(spec: Model, weights: Weights, classes: tuple[str, ...]) -> None:
    """model.keep_head needs weights whose classifier has these very classes. Raises InputError."""
    if not spec.keep_head:
        return
    if weights.state_dict is None:
        raise InputError(f"model.keep_head: true needs trained weights; {spec.weights} is "
                         f"{weights.label}")
    _, n = source_shape(weights.state_dict, spec.arch)
    if n != len(classes) or (weights.classes is not None and tuple(weights.classes) != tuple(classes)):
        theirs = ", ".join(weights.classes) if weights.classes else f"{n} unnamed classes"
        raise InputError(f"model.keep_head: true, but {spec.weights}'s {backbone(spec.arch).head} "
                         f"has [{theirs}] and the data has [{', '.join(classes)}]; set "
                         "model.keep_head: false for a new classifier")


def surgery(spec: Model, weights: Weights, in_channels: int, num_classes: int) -> str:
    """In words, what build_model does with the weights: which tensors are loaded as they are,
    adapted, or initialised afresh (for spec.yaml and every trial row)."""
    if weights.state_dict is None:
        return "all tensors randomly initialised"
    b = backbone(spec.arch)
    channels, classes = source_shape(weights.state_dict, spec.arch)
    loaded = len(weights.state_dict) - len(skipped(spec.arch))
    if spec.conv1 == "reinit":
        stats = f" (and {b.stem_norm}'s running statistics)" if b.stem_norm else ""
        conv1 = f"{b.stem} re-initialised{stats}"
    elif channels == in_channels:
        conv1 = f"{b.stem} loaded ({channels} channels)"
    else:
        how = "summed" if in_channels == 1 else "repeated"
        conv1 = f"{b.stem} adapted {channels}->{in_channels} channels ({how})"
    fc = (f"{b.head} kept ({classes} classes, model.keep_head)" if spec.keep_head
          else f"{b.head} re-initialised ({classes}->{num_classes} classes)")
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


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A first convolution's filters (out, C, kh, kw) fitted to `in_channels` inputs, as timm's
    adapt_input_conv: the same for C inputs; summed over the input channels for 1 (a grey image
    then gives what its RGB copy gave); otherwise repeated and rescaled by C / in_channels, so
    that activations keep their size."""
    channels = weight.shape[1]
    if in_channels == channels:
        return weight.clone()
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = math.ceil(in_channels / channels)
    return weight.repeat(1, reps, 1, 1)[:, :in_channels] * (channels / in_channels)


def conv_like(old: nn.Conv2d, in_channels: int, stride: tuple[int, int] | None = None) -> nn.Conv2d:
    """A fresh convolution with `old`'s settings (kernel, stride, padding, bias) but these input
    channels (and this stride, if given)."""
    return nn.Conv2d(in_channels, old.out_channels, old.kernel_size, stride=stride or old.stride,
                     padding=old.padding, dilation=old.dilation, groups=old.groups,
                     bias=old.bias is not None, padding_mode=old.padding_mode)


def new_head(in_features: int, num_classes: int) -> nn.Linear:
    """A fresh output layer: Xavier-uniform weight, bias uniform in +-1/sqrt(fan_in)."""
    fc = nn.Linear(in_features, num_classes)
    nn.init.xavier_uniform_(fc.weight)
    bound = 1 / math.sqrt(fc.in_features)
    nn.init.uniform_(fc.bias, -bound, bound)
    return fc


def set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    """Put `module` at a dotted path (features.0.0: a Sequential's item too)."""
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def adapt_conv1(model: nn.Module, in_channels: int, mode: str, stem: str | bool = False,
                arch: str = "resnet18") -> None:
    """Fit the first convolution (resnet conv1, efficientnet features[0][0], vit conv_proj...) to
    the data's channels: `sum` keeps the pretrained filters (adapt_input_conv), `reinit` starts
    fresh.

    `stem` (model.small_input_stem, ResNets only) keeps small inputs' resolution: `stride1` makes
    conv1 stride 1 and drops the max-pool, `stride1_pool` makes conv1 stride 1 and keeps the
    max-pool.
    """
    b = backbone(arch)
    old = model.get_submodule(b.stem)
    new = conv_like(old, in_channels, stride=(1, 1) if stem else None)
    with torch.no_grad():
        if mode == "reinit":
            nn.init.xavier_uniform_(new.weight)
            if new.bias is not None:
                nn.init.zeros_(new.bias)
            norm = model.get_submodule(b.stem_norm) if b.stem_norm else None
            # Its ImageNet statistics describe the old convolution's outputs: start them afresh.
            if isinstance(norm, nn.modules.batchnorm._BatchNorm):
                norm.reset_running_stats()
        else:
            new.weight.copy_(adapt_input_conv(old.weight, in_channels))
            if new.bias is not None:  # per output channel: the input channels do not change it
                new.bias.copy_(old.bias)
    set_module(model, b.stem, new)
    if stem == "stride1":
        model.maxpool = nn.Identity()


def replace_fc(model: nn.Module, num_classes: int, arch: str = "resnet18") -> None:
    """A fresh classifier layer (new_head) wherever the arch keeps it (fc, classifier[-1],
    heads.head)."""
    path = backbone(arch).head
    set_module(model, path, new_head(model.get_submodule(path).in_features, num_classes))


def build_model(spec: Model, weights: Weights, in_channels: int, num_classes: int) -> nn.Module:
    """torchvision's model.arch with the given initial weights loaded strictly (first convolution
    of the file's channels, classifier of its classes), the first convolution adapted and the
    classifier replaced (or kept: model.keep_head)."""
    b = backbone(spec.arch)
    model = torchvision.models.get_model(spec.arch, weights=None)
    head = model.get_submodule(b.head)
    if weights.state_dict is not None:
        channels, classes = source_shape(weights.state_dict, spec.arch)
        set_module(model, b.stem, conv_like(model.get_submodule(b.stem), channels))
        head = nn.Linear(head.in_features, classes)
        set_module(model, b.head, head)
        model.load_state_dict(weights.state_dict)
    adapt_conv1(model, in_channels, spec.conv1, spec.small_input_stem, spec.arch)
    if not (spec.keep_head and weights.state_dict is not None and head.out_features == num_classes):
        replace_fc(model, num_classes, spec.arch)
    return model


# --- freezing -----------------------------------------------------------------------------------


def frozen_stages(policy: str, epoch: int, lp_epochs: int = 1,
                  stages: tuple[str, ...] = STAGES) -> tuple[str, ...]:
    """The stages (input side first) whose weights stay fixed in this epoch (0-based), of these
    stages (the arch's, tuner.backbones; ResNet's by default)."""
    if policy == "none":
        return ()
    if policy == "head":
        return stages
    if policy == "lp-ft":  # the linear probe (the classifier alone), then the whole model
        return stages if epoch < lp_epochs else ()
    if policy == "gradual":  # epoch 0: head only; each epoch unfreezes one more stage, top down
        return stages[: max(0, len(stages) - epoch)]
    stop = policy.removeprefix("until:")
    return stages[: stages.index(stop) + 1]


def _members(model: nn.Module, b: Backbone, stage: str) -> list[nn.Module | nn.Parameter]:
    """A stage's modules and loose parameters (a ViT's class token and position embeddings)."""
    out = []
    for path in dict(b.stages)[stage]:
        try:
            out.append(model.get_submodule(path))
        except AttributeError:
            out.append(model.get_parameter(path))
    return out


def stage_parameters(model: nn.Module, arch: str, stage: str) -> list[nn.Parameter]:
    """The parameters of one of the arch's stages."""
    return [p for m in _members(model, backbone(arch), stage)
            for p in (m.parameters() if isinstance(m, nn.Module) else [m])]


def frozen_for(spec: Model, epoch: int) -> tuple[str, ...]:
    """The arch's stages a model section keeps fixed in this epoch (0-based): its freeze policy,
    but a re-initialised first convolution's stage always trains (apply_freeze)."""
    stages = backbone(spec.arch).stage_names
    frozen = frozen_stages(spec.freeze, epoch, spec.lp_epochs, stages)
    if spec.conv1 == "reinit":  # every family's first stage holds its first convolution
        frozen = tuple(s for s in frozen if s != stages[0])
    return frozen


def describe(spec: Model, weights: Weights | None, in_channels: int, num_classes: int) -> list[str]:
    """The dry run's lines on the model: the arch's stages, the surgery (when these weights are
    known), and what the spec's own freeze policy and layer_decay do with the stages."""
    b = backbone(spec.arch)
    lines = [f"model: {b.describe()}"]
    if weights is not None:
        lines.append(f"  surgery: {surgery(spec, weights, in_channels, num_classes)}")
    if spec.freeze != "none":
        frozen = frozen_for(spec, 0)
        trains = [s for s in b.stage_names if s not in frozen]
        lines.append(f"  freeze {spec.freeze}: the first epoch trains {b.head}"
                     + (f" and {', '.join(trains)}" if trains else " alone")
                     + (f"; frozen: {', '.join(frozen)}" if frozen else ""))
    if spec.layer_decay < 1:
        lines.append(f"  layer_decay {spec.layer_decay:g}: lr x " + ", ".join(
            f"{stage} {f:.3g}" for stage, f in stage_lrs(spec, 1.0).items())
            + f", {b.head} {spec.head_lr_multiplier:g}")
    return lines


def apply_freeze(model: nn.Module, spec: Model, epoch: int) -> tuple[str, ...]:
    """Set requires_grad for this epoch's policy and return the frozen stages.

    A re-initialised first convolution always trains, and the first stage with it (its norm's
    weights and running statistics): the stem then holds nothing pretrained worth keeping.
    """
    frozen = frozen_for(spec, epoch)
    for stage in backbone(spec.arch).stage_names:
        for p in stage_parameters(model, spec.arch, stage):
            p.requires_grad = stage not in frozen
    return frozen


def set_train_mode(model: nn.Module, frozen: tuple[str, ...], arch: str = "resnet18") -> None:
    """model.train(), but BatchNorm in frozen stages stays in eval mode (fixed running stats)."""
    model.train()
    b = backbone(arch)
    for stage in frozen:
        for member in _members(model, b, stage):
            for m in member.modules() if isinstance(member, nn.Module) else ():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()


def stage_lrs(model_spec: Model, lr: float) -> dict[str, float]:
    """Each stage's learning rate under model.layer_decay: the last stage (resnet layer4) at lr,
    each earlier stage at layer_decay times the next one's."""
    stages = backbone(model_spec.arch).stage_names
    last = len(stages) - 1
    return {stage: lr * model_spec.layer_decay ** (last - i) for i, stage in enumerate(stages)}


def param_groups(model: nn.Module, model_spec: Model, train: Train) -> list[dict]:
    """Parameter groups: body and head (the classifier layer at head_lr_multiplier x lr), the body
    split by stage when model.layer_decay < 1 (each stage at its own lr: stage_lrs), each split
    into parameters that get weight decay and those that do not: norm weights and all biases (1-D
    tensors, as timm's rule) are not decayed unless train.decay_norm_and_bias. Decaying them only
    pulls the normalisation scales towards 0, which regularises nothing. Empty groups are left
    out."""
    b = backbone(model_spec.arch)
    head = list(model.get_submodule(b.head).parameters())
    parts = [("head", train.lr * model_spec.head_lr_multiplier, head)]
    if model_spec.layer_decay == 1:
        head_ids = {id(p) for p in head}
        parts.insert(0, ("body", train.lr, [p for p in model.parameters() if id(p) not in head_ids]))
    else:
        lrs = stage_lrs(model_spec, train.lr)
        parts[:0] = [(stage, lrs[stage], stage_parameters(model, model_spec.arch, stage))
                     for stage in b.stage_names]
    # A ViT's class token and position embeddings are not decayed either (as timm's
    # no_weight_decay): they are the stages' loose parameters.
    loose = {id(m) for stage in b.stage_names for m in _members(model, b, stage)
             if not isinstance(m, nn.Module)}
    groups = []
    for part, lr, params in parts:
        if train.decay_norm_and_bias:
            split = {part: params}
        else:
            split = {part: [p for p in params if p.ndim > 1 and id(p) not in loose],
                     f"{part}_no_decay": [p for p in params if p.ndim <= 1 or id(p) in loose]}
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
