"""Will the resident data fit? Checked in the driver, before any trial starts.

Each trial keeps its train and validation splits on its device as uint8, beside the model, its
gradients and optimizer state, and the activations of its largest batch. On a GPU that must fit in
the trial's share of the GPU's memory; on CPUs in the RAM of a node, once per trial running there,
and once more in Ray's object store (the node's copy the trials are given).
"""

from __future__ import annotations

import logging
import math
import subprocess

import torch

from tuner.data import Dataset
from tuner.errors import InputError
from tuner.model import Weights, build_model
from tuner.spec import Spec

log = logging.getLogger(__name__)

GPU_RESERVE = 1 << 30  # bytes: CUDA context, cuDNN workspaces and allocator slack, per trial
MB = 1e6


def check_resident(spec: Spec, data: Dataset, nodes: list[dict]) -> None:
    """Raise InputError, with the numbers and what to change, if a trial's resident data and
    training cannot fit its device. `nodes`: the Resources of Ray's live nodes."""
    need = trial_bytes(spec, data)
    if spec.resources.gpu > 0:
        total = gpu_memory()
        if total is None:
            log.info("no nvidia-smi here: the check that the data fits on the GPU is skipped")
            return
        problem = fits_gpu(need, total, spec.resources.gpu)
    else:
        problem = fits_cpu(need, resident_bytes(data), nodes, spec)
    if problem:
        raise InputError(problem + "; " + _advice(spec, data))


def resident_bytes(data: Dataset) -> int:
    """Bytes of uint8 images a trial keeps on its device (train and validation)."""
    return data.train.images.nbytes + data.val.images.nbytes


def trial_bytes(spec: Spec, data: Dataset) -> dict[str, int]:
    """A trial's memory in bytes, by part: data, model (weights, gradients, optimizer state) and
    the activations saved for backward at the largest searched batch size."""
    model = build_model(spec.model, Weights(None, "size estimate"), data.in_channels,
                        data.num_classes)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    states = 2 if spec.train.optimizer == "adam" else 1  # Adam: two moments; SGD: momentum
    shape = data.train.images.shape[-2:] if data.pixels.crop is None else (data.pixels.crop,) * 2
    # the difference of two batch sizes leaves out what is saved once (the weights); batches of
    # 2 and 3, since BatchNorm cannot train on one image of 1x1 features (28x28 input)
    per_image = _saved_bytes(model, (3, data.in_channels, *shape)) - _saved_bytes(
        model, (2, data.in_channels, *shape))
    return {"data": resident_bytes(data), "model": params * (2 + states),
            "activations": per_image * max_batch_size(spec)}


def _saved_bytes(model: torch.nn.Module, shape: tuple[int, ...]) -> int:
    """Bytes autograd saves for backward in one forward pass of an input of this shape."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.train()(torch.zeros(shape))
    return total


def max_batch_size(spec: Spec) -> int:
    searched = spec.search_for("train.batch_size")
    return int(max(searched.extremes())) if searched else spec.train.batch_size


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
    if spec.data.dataset == "imagefolder":
        n = len(data.train) + len(data.val)
        return (f"the {n} stored images are {spec.data.resize}x{spec.data.resize}: lower "
                "data.resize (and data.image_size), search smaller batch sizes, or run fewer "
                "trials per device (resources.gpu / resources.cpu, search.max_concurrent)")
    return ("use data.train_subset, search smaller batch sizes, or run fewer trials per device "
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
