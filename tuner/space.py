"""The search space: spec data (search.parameters) turned into Ray Tune primitives, in one place."""

from __future__ import annotations

from typing import Any

from ray import tune

from tuner.spec import Param, Search


def to_tune(param: Param) -> Any:
    """One spec distribution as a Ray Tune sampler."""
    a = param.args
    match param.kind:
        case "choice":
            return tune.choice(list(a))
        case "uniform":
            return tune.uniform(a[0], a[1])
        case "loguniform":
            return tune.loguniform(a[0], a[1])
        case "quniform":
            return tune.quniform(a[0], a[1], a[2])
        case "randint":
            return tune.randint(a[0], a[1])  # high exclusive
    raise AssertionError(param.kind)


def param_space(search: Search) -> dict[str, Any]:
    """The Tuner's param_space: parameter key (as in the spec) -> sampler, or for a grid search
    (choices only) -> tune.grid_search, so every combination runs once."""
    if search.searcher == "grid":
        return {key: tune.grid_search(list(p.choice)) for key, p in search.parameters.items()}
    return {key: to_tune(p) for key, p in search.parameters.items()}


def describe(search: Search) -> list[tuple[str, str]]:
    """(key, human-readable distribution) rows, for --dry-run."""
    if search.searcher == "grid":
        return [(key, "grid of " + ", ".join(map(str, p.choice))) for key, p in search.parameters.items()]
    return [(key, _text(p)) for key, p in search.parameters.items()]


def _text(param: Param) -> str:
    a = param.args
    match param.kind:
        case "choice":
            return "choice of " + ", ".join(map(str, a))
        case "uniform":
            return f"uniform in [{a[0]:g}, {a[1]:g}]"
        case "loguniform":
            return f"log-uniform in [{a[0]:g}, {a[1]:g}]"
        case "quniform":
            return f"uniform in [{a[0]:g}, {a[1]:g}], step {a[2]:g}"
    return f"integer in [{a[0]}, {a[1]})"
