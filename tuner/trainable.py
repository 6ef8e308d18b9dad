"""The per-trial function Ray Tune runs: build model, make batches, train an epoch, evaluate, report.

Fixed inputs (the validated spec, the dataset, references to the initial weights) arrive through
`tune.with_parameters`, so each node gets them once from Ray's object store; the trial's `config`
holds only the searched values.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import torch
from ray import tune
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from tuner.batches import DeviceSplit, eval_batches, steps_per_epoch, train_batches
from tuner.data import Dataset
from tuner.device import autocast, memory_format, setup, trial_device
from tuner.model import (
    CHECKPOINT_FILE,  # a trial checkpoint's file: model.weights reads it too
    Weights,
    apply_freeze,
    build_model,
    make_optimizer,
    model_state,
    set_train_mode,
    surgery,
    weights_key,
)
from tuner.schedule import make_lr_schedule
from tuner.spec import Spec

# The validation loss a diverged trial reports: above any finite loss evaluate() can return (it sums
# in float32), and finite. HyperOpt takes inf too, but inf is also the loss TPE gives trials with
# no result yet, and result.json would hold `Infinity`, which is not JSON.
DIVERGED_LOSS = float(torch.finfo(torch.float32).max)


def compiled(model: nn.Module, mode: str) -> nn.Module:
    """The module the training steps call: `model` itself, or torch.compile'd in `mode`. It shares
    the parameters, so evaluation and checkpoints keep using the plain module (no recompiles for the
    evaluation batch size, no `_orig_mod.` prefix in saved state)."""
    if mode == "none":
        return model
    # A reused worker runs many trials: start each from empty in-memory caches, so earlier trials'
    # graphs never count against dynamo's recompile limit (inductor's disk cache stays warm).
    torch._dynamo.reset()
    return torch.compile(model, mode=mode)


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, batches, precision: str,
                device: torch.device, scheduler: LRScheduler | None = None,
                label_smoothing: float = 0.0) -> tuple[float, float, int]:
    """One pass over the batches, the scheduler stepped after every batch; returns (mean loss,
    accuracy, images seen). The loss is the smoothed one that is trained on."""
    loss_sum = torch.zeros((), device=device)  # summed on the device: no sync per step
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for x, y in batches:
        with autocast(device, precision):
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    return loss_sum.item() / seen, correct.item() / seen, seen


@torch.inference_mode()
def evaluate(model: nn.Module, data: DeviceSplit, batch_size: int, precision: str) -> tuple[float, float]:
    """(mean loss, accuracy) over a whole split, in large batches."""
    model.eval()
    device = data.images.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for x, y in eval_batches(data, batch_size, memory_format(device, precision)):
        with autocast(device, precision):
            logits = model(x)
        # plain cross-entropy, never label-smoothed: val_loss stays comparable across trials
        loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    return loss_sum.item() / len(data), correct.item() / len(data)


def train_trial(config: dict, *, spec: Spec, data: Dataset, weights: dict[str, ray.ObjectRef],
                stop_points: frozenset[float] = frozenset()) -> None:
    """One trial: the spec with this trial's searched values, trained and reported once per epoch.
    `weights` maps each weights setting the sweep can use to its resolved Weights in Ray's object
    store (the trial fetches the one it starts from).

    `stop_points` are where the scheduler may stop the trial (ASHA's rungs, in the spec's length
    unit), and `stop_epochs` the epochs that reach them. The trial validates
    there and after its last epoch (every epoch with run.validation: every_epoch), and checkpoints
    there (a stopped trial is tested on the epoch it reported), after its last epoch, and in between
    as run.checkpoint_every and run.checkpoint_minutes ask. An epoch that is not validated reports
    no val_* metrics.

    With search.select: best_epoch every epoch is validated, each report carries `score` (the best
    validated epoch's metric so far: what the searcher and ASHA read) and `score_epoch`, an epoch
    that improves the score is checkpointed, and every checkpoint after it keeps that epoch's
    weights (`best`), so the rolling checkpoint never loses them."""
    spec = spec.with_values(config)
    data = data.for_training(spec.data)  # an arm's (or a searched) data.train_per_class
    spec = spec.for_training_set(len(data.train))  # a length in images: epochs for this size
    stops = stop_epochs(stop_points, spec, len(data.train))
    initial: Weights = ray.get(weights[weights_key(spec.model, weights)])
    device = trial_device()
    setup(device, spec.resources.cpu, spec.train.precision)
    torch.manual_seed(spec.train.seed)
    fmt = memory_format(device, spec.train.precision)
    model = build_model(spec.model, initial, data.in_channels, data.num_classes)
    model = model.to(device, memory_format=fmt)
    started_from = initial.label
    if initial.state_dict is not None:  # which tensors were loaded, adapted, re-initialised
        started_from += "; " + surgery(spec.model, initial, data.in_channels, data.num_classes)
    optimizer = make_optimizer(model, spec.model, spec.train)
    scheduler = make_lr_schedule(optimizer, spec.train, steps_per_epoch(len(data.train),
                                                                      spec.train.batch_size))
    step_model = compiled(model, spec.train.compile)

    start = 0
    best: Best | None = None  # search.select: best_epoch: the best validated epoch so far
    checkpoint = tune.get_checkpoint()
    if checkpoint:  # a retry or a resumed sweep: continue after the last finished epoch
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / CHECKPOINT_FILE, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        if "optimizer" in state:  # a last epoch's checkpoint has none: nothing trains after it
            optimizer.load_state_dict(state["optimizer"])
        if "scheduler" in state:  # checkpoints from before schedules have none: constant lr
            scheduler.load_state_dict(state["scheduler"])
        start = state["epoch"]
        if "best" in state:  # search.select: best_epoch
            best = Best(state["best"]["epoch"], state["best"]["score"],
                        state["best"].get("model") or clone_state(state["model"]))

    train_set = DeviceSplit.put(data.train, device, data.pixels)
    val_set = DeviceSplit.put(data.val, device, data.pixels)
    context = ray.get_runtime_context()  # where this attempt runs: retries may move it
    node = {"node_ip": ray.util.get_node_ip_address(), "node_id": context.get_node_id(),
            "pid": os.getpid()}
    since_checkpoint = 0.0  # seconds of training since the last checkpoint (or the trial's start)
    for epoch in range(start, spec.train.epochs):
        t0 = time.perf_counter()
        set_train_mode(model, apply_freeze(model, spec.model, epoch), spec.model.arch)
        batches = train_batches(train_set, spec.train.batch_size, spec.train.seed, epoch,
                                spec.data.augment, fmt)
        train_loss, train_acc, seen = train_epoch(step_model, optimizer, batches, spec.train.precision,
                                                  device, scheduler, spec.train.label_smoothing)
        train_s = time.perf_counter() - t0
        since_checkpoint += train_s
        validate, save = epoch_plan(epoch + 1, spec, stops, since_checkpoint)
        last = epoch + 1 == spec.train.epochs
        scores, validate_s = {}, 0.0
        if validate:
            val_loss, val_acc = evaluate(model, val_set, spec.train.eval_batch_size,
                                         spec.train.precision)
            scores = {"val_loss": val_loss, "val_accuracy": val_acc}
            validate_s = time.perf_counter() - t0 - train_s
        if spec.search.select == "best_epoch" and scores and improves(
                scores[spec.search.metric], best, spec.search.mode):
            best = Best(epoch + 1, scores[spec.search.metric], None)  # the model itself, for now
            save = True  # Lightning's ModelCheckpoint saves where the monitored metric improves
        if best is not None:
            scores.update(score=best.score, score_epoch=best.epoch)
        metrics = {
            "epoch": epoch + 1,  # epochs completed
            "epochs_planned": spec.train.epochs,
            "images_seen": (epoch + 1) * len(data.train),  # epochs x training images: ASHA's clock
            "train_loss": train_loss,
            "train_accuracy": train_acc,
            **scores,
            "epoch_time_s": time.perf_counter() - t0,  # train + validation, seconds
            "train_s": train_s,
            "validate_s": validate_s,
            "train_images": seen,  # images trained on this epoch
            "images_per_s": seen / train_s,  # training images per second
            # where the lr schedule left train.lr at the epoch's end (the base group's lr)
            "learning_rate": spec.train.lr * optimizer.param_groups[0]["lr"] / scheduler.base_lrs[0],
            "device": str(device),
            "weights": started_from,  # what this trial really started from, and how
            **node,
        }
        error = divergence(train_loss, scores.get("val_loss", 0.0), epoch + 1)
        if error:
            # Stop here rather than raise: a retry would diverge the same way.
            tune.report(diverged_report(metrics, error, spec.search.mode))
            return
        if not save:
            tune.report({**metrics, "checkpoint_bytes": 0, "checkpoint_s": 0.0})
            continue
        t1 = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / CHECKPOINT_FILE
            state = {"model": model.state_dict(), "scheduler": scheduler.state_dict(),
                     "epoch": epoch + 1}
            if best is not None:  # the best epoch's weights travel in every later checkpoint
                state["best"] = {"epoch": best.epoch, "score": best.score}
                if best.epoch != epoch + 1:
                    state["best"]["model"] = best.state
            if not last:  # the optimizer's state (Adam's: twice the model) only where training
                state["optimizer"] = optimizer.state_dict()  # can go on from this checkpoint
            torch.save(state, path)
            metrics["checkpoint_bytes"] = path.stat().st_size  # written to storage this epoch
            metrics["checkpoint_s"] = time.perf_counter() - t1  # the local write; Tune's copy to
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))  # storage is not in it
        since_checkpoint = 0.0
        if best is not None and best.state is None:  # kept (on the CPU) for the checkpoints after
            best = Best(best.epoch, best.score, clone_state(model.state_dict()))


@dataclass(frozen=True)
class Best:
    """search.select: best_epoch: a trial's best validated epoch, its metric and its weights (None
    while they are the model's own, in the epoch that set them)."""

    epoch: int
    score: float
    state: dict | None


def improves(value: float, best: Best | None, mode: str) -> bool:
    """Whether a validated epoch's metric beats the best so far: strictly, so that of equal epochs
    the first counts (as trials_table picks it)."""
    if not math.isfinite(value):
        return False
    return best is None or (value > best.score if mode == "max" else value < best.score)


def clone_state(state: dict) -> dict:
    """A CPU copy of a state_dict: the best epoch's weights, kept while training changes the model."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def stop_epochs(points: frozenset[float], spec: Spec, train_images: int) -> frozenset[int]:
    """The epochs at which a trial reaches the scheduler's stop points: the first epoch at or past
    each, counted in epochs or in images seen (epochs x `train_images`)."""
    per_epoch = train_images if spec.length_unit == "images" else 1
    return frozenset(max(1, math.ceil(p / per_epoch)) for p in points)


def epoch_plan(epoch: int, spec: Spec, stop_epochs: frozenset[int],
               since_checkpoint: float) -> tuple[bool, bool]:
    """(validate, checkpoint) after `epoch` (1-based), with `since_checkpoint` seconds trained since
    the last checkpoint. A decision reads the epoch where the scheduler may stop the trial and its
    last: both are validated and checkpointed. Other epochs are validated only with run.validation:
    every_epoch or search.select: best_epoch (which then checkpoints an epoch that improves the
    score itself), and checkpointed after the first (storage that refuses checkpoints fails the trial
    within an epoch, and a trial stopped after it resumes from there), every run.checkpoint_every
    epochs, or once run.checkpoint_minutes of training have passed."""
    decides = epoch == spec.train.epochs or epoch in stop_epochs
    every = spec.run.checkpoint_every
    save = (decides or epoch == 1 or bool(every and epoch % every == 0)
            or since_checkpoint >= 60 * spec.run.checkpoint_minutes)
    # search.select: best_epoch chooses among validated epochs: all of them count
    validate = (decides or spec.run.validation == "every_epoch"
                or spec.search.select == "best_epoch")
    return validate, save


def divergence(train_loss: float, val_loss: float, epoch: int) -> str | None:
    """Why a trial must stop (a non-finite training or validation loss), or None."""
    if not math.isfinite(train_loss):
        return f"loss became {train_loss} in epoch {epoch}"
    if not math.isfinite(val_loss):
        return f"validation loss became {val_loss} in epoch {epoch}"
    return None


def diverged_report(metrics: dict, error: str, mode: str = "max") -> dict:
    """The last report of a trial that diverged: the worst scores, so that the searcher and ASHA
    rank it below every trial that trained (NaN logits would score the share of class 0, their
    argmax, and TPE cannot rank a NaN loss), and `error`, which says what happened."""
    # search.select: best_epoch: the score too (an earlier good epoch must not rank it)
    worst = {"score": 0.0 if mode == "max" else DIVERGED_LOSS} if "score" in metrics else {}
    return {**metrics, "val_accuracy": 0.0, "val_loss": DIVERGED_LOSS, "error": error, **worst}


def test_checkpoint(checkpoint: tune.Checkpoint, spec: Spec, data: Dataset) -> dict:
    """Loss and accuracy of a trial's checkpoint on the test split, on this worker's device and at
    the trial's precision (run as a Ray task with the trial's resources), the epoch the checkpoint
    holds, and where it ran."""
    device = trial_device()
    setup(device, spec.resources.cpu, spec.train.precision)
    with checkpoint.as_directory() as d:
        model = load_checkpoint_model(d, spec, data, device)
        state = torch.load(Path(d) / CHECKPOINT_FILE, mmap=True, weights_only=True)
        epoch = state["epoch"]
        model_epoch = state["best"]["epoch"] if "best" in state else epoch
    test = DeviceSplit.put(data.test, device, data.pixels)
    loss, accuracy = evaluate(model, test, spec.train.eval_batch_size, spec.train.precision)
    # checkpoint_epoch: the epoch the checkpoint was saved after; model_epoch: whose weights were
    # tested (search.select: best_epoch: the best validated epoch's)
    return {"test_accuracy": accuracy, "test_loss": loss, "checkpoint_epoch": epoch,
            "model_epoch": model_epoch,
            "test_device": str(device),
            "test_node_ip": ray.util.get_node_ip_address(), "test_pid": os.getpid()}


def load_checkpoint_model(path: str | Path, spec: Spec, data: Dataset,
                          device: torch.device) -> nn.Module:
    """Rebuild a trial's model (spec with its searched values) and load its checkpoint (its best
    epoch's weights under search.select: best_epoch)."""
    model = build_model(spec.model, Weights(None, "from checkpoint"), data.in_channels,
                        data.num_classes)
    state = torch.load(Path(path) / CHECKPOINT_FILE, map_location=device, weights_only=True)
    model.load_state_dict(model_state(state))
    return model.to(device, memory_format=memory_format(device, spec.train.precision))


def checkpoint_weights(checkpoint: tune.Checkpoint) -> bytes:
    """The model's weights in a trial's checkpoint as a plain fp32 CPU state_dict, torch.save'd
    (about 45 MB; no optimizer or scheduler state). Run as a Ray task, so that it reads the
    checkpoint where the trials' storage is reachable (a shared folder or object storage)."""
    with checkpoint.as_directory() as d:
        state = model_state(torch.load(Path(d) / CHECKPOINT_FILE, map_location="cpu",
                                       weights_only=True))
    plain = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    buffer = io.BytesIO()
    torch.save(plain, buffer)
    return buffer.getvalue()
