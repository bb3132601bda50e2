"""Label maps: how mask pixels become class ids (np.uint8, 255 = ignore).

Three forms, as JSON:
- `{"scale": "3"}`: class = floor(pixel / 3) (the built-in's default is scale 1: the pixel is the class id);
- `{"map": {"0": 5, "1": 0}}`: keys are class ids, values the pixel values that encode them (the built-in's);
- `{"palette": {"255,0,255": 1, "0,0,0": 255}}`: RGB colour -> class id, 255 = ignore (ours: colour masks).

Pixel 255 means ignore unless the map assigns it to a class. This runs on every training sample, so it is a
single table lookup: a 256-entry table for scale/map masks, a sorted table of packed RGB values for palettes.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

from segmaker.errors import DataError, UserError
from segmaker.transforms import IGNORE

_UNMAPPED = -1  # table entry for a pixel value (or colour) no class claims
_MAX_LISTED = 8  # offending values shown in an error message

Colour = Tuple[int, int, int]


@dataclass(frozen=True)
class LabelMap:
    """A validated label map for `num_classes` classes; build it with the `from_*` constructors."""

    num_classes: int
    kind: str  # "scale", "map" or "palette"
    spec: Mapping[str, object]  # the canonical JSON form, see to_json()
    # Lookup tables (derived from spec; excluded from equality so two maps compare by meaning).
    _table: np.ndarray = field(repr=False, compare=False)
    _colours: Optional[np.ndarray] = field(default=None, repr=False, compare=False)

    @classmethod
    def from_scale(cls, scale: int, num_classes: int) -> "LabelMap":
        table = np.full(256, _UNMAPPED, dtype=np.int16)
        values = np.arange(255)
        table[:255] = values // scale
        table[IGNORE] = IGNORE
        return cls(num_classes, "scale", {"scale": str(scale)}, table)

    @classmethod
    def from_class_to_pixel(cls, class_to_pixel: Mapping[int, int], num_classes: int) -> "LabelMap":
        table = np.full(256, _UNMAPPED, dtype=np.int16)
        table[IGNORE] = IGNORE  # overwritten below if a class claims pixel 255
        for class_id, pixel in class_to_pixel.items():
            table[pixel] = class_id
        spec = {"map": {str(c): p for c, p in sorted(class_to_pixel.items())}}
        return cls(num_classes, "map", spec, table)

    @classmethod
    def from_palette(cls, colour_to_class: Mapping[Colour, int], num_classes: int) -> "LabelMap":
        items = sorted((_pack(colour), class_id) for colour, class_id in colour_to_class.items())
        colours = np.array([packed for packed, _ in items], dtype=np.uint32)
        classes = np.array([class_id for _, class_id in items], dtype=np.int16)
        spec = {"palette": {"{},{},{}".format(*c): k for c, k in sorted(colour_to_class.items())}}
        return cls(num_classes, "palette", spec, classes, colours)

    @property
    def is_palette(self) -> bool:
        return self.kind == "palette"

    def to_json(self) -> Dict[str, object]:
        """The map in its JSON form (what `parse_label_map` reads back)."""
        return json.loads(json.dumps(self.spec))

    def to_class_ids(self, mask: np.ndarray, name: str) -> np.ndarray:
        """HxW (or HxWx3 for palettes) pixels -> HxW uint8 class ids, 255 = ignore; DataError names `name`."""
        if self.is_palette:
            return self._palette_class_ids(mask, name)
        if mask.ndim != 2:
            channels = mask.shape[-1] if mask.ndim == 3 else mask.ndim
            raise DataError(
                f"{name}: mask has {channels} channels; a multi-channel (colour) mask needs a palette label "
                'map ({"palette": {"r,g,b": class_id, ...}}), or save it as a single-channel PNG'
            )
        class_ids = self._table[mask]
        self._check(class_ids, lambda bad: _describe_pixels(mask, class_ids, bad), name)
        return class_ids.astype(np.uint8)

    def _palette_class_ids(self, mask: np.ndarray, name: str) -> np.ndarray:
        if mask.ndim != 3 or mask.shape[2] < 3:
            raise DataError(f"{name}: a palette label map needs an RGB mask, got shape {mask.shape}")
        packed = _pack_image(mask)
        index = np.minimum(np.searchsorted(self._colours, packed), len(self._colours) - 1)
        found = self._colours[index] == packed
        class_ids = np.where(found, self._table[index], _UNMAPPED)
        self._check(class_ids, lambda bad: _describe_colours(packed, class_ids, bad), name)
        return class_ids.astype(np.uint8)

    def _check(self, class_ids: np.ndarray, describe, name: str) -> None:
        bad = (class_ids < 0) | ((class_ids >= self.num_classes) & (class_ids != IGNORE))
        if bad.any():
            raise DataError(
                f"{name}: mask values that map to no class in [0, {self.num_classes}) under label map "
                f"{json.dumps(self.spec)}: {describe(bad)}"
            )


def _pack(colour: Colour) -> int:
    red, green, blue = colour
    return (red << 16) | (green << 8) | blue


def _pack_image(rgb: np.ndarray) -> np.ndarray:
    channels = rgb[..., :3].astype(np.uint32)
    return (channels[..., 0] << 16) | (channels[..., 1] << 8) | channels[..., 2]


def _describe_pixels(mask: np.ndarray, class_ids: np.ndarray, bad: np.ndarray) -> str:
    values, first = np.unique(mask[bad], return_index=True)
    classes = class_ids[bad][first]
    return _listing(f"pixel {v}" if c < 0 else f"pixel {v} (class {c})" for v, c in zip(values, classes))


def _describe_colours(packed: np.ndarray, class_ids: np.ndarray, bad: np.ndarray) -> str:
    values, first = np.unique(packed[bad], return_index=True)
    classes = class_ids[bad][first]
    texts = []
    for value, class_id in zip(values.tolist(), classes.tolist()):
        colour = f"colour {value >> 16},{(value >> 8) & 255},{value & 255}"
        texts.append(colour if class_id < 0 else f"{colour} (class {class_id})")
    return _listing(texts)


def _listing(texts) -> str:
    items: List[str] = list(texts)
    shown = ", ".join(items[:_MAX_LISTED])
    return shown if len(items) <= _MAX_LISTED else f"{shown} and {len(items) - _MAX_LISTED} more"


def parse_label_map(raw: object, num_classes: int, source: str = "label map") -> LabelMap:
    """Validate a label map's JSON value; a UserError names `source` and what is wrong."""
    if not isinstance(raw, dict) or len(raw) != 1 or next(iter(raw)) not in ("scale", "map", "palette"):
        raise UserError(
            f'{source}: must be one of {{"scale": "N"}}, {{"map": {{"class_id": pixel, ...}}}} or '
            f'{{"palette": {{"r,g,b": class_id, ...}}}}, not {json.dumps(raw)[:200]}'
        )
    kind, value = next(iter(raw.items()))
    if kind == "scale":
        return LabelMap.from_scale(_int_field(value, source, "scale", 1, 255), num_classes)
    if kind == "map":
        return LabelMap.from_class_to_pixel(_class_to_pixel(value, num_classes, source), num_classes)
    return LabelMap.from_palette(_colour_to_class(value, num_classes, source), num_classes)


def _int_field(value: object, source: str, what: str, low: int, high: int) -> int:
    try:
        number = int(str(value).strip()) if not isinstance(value, bool) else None
    except ValueError:
        number = None
    if number is None or not low <= number <= high:
        raise UserError(f"{source}: {what} {value!r} must be an integer in [{low}, {high}]")
    return number


def _class_to_pixel(value: object, num_classes: int, source: str) -> Dict[int, int]:
    if not isinstance(value, dict) or not value:
        raise UserError(f'{source}: "map" must be a non-empty object {{"class_id": pixel_value}}')
    mapping: Dict[int, int] = {}
    owner: Dict[int, int] = {}
    for key, pixel_value in value.items():
        class_id = _int_field(key, source, "class id", 0, num_classes - 1)
        pixel = _int_field(pixel_value, source, f"pixel value of class {key}", 0, 255)
        if pixel in owner:
            raise UserError(
                f"{source}: pixel value {pixel} is given to class {owner[pixel]} and class {class_id}"
            )
        owner[pixel] = class_id
        mapping[class_id] = pixel
    return mapping


def _colour_to_class(value: object, num_classes: int, source: str) -> Dict[Colour, int]:
    if not isinstance(value, dict) or not value:
        raise UserError(f'{source}: "palette" must be a non-empty object {{"r,g,b": class_id}}')
    mapping: Dict[Colour, int] = {}
    for key, class_value in value.items():
        colour = _parse_colour(key, source)
        class_id = _int_field(class_value, source, f"class id of colour {key!r}", 0, 255)
        if class_id >= num_classes and class_id != IGNORE:
            raise UserError(
                f"{source}: colour {key!r} maps to class {class_id}, but num_classes is {num_classes} "
                "(use 255 to ignore a colour)"
            )
        mapping[colour] = class_id
    return mapping


def _parse_colour(key: str, source: str) -> Colour:
    parts = str(key).split(",")
    try:
        channels = tuple(int(part.strip()) for part in parts)
    except ValueError:
        channels = ()
    if len(channels) != 3 or not all(0 <= c <= 255 for c in channels):
        raise UserError(f'{source}: palette colour {key!r} must be "r,g,b" with each in [0, 255]')
    return channels  # type: ignore[return-value]


def load_label_map(path: Optional[Path], num_classes: int) -> LabelMap:
    """The label map in `path`, or the built-in's default `{"scale": "1"}` when there is none."""
    if path is None:
        return LabelMap.from_scale(1, num_classes)
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"cannot read label map {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise UserError(f"label map {path} is not valid JSON: {exc}") from None
    return parse_label_map(raw, num_classes, source=str(path))


def label_map_file(label_map_dir: Optional[Path], split: str) -> Optional[Path]:
    """`<split>_label_map.json` in the label_map channel; validation falls back to the training map."""
    if label_map_dir is None:
        return None
    for candidate in (f"{split}_label_map.json", "train_label_map.json"):
        path = Path(label_map_dir) / candidate
        if path.is_file():
            return path
    return None
