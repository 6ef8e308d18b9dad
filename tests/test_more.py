"""Sweeps that go on: `search.warm_start`, its points and the primed searcher, without a cluster.
(`tuner resume RUN_DIR --more N` end to end: test_live.py, on the finished run of its sweep.)
"""

from pathlib import Path

import pandas as pd
import pytest
import yaml

from tuner.errors import InputError
from tuner.specfile import load_spec

# --- warm-start points, without Ray ---------------------------------------------------------


def fake_run(folder: Path, parameters: dict, rows: list[dict]) -> Path:
    """A finished run directory as the warm start reads it: spec.yaml and trials.csv."""
    folder.mkdir(parents=True)
    (folder / "spec.yaml").write_text(yaml.safe_dump(
        {"name": "old", "model": {"weights": "none"}, "search": {"parameters": parameters}}))
    pd.DataFrame(rows).to_csv(folder / "trials.csv", index=False)
    return folder


SPACE = {"lr": {"loguniform": [1.0e-4, 1.0e-2]}, "model.freeze": {"choice": ["none", "head"]}}
ROWS = [{"trial_id": "a1", "status": "finished", "lr": 3e-4, "model.freeze": "none",
         "val_accuracy": 0.8},
        {"trial_id": "b2", "status": "error", "lr": 5e-3, "model.freeze": "head",
         "val_accuracy": None},
        {"trial_id": "c3", "status": "stopped_early", "lr": 2e-3, "model.freeze": "head",
         "val_accuracy": 0.6}]


def new_spec(tmp_path, parameters: dict, runs: list[Path]):
    path = tmp_path / "new.yaml"
    path.write_text(yaml.safe_dump({"model": {"weights": "none"}, "search": {
        "num_samples": 10, "n_initial_points": 2, "parameters": parameters,
        "warm_start": [str(r) for r in runs]}}))
    return load_spec(path)


def test_warm_start_reads_the_scored_trials_with_their_values(tmp_path):
    from tuner.warmstart import load_points

    run = fake_run(tmp_path / "old", SPACE, ROWS)
    points = load_points(new_spec(tmp_path, SPACE, [run]))
    assert [(p.config, p.value) for p in points] == [
        ({"lr": 3e-4, "model.freeze": "none"}, 0.8), ({"lr": 2e-3, "model.freeze": "head"}, 0.6)]


@pytest.mark.parametrize("space, pieces", [
    ({**SPACE, "epochs": {"choice": [1, 2]}}, ["did not search epochs"]),
    ({"lr": SPACE["lr"]}, ["also searched model.freeze", "leaves fixed"]),
    ({**SPACE, "lr": {"loguniform": [1.0e-3, 1.0e-2]}}, ["trial a1", "lr=0.0003", "outside"]),
    ({**SPACE, "model.freeze": {"choice": ["none"]}}, ["trial c3", "model.freeze='head'"]),
], ids=["missing", "extra", "below_range", "not_a_choice"])
def test_warm_start_from_an_incompatible_space_names_the_parameter(tmp_path, space, pieces):
    from tuner.warmstart import load_points

    run = fake_run(tmp_path / "old", SPACE, ROWS)
    with pytest.raises(InputError) as e:
        load_points(new_spec(tmp_path, space, [run]))
    msg = str(e.value)
    assert msg.startswith(f"search.warm_start: {run}") and "\n" not in msg
    for piece in pieces:
        assert piece in msg, msg


def test_primed_tpe_proposes_where_the_evidence_is_good(tmp_path):
    """30 earlier trials whose accuracy grows with lr: TPE, primed with them, proposes high lr at
    once (no random start-up left: 30 >= n_initial_points); unprimed, it draws at random."""
    from tuner import sweep
    from tuner.space import param_space

    lrs = [1e-4 + i * (1e-2 - 1e-4) / 29 for i in range(30)]
    rows = [{"trial_id": f"t{i}", "status": "finished", "lr": lr, "val_accuracy": lr * 50}
            for i, lr in enumerate(lrs)]
    space = {"lr": {"uniform": [1.0e-4, 1.0e-2]}}
    run = fake_run(tmp_path / "old", space, rows)

    def proposals(spec):
        searcher = sweep.make_searcher(spec).searcher  # HyperOpt's, without the concurrency limit
        searcher.set_search_properties("val_accuracy", "max", param_space(spec.search))
        return sorted(searcher.suggest(f"s{i}")["lr"] for i in range(8))  # 8 at once, no results

    primed = proposals(new_spec(tmp_path, space, [run]))
    fresh = proposals(new_spec(tmp_path, space, []))
    assert primed[len(primed) // 2] > 7e-3, primed  # the median: in the top third of the range
    assert fresh[len(fresh) // 2] < 6e-3, fresh  # random: about the middle of the range
