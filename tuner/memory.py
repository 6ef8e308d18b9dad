"""Will the resident data fit? Checked in the driver, before any trial starts.

Each trial keeps its train and validation splits on its device as uint8, beside the model, its
gradients and optimizer state, and the activations of its largest batch: the larger of training's
(what autograd saves for backward) and evaluation's (at train.eval_batch_size, capped at the
validation split's size; under inference_mode only the tensors in use are alive). On a GPU that
must fit in the trial's share of the GPU's memory; on CPUs in the RAM of a node, once per trial
running there, and once more in Ray's object store (the node's copy the trials are given).

The check takes the most demanding trial the run can have: over every arm of `compare:` and every
value searched (or set by an arm) of the fields that change memory (MEMORY_FIELDS).
"""

from __future__ import annotations

import logging
import math
import subprocess
from functools import lru_cache
from itertools import product

import torch

from tuner.backbones import backbone
from tuner.batches import largest_batch
from tuner.data import Dataset
from tuner.device import autocast
from tuner.errors import InputError
from tuner.model import Weights, build_model
from tuner.spec import Model, Spec, get_path

log = logging.getLogger(__name__)

GPU_RESERVE = 1 << 30  # bytes: CUDA context, cuDNN workspaces and allocator slack, per trial
MB = 1e6
# The fields whose value changes a trial's memory (batch sizes scale the activations, the stem their
# sizes, precision their dtype, the optimizer its state). data.* is fixed for a run; freeze is
# counted at its largest (every parameter trained), whatever it is.
MEMORY_FIELDS = ("train.batch_size", "train.eval_batch_size", "train.optimizer", "train.momentum",
                 "model.arch", "model.small_input_stem", "train.precision")


def check_resident(spec: Spec, data: Dataset, nodes: list[dict]) -> None:
    """Raise InputError, with the numbers and what to change, if a trial's resident data and
    training cannot fit its device. `nodes`: the Resources of Ray's live nodes."""
    need, where = worst_trial(spec, data)
    log.info("memory check: the most demanding trial (%s) needs %s MB", where, _parts(need))
    if spec.resources.gpu > 0:
        total = gpu_memory()
        if total is None:
            log.info("no nvidia-smi here: the check that the data fits on the GPU is skipped")
            return
        problem = fits_gpu(need, total, spec.resources.gpu)
    else:
        problem = fits_cpu(need, resident_bytes(data), nodes, spec)
    if problem:
        raise InputError(f"{problem}; the most demanding trial: {where}; {_advice(spec, data)}")


def resident_bytes(data: Dataset) -> int:
    """Bytes of uint8 images a trial keeps on its device (train and validation)."""
    return data.train.images.nbytes + data.val.images.nbytes


def trial_bytes(spec: Spec, data: Dataset) -> dict[str, int]:
    """A trial's memory in bytes, by part, for the most demanding trial of the run (worst_trial)."""
    return worst_trial(spec, data)[0]


def worst_trial(spec: Spec, data: Dataset) -> tuple[dict[str, int], str]:
    """The memory in bytes, by part (data; model: weights, gradients and optimizer state; the
    larger of the training and the evaluation activations), of the most demanding trial any arm
    of the run can have, and that trial's setting in words."""
    arms = [(name, spec.arm(name)) for name in spec.compare.arms] if spec.compare else [(None, spec)]
    found = []
    for name, arm in arms:
        need, where = _worst_setting(arm, data)
        found.append((sum(need.values()), need, f"arm {name}, {where}" if name else where))
    _, need, where = max(found, key=lambda f: f[0])
    return need, where


def values(spec: Spec, path: str) -> list:
    """The values a trial of this spec can have for a field: the searched distribution's bounds
    (every choice), or the spec's own value."""
    searched = spec.search_for(path)
    return searched.extremes() if searched else [get_path(spec, path)]


def optimizer_states(optimizer: str, momentum: float) -> int:
    """Tensors of a parameter's size an optimizer keeps per parameter: Adam and AdamW two moments
    (exp_avg, exp_avg_sq), SGD one momentum buffer, none without momentum."""
    if optimizer in ("adam", "adamw"):
        return 2
    return 1 if momentum > 0 else 0


def _worst_setting(spec: Spec, data: Dataset) -> tuple[dict[str, int], str]:
    """trial_bytes over every memory-changing value one (arm's) spec can take. Bytes grow with each
    batch size and optimizer state apart, so their largest values are taken; the stem and the
    precision change the activations' sizes, so each combination is measured."""
    can = {path: values(spec, path) for path in MEMORY_FIELDS}
    states, optimizer = max((optimizer_states(o, m), o) for o, m in product(
        can["train.optimizer"], can["train.momentum"]))
    # a remainder of under half a batch joins the last batch, which then holds more (and a split
    # smaller than a batch is counted at the batch size all the same: a bound, not a guess)
    batch = int(max(can["train.batch_size"]))
    batch = max(batch, largest_batch(len(data.for_training(spec.data).train), batch))
    # evaluate() runs the validation split in batches of eval_batch_size: never more than the split
    eval_batch = min(int(max(can["train.eval_batch_size"])), len(data.val))
    shape = data.train.images.shape[-2:] if data.pixels.crop is None else (data.pixels.crop,) * 2
    best = None
    archs = can["model.arch"]
    for arch, stem, precision in product(archs, can["model.small_input_stem"],
                                         can["train.precision"]):
        if stem and backbone(arch).family != "resnet":
            continue  # a ResNet's stem only (the spec refuses it with another arch)
        section = spec.model.model_copy(update={"arch": arch, "small_input_stem": stem,
                                                "weights": "none"})
        params, train, evaluation = _measured(section.model_dump_json(), data.in_channels,
                                              data.num_classes, tuple(shape), precision)
        peaks = {"training": train * batch, "evaluation": evaluation * eval_batch}
        phase = max(peaks, key=peaks.get)
        # each arch its own parameters: the worst trial is the largest sum, not the largest peak
        total = peaks[phase] + params * (2 + states)
        if best is None or total > best[0]:
            best = (total, peaks[phase], params,
                    f"{phase} at batch {batch if phase == 'training' else eval_batch}"
                    f" (training {peaks['training'] / MB:,.0f} MB, evaluation "
                    f"{peaks['evaluation'] / MB:,.0f} MB), "
                    + (f"{arch}, " if len(archs) > 1 else "")
                    + f"stem {stem or 'imagenet'}, {precision}")
    _, activations, params, where = best
    need = {"data": resident_bytes(data), "model": params * (2 + states), "activations": activations}
    return need, f"{where}, {optimizer} ({states} state(s) per parameter)"


@lru_cache(maxsize=64)
def _measured(model_json: str, in_channels: int, classes: int, shape: tuple[int, int],
              precision: str) -> tuple[int, int, int]:
    """(parameter bytes, per-image training and evaluation activation bytes) of one model section;
    cached, as arms and searched values share models."""
    net = build_model(Model.model_validate_json(model_json), Weights(None, "size estimate"),
                      in_channels, classes)
    params = sum(p.numel() * p.element_size() for p in net.parameters())
    return params, *per_image_bytes(net, (in_channels, *shape), precision)


def per_image_bytes(model: torch.nn.Module, shape: tuple[int, ...], precision: str) -> tuple[int, int]:
    """Activation bytes per image of this shape (C, H, W) at this precision: (training, evaluation).

    Training: what autograd saves for backward, and the input batch. The difference of two batch
    sizes leaves out what is saved once (autocast's weight copies); batches of 2 and 3, since
    BatchNorm cannot train on one image of 1x1 features (28x28 input).
    Evaluation: the most bytes alive at once in an inference forward of one image (the tensors of
    evaluation scale with the batch; the weights are counted in the model)."""
    for p in model.parameters():  # every stage trained: the most a freeze policy can save for backward
        p.requires_grad_(True)
    train = _saved_bytes(model, (3, *shape), precision) - _saved_bytes(model, (2, *shape), precision)
    return train, _inference_peak_bytes(model, (1, *shape), precision)


def _saved_bytes(model: torch.nn.Module, shape: tuple[int, ...], precision: str = "fp32") -> int:
    """Bytes autograd saves for backward in one forward pass of an input of this shape, and the
    input itself (the batch stays alive through the step); each storage counted once (an in-place
    ReLU's output is saved by it and by the next convolution)."""
    x = torch.zeros(shape)
    storages = {x.untyped_storage().data_ptr(): x.untyped_storage().nbytes()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            autocast(torch.device("cpu"), precision):
        model.train()(x)
    return sum(storages.values())


def _inference_peak_bytes(model: torch.nn.Module, shape: tuple[int, ...], precision: str) -> int:
    """The most activation bytes alive at once in an inference forward (as evaluate() runs it),
    seen by hooks on every module: at each leaf module's call, its input and output are alive, and
    so are the inputs of every module that encloses it (their callers hold them: a residual block's
    identity). Each storage counted once (in-place ops share them)."""
    held: list = []  # the inputs of the modules running now, outermost first
    peak = 0

    def enter(module, args):
        held.append(args)

    def leave(module, args, out):
        nonlocal peak
        held.pop()
        if next(module.children(), None) is None:  # a leaf: the tensors it makes are counted here
            alive = {}
            for t in [*(a for h in held for a in h), *args, out]:
                if isinstance(t, torch.Tensor):
                    alive[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            peak = max(peak, sum(alive.values()))

    hooks = [h for m in model.modules()
             for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    try:
        with torch.inference_mode(), autocast(torch.device("cpu"), precision):
            model.eval()(torch.zeros(shape))
    finally:
        for h in hooks:
            h.remove()
    return peak


def fits_gpu(need: dict[str, int], gpu_total: int, share: float) -> str | None:
    """A problem line if a trial's needs exceed its share of a GPU of gpu_total bytes."""
    budget = gpu_total * min(share, 1.0)
    total = sum(need.values()) + GPU_RESERVE
    if total <= budget:
        return None
    return (f"data: a trial needs about {total / MB:,.0f} MB on its GPU ({_parts(need)}, "
            f"{GPU_RESERVE / MB:,.0f} CUDA reserve) but gets {budget / MB:,.0f} MB "
            f"({share:g} of {gpu_total / MB:,.0f} MB)")


def fits_cpu(need: dict[str, int], shared: int, nodes: list[dict], spec: Spec) -> str | None:
    """A problem line if no node can hold its trials' needs in RAM (Ray's `memory`) and the
    shared copy in its object store."""
    best = None
    for node in nodes:
        cpus = node.get("CPU", 0)
        if cpus < spec.resources.cpu:
            continue
        trials = min(math.floor(cpus / spec.resources.cpu), spec.search.num_samples,
                     spec.search.max_concurrent or math.inf)
        ram = trials * sum(need.values())
        if ram <= node.get("memory", 0) and shared <= node.get("object_store_memory", 0):
            return None
        best = best or (trials, ram, node)
    if best is None:
        return None  # no node fits a trial at all: cluster.check_resources says so
    trials, ram, node = best
    return (f"data: {trials} trial(s) at a time on a node need about {ram / MB:,.0f} MB of RAM "
            f"({_parts(need)} each) and {shared / MB:,.0f} MB of Ray's object store, but the node "
            f"has {node.get('memory', 0) / MB:,.0f} MB and {node.get('object_store_memory', 0) / MB:,.0f} MB")


def _parts(need: dict[str, int]) -> str:
    return ", ".join(f"{k} {v / MB:,.0f}" for k, v in need.items())


def _advice(spec: Spec, data: Dataset) -> str:
    batches = "search smaller batch sizes (or lower train.eval_batch_size)"
    if spec.data.dataset == "imagefolder":
        n = len(data.train) + len(data.val)
        return (f"the {n} stored images are {spec.data.resize}x{spec.data.resize}: lower "
                f"data.resize (and data.image_size), {batches}, or run fewer "
                "trials per device (resources.gpu / resources.cpu, search.max_concurrent)")
    return (f"use data.train_subset, {batches}, or run fewer trials per device "
            "(resources.gpu / resources.cpu, search.max_concurrent)")


def gpu_memory() -> int | None:
    """Bytes of the smallest GPU nvidia-smi lists here, or None. (Not torch: that would hold a
    CUDA context in the driver for the whole sweep.)"""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout.split()
        return min(int(float(mib)) for mib in out) * (1 << 20) if out else None
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
