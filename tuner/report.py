"""`python -m tuner.report RUN_DIR [RUN_DIR ...] [--out FILE] [--csv FILE]`: one self-contained HTML
page (figures embedded as PNG, no scripts, no network) that shows what a sweep found.

It reads only the files of run directories (spec.yaml with its provenance, trials.csv, epochs.csv,
best.json, status.json, and compare.csv / compare.png when a comparison wrote them), so it works on
a finished, an interrupted or a still running sweep. One run: the page goes to RUN_DIR/report.html.
Several: a table comparing them, then each run; `--out` names the page, and `--csv` also writes the
comparison table (e.g. the FIFO vs ASHA benchmark). When two or more of the runs are comparisons
(e.g. one per training-set size), the page opens with their learning curve, also written next to
the page as `<out stem>_curve.png` and `<out stem>_curve.csv` (one row per size and arm).

Exit 0: the page was written. Exit 2: bad input, one `error: ...` line on stderr, nothing written.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
import yaml

from tuner import confirm, importance, plots, results
from tuner.errors import ArgumentParser, InputError
from tuner.rundir import read_json
from tuner.spec import Spec
from tuner.specfile import load_spec

REPORT_FILE = "report.html"
# the learning curve's table: one row per comparison run and arm
CURVE_COLUMNS = ["images_per_class", "arm", "test_mean", "test_ci95_low", "test_ci95_high",
                 "test_std", "repeats", "trial_epochs", "device_s", "weights", "run", "name"]
CURVE_NEEDS = ("arm", "test_mean", "test_ci95_low", "test_ci95_high")  # in compare.csv

log = logging.getLogger(__name__)


@dataclass
class RunView:
    """Everything the page shows about one run directory, as read from its files."""

    path: Path
    spec: Spec
    provenance: dict[str, Any]
    status: dict[str, Any]
    best: dict[str, Any] | None  # best.json: only once the sweep finished and tested its choice
    trials: pd.DataFrame
    epochs: pd.DataFrame
    compare: pd.DataFrame | None = None  # compare.csv: the arms of a comparison, if any
    compare_png: bytes | None = None


def _read_json(path: Path) -> dict | None:
    try:
        return read_json(path) if path.is_file() else None
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e})") from None


def _read_csv(path: Path) -> pd.DataFrame:
    """A table of the run; empty when the sweep has not written it yet."""
    if not path.is_file():
        return pd.DataFrame()
    try:
        return pd.read_csv(path, dtype={"trial_id": str})  # hex ids such as 1234e567 stay text
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (OSError, pd.errors.ParserError) as e:
        raise InputError(f"{path}: cannot read ({e})") from None


def load_run(path: Path) -> RunView:
    """Read a run directory. Raises InputError if it is not one."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such directory; give a run folder such as "
                         "results/<name>/<run id>")
    if not path.is_dir() or not (path / "spec.yaml").is_file():
        raise InputError(f"{path}: not a tuner run directory (no spec.yaml); give a run folder "
                         "such as results/<name>/<run id>")
    spec = load_spec(path / "spec.yaml")
    provenance = (yaml.safe_load((path / "spec.yaml").read_text()) or {}).get("provenance") or {}
    trials, epochs = _read_csv(path / "trials.csv"), _read_csv(path / "epochs.csv")
    if not trials.empty and "status" not in trials:
        raise InputError(f"{path / 'trials.csv'}: not a tuner trials table (no status column)")
    if not trials.empty:  # the columns said once in status.json, back in every row
        trials = results.with_shared(trials, path)
    compare = _read_csv(path / "compare.csv")
    png = path / "compare.png"
    return RunView(path=path, spec=spec, provenance=provenance,
                   status=_read_json(path / "status.json") or {"state": "not started"},
                   best=_read_json(path / "best.json"), trials=trials, epochs=epochs,
                   compare=None if compare.empty else compare,
                   compare_png=png.read_bytes() if png.is_file() else None)


# --- what the page says about a run --------------------------------------------------------------


def summary(run: RunView) -> dict[str, Any]:
    """One run in figures: its cost, time and answer (a row of the comparison table)."""
    spec, trials, epochs = run.spec, run.trials, run.epochs
    metric = spec.search.metric
    cost = results.cost_totals(trials) if "trial_epochs" in trials else {}
    best = results.best_trial(trials, spec) if metric in trials else None
    seconds = results.sweep_seconds(epochs)
    wall = run.status.get("wall_time_s") or (run.best or {}).get("sweep_wall_time_s")
    return {
        "run": run.path.name,
        "name": spec.name,
        "state": run.status.get("state"),
        "scheduler": spec.search.scheduler,
        "searcher": spec.search.searcher,
        "trials": cost.get("trials", len(trials)),
        "trial_epochs": cost.get("trial_epochs"),
        "device_s": cost.get("device_s"),
        "wall_time_s": wall,
        "last_report_s": None if seconds.isna().all() else round(float(seconds.max()), 1),
        "time_to_best_s": (results.time_to_best(epochs, trials, spec)
                           if metric in epochs and best is not None else None),
        "metric": metric,
        "best_trial": None if best is None else best["trial_id"],
        "best_val": None if best is None else float(best[metric]),
        # measured once, on the chosen trial, after the sweep; absent until it finished
        "test_accuracy": (run.best or {}).get("test_accuracy"),
    }


def comparison_table(runs: list[RunView]) -> pd.DataFrame:
    """One row per run, side by side (e.g. FIFO against ASHA on the same space and seed)."""
    return pd.DataFrame([summary(r) for r in runs])


def header(run: RunView, s: dict[str, Any]) -> list[tuple[str, Any]]:
    p, spec = run.provenance, run.spec
    subset = f"{spec.data.train_subset} train images" if spec.data.train_subset else "all train images"
    if spec.data.train_per_class:  # drawn from those after validation is carved out
        subset += f", {spec.data.train_per_class} per class trained on"
    state = s["state"] + (f" (tables as of {run.status['updated']})"
                          if s["state"] == "running" and run.status.get("updated") else "")
    counts = run.status.get("trials")
    if isinstance(counts, dict):
        state += " · " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items() if v)
    # The driver's wall time covers its last session only (a resume starts the clock again); the
    # last report's sweep time spans every session.
    last = f"last report at {s['last_report_s']:.0f} s of sweep time" if s["last_report_s"] else ""
    wall = (f"{s['wall_time_s']:.0f} s (Tune's fit() in the driver's last session; the whole "
            f"command's time is status.json's command_s); {last}".rstrip("; ")
            if s["wall_time_s"] is not None else f"(not finished) {last}")
    return [
        ("spec", spec.name),
        ("data", f"{spec.data.dataset}, {subset}, val fraction {spec.data.val_fraction}; "
                 f"from {p.get('data', '?')}"),
        ("weights used", p.get("weights", "?")),
        ("search", f"{spec.search.searcher}, {spec.search.planned_trials()} trials, "
                   f"{spec.search.scheduler} scheduler, {spec.search.mode}imise {spec.search.metric}"),
        ("machine", f"{p.get('machine', '?')}; Ray: {p.get('address', '?')}"),
        ("per trial", f"{spec.resources.cpu:g} CPU, {spec.resources.gpu:g} GPU"),
        ("started", p.get("started", "?")),
        ("sweep wall time", wall),
        ("trial-epochs", s["trial_epochs"]),
        ("device-seconds", s["device_s"]),
        ("time to best", "-" if s["time_to_best_s"] is None else f"{s['time_to_best_s']:.0f} s"),
        ("state", state),
        ("command", p.get("command", "?")),
    ]


def best_section(run: RunView, s: dict[str, Any]) -> dict[str, Any] | None:
    metric = run.spec.search.metric
    if run.best:
        b = run.best
        return {"trial_id": b["trial_id"], "config": b["config"], "metric": metric,
                "val": b.get(metric), "test_accuracy": b.get("test_accuracy"),
                "test_images": b.get("test_images"), "final": True,
                # 95% binomial intervals: how far one measurement on this many images can be trusted
                "val_interval": _interval(b.get("val_accuracy"), b.get("val_images")),
                "test_interval": _interval(b.get("test_accuracy"), b.get("test_images")),
                # what tuning gained over the spec's own settings, and how the choice was made
                "gained": results.gain_line(b, run.spec) if "gain_vs_default" in b else None,
                "selection": confirm.describe(b["selection"]) if b.get("selection") else None}
    if s["best_trial"] is None:
        return None
    row = run.trials.set_index("trial_id").loc[s["best_trial"]]
    return {"trial_id": s["best_trial"], "config": {k: row[k] for k in run.spec.search.parameters},
            "metric": metric, "val": s["best_val"], "test_accuracy": None, "final": False}


def _interval(accuracy: float | None, images: int | None) -> str | None:
    if accuracy is None or not images:
        return None
    low, high = results.accuracy_interval(accuracy, images)
    return f"[{low:.4f}, {high:.4f}] (95%, {images} images)"


def importance_section(run: RunView) -> dict[str, Any] | None:
    """The searched parameters by importance over the run's finished trials, or None."""
    table = importance.importances(run.trials, run.spec)
    if table is None:
        return None
    return {"table": html_table(table[["parameter", "importance"]]),
            "trials": int(table["trials"].iloc[0])}


def html_table(table: pd.DataFrame) -> str:
    return table.to_html(index=False, border=0, na_rep="", classes="table",
                         float_format=lambda v: f"{v:.4g}")


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figures(run: RunView) -> list[dict[str, str]]:
    """The run's figures as embedded PNGs, each with a caption."""
    spec, trials, epochs = run.spec, run.trials, run.epochs
    metric = spec.search.metric
    if epochs.empty or metric not in epochs or trials.empty:
        return []
    best_id = plots.chosen_id(trials, spec)
    out = []
    asha = spec.search.scheduler == "asha"
    fig, axes = plots.panels(3 if asha else 2)
    plots.draw_curves(axes[0], epochs, spec, best_id)
    plots.draw_best_so_far(axes[1], epochs, spec)
    if asha:
        plots.draw_asha(axes[2], trials)
    out.append({"src": data_uri(plots.png(fig)), "alt": "validation curves and best so far",
                "caption": f"Left: every trial's {metric} per epoch (the chosen trial in red). "
                           f"{'Middle' if asha else 'Right'}: the best {metric} reported so far "
                           "against sweep time."
                           + (" Right: the epoch each trial ended at; ASHA stops weak trials at its"
                              " rungs." if asha else "")})
    params = list(spec.search.parameters)
    if params and not results.scored_trials(trials, spec).empty:
        fig, axes = plots.panels(len(params))
        for ax, key in zip(axes, params, strict=True):
            plots.draw_param(ax, trials, key, spec, best_id)
        out.append({"src": data_uri(plots.png(fig)), "alt": "metric by searched value",
                    "caption": f"Final {metric} of each trial against each searched value."})
        fig, (ax,) = plots.panels(1, wide=max(2.0, 0.8 * (len(params) + 1)))
        plots.draw_parallel(ax, trials, spec, best_id)
        out.append({"src": data_uri(plots.png(fig)), "alt": "parallel coordinates",
                    "caption": "Each trial's searched values (each axis spans its search range) "
                               f"and its {metric}, coloured by {metric}; the chosen trial is thick."})
    return out


def top_table(trials: pd.DataFrame, spec: Spec) -> pd.DataFrame:
    """The 10 best trials with their cost (and their phase, in a comparison)."""
    top = results.top_trials(trials, spec, n=10)
    extra = [c for c in ("trial_epochs", "device_s") if c in trials]
    top = top.join(trials[extra])
    if "phase" in trials:
        top.insert(1, "phase", trials.loc[top.index, "phase"])
    return top


def arm_sections(run: RunView) -> list[dict[str, Any]] | None:
    """A comparison's arms (trials.csv has an `arm` column), in the spec's order: each arm's best
    trial of its search (chosen, once that search finished; the repeats re-run its config) and its
    top trials of both phases. None for a plain sweep."""
    trials, spec = run.trials, run.spec
    metric = spec.search.metric
    if "arm" not in trials or metric not in trials:
        return None
    done = set((run.status.get("compare") or {}).get("done") or [])
    present = list(dict.fromkeys(trials["arm"].astype(str)))
    order = [a for a in (spec.compare.arms if spec.compare else []) if a in present]
    out = []
    for arm in order + [a for a in present if a not in order]:
        own = trials[trials["arm"].astype(str) == arm]
        search = own[own["phase"] == "search"] if "phase" in own else own
        best = results.best_trial(search, spec)
        out.append({
            "arm": arm,
            "best": None if best is None else {
                "trial_id": best["trial_id"], "config": {k: best[k] for k in spec.search.parameters
                                                          if k in best},
                "metric": metric, "val": float(best[metric]), "chosen": f"search:{arm}" in done},
            "top": html_table(top_table(own, spec)) if results.scored_trials(own, spec).size else None,
        })
    return out


def run_context(run: RunView) -> dict[str, Any]:
    s = summary(run)
    top = pd.DataFrame()
    arms = arm_sections(run)
    if run.spec.search.metric in run.trials and arms is None:
        top = top_table(run.trials, run.spec)
    where = [c for c in ("arm", "phase") if c in run.trials]  # a comparison's: which step failed
    errors = (run.trials[run.trials["status"] == "error"][[*where, "trial_id", "error"]]
              if "status" in run.trials else pd.DataFrame())
    return {
        "title": f"{run.spec.name} / {run.path.name}",
        "header": header(run, s),
        "best": best_section(run, s) if arms is None else None,
        "importance": importance_section(run) if arms is None else None,
        "arms": arms,
        "top": html_table(top) if not top.empty else None,
        "errors": html_table(errors) if not errors.empty else None,
        "figures": figures(run),
        "compare": html_table(run.compare) if run.compare is not None else None,
        "gains": results.gain_lines(run.compare) if run.compare is not None else [],
        "compare_png": data_uri(run.compare_png) if run.compare_png else None,
        # the model folders (tuner.artifact), relative to the run folder
        "models": sorted(str(p.parent.relative_to(run.path)) for p in run.path.glob("model/**/model.json")),
    }


# --- the learning curve over several comparisons -------------------------------------------------


def _json(text: Any) -> dict:
    """A JSON object from a compare.csv cell (best_config, overrides); {} when empty or not one."""
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def images_per_class(run: RunView, row: pd.Series) -> float:
    """The training images per class one arm of a comparison trained on: data.train_per_class of
    its repeats' spec (the run's spec, the arm's overrides, the chosen config's searched values,
    applied as the trials applied them). An arm that trained on all the images: the images its
    repeats trained on per epoch (epochs.csv) over the classes. NaN when neither tells."""
    spec, arm = run.spec, str(row["arm"])
    if spec.compare and arm in spec.compare.arms:
        own = spec.arm(arm)
    else:  # an arm the spec does not name: its overrides as compare.csv recorded them
        own = spec.model_copy(update={"compare": None})
        n = _json(row.get("overrides")).get("data.train_per_class")
        if n is not None:
            return float(n)
    try:
        n = own.with_values(_json(row.get("best_config"))).data.train_per_class
    except ValueError:  # a config this spec cannot take: the arm's fixed value
        n = own.data.train_per_class
    if n is not None:
        return float(n)
    classes = run.provenance.get("classes") or spec.data.classes
    epochs = run.epochs
    if classes and {"arm", "train_images"} <= set(epochs.columns):
        mine = epochs[epochs["arm"].astype(str) == arm]
        if "phase" in mine:
            mine = mine[mine["phase"] == "repeats"]
        seen = mine["train_images"].max()
        if pd.notna(seen):
            return float(round(seen / len(classes)))
    return math.nan


def learning_curve(runs: list[RunView]) -> pd.DataFrame | None:
    """Test accuracy per arm and training-set size over the comparison runs (those with a
    compare.csv): one row per run and arm, sorted by arm and size. None unless two or more of the
    runs are comparisons. Raises InputError for a compare.csv without the test scores."""
    comparisons = [r for r in runs if r.compare is not None]
    if len(comparisons) < 2:
        return None
    rows = []
    for run in comparisons:
        missing = [c for c in CURVE_NEEDS if c not in run.compare]
        if missing:
            raise InputError(f"{run.path / 'compare.csv'}: not a tuner comparison table "
                             f"(no {', '.join(missing)} column)")
        for _, row in run.compare.iterrows():
            size = images_per_class(run, row)
            if math.isnan(size):
                log.warning("%s: arm %s: cannot tell its training images per class; left out of "
                            "the learning curve", run.path, row["arm"])
                continue
            rows.append({**{c: row.get(c) for c in CURVE_COLUMNS}, "images_per_class": size,
                         "arm": str(row["arm"]), "run": run.path.name, "name": run.spec.name})
    table = pd.DataFrame(rows, columns=CURVE_COLUMNS)
    arms = list(dict.fromkeys(table["arm"]))  # the first run's order of arms
    table["images_per_class"] = table["images_per_class"].astype(int)  # whole images
    return table.sort_values(["arm", "images_per_class"], kind="stable", ignore_index=True,
                             key=lambda c: c.map(arms.index) if c.name == "arm" else c)


def curve_png(curve: pd.DataFrame) -> bytes:
    """The learning curve as PNG bytes (one wide panel)."""
    fig, (ax,) = plots.panels(1, wide=2.0)
    plots.draw_learning_curve(ax, curve)
    return plots.png(fig)


def curve_paths(out: Path) -> tuple[Path, Path]:
    """Where the learning curve's figure and table go: next to the page, named after it."""
    out = Path(out)
    return out.with_name(out.stem + "_curve.png"), out.with_name(out.stem + "_curve.csv")


def render(runs: list[RunView], curve: tuple[pd.DataFrame, bytes, str] | None = None) -> str:
    """The page; `curve`: the learning curve's table, PNG and the name of its files, if any."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("tuner", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    table = comparison_table(runs) if len(runs) > 1 else None
    title = (runs[0].spec.name + " sweep report" if len(runs) == 1
             else f"{len(runs)} sweeps compared")
    return env.get_template("report.html.j2").render(
        title=title, comparison=None if table is None else html_table(table),
        curve=None if curve is None else {"table": html_table(curve[0]), "src": data_uri(curve[1]),
                                          "files": curve[2]},
        runs=[run_context(r) for r in runs])


def write_report(run_dirs: list[Path], out: Path, csv: Path | None = None) -> Path:
    """Read the run directories and write the page to `out` (and the comparison table to `csv`;
    the learning curve of two or more comparisons next to `out`: curve_paths).
    Every input is checked before anything is written; raises InputError."""
    runs = [load_run(d) for d in run_dirs]
    for target in filter(None, (out, csv)):
        if not Path(target).parent.is_dir():
            raise InputError(f"{target}: its folder {Path(target).parent} does not exist")
    curve = learning_curve(runs)
    drawn = None
    if curve is not None:
        png_path, csv_path = curve_paths(out)
        drawn = (curve, curve_png(curve), f"{png_path.name} and {csv_path.name}")
    results.write_text(Path(out), render(runs, drawn))
    if drawn is not None:
        results.write_bytes(png_path, drawn[1])
        results.write_csv(csv_path, curve)
    if csv is not None:
        results.write_csv(Path(csv), comparison_table(runs))
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m tuner.report",
                description="Write a self-contained HTML report of one or more sweep run folders.")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="results/<name>/<run id>")
    p.add_argument("--out", type=Path, help=f"the page (default: RUN_DIR/{REPORT_FILE} for one run; "
                                            "needed for several)")
    p.add_argument("--csv", type=Path, help="also write the table comparing the runs as CSV")
    try:
        args = p.parse_args(argv)
        if len(args.runs) > 1 and args.out is None:
            raise InputError("several run directories make one page: give --out FILE")
        out = write_report(args.runs, args.out or args.runs[0] / REPORT_FILE, args.csv)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report: {out}" + (f"; comparison table: {args.csv}" if args.csv else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
