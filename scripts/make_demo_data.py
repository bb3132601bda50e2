#!/usr/bin/env python3
"""Make the demo's bundled sample (local_test/test_dir/input/data): pictures a person can look at, with three
clear classes, that a network learns from random weights in a few minutes on two CPU cores.

    python scripts/make_demo_data.py [--out local_test/test_dir/input/data] [--train 24] [--validation 6]

Each 320 x 256 picture is a textured field (class 0, background) with one to three objects over it: suns
(class 1, warm yellow-orange discs with a soft glow) and boxes (class 2, blue-violet rectangles with a darker
edge). The colours tell the classes apart, so learning is quick; noise, shading and JPEG compression keep it
from being a lookup table. The masks are single-channel PNGs of class ids. Deterministic: the same seed
writes the same files (they are committed; rerun this only to change them).
"""

import argparse
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

WIDTH, HEIGHT = 320, 256
CLASS_NAMES = ("background", "sun", "box")
REPO = Path(__file__).resolve().parents[1]


def field(rng: np.random.Generator) -> np.ndarray:
    """A green-grey field: a vertical gradient, blotches and fine noise."""
    top = rng.uniform(90, 130, size=3) * (0.9, 1.1, 0.85)
    bottom = rng.uniform(60, 100, size=3) * (0.85, 1.15, 0.8)
    rows = np.linspace(0, 1, HEIGHT)[:, None, None]
    image = top * (1 - rows) + bottom * rows + np.zeros((HEIGHT, WIDTH, 3))
    blotches = rng.normal(0, 1, size=(HEIGHT // 16, WIDTH // 16))
    blotches = Image.fromarray(blotches.astype(np.float32)).resize((WIDTH, HEIGHT), Image.BILINEAR)
    blotches = np.asarray(blotches)
    return image + 18 * blotches[..., None]


def draw_sun(rng, image: np.ndarray, mask: np.ndarray) -> None:
    radius = int(rng.integers(30, 60))
    cx, cy = int(rng.integers(radius, WIDTH - radius)), int(rng.integers(radius, HEIGHT - radius))
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    distance = np.hypot(xx - cx, yy - cy) / radius
    inside = distance <= 1
    colour = np.array([245, rng.uniform(170, 215), rng.uniform(30, 70)])
    shade = (1.05 - 0.25 * distance[..., None])
    image[inside] = (colour * shade)[inside]
    mask[inside] = 1


def draw_box(rng, image: np.ndarray, mask: np.ndarray) -> None:
    width, height = int(rng.integers(60, 140)), int(rng.integers(50, 120))
    left, top = int(rng.integers(0, WIDTH - width)), int(rng.integers(0, HEIGHT - height))
    colour = np.array([rng.uniform(50, 110), rng.uniform(50, 90), rng.uniform(190, 240)])
    outline = Image.new("L", (WIDTH, HEIGHT), 0)
    ImageDraw.Draw(outline).rectangle([left, top, left + width, top + height], fill=1)
    inside = np.asarray(outline, dtype=bool)
    image[inside] = colour
    edge = inside & ~np.asarray(outline.filter(ImageFilter.MinFilter(7)), dtype=bool)
    image[edge] = colour * 0.6
    mask[inside] = 2


def scene(rng: np.random.Generator):
    """(HxWx3 uint8 picture, HxW uint8 mask)."""
    image = field(rng)
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    painters = [draw_sun, draw_box]
    for _ in range(int(rng.integers(1, 4))):
        painters[int(rng.integers(0, 2))](rng, image, mask)
    image = image + rng.normal(0, 8, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_split(out: Path, split: str, count: int, rng: np.random.Generator) -> None:
    images, masks = out / split, out / f"{split}_annotation"
    for folder in (images, masks):
        shutil.rmtree(str(folder), ignore_errors=True)
        folder.mkdir(parents=True)
    for index in range(count):
        picture, mask = scene(rng)
        name = f"{split}_{index:03d}"
        Image.fromarray(picture).save(str(images / f"{name}.jpg"), quality=88)
        Image.fromarray(mask, mode="L").save(str(masks / f"{name}.png"), optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "local_test" / "test_dir" / "input" / "data")
    parser.add_argument("--train", type=int, default=24)
    parser.add_argument("--validation", type=int, default=6)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    write_split(args.out, "train", args.train, rng)
    write_split(args.out, "validation", args.validation, rng)
    print(f"wrote {args.train} training and {args.validation} validation pairs under {args.out}")


if __name__ == "__main__":
    main()
