"""The memory check: every arm and every memory-changing searched value, the evaluation peak, the
optimizers' states, and the estimate against a peak measured on this CPU."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT

from tuner import folder, memory
from tuner.data import Dataset, Pixels, Split
from tuner.errors import InputError
from tuner.spec import Model
from tuner.specfile import validate

FOLDER = {"dataset": "imagefolder", "resize": 64, "image_size": 56}
PARAMS = 11_177_538  # ResNet-18 with a 2-way fc


def dataset(train: int, val: int, size: int = 64, crop: int | None = 56, channels: int = 3,
            classes: int = 2) -> Dataset:
    shape = (3, size, size) if channels == 3 else (size, size)

    def split(n):
        return Split(np.zeros((n, *shape), np.uint8), np.arange(n) % classes)

    pixels = Pixels(folder.IMAGENET_MEAN, folder.IMAGENET_STD, crop=crop) if channels == 3 else \
        Pixels((0.5,), (0.5,))
    return Dataset(split(train), split(val), split(10), "test", tuple("abcdefghij"[:classes]),
                   channels, pixels)


def per_image(stem=False, size=56, precision="fp32", channels=3, classes=2) -> tuple[int, int]:
    """(training, evaluation) activation bytes per image, as the check measures them (its cache)."""
    model = Model(weights="none", small_input_stem=stem).model_dump_json()
    params, train, evaluation = memory._measured(model, channels, classes, (size, size), precision)
    assert params == PARAMS * 4 or classes != 2
    return train, evaluation


def test_every_optimizer_counts_its_states():
    assert [memory.optimizer_states(o, m) for o, m in
            [("adam", 0.9), ("adamw", 0.9), ("sgd", 0.9), ("sgd", 0.0)]] == [2, 2, 1, 0]
    data = dataset(20, 20)
    for optimizer, states in [("adam", 2), ("adamw", 2), ("sgd", 1)]:
        need = memory.trial_bytes(validate({"data": FOLDER, "train": {"optimizer": optimizer}}), data)
        # weights, gradients and the states, 4 bytes a parameter each
        assert need["model"] == PARAMS * 4 * (2 + states), optimizer
    searched = validate({"data": FOLDER, "train": {"optimizer": "sgd", "momentum": 0.0},
                         "search": {"parameters": {"momentum": {"uniform": [0.0, 0.9]}}}})
    assert memory.trial_bytes(searched, data)["model"] == PARAMS * 4 * 3  # momentum > 0 can be drawn


def test_the_largest_searched_values_and_the_evaluation_peak_are_counted():
    data = dataset(200, 100)
    train, evaluation = per_image()
    plain = validate({"data": FOLDER, "train": {"batch_size": 16}})
    need, where = memory.worst_trial(plain, data)
    # evaluation takes the whole 100-image validation split at once (eval_batch_size 1024, capped)
    assert need["activations"] == max(16 * train, 100 * evaluation) == 100 * evaluation
    assert where.startswith("evaluation at batch 100")
    low_eval = validate({"data": FOLDER, "train": {"batch_size": 16, "eval_batch_size": 8}})
    assert memory.trial_bytes(low_eval, data)["activations"] == 16 * train
    searched = validate({"data": FOLDER, "train": {"eval_batch_size": 8}, "search": {"parameters": {
        "batch_size": {"choice": [16, 128, 32]}, "optimizer": {"choice": ["sgd", "adamw"]},
        "train.precision": {"choice": ["bf16", "fp32"]}}}})
    need, where = memory.worst_trial(searched, data)
    assert need["activations"] == 128 * train and need["model"] == PARAMS * 16
    assert "training at batch 128" in where and "fp32" in where and "adamw" in where
    # Fashion-MNIST's 28x28 gray images: the stride-1 stem keeps 28x28 maps in layer1
    fashion = dataset(50, 50, size=28, crop=None, channels=1, classes=10)
    stems = validate({"search": {"parameters": {"model.small_input_stem": {"choice": [False, "stride1"]}}}})
    imagenet_stem = per_image(False, 28, channels=1, classes=10)[0]
    stride1 = per_image("stride1", 28, channels=1, classes=10)[0]
    assert stride1 > 4 * imagenet_stem
    need, where = memory.worst_trial(stems, fashion)
    assert need["activations"] == 64 * stride1 and "stem stride1" in where
    # bf16 halves what convolutions save, about
    assert 0.4 < per_image(precision="bf16")[0] / train < 0.7


def test_an_arm_with_a_larger_batch_is_refused_where_the_spec_alone_passes():
    data = dataset(200, 200)
    raw = {"data": FOLDER, "resources": {"cpu": 1}, "search": {"num_samples": 2},
           "train": {"batch_size": 32}}
    node = [{"CPU": 1, "memory": 400e6, "object_store_memory": 1e9}]
    alone = validate(raw)
    assert sum(memory.trial_bytes(alone, data).values()) < 400e6
    memory.check_resident(alone, data, node)  # what the check saw of a comparison before: passes
    compare = validate({**raw, "compare": {"arms": {"sgd": {"optimizer": "sgd"},
                                                    "big": {"batch_size": 512}}}})
    need, where = memory.worst_trial(compare, data)
    assert need["activations"] == 512 * per_image()[0] and where.startswith("arm big, training at batch 512")
    with pytest.raises(InputError) as e:
        memory.check_resident(compare, data, node)
    assert "the most demanding trial: arm big" in str(e.value) and "\n" not in str(e.value)


MEASURE = r'''
import gc, re, sys, torch
from tuner.model import Weights, build_model, make_optimizer
from tuner.spec import Model, Train

def status(key):
    return int(re.search(rf"{key}:\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024

def reset():  # the high-water mark back to the resident size now (Linux: /proc/<pid>/clear_refs)
    gc.collect()
    open("/proc/self/clear_refs", "w").write("5")
    return status("VmRSS")

torch.set_num_threads(1)
spec = Model(weights="none")
model = build_model(spec, Weights(None, "x"), 3, 2)
base = reset()
with torch.inference_mode():
    model.eval()(torch.randn(128, 3, 56, 56))
evaluation = status("VmHWM") - base
optimizer = make_optimizer(model, spec, Train(optimizer="adamw"))
y = torch.zeros(32, dtype=torch.long)

def step():
    loss = torch.nn.functional.cross_entropy(model.train()(torch.randn(32, 3, 56, 56)), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()

step()  # the optimizer's states exist from here on, as in every step after a trial's first
optimizer.zero_grad(set_to_none=True)
base = reset()
step()
print(evaluation, status("VmHWM") - base)
'''


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's clear_refs")
def test_the_estimate_matches_the_peak_measured_on_the_cpu():
    """The resident high-water mark above the resident size before: an evaluation forward of 128
    images, and a steady training step of 32 (its optimizer states exist already, so what it adds
    is the gradients and the activations). Freed tensors go back to the OS at once with glibc's
    mmap threshold fixed low."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-c", MEASURE], env=env, capture_output=True, text=True,
                         timeout=300, cwd=Path(ROOT))
    assert out.returncode == 0, out.stderr
    measured_eval, measured_train = map(int, out.stdout.split())
    train, evaluation = per_image()
    estimate_eval, estimate_train = 128 * evaluation, PARAMS * 4 + 32 * train  # + the gradients
    print(f"evaluation of 128: estimate {estimate_eval / 1e6:.1f} MB, measured {measured_eval / 1e6:.1f} MB; "
          f"training step of 32: estimate {estimate_train / 1e6:.1f} MB, measured {measured_train / 1e6:.1f} MB")
    assert 0.8 < estimate_eval / measured_eval < 1.25
    assert 0.8 < estimate_train / measured_train < 1.25
