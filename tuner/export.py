"""Export a run's model: `python -m tuner.export RUN_DIR [--format pt|torchscript|pt2|onnx]
[--out PATH] [--arm ARM]`.

The model is the run's model/ folder (a comparison's model/<arm>/). A run without one has it
written first from its checkpoints: for a sweep that has not finished (interrupted, or still
running) the best trial so far on validation, its model.json saying it is partial and untested;
for a sweep that finished before sweeps wrote models, its chosen trial with best.json's scores.

Formats: `pt` (model.pt + model.json, a plain state_dict), `torchscript` (torch.jit.trace; loads
with torch.jit.load, or from C++), `pt2` (torch.export; torch.export.load), `onnx` (torch.onnx's
dynamo exporter; needs the extra `pip install 'tuner[onnx]'`). Every export has a dynamic batch
size and is checked before it takes its place: the written file, loaded back, must give the eager
model's logits on a batch of the run's real validation images within the format's tolerance
(printed with the difference found).

Exit 0: exported. Exit 1: the check failed (nothing written). Exit 2: bad input, one line.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from filelock import FileLock, Timeout

from tuner import artifact
from tuner.errors import ArgumentParser, InputError
from tuner.model import CARD_FILE, MODEL_FILE
from tuner.rundir import LOCK_FILE, STATUS_FILE, located, read_json

log = logging.getLogger(__name__)

FORMATS = ("pt", "torchscript", "pt2", "onnx")
SUFFIX = {"torchscript": ".torchscript.pt", "pt2": ".pt2", "onnx": ".onnx"}
# Largest |logit difference| allowed against the eager model, fp32 on the CPU: a reloaded
# state_dict must be exact; traced and exported graphs run the same kernels, give or take fusion;
# ONNX Runtime has its own convolution kernels.
TOLERANCE = {"pt": 0.0, "torchscript": 1e-4, "pt2": 1e-4, "onnx": 1e-3}
CHECK_IMAGES = 32  # validation images in the parity check


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(prog="python -m tuner.export", description="Export a run's model, checked.")
    p.add_argument("run_dir", type=Path, help="the run folder (results/<name>/<run id>)")
    p.add_argument("--format", choices=FORMATS, default="pt", help="default: pt")
    p.add_argument("--out", type=Path, help="the file (a folder for pt) to write; default: in the "
                                            "run's model folder")
    p.add_argument("--arm", help="a comparison's arm")
    p.add_argument("--force", action="store_true",
                   help="replace --out (or the default file) if it exists; without it an existing "
                        "file is never overwritten")
    return p.parse_args(argv)


def run_spec(run_dir: Path, arm: str | None):
    """The run's spec (the arm's, for a comparison). Raises InputError."""
    from tuner.specfile import load_spec

    if not (run_dir / "spec.yaml").is_file():
        raise InputError(f"{run_dir}: not a tuner run directory (no spec.yaml); give a folder such "
                         "as results/<name>/<run id>")
    spec = load_spec(run_dir / "spec.yaml")
    if spec.compare is not None:
        if arm not in spec.compare.arms:
            raise InputError(f"{run_dir}: a comparison; name one of its arms with --arm "
                             f"({', '.join(spec.compare.arms)})")
        return spec.arm(arm)
    if arm is not None:
        raise InputError(f"--arm {arm}: {run_dir} is not a comparison")
    return spec


def model_from_checkpoints(run_dir: Path, spec, data) -> Path:
    """Write model/ from the run's checkpoints when it has none: the best trial so far of a sweep
    that has not finished (partial, untested), or the chosen trial of one that finished before
    sweeps wrote their models (with best.json's test score). Returns the folder."""
    import pandas as pd
    from ray.tune import ExperimentAnalysis

    from tuner import results
    from tuner.trainable import checkpoint_weights

    trials = results.read_trials(run_dir) if (run_dir / "trials.csv").is_file() else pd.DataFrame()
    best = results.best_trial(trials, spec) if spec.search.metric in trials else None
    tested = read_json(run_dir / "best.json") if (run_dir / "best.json").is_file() else None
    if tested is not None:
        best = trials.set_index("trial_id").loc[tested["trial_id"]].copy()
        best["trial_id"] = tested["trial_id"]
    if best is None:
        raise InputError(f"{run_dir}: no trial has a validation score yet; nothing to export")
    experiment = located(read_json(run_dir / STATUS_FILE)["experiment"], run_dir, spec)
    analysis = ExperimentAnalysis(experiment)
    trial = next((t for t in analysis.trials if t.trial_id == best["trial_id"]), None)
    if trial is None or trial.checkpoint is None:
        raise InputError(f"{run_dir}: trial {best['trial_id']} has no checkpoint in {experiment}")
    config = results.trial_params(trial.config, spec)
    scores = {k: float(best[k]) for k in (spec.search.metric, "val_accuracy", "val_loss")}
    if tested is not None:
        scores.update({k: tested[k] for k in ("test_accuracy", "test_loss", "test_images") if k in tested})
    card = artifact.make_card(spec, data, trial_id=best["trial_id"], config=config, scores=scores,
                              started_from=str(best["weights"]), weights=None,
                              partial=tested is None)
    folder = run_dir / artifact.MODEL_DIR
    artifact.write_model(folder, checkpoint_weights(trial.checkpoint), card)
    print(f"wrote {folder} from trial {best['trial_id']}"
          + (", the chosen one" if tested else
             f", the best so far on validation ({spec.search.metric}="
             f"{best[spec.search.metric]:.4f}) of a sweep that has not finished: not tested"))
    return folder


def validation_batch(data, n: int = CHECK_IMAGES) -> torch.Tensor:
    """The first n validation images as the model sees them (evaluation's crop, normalisation)."""
    import numpy as np

    from tuner.batches import DeviceSplit, eval_batches

    part = data.val[np.arange(min(n, len(data.val)))]
    x, _ = next(eval_batches(DeviceSplit.put(part, torch.device("cpu"), data.pixels), n))
    return x


def write_checked(model: torch.nn.Module, x: torch.Tensor, fmt: str, out: Path) -> float:
    """Export `model` in `fmt` to a temporary file beside `out`, load that file back, compare its
    logits with the eager model's on x; move it into place if within TOLERANCE[fmt]. Returns the
    largest |logit difference|; raises ValueError (nothing written) if it is too large."""
    with torch.inference_mode():
        expected = model(x)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=out.suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        got = _export_and_run(model, x, fmt, tmp)
        diff = float((got - expected).abs().max())
        if not diff <= TOLERANCE[fmt]:
            raise ValueError(f"{fmt}: the exported model's logits differ from the eager model's by "
                             f"up to {diff:.3g} on {len(x)} validation images (tolerance "
                             f"{TOLERANCE[fmt]:g}); nothing written")
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
        return diff
    finally:
        tmp.unlink(missing_ok=True)
        Path(f"{tmp}.data").unlink(missing_ok=True)  # onnx external data, when written


def _export_and_run(model: torch.nn.Module, x: torch.Tensor, fmt: str, path: Path) -> torch.Tensor:
    batch = torch.export.Dim("batch", min=1, max=4096)
    if fmt == "torchscript":
        with warnings.catch_warnings():  # deprecated in favour of torch.export, still loadable
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.trace(model, x[:2], check_trace=False)
            torch.jit.save(traced, str(path))
            loaded = torch.jit.load(str(path))
            with torch.inference_mode():
                return loaded(x)
    if fmt == "pt2":
        program = torch.export.export(model, (x[:2],), dynamic_shapes={"x": {0: batch}})
        torch.export.save(program, path)
        with torch.inference_mode():
            return torch.export.load(path).module()(x)
    try:
        import onnxruntime
    except ImportError:
        raise InputError("--format onnx needs onnx, onnxscript and onnxruntime: "
                         "pip install 'tuner[onnx]'") from None
    program = torch.onnx.export(model, (x[:2],), dynamo=True, input_names=["images"],
                                output_names=["logits"], dynamic_shapes={"x": {0: batch}},
                                verbose=False)
    program.save(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"images": x.numpy()})
    return torch.from_numpy(logits)


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args = parse_args(argv)
        spec = run_spec(args.run_dir, args.arm)
        with run_lock(args.run_dir):
            return export(args, spec)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


@contextmanager
def run_lock(run_dir: Path):
    """The run folder's lock, held while exporting: a sweep's driver holds it while it lives, and
    could be writing model/ itself. Raises InputError if a driver holds it."""
    if not (run_dir / LOCK_FILE).exists():  # no driver has ever run here: nothing to wait for
        yield
        return
    lock = FileLock(run_dir / LOCK_FILE, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise InputError(f"{run_dir}: the sweep is still running; export when its driver has "
                         "ended (it writes model/ itself when it finishes)") from None
    except OSError:  # a read-only run folder: no driver can be writing in it
        yield
        return
    try:
        yield
    finally:
        lock.release()


def export(args: argparse.Namespace, spec) -> int:
    """The export itself, under the run's lock; returns the exit code. Raises InputError."""
    try:
        from tuner.data import load_dataset

        data = load_dataset(spec.data)  # the run's own validation images, for the check
        if (args.run_dir / artifact.MODEL_DIR).exists() or args.arm is not None:
            folder = artifact.find(args.run_dir, args.arm)
        else:  # a sweep that has not finished: its best trial so far
            folder = model_from_checkpoints(args.run_dir, spec, data)
        model, card, folder = artifact.load(folder)
        x = validation_batch(data)
        if x.shape[1:] != (card["architecture"]["in_channels"], *x.shape[2:]):
            raise InputError(f"{folder}: the run's validation images do not fit this model")
        if args.format == "pt":
            out = args.out or folder
            if out.resolve() != folder.resolve():
                if out.exists() and not args.force:
                    raise InputError(f"--out {out}: exists already; give another --out, or "
                                     "--force to replace it")
                if out.is_dir() and not (out / CARD_FILE).is_file():
                    raise InputError(f"--out {out}: a folder that is not a model folder (no "
                                     f"{CARD_FILE}); --force replaces only a model folder")
                if out.exists():
                    shutil.rmtree(out) if out.is_dir() else out.unlink()
                shutil.copytree(folder, out)
            # the copy, loaded back as a user would, against the model in memory
            diff = write_pt_check(model, x, out)
        else:
            out = args.out or folder / f"{Path(MODEL_FILE).stem}{SUFFIX[args.format]}"
            if out.exists() and not args.force:
                raise InputError(f"{out}: exists already (an earlier export); give another --out, "
                                 "or --force to replace it")
            diff = write_checked(model, x, args.format, out)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.format}: max |logit difference| {diff:.2g} against the eager model on {len(x)} "
          f"validation images (tolerance {TOLERANCE[args.format]:g}): OK")
    print(f"exported: {out}" + ("" if args.format == "pt" else f" (classes and preprocessing: "
                                                                f"{folder / CARD_FILE})"))
    return 0


def write_pt_check(model: torch.nn.Module, x: torch.Tensor, folder: Path) -> float:
    """The model folder loaded back (torch.load weights_only into the card's architecture) gives
    the same logits as `model`."""
    again, _, _ = artifact.load(folder)
    with torch.inference_mode():
        diff = float((again(x) - model(x)).abs().max())
    if diff > TOLERANCE["pt"]:
        raise ValueError(f"pt: {folder} loads back with logits off by {diff:.3g}")
    return diff


if __name__ == "__main__":
    sys.exit(main())
