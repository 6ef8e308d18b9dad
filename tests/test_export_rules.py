"""One rule for a run's model folder and its exports: a model rewrite never destroys an export
(and never leaves one beside a model it was not made from), an export never overwrites a file
without --force, and export waits for no live driver: it refuses while one holds the run's lock.
A real model folder and real exports; no Ray."""

import json

import pytest
import torch
from filelock import FileLock
from helpers import ROOT, needs_fashion

from tuner import artifact, export
from tuner.specfile import dump_spec, load_spec

pytestmark = needs_fashion


def card(trial: str) -> dict:
    return {"format": 1, "weights_file": "model.pt", "classes": [str(i) for i in range(10)],
            "trial_id": trial,
            "architecture": {"arch": "resnet18", "in_channels": 1, "small_input_stem": False,
                             "num_classes": 10},
            "preprocessing": {"dataset": "fashion_mnist", "mode": "grayscale", "resize": 28,
                              "crop": None, "mean": [0.286], "std": [0.353]}}


@pytest.fixture
def run(tmp_path):
    """A finished run's folder as export reads it: spec.yaml and model/."""
    spec = load_spec(ROOT / "sweeps" / "fashion-quick.yaml",
                     ["model.weights=none", "data.train_subset=200", "data.test_subset=50"])
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "spec.yaml").write_text(dump_spec(spec))
    torch.manual_seed(0)
    model = artifact.build(card("t1"))
    artifact.write_model(folder / "model", artifact.state_bytes(model), card("t1"))
    return folder


def test_an_export_is_never_overwritten_without_force(run, capsys):
    assert export.main([str(run), "--format", "torchscript"]) == 0
    made = run / "model" / "model.torchscript.pt"
    first = made.read_bytes()
    assert export.main([str(run), "--format", "torchscript"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {made}: exists already") and err.count("\n") == 1
    assert made.read_bytes() == first
    assert export.main([str(run), "--format", "torchscript", "--force"]) == 0
    # pt: --out an existing folder that is not a model folder is never replaced, even with --force
    (run / "mine").mkdir()
    (run / "mine" / "notes.txt").write_text("keep me")
    assert export.main([str(run), "--out", str(run / "mine")]) == 2
    assert export.main([str(run), "--out", str(run / "mine"), "--force"]) == 2
    assert (run / "mine" / "notes.txt").read_text() == "keep me"


def test_a_model_rewrite_keeps_the_old_models_exports_apart(run):
    assert export.main([str(run), "--format", "torchscript"]) == 0
    old = (run / "model" / "model.torchscript.pt").read_bytes()
    torch.manual_seed(1)
    artifact.write_model(run / "model", artifact.state_bytes(artifact.build(card("t2"))), card("t2"))
    assert sorted(p.name for p in (run / "model").iterdir()) == ["model.json", "model.pt"]
    assert json.loads((run / "model" / "model.json").read_text())["trial_id"] == "t2"
    kept = run / "model-exports-t1" / "model.torchscript.pt"
    assert kept.read_bytes() == old  # the export of the model it was made from, by its trial


def test_an_interrupt_between_the_renames_puts_the_old_model_back(run, monkeypatch):
    before = (run / "model" / "model.pt").read_bytes()
    real, calls = artifact.os.replace, []

    def interrupted(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the new folder about to take the old one's place
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(artifact.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        artifact.write_model(run / "model", b"new weights", card("t2"))
    monkeypatch.undo()
    assert (run / "model" / "model.pt").read_bytes() == before
    assert not [p for p in run.iterdir() if p.name.startswith(".model")]  # nothing left aside


def test_export_refuses_while_a_driver_holds_the_run(run, capsys):
    with FileLock(run / ".driver.lock", timeout=0):  # as a live driver holds it
        assert export.main([str(run), "--format", "torchscript"]) == 2
    assert "the sweep is still running" in capsys.readouterr().err
    assert not (run / "model" / "model.torchscript.pt").exists()
