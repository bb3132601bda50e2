"""`segmaker prepare` on stand-ins of each dataset in its published layout, junk included (no training here:
tests/test_prepare_training.py trains on what these commands write)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segmaker import cli
from segmaker.data.labelmaps import parse_label_map
from tests.standins import DOG_COLOUR, write_folders, write_kitti_road, write_oxford_pets


def prepare(*args) -> int:
    return cli.main(["prepare", *map(str, args)])


def summary_of(output: Path) -> dict:
    return json.loads((output / "prepare_summary.json").read_text())


def names_in(folder: Path):
    return sorted(p.stem for p in folder.iterdir())


def test_oxford_pets_binary_copies_trimaps_with_the_ignore_aware_label_map(tmp_path, capsys):
    written = write_oxford_pets(tmp_path / "pets")
    out = tmp_path / "out"
    assert prepare("oxford-pets", tmp_path / "pets", out) == 0
    assert names_in(out / "train") == sorted(written["trainval"])
    assert names_in(out / "validation_annotation") == sorted(written["test"])
    label_map = json.loads((out / "label_map" / "train_label_map.json").read_text())
    assert label_map == {"map": {"0": 2, "1": 1}, "ignore": [3]}
    validation_map = json.loads((out / "label_map" / "validation_label_map.json").read_text())
    assert validation_map == label_map
    name = written["trainval"][5]
    original = (tmp_path / "pets" / "annotations" / "trimaps" / f"{name}.png").read_bytes()
    assert (out / "train_annotation" / f"{name}.png").read_bytes() == original  # the trimap, as it is
    assert json.loads((out / "hyperparameters.json").read_text()) == {"num_classes": "2",
                                                                      "class_names": "background,pet"}
    summary = summary_of(out)
    assert summary["skipped"] == 4 and summary["repaired"] == 2
    skipped = {why: sorted(Path(f).name for f in files) for why, files in summary["skipped_files"].items()}
    assert skipped["AppleDouble file (macOS metadata, ._*)"] == ["._Abyssinian_0.jpg", "._Abyssinian_0.png"]
    assert skipped["not a .jpg image (.mat)"] == ["Abyssinian_101.mat"]
    assert skipped["image in neither trainval.txt nor test.txt"] == ["Unlisted_7.jpg"]
    repaired = {reason: [Path(f).name for f in files] for reason, files in summary["repaired_files"].items()}
    assert repaired == {"L JPEG image converted to RGB JPEG": [f"{written['trainval'][0]}.jpg"],
                        "CMYK JPEG image converted to RGB JPEG": [f"{written['trainval'][1]}.jpg"]}
    for path in (out / "train").iterdir():  # every image is now an RGB JPEG
        with Image.open(str(path)) as picture:
            assert (picture.format, picture.mode) == ("JPEG", "RGB"), path
    cmyk_repaired = np.asarray(Image.open(str(out / "train" / f"{written['trainval'][1]}.jpg")))
    trimap = np.asarray(Image.open(str(out / "train_annotation" / f"{written['trainval'][1]}.png")))
    # the CMYK picture came back with its colours: the (dog) pet pixels are near its blue, not inverted
    assert np.abs(cmyk_repaired[trimap == 1].mean(axis=0) - DOG_COLOUR).max() < 25
    text = capsys.readouterr().out
    assert "skipped 4 file(s), repaired 2" in text and "estimator.fit(" in text
    assert f'"train_annotation": "{(out / "train_annotation").resolve().as_uri()}"' in text


@pytest.mark.parametrize("classes,num_classes", [("species", 3), ("breeds", 38)])
def test_oxford_pets_species_and_breeds_rewrite_the_pet_pixels(tmp_path, classes, num_classes):
    written = write_oxford_pets(tmp_path / "pets", per_list=(8, 4))
    out = tmp_path / "out"
    assert prepare("oxford-pets", tmp_path / "pets", out, "--classes", classes) == 0
    hyperparameters = json.loads((out / "hyperparameters.json").read_text())
    names = hyperparameters["class_names"].split(",")
    assert hyperparameters["num_classes"] == str(num_classes) and len(names) == num_classes
    assert not (out / "label_map").exists()
    lines = (tmp_path / "pets" / "annotations" / "trainval.txt").read_text().splitlines()
    for line in lines:
        name, breed, species, _ = line.split()
        mask = np.asarray(Image.open(str(out / "train_annotation" / f"{name}.png")))
        trimap = np.asarray(Image.open(str(tmp_path / "pets" / "annotations" / "trimaps" / f"{name}.png")))
        expected = int(species) if classes == "species" else int(breed)
        assert (mask[trimap == 1] == expected).all() and (mask[trimap == 2] == 0).all()
        assert (mask[trimap == 3] == 255).all()
    if classes == "breeds":
        assert names[:3] == ["background", "Abyssinian", "american_bulldog"] and names[37] == "breed_37"
    assert len(written["trainval"]) == 8


def test_oxford_pets_listed_image_without_trimap_is_an_error_naming_it(tmp_path):
    written = write_oxford_pets(tmp_path / "pets", per_list=(4, 2))
    (tmp_path / "pets" / "annotations" / "trimaps" / f"{written['test'][1]}.png").unlink()
    assert prepare("oxford-pets", tmp_path / "pets", tmp_path / "out") == cli.EXIT_USER_ERROR
    # (the CLI logs the message; check it through the function itself)
    from segmaker.errors import DataError
    from segmaker.prepare import oxford_pets

    with pytest.raises(DataError, match=rf"image .*{written['test'][1]}\.jpg has no trimap"):
        oxford_pets.read(tmp_path / "pets")


def test_oxford_pets_trimap_with_an_unknown_value_fails_naming_the_file(tmp_path):
    from segmaker.errors import DataError
    from segmaker.prepare import oxford_pets, writer

    written = write_oxford_pets(tmp_path / "pets", per_list=(4, 2))
    bad = tmp_path / "pets" / "annotations" / "trimaps" / f"{written['trainval'][2]}.png"
    Image.fromarray(np.full((40, 52), 7, np.uint8)).save(str(bad))
    with pytest.raises(DataError, match=rf"{bad.name}.*pixel 7"):
        writer.write_channels(oxford_pets.read(tmp_path / "pets"), tmp_path / "out")


def test_kitti_road_palette_becomes_class_ids_lane_and_testing_skipped(tmp_path):
    names = write_kitti_road(tmp_path / "kitti")
    out = tmp_path / "out"
    assert prepare("kitti-road", tmp_path / "kitti", out, "--validation-fraction", "0.25", "--seed", "3") == 0
    train, validation = names_in(out / "train"), names_in(out / "validation")
    assert len(validation) == 4 and sorted(train + validation) == sorted(names)
    assert json.loads((out / "hyperparameters.json").read_text())["class_names"] == "not_road,road"
    assert not (out / "label_map").exists()
    truth_file = tmp_path / "kitti" / "training" / "gt_image_2" / "umm_road_000002.png"
    truth = np.asarray(Image.open(str(truth_file)))
    split = "train" if "umm_000002" in train else "validation"
    mask = np.asarray(Image.open(str(out / f"{split}_annotation" / "umm_000002.png")))
    assert mask.ndim == 2 and set(np.unique(mask)) == {0, 1, 255}
    assert (mask == 1).sum() == (truth == (255, 0, 255)).all(axis=2).sum()
    assert (mask == 255).sum() == (truth == 0).all(axis=2).sum()
    summary = summary_of(out)["skipped_files"]
    assert len(summary["lane ground truth (not the road task)"]) == 6
    assert len(summary["testing/ has no ground truth"]) == 1
    assert len(summary["AppleDouble file (macOS metadata, ._*)"]) == 2
    # the same seed gives the same split; another seed another one
    again = tmp_path / "again"
    prepare("kitti-road", tmp_path / "kitti", again, "--validation-fraction", "0.25", "--seed", "3")
    assert names_in(again / "validation") == validation


def test_kitti_road_unknown_colour_fails_naming_the_file(tmp_path):
    from segmaker.errors import DataError
    from segmaker.prepare import kitti_road, writer

    write_kitti_road(tmp_path / "kitti", counts={"uu": 3})
    bad = tmp_path / "kitti" / "training" / "gt_image_2" / "uu_road_000001.png"
    truth = np.asarray(Image.open(str(bad))).copy()
    truth[5, 5] = (10, 20, 30)
    Image.fromarray(truth).save(str(bad))
    with pytest.raises(DataError, match=r"uu_road_000001\.png.*colour 10,20,30"):
        writer.write_channels(kitti_road.read(tmp_path / "kitti", 0.34, 0), tmp_path / "out")


def test_folders_with_0_255_masks_become_binary_with_the_label_map(tmp_path, capsys):
    write_folders(tmp_path / "tiles", count=10)
    out = tmp_path / "out"
    tiles = tmp_path / "tiles"
    assert prepare("folders", "--images", tiles / "images", "--masks", tiles / "masks", out,
                   "--class-names", "background,road") == 0
    label_map = json.loads((out / "label_map" / "train_label_map.json").read_text())
    assert label_map == {"map": {"0": 0, "1": 255}}
    assert json.loads((out / "hyperparameters.json").read_text())["class_names"] == "background,road"
    assert len(names_in(out / "validation")) == 2 and len(names_in(out / "train")) == 8
    assert "note: masks hold 0 and 255: binary" in capsys.readouterr().out


@pytest.mark.parametrize(
    "values,label_map,num_classes",
    [((0, 1, 2, 255), None, 3), ((0, 100, 200), {"map": {"0": 0, "1": 100, "2": 200}}, 3),
     ((0, 100, 255), {"map": {"0": 0, "1": 100}}, 2)],
)
def test_folders_discovers_the_mask_values(tmp_path, values, label_map, num_classes):
    from segmaker.prepare import folders

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for index, value in enumerate(values * 2):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(str(tmp_path / "images" / f"{index}.jpg"))
        mask = np.zeros((8, 8), np.uint8)
        mask[:4] = value
        Image.fromarray(mask).save(str(tmp_path / "masks" / f"{index}.png"))
    dataset = folders.read(tmp_path / "images", tmp_path / "masks", 0.25, 0)
    assert dataset.label_map == label_map and dataset.num_classes == num_classes
    parse_label_map(label_map or {"scale": "1"}, num_classes)  # a map training accepts


def test_folders_image_without_mask_is_an_error_naming_it(tmp_path):
    from segmaker.errors import DataError
    from segmaker.prepare import folders

    write_folders(tmp_path / "tiles", count=4)
    (tmp_path / "tiles" / "masks" / "tile_002.png").unlink()
    with pytest.raises(DataError, match=r"1 image\(s\) have no mask .*tile_002\.png"):
        folders.read(tmp_path / "tiles" / "images", tmp_path / "tiles" / "masks", 0.2, 0)


def test_manifests_reference_the_written_files(tmp_path):
    write_folders(tmp_path / "tiles", count=5)
    out = tmp_path / "out"
    tiles = tmp_path / "tiles"
    assert prepare("folders", "--images", tiles / "images", "--masks", tiles / "masks", out, "--manifest",
                   "--validation-fraction", "0.4") == 0
    lines = [json.loads(line) for line in (out / "manifests" / "train.manifest").read_text().splitlines()]
    assert len(lines) == 3
    assert json.loads((out / "hyperparameters.json").read_text())["num_training_samples"] == "3"
    for line in lines:
        assert Path(line["source-ref"]).parent == (out / "train").resolve()
        assert Path(line["mask-ref"]).read_bytes() == (out / "train_annotation" / Path(line["mask-ref"]).name
                                                       ).read_bytes()
    assert len((out / "manifests" / "validation.manifest").read_text().splitlines()) == 2


def test_bad_arguments_are_user_errors(tmp_path):
    assert prepare("oxford-pets", tmp_path / "missing", tmp_path / "out") == cli.EXIT_USER_ERROR
    assert prepare("folders", tmp_path / "out") == cli.EXIT_USER_ERROR  # no --images/--masks
    write_folders(tmp_path / "tiles", count=3)
    args = ("folders", "--images", tmp_path / "tiles" / "images", "--masks", tmp_path / "tiles" / "masks")
    assert prepare(*args, tmp_path / "o", "--upload", "https://bucket/x") == cli.EXIT_USER_ERROR
    assert prepare(*args, tmp_path / "o2", "--validation-fraction", "1.5") == cli.EXIT_USER_ERROR


@pytest.mark.slow
def test_upload_copies_the_channels_to_s3_and_prints_the_fit_dictionary(tmp_path, monkeypatch, capsys):
    """--upload with boto3 against moto's S3 server (a stand-in for S3 on loopback; dummy credentials)."""
    import boto3

    from tests.docker_helpers import moto_server

    write_folders(tmp_path / "tiles", count=5)
    out = tmp_path / "out"
    with moto_server(tmp_path) as endpoint:
        for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(key, value)
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="tiles-bucket")
        assert prepare("folders", "--images", tmp_path / "tiles" / "images", "--masks",
                       tmp_path / "tiles" / "masks", out, "--manifest", "--validation-fraction", "0.4",
                       "--upload", "s3://tiles-bucket/roads/v1/") == 0
        listing = s3.list_objects_v2(Bucket="tiles-bucket", Prefix="roads/v1/")["Contents"]
        keys = {item["Key"] for item in listing}
        local = {"roads/v1/" + p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
        assert keys == local and len(local) == 5 * 2 + 2 + 2 + 2  # pairs, label maps, manifests, json files
        body = s3.get_object(Bucket="tiles-bucket", Key="roads/v1/manifests/train.manifest")["Body"].read()
        first = json.loads(body.decode().splitlines()[0])
        assert first["source-ref"].startswith("s3://tiles-bucket/roads/v1/train/tile_")
        s3.head_object(Bucket="tiles-bucket", Key=first["mask-ref"][len("s3://tiles-bucket/"):])
    text = capsys.readouterr().out
    assert f"uploaded {len(local)} files to s3://tiles-bucket/roads/v1/" in text
    fit = json.loads(text[text.index("estimator.fit(") + len("estimator.fit("):text.index("\n})") + 2])
    assert fit == {channel: f"s3://tiles-bucket/roads/v1/{channel}" for channel in
                   ("train", "train_annotation", "validation", "validation_annotation", "label_map")}


def test_folders_converts_tiff_tiles_and_reads_colour_or_grey_rgb_masks(tmp_path):
    from segmaker.prepare import folders, writer

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    colours = [(0, 0, 0), (255, 255, 255), (200, 30, 30)]  # black, white, red: three classes
    for index in range(4):
        picture = np.full((16, 20, 3), 40 * index, np.uint8)
        Image.fromarray(picture).save(str(tmp_path / "images" / f"t{index}.tif"))
        mask = np.zeros((16, 20, 3), np.uint8)
        mask[4:8] = colours[1]
        mask[8:12] = colours[2]
        Image.fromarray(mask).save(str(tmp_path / "masks" / f"t{index}.png"))
    dataset = folders.read(tmp_path / "images", tmp_path / "masks", 0.25, 0)
    assert dataset.num_classes == 3 and dataset.label_map is None  # masks rewritten as class ids
    out = tmp_path / "out"
    writer.write_channels(dataset, out)
    name = dataset.train[0].name
    assert Image.open(str(out / "train" / f"{name}.png")).format == "PNG"
    mask = np.asarray(Image.open(str(out / "train_annotation" / f"{name}.png")))
    assert mask[0, 0] == 0 and mask[5, 0] == 2 and mask[9, 0] == 1  # sorted colours: black, red, white
    assert len(dataset.summary.repaired["RGB TIFF image converted to RGB PNG"]) == 4
    # grey values stored as RGB (three equal channels): read as grey, rewritten single-channel
    for path in (tmp_path / "masks").iterdir():
        grey = np.zeros((16, 20, 3), np.uint8)
        grey[4:8] = 255
        Image.fromarray(grey).save(str(path))
    dataset = folders.read(tmp_path / "images", tmp_path / "masks", 0.25, 0)
    assert dataset.label_map == {"map": {"0": 0, "1": 255}}
    writer.write_channels(dataset, tmp_path / "grey")
    mask = Image.open(str(tmp_path / "grey" / "train_annotation" / f"{name}.png"))
    assert mask.mode == "L" and set(np.unique(np.asarray(mask))) == {0, 255}
