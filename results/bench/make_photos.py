"""Write a folder of synthetic photo-like JPEGs for `python -m tuner.bench --folder`:

    python results/bench/make_photos.py /tmp/photos --per-class 300

<out>/train/<class>/NNNN.jpg, 2 classes, about 500x375 pixels (sizes and orientation vary as in a
photo collection), quality 90: a smooth colour gradient, a few drawn shapes, and sensor-like noise,
so that JPEG decoding costs about what it costs on real photos. Seeded: the same files every time.
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def photo(rng: np.random.Generator, label: int) -> Image.Image:
    w, h = (500, 375) if rng.random() < 0.75 else (375, 500)
    w, h = int(w * rng.uniform(0.85, 1.15)), int(h * rng.uniform(0.85, 1.15))
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = (xs / w * rng.uniform(0.3, 1) + ys / h * rng.uniform(0.3, 1))[..., None] / 2
    pixels = a * (1 - t) + b * t + rng.normal(0, 12, (h, w, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(3, 8)):
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(15, 120)
        fill = tuple(int(c) for c in rng.uniform(0, 255, 3))
        if label == 0:  # class 0: round things; class 1: boxes
            draw.ellipse([x - r, y - r * 0.6, x + r, y + r * 0.6], fill=fill)
        else:
            draw.rectangle([x - r, y - r, x + r * 0.7, y + r * 0.5], fill=fill)
    return image.filter(ImageFilter.GaussianBlur(0.8))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--per-class", type=int, default=300)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    for label, name in enumerate(("round", "square")):
        folder = args.out / "train" / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(args.per_class):
            photo(rng, label).save(folder / f"{i:04d}.jpg", quality=90)


if __name__ == "__main__":
    main()
