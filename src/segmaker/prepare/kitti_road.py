"""KITTI road (data_road.zip) as it unpacks:

    training/image_2/{um,umm,uu}_NNNNNN.png
    training/gt_image_2/{um,umm,uu}_road_NNNNNN.png   magenta 255,0,255 road; red 255,0,0 not road;
                                                       black 0,0,0 don't care (-> ignore)
    training/gt_image_2/um_lane_NNNNNN.png            lane ground truth: skipped (another task)
    testing/                                          no ground truth: skipped

Masks are rewritten as class ids (0 not road, 1 road, 255 ignore) through the palette label map, so any
other colour fails here naming the file; validation is a seeded fraction of the training pairs.
"""

import re
from pathlib import Path
from typing import Dict

from segmaker.data.labelmaps import parse_label_map
from segmaker.errors import DataError, UserError
from segmaker.prepare.dataset import APPLEDOUBLE, Dataset, Pair, Summary, is_appledouble, split_by_fraction

ROAD_PALETTE = {"palette": {"255,0,255": 1, "255,0,0": 0, "0,0,0": 255}}
CLASS_NAMES = ("not_road", "road")
_IMAGE = re.compile(r"^(um|umm|uu)_(\d{6})\.png$")
_GROUND_TRUTH = re.compile(r"^(um|umm|uu)_(road|lane)_(\d{6})\.png$")
_PALETTE = parse_label_map(ROAD_PALETTE, 2, source="KITTI road colours")


def read(source: Path, validation_fraction: float, seed: int) -> Dataset:
    """The dataset under `source` (the folder holding training/ and, often, testing/)."""
    images, truths = source / "training" / "image_2", source / "training" / "gt_image_2"
    for folder in (images, truths):
        if not folder.is_dir():
            raise UserError(f"{source} is not the KITTI road layout: {folder} is missing")
    summary = Summary()
    roads = _road_ground_truth(truths, summary)
    pairs = []
    for path in sorted(images.iterdir()):
        match = _IMAGE.match(path.name)
        if is_appledouble(path) or not match:
            summary.skip(APPLEDOUBLE if is_appledouble(path) else "not a KITTI road image name", path)
            continue
        key = f"{match.group(1)}_{match.group(2)}"
        if key not in roads:
            expected = truths / f"{match.group(1)}_road_{match.group(2)}.png"
            raise DataError(f"image {path} has no road ground truth: {expected} does not exist")
        pairs.append(Pair(key, path, roads.pop(key), convert=_PALETTE.to_class_ids, rgb_mask=True))
    for _, orphan in sorted(roads.items()):
        summary.skip("road ground truth without its image", orphan)
    _skip_testing(source / "testing", summary)
    train, validation = split_by_fraction(pairs, validation_fraction, seed)
    return Dataset(train, validation, CLASS_NAMES, summary)


def _road_ground_truth(folder: Path, summary: Summary) -> Dict[str, Path]:
    roads = {}
    for path in sorted(folder.iterdir()):
        match = _GROUND_TRUTH.match(path.name)
        if is_appledouble(path) or not match:
            summary.skip(APPLEDOUBLE if is_appledouble(path) else "not a KITTI ground-truth name", path)
        elif match.group(2) == "lane":
            summary.skip("lane ground truth (not the road task)", path)
        else:
            roads[f"{match.group(1)}_{match.group(3)}"] = path
    return roads


def _skip_testing(testing: Path, summary: Summary) -> None:
    if testing.is_dir():
        for path in sorted(p for p in testing.rglob("*") if p.is_file()):
            summary.skip("testing/ has no ground truth", path)
