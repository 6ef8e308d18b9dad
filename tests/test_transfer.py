"""The transfer study's sweeps: they validate as shipped, the arms inherit the source weights, a
real comparison whose arms train on different numbers of images per class (real Ray, HyperOpt,
training, Fashion-MNIST), and an RGB image folder fine-tuned from one of its 1-channel models."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import yaml
from helpers import FOLDER_QUICK, ROOT, make_image_folder, needs_fashion, run_cli

from tuner import fashion_mnist
from tuner.bench.grid import grid_lrs
from tuner.results import read_trials
from tuner.specfile import load_spec

SOURCE = ROOT / "sweeps" / "transfer-source.yaml"
TARGET = ROOT / "sweeps" / "transfer-target.yaml"


def test_the_study_is_two_halves_of_fashion_mnist_and_one_set_gives_the_source_to_three_arms():
    source, target = load_spec(SOURCE), load_spec(TARGET, ["model.weights=results/src/run"])
    assert source.data.classes == list(fashion_mnist.CLASSES[:5]) and source.model.weights == "none"
    assert target.data.classes == list(fashion_mnist.CLASSES[5:])
    assert not set(source.data.classes) & set(target.data.classes)
    arms = {name: target.arm(name).model for name in target.compare.arms}
    assert {n: (m.weights, m.freeze) for n, m in arms.items()} == {
        "scratch": ("none", "none"), "feature-extraction": ("results/src/run", "head"),
        "fine-tune": ("results/src/run", "none"), "lp-ft": ("results/src/run", "lp-ft")}
    assert target.compare.repeats >= 5 and target.search.confirm_top_k >= 2
    for spec in (source, target):  # lr over at least two decades; one planned length
        lr = spec.search.parameters["lr"].loguniform
        assert lr[1] / lr[0] >= 100 and "epochs" not in spec.search.parameters
        assert spec.search.default_trial
    assert source.search.scheduler == "asha"
    # the target's search holds the plain grid's lrs (its ends and the own settings' middle), each
    # trained to the end as the grid's runs are
    assert target.search.scheduler == "fifo"
    assert sorted([target.train.lr] + [p["lr"] for p in target.search.points_to_evaluate]) == \
        pytest.approx(grid_lrs(target))
    assert {"model.head_lr_multiplier", "model.layer_decay"} <= set(target.search.parameters)
    assert "batch_size" in source.search.parameters


@needs_fashion
@pytest.mark.slow  # runs.py's comparison (over a minute) and a folder sweep
@pytest.mark.cluster
def test_arms_train_on_their_own_number_of_images_and_share_validation_and_test(comparison, tmp_path):
    """runs.py's comparison (transfer-target.yaml's five classes): arm planted trains on 10 images
    per class, arm scratch on 40 (and frozen but for its head)."""
    run, proc = comparison.run, comparison.resumed
    assert proc.returncode == 0, proc.stderr[-3000:]
    epochs = pd.read_csv(run / "epochs.csv")
    assert epochs.groupby("arm")["train_images"].unique().map(list).to_dict() == {
        "planted": [50], "scratch": [200]}  # 5 classes x the arm's train_per_class, every trial
    provenance = yaml.safe_load((run / "spec.yaml").read_text())["provenance"]
    assert provenance["classes"] == ["Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    trials = pd.read_csv(run / "trials.csv")
    repeats = trials[(trials["phase"] == "repeats") & (trials["role"] == "chosen")]
    assert repeats["test_accuracy"].between(0, 1).all() and len(repeats) == 4
    # the arms' repeats share their seeds, so the verdict pairs them
    assert "(paired t, " in proc.stdout.strip().splitlines()[-1]

    # the image folder case: RGB fine-tuned from arm planted's 1-channel Fashion-MNIST model, conv1's
    # filters repeated over R, G and B (scaled by 1/3, so that a gray image's activations keep
    # their size); frozen (model.freeze: head), so model.pt holds conv1 as it was loaded
    source = run / "model" / "planted"
    folder = make_image_folder(tmp_path / "imgs", train_per_class=12, test_per_class=4,
                               odd_files=False)
    proc = run_cli(*FOLDER_QUICK, "--set", f"data.root={folder}", "--set", "data.cache=false",
                   "--set", "search.num_samples=1", "--set", "search.n_initial_points=1",
                   "--set", "search.parameters={epochs: {choice: [1]}, lr: {loguniform: [1.0e-3, 2.0e-3]}}",
                   "--set", f"model.weights={source}", "--set", "model.conv1=sum",
                   "--set", "model.freeze=head", "--results", str(tmp_path / "folder-results"),
                   tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder_run,) = (tmp_path / "folder-results").glob("*/*")
    assert (folder_run / "best.json").is_file()
    adapted = "conv1 adapted 1->3 channels (repeated), fc re-initialised (5->3 classes)"
    tensors = yaml.safe_load((folder_run / "spec.yaml").read_text())["provenance"]["weights_tensors"]
    assert tensors[str(source)].endswith(adapted), tensors
    assert read_trials(folder_run)["weights"].str.contains(adapted, regex=False).all()
    gray = torch.load(source / "model.pt", weights_only=True)
    rgb = torch.load(folder_run / "model" / "model.pt", weights_only=True)
    assert gray["conv1.weight"].shape == (64, 1, 7, 7) and rgb["conv1.weight"].shape == (64, 3, 7, 7)
    assert torch.allclose(rgb["conv1.weight"], gray["conv1.weight"].repeat(1, 3, 1, 1) / 3)
    assert all(torch.equal(rgb[k], v) for k, v in gray.items()
               if not k.startswith(("fc.", "conv1.")))  # the rest of the backbone as it was
    assert rgb["fc.weight"].shape == (3, 512)
