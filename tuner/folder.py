"""An image folder (torchvision's ImageFolder layout) decoded once into uint8 arrays [N, 3, S, S].

    <root>/train/<class>/*.jpg|png|...   one folder per class (the classes are their sorted names)
    <root>/val/<class>/...               optional: else tuner.data carves it from train
    <root>/test/<class>/...              optional: else tuner.data carves it from train

Every image becomes 3-channel RGB (grayscale, RGBA, palette and CMYK alike, JPEG EXIF orientation
applied) and is resized, antialiased, to data.resize x data.resize. Images with more than 8 bits
per channel are scaled to 8 bits (see `to_8bit`), logged once and counted in the provenance.
Decoding runs on every core of the driver; the arrays are cached under data.cache, keyed by every file's path, size and mtime and
by the resize, so a second sweep on the same folder skips the decoding.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import version
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from PIL import Image, ImageOps
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2.functional import resize as resize_image
from tqdm import tqdm

from tuner.errors import InputError
from tuner.spec import Data, pick_classes

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the pretrained weights' input statistics, [0, 1] units
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "val", "test")
# The decoder's version, part of the cache key: bump it when the cached arrays would differ for the
# same files, so that no cache from an older decoder is reused. 2: images with more than 8 bits are
# scaled to 8 (version 1 kept 16-bit PNG values mod 256 and clipped 16-bit TIFFs at 255).
CACHE_FORMAT = 2

Arrays = tuple[np.ndarray, np.ndarray]  # images uint8 [N, 3, S, S], labels int64 [N]


@dataclass(frozen=True)
class Listing:
    """The image files of one split folder, in a fixed order."""

    classes: tuple[str, ...]
    files: list[Path]  # relative to the data root
    labels: list[int]  # index into classes
    skipped: list[str] = field(default_factory=list)  # other files: hidden or not images


@dataclass(frozen=True)
class Found:
    splits: dict[str, Arrays]  # "train", and "val" / "test" when the folder has them
    classes: tuple[str, ...]
    source: str
    record: dict  # for provenance: skipped bad images, images scaled to 8 bits


def read_folder(spec: Data) -> Found:
    """List, check, then decode (or load from the cache) the folder at spec.root. Raises InputError.
    Logs what it found only once all is well, so that bad input stays one line."""
    root = spec.root
    listings = list_folder(root)
    if spec.classes is not None:  # only the kept classes' files are decoded
        listings = only_classes(listings, spec.classes)
    classes = listings["train"].classes
    files = [f for lst in listings.values() for f in lst.files]
    check_decoded_fits(len(files), spec.resize)
    images, bad, scaled, how = _decoded(root, files, spec.resize, spec.cache, spec.skip_bad_images)
    if bad and not spec.skip_bad_images:
        first = next(iter(bad))
        raise InputError(f"data: {len(bad)} file(s) cannot be decoded as images, first {root / first} "
                         f"({bad[first]}); remove them or set data.skip_bad_images: true")
    splits, start = {}, 0
    for split, lst in listings.items():
        keep = [i for i, f in enumerate(lst.files) if str(f) not in bad]
        labels = np.asarray(lst.labels, dtype=np.int64)[keep]
        splits[split] = (images[start:start + len(lst.files)][keep], labels)
        start += len(lst.files)
        missing = set(range(len(classes))) - set(labels.tolist())
        if missing:
            names = ", ".join(classes[c] for c in sorted(missing))
            raise InputError(f"data: {split}/ has no decodable image of class {names} left after "
                             "skipping the bad ones")
    skipped = [f for lst in listings.values() for f in lst.skipped]
    log.info("imagefolder %s: %s in %d classes (%s)%s", root,
             ", ".join(f"{len(lst.files)} {split}/" for split, lst in listings.items()),
             len(classes), ", ".join(classes),
             f"; skipped {len(skipped)} other files (hidden or not images, e.g. "
             f"{', '.join(sorted({Path(f).name for f in skipped})[:4])})" if skipped else "")
    log.info("%s", how)
    if bad:
        log.warning("skipped %d file(s) that cannot be decoded (data.skip_bad_images): %s",
                    len(bad), ", ".join(bad))
    record = {"skipped_bad_images": {"count": len(bad), "files": list(bad)}} if bad else {}
    scaled = {f: kind for f, kind in scaled.items() if f not in bad}
    if scaled:
        kinds = {k: sum(v == k for v in scaled.values()) for k in sorted(set(scaled.values()))}
        log.warning("%d image(s) have more than 8 bits per channel and were scaled to 8 bits (%s), "
                    "e.g. %s", len(scaled), ", ".join(f"{n} {k}" for k, n in kinds.items()),
                    next(iter(scaled)))
        record["scaled_to_8_bits"] = {"count": len(scaled), "kinds": kinds, "rules": SCALING_RULES,
                                      "first": next(iter(scaled))}
    return Found(splits, classes, f"{root} (imagefolder: {', '.join(listings)})", record)


# --- listing ------------------------------------------------------------------------------------


def list_folder(root: Path) -> dict[str, Listing]:
    """The listings of train/ and of val/ and test/ when present, checked. Raises InputError."""
    if not root.is_dir():
        raise InputError(f"data.root: {root}: no such folder; give the folder that holds train/ "
                         "(one subfolder of images per class), and optionally val/ and test/")
    if not (root / "train").is_dir():
        raise InputError(f"data.root: {root} has no train/ folder; expected {root}/train/<class>/"
                         "<images> (torchvision's ImageFolder layout), optionally val/ and test/")
    seen: dict[tuple[int, int], tuple[str, str]] = {}  # a file's (device, inode) -> split, class
    listings = {s: list_split(root, s, seen) for s in SPLITS if (root / s).is_dir()}
    classes = listings["train"].classes
    for split, lst in listings.items():
        if lst.classes != classes:
            raise InputError(f"data.root: {split}/ has classes [{', '.join(lst.classes)}] but train/ "
                             f"has [{', '.join(classes)}]; every split needs the same class folders")
    if len(classes) < 2:
        raise InputError(f"data.root: {root}/train has one class folder ({classes[0]}); a classifier "
                         "needs at least 2")
    return listings


def available_memory() -> int | None:
    """Bytes of memory this machine can give now (Linux's MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_decoded_fits(n: int, size: int, available: int | None = None) -> None:
    """The decoded images (n x 3 x size x size bytes) must fit in 80% of the memory available,
    checked before decoding begins: a folder too large ends in one line, not in the OOM killer."""
    need = n * 3 * size * size
    available = available_memory() if available is None else available
    if available is not None and need > 0.8 * available:
        raise InputError(f"data: decoding {n} images at {size}x{size} needs {need / 1e9:.1f} GB, "
                         f"and this machine has {available / 1e9:.1f} GB available; lower "
                         "data.resize, keep fewer images (data.classes, data.train_subset), or use "
                         "a machine with more memory")


def only_classes(listings: dict[str, Listing], wanted: list[str | int]) -> dict[str, Listing]:
    """The listings with only the classes `wanted` (data.classes), labelled in the order given.
    Raises InputError naming the class folders."""
    available = listings["train"].classes
    try:
        keep = pick_classes(wanted, available)
    except ValueError as e:
        raise InputError(f"data.classes: {e}") from None
    relabel = {old: new for new, old in enumerate(keep)}
    out = {}
    for split, lst in listings.items():
        kept = [(f, relabel[y]) for f, y in zip(lst.files, lst.labels, strict=True) if y in relabel]
        out[split] = Listing(tuple(available[i] for i in keep), [f for f, _ in kept],
                             [y for _, y in kept], lst.skipped)
    return out


def walk(top: Path, hidden: list[Path] | None = None) -> Iterator[Path]:
    """The files under `top` in a fixed order (sorted, depth first), hidden ones (added to
    `hidden`, if given) and hidden folders left out, following links to folders but entering each
    folder once (by device and inode), so that a link back up ends instead of listing without end."""
    entered: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in entered:
            dirnames[:] = []  # reached again through a link: listed already
            continue
        entered.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        for name in sorted(filenames):
            if not is_hidden(name):
                yield Path(dirpath, name)
            elif hidden is not None:
                hidden.append(Path(dirpath, name))


def is_image_name(name: str) -> bool:
    """A file name training reads as an image (by extension, any case)."""
    return name.lower().endswith(IMG_EXTENSIONS)


def list_split(root: Path, split: str,
               seen: dict[tuple[int, int], tuple[str, str]] | None = None) -> Listing:
    """Class folders (sorted names, hidden ones left out) and their image files, in sorted order,
    each file once: one reached again through a link is counted once, and one file under two
    classes, or in two splits (`seen`, shared by the splits), is bad input."""
    seen = {} if seen is None else seen
    top = root / split
    classes = tuple(sorted(d.name for d in top.iterdir() if d.is_dir() and not is_hidden(d.name)))
    if not classes:
        raise InputError(f"data.root: {top} has no class folders; put each class's images in "
                         f"{split}/<class name>/")
    files, labels, skipped = [], [], [str(p.relative_to(root)) for p in top.iterdir() if p.is_file()]
    for label, name in enumerate(classes):
        found = 0
        hidden: list[Path] = []
        for full in walk(top / name, hidden):
            path = full.relative_to(root)
            if not is_image_name(full.name):
                skipped.append(str(path))
                continue
            st = os.stat(full)
            where = seen.setdefault((st.st_dev, st.st_ino), (split, name, str(path)))
            if where[:2] == (split, name) and where[2] != str(path):
                continue  # the same file again through a link: counted once
            if where[:2] != (split, name):
                raise InputError(f"data.root: {path} and {where[2]} are the same file (a link), "
                                 f"in {split}/{name} and {where[0]}/{where[1]}: one image cannot "
                                 "be in two classes or two splits; remove one")
            files.append(path)
            labels.append(label)
            found += 1
        skipped += [str(h.relative_to(root)) for h in hidden]
        if not found:
            raise InputError(f"data.root: class folder {top / name} has no images (files ending in "
                             f"{', '.join(IMG_EXTENSIONS)}, any case)")
    return Listing(classes, files, labels, skipped)


def is_hidden(name: str) -> bool:
    """Hidden files and folders and desktop clutter: never images, skipped by training and predict."""
    return name.startswith(".") or name.lower() in ("thumbs.db", "desktop.ini")


# --- decoding -----------------------------------------------------------------------------------


def decode(path: Path, size: int) -> np.ndarray:
    """One image file as uint8 [3, size, size] RGB, resized with antialiasing; more than 8 bits per
    channel are scaled to 8 (`to_8bit`). Raises ValueError (with the reason) for a file that is not
    a readable image."""
    return decode_depth(path, size)[0]


def decode_depth(path: Path, size: int) -> tuple[np.ndarray, str | None]:
    """decode(), and how the file's pixels were scaled to 8 bits (a key of SCALING_RULES), or None
    for a file of 8 bits per channel or fewer."""
    data = path.read_bytes()
    if not data:
        raise ValueError("empty file")
    check_pixels(data)
    try:  # libjpeg-turbo / libpng / libwebp / giflib through torchvision: JPEG, PNG, WebP, GIF
        image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                             mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except RuntimeError:
        image, kind = _decode_pil(data)  # formats torchvision.io leaves out: BMP, TIFF, PPM/PGM...
    else:
        kind = None
        if image.dtype == torch.uint16:  # 16-bit PNG: libpng hands over the full 16 bits
            kind = "16-bit"
            image = image.float() / 257  # 65535 / 255: the 0..255 scale, see to_8bit
    if image.dtype == torch.uint8:
        return resize_image(image, [size, size], antialias=True).numpy(), None  # uint8 in and out
    # more than 8 bits: resized in float32, then rounded once, to the nearest 8-bit level
    image = resize_image(image, [size, size], antialias=True)
    return image.round_().clamp_(0, 255).to(torch.uint8).numpy(), kind


# How tuner.folder brings pixels of more than 8 bits to 8 (also written to the provenance).
SCALING_RULES = {
    "16-bit": "unsigned 16-bit (PNG, TIFF I;16/I;16B, PGM, 32-bit integer within 0..65535): "
              "round(v * 255 / 65535), the nearest 8-bit level",
    "float 0..1": "float (TIFF F) with every value in 0..1: round(v * 255)",
    "float min..max": "float (TIFF F) with values outside 0..1: the image's own min..max to 0..255",
    "int min..max": "32-bit integer (TIFF I) with values outside 0..65535: the image's own min..max "
                    "to 0..255",
}


def to_8bit(pixels: np.ndarray) -> tuple[np.ndarray, str]:
    """Pixels of more than 8 bits as float32 on the 0..255 scale (to be resized, then rounded), and
    the rule used (a key of SCALING_RULES).

    Integers are scaled by their container's range, the same for every image of a folder, so that
    brightness still compares across images (12-bit camera data in 16-bit files comes out dark: it
    uses a sixteenth of the range). round(v * 255 / 65535) rather than v >> 8: each value goes to
    the nearest 8-bit level (at most half a level off, where >> 8 truncates by up to one), as
    libpng's png_set_scale_16 does; both give v back for 8-bit data widened as v * 257. Floats have
    no container range: 0..1 is the usual convention, else the image's own range is all there is.
    Non-finite values count as 0."""
    a = np.nan_to_num(pixels.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (a.min(), a.max()) if a.size else (0.0, 0.0)
    if np.issubdtype(pixels.dtype, np.unsignedinteger) and pixels.dtype.itemsize == 2:
        kind, scaled = "16-bit", a / 257
    elif np.issubdtype(pixels.dtype, np.integer) and 0 <= low and high <= 65535:
        kind, scaled = "16-bit", a / 257  # PIL opens 16-bit PGM (and some PNG) files as mode I
    elif pixels.dtype.kind == "f" and 0 <= low and high <= 1:
        kind, scaled = "float 0..1", a * 255
    else:  # a constant image has no range to stretch: it becomes black
        kind = "float min..max" if pixels.dtype.kind == "f" else "int min..max"
        scaled = (a - low) * (255 / (high - low)) if high > low else np.zeros_like(a)
    return scaled.astype(np.float32), kind


# The most pixels an image may have: PIL's own decompression-bomb limit (Image.MAX_IMAGE_PIXELS,
# 89,478,485: 0.25 GB of RGB), which torchvision.io's decoders do not apply. Every decoding
# thread may hold one such image at full size before it is resized.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


def check_pixels(data: bytes, limit: int = MAX_PIXELS) -> None:
    """Raise ValueError for an image whose header gives more than `limit` pixels, before any
    decoder allocates them; a header PIL cannot read is left to the decoders to judge."""
    try:
        with warnings.catch_warnings():  # PIL warns from its limit on, and refuses from twice it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:  # reads the header only
                width, height = im.size
    except Image.DecompressionBombError as e:
        raise ValueError(f"{str(e).split(' pixels')[0].removeprefix('Image size (')} pixels, more "
                         f"than the {limit:,} an image may have (decoding it could exhaust "
                         "memory)") from None
    except Exception:  # noqa: BLE001  not for this check to decide
        return
    if width * height > limit:
        raise ValueError(f"{width} x {height} pixels, more than the {limit:,} an image may have "
                         "(decoding it could exhaust memory)")


def _decode_pil(data: bytes) -> tuple[torch.Tensor, str | None]:
    """[3, H, W]: uint8, or float32 on the 0..255 scale for modes of more than 8 bits (I;16*, I, F)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode.startswith(("I", "F")):  # one channel of 16 or 32 bits: convert("RGB") clips
                gray, kind = to_8bit(np.asarray(im))  # decodes the whole file, as below
                return torch.from_numpy(gray).expand(3, *gray.shape).contiguous(), kind
            rgb = np.asarray(im.convert("RGB"))  # decodes the whole file: a truncated one raises
    except Exception as e:  # noqa: BLE001  PIL raises many kinds for files that are not images
        said = str(e).splitlines()[0] if str(e) else ""
        said = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>", "", said)  # PIL names its buffer
        raise ValueError(f"{type(e).__name__}: {said}") from None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1), None


def decode_all(root: Path, files: list[Path], size: int
               ) -> tuple[np.ndarray, dict[str, str], dict[str, str]]:
    """Every file decoded into one uint8 array [N, 3, size, size] (zeros where a file is bad), on
    as many threads as the machine has cores; the bad files with their reasons; and the files of
    more than 8 bits per channel with how they were scaled (decode_depth)."""
    images = np.zeros((len(files), 3, size, size), dtype=np.uint8)
    bad: dict[str, str] = {}
    scaled: dict[str, str] = {}

    def one(i: int) -> None:
        try:
            images[i], kind = decode_depth(root / files[i], size)
        except (ValueError, OSError) as e:
            bad[str(files[i])] = str(e)
            return
        if kind:
            scaled[str(files[i])] = kind

    threads = os.cpu_count() or 1
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the parallelism is across images; decode and resize release the GIL
    try:
        with ThreadPoolExecutor(threads) as pool:
            # the bar shows only when decoding takes more than a moment
            list(tqdm(pool.map(one, range(len(files))), total=len(files), desc="decoding images",
                      unit="img", delay=2, mininterval=1))
    finally:
        torch.set_num_threads(torch_threads)
    return images, dict(sorted(bad.items())), dict(sorted(scaled.items()))


# --- the cache ----------------------------------------------------------------------------------


def cache_key(root: Path, files: list[Path], size: int) -> str:
    """A hash of every file's relative path, size and mtime, the resize, and the decoders."""
    entries = []
    for f in files:
        st = (root / f).stat()
        entries.append((str(f), st.st_size, st.st_mtime_ns))
    versions = [version(p) for p in ("torch", "torchvision", "pillow")]
    blob = json.dumps([CACHE_FORMAT, size, versions, entries]).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def _decoded(root: Path, files: list[Path], size: int, cache: Path | bool | None, skip_bad: bool
             ) -> tuple[np.ndarray, dict[str, str], dict[str, str], str]:
    """The decoded images, the bad files, the files scaled to 8 bits, and a line saying how they
    were had: from the cache when it has them, else decoded (and cached, unless a bad file will stop
    the run). Two drivers on one folder take turns."""
    if not cache:
        return _decode_timed(root, files, size)
    path = Path(cache) / f"imagefolder-{root.resolve().name}-{size}px-{cache_key(root, files, size)}.npz"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(f"{path}.lock")
    except OSError as e:
        raise InputError(f"data.cache: cannot use {path.parent} ({e.strerror}); give another "
                         "folder, or data.cache: false") from None
    with lock:  # a second driver waits here, then finds the file
        if path.is_file():
            t0 = time.perf_counter()
            with np.load(path) as f:
                images, bad, scaled = f["images"], json.loads(str(f["bad"])), json.loads(str(f["scaled"]))
            return images, bad, scaled, (f"decode cache hit: {path} ({len(images)} images, loaded "
                                         f"in {time.perf_counter() - t0:.1f} s)")
        images, bad, scaled, how = _decode_timed(root, files, size)
        if bad and not skip_bad:
            return images, bad, scaled, how  # bad input: nothing is written
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                np.savez(f, images=images, bad=np.array(json.dumps(bad)),
                         scaled=np.array(json.dumps(scaled)))
            os.replace(tmp, path)  # atomic: a reader sees the whole file or none
        except OSError as e:
            tmp.unlink(missing_ok=True)
            return images, bad, scaled, f"{how}; decode cache NOT written to {path} ({e.strerror})"
    return images, bad, scaled, (f"{how}; decode cache written: {path} "
                                 f"({path.stat().st_size / 1e6:.0f} MB)")


def _decode_timed(root: Path, files: list[Path], size: int
                  ) -> tuple[np.ndarray, dict[str, str], dict[str, str], str]:
    t0 = time.perf_counter()
    images, bad, scaled = decode_all(root, files, size)
    return images, bad, scaled, (f"decoded {len(files)} images to {size}x{size} in "
                                 f"{time.perf_counter() - t0:.1f} s on {os.cpu_count() or 1} threads")
