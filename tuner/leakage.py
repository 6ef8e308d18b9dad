"""The test set kept out of what a run starts from: starting weights (`model.weights` naming an
earlier tuner run, its model or a checkpoint) and warm-start evidence (`search.warm_start`) come
from runs that split the data their own way. A source whose training or validation images include
this run's test images would carry them in: refused, with one line.

Each run records its split as fingerprints (8 bytes of BLAKE2b per image, of the images as the run
decoded them) in split.npz beside spec.yaml; the check compares the sets. A source from before
splits were recorded, or whose images were decoded otherwise (another image folder size), cannot
be checked, and the log says so.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from tuner.data import Dataset, Split
from tuner.errors import InputError
from tuner.rundir import SPEC_FILE
from tuner.spec import Spec

log = logging.getLogger(__name__)

SPLIT_FILE = "split.npz"  # train (every image a trial may draw), val, test fingerprints


def fingerprints(split: Split) -> np.ndarray:
    """One 64-bit fingerprint per image: BLAKE2b of its pixels (uint8 array bytes)."""
    images = np.ascontiguousarray(split.images)
    return np.array([int.from_bytes(hashlib.blake2b(im.tobytes(), digest_size=8).digest(), "little")
                     for im in images], dtype=np.uint64)


def write_split(run_dir: Path, data: Dataset) -> None:
    """Record the run's split in run_dir/split.npz (written once, when the run folder is made)."""
    train = data.pool if data.pool is not None else data.train
    path = Path(run_dir) / SPLIT_FILE
    tmp = path.with_name(f".{SPLIT_FILE}.tmp.npz")
    np.savez_compressed(tmp, train=fingerprints(train), val=fingerprints(data.val),
                        test=fingerprints(data.test))
    tmp.replace(path)


def source_run(location: str | Path) -> Path | None:
    """The tuner run folder a weights file or folder lies in (itself, or up to four levels up:
    model/model.pt, model/<arm>/model.pt, trials/<trial>/checkpoint_n/), or None."""
    path = Path(location).expanduser()
    for folder in [path, *path.parents][:5]:
        if (folder / SPEC_FILE).is_file() and ((folder / "status.json").is_file()
                                               or (folder / SPLIT_FILE).is_file()):
            return folder
    return None


def _recorded(run_dir: Path) -> dict[str, np.ndarray] | None:
    path = run_dir / SPLIT_FILE
    if not path.is_file():
        return None
    with np.load(path) as f:
        return {k: f[k] for k in ("train", "val", "test")}


def check(spec: Spec, data: Dataset) -> None:
    """Refuse (InputError, one line) starting weights whose run trained or validated on this run's
    test images, and warm-start runs whose scores came from them; log where no check can be made."""
    test = None
    sources = [(m.weights, "model.weights", ("train", "val")) for m in spec.model_variants()
               if m.weights not in ("imagenet", "none")]
    sources += [(str(r), "search.warm_start", ("val",)) for r in spec.search.warm_start]
    for location, field, parts in dict.fromkeys(sources):
        run = source_run(location)
        if run is None:
            log.info("%s: %s is not in a tuner run folder: whether it saw this run's test images "
                     "cannot be checked", field, location)
            continue
        recorded = _recorded(run)
        if recorded is None:
            log.warning("%s: %s has no record of its split (%s; a run from before they were "
                        "recorded): whether it saw this run's test images cannot be checked",
                        field, run, SPLIT_FILE)
            continue
        if test is None:
            test = fingerprints(data.test)
        seen = np.concatenate([recorded[p] for p in parts])
        overlap = int(np.isin(test, seen).sum())
        if overlap:
            what = "trained or validated on" if field == "model.weights" else "scored its trials on"
            raise InputError(
                f"{field}: {location}: that run {what} {overlap} of this run's {len(test)} test "
                f"images (its data split differs: data.seed, fractions, subsets or root); the test "
                f"score would not be honest. Split this run as that run did, or start elsewhere")
