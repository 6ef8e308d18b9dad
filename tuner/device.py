"""Device choices, in one place: which device a trial (or its test evaluation) uses, its precision
and its memory layout. The same code runs on the CPU in tests and on CUDA on a GPU node.
"""

from __future__ import annotations

import functools
import logging
from contextlib import nullcontext

import ray
import torch

log = logging.getLogger(__name__)


def trial_device() -> torch.device:
    """The GPU Ray gave this worker, else the CPU. Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone for a
    task with no GPU, so torch.cuda.is_available() alone would put CPU trials on GPU 0."""
    return torch.device("cuda" if ray.get_gpu_ids() else "cpu")  # cuda:0 is the GPU Ray assigned


def setup(device: torch.device, cpus: float, precision: str) -> None:
    """Per-process settings for a worker that trains or evaluates on `device` with `cpus` cores."""
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(cpus)))  # Ray's CPU share, not every core of the node
        if precision == "bf16" and not cpu_has_bf16():
            log.warning("train.precision: bf16 on a CPU without native bf16 support is emulated "
                        "and slower than fp32")
    else:
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX); elsewhere oneDNN emulates it,
    slowly."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CUDA or the CPU (matmuls and convolutions in bf16, reductions and the loss in
    fp32); fp32 runs as it is."""
    if precision != "bf16":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def memory_format(device: torch.device, precision: str = "fp32") -> torch.memory_format:
    """channels_last where it pays: on CUDA cuDNN's fastest convolutions want it, and on the CPU
    oneDNN's bf16 convolutions (measured here: README, Speed); fp32 on the CPU gains nothing."""
    if device.type == "cuda" or precision == "bf16":
        return torch.channels_last
    return torch.contiguous_format
