"""Starting weights and warm starts never carry this run's test images in (tuner.leakage): real
Fashion-MNIST splits, run folders as a sweep leaves them (spec.yaml, status.json, split.npz)."""

import logging

import numpy as np
import pytest
from helpers import ROOT, needs_fashion

from tuner import leakage
from tuner.data import load_for
from tuner.errors import InputError
from tuner.specfile import dump_spec, load_spec

pytestmark = needs_fashion
QUICK = ROOT / "sweeps" / "fashion-quick.yaml"
SMALL = ["model.weights=none", "data.train_subset=400", "data.test_subset=200"]


def source(tmp_path, name, overrides, record=True):
    """A finished run's folder: its spec, status, model file and (unless not) its split."""
    spec = load_spec(QUICK, [*SMALL, *overrides])
    run = tmp_path / name
    (run / "model").mkdir(parents=True)
    (run / "spec.yaml").write_text(dump_spec(spec))
    (run / "status.json").write_text('{"state": "finished"}')
    (run / "model" / "model.pt").write_bytes(b"weights")
    if record:
        leakage.write_split(run, load_for(spec))
    return run


def test_the_split_is_recorded_as_one_fingerprint_per_image(tmp_path):
    run = source(tmp_path, "a", [])
    data = load_for(load_spec(QUICK, SMALL))
    with np.load(run / "split.npz") as f:
        assert [len(f[k]) for k in ("train", "val", "test")] == [len(data.train), len(data.val),
                                                                  len(data.test)]
        assert len(set(f["test"]) & set(f["train"])) == 0  # Fashion-MNIST's files are apart
    assert (leakage.fingerprints(data.val) == leakage.fingerprints(data.val)).all()


def test_weights_from_a_run_that_tested_elsewhere_pass(tmp_path):
    """The same split (another lr): its training and validation images are not our test images."""
    a = source(tmp_path, "a", ["train.lr=0.0005"])
    spec = load_spec(QUICK, [*SMALL[1:], f"model.weights={a / 'model' / 'model.pt'}"])
    leakage.check(spec, load_for(load_spec(QUICK, SMALL)))


def test_weights_that_trained_on_this_runs_test_images_are_refused(tmp_path, monkeypatch):
    """A source whose training split holds this run's test images (as an image folder carved with
    another seed would): refused, naming the count. Made here by planting this run's test images
    in the source's recorded training split."""
    a = source(tmp_path, "a", [])
    data = load_for(load_spec(QUICK, SMALL))
    with np.load(a / "split.npz") as f:
        parts = dict(f)
    parts["train"] = np.concatenate([parts["train"], leakage.fingerprints(data.test[np.arange(7)])])
    np.savez(a / "split.npz", **parts)
    for weights in (a, a / "model" / "model.pt"):  # the run folder or its model file
        spec = load_spec(QUICK, [*SMALL[1:], f"model.weights={weights}"])
        with pytest.raises(InputError, match=r"model.weights: .*trained or validated on 7 of this "
                                              r"run's 200 test images"):
            leakage.check(spec, data)


def test_a_warm_start_scored_on_this_runs_test_images_is_refused(tmp_path):
    """Another data.seed: the earlier run's validation images come from the same Fashion-MNIST
    training file, but so do ours; its test images are another draw of the test file. Here the
    earlier run validated on test-file images (planted), so its scores saw our test set."""
    a = source(tmp_path, "a", [])
    data = load_for(load_spec(QUICK, SMALL))
    with np.load(a / "split.npz") as f:
        parts = dict(f)
    parts["val"] = leakage.fingerprints(data.test)
    np.savez(a / "split.npz", **parts)
    spec = load_spec(QUICK, SMALL).model_copy()
    spec = spec.model_copy(update={"search": spec.search.model_copy(update={"warm_start": [a]})})
    with pytest.raises(InputError, match="search.warm_start: .*scored its trials on 200 of"):
        leakage.check(spec, data)


def test_a_source_that_cannot_be_checked_is_said_so(tmp_path, caplog):
    old = source(tmp_path, "old", [], record=False)
    spec = load_spec(QUICK, [*SMALL[1:], f"model.weights={old}"])
    with caplog.at_level(logging.INFO, logger="tuner.leakage"):
        leakage.check(spec, load_for(load_spec(QUICK, SMALL)))
        loose = tmp_path / "sd.pt"
        loose.write_bytes(b"x")
        leakage.check(load_spec(QUICK, [*SMALL[1:], f"model.weights={loose}"]),
                      load_for(load_spec(QUICK, SMALL)))
    said = caplog.text
    assert "has no record of its split" in said and "cannot be checked" in said
    assert "is not in a tuner run folder" in said
