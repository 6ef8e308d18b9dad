"""One figure per run, `sweep.png`: every trial's validation curve, and the metric against each
searched value, so a reader sees at a glance what the sweep learned."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure  # no pyplot: no global backend or figure state to manage
from matplotlib.ticker import MaxNLocator

from tuner.results import best_trial, scored_trials, write_bytes
from tuner.spec import Spec

PANEL_INCHES = (4.2, 3.6)  # width, height of one panel


def plot_sweep(epochs: pd.DataFrame, trials: pd.DataFrame, spec: Spec, path: Path) -> bool:
    """Write the run's figure to `path`; False (and nothing written) when no trial reported."""
    metric = spec.search.metric
    if epochs.empty or metric not in epochs:
        return False
    params = list(spec.search.parameters)
    fig = Figure(figsize=(PANEL_INCHES[0] * (1 + len(params)), PANEL_INCHES[1]))
    axes = fig.subplots(1, 1 + len(params), squeeze=False)
    curves, *scatters = axes[0]
    best = best_trial(trials, spec)
    best_id = None if best is None else best["trial_id"]
    for trial_id, rows in epochs.groupby("trial_id", sort=False):
        is_best = trial_id == best_id
        curves.plot(rows["epoch"], rows[metric], marker="o", markersize=3,
                    linewidth=2.5 if is_best else 1, alpha=1 if is_best else 0.5,
                    color="C3" if is_best else "C0", zorder=3 if is_best else 2,
                    label=f"chosen: {trial_id}" if is_best else None)
    curves.xaxis.set_major_locator(MaxNLocator(integer=True))
    curves.set(xlabel="epoch", ylabel=metric, title="every trial, per epoch")
    if best_id is not None:
        curves.legend(loc="best", fontsize="small")

    done = scored_trials(trials, spec)
    for ax, key in zip(scatters, params, strict=True):
        x = done[key]
        if not pd.api.types.is_numeric_dtype(x):
            x = x.map(str)  # choices of strings or mappings: one category each
        chosen = done["trial_id"] == best_id
        ax.scatter(x[~chosen], done.loc[~chosen, metric], color="C0", alpha=0.7)
        ax.scatter(x[chosen], done.loc[chosen, metric], color="C3", zorder=3)
        kind = spec.search.parameters[key].kind
        if kind == "loguniform":
            ax.set_xscale("log")
        elif kind == "choice" and pd.api.types.is_numeric_dtype(x):
            ax.set_xticks(sorted(set(spec.search.parameters[key].args)))  # just the choices
        elif kind in ("randint", "quniform"):
            ax.xaxis.set_major_locator(MaxNLocator(integer=kind == "randint"))
        ax.set(xlabel=key, ylabel=metric, title=f"final {metric} by {key}")

    weights = trials["weights"].iloc[0] if "weights" in trials and len(trials) else "?"
    fig.suptitle(f"{spec.name}: {len(trials)} trials, weights {weights}", fontsize="medium")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    write_bytes(path, buf.getvalue())
    return True
