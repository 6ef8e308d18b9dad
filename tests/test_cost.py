"""The cost figures quoted in sweeps/fashion-best.yaml, recounted with FlopCounterMode."""

import re
from pathlib import Path

import pytest

from tuner.bench.flops import STEMS, images_per_s, train_flops_per_image

HEADER = (Path(__file__).resolve().parents[1] / "sweeps" / "fashion-best.yaml").read_text()


@pytest.fixture(scope="module")
def flops():
    return {stem: train_flops_per_image(stem, batch_size=2) for stem in STEMS}


@pytest.mark.parametrize("stem", STEMS)
def test_header_quotes_the_counted_flops(flops, stem):
    quoted = re.search(rf"^#   {str(stem).lower()}\b.*?\s(\d+\.\d+)\s+(\d+\.\d+)", HEADER, re.M)
    assert quoted, f"no row for {stem} in the header"
    gflop, pflop = map(float, quoted.groups())
    assert round(flops[stem] / 1e9, 3) == gflop
    assert round(flops[stem] * 54_000 * 9 / 1e15, 2) == pflop


def test_stride1_pool_is_about_a_quarter_of_stride1(flops):
    assert 0.2 < flops["stride1_pool"] / flops["stride1"] < 0.3
    assert flops[False] < flops["stride1_pool"] < flops["stride1"]


def test_throughput_is_measured():
    import torch

    assert images_per_s(False, torch.device("cpu"), batch_size=4, steps=1, warmup=1) > 0
