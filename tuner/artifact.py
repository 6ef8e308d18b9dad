"""A run's model folder: the chosen trial's weights (model.pt) and its card (model.json).

    RUN_DIR/model/model.pt        plain fp32 state_dict of torchvision's model.arch (its first
                                  convolution and classifier as model.json's architecture and
                                  layers say), torch.load(weights_only=True)
    RUN_DIR/model/model.json      architecture, class names in label order, the evaluation
                                  preprocessing, the weights it was fine-tuned from, the chosen
                                  config and its scores, versions

A comparison writes one folder per arm, RUN_DIR/model/<arm>/. Everything a loader needs is in the
card, so `load` rebuilds the model without the run's spec, data or Ray.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

import tuner
from tuner.data import Dataset
from tuner.errors import InputError
from tuner.model import (CARD_FILE, MODEL_FILE, Weights, build_model, pretrained_card,
                         reference_shapes, skipped)
from tuner.results import plain, repeat_rows
from tuner.spec import Model, Spec, weights_key

log = logging.getLogger(__name__)

MODEL_DIR = "model"  # inside the run folder
CARD_FORMAT = 1  # bump when model.json's meaning changes


# --- writing --------------------------------------------------------------------------------------


def preprocessing(spec: Spec, data: Dataset) -> dict[str, Any]:
    """How evaluation turned an image file into model input, for the card (and tuner.predict)."""
    if spec.data.dataset == "fashion_mnist":
        return {"dataset": "fashion_mnist", "mode": "grayscale", "resize": 28, "crop": None,
                "mean": list(data.pixels.mean), "std": list(data.pixels.std),
                "steps": "decode to RGB (EXIF orientation applied), resize to 28x28 (antialiased), "
                         "to grayscale (ITU-R 601-2 luma), scale to 0..1, normalise by mean/std"}
    return {"dataset": "imagefolder", "mode": "RGB", "resize": spec.data.resize,
            "crop": data.pixels.crop, "mean": list(data.pixels.mean), "std": list(data.pixels.std),
            "steps": f"decode to RGB (EXIF orientation applied), resize to {spec.data.resize}x"
                     f"{spec.data.resize} (antialiased, aspect ratio not kept), centre crop "
                     f"{data.pixels.crop}x{data.pixels.crop}, scale to 0..1, normalise by mean/std"}


def make_card(spec: Spec, data: Dataset, *, trial_id: str, config: dict, scores: dict,
              started_from: str, weights: Weights | None, partial: bool = False,
              arm: str | None = None) -> dict[str, Any]:
    """model.json's content for a trial of `spec` (its searched values in `config`)."""
    trial = spec.with_values(config)
    digest = weights.sha256 if weights is not None else None
    if digest is None:  # only the label is known (a partial run's export): its short hash
        found = re.search(r"sha256:([0-9a-f]+)", started_from)
        digest = found.group(1) if found else None
    chosen = (f"the best trial so far on validation ({spec.search.metric}) of a sweep that has not "
              "finished: not tested" if partial else
              f"the best trial on validation ({spec.search.metric}), tested once after the sweep")
    if arm is not None:
        chosen = (f"arm {arm}: the repeat of its best config that scored best on validation "
                  f"({spec.search.metric}), tested once")
    side = data.pixels.crop or int(data.train.images.shape[-1])
    stem, head, _ = skipped(trial.model.arch)
    shapes = reference_shapes(trial.model.arch)  # torchvision's: 3 channels, 1000 classes
    return {
        "format": CARD_FORMAT,
        "weights_file": MODEL_FILE,
        "architecture": {"arch": trial.model.arch, "in_channels": data.in_channels,
                         "small_input_stem": trial.model.small_input_stem,
                         "num_classes": data.num_classes},
        # enough to rebuild and call the model without tuner: torchvision's arch with its first
        # convolution and classifier of these shapes (layers; a ResNet's conv1 stride 1 and no
        # max-pool for small_input_stem: stride1)
        "input": {"shape": [None, data.in_channels, side, side], "dtype": "float32",
                  "layout": "NCHW", "channels": "grayscale" if data.in_channels == 1 else "RGB",
                  "values": "normalised: (pixel / 255 - mean) / std, per channel"},
        "output": {"shape": [None, data.num_classes], "kind": "logits (softmax gives "
                   "probabilities), in the order of classes"},
        "layers": {stem: [shapes[stem][0], data.in_channels, *shapes[stem][2:]],
                   head: [data.num_classes, shapes[head][1]]},
        "classes": list(data.classes),
        "preprocessing": preprocessing(spec, data),
        "fine_tuned_from": {"label": started_from, "sha256": digest},
        # model.weights: imagenet: torchvision's weights entry and the evaluation transforms it
        # was trained for (resize, crop, mean, std); the model's own input is `preprocessing`.
        "pretrained": pretrained_of(started_from, weights),
        "sweep": spec.name,
        **({"arm": arm} if arm is not None else {}),
        "trial_id": trial_id,
        "config": config,
        "chosen": chosen,
        "partial": partial,
        "metric": spec.search.metric,
        **scores,
        "versions": {"tuner": tuner.__version__, "torch": version("torch"),
                     "torchvision": version("torchvision")},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def pretrained_of(started_from: str, weights: Weights | None) -> dict | None:
    """The torchvision weights entry (and its transforms) a model was fine-tuned from, if it was
    `model.weights: imagenet`: from the resolved weights, or (a partial run's export, which has
    only the label) from the entry's name in the label."""
    if weights is not None:
        return weights.pretrained
    found = re.match(r"imagenet (\S+) sha256:", started_from)
    if not found:
        return None
    try:
        return pretrained_card(torchvision.models.get_weight(found.group(1)))
    except (ValueError, KeyError, AttributeError):  # not a torchvision entry (a test's planted one)
        return {"weights": found.group(1)}


def write_model(folder: Path, weights: bytes, card: dict[str, Any]) -> Path:
    """Write model.pt and model.json into `folder` atomically: both are written in a fresh folder
    beside it, which then takes its place, so a reader finds the old pair or the new pair, also
    after an interrupt (the old folder is put back). Anything else in the old folder (exports made
    from the old model) is kept, moved to `<folder>-exports-<its trial id>` beside it: never
    destroyed, and never left beside a model it was not made from."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    card = {**card, "weights_sha256": hashlib.sha256(weights).hexdigest(),
            "weights_bytes": len(weights)}
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes 0700; this is an ordinary result folder
    old = None
    try:
        (tmp / MODEL_FILE).write_bytes(weights)
        (tmp / CARD_FILE).write_text(json.dumps(card, indent=2, default=str) + "\n")
        if folder.exists():  # a rewrite: the old folder moves aside, then goes
            old = folder.with_name(f".{folder.name}.old.{os.getpid()}")
            os.replace(folder, old)
        os.replace(tmp, folder)
    except BaseException:
        if old is not None and not folder.exists():
            os.replace(old, folder)  # interrupted between the two renames: the old pair is back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        keep_exports(old, folder)
        shutil.rmtree(old, ignore_errors=True)
    log.info("model written: %s (%s %.1f MB, %s)", folder, MODEL_FILE, len(weights) / 1e6, CARD_FILE)
    return folder


def keep_exports(old: Path, folder: Path) -> Path | None:
    """Move what an old model folder holds besides model.pt and model.json (its exports) to
    `<folder>-exports-<the old model's trial id>` beside `folder`. Returns that folder, if any."""
    extra = [p for p in old.iterdir() if p.name not in (MODEL_FILE, CARD_FILE)]
    if not extra:
        return None
    try:
        trial = json.loads((old / CARD_FILE).read_text()).get("trial_id", "earlier")
    except (OSError, ValueError):
        trial = "earlier"
    keep = folder.with_name(f"{folder.name}-exports-{trial}")
    keep.mkdir(exist_ok=True)
    for p in extra:
        target = keep / p.name
        if target.exists():  # never overwrite: a second copy gets its own name
            target = keep / f"{p.stem}.{os.getpid()}{p.suffix}"
        os.replace(p, target)
    log.warning("%s: the exports of the model it held before (trial %s) moved to %s", folder,
                trial, keep)
    return keep


def save_best(run_dir: Path, spec: Spec, data: Dataset, weights: dict[str, Weights], record,
              best, test: dict) -> str:
    """The finished sweep's chosen trial as RUN_DIR/model/ (its weights read by a Ray task where
    the checkpoint is); returns the folder relative to the run folder, for best.json."""
    from tuner import sweep

    state = sweep.fetch_weights(record, spec)
    trial = spec.with_values(record.params)
    scores = {spec.search.metric: best[spec.search.metric], "val_accuracy": best["val_accuracy"],
              "val_loss": best["val_loss"], "test_accuracy": test["test_accuracy"],
              "test_loss": test["test_loss"], "test_images": len(data.test)}
    card = make_card(spec, data, trial_id=record.trial_id, config=record.params, scores=scores,
                     started_from=best["weights"],
                     weights=weights.get(weights_key(trial.model, weights)))
    write_model(run_dir / MODEL_DIR, state, card)
    return MODEL_DIR


def save_arms(run_dir: Path, spec: Spec, data: Dataset, weights: dict[str, Weights], trials,
              repeats: dict[str, list]) -> dict[str, str]:
    """For each arm of a comparison, its repeat that scored best on validation (among the tested
    ones) as RUN_DIR/model/<arm>/. Returns arm -> folder relative to the run folder."""
    from tuner import sweep

    metric, out = spec.search.metric, {}
    for arm, records in repeats.items():
        arm_spec = spec.arm(arm)
        rows = repeat_rows(trials, arm)
        rows = rows[rows["status"] == "finished"].dropna(subset=[metric, "test_accuracy"])
        if rows.empty:
            continue
        row = rows.loc[rows[metric].idxmax() if spec.search.mode == "max" else rows[metric].idxmin()]
        record = next(r for r in records if r.trial_id == row["trial_id"])
        if record.checkpoint is None:
            log.warning("arm %s: trial %s has no checkpoint left; no model written", arm,
                        record.trial_id)
            continue
        scores = {k: plain(row[k]) for k in (metric, "val_accuracy", "val_loss", "test_accuracy",
                                              "test_loss") if k in row}
        trial = arm_spec.with_values(record.params)
        card = make_card(arm_spec, data, trial_id=record.trial_id, config=record.params,
                         scores={**scores, "test_images": len(data.test)},
                         started_from=str(row["weights"]),
                         weights=weights.get(weights_key(trial.model, weights)), arm=arm)
        write_model(run_dir / MODEL_DIR / arm, sweep.fetch_weights(record, arm_spec), card)
        out[arm] = f"{MODEL_DIR}/{arm}"
    return out


# --- reading --------------------------------------------------------------------------------------


def find(path: Path, arm: str | None = None) -> Path:
    """The model folder behind a run folder, a model folder, or a model.pt. Raises InputError."""
    path = Path(path)
    if path.is_file():
        folder = path.parent
    elif (path / MODEL_DIR / MODEL_FILE).is_file() and arm is None:
        folder = path / MODEL_DIR
    elif arm is not None and (path / MODEL_DIR / arm).is_dir():
        folder = path / MODEL_DIR / arm
    elif (path / MODEL_FILE).is_file():
        folder = path
    elif path.is_dir():
        arms = sorted(p.parent.name for p in path.glob(f"{MODEL_DIR}/*/{MODEL_FILE}"))
        if arms:
            raise InputError(f"{path}: a comparison with one model per arm ({', '.join(arms)}); "
                             f"give one, e.g. {path / MODEL_DIR / arms[0]}")
        raise InputError(f"{path}: no {MODEL_DIR}/{MODEL_FILE} here (a sweep that has not "
                         f"finished? export its best trial so far: python -m tuner.export {path})")
    else:
        raise InputError(f"{path}: no such file or folder; give a run folder, its model/ folder, "
                         f"or a {MODEL_FILE}")
    if not (folder / CARD_FILE).is_file():
        raise InputError(f"{folder}: no {CARD_FILE} beside the weights; it says how to build the "
                         "model and preprocess images (re-export it with python -m tuner.export)")
    return folder


def read_card(folder: Path) -> dict[str, Any]:
    """model.json, checked for what a loader needs. Raises InputError."""
    try:
        card = json.loads((folder / CARD_FILE).read_text())
        arch, classes, prep = card["architecture"], card["classes"], card["preprocessing"]
        missing = [f"architecture.{k}" for k in ("in_channels", "num_classes") if k not in arch]
        missing += [f"preprocessing.{k}" for k in ("mean", "std", "mode", "resize") if k not in prep]
        if missing:
            raise KeyError(", ".join(missing))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{folder / CARD_FILE}: not a tuner model card ({type(e).__name__}: {e})") from None
    if not isinstance(classes, list) or len(classes) != arch.get("num_classes") or len(classes) < 2:
        raise InputError(f"{folder / CARD_FILE}: unknown classes: it lists {classes!r} for "
                         f"{arch.get('num_classes')} outputs")
    return card


def build(card: dict[str, Any]) -> nn.Module:
    """The card's architecture with fresh weights (build_model's, so it is the trained one)."""
    arch = card["architecture"]
    # Cards written before other architectures have no arch: they are all resnet18.
    spec = Model(arch=arch.get("arch", "resnet18"), weights="none", conv1="reinit",
                 small_input_stem=arch.get("small_input_stem", False))
    return build_model(spec, Weights(None, "from model.pt"), arch["in_channels"], arch["num_classes"])


def load(path: Path, arm: str | None = None, device: str | torch.device = "cpu"
         ) -> tuple[nn.Module, dict[str, Any], Path]:
    """The model in eval mode, its card, and its folder, from a run folder, a model folder or a
    model.pt. Raises InputError."""
    folder = find(path, arm)
    card = read_card(folder)
    model = build(card)
    weights_file = Path(path) if Path(path).is_file() else folder / card.get("weights_file", MODEL_FILE)
    try:
        state = torch.load(weights_file, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (OSError, RuntimeError, ValueError) as e:
        detail = " ".join(str(e).split())[:300]
        raise InputError(f"{weights_file}: does not load into the model {CARD_FILE} describes "
                         f"({detail})") from None
    return model.to(device).eval(), card, folder


def state_bytes(model: nn.Module) -> bytes:
    """A model's weights as model.pt's bytes: plain fp32 CPU tensors."""
    plain = {k: (v.float() if v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(plain, buffer)
    return buffer.getvalue()
