"""An images folder and a masks folder paired by base name (satellite tiles, exported labelling jobs).

The mask values are discovered from every mask, and the label map that reads them is written:
- single-channel masks holding 0 and 255 only: binary, {"map": {"0": 0, "1": 255}} (255 is a class here);
- values 0..k-1 (with or without 255): k classes, pixel = class id, 255 = ignore; no label map needed;
- other values (say 0, 100, 200): one class per value in increasing order, 255 = ignore unless it is one of
  only two values;
- RGB masks: one class per colour (black first), a palette label map. RGB masks whose three channels are
  equal are read as greyscale.
Images may be JPEG or PNG (copied) or any other format PIL reads, e.g. TIFF tiles (converted to PNG).
"""

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

from segmaker.errors import DataError, UserError
from segmaker.prepare.dataset import APPLEDOUBLE, Dataset, Pair, Summary, is_appledouble, split_by_fraction
from segmaker.prepare.writer import mask_values
from segmaker.transforms import IGNORE

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".gif")
_LISTED = 5


def read(images: Path, masks: Path, validation_fraction: float, seed: int,
         class_names: Sequence[str] = ()) -> Dataset:
    """Pairs of `images` and `masks` by relative path without suffix, the label map from the mask values."""
    summary = Summary()
    image_files = _files(images, IMAGE_SUFFIXES, "image", summary)
    mask_files = _files(masks, MASK_SUFFIXES, "mask", summary)
    lonely = sorted(set(image_files) - set(mask_files))
    if lonely:
        shown = ", ".join(str(image_files[k]) for k in lonely[:_LISTED])
        raise DataError(f"{len(lonely)} image(s) have no mask of the same base name in {masks}: {shown}"
                        + (f" and {len(lonely) - _LISTED} more" if len(lonely) > _LISTED else ""))
    for key in sorted(set(mask_files) - set(image_files)):
        summary.skip("mask without an image", mask_files[key])
    if not image_files:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {images}")
    grey, colours = _discover(mask_files[k] for k in image_files)
    label_map, names, notes = _classes(grey, colours)
    if class_names:
        if len(class_names) != len(names):
            raise UserError(f"--class-names gives {len(class_names)} names but the masks hold {len(names)} "
                            f"classes ({'; '.join(notes)})")
        names = tuple(class_names)
    rgb = bool(colours)
    pairs = [Pair(key.replace("/", "__"), image_files[key], mask_files[key], rgb_mask=rgb,
                  convert=None if not rgb else _palette_converter(label_map)) for key in sorted(image_files)]
    train, validation = split_by_fraction(pairs, validation_fraction, seed)
    return Dataset(train, validation, names, summary, label_map=None if rgb else label_map, notes=notes)


def _files(folder: Path, suffixes: Sequence[str], what: str, summary: Summary) -> Dict[str, Path]:
    if not folder.is_dir():
        raise UserError(f"the {what} folder {folder} does not exist")
    found: Dict[str, Path] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder)
        if is_appledouble(path):
            summary.skip(APPLEDOUBLE, path)
        elif any(part.startswith(".") for part in relative.parts):
            summary.skip("hidden file", path)
        elif path.suffix.lower() not in suffixes:
            summary.skip(f"not an {what} ({path.suffix or 'no suffix'})", path)
        else:
            key = relative.with_suffix("").as_posix()
            if key in found:
                raise DataError(f"two {what} files with the same base name: {found[key]} and {path}")
            found[key] = path
    return found


def _discover(mask_paths) -> Tuple[Set[int], Set[Tuple[int, int, int]]]:
    """The grey values of single-channel masks and the colours of RGB ones (whose channels differ)."""
    grey: Set[int] = set()
    colours: Set[Tuple[int, int, int]] = set()
    for path in mask_paths:
        pixels = _mask_array(path)
        if pixels.ndim == 2:
            grey.update(int(v) for v in np.unique(pixels))
        else:
            packed = np.unique(pixels[..., 0].astype(np.uint32) << 16 | pixels[..., 1].astype(np.uint32) << 8
                               | pixels[..., 2])
            colours.update((int(v) >> 16, (int(v) >> 8) & 255, int(v) & 255) for v in packed)
        if len(colours) > 254:
            raise DataError(f"{path}: the RGB masks hold more than 254 colours; are they photographs?")
    if grey and colours:
        raise DataError("some masks are single-channel and some are colour (RGB): use one kind")
    return grey, colours


def _mask_array(path: Path) -> np.ndarray:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    return mask_values(data, str(path))[0]


def _classes(grey: Set[int], colours: Set[Tuple[int, int, int]]):
    """(label map JSON or None, class names, notes) for the discovered values."""
    if colours:
        ordered = sorted(colours)
        palette = {"{},{},{}".format(*c): k for k, c in enumerate(ordered)}
        names = tuple("rgb_{}_{}_{}".format(*c) for c in ordered)
        return {"palette": palette}, names, [f"RGB masks: {len(ordered)} colours, one class each"]
    values = sorted(grey)
    if values == [0, IGNORE]:
        return {"map": {"0": 0, "1": IGNORE}}, ("background", "foreground"), ["masks hold 0 and 255: binary"]
    classes = [v for v in values if v != IGNORE]
    ignored = "; 255 = ignore" if IGNORE in values else ""
    if len(classes) < 2:
        raise DataError(f"the masks hold only the value(s) {values}: segmentation needs at least two classes")
    if classes == list(range(len(classes))):
        names = tuple(f"class_{v}" for v in classes)
        return None, names, [f"mask values 0..{len(classes) - 1} are the class ids{ignored}"]
    mapping = {str(k): v for k, v in enumerate(classes)}
    names = tuple(f"value_{v}" for v in classes)
    return {"map": mapping}, names, [f"mask values {classes}: class k is the k-th value{ignored}"]


def _palette_converter(label_map: Optional[Dict[str, object]]):
    from segmaker.data.labelmaps import parse_label_map

    palette = parse_label_map(label_map, len(label_map["palette"]), source="discovered colours")

    def convert(rgb: np.ndarray, name: str) -> np.ndarray:
        return palette.to_class_ids(rgb, name)

    return convert


def parse_names(text: Optional[str]) -> List[str]:
    return [name.strip() for name in text.split(",")] if text else []
