"""The Oxford-IIIT Pet dataset as its two archives unpack (images.tar.gz, annotations.tar.gz):

    images/<Name>.jpg                       (plus junk: a few .mat files, AppleDouble ._* files; some JPEGs
                                             are greyscale or CMYK)
    annotations/trimaps/<Name>.png          1 pet, 2 background, 3 border (the "not sure" outline)
    annotations/trainval.txt, test.txt      lines "Name CLASS-ID SPECIES BREED-ID" (species 1 cat, 2 dog;
                                             CLASS-ID 1..37 the breed); trainval -> train, test -> validation

The border becomes ignore. `binary` copies the trimaps as they are with the ignore-aware label map
{"map": {"0": 2, "1": 1}, "ignore": [3]}; `species` and `breeds` rewrite them, the pet pixels taking the
image's class.
"""

from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from segmaker.data.labelmaps import parse_label_map
from segmaker.errors import DataError, UserError
from segmaker.prepare.dataset import APPLEDOUBLE, Dataset, Pair, Summary, is_appledouble

CLASS_CHOICES = ("binary", "species", "breeds")
LISTS = (("trainval.txt", "train"), ("test.txt", "validation"))
TRIMAP_LABEL_MAP = {"map": {"0": 2, "1": 1}, "ignore": [3]}


class _Entry:
    """One line of a list file."""

    def __init__(self, name: str, breed: int, species: int, where: str):
        self.name, self.breed, self.species, self.where = name, breed, species, where


def read(source: Path, classes: str = "binary") -> Dataset:
    """The dataset under `source` (the folder holding images/ and annotations/)."""
    if classes not in CLASS_CHOICES:
        raise UserError(f"--classes must be one of {', '.join(CLASS_CHOICES)}, not {classes!r}")
    images, trimaps = source / "images", source / "annotations" / "trimaps"
    for folder in (images, trimaps):
        if not folder.is_dir():
            raise UserError(f"{source} is not the Oxford-IIIT Pet layout: {folder} is missing")
    splits = {split: _read_list(source / "annotations" / list_name) for list_name, split in LISTS}
    summary = Summary()
    listed = {entry.name for entries in splits.values() for entry in entries}
    _skip_unlisted(images, listed, ".jpg", "image", summary)
    _skip_unlisted(trimaps, listed, ".png", "trimap", summary)
    names = _class_names(classes, [e for entries in splits.values() for e in entries])
    pairs = {split: [_pair(e, images, trimaps, classes) for e in entries]
             for split, entries in splits.items()}
    return Dataset(pairs["train"], pairs["validation"], names, summary,
                   label_map=TRIMAP_LABEL_MAP if classes == "binary" else None)


def _read_list(path: Path) -> List[_Entry]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror} (the annotations archive has it)") from None
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split()
        try:
            name, breed, species = fields[0], int(fields[1]), int(fields[2])
        except (IndexError, ValueError):
            raise DataError(
                f"{path} line {number}: expected 'Name CLASS-ID SPECIES BREED-ID', got {line!r}"
            ) from None
        if not 1 <= breed <= 37 or species not in (1, 2):
            raise DataError(f"{path} line {number}: CLASS-ID must be 1..37 and SPECIES 1 or 2, got {line!r}")
        entries.append(_Entry(name, breed, species, f"{path.name} line {number}"))
    return entries


def _skip_unlisted(folder: Path, listed: set, suffix: str, what: str, summary: Summary) -> None:
    """Count and list every file of `folder` that is not a listed sample's (the junk the archives hold)."""
    for path in sorted(folder.iterdir()):
        if is_appledouble(path):
            summary.skip(APPLEDOUBLE, path)
        elif path.suffix.lower() != suffix:
            summary.skip(f"not a {suffix} {what} ({path.suffix or 'no suffix'})", path)
        elif path.stem not in listed:
            summary.skip(f"{what} in neither trainval.txt nor test.txt", path)


def _class_names(classes: str, entries: List[_Entry]) -> Tuple[str, ...]:
    if classes == "binary":
        return ("background", "pet")
    if classes == "species":
        return ("background", "cat", "dog")
    breeds: Dict[int, str] = {}
    for entry in entries:  # "Abyssinian_100" -> Abyssinian; "american_bulldog_12" -> american_bulldog
        breeds.setdefault(entry.breed, entry.name.rsplit("_", 1)[0])
    # Always all 37 (class id = CLASS-ID), so models of any subset share one numbering.
    return ("background",) + tuple(breeds.get(k, f"breed_{k}") for k in range(1, 38))


def _pair(entry: _Entry, images: Path, trimaps: Path, classes: str) -> Pair:
    image, trimap = images / f"{entry.name}.jpg", trimaps / f"{entry.name}.png"
    if not image.is_file():
        raise DataError(f"{entry.where} lists {entry.name}, but {image} does not exist")
    if not trimap.is_file():
        raise DataError(f"image {image} has no trimap: {trimap} does not exist")
    if classes == "binary":
        return Pair(entry.name, image, trimap)
    pet_class = entry.species if classes == "species" else entry.breed
    return Pair(entry.name, image, trimap, convert=_pet_as(pet_class))


_TRIMAP = parse_label_map(TRIMAP_LABEL_MAP, 2, source="trimap")


def _pet_as(pet_class: int):
    def convert(trimap: np.ndarray, name: str) -> np.ndarray:
        binary = _TRIMAP.to_class_ids(trimap, name)  # background 0, pet 1, border 255; errors name the file
        return np.where(binary == 1, pet_class, binary).astype(np.uint8)

    return convert
