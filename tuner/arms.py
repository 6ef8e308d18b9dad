"""Every arm's fixed runs as one Ray Tune experiment.

A comparison's confirming runs and repeats are fixed lists of points per arm: no searcher decides
them. Run arm by arm, each list is an experiment of its own, with a Tuner's start-up and a tail
where the last run trains alone on a machine that could run two. As one experiment the slots stay
busy until the last run of the last arm. Each point carries its arm's settings (the values of
every field any arm overrides: model.freeze, model.weights, ...) as values of its own, and each
finished trial goes back to its arm by them.
"""

from __future__ import annotations

import json
from typing import Any

from tuner.spec import Spec, same_point


def groups(spec: Spec, arms: list[str]) -> list[list[str]]:
    """`arms` in as few groups as one experiment each can hold: arms that set the same values
    (an A/A comparison, the same strategy under two names) cannot share one, since their trials
    could not be told apart. Arms whose settings all differ: one group."""
    values = spec.arm_settings()
    out: list[list[str]] = []
    for arm in arms:
        home = next((g for g in out if not any(same_point(values[arm], values[o]) for o in g)),
                    None)
        if home is None:
            out.append([arm])
        else:
            home.append(arm)
    return out


def merged_spec(spec: Spec, steps: dict[str, Spec]) -> Spec:
    """One experiment for every arm's fixed points: `steps` maps an arm to the spec of its step
    (tuner.confirm.confirm_spec, tuner.compare.repeats_spec: a random searcher's whole plan under
    FIFO), for arms of one of `groups`. The points run in the order given, arm by arm."""
    values = spec.arm_settings()
    points = [{**values[arm], **point} for arm, step in steps.items()
              for point in step.search.points_to_evaluate]
    keys = list(dict.fromkeys(k for p in points for k in p))
    choices = {k: _distinct(p[k] for p in points) for k in keys}
    first = next(iter(steps.values()))
    raw = first.model_dump()
    raw["search"].update(
        num_samples=len(points), parameters={k: {"choice": v} for k, v in choices.items()},
        points_to_evaluate=points)
    return Spec.model_validate(raw)


def arm_of(arm_settings: dict[str, dict[str, Any]], params: dict[str, Any]) -> str:
    """The arm a trial of merged_spec's experiment belongs to, by its values of the arms'
    `settings`."""
    for arm, values in arm_settings.items():
        if same_point(values, {k: params.get(k) for k in values}):
            return arm
    raise ValueError(f"a trial's settings match no arm: {params}")


def _distinct(values) -> list[Any]:
    """Unique values in order; JSON keys so that lists and dicts (augment settings) count too."""
    seen = {}
    for v in values:
        seen.setdefault(json.dumps(v, sort_keys=True), v)
    return list(seen.values())
