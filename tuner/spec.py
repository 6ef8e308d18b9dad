"""The sweep spec's schema: one YAML file validated once into a typed, frozen object.

Every default lives here. Code downstream takes a `Spec` (or one of its sections), never a dict.
Reading a spec file, `--set` overrides and error lines are tuner/specfile.py.
"""

from __future__ import annotations

import math
import re
from functools import reduce
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from tuner.backbones import backbone, input_problem
from tuner.fashion_mnist import CLASSES as FASHION_CLASSES

STAGES = backbone("resnet18").stage_names  # ResNet stages, input to output (the default arch's)
# What a trial can vary: the rest (data, weights, resources, search) is set up once per sweep.
# data.train_per_class too: each trial draws its own training images from the loaded split
# (validation and test stay shared).
SEARCHABLE = ("train.", "model.", "data.augment.", "data.train_per_class")
# Weights are resolved and checked in the driver before anything runs, and every architecture is
# checked against the freeze policies and the input size at spec load, so only lists of them can
# be searched, never a range.
CHOICE_ONLY = ("model.weights", "model.arch")
# An arm of a comparison keeps the spec's architecture: the arms compare strategies on one model.
ARM_FIXED = ("model.arch",)
# A spec's and an arm's name is a folder name (results/<name>/, trials/<arm>/, model/<arm>/): a
# letter or digit first, so never '.', '..' or a hidden folder, and no separator to leave the
# folder it is made in.
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
ARM_NAME = NAME
NAME_RULE = "a letter or digit first, then letters, digits, '_', '.' and '-' only"
FASHION_SIDE = 28  # Fashion-MNIST's images are 28x28


def freeze_help(arch: str = "resnet18") -> str:
    """The freeze policies an architecture takes, in words (its own stage names)."""
    return ("none, head, gradual, lp-ft or until:<stage> with stage one of "
            + ", ".join(backbone(arch).stage_names))


FREEZE_HELP = freeze_help()


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Augment(_Section):
    """Training-time augmentation, done on whole batches on the trial's device.

    Which fields apply, and their defaults, depend on data.dataset (Data fills them in).
    """

    # fashion_mnist: pixels of zero padding before a random crop back to size (default 0)
    crop_padding: int | None = Field(None, ge=0)
    hflip: bool | None = None  # random horizontal flip, p 0.5 (default: false fashion_mnist, true imagefolder)
    # imagefolder: RandomResizedCrop's area range, as fractions of the image (default [0.08, 1])
    scale: tuple[PositiveFloat, PositiveFloat] | None = None
    # imagefolder: RandomResizedCrop's aspect-ratio range, width/height (default [3/4, 4/3])
    ratio: tuple[PositiveFloat, PositiveFloat] | None = None
    # Random erasing (Zhong et al. 2017, as torchvision's RandomErasing): with probability erase_p
    # a rectangle of erase_scale x the image's area, aspect ratio (h/w) in erase_ratio, is set to
    # 0 after normalisation (the mean), in every channel.
    erase_p: float = Field(0.0, ge=0, le=1)
    erase_scale: tuple[float, float] = (0.02, 0.33)  # fraction of the image's area, low and high
    erase_ratio: tuple[PositiveFloat, PositiveFloat] = (0.3, 3.3)  # h/w, drawn log-uniformly

    @model_validator(mode="after")
    def _erase_ranges(self) -> Augment:
        low, high = self.erase_scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"erase_scale: need 0 < low <= high <= 1 (got {low:g}, {high:g})")
        if self.erase_ratio[0] > self.erase_ratio[1]:
            raise ValueError(f"erase_ratio: low must not exceed high (got {self.erase_ratio[0]:g}, "
                             f"{self.erase_ratio[1]:g})")
        return self

    @field_validator("scale", "ratio")
    @classmethod
    def _range(cls, v: tuple[float, float] | None, info) -> tuple[float, float] | None:
        if v is not None and v[0] > v[1]:
            raise ValueError(f"low must not be above high (got {v[0]:g} > {v[1]:g})")
        if v is not None and info.field_name == "scale" and v[1] > 1:
            raise ValueError(f"a fraction of the image, at most 1 (got {v[1]:g})")
        return v


# Fields that belong to one dataset: given with the other, they are bad input. Data fills in the
# defaults of its own dataset's fields, so a resolved spec (spec.yaml) shows every value used.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "fashion_mnist": {"download": True, "augment.crop_padding": 0, "augment.hflip": False},
    "imagefolder": {"resize": 256, "image_size": 224, "test_fraction": 0.2,
                    "cache": Path("~/.cache/tuner"), "skip_bad_images": False,
                    "augment.hflip": True, "augment.scale": (0.08, 1.0),
                    "augment.ratio": (3 / 4, 4 / 3)},
}
SHARED_DEFAULTS = ("augment.hflip",)  # in both datasets, with different defaults


class Data(_Section):
    dataset: Literal["fashion_mnist", "imagefolder"] = "fashion_mnist"
    # fashion_mnist: torchvision layout <root>/FashionMNIST/raw; imagefolder: the folder holding
    # train/<class>/... (and optionally val/ and test/ with the same classes)
    root: Path = Path("data")
    download: bool | None = None  # fashion_mnist: last resort after root and the local .gz mirror
    val_fraction: float = Field(0.1, gt=0, lt=1)  # stratified hold-out from train (without val/)
    train_subset: PositiveInt | None = None  # images drawn (seeded, stratified) before the split
    # The classes to keep, in every split, by name or index (fashion_mnist: its names, T-shirt/top
    # ... Ankle boot, or 0-9; imagefolder: class folder names, or indices into their sorted list);
    # labels are re-indexed in this order. None: all classes.
    classes: list[str | int] | None = None
    # Training images per class, drawn (seeded by data.seed) after validation is carved out, so
    # that validation and test do not change with it; a smaller draw is part of a larger one.
    train_per_class: PositiveInt | None = None
    test_subset: PositiveInt | None = None
    seed: int = 0  # fixes the splits and the subsets
    resize: PositiveInt | None = None  # imagefolder: pixels; every image decoded once to resize x resize
    image_size: PositiveInt | None = None  # imagefolder: pixels; training crop and evaluation centre crop
    test_fraction: float | None = Field(None, gt=0, lt=1)  # imagefolder without test/: stratified hold-out
    cache: Literal[False] | Path | None = None  # imagefolder: folder of decoded arrays, or false
    skip_bad_images: bool | None = None  # imagefolder: skip (and record) files that cannot be decoded
    augment: Augment = Augment()

    @model_validator(mode="before")
    @classmethod
    def _dataset_defaults(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        raw = dict(raw)
        augment = raw.get("augment", {})
        if isinstance(augment, BaseModel):
            augment = augment.model_dump()
        raw["augment"] = dict(augment) if isinstance(augment, dict) else augment
        dataset = raw.get("dataset") or "fashion_mnist"
        if not isinstance(raw["augment"], dict):
            return raw  # not a mapping: reported by the field's own validation
        for path, value in DATASET_DEFAULTS.get(dataset, {}).items():
            section, _, key = path.rpartition(".")
            target = raw["augment"] if section else raw
            if target.get(key) is None:
                target[key] = value
        return raw

    @model_validator(mode="after")
    def _fits_dataset(self) -> Data:
        other = next(d for d in DATASET_DEFAULTS if d != self.dataset)
        wrong = [p for p in DATASET_DEFAULTS[other]
                 if p not in SHARED_DEFAULTS and reduce(getattr, p.split("."), self) is not None]
        problems = []
        if wrong:
            problems.append(f"{', '.join(wrong)}: for dataset {other} only (data.dataset is "
                            f"{self.dataset}); remove {'them' if len(wrong) > 1 else 'it'}")
        if self.dataset == "imagefolder" and self.image_size > self.resize:
            problems.append(f"image_size {self.image_size} is larger than resize {self.resize}: the "
                            "crops are cut from the decoded resize x resize image; lower image_size "
                            "or raise resize")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @field_validator("classes")
    @classmethod
    def _known_classes(cls, v: list[str | int] | None, info) -> list[str | int] | None:
        if v is None:
            return v
        if len(v) < 2:
            raise ValueError("a classifier needs at least 2 classes")
        if info.data.get("dataset", "fashion_mnist") == "fashion_mnist":  # a folder's: when read
            return [FASHION_CLASSES[i] for i in pick_classes(v, FASHION_CLASSES)]  # by name
        return v

    @field_validator("cache", mode="before")
    @classmethod
    def _cache_folder(cls, v: Any) -> Any:
        if v is True or (v is not None and v is not False and not isinstance(v, (str, Path))):
            raise ValueError("give a folder for the decoded arrays, or false for no cache")
        return v

    @field_validator("root", "cache")
    @classmethod
    def _expand(cls, v: Path | bool | None) -> Path | bool | None:
        return v.expanduser() if isinstance(v, Path) else v


def pick_classes(wanted: list[str | int], available: tuple[str, ...]) -> list[int]:
    """The indices into `available` of the classes `wanted`, in the order given: a name, or an
    index (an integer naming a class, as a folder called 3, is that name). Raises ValueError
    naming the valid classes."""
    picked, unknown = [], []
    for w in wanted:
        if str(w) in available:
            picked.append(available.index(str(w)))
        elif isinstance(w, int) and not isinstance(w, bool) and 0 <= w < len(available):
            picked.append(w)
        else:
            unknown.append(repr(w))
    if unknown:
        raise ValueError(f"unknown class {', '.join(unknown)}; the classes are "
                         f"{', '.join(available)} (or their indices 0-{len(available) - 1})")
    twice = sorted({available[i] for i in picked if picked.count(i) > 1})
    if twice:
        raise ValueError(f"{', '.join(twice)} given more than once")
    return picked


class Model(_Section):
    # A torchvision classifier by name: tuner.backbones.ARCHS (resnet, efficientnet, mobilenet_v3,
    # convnext, regnet_y, vit); its first convolution is fitted to the data's channels, its
    # classifier replaced, and freeze and layer_decay work by its own stages.
    arch: str = "resnet18"
    # imagenet | none | a tuner run folder, its model/model.pt, a trial checkpoint, or a state_dict
    weights: str = "imagenet"
    weights_fallback: Literal["none"] | None = None  # if ImageNet weights cannot be had
    conv1: Literal["sum", "reinit"] = "sum"
    # ResNets only. For 28x28 input. false: ImageNet's stem (stride-2 conv1 and max-pool, 7x7 maps in layer1);
    # stride1: stride-1 conv1, no max-pool (28x28 in layer1); stride1_pool: stride-1 conv1 and the
    # max-pool (14x14 in layer1, about a quarter of stride1's compute). conv1 stays 7x7.
    small_input_stem: Literal[False, "stride1", "stride1_pool"] = False
    # none | head (feature extraction) | until:<stage> | gradual (one more stage each epoch, top
    # down) | lp-ft (Kumar et al. 2022: a linear probe, fc alone for lp_epochs, then everything)
    freeze: str = "none"
    lp_epochs: PositiveInt = 1  # lp-ft: epochs of the linear probe before the whole model trains
    head_lr_multiplier: PositiveFloat = 1.0  # fc (the classifier layer) learns at this multiple of train.lr
    # Layer-wise lr decay by the arch's stages: the last (ResNet layer4) learns at train.lr, the one
    # before at lr x layer_decay, ... a ResNet's stem (conv1, bn1) at lr x layer_decay^4; fc as
    # head_lr_multiplier says.
    # Earlier stages hold more general features, so a pretrained body changes least there.
    layer_decay: float = Field(1.0, gt=0, le=1)
    keep_head: bool = False  # keep the weights file's fc/classifier (same classes) instead of a fresh one

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        backbone(v)  # ValueError naming the supported ones
        return v

    # The arch field comes first, so these see it (info.data): stage names and stem variants are
    # the architecture's own. (Without a valid arch, its own error is the one reported.)
    @field_validator("freeze")
    @classmethod
    def _freeze_policy(cls, v: str, info) -> str:
        if v in ("none", "head", "gradual", "lp-ft") or "arch" not in info.data:
            return v
        arch = info.data["arch"]
        m = re.fullmatch(r"until:(\w+)", v)
        if m and m.group(1) in backbone(arch).stage_names:
            return v
        raise ValueError(f"unknown freeze policy {v!r} for {arch}; use {freeze_help(arch)}")

    @field_validator("small_input_stem")
    @classmethod
    def _resnet_stem(cls, v: Any, info) -> Any:
        arch = info.data.get("arch")
        if v and arch is not None and backbone(arch).family != "resnet":
            raise ValueError(f"{v} changes a ResNet's stem (conv1 stride, max-pool); {arch} has no "
                             "such stem: set it to false")
        return v

    @field_validator("small_input_stem", mode="before")
    @classmethod
    def _old_stem(cls, v: Any) -> Any:
        return "stride1" if v is True else v  # specs before stem variants said true


class Train(_Section):
    epochs: PositiveInt = 5
    batch_size: int = Field(64, ge=2)  # BatchNorm cannot train on one image
    lr: PositiveFloat = 1e-3
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"  # adam: L2 in the gradient; adamw: decoupled
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd only
    nesterov: bool = False  # sgd only (ignored otherwise, as momentum, so optimizer can be searched)
    weight_decay: NonNegativeFloat = 0.0
    decay_norm_and_bias: bool = False  # false: no weight decay on BatchNorm weights and biases (timm)
    # Learning rate, set per batch: constant, cosine (down to min_lr_fraction x lr at the end), or
    # onecycle (a cosine rise from lr/25 to lr, then a fall to min_lr_fraction x lr, or lr/25/1e4).
    schedule: Literal["constant", "cosine", "onecycle"] = "constant"
    # Linear warm-up from ~0 to lr, in epochs (fractions allowed), for constant and cosine; for
    # onecycle, its rise (0: 30% of the training). Capped at the whole training, so that a
    # searched epochs value never makes a trial invalid.
    warmup_epochs: NonNegativeFloat = 0.0
    min_lr_fraction: float = Field(0.0, ge=0, lt=1)  # cosine's (and onecycle's) final lr / lr
    label_smoothing: float = Field(0.0, ge=0, lt=1)  # training loss only; val_loss stays plain CE
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast on CUDA, or on a CPU with bf16
    # torch.compile the training steps (a mode name) or not. Off: in short CPU trials it cost more
    # than it saved (README, Speed); unmeasured on GPUs. reduce-overhead adds CUDA graphs.
    compile: Literal["none", "default", "reduce-overhead", "max-autotune"] = "none"
    eval_batch_size: PositiveInt = 1024
    seed: int = 0  # model init and batch order; the trial id is not mixed in
    # The training length in images seen (epochs x training images) instead of epochs: a number
    # that means the same at any training-set size. Each run trains ceil(images / its training
    # images) epochs; ASHA's rungs (search.grace_period) are then counted in images too.
    images: PositiveInt | None = None

    @model_validator(mode="after")
    def _nesterov(self) -> Train:
        if self.nesterov and self.optimizer == "sgd" and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0 (got momentum 0)")
        return self


class Param(_Section):
    """One searched parameter: exactly one distribution key."""

    choice: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[PositiveFloat, PositiveFloat] | None = None
    quniform: tuple[float, float, PositiveFloat] | None = None  # low, high, step
    randint: tuple[int, int] | None = None  # low inclusive, high exclusive (as in Ray)

    @model_validator(mode="after")
    def _one_distribution(self) -> Param:
        given = [k for k, v in self if v is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of choice, uniform, loguniform, quniform, randint"
                + (f" (got {', '.join(given)})" if given else "")
            )
        kind, args = self.kind, self.args
        if kind == "choice" and not args:
            raise ValueError("choice needs at least one value")
        if kind != "choice" and not args[0] < args[1]:
            raise ValueError(f"{kind}: low must be below high (got {args[0]} >= {args[1]})")
        if kind == "quniform" and not all(_multiple(b, args[2]) for b in args[:2]):
            raise ValueError(f"quniform: low and high must be multiples of the step {args[2]:g} "
                             f"(got {args[0]:g}, {args[1]:g})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k, v in self if v is not None)

    @property
    def args(self) -> Any:
        return getattr(self, self.kind)

    def extremes(self) -> list[Any]:
        """The values that bound this distribution."""
        if self.kind == "choice":
            return list(self.args)
        if self.kind == "randint":
            return [self.args[0], self.args[1] - 1]
        return [self.args[0], self.args[1]]

    def contains(self, value: Any) -> bool:
        """Whether the distribution can produce `value` (a point to evaluate must lie in the space,
        or its trial would be missing from the summaries by value)."""
        a = self.args
        match self.kind:
            case "choice":
                return value in a
            case "randint":
                return isinstance(value, int) and a[0] <= value < a[1]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "quniform" and not _multiple(value, a[2]):
            return False
        return a[0] <= value <= a[1]

    def probes(self) -> list[Any]:
        """Values to check against the field's own rules: the bounds, and for continuous kinds an
        interior draw (so that uniform on a whole-number field such as epochs is caught)."""
        values = self.extremes()
        if self.kind in ("uniform", "loguniform", "quniform"):
            low, high = self.args[0], self.args[1]
            inner = low + 0.3719 * (high - low)
            if self.kind == "quniform":
                inner = round(inner / self.args[2]) * self.args[2]
            values.append(inner)
        return values


def _multiple(value: float, step: float) -> bool:
    return abs(value / step - round(value / step)) < 1e-9


class Search(_Section):
    # grid: every combination of the choice parameters, once (Ray's grid_search); num_samples
    # must then be 1 (its default): trials are deterministic, so a repeat of the grid would repeat
    # its results. To repeat each point with other seeds, add train.seed as a choice.
    searcher: Literal["hyperopt", "random", "grid"] = "hyperopt"
    num_samples: PositiveInt = 10
    metric: Literal["val_accuracy", "val_loss"] = "val_accuracy"
    mode: Literal["max", "min"] = "max"  # follows the metric when not given (val_loss: min)
    seed: int = 0
    n_initial_points: PositiveInt | None = None  # random trials before TPE; default num_samples // 2
    max_concurrent: PositiveInt | None = None  # None: as many as the cluster fits
    scheduler: Literal["fifo", "asha"] = "fifo"  # asha stops weak trials early
    grace_period: PositiveInt = 1  # asha: what every trial trains, in epochs (or train.images' images)
    points_to_evaluate: list[dict[str, Any]] = []
    # The spec's own values of the searched fields (train.lr, ...) are the first trial, when they
    # lie in the space: the choice is then never worse on validation than those settings, and
    # best.json says what tuning gained over them. One of num_samples, not an extra trial.
    default_trial: bool = True
    # The best k configs on validation are trained again with a fresh seed, and the choice is the
    # best mean over both runs (tuner.confirm): a config that won once by luck is not chosen.
    # Costs k trials more. None: 2 from 8 planned trials on, 3 from 20, none below 8.
    confirm_top_k: int | None = Field(None, ge=0)
    # Challengers: when a config's one score beats the chosen config's mean over both seeds, it is
    # trained with the same second seed too (a second round, at most this many configs, the next
    # best of the search first), so a choice whose second seed fell is not kept for want of a
    # look at the runner-up. None: as many as confirm_top_k; 0: no second round.
    confirm_challengers: int | None = Field(None, ge=0)
    # The one-standard-error rule (Hastie, Tibshirani and Friedman, ESL 7.10) for the confirmed
    # choice: the configs whose mean lies within one standard error of the best mean (the binomial
    # error of an accuracy measured on the validation images: 0.96 points at 92% on 800) are
    # equally good as far as validation can tell, and the choice among them is the one these
    # values prefer, in order: {lr: min} takes the smallest lr, the least departure from a
    # pretrained body. Challengers are then the runners-up within that error. {}: the best mean.
    prefer: dict[str, Literal["min", "max"]] = {}
    # A trial's score: its last validated epoch's metric ("last"), or its best validated epoch's
    # ("best_epoch", as Lightning's ModelCheckpoint monitors a metric): that epoch's weights are then
    # kept in the trial's checkpoint, and they are the model tested and saved. best_epoch
    # validates every epoch (run.validation is then every_epoch in effect).
    select: Literal["last", "best_epoch"] = "last"
    # Keys are spec paths; a bare name means a train field ("lr" is "train.lr").
    parameters: dict[str, Param] = {}
    # Run directories whose finished trials (searched values and final metric) TPE starts from, as
    # if this sweep had run them; their searched parameters must be this sweep's, inside its ranges.
    warm_start: list[Path] = []

    @model_validator(mode="before")
    @classmethod
    def _grid_once(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and raw.get("searcher") == "grid" and "num_samples" not in raw:
            raw = {**raw, "num_samples": 1}  # the grid, once
        if isinstance(raw, dict) and raw.get("mode") is None and raw.get("metric") == "val_loss":
            raw = {**raw, "mode": "min"}  # the mode follows the metric
        return raw

    @field_validator("warm_start")
    @classmethod
    def _expand_runs(cls, v: list[Path]) -> list[Path]:
        return [p.expanduser() for p in v]

    @model_validator(mode="after")
    def _initial_points(self) -> Search:
        wanted = {"val_accuracy": "max", "val_loss": "min"}[self.metric]
        if self.mode != wanted:
            raise ValueError(f"mode must be {wanted} for {self.metric} (got {self.mode})")
        if self.searcher == "grid":
            problems = [f"parameters.{k}: a grid takes choice lists only (got {p.kind})"
                        for k, p in self.parameters.items() if p.kind != "choice"]
            if self.num_samples != 1:
                problems.append(f"num_samples: a grid runs every combination once, so it must be 1 "
                                f"(got {self.num_samples}); to repeat each point with other seeds, "
                                "add seed: {choice: [0, 1, 2]} to the grid")
            if self.warm_start:
                problems.append("warm_start: a grid tries every combination whatever came before; "
                                "use searcher: hyperopt")
            if problems:
                raise ValueError("; ".join(problems))
        problems = [f"prefer.{k}: not a searched parameter (search.parameters)"
                    for k in self.prefer if k not in self.parameters]
        if self.prefer and self.metric != "val_accuracy":
            problems.append("prefer: the one-standard-error rule needs an accuracy "
                            "(metric: val_accuracy), whose error the validation size gives")
        if problems:
            raise ValueError("; ".join(problems))
        # Earlier trials (warm_start, or those of a sweep given more trials) count among TPE's
        # start-up points, so then fewer, or none, of this sweep's own trials are random.
        if (self.n_initial_points is not None and self.n_initial_points >= self.num_samples > 1
                and not self.warm_start):
            raise ValueError(
                f"n_initial_points ({self.n_initial_points}) must be below num_samples "
                f"({self.num_samples}), or TPE never runs"
            )
        return self

    @property
    def reported_metric(self) -> str:
        """The report field the searcher and the scheduler read: the metric itself, or under
        select: best_epoch `score`, the best validated epoch's metric so far (trainable)."""
        return "score" if self.select == "best_epoch" else self.metric

    def planned_trials(self) -> int:
        """How many trials this search runs: num_samples, or for a grid its size x num_samples."""
        if self.searcher != "grid":
            return self.num_samples
        size = 1
        for p in self.parameters.values():
            size *= len(p.choice)
        return size * self.num_samples


class Resources(_Section):
    cpu: PositiveFloat = 1.0  # per trial
    gpu: NonNegativeFloat = 0.0  # per trial; fractions pack trials onto one GPU

    @field_validator("gpu")
    @classmethod
    def _one_device(cls, v: float) -> float:
        if v > 1:
            raise ValueError("at most 1: a trial trains on one device; use fractions "
                             "such as 0.25 to pack several trials onto one GPU")
        return v


class Run(_Section):
    """Where trial checkpoints live and how trial failures are retried."""

    storage: str | None = None  # a folder every node sees, or a URI Ray accepts (s3://...); None: the run dir
    max_failures: int = Field(2, ge=0)  # retries of a failed trial, from its latest checkpoint
    # best: once the sweep has finished, only the chosen trial's checkpoint remains (a ResNet-18
    # checkpoint with Adam state is ~135 MB); all: every trial's last checkpoint stays.
    keep_checkpoints: Literal["best", "all"] = "best"
    # Where a trial validates: where a decision needs it ("needed": at the scheduler's rungs and
    # after the last epoch), or also every epoch in between ("every_epoch", for curves). A pass over
    # 800 validation images costs more than an epoch of 100 training images (20 per class), and
    # about half of one of 500.
    validation: Literal["needed", "every_epoch"] = "needed"
    # Where a trial checkpoints: always at the scheduler's rungs (a trial stopped there is tested on
    # the epoch it reported) and after its last epoch; in between, after every `checkpoint_every`
    # epochs if set, and once `checkpoint_minutes` of training have passed since the last one, so
    # a killed trial loses at most that much.
    checkpoint_every: PositiveInt | None = None
    checkpoint_minutes: PositiveFloat = 5.0
    # Where else the reports go, through Ray Tune's logger callbacks (tuner.loggers); TensorBoard
    # event files are written for every trial in any case.
    log: list[Literal["mlflow", "wandb"]] = []


class Compare(_Section):
    """Strategies compared on equal terms: each arm (name -> spec overrides, keys as in
    search.parameters) gets the spec's own search; then its best config is trained `repeats` more
    times with fresh train.seed values, and each of those runs is tested once."""

    arms: dict[str, dict[str, Any]]
    repeats: int = Field(3, ge=1)  # seeds per arm for its best config

    @field_validator("arms")
    @classmethod
    def _arm_names(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        problems = [] if len(v) >= 2 else [f"give at least two arms to compare (got {len(v)})"]
        problems += [f"arm {name!r}: an arm's name is a folder name: {NAME_RULE}"
                     for name in v if not re.fullmatch(ARM_NAME, name)]
        if problems:
            raise ValueError("; ".join(problems))
        return v


class Spec(_Section):
    name: str = "sweep"  # results/<name>/<run id>/
    data: Data = Data()
    model: Model = Model()
    train: Train = Train()
    search: Search = Search()
    resources: Resources = Resources()
    run: Run = Run()
    compare: Compare | None = None  # None: a plain sweep

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if not re.fullmatch(NAME, v):
            raise ValueError(f"the run folder's name (results/<name>/): {NAME_RULE}")
        return v

    @model_validator(mode="after")
    def _searched_fields(self) -> Spec:
        problems = []
        side = self.data.image_size if self.data.dataset == "imagefolder" else FASHION_SIDE
        if problem := input_problem(self.model.arch, side):
            problems.append(f"model.arch: {problem}; "
                            + ("set data.image_size (and data.resize) to fit"
                               if self.data.dataset == "imagefolder" else
                               "fashion_mnist's images are 28x28: choose another model.arch"))
        seen: dict[str, str] = {}
        for key, param in self.search.parameters.items():
            path = param_path(key)
            try:
                get_path(self, path)
            except KeyError:
                problems.append(f"search.parameters.{key}: {path} is not a spec field")
                continue
            if not path.startswith(SEARCHABLE):
                problems.append(f"search.parameters.{key}: {path} is fixed for the whole sweep "
                                "(data and resources are set up once); search "
                                "train.*, model.*, data.augment.* fields or "
                                "data.train_per_class")
                continue
            if path in CHOICE_ONLY and param.kind != "choice":
                problems.append(f"search.parameters.{key}: {path} can only be searched with "
                                "choice (each one is checked before the sweep starts)")
                continue
            if path in seen:
                problems.append(f"search.parameters.{key}: {path} is searched twice "
                                f"(also as {seen[path]})")
            seen[path] = key
            for value in param.probes():
                problems += _check_value(self, path, value, f"search.parameters.{key}")
        for i, point in enumerate(self.search.points_to_evaluate):
            missing = [k for k in self.search.parameters if k not in point]
            if missing and self.search.searcher == "hyperopt":  # HyperOpt needs whole points
                problems.append(f"search.points_to_evaluate[{i}]: give a value for every "
                                f"searched parameter; missing {', '.join(missing)}")
            for key, value in point.items():
                where = f"search.points_to_evaluate[{i}].{key}"
                param = self.search.parameters.get(key)
                if param is None:
                    problems.append(f"{where}: not a searched parameter")
                elif param.kind == "choice" and value not in param.choice:
                    problems.append(f"{where}: {value!r} is not one of the choices {param.choice}")
                elif found := _check_value(self, param_path(key), value, where):
                    problems += found
                elif not param.contains(value):
                    problems.append(f"{where}: {value!r} lies outside its search space "
                                    f"({param.kind} {list(param.args)})")
        problems += self._arch_problems()
        if self.length_unit == "images":
            if self.search_for("train.epochs"):
                problems.append("search.parameters.epochs: the length is train.images here; search "
                                "images instead (or drop train.images)")
            if self.train.images is None:
                problems.append("search.parameters.images: give train.images as well (the spec's "
                                "own length)")
        if self.search.scheduler == "asha" and self.search.grace_period > self.longest:
            problems.append(f"search.grace_period: {self.search.grace_period} is more than the most "
                            f"{self.length_unit} a trial can have ({self.longest})")
        if self.compare is not None:
            problems += self._arm_problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _arch_problems(self) -> list[str]:
        """With model.arch searched: every other searched model.* value must suit every arch in the
        choice (a freeze stage, a ResNet stem), and the weights must be a setting each arch has
        (imagenet is each arch's own; a file holds one arch's tensors). The fixed fields are
        checked against each arch by the probes of model.arch itself."""
        arch = self.search_for("model.arch")
        if arch is None or arch.kind != "choice":
            return []
        problems = []
        key = next(k for k in self.search.parameters if param_path(k) == "model.arch")
        weights = self.search_for("model.weights")
        files = [w for w in (weights.choice if weights else [self.model.weights])
                 if w not in ("imagenet", "none")]
        if files:
            problems.append(f"search.parameters.{key}: model.weights {files[0]!r} is a file of one "
                            "architecture; with model.arch searched, use imagenet (each arch's "
                            "own) or none")
        for other, param in self.search.parameters.items():
            path = param_path(other)
            if other == key or not path.startswith("model.") or path == "model.weights":
                continue
            for a in arch.choice:
                for value in param.probes():
                    raw = self.model_dump()
                    raw["search"], raw["compare"] = {}, None
                    set_path(raw, "model.arch", a)
                    set_path(raw, path, value)
                    try:
                        Spec.model_validate(raw)
                    except ValidationError as e:
                        problems += [f"search.parameters.{other}: value {value!r} with model.arch "
                                     f"{a}: {err['msg'].removeprefix('Value error, ')}"
                                     for err in e.errors()]
        return problems

    def archs(self) -> list[str]:
        """Every architecture a trial of this sweep can build: the searched choice, or model.arch."""
        arch = self.search_for("model.arch")
        return list(arch.choice) if arch else [self.model.arch]

    def _arm_problems(self) -> list[str]:
        """What is wrong with the arms' overrides: keys that are not spec fields or that an arm may
        not set, values that break the field's rules."""
        arms = self.compare.arms
        problems = []
        searched = [param_path(k) for k in self.search.parameters]
        for name, overrides in arms.items():
            where = f"compare.arms.{name}"
            for key, value in overrides.items():
                path = param_path(key)
                try:
                    get_path(self, path)
                except KeyError:
                    problems.append(f"{where}.{key}: {path} is not a spec field")
                    continue
                clash = [s for s in searched if s == path or s.startswith(path + ".")]
                if path in ARM_FIXED:
                    problems.append(f"{where}.{key}: every arm uses the spec's {path} (the arms "
                                    "compare strategies on one model); compare architectures "
                                    "with a search of model.arch or in separate sweeps")
                elif not f"{path}.".startswith(SEARCHABLE):
                    problems.append(f"{where}.{key}: an arm can set train.*, model.* and "
                                    "data.augment.* fields and data.train_per_class; the rest of "
                                    "data, search, resources and run are shared so that the arms "
                                    "are compared on equal terms")
                elif clash:
                    problems.append(f"{where}.{key}: {clash[0]} is also searched "
                                    "(search.parameters); an arm may fix only fields the search "
                                    "leaves alone")
                else:
                    problems += _check_value(self, path, value, f"{where}.{key}")
        if not problems:  # each value is fine alone; check the arm's spec as a whole
            for name in arms:
                try:
                    self.arm(name)
                except ValidationError as e:
                    problems += [f"compare.arms.{name}: {err['msg'].removeprefix('Value error, ')}"
                                 for err in e.errors()]
        return problems

    def arm_settings(self) -> dict[str, dict[str, Any]]:
        """arm -> its value of every field that some arm overrides (keys as in compare.arms), as
        plain JSON values: what tells one arm's runs from another's."""
        keys = list(dict.fromkeys(k for overrides in self.compare.arms.values() for k in overrides))
        out = {}
        for name in self.compare.arms:
            raw = self.arm(name).model_dump(mode="json")
            out[name] = {k: get_path(raw, param_path(k)) for k in keys}
        return out

    def arm(self, name: str) -> Spec:
        """The spec one arm runs: its overrides applied, no `compare` section, and a searcher
        seed of its own (search.seed + the arm's place), so that the arms do not all draw the
        same random start-up points."""
        raw = self.model_dump()
        raw["compare"] = None
        raw["search"]["seed"] = self.search.seed + list(self.compare.arms).index(name)
        for key, value in self.compare.arms[name].items():
            set_path(raw, param_path(key), value)
        return Spec.model_validate(raw)

    def model_variants(self) -> list[Model]:
        """Every model section a trial of this sweep can start from (per arm, per searched
        weights choice, per searched arch), so that the driver resolves all their weights before
        anything runs."""
        specs = [self.arm(n) for n in self.compare.arms] if self.compare else [self]
        out = []
        for s in specs:
            weights = s.search_for("model.weights")
            for arch in s.archs():
                for choice in weights.choice if weights else [s.model.weights]:
                    out.append(s.model.model_copy(update={"weights": choice, "arch": arch}))
        return out

    def default_point(self) -> tuple[dict[str, Any] | None, str]:
        """The spec's own values of the searched fields, as a point of the search space (keys as
        in search.parameters), and why there is none when there is none (search.default_trial
        off, nothing searched, a grid, or a value outside its distribution)."""
        s = self.search
        if not s.default_trial:
            return None, "search.default_trial is off"
        if not s.parameters:
            return None, "nothing is searched"
        if s.searcher == "grid":
            return None, "a grid tries its own combinations"
        point = {}
        for key, param in s.parameters.items():
            value = get_path(self, param_path(key))
            if isinstance(value, Path):
                value = str(value)
            if not param.contains(value):
                return None, (f"{key}={value!r} lies outside its search space "
                              f"({param.kind} {list(param.args)})")
            point[key] = value
        return point, ""

    @property
    def length_unit(self) -> str:
        """What a trial's length (and ASHA's rungs) is counted in: epochs, or images seen."""
        return "images" if self.train.images is not None or self.search_for("train.images") \
            else "epochs"

    @property
    def longest(self) -> int:
        """The longest a trial can train, in length_unit."""
        path = "train.images" if self.length_unit == "images" else "train.epochs"
        param = self.search_for(path)
        return int(max(param.extremes())) if param else int(get_path(self, path))

    def epochs_for(self, train_images: int) -> int:
        """The epochs one run trains on `train_images` images: train.epochs, or for a length in
        images ceil(train.images / train_images), at least 1."""
        if self.train.images is None:
            return self.train.epochs
        return max(1, math.ceil(self.train.images / max(1, train_images)))

    def for_training_set(self, train_images: int) -> Spec:
        """This (fixed) spec with train.epochs set for its training set's size (epochs_for)."""
        epochs = self.epochs_for(train_images)
        if epochs == self.train.epochs:
            return self
        return self.model_copy(update={"train": self.train.model_copy(update={"epochs": epochs})})

    def search_for(self, path: str) -> Param | None:
        """The distribution searched for a spec path, if any ('train.epochs' finds key 'epochs')."""
        return next((p for k, p in self.search.parameters.items() if param_path(k) == path), None)

    def with_values(self, values: dict[str, Any]) -> Spec:
        """The fixed spec of one trial: these searched values (keys as in search.parameters) put
        in and validated; nothing is left to search in it."""
        raw = self.model_dump()
        raw["search"].update(parameters={}, points_to_evaluate=[], prefer={})
        raw["compare"] = None  # a trial is one arm's (its spec comes from Spec.arm)
        for key, value in values.items():
            set_path(raw, param_path(key), value)
        # ASHA's grace period is the sweep's; a trial planned shorter simply ends before it
        length = raw["train"]["images"] or raw["train"]["epochs"]
        raw["search"]["grace_period"] = min(raw["search"]["grace_period"], length)
        return Spec.model_validate(raw)


def weights_key(model: Model, weights: dict) -> str:
    """The key of a model section's weights in model.resolve_all's mapping (or in one with the
    same keys, such as the labels): `setting@arch` where the sweep has one per arch (model.arch
    searched), else the setting."""
    per_arch = f"{model.weights}@{model.arch}"
    return per_arch if per_arch in weights else model.weights


def param_path(key: str) -> str:
    """'lr' -> 'train.lr'; dotted keys are full spec paths already."""
    return key if "." in key else f"train.{key}"


def same_point(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two points of a search space are one config (floats to 12 significant digits:
    values read back from trials.csv)."""
    def norm(v: Any) -> Any:
        return float(f"{v:.12g}") if isinstance(v, float) else v

    return a.keys() == b.keys() and all(norm(a[k]) == norm(b[k]) for k in a)


def get_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(obj, BaseModel) and part in type(obj).model_fields:
            obj = getattr(obj, part)
        elif isinstance(obj, dict) and part in obj:
            obj = obj[part]
        else:
            raise KeyError(path)
    return obj


def set_path(raw: dict, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for part in parents:
        raw = raw.setdefault(part, {})
        if not isinstance(raw, dict):
            raise KeyError(path)
    raw[leaf] = value


def _check_value(spec: Spec, path: str, value: Any, where: str) -> list[str]:
    """Validate one candidate value for a field by putting it into a copy of the spec."""
    raw = spec.model_dump()
    raw["search"] = {}  # the search section is not under test here; avoid recursion
    raw["compare"] = None
    set_path(raw, path, value)
    try:
        Spec.model_validate(raw)
    except ValidationError as e:
        hint = "; for a whole-number field use choice, randint, or quniform with a whole step"
        return [f"{where}: value {value!r}: {err['msg'].removeprefix('Value error, ')}"
                + (hint if err["type"] == "int_from_float" else "") for err in e.errors()]
    return []
