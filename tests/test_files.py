"""files: write-then-rename leaves the old file or the complete new one, with explicit modes, and never a
temporary file, whatever stops the writer."""

import os
import stat

import pytest

from segmaker.files import move_into, staged_directory, staged_file


@pytest.fixture
def strict_umask():
    # A umask as strict as a hardened host's: the modes below must come from the code, not from the umask.
    previous = os.umask(0o077)
    yield
    os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(str(path)).st_mode)


def test_staged_file_replaces_the_file_whole_with_mode_644(tmp_path, strict_umask):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    with staged_file(target) as temporary:
        assert temporary.parent == tmp_path and temporary.name.startswith(".model.onnx.")
        temporary.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # readers see the old file until the block ends
    assert target.read_bytes() == b"new" and _mode(target) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


@pytest.mark.parametrize("interruption", [RuntimeError, KeyboardInterrupt, SystemExit])
def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path, interruption):
    target = tmp_path / "segmaker.json"
    target.write_text("{}")
    with pytest.raises(interruption):
        with staged_file(target) as temporary:
            temporary.write_text('{"half": ')
            raise interruption()
    assert target.read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["segmaker.json"]


def test_move_into_publishes_in_order_with_the_mode(tmp_path, strict_umask):
    staging, published = tmp_path / "staging", tmp_path / "model"
    staging.mkdir()
    published.mkdir()
    files = [staging / "model_algo-1", staging / "segmaker.json"]
    for path in files:
        path.write_text(path.name)
        os.chmod(str(path), 0o600)
    move_into(files, published)
    assert sorted(p.name for p in published.iterdir()) == ["model_algo-1", "segmaker.json"]
    assert all(_mode(published / p.name) == 0o644 for p in files) and not list(staging.iterdir())


def test_staged_directory_replaces_an_older_folder_or_leaves_it(tmp_path, strict_umask):
    final = tmp_path / "checkpoint-1"
    final.mkdir()
    (final / "old").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with staged_directory(final) as temporary:
            (temporary / "half").write_text("x")
            raise KeyboardInterrupt()
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-1"] and (final / "old").exists()
    with staged_directory(final) as temporary:
        (temporary / "new").write_text("new")
    assert [p.name for p in final.iterdir()] == ["new"] and _mode(final) == 0o755
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-1"]
