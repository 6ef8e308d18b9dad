"""The run's figures, one panel per function so the sweep's `sweep.png` and the HTML report share
them: every trial's validation curve, the metric against each searched value, parallel coordinates,
best-so-far against sweep time, where ASHA stopped trials, for a comparison (`compare.png`) the
arms side by side with their spread, and for several comparisons the learning curve per arm."""

from __future__ import annotations

import io
import re
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure  # no pyplot: no global backend or figure state to manage
from matplotlib.ticker import MaxNLocator, NullLocator

from tuner.results import (best_so_far, best_trial, repeat_rows, scored_trials, sweep_seconds,
                           write_bytes)
from tuner.spec import Spec

PANEL_INCHES = (4.2, 3.6)  # width, height of one panel
DPI = 100
CHOSEN, OTHERS = "C3", "C0"  # the chosen trial in red, the rest in blue, in every panel


def panels(n: int, wide: float = 1.0) -> tuple[Figure, list[Axes]]:
    """A figure of n panels side by side (each `wide` panels wide)."""
    fig = Figure(figsize=(PANEL_INCHES[0] * wide * n, PANEL_INCHES[1]))
    return fig, list(fig.subplots(1, n, squeeze=False)[0])


def png(fig: Figure) -> bytes:
    """The figure as PNG bytes, laid out tight, at DPI."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def chosen_id(trials: pd.DataFrame, spec: Spec) -> str | None:
    best = best_trial(trials, spec)
    return None if best is None else best["trial_id"]


def scored_reports(epochs: pd.DataFrame) -> pd.DataFrame:
    """The reports with real scores: not a diverged trial's last (the worst scores, for the
    searcher, which would squash every other curve against the axis)."""
    return epochs[epochs["error"].isna()] if "error" in epochs else epochs


def draw_curves(ax: Axes, epochs: pd.DataFrame, spec: Spec, best_id: str | None) -> None:
    """Every trial's validation metric per epoch, the chosen trial highlighted."""
    metric = spec.search.metric
    epochs = scored_reports(epochs)
    # epochs that were not validated (run.validation: needed) have no score: the line joins the ones that were
    for trial_id, rows in epochs.dropna(subset=[metric]).groupby("trial_id", sort=False):
        is_best = trial_id == best_id
        ax.plot(rows["epoch"], rows[metric], marker="o", markersize=3,
                linewidth=2.5 if is_best else 1, alpha=1 if is_best else 0.5,
                color=CHOSEN if is_best else OTHERS, zorder=3 if is_best else 2,
                label=f"chosen: {trial_id}" if is_best else None)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel=metric, title="every trial, per epoch")
    if best_id is not None:
        ax.legend(loc="best", fontsize="small")


def draw_param(ax: Axes, trials: pd.DataFrame, key: str, spec: Spec, best_id: str | None) -> None:
    """The score of each scored trial (its final metric, or its best epoch's: search.select)
    against one searched value."""
    metric = spec.search.metric
    done = scored_trials(trials, spec)
    x = done[key]
    if not pd.api.types.is_numeric_dtype(x):
        x = x.map(str)  # choices of strings or mappings: one category each
    chosen = done["trial_id"] == best_id
    ax.scatter(x[~chosen], done.loc[~chosen, metric], color=OTHERS, alpha=0.7)
    ax.scatter(x[chosen], done.loc[chosen, metric], color=CHOSEN, zorder=3)
    kind = spec.search.parameters[key].kind
    if kind == "loguniform":
        ax.set_xscale("log")
    elif kind == "choice" and pd.api.types.is_numeric_dtype(x):
        ax.set_xticks(sorted(set(spec.search.parameters[key].args)))  # just the choices
    elif kind in ("randint", "quniform"):
        ax.xaxis.set_major_locator(MaxNLocator(integer=kind == "randint"))
    which = "best-epoch" if spec.search.select == "best_epoch" else "final"  # the trial's score
    ax.set(xlabel=key, ylabel=metric, title=f"{which} {metric} by {key}")


def _unit_axis(values: pd.Series, key: str, spec: Spec) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """One parallel-coordinates axis: values mapped onto [0, 1] over the searched range (log for
    loguniform; choices evenly spaced), and (position, label) ticks."""
    param = spec.search.parameters[key]
    if param.kind == "choice":
        step = 1 / max(1, len(param.choice) - 1)
        # 64 matches a choice of 64.0, and a mapping read back from trials.csv matches its text
        index = values.map(lambda v: next((i for i, c in enumerate(param.choice)
                                           if v == c or str(v) == str(c)), np.nan))
        return index.to_numpy(float) * step, [(i * step, str(c)) for i, c in enumerate(param.choice)]
    low, high = float(param.args[0]), float(param.args[1])
    log = param.kind == "loguniform"
    f = np.log10 if log else (lambda v: v)
    unit = (f(values.to_numpy(float)) - f(low)) / (f(high) - f(low))
    return unit, [(0.0, f"{low:.3g}"), (1.0, f"{high:.3g}")]


def draw_parallel(ax: Axes, trials: pd.DataFrame, spec: Spec, best_id: str | None) -> None:
    """Parallel coordinates: one line per scored trial through its searched values (each axis
    normalised to its search range) to its metric, coloured by the metric."""
    metric = spec.search.metric
    done = scored_trials(trials, spec)
    keys = list(spec.search.parameters)
    columns, ticks = [], []
    for key in keys:
        unit, t = _unit_axis(done[key], key, spec)
        columns.append(unit)
        ticks.append(t)
    score = done[metric].to_numpy(float)
    lo, hi = (np.nanmin(score), np.nanmax(score)) if len(score) else (0.0, 1.0)
    span = hi - lo or 1.0
    columns.append((score - lo) / span)
    ticks.append([(0.0, f"{lo:.3g}"), (1.0, f"{hi:.3g}")])
    lines = np.column_stack(columns) if len(score) else np.empty((0, len(columns)))
    norm = Normalize(lo, hi if hi > lo else lo + 1e-9)
    cmap = "viridis" if spec.search.mode == "max" else "viridis_r"  # yellow is good either way
    xs = np.arange(len(columns))
    for ys, s, trial_id in zip(lines, score, done["trial_id"], strict=True):
        is_best = trial_id == best_id
        ax.plot(xs, ys, color=ScalarMappable(norm, cmap).to_rgba(s), linewidth=3 if is_best else 1.2,
                alpha=1 if is_best else 0.8, zorder=3 if is_best else 2)
    for x, axis_ticks in zip(xs, ticks, strict=True):
        ax.axvline(x, color="0.6", linewidth=0.8, zorder=1)
        for y, label in axis_ticks:
            ax.annotate(label, (x, y), xytext=(3, 0), textcoords="offset points", fontsize="x-small",
                        va="center", color="0.3")
    ax.set_xticks(xs, [*keys, metric])
    ax.set_yticks([])
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlim(-0.1, len(columns) - 0.6)
    ax.set_title("searched values, coloured by " + metric + (" (thick: chosen)" if best_id else ""))
    ax.figure.colorbar(ScalarMappable(norm, cmap), ax=ax, label=metric)


def draw_best_so_far(ax: Axes, epochs: pd.DataFrame, spec: Spec) -> None:
    """Every report's metric (grey) and the best reported so far (a step line) against sweep time."""
    metric = spec.search.metric
    shown = scored_reports(epochs)  # times from every report: the same clock as best_so_far's
    ax.scatter(sweep_seconds(epochs)[shown.index], shown[metric], color="0.7", s=12,
               label="every report")
    best = best_so_far(epochs, spec)
    if len(best):
        t = [*best["sweep_s"], float(sweep_seconds(epochs).max())]
        y = [*best[metric], best[metric].iloc[-1]]
        ax.step(t, y, where="post", color=CHOSEN, linewidth=2, label="best so far")
    ax.set_xlim(left=0)
    ax.set(xlabel="sweep time (s, from the first trial's start)", ylabel=metric,
           title="best so far against sweep time")
    ax.legend(loc="best", fontsize="small")


def draw_asha(ax: Axes, trials: pd.DataFrame) -> None:
    """How many trials ended at each epoch: stopped there by ASHA, or ran all their epochs."""
    ended = trials[trials["status"].isin(["stopped_early", "finished"])]
    counts = (ended.groupby(["epochs_completed", "status"]).size().unstack(fill_value=0)
              .reindex(columns=["stopped_early", "finished"], fill_value=0))
    x = counts.index.to_numpy()
    ax.bar(x, counts["stopped_early"], color="C1", label="stopped by ASHA")
    ax.bar(x, counts["finished"], bottom=counts["stopped_early"], color=OTHERS,
           label="ran all its epochs")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epochs trained", ylabel="trials", title="ASHA: where trials ended")
    ax.legend(loc="best", fontsize="small")


def plot_sweep(epochs: pd.DataFrame, trials: pd.DataFrame, spec: Spec, path: Path) -> bool:
    """Write the run's figure (curves, then the metric by each searched value) to `path`; False
    (and nothing written) when no trial reported."""
    metric = spec.search.metric
    if epochs.empty or metric not in epochs:
        return False
    params = list(spec.search.parameters)
    fig, (curves, *scatters) = panels(1 + len(params))
    best_id = chosen_id(trials, spec)
    draw_curves(curves, epochs, spec, best_id)
    for ax, key in zip(scatters, params, strict=True):
        draw_param(ax, trials, key, spec, best_id)
    weights = trials["weights"].iloc[0] if "weights" in trials and len(trials) else "?"
    fig.suptitle(f"{spec.name}: {len(trials)} trials, weights {weights}", fontsize="medium")
    write_bytes(path, png(fig))
    return True


def draw_arms_test(ax: Axes, trials: pd.DataFrame, table: pd.DataFrame) -> None:
    """Each arm's repeats' test accuracy (one dot per seed) with their mean and 95% interval."""
    for i, row in table.reset_index(drop=True).iterrows():
        reps = repeat_rows(trials, row["arm"])
        scores = reps["test_accuracy"].dropna() if "test_accuracy" in reps else pd.Series([])
        ax.scatter([i] * len(scores), scores, color=OTHERS, alpha=0.6, zorder=2,
                   label="one seed" if i == 0 else None)
        if pd.notna(row["test_mean"]):
            low, high = row["test_ci95_low"], row["test_ci95_high"]
            err = [[row["test_mean"] - low], [high - row["test_mean"]]] if pd.notna(low) else None
            ax.errorbar([i + 0.15], [row["test_mean"]], yerr=err, fmt="s", color=CHOSEN, capsize=5,
                        zorder=3, label="mean, 95% interval" if i == 0 else None)
    repeats = int(table["repeats"].max()) if len(table) else 0
    ax.set(ylabel="test accuracy", title=f"best config re-run over {repeats} seeds")
    _arm_axis(ax, list(table["arm"]))
    if table["test_mean"].notna().any():
        ax.legend(loc="best", fontsize="small")


def draw_arms_search(ax: Axes, trials: pd.DataFrame, arms: list[str], spec: Spec) -> None:
    """Every search trial's final validation metric per arm, the arm's chosen one in red."""
    metric = spec.search.metric
    for i, arm in enumerate(arms):
        search = scored_trials(trials[(trials["arm"] == arm) & (trials["phase"] == "search")], spec)
        chosen = (search[metric] == search[metric].agg(spec.search.mode)).to_numpy()
        ax.scatter([i] * len(search), search[metric], color=np.where(chosen, CHOSEN, OTHERS),
                   alpha=0.7)
    ax.set(ylabel=metric, title=f"search: {spec.search.num_samples} trials per arm")
    _arm_axis(ax, arms)


def _arm_axis(ax: Axes, arms: list[str]) -> None:
    ax.set_xticks(range(len(arms)), arms, rotation=15)
    ax.set_xlim(-0.5, len(arms) - 0.5)


def plot_compare(trials: pd.DataFrame, table: pd.DataFrame, spec: Spec, path: Path) -> None:
    """compare.png: the repeats' test accuracy per arm with its spread, next to the arms' searches."""
    arms = list(table["arm"])
    fig, (test_ax, search_ax) = panels(2, wide=max(1.0, 0.4 * len(arms)))
    draw_arms_test(test_ax, trials, table)
    draw_arms_search(search_ax, trials, arms, spec)
    fig.suptitle(f"{spec.name}: {len(arms)} arms compared", fontsize="medium")
    write_bytes(path, png(fig))


SURGERY = re.compile(r"^\d+ backbone tensors loaded")  # the part of a weights text after the label


def weights_names(text: str) -> list[str]:
    """The weights labels in a compare.csv weights text ("label; surgery", joined by "; " when an
    arm used several), without the surgery details (which tensors were loaded or adapted)."""
    return [part for part in str(text).split("; ") if part and not SURGERY.match(part)]


def curve_title(curve: pd.DataFrame) -> str:
    """What the arms started from, for the learning curve's title: one label, or the arms that
    share each label."""
    arms: dict[str, list[str]] = {}
    for arm, text in curve[["arm", "weights"]].drop_duplicates().itertuples(index=False):
        for name in weights_names(text) or ["?"]:
            arms.setdefault(name, [])
            if arm not in arms[name]:
                arms[name].append(arm)
    if len(arms) == 1:
        return "weights: " + next(iter(arms))
    return "weights: " + "; ".join(f"{', '.join(a)}: {name}" for name, a in arms.items())


def draw_learning_curve(ax: Axes, curve: pd.DataFrame) -> None:
    """Test accuracy per arm against training images per class (log scale), one line per arm: each
    point an arm's mean over its repeats in one comparison run, with its 95% interval. `curve` is
    the report's tidy table (images_per_class, arm, test_mean, test_ci95_low, test_ci95_high,
    weights); the title says what the weights were."""
    shown = curve.dropna(subset=["images_per_class", "test_mean"])
    arms = list(dict.fromkeys(shown["arm"]))
    for i, arm in enumerate(arms):
        rows = shown[shown["arm"] == arm].sort_values("images_per_class")
        mean = rows["test_mean"].to_numpy(float)
        # no interval (one repeat): the point alone
        err = np.vstack([mean - rows["test_ci95_low"].to_numpy(float),
                         rows["test_ci95_high"].to_numpy(float) - mean])
        # arms spread a little sideways (in log x) so that their intervals at one size stay apart
        shift = 10 ** (0.015 * (i - (len(arms) - 1) / 2))
        ax.errorbar(rows["images_per_class"].to_numpy(float) * shift, mean,
                    yerr=np.nan_to_num(err), fmt="-o", capsize=4, color=f"C{i}", label=arm)
    sizes = sorted(shown["images_per_class"].unique())
    ax.set_xscale("log")
    if sizes:
        ax.set_xticks(sizes, [f"{s:g}" for s in sizes])
        ax.set_xlim(sizes[0] / 1.6, sizes[-1] * 1.6)
    ax.xaxis.set_minor_locator(NullLocator())  # the sizes run, not the log scale's decades
    ax.set(xlabel="training images per class (log scale)",
           ylabel="test accuracy (mean, 95% interval)")
    ax.set_title("\n".join(["test accuracy per arm by training-set size",
                             *textwrap.wrap(curve_title(curve), 100)]), fontsize="small")
    if arms:
        ax.legend(loc="best", fontsize="small")


def plot_confusion(matrix: pd.DataFrame, path: Path) -> None:
    """A confusion matrix (rows: true class, columns: predicted) as a heat map with its counts."""
    n = len(matrix)
    side = max(3.5, 0.6 * n + 2)
    fig = Figure(figsize=(side, side))
    ax = fig.subplots()
    ax.imshow(matrix.to_numpy(), cmap="Blues")
    ax.set_xticks(range(n), matrix.columns, rotation=45, ha="right")
    ax.set_yticks(range(n), matrix.index)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = matrix.to_numpy().max() or 1
    for i in range(n):
        for j in range(n):
            value = int(matrix.iat[i, j])
            ax.text(j, i, str(value), ha="center", va="center",
                    color="white" if value > top / 2 else "black")
    write_bytes(path, png(fig))
