"""Synthetic segmentation data: coloured shapes on a background, written as a fake /opt/ml tree.

Each class has its own colour (`CLASS_COLOURS`), so a test can check alignment by comparing an image's
colours with its mask. Sizes vary and are never square, to catch height/width mix-ups. Importable by any
test or benchmark: `from tests.synthetic import write_opt_ml`.
"""

import json
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw

from segmaker.environment import Paths

# Far apart in RGB so that JPEG artefacts never make one class look like another.
CLASS_COLOURS: Tuple[Tuple[int, int, int], ...] = (
    (0, 0, 0),
    (230, 30, 30),
    (30, 200, 40),
    (40, 60, 230),
    (240, 220, 30),
    (200, 40, 220),
    (30, 210, 220),
    (250, 250, 250),
)
IGNORE = 255
LAYOUTS = ("channels", "folders")
MASK_MODES = ("L", "P", "RGB")


def random_size(rng: np.random.Generator, low: int = 32, high: int = 96) -> Tuple[int, int]:
    """(height, width) in [low, high], never square."""
    height, width = (int(v) for v in rng.integers(low, high + 1, size=2))
    if height == width:
        width = width + 8 if width + 8 <= high else width - 8
    return height, width


def make_sample(
    rng: np.random.Generator, height: int, width: int, num_classes: int, ignore_border: bool = False
) -> Tuple[np.ndarray, np.ndarray]:
    """(HxWx3 uint8 image, HxW uint8 mask): one to three shapes of classes 1..num_classes-1 on class 0.

    With `ignore_border`, a 1-pixel outline of each shape is 255 in the mask (as in Pascal VOC).
    """
    if not 2 <= num_classes <= len(CLASS_COLOURS):
        raise ValueError(f"num_classes must be in [2, {len(CLASS_COLOURS)}]")
    mask_picture = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask_picture)
    for _ in range(int(rng.integers(1, 4))):
        class_id = int(rng.integers(1, num_classes))
        box = _random_box(rng, height, width)
        outline = IGNORE if ignore_border else class_id
        if rng.random() < 0.5:
            draw.rectangle(box, fill=class_id, outline=outline)
        else:
            draw.ellipse(box, fill=class_id, outline=outline)
    mask = np.asarray(mask_picture, dtype=np.uint8)
    return colour_image(mask), mask


def _random_box(rng: np.random.Generator, height: int, width: int) -> List[int]:
    left, top = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
    right = int(rng.integers(left + width // 4, width))
    bottom = int(rng.integers(top + height // 4, height))
    return [left, top, right, bottom]


def colour_image(mask: np.ndarray) -> np.ndarray:
    """The image whose colour encodes each pixel's class (ignore pixels get the background colour)."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(CLASS_COLOURS)] = CLASS_COLOURS
    return palette[mask]


def encode_image(image: np.ndarray, fmt: str = "JPEG") -> bytes:
    buffer = BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def encode_mask(mask: np.ndarray, mode: str = "L") -> bytes:
    """PNG bytes of a mask stored as grey values (L), palette indices (P) or class colours (RGB)."""
    buffer = BytesIO()
    _mask_picture(mask, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _mask_picture(mask: np.ndarray, mode: str) -> Image.Image:
    if mode == "L":
        return Image.fromarray(mask)
    if mode == "P":
        picture = Image.fromarray(mask)
        # putpalette turns the L image into a P image whose indices are the class ids. A full 256-colour
        # palette: with a short one PIL writes fewer bits per pixel and index 255 (ignore) would wrap.
        colours = [channel for colour in CLASS_COLOURS for channel in colour]
        picture.putpalette(colours + [128] * (768 - len(colours)))
        return picture
    if mode == "RGB":
        palette = np.zeros((256, 3), dtype=np.uint8)
        palette[: len(CLASS_COLOURS)] = CLASS_COLOURS
        palette[IGNORE] = (128, 128, 128)
        return Image.fromarray(palette[mask])
    raise ValueError(f"mask mode must be one of {MASK_MODES}")


def palette_label_map(num_classes: int) -> Dict[str, Dict[str, int]]:
    """The palette label map matching masks written with mode "RGB" (grey 128,128,128 = ignore)."""
    colours = {"{},{},{}".format(*CLASS_COLOURS[k]): k for k in range(num_classes)}
    colours["128,128,128"] = IGNORE
    return {"palette": colours}


@dataclass(frozen=True)
class SyntheticSplit:
    """What was written for one split: the image and mask files, by base name, and the true masks."""

    image_files: Mapping[str, Path]
    mask_files: Mapping[str, Path]
    masks: Mapping[str, np.ndarray]


def write_split(
    image_dir: Path,
    mask_dir: Path,
    count: int,
    *,
    num_classes: int = 3,
    seed: int = 0,
    mask_mode: str = "L",
    image_format: str = "JPEG",
    ignore_border: bool = False,
) -> SyntheticSplit:
    """Write `count` images (JPEG or PNG) and PNG masks of varied non-square sizes."""
    rng = np.random.default_rng(seed)
    image_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    suffix = ".jpg" if image_format == "JPEG" else ".png"
    images, mask_files, masks = {}, {}, {}
    for index in range(count):
        name = f"sample_{seed}_{index:03d}"
        image, mask = make_sample(rng, *random_size(rng), num_classes, ignore_border)
        images[name] = image_dir / (name + suffix)
        images[name].write_bytes(encode_image(image, image_format))
        mask_files[name] = mask_dir / (name + ".png")
        mask_files[name].write_bytes(encode_mask(mask, mask_mode))
        masks[name] = mask
    return SyntheticSplit(images, mask_files, masks)


def split_dirs(paths: Paths, split: str, layout: str) -> Tuple[Path, Path]:
    """(image folder, mask folder) of `split` in the four-channel ("channels") or images/+masks/ layout."""
    if layout == "channels":
        return paths.channel_dir(split), paths.channel_dir(split + "_annotation")
    if layout == "folders":
        return paths.channel_dir(split) / "images", paths.channel_dir(split) / "masks"
    raise ValueError(f"layout must be one of {LAYOUTS}")


def write_opt_ml(
    base: Path,
    *,
    layout: str = "channels",
    num_classes: int = 3,
    train: int = 8,
    validation: int = 4,
    mask_mode: str = "L",
    seed: int = 0,
    hyperparameters: Optional[Mapping[str, object]] = None,
    label_map: Optional[Mapping[str, object]] = None,
) -> Paths:
    """A fake /opt/ml tree under `base`: data, hyperparameters.json and inputdataconfig.json (File mode).

    With mask_mode "RGB" and no `label_map`, a matching palette label map is written to the label_map channel.
    """
    paths = Paths(base)
    for split, count, split_seed in (("train", train, seed), ("validation", validation, seed + 1000)):
        if count:
            write_split(
                *split_dirs(paths, split, layout),
                count,
                num_classes=num_classes,
                seed=split_seed,
                mask_mode=mask_mode,
            )
    if label_map is None and mask_mode == "RGB":
        label_map = palette_label_map(num_classes)
    if label_map is not None:
        paths.channel_dir("label_map").mkdir(parents=True, exist_ok=True)
        for split in ("train", "validation"):
            (paths.channel_dir("label_map") / f"{split}_label_map.json").write_text(json.dumps(label_map))
    _write_config(paths, num_classes, hyperparameters)
    return paths


def _write_config(paths: Paths, num_classes: int, hyperparameters: Optional[Mapping[str, object]]) -> None:
    paths.config_dir.mkdir(parents=True, exist_ok=True)
    values = {
        "num_classes": str(num_classes),
        "crop_size": "32",
        "base_size": "64",
        "epochs": "1",
        "mini_batch_size": "2",
        "validation_mini_batch_size": "2",
    }
    values.update({key: str(value) for key, value in (hyperparameters or {}).items()})
    paths.hyperparameters_file.write_text(json.dumps(values))
    channels = sorted(p.name for p in paths.data_dir.iterdir() if p.is_dir())
    config = {
        name: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated"} for name in channels
    }
    paths.input_data_config_file.write_text(json.dumps(config))


# An easy task a working loop learns from random weights in ~100 small steps (about 90 s on 2 cores): colour
# encodes the class; Adam at 1e-3 with batches of 2 gets well above the all-background mIOU.
LEARNING_HYPERPARAMETERS = {
    "crop_size": 48, "base_size": 48, "epochs": 12, "mini_batch_size": 2, "optimizer": "adam",
    "learning_rate": 0.001,
}


def all_background_miou(paths: Paths) -> float:
    """mIOU of predicting class 0 everywhere on the validation masks (2 classes, both present)."""
    masks = [np.asarray(Image.open(str(p))) for p in paths.channel_dir("validation_annotation").iterdir()]
    pixels = np.concatenate([m.ravel() for m in masks])
    pixels = pixels[pixels != 255]
    return float(np.mean(pixels == 0)) / 2


