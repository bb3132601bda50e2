"""What every dataset reader produces, and the bookkeeping they share: pairs, the summary, the split.

A reader (oxford_pets, kitti_road, folders) looks at a dataset in its published layout and returns a
`Dataset`: which image goes with which mask in which split, the classes, the label map (when the masks are
copied as they are) or a converter (when they are rewritten), and a `Summary` of every file it skipped.
`writer.write_channels` then does the I/O.
"""

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

# Takes the mask's pixels (HxW, or HxWx3 when `rgb`) and the file's name for errors; returns HxW class ids.
MaskConverter = Callable[[np.ndarray, str], np.ndarray]
APPLEDOUBLE = "AppleDouble file (macOS metadata, ._*)"
_SHOWN = 10  # files listed per reason on the terminal; the summary file lists them all


@dataclass(frozen=True)
class Pair:
    """One image and its mask; `name` is the base name both get in the channels."""

    name: str
    image: Path
    mask: Path
    convert: Optional[MaskConverter] = None  # None: the mask is copied as it is (then a label map reads it)
    rgb_mask: bool = False  # the converter wants the mask's RGB colours, not its index/grey values


@dataclass
class Summary:
    """Every file skipped or repaired, by reason (the reason says what happened and why)."""

    skipped: Dict[str, List[str]] = field(default_factory=dict)
    repaired: Dict[str, List[str]] = field(default_factory=dict)

    def skip(self, reason: str, path: Path) -> None:
        self.skipped.setdefault(reason, []).append(str(path))

    def repair(self, reason: str, path: Path) -> None:
        self.repaired.setdefault(reason, []).append(str(path))

    def counts(self) -> Tuple[int, int]:
        return sum(map(len, self.skipped.values())), sum(map(len, self.repaired.values()))

    def to_json(self) -> Dict[str, object]:
        skipped, repaired = self.counts()
        return {"skipped": skipped, "repaired": repaired, "skipped_files": self.skipped,
                "repaired_files": self.repaired}

    def text(self) -> str:
        skipped, repaired = self.counts()
        lines = [f"skipped {skipped} file(s), repaired {repaired}"]
        for verb, table in (("skipped", self.skipped), ("repaired", self.repaired)):
            for reason, files in sorted(table.items()):
                shown = ", ".join(Path(f).name for f in files[:_SHOWN])
                more = f" and {len(files) - _SHOWN} more" if len(files) > _SHOWN else ""
                lines.append(f"  {verb} {len(files)}: {reason}: {shown}{more}")
        return "\n".join(lines)


@dataclass
class Dataset:
    """A dataset ready to write: the pairs of each split, the classes, how masks are read."""

    train: List[Pair]
    validation: List[Pair]
    class_names: Tuple[str, ...]
    summary: Summary
    label_map: Optional[Dict[str, object]] = None  # written to the label_map channel when masks are copied
    notes: List[str] = field(default_factory=list)  # decisions to tell the user (e.g. discovered values)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def split_by_fraction(pairs: Sequence[Pair], fraction: float, seed: int) -> Tuple[List[Pair], List[Pair]]:
    """(train, validation): a seeded shuffle of the pairs sorted by name, the first `fraction` to validation
    (at least one pair when the fraction is above 0 and there are two or more pairs)."""
    ordered = sorted(pairs, key=lambda pair: pair.name)
    random.Random(seed).shuffle(ordered)
    count = int(round(fraction * len(ordered)))
    if fraction > 0 and len(ordered) >= 2:
        count = min(max(count, 1), len(ordered) - 1)
    validation = sorted(ordered[:count], key=lambda pair: pair.name)
    train = sorted(ordered[count:], key=lambda pair: pair.name)
    return train, validation


def is_appledouble(path: Path) -> bool:
    return path.name.startswith("._")
