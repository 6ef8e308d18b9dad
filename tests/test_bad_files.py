"""Bad files end in one line, never a traceback or a hang: a weights file of pickled objects, a
model card missing keys, image folders with links (a link back up, one file in two classes),
an image whose header promises more pixels than may be decoded, and a file that is no image."""

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import make_image_folder
from PIL import Image

from tuner import artifact, folder
from tuner.errors import InputError
from tuner.model import resolve_weights
from tuner.spec import Model


def test_a_weights_file_of_pickled_objects_is_one_line(tmp_path):
    import argparse

    import torch

    path = tmp_path / "obj.pt"
    torch.save({"model": {"conv1.weight": argparse.Namespace(a=1)}}, path)  # not a tensor
    with pytest.raises(InputError) as e:
        resolve_weights(Model(weights=str(path)))
    assert str(e.value).startswith(f"model.weights: {path}: not a torch state_dict file of tensors (")
    assert "\n" not in str(e.value) and len(str(e.value)) < 400


def test_a_model_card_missing_keys_is_one_line(tmp_path):
    (tmp_path / "model.json").write_text(json.dumps(
        {"classes": ["a", "b"], "architecture": {"num_classes": 2},
         "preprocessing": {"mean": [0.5], "std": [0.5]}}))
    with pytest.raises(InputError, match="not a tuner model card .*architecture.in_channels, "
                                         "preprocessing.mode, preprocessing.resize"):
        artifact.read_card(tmp_path)


def test_a_link_back_up_ends_and_each_file_counts_once(tmp_path):
    root = make_image_folder(tmp_path / "imgs", train_per_class=4, odd_files=False)
    os.symlink(root / "train" / "red", root / "train" / "red" / "loop")  # a link back up
    sub = root / "train" / "red" / "sub"
    sub.mkdir()
    os.symlink(root / "train" / "red", sub / "again")  # the same folder again, deeper
    listing = folder.list_split(root, "train")
    reds = [f for f, y in zip(listing.files, listing.labels, strict=True)
            if listing.classes[y] == "red"]
    assert len(reds) == 4 and len(listing.files) == 12


def test_one_file_in_two_classes_or_two_splits_is_bad_input(tmp_path):
    root = make_image_folder(tmp_path / "imgs", train_per_class=4, test_per_class=2, odd_files=False)
    first = sorted((root / "train" / "red").iterdir())[0]
    os.link(first, root / "train" / "blue" / "also.png")
    with pytest.raises(InputError, match="are the same file .* in train/red and train/blue"):
        folder.list_folder(root)
    os.unlink(root / "train" / "blue" / "also.png")
    os.link(first, root / "test" / "red" / "leak.png")
    with pytest.raises(InputError, match="one image cannot be in two classes or two splits"):
        folder.list_folder(root)


def bomb(path: Path, width: int, height: int) -> Path:
    """A small PNG whose header says width x height (its data does not follow)."""
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "PNG")
    b = bytearray(buf.getvalue())
    b[16:24] = struct.pack(">II", width, height)
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(b))
    return path


@pytest.mark.parametrize("side", [10_000, 20_000])  # over PIL's limit; over twice it
def test_an_image_with_too_many_pixels_is_refused_from_its_header(tmp_path, side):
    path = bomb(tmp_path / "big.png", side, side)
    with pytest.raises(ValueError, match=f"{side * side} pixels|{side} x {side} pixels"):
        folder.decode(path, 32)


def test_a_file_that_is_no_image_says_so_without_the_decoders_buffer(tmp_path):
    path = tmp_path / "x.jpg"
    path.write_bytes(b"hello, not a picture")
    with pytest.raises(ValueError) as e:
        folder.decode(path, 32)
    assert "BytesIO" not in str(e.value) and "cannot identify image file" in str(e.value)
    ok = tmp_path / "ok.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(ok)
    assert folder.decode(ok, 4).shape == (3, 4, 4)


def test_a_folder_whose_decoded_images_cannot_fit_is_refused_before_decoding():
    folder.check_decoded_fits(1000, 256, available=10**9)  # 0.2 GB of 1 GB: fine
    with pytest.raises(InputError, match=r"decoding 100000 images at 256x256 needs 19.7 GB, and "
                                         r"this machine has 1.0 GB available"):
        folder.check_decoded_fits(100_000, 256, available=10**9)
    assert folder.available_memory() > 0  # Linux: /proc/meminfo
