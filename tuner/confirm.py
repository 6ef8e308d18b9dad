"""Robust selection: the best configs on validation trained again with another seed before one is
chosen (search.confirm_top_k).

One seed's validation score flatters the config that was lucky with it: among many trials, the
highest score is partly noise, and a config that wins once may fall on the next seed. So the top k
configs of the search are each trained once more, all with the same fresh train.seed, and the
choice is the best mean score over both runs. `selection` records every candidate's scores and the
regret of a one-seed choice (the chosen config's first score minus its mean).

A second round (`challengers`): when the first round's means fall below a runner-up's single
score, the runner-up gets the same second seed, as an incumbent must be beaten on its own seeds in
SMAC's intensification.

Pure functions over tables; the confirming trials run as one more Ray Tune experiment per round
(sweep.run_step), beside the search's.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import pandas as pd

from tuner.results import plain, scored_trials
from tuner.spec import Spec, param_path, same_point


def top_k(spec: Spec) -> int:
    """search.confirm_top_k, or its default: 2 candidates from 8 trials on, 3 from 20 (a second
    run of each costs k trials more); none below 8, where a re-run costs too large a share."""
    s = spec.search
    if s.confirm_top_k is not None:
        return s.confirm_top_k
    n = s.planned_trials()
    return 3 if n >= 20 else 2 if n >= 8 else 0


def candidates(trials: pd.DataFrame, spec: Spec, k: int) -> pd.DataFrame:
    """The k best scored trials of distinct configs (best first); fewer if fewer scored."""
    metric, keys = spec.search.metric, list(spec.search.parameters)
    ranked = scored_trials(trials, spec).sort_values(metric, ascending=spec.search.mode == "min",
                                                     kind="stable")
    picked: list[pd.Series] = []
    for _, row in ranked.iterrows():
        config = point_of(row, keys)
        if not any(same_point(config, point_of(p, keys)) for p in picked):
            picked.append(row)
        if len(picked) == k:
            break
    return pd.DataFrame(picked)


def challenger_limit(spec: Spec) -> int:
    """search.confirm_challengers, or its default: as many as the first round confirmed."""
    c = spec.search.confirm_challengers
    return top_k(spec) if c is None else c


def challengers(trials: pd.DataFrame, spec: Spec, top: pd.DataFrame, confirmed: pd.DataFrame,
                val_images: int | None = None) -> pd.DataFrame:
    """The second round: the configs after `top` in the search's ranking (best first, at most
    challenger_limit) whose one score beats the first round's best mean, or with search.prefer
    comes within one standard error of it (`standard_error`: the choice could then fall to
    them). A seed that flattered the first round's candidates leaves their means below a
    runner-up's single score; that runner-up then gets the same second seed, and the choice is
    made over all of them. Empty when the first round's choice holds against every single score."""
    limit = challenger_limit(spec)
    if limit == 0 or top.empty:
        return top.iloc[:0]
    _, selection = choose(spec, top, confirmed, val_images)
    best = selection["best_mean"]
    ranked = candidates(trials, spec, len(top) + limit).iloc[len(top):]
    if ranked.empty:
        return top.iloc[:0]
    score = ranked[spec.search.metric]
    if spec.search.prefer:  # within the error the choice could fall to them (max: val_accuracy)
        return ranked[score >= best - selection["standard_error"]]
    return ranked[score > best if spec.search.mode == "max" else score < best]


def standard_error(accuracy: float, val_images: int | None) -> float:
    """The binomial standard error of an accuracy measured on `val_images` images (0 unknown)."""
    if not val_images or not 0 <= accuracy <= 1:
        return 0.0
    return math.sqrt(accuracy * (1 - accuracy) / val_images)


def preferred(config: dict[str, Any], prefer: dict[str, str]) -> tuple:
    """A sort key: smallest first for "min", largest first for "max", in search.prefer's order."""
    return tuple(float(config[k]) if how == "min" else -float(config[k])
                 for k, how in prefer.items())


def point_of(row: pd.Series, keys: list[str]) -> dict[str, Any]:
    return {k: plain(row[k]) for k in keys}


def configs(rows: pd.DataFrame, spec: Spec) -> list[dict[str, Any]]:
    """The searched values of each of `rows` (candidates, challengers), for confirm_spec."""
    return [point_of(row, list(spec.search.parameters)) for _, row in rows.iterrows()]


def confirm_spec(spec: Spec, configs: list[dict[str, Any]], used: set[int]) -> Spec:
    """The configs trained once each with one fresh train.seed (the first after train.seed that
    no search trial used; the same for all, so the candidates are compared on equal terms): the
    random searcher's whole plan, under FIFO so that every run trains all its epochs."""
    key = next((k for k in spec.search.parameters if param_path(k) == "train.seed"), "train.seed")
    seed = next(s for s in itertools.count(spec.train.seed + 1) if s not in used)
    raw = spec.model_dump()
    choices = {k: list(dict.fromkeys(c[k] for c in configs)) for k in configs[0] if k != key}
    raw["search"].update(
        searcher="random", num_samples=len(configs), n_initial_points=None, scheduler="fifo",
        default_trial=False, confirm_top_k=0, warm_start=[],
        parameters={**{k: {"choice": v} for k, v in choices.items()}, key: {"choice": [seed]}},
        points_to_evaluate=[{**c, key: seed} for c in configs],
    )
    return Spec.model_validate(raw)


def choose(spec: Spec, top: pd.DataFrame, confirmed: pd.DataFrame,
           val_images: int | None = None) -> tuple[str, dict[str, Any]]:
    """The chosen search trial (its id: its checkpoint is the model) and the selection record:
    every candidate's first and confirming scores and their mean, and the regret of choosing on
    one seed. A candidate whose confirming run failed keeps its one score.

    The choice is the best mean; with search.prefer (and `val_images`, the validation set's
    size), the preferred config among those within one standard error of the best mean."""
    metric, better = spec.search.metric, (max if spec.search.mode == "max" else min)
    keys = [k for k in spec.search.parameters if param_path(k) != "train.seed"]
    ok = scored_trials(confirmed, spec) if len(confirmed) else confirmed
    rows = []
    for _, cand in top.iterrows():
        config = point_of(cand, keys)
        again = [float(r[metric]) for _, r in ok.iterrows() if same_point(point_of(r, keys), config)]
        scores = [float(cand[metric]), *again]
        rows.append({"trial_id": str(cand["trial_id"]), "config": point_of(cand, list(
            spec.search.parameters)), "scores": scores, "mean": sum(scores) / len(scores)})
    top_mean = better(rows, key=lambda r: r["mean"])
    chosen, error, near = top_mean, 0.0, [top_mean]
    prefer = spec.search.prefer
    if prefer:  # the spec allows it for val_accuracy only: higher is better
        error = standard_error(top_mean["mean"], val_images)
        near = [r for r in rows if r["mean"] >= top_mean["mean"] - error]
        chosen = min(near, key=lambda r: (*preferred(r["config"], prefer), -r["mean"]))
    sign = 1 if spec.search.mode == "max" else -1
    record = {
        "confirm_top_k": len(rows), "metric": metric, "candidates": rows,
        "chosen": chosen["trial_id"],
        "first_choice": rows[0]["trial_id"],  # what one seed would have chosen
        "regret": sign * (chosen["scores"][0] - chosen["mean"]),
        "best_mean": top_mean["mean"], "standard_error": error,
    }
    if prefer:
        record.update(best_mean_choice=top_mean["trial_id"], prefer=dict(prefer),
                      within_error=[r["trial_id"] for r in near])
    return chosen["trial_id"], record


def describe(selection: dict[str, Any]) -> str:
    """The selection in words, for the end of a sweep's output."""
    metric, rows = selection["metric"], selection["candidates"]
    chosen = next(r for r in rows if r["trial_id"] == selection["chosen"])
    seeds = len(chosen["scores"])
    head = (f"selection: the top {len(rows)} configs trained again with another seed; chose "
            f"trial {chosen['trial_id']} on its mean {metric} {chosen['mean']:.4f} over {seeds} "
            f"seed(s) (first seed {chosen['scores'][0]:.4f})")
    if selection["first_choice"] != selection["chosen"]:
        first = rows[0]
        head += (f"; one seed would have chosen trial {first['trial_id']} ({first['scores'][0]:.4f}"
                 f", mean {first['mean']:.4f})")
    if selection.get("prefer") and selection["best_mean_choice"] != selection["chosen"]:
        wanted = ", ".join(f"{k} {how}" for k, how in selection["prefer"].items())
        head += (f"; preferred ({wanted}) within one standard error "
                 f"({selection['standard_error']:.4f}) of the best mean "
                 f"{selection['best_mean']:.4f}, trial {selection['best_mean_choice']}'s")
    return head
