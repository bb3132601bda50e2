import json

import numpy as np
import pytest

from segmaker.data.labelmaps import LabelMap, label_map_file, load_label_map, parse_label_map
from segmaker.errors import DataError, UserError


def test_default_is_scale_1_and_keeps_255_as_ignore():
    label_map = load_label_map(None, 3)
    mask = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    out = label_map.to_class_ids(mask, "m.png")
    assert out.dtype == np.uint8 and out.tolist() == [[0, 1], [2, 255]]


def test_scale_divides_pixel_values():
    label_map = parse_label_map({"scale": "3"}, 3)
    mask = np.array([[0, 2, 3, 8, 255]], dtype=np.uint8)
    assert label_map.to_class_ids(mask, "m.png").tolist() == [[0, 0, 1, 2, 255]]


def test_map_keys_are_classes_and_values_pixels():
    label_map = parse_label_map({"map": {"0": 5, "1": 0, "2": "2"}}, 3)
    mask = np.array([[5, 0, 2, 255]], dtype=np.uint8)
    assert label_map.to_class_ids(mask, "m.png").tolist() == [[0, 1, 2, 255]]


def test_binary_masks_may_assign_255_to_a_class():
    label_map = parse_label_map({"map": {"0": 0, "1": 255}}, 2)
    assert label_map.to_class_ids(np.array([[0, 255]], dtype=np.uint8), "m.png").tolist() == [[0, 1]]


def test_unmapped_pixel_values_name_the_file_and_the_values():
    label_map = parse_label_map({"map": {"0": 0, "1": 10}}, 2)
    with pytest.raises(DataError, match=r"masks/a\.png.*pixel 7, pixel 9"):
        label_map.to_class_ids(np.array([[0, 7, 9, 10, 7]], dtype=np.uint8), "masks/a.png")


def test_class_ids_beyond_num_classes_are_data_errors():
    with pytest.raises(DataError, match=r"b\.png.*pixel 4 \(class 4\)"):
        load_label_map(None, 3).to_class_ids(np.array([[0, 4]], dtype=np.uint8), "b.png")


def test_a_colour_mask_without_a_palette_map_is_a_data_error():
    with pytest.raises(DataError, match=r"c\.png: mask has 3 channels.*palette"):
        load_label_map(None, 3).to_class_ids(np.zeros((2, 2, 3), dtype=np.uint8), "c.png")


def test_palette_maps_colours_to_classes_and_ignore():
    label_map = parse_label_map({"palette": {"255,0,255": 1, "255,0,0": 0, "0,0,0": 255}}, 2)
    mask = np.array([[[255, 0, 255], [255, 0, 0], [0, 0, 0]]], dtype=np.uint8)
    assert label_map.to_class_ids(mask, "m.png").tolist() == [[1, 0, 255]]


def test_unknown_palette_colours_are_named():
    label_map = parse_label_map({"palette": {"255,0,255": 1, "255,0,0": 0}}, 2)
    mask = np.array([[[255, 0, 255], [1, 2, 3]]], dtype=np.uint8)
    with pytest.raises(DataError, match=r"d\.png.*colour 1,2,3"):
        label_map.to_class_ids(mask, "d.png")


@pytest.mark.parametrize(
    "raw,fragment",
    [
        ({"scale": "0"}, "scale '0' must be an integer in [1, 255]"),
        ({"map": {"5": 1}}, "class id '5' must be an integer in [0, 2]"),
        ({"map": {"0": 1, "1": 1}}, "pixel value 1 is given to class 0 and class 1"),
        ({"palette": {"1,2": 0}}, "palette colour '1,2' must be"),
        ({"palette": {"1,2,3": 7}}, "maps to class 7, but num_classes is 3"),
        ({"colours": {}}, "must be one of"),
        ([1, 2], "must be one of"),
        ({"scale": "1", "map": {"0": 1}}, "must be one of"),
        ({"map": {"0": 1}, "ignored": [3]}, "must be one of"),
        ({"map": {"0": 1}, "ignore": 3}, '"ignore" must be a list of pixel values'),
        ({"map": {"0": 1}, "ignore": [256]}, "ignored pixel value 256 must be an integer in [0, 255]"),
        ({"map": {"0": 1, "1": 3}, "ignore": [3]}, "pixel value 3 is given to class 1 and to ignore"),
        ({"palette": {"1,2,3": 0}, "ignore": ["1,2,3"]}, "colour 1,2,3 is given to class 0 and to ignore"),
        ({"palette": {"1,2,3": 0}, "ignore": ["1,2"]}, "palette colour '1,2' must be"),
    ],
)
def test_invalid_label_maps_are_user_errors(raw, fragment):
    with pytest.raises(UserError) as caught:
        parse_label_map(raw, 3, source="train_label_map.json")
    assert "train_label_map.json" in str(caught.value) and fragment in str(caught.value)


@pytest.mark.parametrize(
    "raw",
    [
        {"scale": "2"},
        {"map": {"0": 5, "1": 255}},
        {"palette": {"10,20,30": 1, "0,0,0": 255}},
        {"map": {"0": 2, "1": 1}, "ignore": [3, 0]},
        {"scale": "1", "ignore": [7]},
        {"palette": {"10,20,30": 1}, "ignore": ["0,0,0"]},
    ],
)
def test_json_form_round_trips(raw):
    label_map = parse_label_map(raw, 3)
    again = parse_label_map(json.loads(json.dumps(label_map.to_json())), 3)
    assert again == label_map


def test_label_map_files_validation_falls_back_to_train(tmp_path):
    assert label_map_file(None, "train") is None
    (tmp_path / "train_label_map.json").write_text('{"scale": "2"}')
    assert label_map_file(tmp_path, "validation") == tmp_path / "train_label_map.json"
    (tmp_path / "validation_label_map.json").write_text('{"scale": "3"}')
    assert load_label_map(label_map_file(tmp_path, "validation"), 3) == LabelMap.from_scale(3, 3)


def test_unreadable_label_map_file_is_named(tmp_path):
    path = tmp_path / "train_label_map.json"
    path.write_text("{not json")
    with pytest.raises(UserError, match="train_label_map.json is not valid JSON"):
        load_label_map(path, 3)


def test_lookup_is_fast_enough_for_every_sample():
    import time

    mask = np.random.default_rng(0).integers(0, 3, size=(1024, 1024), dtype=np.uint8)
    palette = parse_label_map({"palette": {f"{k},0,0": k for k in range(3)}}, 3)
    rgb = np.zeros((1024, 1024, 3), dtype=np.uint8)
    rgb[..., 0] = mask
    start = time.perf_counter()
    load_label_map(None, 3).to_class_ids(mask, "m")
    palette.to_class_ids(rgb, "m")
    assert time.perf_counter() - start < 1.0  # ~30 ms on one core; a per-pixel Python loop takes minutes


def test_trimap_border_goes_to_ignore_and_the_other_values_keep_their_classes():
    """The Oxford-IIIT Pet trimap (1 pet, 2 background, 3 border) trains as it is with one label map."""
    label_map = parse_label_map({"map": {"0": 2, "1": 1}, "ignore": [3]}, 2)
    trimap = np.array([[2, 2, 3, 1], [2, 3, 1, 1]], dtype=np.uint8)
    assert label_map.to_class_ids(trimap, "t.png").tolist() == [[0, 0, 255, 1], [0, 255, 1, 1]]
    with pytest.raises(DataError, match=r"t\.png.*pixel 0"):  # a value the map does not name: still an error
        label_map.to_class_ids(np.array([[0, 1]], dtype=np.uint8), "t.png")


def test_ignore_with_scale_and_palette():
    scale = parse_label_map({"scale": "1", "ignore": [2]}, 3)
    assert scale.to_class_ids(np.array([[0, 1, 2, 255]], dtype=np.uint8), "m").tolist() == [[0, 1, 255, 255]]
    palette = parse_label_map({"palette": {"255,0,255": 1, "255,0,0": 0}, "ignore": ["0,0,0"]}, 2)
    rgb = np.array([[[255, 0, 255], [0, 0, 0], [255, 0, 0]]], dtype=np.uint8)
    assert palette.to_class_ids(rgb, "m").tolist() == [[1, 255, 0]]


def test_the_builtin_forms_keep_their_meaning_without_ignore():
    """Adding "ignore" changed nothing for maps that do not use it: same lookup for every pixel value."""
    pixels = np.array([list(range(9)) + [255]], dtype=np.uint8)
    scale = parse_label_map({"scale": "3"}, 3)
    expected = np.where(pixels == 255, 255, pixels // 3)
    assert (scale.to_class_ids(pixels, "m") == expected).all()
    binary = parse_label_map({"map": {"0": 0, "1": 255}}, 2)
    assert binary.to_class_ids(np.array([[0, 255]], dtype=np.uint8), "m").tolist() == [[0, 1]]


@pytest.mark.parametrize(
    "scale,num_classes,meant",
    [
        (255, 2, '{"map": {"0": 0, "1": 255}}'),
        (128, 2, '{"map": {"0": 0, "1": 255}}'),
        (85, 4, '{"map": {"0": 0, "1": 85, "2": 170, "3": 255}}'),
    ],
)
def test_a_scale_making_255_both_ignore_and_a_class_is_refused_with_the_map_meant(scale, num_classes, meant):
    with pytest.raises(UserError) as caught:
        parse_label_map({"scale": str(scale)}, num_classes, source="train_label_map.json")
    message = str(caught.value)
    assert message.startswith("train_label_map.json: ") and "pixel 255 would be class" in message
    assert meant in message and '"ignore": [255]' in message
    # The proposal works: 0/255 masks (or the multiples) come out as every class, nothing ignored.
    proposal = parse_label_map(json.loads(meant), num_classes)
    values = np.array([[int(v) for v in json.loads(meant)["map"].values()]], dtype=np.uint8)
    assert proposal.to_class_ids(values, "m").tolist() == [list(range(num_classes))]


def test_a_scale_with_255_explicitly_ignored_is_accepted():
    label_map = parse_label_map({"scale": "255", "ignore": [255]}, 2)
    assert label_map.to_class_ids(np.array([[0, 254, 255]], dtype=np.uint8), "m").tolist() == [[0, 0, 255]]
    parse_label_map({"scale": "1"}, 254)  # 255 // 1 is no class: the default is never refused
