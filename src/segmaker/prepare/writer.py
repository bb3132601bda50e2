"""Write a `Dataset` as SageMaker channels under one output folder.

    OUTPUT/train/*.jpg|png            OUTPUT/train_annotation/*.png
    OUTPUT/validation/...             OUTPUT/validation_annotation/...
    OUTPUT/label_map/{train,validation}_label_map.json     (when the masks are copied as they are)
    OUTPUT/hyperparameters.json       num_classes and class_names (num_training_samples with manifests)
    OUTPUT/manifests/{train,validation}.manifest           (with --manifest: augmented manifests, Pipe mode)
    OUTPUT/prepare_summary.json       every skipped or repaired file

Images that training reads as they are (RGB JPEG or PNG, suffix matching the content) are copied byte for
byte; any other image (greyscale, CMYK, palette, PNG data in a .jpg, TIFF) is converted to RGB and counted as
repaired. Every mask is checked through the label map that training will use, so a mask training would
refuse fails here, naming its file.
"""

import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from segmaker.data.labelmaps import LabelMap, parse_label_map
from segmaker.errors import DataError, UserError
from segmaker.prepare.dataset import Dataset, Pair, Summary

SPLITS = ("train", "validation")
LABEL_ATTRIBUTE = "mask-ref"
_COPIED_AS_IS = {("JPEG", ".jpg"), ("JPEG", ".jpeg"), ("PNG", ".png")}


@dataclass(frozen=True)
class Written:
    """What was written: the channel folders, the number of pairs per split, the manifests."""

    output: Path
    channels: Tuple[str, ...]
    counts: Dict[str, int]
    manifests: Dict[str, Path]


def write_channels(dataset: Dataset, output: Path, *, manifest_prefix: Optional[str] = None,
                   manifests: bool = False) -> Written:
    """Write the channels; `manifest_prefix` (an s3:// URI) is where the manifests' references will point."""
    if dataset.num_classes < 2:
        raise UserError(f"the masks hold {dataset.num_classes} class(es); segmentation needs at least 2")
    if not dataset.train:
        raise UserError("no training pairs: every pair went to validation or was skipped")
    _prepare_output(output)
    label_map = _checking_label_map(dataset)
    counts, written_pairs = {}, {}
    for split in SPLITS:
        pairs = dataset.train if split == "train" else dataset.validation
        files = [_write_pair(pair, output, split, label_map, dataset.summary) for pair in pairs]
        written_pairs[split] = [names for names in files if names is not None]
        counts[split] = len(written_pairs[split])
    channels = [f"{split}{suffix}" for split in SPLITS if counts[split] for suffix in ("", "_annotation")]
    if dataset.label_map is not None:
        _write_label_maps(output, dataset.label_map)
        channels.append("label_map")
    manifest_files = _write_manifests(output, written_pairs, manifest_prefix) if manifests else {}
    _write_hyperparameters(output, dataset, counts["train"] if manifests else None)
    _write_json(output / "prepare_summary.json", dataset.summary.to_json())
    return Written(output, tuple(channels), counts, manifest_files)


def _prepare_output(output: Path) -> None:
    if output.exists() and any(output.iterdir()):
        for name in (*SPLITS, *(s + "_annotation" for s in SPLITS), "label_map", "manifests"):
            if (output / name).exists():
                raise UserError(f"{output} already holds {name}/: give an empty or new output folder")
    output.mkdir(parents=True, exist_ok=True)


def _checking_label_map(dataset: Dataset) -> LabelMap:
    """The label map training will read the written masks with (scale 1 for converted masks)."""
    if dataset.label_map is None:
        return LabelMap.from_scale(1, dataset.num_classes)
    return parse_label_map(dataset.label_map, dataset.num_classes, source="the label map prepared")


def _write_pair(pair: Pair, output: Path, split: str, label_map: LabelMap,
                summary: Summary) -> Optional[Tuple[str, str]]:
    """(image file, mask file) relative to `output`, or None when the image cannot be decoded (skipped)."""
    image_file = _write_image(pair, output / split, summary)
    if image_file is None:
        return None
    mask_file = output / f"{split}_annotation" / f"{pair.name}.png"
    _write_mask(pair, mask_file, label_map, _image_size(image_file), summary, label_map.num_classes)
    return str(image_file.relative_to(output)), str(mask_file.relative_to(output))


def _write_image(pair: Pair, folder: Path, summary: Summary) -> Optional[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with Image.open(str(pair.image)) as picture:
            picture.load()
            kind, mode = picture.format, picture.mode
            if (kind, pair.image.suffix.lower()) in _COPIED_AS_IS and mode == "RGB":
                target = folder / (pair.name + pair.image.suffix.lower())
                shutil.copyfile(str(pair.image), str(target))
                return target
            rgb = picture.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        summary.skip(f"image cannot be decoded ({type(exc).__name__})", pair.image)
        return None
    as_jpeg = kind == "JPEG"  # a JPEG stays a JPEG; anything else becomes a (lossless) PNG
    target = folder / (pair.name + (".jpg" if as_jpeg else ".png"))
    rgb.save(str(target), **({"quality": 95} if as_jpeg else {}))
    summary.repair(f"{mode} {kind} image converted to RGB {'JPEG' if as_jpeg else 'PNG'}", pair.image)
    return target


def _image_size(path: Path) -> Tuple[int, int]:
    with Image.open(str(path)) as picture:
        return picture.size


def _write_mask(pair: Pair, target: Path, label_map: LabelMap, image_size: Tuple[int, int],
                summary: Summary, num_classes: int) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    data = _read(pair.mask)
    pixels, readable_as_is = mask_values(data, str(pair.mask), rgb=pair.rgb_mask)
    if (pixels.shape[1], pixels.shape[0]) != image_size:
        raise DataError(f"{pair.mask}: mask is {pixels.shape[1]}x{pixels.shape[0]} but its image "
                        f"{pair.image} is {image_size[0]}x{image_size[1]} (width x height)")
    if pair.convert is not None:
        class_ids = pair.convert(pixels, str(pair.mask))
        LabelMap.from_scale(1, num_classes).to_class_ids(class_ids, str(pair.mask))
        Image.fromarray(class_ids.astype(np.uint8), mode="L").save(str(target))
        return
    label_map.to_class_ids(pixels, str(pair.mask))  # the check training would make, now
    if readable_as_is:
        target.write_bytes(data)
    else:
        Image.fromarray(pixels, mode="L").save(str(target))
        summary.repair("mask rewritten as a single-channel PNG (training reads PNG masks of mode L or P)",
                       pair.mask)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None


def mask_values(data: bytes, name: str, rgb: bool = False) -> Tuple[np.ndarray, bool]:
    """(a mask's values, whether training reads the file as these values): palette index or grey value (an
    RGB mask whose three channels are equal counts as grey), else its RGB colours (always with `rgb`)."""
    try:
        with Image.open(io.BytesIO(data)) as picture:
            picture.load()
            if picture.mode in ("L", "P") and not rgb:
                return np.asarray(picture, dtype=np.uint8), picture.format == "PNG"
            colours = np.asarray(picture.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{name}: cannot decode the mask ({exc})") from None
    if not rgb and (colours[..., 0] == colours[..., 1]).all() and (colours[..., 1] == colours[..., 2]).all():
        return colours[..., 0], False
    return colours, False  # without a palette, the label map's check names the file: colour masks need one


def _write_label_maps(output: Path, label_map: Dict[str, object]) -> None:
    folder = output / "label_map"
    folder.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        _write_json(folder / f"{split}_label_map.json", label_map)


def _write_manifests(output: Path, pairs: Dict[str, List[Tuple[str, str]]],
                     prefix: Optional[str]) -> Dict[str, Path]:
    """One augmented manifest per split: {"source-ref": image, "mask-ref": mask} per line, references
    into S3 under `prefix` when given, else absolute local paths (segmaker pipe-feed reads those)."""
    folder = output / "manifests"
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, files in pairs.items():
        if not files:
            continue
        lines = [json.dumps({"source-ref": _reference(output, image, prefix),
                             LABEL_ATTRIBUTE: _reference(output, mask, prefix)}) for image, mask in files]
        written[split] = folder / f"{split}.manifest"
        written[split].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return written


def _reference(output: Path, relative: str, prefix: Optional[str]) -> str:
    return f"{prefix.rstrip('/')}/{relative}" if prefix else str((output / relative).resolve())


def _write_hyperparameters(output: Path, dataset: Dataset, train_count: Optional[int]) -> None:
    values = {"num_classes": str(dataset.num_classes), "class_names": ",".join(dataset.class_names)}
    if train_count is not None:  # Pipe mode needs it: the stream has no length
        values["num_training_samples"] = str(train_count)
    _write_json(output / "hyperparameters.json", values)


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=1) + "\n", encoding="utf-8")
