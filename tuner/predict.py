"""Classify image files with a run's model: `python -m tuner.predict MODEL IMAGE_OR_FOLDER ...
[--out predictions.csv] [--top-k 3] [--device auto|cpu|cuda] [--batch-size 64]`.

MODEL is a run folder, its model/ folder (a comparison's model/<arm>/), or a model.pt with its
model.json beside it. Each image goes through evaluation's own code: `tuner.folder.decode_all`
(decode to RGB with EXIF orientation, antialiased resize), then, for a Fashion-MNIST model,
grayscale (its input is 28x28 single-channel), and `tuner.batches.eval_batches` (centre crop,
normalisation). Writes one CSV row per file: the predicted class, its probability and the top-k;
a file that cannot be decoded is a row with its error. On an ImageFolder-layout folder whose class
folders are the model's classes, also the accuracy and a confusion matrix (CSV and PNG beside the
output).

A file name that is not valid UTF-8 (bytes from another system's encoding) is written with its
undecodable bytes as \\xNN escapes, so the CSV stays UTF-8.

Exit 0: predictions written (bad files are rows with an error). Exit 1: no file could be read as an
image, so nothing was classified (the CSV is written: its rows say why). Exit 2: bad input, one
line, nothing written.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torchvision.transforms.v2.functional import rgb_to_grayscale
from tqdm import tqdm

from tuner import artifact
from tuner.batches import DeviceSplit, eval_batches
from tuner.data import Pixels, Split
from tuner.errors import ArgumentParser, InputError
from tuner.folder import IMG_EXTENSIONS, decode_all, is_hidden, is_image_name, walk

log = logging.getLogger(__name__)

CHUNK = 512  # images decoded at a time: memory stays bounded on any folder


EPILOG = """A file name that is not valid UTF-8 is written to the CSV with its undecodable bytes as
\\xNN. Exit 1: no file could be read as an image, nothing classified (the CSV's rows say why)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(prog="python -m tuner.predict", description="Classify images with a run's model.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="a run folder, its model/ folder, or a model.pt")
    p.add_argument("inputs", nargs="+", type=Path,
                   help="image files or folders (searched recursively; an ImageFolder layout "
                        "with the model's class names also gets accuracy and a confusion matrix)")
    p.add_argument("--out", type=Path, default=Path("predictions.csv"),
                   help="the predictions CSV (default: predictions.csv)")
    p.add_argument("--top-k", type=int, default=3, help="classes listed per image (default: 3)")
    p.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda, cuda:1")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")
    p.add_argument("--arm", help="a comparison's arm, when MODEL is its run folder")
    args = p.parse_args(argv)
    if args.top_k < 1 or args.batch_size < 1:
        raise InputError("--top-k and --batch-size must be at least 1")
    return args


def gather(inputs: list[Path], classes: list[str]) -> tuple[list[Path], list[int], list[str], int]:
    """The files to classify, in a fixed order: (files, label or -1, notes, hidden files skipped).

    A folder whose subfolders are all class names of the model (and that has no files of its own
    besides hidden ones) is an ImageFolder layout: its files are labelled by their class folder."""
    files, labels, notes, hidden = [], [], [], 0
    index = {c: i for i, c in enumerate(classes)}
    for path in inputs:
        if path.is_file():
            files.append(path)
            labels.append(-1)
            continue
        if not path.is_dir():
            raise InputError(f"{path}: no such file or folder")
        subdirs = sorted(d.name for d in path.iterdir() if d.is_dir() and not is_hidden(d.name))
        own = [f for f in path.iterdir() if f.is_file() and not is_hidden(f.name)]
        layout = bool(subdirs) and not own and all(d in index for d in subdirs)
        if subdirs and not own and not layout:
            notes.append(f"{path}: its folders [{', '.join(subdirs)}] are not all the model's "
                         f"classes [{', '.join(classes)}]: no accuracy, predictions only")
        found, skipped = [], 0
        for f in walk(path, found):  # the training loader's rules: links followed once
            if not is_image_name(f.name):
                skipped += 1
                continue
            files.append(f)
            labels.append(index[f.relative_to(path).parts[0]] if layout else -1)
        hidden += len(found)
        if skipped:
            notes.append(f"{path}: {skipped} file(s) not named as images (training reads "
                         f"{', '.join(IMG_EXTENSIONS)}, any case) left out")
    return files, labels, notes, hidden


def shown(path: Path | str) -> str:
    """A path as text that can be printed and written as UTF-8: a name that is not valid UTF-8
    (os.fsdecode's surrogates) gets its undecodable bytes as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def preprocess(images: np.ndarray, card: dict) -> np.ndarray:
    """Decoded RGB uint8 [N, 3, S, S] as the model's input images: grayscale [N, 1, 28, 28] for a
    Fashion-MNIST model (decode resized to 28 already), else as they are."""
    if card["preprocessing"]["mode"] == "grayscale":
        return rgb_to_grayscale(torch.from_numpy(images)).numpy()
    return images


def predict(model: torch.nn.Module, card: dict, files: list[Path], device: torch.device,
            batch_size: int = 64) -> tuple[np.ndarray, dict[str, str]]:
    """Softmax probabilities [N, classes] (NaN rows for bad files) and the bad files' errors."""
    prep = card["preprocessing"]
    pixels = Pixels(tuple(prep["mean"]), tuple(prep["std"]), prep.get("crop"))
    probs = np.full((len(files), card["architecture"]["num_classes"]), np.nan, dtype=np.float32)
    errors: dict[str, str] = {}
    bar = tqdm(total=len(files), desc="predicting", unit="img", delay=2, mininterval=1)
    with torch.inference_mode():
        for start in range(0, len(files), CHUNK):
            chunk = files[start:start + CHUNK]
            images, bad, scaled = decode_all(Path("."), chunk, prep["resize"])  # training's decoding
            errors.update({str(k): v for k, v in bad.items()})
            if scaled:  # as in training: more than 8 bits per channel scaled to 8
                log.info("%d image(s) of more than 8 bits scaled to 8 (%s, ...)", len(scaled),
                         next(iter(scaled)))
            good = np.array([i for i, f in enumerate(chunk) if str(f) not in bad], dtype=np.int64)
            if len(good):
                split = Split(preprocess(images[good], card), np.zeros(len(good), np.int64))
                data = DeviceSplit.put(split, device, pixels)
                out = [torch.softmax(model(x).float(), 1).cpu() for x, _ in
                       eval_batches(data, batch_size)]  # evaluation's crop and normalisation
                probs[start + good] = torch.cat(out).numpy()
            bar.update(len(chunk))
    bar.close()
    return probs, errors


def table(files: list[Path], labels: list[int], probs: np.ndarray, errors: dict[str, str],
          classes: list[str], top_k: int) -> pd.DataFrame:
    """One row per file: path, true class (when known), predicted class and probability, the top-k
    classes with their probabilities, and the error of a file that could not be read."""
    k = min(top_k, len(classes))
    rows = []
    for f, label, p in zip(files, labels, probs, strict=True):
        row = {"path": shown(f)}
        if any(lbl >= 0 for lbl in labels):
            row["label"] = classes[label] if label >= 0 else None
        if np.isnan(p).any():
            error = errors.get(str(f))
            row.update({"predicted": None, "probability": None,
                        "error": None if error is None else shown(error)})
        else:
            order = np.argsort(-p)[:k]
            row.update({"predicted": classes[order[0]], "probability": round(float(p[order[0]]), 6)})
            for rank, c in enumerate(order, 1):
                row[f"class_{rank}"], row[f"prob_{rank}"] = classes[c], round(float(p[c]), 6)
            row["error"] = None
        rows.append(row)
    out = pd.DataFrame(rows)
    ranks = [c for r in range(1, k + 1) for c in (f"class_{r}", f"prob_{r}")]
    first = [c for c in ("path", "label", "predicted", "probability") if c in out]
    return out.reindex(columns=[*first, *ranks, "error"])


def confusion(rows: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Counts of (true class, predicted class) over the labelled rows that were read."""
    done = rows.dropna(subset=["label", "predicted"])
    matrix = pd.crosstab(pd.Categorical(done["label"], classes), pd.Categorical(done["predicted"], classes),
                         dropna=False)
    matrix.index.name, matrix.columns.name = "true", "predicted"
    return matrix


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise InputError(f"--device {name}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: torch sees no CUDA GPU here; use --device cpu")
    return device


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args = parse_args(argv)
        device = pick_device(args.device)
        model, card, folder = artifact.load(args.model, args.arm, device)
        classes = card["classes"]
        files, labels, notes, hidden = gather(args.inputs, classes)
        if not files:
            raise InputError(f"no files to classify in {', '.join(map(shown, args.inputs))}")
        if not args.out.parent.is_dir():
            raise InputError(f"--out {args.out}: no folder {args.out.parent}")
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from tuner import plots, results  # matplotlib only when there is something to draw

    prep = card["preprocessing"]
    print(f"model: {shown(folder)} ({len(classes)} classes; trial {card.get('trial_id')}"
          f"{', PARTIAL sweep: best so far' if card.get('partial') else ''})")
    print(f"preprocessing: {prep.get('steps', prep)}")
    if prep["mode"] == "grayscale":
        print("note: a Fashion-MNIST model: every image is converted to grayscale and resized to "
              "28x28, as its training images were (white garments on black work best)")
    for note in notes:
        print(f"note: {shown(note)}")
    t0 = time.perf_counter()
    probs, errors = predict(model, card, files, device, args.batch_size)
    seconds = time.perf_counter() - t0
    rows = table(files, labels, probs, errors, classes, args.top_k)
    results.write_csv(args.out, rows)
    read = len(files) - len(errors)
    first = f"{shown(next(iter(errors)))}: {shown(next(iter(errors.values())))}" if errors else ""
    if not read:  # every file failed to decode: a user expects a failure, not an empty success
        print(f"error: none of the {len(files)} file(s) could be read as an image, nothing "
              f"classified; the rows of {shown(args.out)} say why (first: {first})", file=sys.stderr)
        return 1
    print(f"{read} image(s) classified in {seconds:.1f} s ({read / seconds:.1f} images/s on "
          f"{device}); predictions: {shown(args.out)}")
    if hidden:
        print(f"skipped {hidden} hidden file(s) (.DS_Store, Thumbs.db and the like)")
    if errors:
        print(f"{len(errors)} file(s) could not be read as images (their rows say why), first: "
              f"{first}")
    if "label" in rows and rows["label"].notna().any():
        labelled = rows.dropna(subset=["label", "predicted"])
        correct = int((labelled["label"] == labelled["predicted"]).sum())
        matrix = confusion(rows, classes)
        stem = args.out.with_suffix("")
        results.write_csv(Path(f"{stem}_confusion.csv"), matrix.reset_index())
        plots.plot_confusion(matrix, Path(f"{stem}_confusion.png"))
        print(f"accuracy: {correct / len(labelled):.4f} ({correct} of {len(labelled)} labelled "
              f"images); confusion matrix: {stem}_confusion.csv, {stem}_confusion.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
