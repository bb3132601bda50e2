"""Samples before decoding, and File-mode discovery of (image, mask) pairs.

`EncodedSample` is the unit File mode and Pipe mode share: a name and the encoded bytes of an image and its
mask. In File mode the pairs are found once (`find_file_samples`) and each decoding worker reads its own files
(`FileSample.read()`), so the main process never touches image bytes.

Two File-mode layouts, per split ("train" or "validation"):
- the built-in's: channel `train` holds images (.jpg/.jpeg/.png), channel `train_annotation` the .png masks,
  matched by base name (and sub-folder, when the channel has sub-folders);
- ours: one channel `train` holding `images/` and `masks/` folders.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from segmaker.environment import Paths
from segmaker.errors import DataError, UserError

SPLITS = ("train", "validation")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MASK_SUFFIXES = (".png",)
_MAX_LISTED = 5


@dataclass(frozen=True)
class EncodedSample:
    """One sample's encoded bytes; `name` (and `mask_name`, when known) identify it in error messages."""

    name: str
    image: bytes
    mask: bytes
    mask_name: Optional[str] = None

    @property
    def mask_label(self) -> str:
        return self.mask_name or f"mask of {self.name}"

    def read(self) -> "EncodedSample":
        """Already in memory (Pipe mode); lets workers treat File and Pipe samples alike."""
        return self


@dataclass(frozen=True)
class FileSample:
    """A File-mode pair of paths; cheap to send to a worker process, which reads the bytes itself."""

    image_path: Path
    mask_path: Path

    @property
    def name(self) -> str:
        return str(self.image_path)

    def read(self) -> EncodedSample:
        return EncodedSample(
            name=str(self.image_path),
            image=_read_bytes(self.image_path),
            mask=_read_bytes(self.mask_path),
            mask_name=str(self.mask_path),
        )


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None


@dataclass(frozen=True)
class FileChannel:
    """Where a split's images and masks live, and how that was decided (for messages)."""

    split: str
    image_dir: Path
    mask_dir: Path

    def describe(self) -> str:
        return f"images in {self.image_dir}, masks in {self.mask_dir}"


def locate_split(paths: Paths, split: str) -> FileChannel:
    """The folders holding `split`'s images and masks, in either layout; UserError when there are none."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    channel = paths.channel_dir(split)
    annotation = paths.channel_dir(split + "_annotation")
    if not channel.is_dir():
        raise UserError(
            "missing channel {!r} (expected the folder {}): give {!r} and {!r}, or one {!r} channel holding "
            "images/ and masks/".format(split, channel, split, split + "_annotation", split)
        )
    if annotation.is_dir():
        return FileChannel(split, channel, annotation)
    if (channel / "images").is_dir() and (channel / "masks").is_dir():
        return FileChannel(split, channel / "images", channel / "masks")
    raise UserError(
        "channel {!r} has no masks: add the channel {!r} (expected the folder {}), or put images/ and "
        "masks/ folders inside {}".format(split, split + "_annotation", annotation, channel)
    )


def has_split(paths: Paths, split: str) -> bool:
    """Whether a File-mode channel for `split` was given at all."""
    return paths.channel_dir(split).is_dir()


def find_file_samples(paths: Paths, split: str) -> List[FileSample]:
    """Every (image, mask) pair of `split`, sorted by name; DataError for unpaired or missing files."""
    channel = locate_split(paths, split)
    images = _files_by_key(channel.image_dir, IMAGE_SUFFIXES, "image")
    masks = _files_by_key(channel.mask_dir, MASK_SUFFIXES, "mask")
    if not images:
        raise DataError(
            "no images ({}) in {} for split {!r}".format(", ".join(IMAGE_SUFFIXES), channel.image_dir, split)
        )
    _check_pairing(images, masks, channel)
    return [FileSample(images[key], masks[key]) for key in sorted(images)]


def _files_by_key(folder: Path, suffixes: Sequence[str], what: str) -> Dict[str, Path]:
    """Files under `folder` keyed by their relative path without suffix; hidden files are skipped."""
    found: Dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or path.suffix.lower() not in suffixes:
            continue
        if not path.is_file():
            continue
        key = relative.with_suffix("").as_posix()
        if key in found:
            raise DataError(f"two {what} files with the same base name: {found[key]} and {path}")
        found[key] = path
    return found


def _check_pairing(images: Dict[str, Path], masks: Dict[str, Path], channel: FileChannel) -> None:
    lonely_images = sorted(set(images) - set(masks))
    lonely_masks = sorted(set(masks) - set(images))
    problems = []
    if lonely_images:
        problems.append(
            f"{len(lonely_images)} image(s) in {channel.image_dir} have no mask (.png of the same base name) "
            f"in {channel.mask_dir}: {_listing(images, lonely_images)}"
        )
    if lonely_masks:
        problems.append(
            f"{len(lonely_masks)} mask(s) in {channel.mask_dir} have no image in {channel.image_dir}: "
            f"{_listing(masks, lonely_masks)}"
        )
    if problems:
        raise DataError("; ".join(problems))


def _listing(files: Dict[str, Path], keys: Sequence[str]) -> str:
    shown = ", ".join(files[key].name for key in keys[:_MAX_LISTED])
    return shown if len(keys) <= _MAX_LISTED else f"{shown}, ... ({len(keys) - _MAX_LISTED} more)"

