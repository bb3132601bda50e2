import pytest

from segmaker.data.samples import EncodedSample, find_file_samples, has_split
from segmaker.environment import Paths
from segmaker.errors import DataError, UserError
from tests.synthetic import split_dirs, write_split


def test_both_layouts_pair_every_image_with_its_mask(opt_ml_any_layout):
    samples = find_file_samples(opt_ml_any_layout, "train")
    assert len(samples) == 8
    for sample in samples:
        assert sample.image_path.stem == sample.mask_path.stem
        assert sample.image_path.suffix == ".jpg" and sample.mask_path.suffix == ".png"
    assert len(find_file_samples(opt_ml_any_layout, "validation")) == 4


def test_reading_a_sample_gives_its_bytes_and_names(opt_ml):
    sample = find_file_samples(opt_ml, "train")[0]
    encoded = sample.read()
    assert encoded.image == sample.image_path.read_bytes() and encoded.mask == sample.mask_path.read_bytes()
    assert encoded.name == str(sample.image_path) and encoded.mask_label == str(sample.mask_path)
    assert encoded.read() is encoded


def test_images_without_masks_are_listed_with_a_count(opt_ml):
    image_dir, mask_dir = split_dirs(opt_ml, "train", "channels")
    for path in sorted(mask_dir.iterdir())[:7]:
        path.unlink()
    with pytest.raises(DataError) as caught:
        find_file_samples(opt_ml, "train")
    message = str(caught.value)
    assert "7 image(s)" in message and "have no mask" in message and "sample_0_000.jpg" in message
    assert "(2 more)" in message


def test_masks_without_images_are_named(opt_ml_folders):
    image_dir, _ = split_dirs(opt_ml_folders, "validation", "folders")
    (image_dir / "sample_1000_002.jpg").unlink()
    with pytest.raises(DataError, match=r"1 mask\(s\) .* have no image .*: sample_1000_002.png"):
        find_file_samples(opt_ml_folders, "validation")


def test_hidden_and_foreign_files_are_skipped(opt_ml):
    image_dir, mask_dir = split_dirs(opt_ml, "train", "channels")
    (image_dir / ".DS_Store").write_bytes(b"x")
    (image_dir / "notes.txt").write_text("x")
    (mask_dir / "._sample_0_000.png").write_bytes(b"x")
    assert len(find_file_samples(opt_ml, "train")) == 8


def test_sub_folders_pair_by_relative_path(tmp_path):
    paths = Paths(tmp_path)
    for sub in ("city_a", "city_b"):
        write_split(paths.channel_dir("train") / sub, paths.channel_dir("train_annotation") / sub, 2, seed=1)
    samples = find_file_samples(paths, "train")
    assert len(samples) == 4
    assert all(s.image_path.parent.name == s.mask_path.parent.name for s in samples)


def test_same_base_name_twice_is_an_error(opt_ml):
    image_dir, _ = split_dirs(opt_ml, "train", "channels")
    (image_dir / "sample_0_000.png").write_bytes((image_dir / "sample_0_000.jpg").read_bytes())
    with pytest.raises(DataError, match="two image files with the same base name"):
        find_file_samples(opt_ml, "train")


def test_empty_channel_is_an_error(tmp_path):
    paths = Paths(tmp_path)
    paths.channel_dir("train").mkdir(parents=True)
    paths.channel_dir("train_annotation").mkdir(parents=True)
    with pytest.raises(DataError, match="no images .* in .*train for split 'train'"):
        find_file_samples(paths, "train")


def test_missing_channels_are_user_errors(tmp_path):
    paths = Paths(tmp_path)
    assert not has_split(paths, "validation")
    with pytest.raises(UserError, match="missing channel 'validation'"):
        find_file_samples(paths, "validation")
    paths.channel_dir("train").mkdir(parents=True)
    with pytest.raises(UserError, match="channel 'train' has no masks: add the channel 'train_annotation'"):
        find_file_samples(paths, "train")


def test_unreadable_file_is_a_data_error_naming_it(opt_ml):
    sample = find_file_samples(opt_ml, "train")[0]
    sample.mask_path.unlink()
    with pytest.raises(DataError, match=str(sample.mask_path)):
        sample.read()


def test_encoded_sample_without_mask_name_still_names_the_mask():
    assert EncodedSample("s3://b/img.jpg", b"", b"").mask_label == "mask of s3://b/img.jpg"
