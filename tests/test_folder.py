"""Image folders: listing, real decoding of every kind of file, the decode cache, the per-image crops,
the memory check, and the real CLI on folders these tests draw (a sweep, and every bad input)."""

import json
import logging
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from helpers import FOLDER_QUICK, ROOT, call_main, cli_env, draw_picture, make_image_folder
from PIL import Image
from torchvision.transforms import CenterCrop
from torchvision.transforms.v2 import functional as TF

from tuner import folder, memory
from tuner.batches import (DeviceSplit, centre_crop, draw_boxes, eval_batches, resized_crop,
                           train_batches)
from tuner.data import Pixels, Split, load_dataset
from tuner.errors import InputError
from tuner.spec import Augment, Data
from tuner.specfile import validate

CPU = torch.device("cpu")


def folder_spec(root, tmp_path, **fields) -> Data:
    fields.setdefault("val_fraction", 0.2)
    return Data(dataset="imagefolder", root=root, resize=48, image_size=40,
                cache=tmp_path / "cache", **fields)


# --- decoding: every kind of file becomes RGB -------------------------------------------------------


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """The same picture saved in every format and colour mode the issue names."""
    where = tmp_path_factory.mktemp("formats")
    picture = draw_picture("red", (90, 60), np.random.default_rng(0))
    files = {
        "rgb.jpg": picture, "rgb.png": picture, "gray.png": picture.convert("L"),
        "gray.jpg": picture.convert("L"), "rgba.png": picture.convert("RGBA"),
        "palette.png": picture.convert("P"), "cmyk.jpg": picture.convert("CMYK"),
        "UPPER.JPG": picture, "x.bmp": picture, "x.webp": picture, "x.tiff": picture,
        "x.ppm": picture, "la.png": picture.convert("LA"),
    }
    for name, image in files.items():
        image.save(where / name)
    return where, picture


@pytest.mark.parametrize("name", ["rgb.jpg", "rgb.png", "gray.png", "gray.jpg", "rgba.png",
                                  "palette.png", "cmyk.jpg", "UPPER.JPG", "x.bmp", "x.webp",
                                  "x.tiff", "x.ppm", "la.png"])
def test_every_format_becomes_three_channel_rgb(pictures, name):
    where, picture = pictures
    out = folder.decode(where / name, 32)
    assert out.shape == (3, 32, 32) and out.dtype == np.uint8
    expected = np.asarray(picture.convert("L" if "gray" in name or "la" in name else "RGB")
                          .resize((32, 32), Image.BILINEAR), dtype=np.float32)
    if expected.ndim == 2:
        expected = np.repeat(expected[..., None], 3, axis=2)
        assert (out[0] == out[1]).all() and (out[1] == out[2]).all()  # gray: equal channels
    tolerance = 40 if name == "cmyk.jpg" else 12  # PIL's CMYK round trip is not colour-exact
    assert np.abs(out.transpose(1, 2, 0) - expected).mean() < tolerance


def test_jpeg_exif_orientation_is_honoured(tmp_path):
    stored = np.zeros((40, 60, 3), np.uint8)
    stored[:, :30] = (255, 0, 0)  # left half red, right half blue, as stored
    stored[:, 30:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    Image.fromarray(stored).save(tmp_path / "turned.jpg", exif=exif, quality=95)
    out = folder.decode(tmp_path / "turned.jpg", 16)
    top, bottom = out[:, :4].mean(axis=(1, 2)), out[:, -4:].mean(axis=(1, 2))
    assert top[0] > 200 and top[2] < 60  # displayed: red on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_resize_is_antialiased(tmp_path):
    stripes = np.zeros((400, 400, 3), np.uint8)
    stripes[::2] = 255  # one-pixel stripes: a plain bilinear shrink would alias them
    Image.fromarray(stripes).save(tmp_path / "stripes.png")
    out = folder.decode(tmp_path / "stripes.png", 20)
    assert abs(out.mean() - 127.5) < 3 and out.std() < 3  # averaged to grey


@pytest.mark.parametrize("content", [b"", b"hello, not an image", "truncated"])
def test_undecodable_files_raise_with_the_reason(tmp_path, pictures, content):
    path = tmp_path / "bad.jpg"
    if content == "truncated":
        data = (pictures[0] / "rgb.jpg").read_bytes()
        content = data[: len(data) // 2]
    path.write_bytes(content)
    with pytest.raises(ValueError):
        folder.decode(path, 16)


# --- more than 8 bits per channel: scaled, never wrapped or clipped ----------------------------------

RAMP = np.linspace(0, 65535, 64).round().astype(np.uint16)  # one row: every column a level, 0..65535
RAMP8 = np.round(RAMP.astype(np.float64) * 255 / 65535).astype(np.uint8)  # what it must become


def write_png16_rgb(path, rgb: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG (PIL has no such mode to save from), by the PNG spec: IHDR
    bit depth 16, colour type 2, rows of big-endian samples each after a filter byte 0."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    h, w, _ = rgb.shape
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in rgb)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def deep_files(where) -> dict[str, str]:
    """A 64x64 horizontal ramp in every kind of file that holds more than 8 bits, -> its rule."""
    gray = np.tile(RAMP, (64, 1))
    write_png16_rgb(where / "rgb16.png", np.stack([gray, gray, gray], axis=-1))
    Image.fromarray(gray).save(where / "gray16.png")  # mode I;16: a 16-bit grayscale PNG
    Image.fromarray(gray).save(where / "i16.tif")
    Image.frombytes("I;16B", (64, 64), gray.astype(">u2").tobytes()).save(where / "i16b.tif")
    Image.fromarray(gray).save(where / "gray16.pgm")  # maxval 65535; PIL reads it back as mode I
    Image.fromarray(gray.astype(np.int32)).save(where / "i32.tif")
    Image.fromarray((gray / 65535).astype(np.float32)).save(where / "f01.tif")
    Image.fromarray((gray / 65535 * 1000 - 300).astype(np.float32)).save(where / "frange.tif")
    Image.fromarray((gray.astype(np.int32) * 4 - 70000)).save(where / "irange.tif")
    return {"rgb16.png": "16-bit", "gray16.png": "16-bit", "i16.tif": "16-bit", "i16b.tif": "16-bit",
            "gray16.pgm": "16-bit", "i32.tif": "16-bit", "f01.tif": "float 0..1",
            "frange.tif": "float min..max", "irange.tif": "int min..max"}


def test_every_deep_format_becomes_a_monotone_8_bit_ramp(tmp_path):
    files = deep_files(tmp_path)
    modes = {name: Image.open(tmp_path / name).mode for name in files if not name.startswith("rgb16")}
    assert modes == {"gray16.png": "I;16", "i16.tif": "I;16", "i16b.tif": "I;16B", "gray16.pgm": "I",
                     "i32.tif": "I", "f01.tif": "F", "frange.tif": "F", "irange.tif": "I"}
    for name, rule in files.items():
        out, kind = folder.decode_depth(tmp_path / name, 64)  # its own size: no resampling
        assert kind == rule, name
        assert out.dtype == np.uint8 and out.shape == (3, 64, 64)
        assert (out == out[:1]).all() and (out == out[:, :1]).all(), name  # gray; rows alike
        row = out[0, 0].astype(int)
        assert row[0] == 0 and row[-1] == 255 and (np.diff(row) >= 0).all(), (name, row)
        if rule == "16-bit" or rule == "float 0..1":  # the nearest 8-bit level, exactly
            assert np.abs(row - RAMP8).max() <= (0 if rule == "16-bit" else 1), (name, row)
        else:  # stretched by the image's own range: a linear ramp still
            assert np.abs(row - np.linspace(0, 255, 64)).max() <= 1, (name, row)
        small = folder.decode(tmp_path / name, 16)  # resized in float, rounded once
        assert small.dtype == np.uint8 and 0 <= small.min() <= 10 and small.max() >= 245
        assert (np.diff(small[0, 0].astype(int)) >= 0).all(), name
    # 8-bit widened to 16 as v * 257 (what converters write) comes back exactly
    levels = np.tile(np.arange(256, dtype=np.uint16)[::4], (64, 1))
    Image.fromarray(levels * 257).save(tmp_path / "widened.png")
    assert (folder.decode(tmp_path / "widened.png", 64)[0, 0] == np.arange(256)[::4]).all()
    # an 8-bit file is not scaled, and says so
    Image.fromarray(np.tile(RAMP8, (64, 1))).save(tmp_path / "eight.png")
    out, kind = folder.decode_depth(tmp_path / "eight.png", 64)
    assert kind is None and (out[0, 0] == RAMP8).all()


def test_a_deep_folder_is_scaled_logged_once_recorded_and_not_read_from_an_old_cache(
        tmp_path, caplog, monkeypatch):
    root = tmp_path / "deep"
    for cls in ("a", "b"):
        (root / "train" / cls).mkdir(parents=True)
    deep_files(root / "train" / "a")
    make = draw_picture("red", (64, 64), np.random.default_rng(0))
    for i in range(4):
        make.save(root / "train" / "b" / f"{i}.png")
    spec = Data(dataset="imagefolder", root=root, resize=64, image_size=64, cache=tmp_path / "cache")
    # the cache an older decoder (version 1) wrote for these very files: the wrapped values
    monkeypatch.setattr(folder, "CACHE_FORMAT", 1)
    files = [f for lst in folder.list_folder(root).values() for f in lst.files]
    old = tmp_path / "cache" / f"imagefolder-deep-64px-{folder.cache_key(root, files, 64)}.npz"
    monkeypatch.undo()
    old.parent.mkdir()
    np.savez(old, images=np.full((len(files), 3, 64, 64), 7, np.uint8), bad=np.array("{}"))

    def read():
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="tuner.folder"):
            found = folder.read_folder(spec)
        return found, caplog.text

    for attempt in ("decoded", "decode cache hit"):
        found, text = read()
        assert attempt in text and text.count("scaled to 8 bits") == 1, text
        assert "9 image(s) have more than 8 bits" in text
        images, labels = found.splits["train"]
        ramps = images[labels == 0]
        assert len(ramps) == 9 and (ramps[:, :, 0, 0] == 0).all() and (ramps[:, :, 0, -1] == 255).all()
        assert (np.diff(ramps[:, 0, 0].astype(int), axis=1) >= 0).all()
        assert found.record["scaled_to_8_bits"]["count"] == 9
        assert found.record["scaled_to_8_bits"]["kinds"] == {
            "16-bit": 6, "float 0..1": 1, "float min..max": 1, "int min..max": 1}
        assert set(found.record["scaled_to_8_bits"]["rules"]) == set(folder.SCALING_RULES)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2  # the old one stays, unread


# --- listing and loading ----------------------------------------------------------------------------


def test_listing_skips_junk_and_counts_it(tmp_path):
    root = make_image_folder(tmp_path / "imgs", train_per_class=4)
    listing = folder.list_split(root, "train")
    assert listing.classes == ("blue", "green", "red")
    names = {p.name for p in listing.files}
    assert {"UPPER.JPG", "cmyk.jpg", "palette.png", "rgba.png", "gray.png"} <= names
    assert not names & {".DS_Store", "notes.txt", "Thumbs.db"}
    assert sorted(p.rsplit("/", 1)[-1] for p in listing.skipped) == [
        ".DS_Store", ".DS_Store", "Thumbs.db", "notes.txt"]
    assert len(listing.files) == 12 + 5 and listing.labels.count(2) == 4 + 5


def test_folder_with_test_split_and_carved_validation(tmp_path, caplog):
    root = make_image_folder(tmp_path / "imgs", train_per_class=10, test_per_class=4)
    with caplog.at_level(logging.INFO):
        ds = load_dataset(folder_spec(root, tmp_path, val_fraction=0.2))
    assert ds.classes == ("blue", "green", "red") and ds.in_channels == 3 and ds.num_classes == 3
    assert ds.train.images.shape[1:] == (3, 48, 48) and ds.train.images.dtype == np.uint8
    assert len(ds.test) == 12 and np.bincount(ds.test.labels).tolist() == [4, 4, 4]
    assert len(ds.train) + len(ds.val) == 35 and np.bincount(ds.val.labels).tolist() == [2, 2, 3]
    assert ds.pixels == Pixels(folder.IMAGENET_MEAN, folder.IMAGENET_STD, crop=40)
    assert ds.record == {"classes": ["blue", "green", "red"]}
    assert "skipped 4 other files" in caplog.text


def test_without_test_folder_a_seeded_stratified_test_split_is_carved(tmp_path):
    root = make_image_folder(tmp_path / "imgs", train_per_class=10, odd_files=False)
    ds = load_dataset(folder_spec(root, tmp_path, test_fraction=0.3))
    assert np.bincount(ds.test.labels).tolist() == [3, 3, 3]
    assert len(ds.train) + len(ds.val) + len(ds.test) == 30
    again = load_dataset(folder_spec(root, tmp_path, test_fraction=0.3))
    assert np.array_equal(ds.test.images, again.test.images)


def test_classes_keep_and_reorder_folders_and_unknown_ones_list_the_folders(tmp_path):
    root = make_image_folder(tmp_path / "imgs", train_per_class=8, test_per_class=2, odd_files=False)
    ds = load_dataset(folder_spec(root, tmp_path, classes=["red", 0], train_per_class=5))
    assert ds.classes == ("red", "blue") and ds.record["classes"] == ["red", "blue"]
    assert np.bincount(ds.train.labels).tolist() == [5, 5] and len(ds.test) == 4
    red = load_dataset(folder_spec(root, tmp_path)).test  # label 2 there: folders sort blue, green, red
    assert np.array_equal(ds.test.images[ds.test.labels == 0], red.images[red.labels == 2])
    with pytest.raises(InputError, match=r"data.classes: unknown class 'pink'; the classes are "
                                         r"blue, green, red \(or their indices 0-2\)"):
        load_dataset(folder_spec(root, tmp_path, classes=["pink", "red"]))


def test_val_folder_is_used_as_the_validation_split(tmp_path):
    root = make_image_folder(tmp_path / "imgs", train_per_class=6, test_per_class=2, odd_files=False)
    make_image_folder(tmp_path / "other", train_per_class=3, odd_files=False, seed=1)
    (tmp_path / "other" / "train").rename(root / "val")
    ds = load_dataset(folder_spec(root, tmp_path))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (18, 9, 6)


def test_skip_bad_images_skips_and_records_them(tmp_path):
    root = make_image_folder(tmp_path / "imgs", train_per_class=5, odd_files=False)
    (root / "train" / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (root / "train" / "blue" / "empty.png").write_bytes(b"")
    ds = load_dataset(folder_spec(root, tmp_path, skip_bad_images=True, test_fraction=0.2))
    assert len(ds.train) + len(ds.val) + len(ds.test) == 15
    assert ds.record["skipped_bad_images"] == {
        "count": 2, "files": ["train/blue/empty.png", "train/red/broken.jpg"]}
    with pytest.raises(InputError, match=r"2 file\(s\) cannot be decoded.*train/blue/empty.png"):
        load_dataset(folder_spec(root, tmp_path))  # from the cache, but still bad input


# --- the decode cache -------------------------------------------------------------------------------


def test_cache_is_hit_and_invalidated_by_a_changed_added_or_removed_file(tmp_path, caplog):
    root = make_image_folder(tmp_path / "imgs", train_per_class=5, odd_files=False)
    spec = folder_spec(root, tmp_path, test_fraction=0.2)

    def load() -> tuple[np.ndarray, str]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="tuner.folder"):
            ds = load_dataset(spec)
        return np.concatenate([ds.train.images, ds.val.images, ds.test.images]), caplog.text

    first, log = load()
    assert "decoded 15 images" in log and "decode cache written" in log
    second, log = load()
    assert "decode cache hit" in log and "decoded" not in log
    assert np.array_equal(first, second)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1

    changed = root / "train" / "red" / "000.png"
    draw_picture("blue", (64, 48), np.random.default_rng(5)).save(changed)
    _, log = load()
    assert "decoded 15 images" in log  # a changed file: decoded again
    (root / "train" / "red" / "extra.png").write_bytes(changed.read_bytes())
    _, log = load()
    assert "decoded 16 images" in log
    (root / "train" / "red" / "extra.png").unlink()
    _, log = load()
    assert "decode cache hit" in log  # back to a folder seen before
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 3
    assert not list((tmp_path / "cache").glob(".*tmp"))  # no temporary file left


def test_cache_off_decodes_every_time(tmp_path, caplog):
    root = make_image_folder(tmp_path / "imgs", train_per_class=3, odd_files=False)
    spec = Data(dataset="imagefolder", root=root, resize=32, image_size=32, cache=False,
                test_fraction=0.34, val_fraction=0.34)
    with caplog.at_level(logging.INFO, logger="tuner.folder"):
        load_dataset(spec)
        load_dataset(spec)
    assert caplog.text.count("decoded 9 images") == 2 and "decode cache" not in caplog.text


def test_two_drivers_starting_at_once_share_one_cache(tmp_path):
    root = make_image_folder(tmp_path / "imgs", train_per_class=20, odd_files=False)
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO);"
            "from tuner.data import load_dataset; from tuner.spec import Data;"
            f"d = load_dataset(Data(dataset='imagefolder', root={str(root)!r}, resize=64,"
            f" image_size=64, cache={str(tmp_path / 'cache')!r}));"
            "print(int(d.train.images.sum()) + int(d.test.images.sum()) + int(d.val.images.sum()))")
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=cli_env(tmp_path),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert outs[0][0] == outs[1][0]  # the same pixels in both
    logs = outs[0][1] + outs[1][1]
    assert logs.count("decoded 60 images") == 1 and logs.count("decode cache hit") == 1
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1


# --- crops on the device ----------------------------------------------------------------------------


def test_crop_boxes_stay_inside_differ_per_image_and_follow_the_spec():
    aug = Augment(hflip=True, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
    draws = draw_boxes(2000, 60, 80, aug, torch.Generator().manual_seed(0), CPU)
    x1, y1, x2, y2 = draws.boxes.unbind(1)
    assert (x1 >= 0).all() and (y1 >= 0).all() and (x2 <= 80).all() and (y2 <= 60).all()
    w, h = x2 - x1, y2 - y1
    assert (w >= 1).all() and (h >= 1).all()
    assert torch.equal(draws.boxes, draws.boxes.round())  # whole pixels, as torchvision's
    area = w * h / (60 * 80)
    assert area.min() > 0.06 and area.max() <= 1.0 and 0.35 < area.mean() < 0.65
    assert len(torch.unique(draws.boxes, dim=0)) > 1900  # a different box for (nearly) every image
    assert 0.45 < draws.flip.float().mean() < 0.55
    again = draw_boxes(2000, 60, 80, aug, torch.Generator().manual_seed(0), CPU)
    assert torch.equal(draws.boxes, again.boxes)  # seeded


def test_impossible_ratio_falls_back_to_the_centred_box():
    aug = Augment(hflip=False, scale=(1.0, 1.0), ratio=(2.0, 3.0))  # full area never fits at ratio 2
    draws = draw_boxes(5, 40, 40, aug, torch.Generator().manual_seed(0), CPU)
    assert draws.boxes.tolist() == [[0.0, 10.0, 40.0, 30.0]] * 5  # width 40, height 40 / 2, centred
    assert not draws.flip.any()


def test_resized_crop_matches_torchvision_and_keeps_shapes():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 48, 48), dtype=torch.uint8, generator=g)
    aug = Augment(hflip=True, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3))
    draws = draw_boxes(6, 48, 48, aug, g, CPU)
    out = resized_crop(images, draws, 32)
    assert out.shape == (6, 3, 32, 32) and out.dtype == torch.float32
    assert draws.flip.any() and not draws.flip.all()

    def inside(length: int) -> torch.Tensor:  # output pixels sampled within the box, not at its rim
        u = (torch.arange(32) + 0.5) * length / 32 - 0.5  # where bilinear samples, box pixels
        return (u >= 0) & (u <= length - 1)

    for img, box, flip, got in zip(images, draws.boxes.tolist(), draws.flip, out, strict=True):
        left, top, right, bottom = map(int, box)
        want = TF.resized_crop(img.float(), top, left, bottom - top, right - left, [32, 32],
                               antialias=False)
        want = want.flip(2) if flip else want
        # torchvision crops first, so at the rim it repeats the box's edge pixels; roi_align reads
        # the real neighbours there. Inside, both are the same bilinear resize.
        rows, cols = inside(bottom - top), inside(right - left)
        cols = cols.flip(0) if flip else cols
        assert rows.sum() >= 20 and cols.sum() >= 20
        assert (got - want)[:, rows][:, :, cols].abs().max() < 1e-2


def test_centre_crop_is_torchvisions():
    images = torch.arange(2 * 3 * 9 * 9, dtype=torch.uint8).view(2, 3, 9, 9)
    assert torch.equal(centre_crop(images, 6), CenterCrop(6)(images))


def test_folder_batches_train_on_crops_and_evaluate_on_the_centre():
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (50, 3, 48, 48), dtype=np.uint8), np.arange(50) % 3)
    pixels = Pixels(folder.IMAGENET_MEAN, folder.IMAGENET_STD, crop=40)
    data = DeviceSplit.put(split, CPU, pixels)
    aug = Augment(hflip=True, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
    batches = list(train_batches(data, 16, seed=0, epoch=0, aug=aug))
    # 50 at batch 16: the 2 left over join the last batch (no step on a scrap of a batch)
    assert [tuple(x.shape) for x, _ in batches] == [(16, 3, 40, 40)] * 2 + [(18, 3, 40, 40)]
    again = torch.cat([x for x, _ in train_batches(data, 16, seed=0, epoch=0, aug=aug)])
    other = torch.cat([x for x, _ in train_batches(data, 16, seed=0, epoch=1, aug=aug)])
    first = torch.cat([x for x, _ in batches])
    assert torch.equal(first, again) and not torch.equal(first, other)
    (x, y), = eval_batches(data, 64)
    mean = torch.tensor(pixels.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(pixels.std).view(1, 3, 1, 1) * 255
    assert torch.allclose(x, (data.images[:, :, 4:44, 4:44].float() - mean) / std)


# --- the memory check -------------------------------------------------------------------------------


def test_memory_check_stops_a_sweep_whose_data_cannot_fit():
    from tuner.data import Dataset

    spec = validate({"data": {"dataset": "imagefolder", "resize": 64, "image_size": 56},
                     "resources": {"cpu": 1}, "search": {"num_samples": 4}})
    images = np.zeros((1000, 3, 64, 64), np.uint8)  # 12.3 MB
    data = load_split_free_dataset(images)
    need = memory.trial_bytes(spec, data)
    assert need["data"] == 1000 * 3 * 64 * 64 * 2  # train + val
    assert need["activations"] > 0 and need["model"] > 40e6  # ResNet-18 with Adam: ~187 MB
    roomy = [{"CPU": 2, "memory": 64e9, "object_store_memory": 20e9}]
    memory.check_resident(spec, data, roomy)
    tight = [{"CPU": 2, "memory": 300e6, "object_store_memory": 20e9}]
    with pytest.raises(InputError) as e:
        memory.check_resident(spec, data, tight)
    msg = str(e.value)
    assert "2 trial(s) at a time" in msg and "data.resize" in msg and "\n" not in msg
    assert memory.fits_gpu(need, 16 * 2**30, 0.25) is None
    assert "of 1,074 MB" in memory.fits_gpu(need, 2**30, 1.0)
    # Fashion-MNIST's 28x28 single-channel images: layer4's features are 1x1
    fashion = Dataset(*(Split(np.zeros((50, 28, 28), np.uint8), np.arange(50) % 10),) * 3, "test",
                      tuple("abcdefghij"), 1, Pixels((0.5,), (0.5,)))
    assert memory.trial_bytes(validate({}), fashion)["activations"] > 0


def load_split_free_dataset(images):
    from tuner.data import Dataset

    split = Split(images, np.arange(len(images)) % 2)
    return Dataset(split, split, split, "test", ("a", "b"), 3,
                   Pixels(folder.IMAGENET_MEAN, folder.IMAGENET_STD, crop=56))


# --- the real CLI -----------------------------------------------------------------------------------



@pytest.mark.cluster
def test_folder_sweep_end_to_end_learns_the_classes(folder_sweep, tmp_path, capsys, monkeypatch,
                                                   caplog):
    """runs.py's folder_sweep: a sweep of a drawn folder, 24 train and 8 test images per class."""
    proc, root, cache, results = (folder_sweep.proc, folder_sweep.root, folder_sweep.cache,
                                  folder_sweep.results)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "decoded 101 images" in proc.stderr and "skipped 4 other files" in proc.stderr
    (run,) = results.glob("folder-quick/*")
    best = json.loads((run / "best.json").read_text())
    assert best["classes"] == ["blue", "green", "red"] and best["test_images"] == 24
    assert best["test_accuracy"] >= 0.7, best  # chance is 1/3
    record = yaml.safe_load((run / "spec.yaml").read_text())
    assert record["provenance"]["classes"] == ["blue", "green", "red"]
    assert record["data"]["dataset"] == "imagefolder" and "crop_padding" not in record["data"]["augment"]

    # the next run on the same folder starts from the cache (a dry run loads the data as a sweep
    # does, through the same code; in process, so its log is caplog's)
    with caplog.at_level(logging.INFO):
        again = run_main([*FOLDER_QUICK, "--set", f"data.root={root}", "--set", f"data.cache={cache}",
                          "--dry-run", "--results", str(tmp_path / "results")],
                         capsys, monkeypatch, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "decode cache hit" in caplog.text and "decoded 101" not in caplog.text


def test_dry_run_reads_the_folder_and_says_conv1_has_nothing_to_adapt(tmp_path, capsys, monkeypatch):
    root = make_image_folder(tmp_path / "imgs", train_per_class=10, test_per_class=2)
    proc = run_main([*FOLDER_QUICK, "--set", f"data.root={root}", "--set",
                     f"data.cache={tmp_path / 'cache'}", "--dry-run"], capsys, monkeypatch, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "data: 31 train / 4 val / 6 test, 3 classes, from " in proc.stdout
    # model.weights=none: nothing pretrained to keep
    assert "model.conv1: 3-channel RGB images, nothing to adapt: random init (model.weights: none)" in proc.stdout
    assert f"decode cache: {tmp_path / 'cache'} (this dry run decoded" in proc.stdout


def run_main(argv, capsys, monkeypatch, tmp_path):
    """tuner.run's main(argv) in this process (call_main): a dry run or bad input, no subprocess."""
    from tuner import run

    return call_main(run.main, argv, capsys, monkeypatch, tmp_path)


def _bad_folder(tmp_path, case: str):
    root = tmp_path / "imgs"
    if case == "root missing":
        return root
    if case == "no train":
        (root / "test" / "a").mkdir(parents=True)
        return root
    make_image_folder(root, train_per_class=3, test_per_class=0, odd_files=False)
    if case == "no class folders":
        for d in (root / "train").iterdir():
            for f in d.iterdir():
                f.rename(root / "train" / f"{d.name}-{f.name}")
            d.rmdir()
    elif case == "empty class folder":
        (root / "train" / "purple").mkdir()
        (root / "train" / "purple" / "notes.txt").write_text("no images here")
    elif case == "single class":
        for d in ("blue", "green"):
            for f in (root / "train" / d).iterdir():
                f.unlink()
            (root / "train" / d).rmdir()
    elif case == "test classes differ":
        (root / "test" / "blue").mkdir(parents=True)
        (root / "train" / "red" / "000.png").rename(root / "test" / "blue" / "000.png")
    elif case == "val classes differ":
        (root / "val" / "yellow").mkdir(parents=True)
        (root / "train" / "red" / "000.png").rename(root / "val" / "yellow" / "000.png")
    elif case == "undecodable file":
        (root / "train" / "green" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


BAD_INPUT = {  # case: (--set overrides, what the error line must say)
    "root missing": ([], r"data.root: .*imgs: no such folder"),
    "no train": ([], r"has no train/ folder"),
    "no class folders": ([], r"train has no class folders"),
    "empty class folder": ([], r"class folder .*purple has no images"),
    "single class": ([], r"has one class folder \(red\); a classifier needs at least 2"),
    "test classes differ": ([], r"test/ has classes \[blue\] but train/ has \[blue, green, red\]"),
    "val classes differ": ([], r"val/ has classes \[yellow\]"),
    "undecodable file": ([], r"1 file\(s\) cannot be decoded as images, first .*green/broken.jpg"
                             r".*data.skip_bad_images: true"),
    "image_size above resize": (["data.image_size=64"], r"image_size 64 is larger than resize 48"),
    "fashion fields": (["data.download=true", "data.augment.crop_padding=4"],
                       r"data: download, augment.crop_padding: for dataset fashion_mnist only"),
    "folder fields": ([], r"data: resize, augment.scale: for dataset imagefolder only"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_folder_input_is_one_error_line_and_nothing_written(tmp_path, case, capsys, monkeypatch):
    """Every bad input of the issue through tuner.run's main, in process (test_cli.py runs the
    real command on bad input), each in its own folder."""
    overrides, pattern = BAD_INPUT[case]
    where = tmp_path / case.replace(" ", "-")
    where.mkdir()
    root = _bad_folder(where, case)
    args = [*FOLDER_QUICK, "--set", f"data.root={root}", "--set", f"data.cache={where / 'cache'}"]
    if case == "folder fields":  # a Fashion-MNIST spec given folder-only fields
        spec = where / "fashion.yaml"
        spec.write_text("data: {dataset: fashion_mnist, resize: 64, augment: {scale: [0.5, 1]}}\n")
        args = [str(spec)]
    sets = [a for o in overrides for a in ("--set", o)]
    proc = run_main([*args, *sets, "--results", str(where / "results")], capsys, monkeypatch, where)
    stderr = proc.stderr
    assert proc.returncode == 2, (case, stderr[-2000:])
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, (case, stderr)
    assert re.search(pattern, stderr), (case, stderr)
    assert not (where / "results").exists(), case
    assert not list((where / "cache").glob("*.npz")), case


def test_hotdog_is_the_chapters_recipe():
    from tuner.specfile import load_spec

    spec = load_spec(ROOT / "sweeps" / "hotdog.yaml")
    assert spec.data.dataset == "imagefolder" and spec.data.root.parts[-2:] == ("data", "hotdog")
    assert (spec.data.resize, spec.data.image_size) == (256, 224)  # Resize([256, 256]), crops 224
    assert spec.data.augment.hflip and spec.data.augment.scale == (0.08, 1.0)
    assert spec.model.weights == "imagenet" and spec.model.weights_fallback is None
    assert spec.model.head_lr_multiplier == 10 and spec.model.freeze == "none"
    t = spec.train
    assert (t.optimizer, t.momentum, t.batch_size) == ("sgd", 0.0, 128)
    # the chapter's summed-loss lr 5e-5 and weight decay 1e-3, for a mean loss at batch 128
    assert t.lr == pytest.approx(5e-5 * 128) and t.weight_decay == pytest.approx(1e-3 / 128, rel=0.01)
    lr, epochs = spec.search.parameters["lr"], spec.search.parameters["epochs"]
    assert lr.kind == "loguniform" and lr.args[0] < 5e-5 * 128 < lr.args[1]
    assert 5 in epochs.args and spec.resources.gpu == 1
