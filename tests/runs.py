"""Real runs that several tests read, each started once per test session and only when a test asks
for it (session-scoped fixtures, registered by conftest.py). A run costs a sweep's fixed ~20-40 s
outside training, so the suite pays it once per kind of run, not once per test.

Tests read these runs and never change them: a test that changes a run (export into it, resume it,
move its files) copies it first, `shutil.copytree(run, tmp_path / "run")`.

- quick_sweep: the quick Fashion-MNIST sweep, with a diverging point, planted weights, gradual
  unfreezing and ASHA folded in (test_e2e.py).
- folder_sweep: a finished sweep of a drawn image folder (test_folder.py, test_artifact.py).
- comparison: a comparison of two arms, killed after its first step and resumed to its end
  (test_compare.py, test_transfer.py).
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import (FOLDER_QUICK, ROOT, make_image_folder, reports, run_cli, start_cli,
                     stop_group, wait_for)


def planted_weights(folder: Path) -> tuple[Path, dict]:
    """A resnet18 state_dict file standing in for pretrained weights (no ImageNet file exists here,
    and one planted under torchvision's ImageNet name fails its hash check)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(state, folder / "pretrained.pt")
    return folder / "pretrained.pt", state


def sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


# --- the quick Fashion-MNIST sweep ----------------------------------------------------------------


@dataclass
class QuickSweep:
    proc: object  # the CLI's CompletedProcess
    runs: list  # the run folders it wrote (one)
    weights: Path  # the planted state_dict
    points: dict  # name -> the point that trial was given (search.points_to_evaluate)

    @property
    def run(self) -> Path:
        (run,) = self.runs
        return run


# Four trials, every one a given point (so which trial does what never depends on the searcher's
# draws), two at a time, under ASHA (its one rung at epoch 1, of 2):
#   planted, planted_slow: the planted state_dict, unfrozen gradually, two epochs, with the
#   controlled variables the quick sweep otherwise leaves at their defaults: conv1 summed, a 10x
#   head lr, crop and flip augmentation. They start first, so the first of them at the rung has no
#   result to be compared with and finishes; ASHA may stop the other.
#   learner: ImageNet weights (here: the loud fallback to random init), one epoch: the config
#   that did best in the quick sweep test_e2e.py ran before (HyperOpt's draw with search.seed 0;
#   val 0.50, test 0.448 on these subsets: one epoch at batch 64 stays near chance on validation,
#   its batch-norm statistics too raw);
#   diverging: SGD at lr 1e4, its loss becomes nan in epoch 1 and the sweep goes on.
PLAIN = {"model.conv1": "reinit", "model.head_lr_multiplier": 1,
         "data.augment.crop_padding": 0, "data.augment.hflip": False}
CONTROLLED = {"model.conv1": "sum", "model.head_lr_multiplier": 10,
              "data.augment.crop_padding": 2, "data.augment.hflip": True}
QUICK_POINTS = {
    "planted": {"model.weights": "PLANTED", "model.freeze": "gradual", "optimizer": "adam",
                "epochs": 2, "batch_size": 64, "lr": 1.0e-3, **CONTROLLED},
    "planted_slow": {"model.weights": "PLANTED", "model.freeze": "gradual", "optimizer": "adam",
                     "epochs": 2, "batch_size": 128, "lr": 1.0e-4, **CONTROLLED},
    "learner": {"model.weights": "imagenet", "model.freeze": "none", "optimizer": "adam",
                "epochs": 1, "batch_size": 128, "lr": 0.0009581594376299178, **PLAIN},
    "diverging": {"model.weights": "imagenet", "model.freeze": "none", "optimizer": "sgd",
                  "epochs": 2, "batch_size": 128, "lr": 1.0e+4, **PLAIN},
}
QUICK_SPACE = {"model.weights": {"choice": ["imagenet", "PLANTED"]},
               "model.freeze": {"choice": ["none", "gradual"]},
               "optimizer": {"choice": ["adam", "sgd"]},
               "epochs": {"choice": [1, 2]},
               "batch_size": {"choice": [64, 128]},
               "lr": {"loguniform": [1.0e-4, 1.0e+4]},
               **{k: {"choice": [PLAIN[k], CONTROLLED[k]]} for k in PLAIN}}


def flow(value) -> str:
    """A YAML flow value for --set (a path is written as it is)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(flow(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    return str(value)


@pytest.fixture(scope="session")
def quick_sweep(tmp_path_factory) -> QuickSweep:
    tmp_path = tmp_path_factory.mktemp("quick-sweep")
    weights, _ = planted_weights(tmp_path)
    planted = {"PLANTED": str(weights)}
    points = {name: {k: planted.get(v, v) if isinstance(v, str) else v for k, v in p.items()}
              for name, p in QUICK_POINTS.items()}
    space = {k: {"choice": [planted.get(c, c) if isinstance(c, str) else c for c in v["choice"]]}
             if "choice" in v else v for k, v in QUICK_SPACE.items()}
    proc = run_cli(
        "sweeps/fashion-quick.yaml", "--results", str(tmp_path / "results"),
        *sets("data.train_subset=700", "data.test_subset=500",
              # the spec's own settings are the learner's (the first trial runs them, and only
              # once: they are one of the given points)
              "train.batch_size=128", f"train.lr={QUICK_POINTS['learner']['lr']!r}",
              "search.scheduler=asha",
              "search.num_samples=4", "search.n_initial_points=2",
              f"search.parameters={flow(space)}",
              f"search.points_to_evaluate={flow(list(points.values()))}"),
        tmp_path=tmp_path)
    runs = list((tmp_path / "results" / "fashion-quick").glob("*"))
    return QuickSweep(proc, runs, weights, points)


# --- an image folder's sweep ----------------------------------------------------------------------


@dataclass
class FolderSweep:
    proc: object
    root: Path  # the image folder (train/ with odd files and junk, test/)
    cache: Path  # the decode cache the sweep wrote
    results: Path
    run: Path


@pytest.fixture(scope="session")
def folder_sweep(tmp_path_factory) -> FolderSweep:
    """sweeps/folder-quick.yaml (FOLDER_QUICK: 2 trials of 3 epochs from random init) on a drawn
    folder of 3 classes, 24 train and 8 test images each, with odd files and junk in train/."""
    tmp_path = tmp_path_factory.mktemp("folder-sweep")
    root = make_image_folder(tmp_path / "imgs", train_per_class=24, test_per_class=8)
    cache, results = tmp_path / "cache", tmp_path / "results"
    proc = run_cli(*FOLDER_QUICK, "--set", f"data.root={root}", "--set", f"data.cache={cache}",
                   "--results", str(results), tmp_path=tmp_path)
    runs = list(results.glob("folder-quick/*"))
    return FolderSweep(proc, root, cache, results, runs[0] if len(runs) == 1 else None)


# --- a comparison, interrupted and resumed ------------------------------------------------------


@dataclass
class Comparison:
    run: Path
    weights: Path  # the planted state_dict arm "planted" starts from
    first: list  # trial folders of arm planted's search, as the killed driver left them
    state_after_kill: str  # status.json's state once the driver was killed
    resumed: object  # the --resume's CompletedProcess


def _step_done(results: Path, step: str):
    for status in Path(results).glob("*/*/status.json"):
        try:
            if step in json.loads(status.read_text()).get("compare", {}).get("done", []):
                return status.parent
        except (json.JSONDecodeError, FileNotFoundError):
            pass
    return None


@pytest.fixture(scope="session")
def comparison(tmp_path_factory) -> Comparison:
    """sweeps/transfer-target.yaml's five classes, compared as two arms that differ in weights
    (planted state_dict / none), images per class (10 / 40) and freezing (none / head): 2 search
    trials, the best confirmed (and the other too if it challenges) and 2 repeats each, 1 epoch. The driver is killed (SIGKILL, with its embedded Ray) once
    the first arm's search is done, and the run is resumed to its end."""
    tmp_path = tmp_path_factory.mktemp("comparison")
    weights, _ = planted_weights(tmp_path)
    results = tmp_path / "results"
    args = [str(ROOT / "sweeps" / "transfer-target.yaml"), "--results", str(results),
            *sets("model.weights=none", "data.train_subset=600", "data.test_subset=300",
                  "search.scheduler=fifo", "search.num_samples=2", "search.n_initial_points=1",
                  "search.parameters={lr: {loguniform: [1.0e-3, 1.0e-2]}}", "search.points_to_evaluate=[]",
                  "search.prefer={}",
                  "train.epochs=1", "compare.repeats=2", "search.confirm_top_k=1",
                  f"compare.arms={{planted: {{model.weights: {weights}, data.train_per_class: 10}}, "
                  "scratch: {model.weights: none, data.train_per_class: 40, model.freeze: head}}")]
    proc = start_cli(*args, tmp_path=tmp_path)
    try:
        run = wait_for(lambda: _step_done(results, "search:planted"), 400,
                       "the first arm's search to finish", proc)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver dies (and its embedded Ray with it)
    finally:
        stop_group(proc)
    first = sorted(r["trial_dir"] for r in reports(run / "trials" / "planted" / "search"))
    state = json.loads((run / "status.json").read_text())["state"]
    resumed = run_cli("--resume", str(run), tmp_path=tmp_path)
    return Comparison(run, weights, first, state, resumed)
