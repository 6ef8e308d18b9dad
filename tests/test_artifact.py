"""The model a sweep leaves behind: model.pt + model.json, predictions and exports from it, and
fine-tuning again from it (model.weights: RUN_DIR | model.pt | checkpoint | state_dict)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
import yaml
from helpers import FOLDER_QUICK, draw_picture, run_cli

from tuner import artifact, export, predict
from tuner.errors import InputError
from tuner.folder import decode
from tuner.model import build_model, check_surgery, resolve_weights, surgery
from tuner.results import read_trials
from tuner.spec import Model


def stock(conv1_channels: int = 3, classes: int = 1000, seed: int = 0) -> dict:
    """A torchvision-layout state_dict with conv1 of these channels and fc of these classes."""
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None, num_classes=classes)
    model.conv1 = torch.nn.Conv2d(conv1_channels, 64, 7, 2, 3, bias=False)
    return model.state_dict()


# --- model.weights: files of other shapes --------------------------------------------------------


def test_a_state_dict_with_other_conv1_and_fc_loads_its_backbone_strictly(tmp_path):
    state = stock(conv1_channels=1, classes=5)
    torch.save(state, tmp_path / "sd.pt")
    w = resolve_weights(Model(weights=str(tmp_path / "sd.pt")))
    assert w.label.startswith(f"file {tmp_path / 'sd.pt'} sha256:") and len(w.sha256) == 64
    model = build_model(Model(weights="x"), w, in_channels=3, num_classes=2)
    assert torch.equal(model.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert torch.equal(model.bn1.running_var, state["bn1.running_var"])
    # 1 -> 3 channels: the one filter repeated, scaled so activations keep their size
    assert torch.allclose(model.conv1.weight, state["conv1.weight"].repeat(1, 3, 1, 1) / 3)
    assert model.fc.out_features == 2
    assert surgery(Model(), w, 3, 2) == ("119 backbone tensors loaded, conv1 adapted 1->3 channels "
                                         "(repeated), fc re-initialised (5->2 classes)")
    # sum into one channel, as for ImageNet's filters; reinit starts afresh
    rgb = stock(classes=2)
    torch.save(rgb, tmp_path / "rgb.pt")
    w = resolve_weights(Model(weights=str(tmp_path / "rgb.pt")))
    gray = build_model(Model(), w, in_channels=1, num_classes=10)
    assert torch.allclose(gray.conv1.weight, rgb["conv1.weight"].sum(1, keepdim=True))
    fresh = build_model(Model(conv1="reinit"), w, in_channels=1, num_classes=10)
    assert not torch.allclose(fresh.conv1.weight, gray.conv1.weight)
    assert "conv1 re-initialised" in surgery(Model(conv1="reinit"), w, 1, 10)
    # keep_head keeps the file's fc for the same classes, and refuses other classes
    kept = build_model(Model(keep_head=True), w, in_channels=3, num_classes=2)
    assert torch.equal(kept.fc.weight, rgb["fc.weight"])
    check_surgery(Model(keep_head=True), w, ("a", "b"))
    with pytest.raises(InputError, match="keep_head: true, but .* has \\[2 unnamed classes\\]"):
        check_surgery(Model(keep_head=True), w, ("a", "b", "c"))


@pytest.mark.parametrize("damage, message", [
    (lambda s: s.pop("layer2.0.bn1.running_mean"), "missing layer2.0.bn1.running_mean"),
    (lambda s: s.update({"layer4.1.conv1.weight": torch.zeros(512, 512, 1, 1)}),
     r"misshapen layer4.1.conv1.weight \(512, 512, 1, 1\) \(resnet18: \(512, 512, 3, 3\)\)"),
    (lambda s: s.update({"head.weight": torch.zeros(2)}), "unexpected head.weight"),
    (lambda s: s.update({"fc.weight": torch.zeros(5, 256)}), r"misshapen fc.weight \(5, 256\)"),
])
def test_a_missing_or_misshapen_backbone_tensor_is_named(tmp_path, damage, message):
    state = stock(classes=5)
    damage(state)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(InputError, match=f"does not fit resnet18: {message}"):
        resolve_weights(Model(weights=str(tmp_path / "bad.pt")))


def test_run_folders_and_checkpoint_folders_resolve_to_their_files(tmp_path):
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    torch.save(stock(classes=3), run / "model" / "model.pt")
    (run / "model" / "model.json").write_text(json.dumps({"classes": ["a", "b", "c"]}))
    w = resolve_weights(Model(weights=str(run)))
    assert w.classes == ("a", "b", "c") and "(tuner model)" in w.label
    with pytest.raises(InputError, match=r"fc has \[a, b, c\] and the data has \[a, b, d\]"):
        check_surgery(Model(weights=str(run), keep_head=True), w, ("a", "b", "d"))
    ckpt = tmp_path / "checkpoint_000001"
    ckpt.mkdir()
    torch.save({"model": stock(classes=3), "optimizer": {}, "epoch": 1}, ckpt / "checkpoint.pt")
    assert "(tuner checkpoint)" in resolve_weights(Model(weights=str(ckpt))).label
    arms = tmp_path / "compare"
    for arm in ("x", "y"):
        shutil.copytree(run / "model", arms / "model" / arm)
    with pytest.raises(InputError, match="one model per arm \\(x, y\\)"):
        resolve_weights(Model(weights=str(arms)))
    with pytest.raises(InputError, match="holds no model/model.pt"):
        resolve_weights(Model(weights=str(tmp_path)))


# --- the model folder, predict's bad input, a Fashion-MNIST model -----------------------------------


def fashion_card(classes: list[str]) -> dict:
    return {"format": 1, "weights_file": "model.pt", "classes": classes,
            "architecture": {"arch": "resnet18", "in_channels": 1, "small_input_stem": "stride1",
                             "num_classes": len(classes)},
            "preprocessing": {"dataset": "fashion_mnist", "mode": "grayscale", "resize": 28,
                              "crop": None, "mean": [0.286], "std": [0.353]}}


def test_predict_reads_any_image_as_its_model_was_trained_and_reports_bad_input(tmp_path, capsys):
    classes = [f"c{i}" for i in range(10)]
    card = fashion_card(classes)
    model = artifact.build(card)
    folder = artifact.write_model(tmp_path / "model", artifact.state_bytes(model), card)
    assert not list(tmp_path.glob(".model*"))  # the temporary folder took its place
    images = tmp_path / "in"
    (images / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    draw_picture("red", (90, 60), rng).save(images / "a.jpg")
    draw_picture("blue", (40, 40), rng).convert("L").save(images / "sub" / "b.png")
    (images / "sub" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    (images / ".DS_Store").write_bytes(b"junk")
    out = tmp_path / "p.csv"
    assert predict.main([str(folder / "model.pt"), str(images), "--out", str(out), "--top-k", "2"]) == 0
    said = capsys.readouterr().out
    assert "converted to grayscale and resized to 28x28" in said
    assert "1 file(s) could not be read" in said and "skipped 1 hidden" in said
    rows = pd.read_csv(out).set_index("path")
    assert list(rows.columns) == ["predicted", "probability", "class_1", "prob_1", "class_2",
                                  "prob_2", "error"]
    assert rows["error"].notna().sum() == 1 and rows.loc[str(images / "sub" / "broken.jpg"), "error"]
    # the probabilities are the eager model's on evaluation's own preprocessing
    x = torch.from_numpy(predict.preprocess(np.stack([decode(images / "a.jpg", 28)]), card)).float()
    expected = torch.softmax(model.eval()(((x / 255) - 0.286) / 0.353), 1)[0]
    assert rows.loc[str(images / "a.jpg"), "prob_1"] == pytest.approx(float(expected.max()), abs=1e-5)

    # bad input: one line, exit 2, nothing written
    (folder / "model.json").unlink()
    assert predict.main([str(folder), str(images), "--out", str(tmp_path / "q.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "no model.json" in err
    (folder / "model.json").write_text(json.dumps({**card, "classes": classes[:3]}))
    assert predict.main([str(folder), str(images), "--out", str(tmp_path / "q.csv")]) == 2
    assert "unknown classes" in capsys.readouterr().err
    assert not (tmp_path / "q.csv").exists()


# --- the round trip, end to end --------------------------------------------------------------------


@pytest.mark.cluster
def test_sweep_model_predict_export_and_fine_tune_again(folder_sweep, tmp_path, capsys):
    """A folder sweep (runs.py's folder_sweep, copied here: export writes into the run) leaves its
    model; predicting its own test/ folder gives best.json's test accuracy exactly; TorchScript
    export matches; a second sweep on other classes starts from the first run's backbone."""
    assert folder_sweep.proc.returncode == 0, folder_sweep.proc.stderr[-3000:]
    root = folder_sweep.root
    run = Path(shutil.copytree(folder_sweep.run, tmp_path / "r1" / "folder-quick" / "run"))
    one = ["--set", "search.num_samples=1", "--set", "search.n_initial_points=1",
           "--set", "search.parameters={epochs: {choice: [1]}, lr: {loguniform: [1.0e-3, 2.0e-3]}}",
           "--set", "data.cache=false"]
    best = json.loads((run / "best.json").read_text())
    assert best["model"] == "model" and not Path(best["checkpoint"]).is_absolute()
    assert (run / best["checkpoint"] / "checkpoint.pt").is_file()
    card = json.loads((run / "model" / "model.json").read_text())
    assert card["classes"] == ["blue", "green", "red"] and card["trial_id"] == best["trial_id"]
    assert card["architecture"] == {"arch": "resnet18", "in_channels": 3, "small_input_stem": False,
                                    "num_classes": 3}
    assert card["preprocessing"]["resize"] == 48 and card["preprocessing"]["crop"] == 40
    assert card["test_accuracy"] == best["test_accuracy"] and card["partial"] is False
    state = torch.load(run / "model" / "model.pt", weights_only=True)
    assert all(v.dtype in (torch.float32, torch.int64) for v in state.values())
    assert "model/" in (run / "report.html").read_text()

    # predict on the sweep's own test images: exactly best.json's accuracy
    out = tmp_path / "test.csv"
    assert predict.main([str(run), str(root / "test"), "--out", str(out)]) == 0
    rows = pd.read_csv(out)
    assert len(rows) == best["test_images"] == 24
    assert (rows["label"] == rows["predicted"]).mean() == best["test_accuracy"]
    assert f"accuracy: {best['test_accuracy']:.4f}" in capsys.readouterr().out
    matrix = pd.read_csv(tmp_path / "test_confusion.csv").set_index("true")
    assert matrix.to_numpy().sum() == 24 and (tmp_path / "test_confusion.png").is_file()

    # held-back new images, a flat folder: predictions only
    new = tmp_path / "new"
    new.mkdir()
    rng = np.random.default_rng(7)
    for i, cls in enumerate(["red", "green", "blue", "red"]):
        draw_picture(cls, (70, 55), rng).save(new / f"{i}.png")
    assert predict.main([str(run / "model"), str(new), "--out", str(tmp_path / "new.csv")]) == 0
    new_rows = pd.read_csv(tmp_path / "new.csv")
    assert len(new_rows) == 4 and "label" not in new_rows and new_rows["error"].isna().all()

    # TorchScript: checked against the eager model on validation images, then on new ones here
    assert export.main([str(run), "--format", "torchscript"]) == 0
    said = capsys.readouterr().out
    assert "torchscript: max |logit difference|" in said and "(tolerance 0.0001): OK" in said
    traced = torch.jit.load(str(run / "model" / "model.torchscript.pt"))
    eager, _, _ = artifact.load(run)
    x = torch.randn(3, 3, 40, 40)
    assert torch.allclose(traced(x), eager(x), atol=1e-4)

    # fine-tune again from the first run, on two of its classes: a new fc, the same backbone
    # (frozen here, so the second model's backbone must equal the first's exactly)
    two = tmp_path / "two"
    shutil.copytree(root, two, ignore=shutil.ignore_patterns("red"))
    proc = run_cli(*FOLDER_QUICK, *one, "--set", f"data.root={two}", "--set", f"model.weights={run}",
                   "--set", "model.freeze=head", "--results", str(tmp_path / "r2"), tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run2,) = (tmp_path / "r2").glob("*/*")
    second = torch.load(run2 / "model" / "model.pt", weights_only=True)
    assert second["fc.weight"].shape == (2, 512)
    assert all(torch.equal(second[k], v) for k, v in state.items() if not k.startswith("fc."))
    provenance = yaml.safe_load((run2 / "spec.yaml").read_text())["provenance"]
    digest = card["weights_sha256"][:16]
    assert provenance["weights"] == (f"file {(run / 'model' / 'model.pt').resolve()} "
                                     f"sha256:{digest} (tuner model)")
    assert provenance["weights_tensors"][str(run)].endswith(
        "119 backbone tensors loaded, conv1 loaded (3 channels), fc re-initialised (3->2 classes)")
    trials = read_trials(run2)  # the weights column: in status.json when all trials share it
    assert trials["weights"].str.contains(f"sha256:{digest} .*fc re-initialised \\(3->2").all()
    second_card = json.loads((run2 / "model" / "model.json").read_text())
    assert second_card["fine_tuned_from"]["sha256"] == card["weights_sha256"]
    assert second_card["classes"] == ["blue", "green"]

    # a run without its model folder (from before sweeps wrote one): export writes it from the
    # chosen trial's checkpoint, with best.json's test score
    shutil.move(run / "model", tmp_path / "first-model")
    assert export.main([str(run)]) == 0
    again = json.loads((run / "model" / "model.json").read_text())
    assert again["trial_id"] == best["trial_id"] and again["partial"] is False
    assert again["test_accuracy"] == best["test_accuracy"]
    restored = torch.load(run / "model" / "model.pt", weights_only=True)
    assert all(torch.equal(restored[k], v) for k, v in state.items())


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_each_export_is_checked_against_the_eager_model_before_it_is_written(tmp_path, fmt,
                                                                             monkeypatch):
    if fmt == "onnx":  # the extra tuner[onnx]; CI installs it with tuner[test]
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    model = artifact.build({"architecture": {"in_channels": 3, "small_input_stem": False,
                                             "num_classes": 4}}).eval()
    x = torch.randn(5, 3, 32, 32)
    out = tmp_path / f"m{export.SUFFIX[fmt]}"
    diff = export.write_checked(model, x, fmt, out)
    assert out.is_file() and 0 <= diff <= export.TOLERANCE[fmt]
    if fmt == "torchscript":  # the check is the same for every format: tried on the quickest
        monkeypatch.setitem(export.TOLERANCE, fmt, -1.0)  # no export can pass: nothing written
        with pytest.raises(ValueError, match=f"{fmt}: the exported model's logits differ"):
            export.write_checked(model, x, fmt, tmp_path / f"n{export.SUFFIX[fmt]}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_predict_names_that_are_not_utf8_and_a_folder_it_cannot_read(tmp_path, capsys,
                                                                      monkeypatch):
    """A file name in another system's encoding is a row like any other (its undecodable bytes as
    \\xNN); a folder where no file is an image is a failure (exit 1), not an empty success.
    The first is the real `tuner predict` (a real process's stdout and file-name encoding); the
    second the tuner command's main in this process."""
    import os
    import subprocess
    import sys

    from helpers import ROOT, cli_env

    card = fashion_card([f"c{i}" for i in range(10)])
    folder = artifact.write_model(tmp_path / "model", artifact.state_bytes(artifact.build(card)), card)
    images = tmp_path / "in"
    images.mkdir()
    rng = np.random.default_rng(0)
    draw_picture("red", (90, 60), rng).save(images / "a.jpg")
    latin1 = os.fsdecode(os.fsencode(images) + b"/caf\xe9.jpg")  # café.jpg from a Latin-1 system
    draw_picture("blue", (40, 40), rng).save(latin1, format="JPEG")
    out = tmp_path / "p.csv"

    def predict_cli(*inputs):
        return subprocess.run([sys.executable, "-m", "tuner", "predict", str(folder), *map(str, inputs),
                               "--out", str(out)], cwd=ROOT, env=cli_env(tmp_path),
                              capture_output=True, text=True, timeout=300, check=False)

    proc = predict_cli(images)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 image(s) classified" in proc.stdout
    rows = pd.read_csv(out, encoding="utf-8").set_index("path")
    assert sorted(rows.index) == [str(images / "a.jpg"), str(images / "caf\\xe9.jpg")]
    assert rows["predicted"].notna().all() and rows["error"].isna().all()

    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "x.jpg").write_bytes(b"not an image")
    (junk / "y.png").write_bytes(b"")
    out.unlink()
    from helpers import call_main

    from tuner.cli import main as tuner_main

    proc = call_main(tuner_main, ["predict", folder, junk, "--out", out], capsys, monkeypatch,
                     tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    assert line.startswith(f"error: none of the 2 file(s) could be read as an image, nothing "
                           f"classified; the rows of {out} say why (first: {junk / 'x.jpg'}: ")
    assert "Traceback" not in proc.stderr
    assert pd.read_csv(out)["error"].notna().all()  # the CSV says why for each file
