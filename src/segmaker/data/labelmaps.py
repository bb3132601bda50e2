"""Label maps: how mask pixels become class ids (np.uint8, 255 = ignore).

Three forms, as JSON:
- `{"scale": "3"}`: class = floor(pixel / 3) (the built-in's default is scale 1: the pixel is the class id);
- `{"map": {"0": 5, "1": 0}}`: keys are class ids, values the pixel values that encode them (the built-in's);
- `{"palette": {"255,0,255": 1, "0,0,0": 255}}`: RGB colour -> class id, 255 = ignore (ours: colour masks).

Ours too: any form may add `"ignore": [3]` (pixel values; "r,g,b" colours for a palette) whose pixels count
in neither loss nor metrics, e.g. the Oxford-IIIT Pet trimaps' border: `{"map": {"0": 2, "1": 1},
"ignore": [3]}`.

Pixel 255 means ignore unless the map assigns it to a class. A scale under which 255 would also be a class
(`{"scale": "255"}` on 0/255 masks) is refused: it would silently train on one class. This runs on every
training sample, so it is a single table lookup: a 256-entry table for scale/map masks, a sorted table of
packed RGB values for palettes.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

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
    def from_scale(cls, scale: int, num_classes: int, ignore: Sequence[int] = ()) -> "LabelMap":
        """class = floor(pixel / scale); 255 and the `ignore` pixel values are ignored."""
        table = np.full(256, _UNMAPPED, dtype=np.int16)
        values = np.arange(255)
        table[:255] = values // scale
        table[IGNORE] = IGNORE
        table[list(ignore)] = IGNORE
        return cls(num_classes, "scale", _with_ignore({"scale": str(scale)}, ignore), table)

    @classmethod
    def from_class_to_pixel(
        cls, class_to_pixel: Mapping[int, int], num_classes: int, ignore: Sequence[int] = ()
    ) -> "LabelMap":
        """Pixel value -> class as listed; 255 (unless a class claims it) and `ignore` are ignored."""
        table = np.full(256, _UNMAPPED, dtype=np.int16)
        table[IGNORE] = IGNORE  # overwritten below if a class claims pixel 255
        for class_id, pixel in class_to_pixel.items():
            table[pixel] = class_id
        table[list(ignore)] = IGNORE
        spec = {"map": {str(c): p for c, p in sorted(class_to_pixel.items())}}
        return cls(num_classes, "map", _with_ignore(spec, ignore), table)

    @classmethod
    def from_palette(
        cls, colour_to_class: Mapping[Colour, int], num_classes: int, ignore: Sequence[Colour] = ()
    ) -> "LabelMap":
        """Colour -> class id (255 = ignore); the `ignore` colours are ignored too."""
        every = dict(colour_to_class)
        every.update({colour: IGNORE for colour in ignore})
        items = sorted((_pack(colour), class_id) for colour, class_id in every.items())
        colours = np.array([packed for packed, _ in items], dtype=np.uint32)
        classes = np.array([class_id for _, class_id in items], dtype=np.int16)
        spec = {"palette": {_colour_text(c): k for c, k in sorted(colour_to_class.items())}}
        spec = _with_ignore(spec, [_colour_text(c) for c in ignore])
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


def _with_ignore(spec: Dict[str, object], ignore: Sequence[object]) -> Dict[str, object]:
    """The canonical JSON form: "ignore" only when something is ignored, sorted."""
    return dict(spec, ignore=sorted(set(ignore))) if ignore else spec


def _colour_text(colour: Colour) -> str:
    return "{},{},{}".format(*colour)


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


FORMS = ("scale", "map", "palette")


def parse_label_map(raw: object, num_classes: int, source: str = "label map") -> LabelMap:
    """Validate a label map's JSON value; a UserError names `source` and what is wrong."""
    forms = [key for key in FORMS if isinstance(raw, dict) and key in raw]
    if len(forms) != 1 or set(raw) - {forms[0], "ignore"}:
        raise UserError(
            f'{source}: must be one of {{"scale": "N"}}, {{"map": {{"class_id": pixel, ...}}}} or '
            f'{{"palette": {{"r,g,b": class_id, ...}}}}, optionally with "ignore": [pixel values or "r,g,b" '
            f"colours], not {json.dumps(raw)[:200]}"
        )
    kind = forms[0]
    value, ignore = raw[kind], raw.get("ignore", [])
    if kind == "palette":
        colours = _colour_to_class(value, num_classes, source)
        return LabelMap.from_palette(colours, num_classes, _ignored_colours(ignore, colours, source))
    ignored = _ignored_pixels(ignore, source)
    if kind == "scale":
        scale = _int_field(value, source, "scale", 1, 255)
        _check_scale_keeps_ignore(scale, num_classes, ignored, source)
        return LabelMap.from_scale(scale, num_classes, ignored)
    mapping = _class_to_pixel(value, num_classes, source)
    _check_not_both(ignored, {pixel: f"class {c}" for c, pixel in mapping.items()}, "pixel value", source)
    return LabelMap.from_class_to_pixel(mapping, num_classes, ignored)


def _ignored_pixels(value: object, source: str) -> List[int]:
    if not isinstance(value, list):
        raise UserError(f'{source}: "ignore" must be a list of pixel values ([3]), not {json.dumps(value)}')
    return [_int_field(item, source, "ignored pixel value", 0, 255) for item in value]


def _ignored_colours(value: object, colours: Mapping[Colour, int], source: str) -> List[Colour]:
    if not isinstance(value, list):
        raise UserError(f'{source}: "ignore" must be a list of "r,g,b" colours, not {json.dumps(value)}')
    ignored = [_parse_colour(item, source) for item in value]
    named = {colour: f"class {c}" for colour, c in colours.items() if c != IGNORE}
    _check_not_both(ignored, named, "colour", source)
    return ignored


def _check_not_both(ignored: Sequence[object], owners: Mapping[object, str], what: str, source: str) -> None:
    for item in ignored:
        if item in owners:
            shown = _colour_text(item) if isinstance(item, tuple) else item
            raise UserError(f"{source}: {what} {shown} is given to {owners[item]} and to ignore")


def _check_scale_keeps_ignore(scale: int, num_classes: int, ignored: Sequence[int], source: str) -> None:
    """Refuse a scale under which pixel 255 would be a class as well as ignore (unless "ignore" says which).

    `{"scale": "255"}` on 0/255 masks makes 255 class 1 by the scale but ignore by convention: the job would
    train on background alone. Propose the map that was most likely meant: the classes below at multiples of
    the scale, the class that 255 falls in at 255.
    """
    top_class = IGNORE // scale
    if top_class >= num_classes or IGNORE in ignored:
        return
    meant = {str(k): k * scale for k in range(top_class)}
    meant[str(top_class)] = IGNORE
    raise UserError(
        f'{source}: under {{"scale": "{scale}"}} pixel 255 would be class {top_class}, but 255 also means '
        f"ignore, so those pixels would silently not be trained on. If pixel 255 is class {top_class} (masks "
        f"stored as {', '.join(str(v) for v in meant.values())}), use {json.dumps({'map': meant})}; if 255 "
        f'marks pixels to ignore, say so: {{"scale": "{scale}", "ignore": [255]}}'
    )


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
