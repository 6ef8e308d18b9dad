"""Fashion-MNIST as uint8 arrays [N, 28, 28], read once per process (tuner.data splits them).

Lookup order: the torchvision layout under data.root; a local mirror of the four original .gz files
($FASHION_MNIST_DIR, then /usr/share/datasets/fashion-mnist from Debian's dataset-fashion-mnist);
then torchvision's download into data.root (under a file lock: trials and drivers may start at once).
"""

from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path

import numpy as np
from filelock import FileLock

from tuner.errors import InputError

log = logging.getLogger(__name__)

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {  # split -> (images, labels), names as published
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training-set pixel statistics, in [0, 1] units


Arrays = tuple[np.ndarray, np.ndarray]  # images uint8 [N, H, W], labels int64 [N]


def find_fashion_mnist(root: Path, download: bool = True) -> tuple[dict[str, Arrays], str]:
    """The train and test splits and a description of where they were found. Raises InputError."""
    tv_raw = Path(root) / "FashionMNIST" / "raw"
    mirrors = _mirrors()
    for where in (tv_raw, *mirrors):
        found = _read_dir(where)
        if found:
            return found, str(where)
    tried = f"{tv_raw} (torchvision layout under data.root), " + ", ".join(
        f"{m} (.gz mirror)" for m in mirrors)
    if not download:
        raise InputError(
            f"data: Fashion-MNIST not found in {tried}; set data.download: true, set "
            "FASHION_MNIST_DIR, or apt-get install dataset-fashion-mnist"
        )
    try:
        _download(Path(root))
    except Exception as e:
        raise InputError(
            f"data: Fashion-MNIST not found in {tried}, and torchvision's download into {root} "
            f"failed ({type(e).__name__}); set FASHION_MNIST_DIR to a folder with the four .gz "
            "files, or apt-get install dataset-fashion-mnist"
        ) from None
    found = _read_dir(tv_raw)
    if not found:
        raise InputError(f"data: download into {root} finished but {tv_raw} is incomplete")
    return found, f"{tv_raw} (downloaded)"


def _mirrors() -> list[Path]:
    """Local folders of the four .gz files, in the order they are tried."""
    return [Path(p) for p in (os.environ.get("FASHION_MNIST_DIR"), DEBIAN_DIR) if p]


def _read_dir(where: Path) -> dict[str, Arrays] | None:
    """Both splits from a folder of idx files (plain or .gz), or None if any file is missing."""
    out = {}
    for split, names in FILES.items():
        paths = []
        for name in names:
            for candidate in (where / name, where / f"{name}.gz"):
                if candidate.is_file():
                    paths.append(candidate)
                    break
            else:
                return None
        images, labels = (read_idx(p) for p in paths)
        out[split] = (images, labels.astype(np.int64))
    return out


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (the MNIST container format), gzip'd or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:  # 0x08: unsigned byte payload
        raise InputError(f"data: {path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    payload = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if payload.size != int(np.prod(dims)):
        raise InputError(f"data: {path} is truncated ({payload.size} of {np.prod(dims)} bytes)")
    return payload.reshape(dims).copy()


def torchvision_layout(root: Path) -> Path:
    """Make sure torchvision's own FashionMNIST class can read `root` (it wants the uncompressed
    files in <root>/FashionMNIST/raw), unpacking a local .gz mirror there if need be. For the
    tutorial-style reference loop in tuner.bench."""
    raw = Path(root) / "FashionMNIST" / "raw"
    names = [n for pair in FILES.values() for n in pair]
    if all((raw / n).is_file() for n in names):
        return Path(root)
    for mirror in _mirrors():
        if all((mirror / f"{n}.gz").is_file() for n in names):
            raw.mkdir(parents=True, exist_ok=True)
            with FileLock(str(raw / ".unpack.lock")):
                for n in names:
                    with gzip.open(mirror / f"{n}.gz", "rb") as src:
                        tmp = raw / f".{n}.tmp"
                        tmp.write_bytes(src.read())
                        tmp.replace(raw / n)
            return Path(root)
    _download(Path(root))
    return Path(root)


def _download(root: Path) -> None:
    import torchvision  # only needed for the download

    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".fashion-mnist.lock")):  # parallel trials must not download twice
        for train in (True, False):
            torchvision.datasets.FashionMNIST(root, train=train, download=True)
