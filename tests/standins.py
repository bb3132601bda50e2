"""Small fake datasets in the published layouts `segmaker prepare` reads, junk included, easy to learn.

- `write_oxford_pets(root, ...)`: images/*.jpg, annotations/trimaps/*.png (1 pet, 2 background, 3 border),
  annotations/trainval.txt and test.txt ("Name CLASS-ID SPECIES BREED-ID"); cats are orange ellipses and dogs
  blue ones on a green-grey textured background. Junk as in the real archives: AppleDouble ._* files,
  .mat files among the images, a greyscale and a CMYK JPEG, an image in neither list, xmls/.
- `write_kitti_road(root, ...)`: training/image_2/{um,umm,uu}_NNNNNN.png, training/gt_image_2/*_road_*.png
  (magenta road, red not road, black don't care) and um_lane_*.png, testing/image_2, AppleDouble files.
- `write_folders(root, ...)`: images/*.png tiles with 0/255 .png masks (a bright road band across each).
Used by tests/test_prepare*.py and the recipes' local-mode tests.
"""

from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image, ImageDraw

BREEDS = ((1, "Abyssinian", 1), (2, "american_bulldog", 2), (3, "Bengal", 1), (4, "beagle", 2))
CAT_COLOUR, DOG_COLOUR = (235, 140, 40), (40, 80, 220)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    noise = rng.integers(-25, 26, size=(height, width, 1))
    return np.clip(np.array([110, 130, 100]) + noise, 0, 255).astype(np.uint8)


def _pet(rng: np.random.Generator, size: Tuple[int, int], species: int) -> Tuple[np.ndarray, np.ndarray]:
    """(RGB image, trimap) with one pet ellipse; its 2-pixel outline is the trimap's border (3)."""
    height, width = size
    image = _background(rng, height, width)
    box = [int(rng.integers(2, width // 3)), int(rng.integers(2, height // 3)),
           int(rng.integers(2 * width // 3, width - 2)), int(rng.integers(2 * height // 3, height - 2))]
    shape = Image.new("L", (width, height), 0)
    ImageDraw.Draw(shape).ellipse(box, fill=1)
    inside = np.asarray(shape, dtype=bool)
    image[inside] = CAT_COLOUR if species == 1 else DOG_COLOUR
    ring = Image.new("L", (width, height), 0)
    ImageDraw.Draw(ring).ellipse(box, outline=1, width=2)
    trimap = np.where(inside, 1, 2).astype(np.uint8)
    trimap[np.asarray(ring, dtype=bool)] = 3
    return image, trimap


def write_oxford_pets(root: Path, per_list: Tuple[int, int] = (12, 4), size: Tuple[int, int] = (40, 52),
                      seed: int = 0) -> Dict[str, List[str]]:
    """The two archives unpacked under `root`; returns {"trainval": names, "test": names, "junk": paths}."""
    rng = np.random.default_rng(seed)
    images, trimaps = root / "images", root / "annotations" / "trimaps"
    for folder in (images, trimaps, root / "annotations" / "xmls"):
        folder.mkdir(parents=True, exist_ok=True)
    written: Dict[str, List[str]] = {"trainval": [], "test": [], "junk": []}
    for list_name, count in zip(("trainval", "test"), per_list):
        lines = []
        for index in range(count):
            breed, breed_name, species = BREEDS[index % len(BREEDS)]
            name = f"{breed_name}_{index + (0 if list_name == 'trainval' else 100)}"
            image, trimap = _pet(rng, size, species)
            Image.fromarray(image).save(str(images / f"{name}.jpg"), quality=95)
            Image.fromarray(trimap, mode="L").save(str(trimaps / f"{name}.png"))
            lines.append(f"{name} {breed} {species} {index // len(BREEDS) + 1}")
            written[list_name].append(name)
        (root / "annotations" / f"{list_name}.txt").write_text("\n".join(lines) + "\n")
    _oxford_junk(root, written, rng, size)
    return written


def _oxford_junk(root: Path, written: Dict[str, List[str]], rng, size: Tuple[int, int]) -> None:
    images, trimaps = root / "images", root / "annotations" / "trimaps"
    grey_name, cmyk_name = written["trainval"][0], written["trainval"][1]
    # The real archive's few greyscale and CMYK JPEGs: same pictures, other colour modes.
    Image.open(str(images / f"{grey_name}.jpg")).convert("L").save(str(images / f"{grey_name}.jpg"))
    Image.open(str(images / f"{cmyk_name}.jpg")).convert("CMYK").save(str(images / f"{cmyk_name}.jpg"))
    junk = [images / "Abyssinian_101.mat", images / "._Abyssinian_0.jpg", trimaps / "._Abyssinian_0.png",
            images / "Unlisted_7.jpg"]
    for path in junk[:3]:
        path.write_bytes(b"\x00\x05\x16\x07 not an image")
    Image.fromarray(_pet(rng, size, 1)[0]).save(str(junk[3]))
    (root / "annotations" / "xmls" / f"{grey_name}.xml").write_text("<annotation/>")
    written["junk"] = [str(p) for p in junk]


ROAD, NOT_ROAD, DONT_CARE = (255, 0, 255), (255, 0, 0), (0, 0, 0)


def _road_scene(rng: np.random.Generator, size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """(RGB image, colour ground truth): a dark grey road trapezoid at the bottom, green-blue above; the
    top rows are don't-care (black) in the ground truth, as KITTI's are outside the road area of interest."""
    height, width = size
    image = np.zeros((height, width, 3), np.uint8)
    image[:] = (90, 150, 210)
    image[height // 3:] = (60, 140, 60)
    image = np.clip(image.astype(int) + rng.integers(-20, 21, size=(height, width, 1)), 0, 255)
    image = image.astype(np.uint8)
    top = int(rng.integers(height // 2, 2 * height // 3))
    centre = int(rng.integers(width // 3, 2 * width // 3))
    road = Image.new("L", (width, height), 0)
    corners = [(centre - 3, top), (centre + 3, top), (width - 1, height - 1), (0, height - 1)]
    ImageDraw.Draw(road).polygon(corners, fill=1)
    on_road = np.asarray(road, dtype=bool)
    image[on_road] = np.clip(70 + rng.integers(-10, 11, size=(int(on_road.sum()), 1)), 0, 255)
    truth = np.zeros((height, width, 3), np.uint8)
    truth[:] = NOT_ROAD
    truth[on_road] = ROAD
    truth[: height // 5] = DONT_CARE
    return image, truth


def write_kitti_road(root: Path, counts: Dict[str, int] = None, size: Tuple[int, int] = (36, 60),
                     seed: int = 0) -> List[str]:
    """training/ and testing/ under `root`; returns the names of the training pairs (e.g. "um_000000")."""
    counts = counts or {"um": 6, "umm": 6, "uu": 4}
    rng = np.random.default_rng(seed)
    images, truths = root / "training" / "image_2", root / "training" / "gt_image_2"
    testing = root / "testing" / "image_2"
    for folder in (images, truths, testing):
        folder.mkdir(parents=True, exist_ok=True)
    names = []
    for category, count in counts.items():
        for index in range(count):
            image, truth = _road_scene(rng, size)
            Image.fromarray(image).save(str(images / f"{category}_{index:06d}.png"))
            Image.fromarray(truth).save(str(truths / f"{category}_road_{index:06d}.png"))
            if category == "um":
                Image.fromarray(truth).save(str(truths / f"um_lane_{index:06d}.png"))
            names.append(f"{category}_{index:06d}")
    Image.fromarray(_road_scene(rng, size)[0]).save(str(testing / "um_000000.png"))
    (images / "._um_000000.png").write_bytes(b"\x00\x05\x16\x07")
    (truths / "._um_road_000000.png").write_bytes(b"\x00\x05\x16\x07")
    return names


def write_folders(root: Path, count: int = 16, size: Tuple[int, int] = (48, 48), seed: int = 0) -> None:
    """images/tile_NNN.png (RGB) and masks/tile_NNN.png (L, 0 background, 255 road): one road band."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    height, width = size
    for index in range(count):
        image = _background(rng, height, width)
        mask = Image.new("L", (width, height), 0)
        start = int(rng.integers(0, height))
        ImageDraw.Draw(mask).line([(0, start), (width - 1, int(rng.integers(0, height)))], fill=255, width=7)
        road = np.asarray(mask) == 255
        image[road] = (225, 225, 215)
        Image.fromarray(image).save(str(root / "images" / f"tile_{index:03d}.png"))
        mask.save(str(root / "masks" / f"tile_{index:03d}.png"))
