"""Write-then-rename, in one place: a reader (or a crash, or SIGKILL) sees the old file or the complete new
one, never half of one. Files get explicit modes: a tempfile's 0600 would otherwise reach the model tarball.

`staged_file(path)` for one file, `staged_directory(final)` for a folder written whole, `move_into(files,
directory)` for files staged elsewhere on the same file system and published together, in order.
"""

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

FILE_MODE = 0o644
DIR_MODE = 0o755


@contextmanager
def staged_file(path: Path, mode: int = FILE_MODE) -> Iterator[Path]:
    """A hidden temporary sibling of `path` to write (`.<name>.<random>`); when the block ends without error
    it is given `mode`, fsync'ed and renamed to `path`. On any exception, KeyboardInterrupt and SystemExit
    included, it is removed."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
        move_into([temporary], path.parent, mode, names=[path.name])
    finally:
        if temporary.exists():
            temporary.unlink()


def move_into(files: Sequence[Path], directory: Path, mode: int = FILE_MODE,
              names: Sequence[str] = ()) -> None:
    """Rename `files` (on `directory`'s file system) into `directory` in the order given, under `names` or
    their own names, each first given `mode` and fsync'ed; then fsync the directory (the renames)."""
    for index, source in enumerate(files):
        os.chmod(str(source), mode)
        fsync_file(source)
        os.replace(str(source), str(Path(directory) / (names[index] if names else source.name)))
    fsync_dir(Path(directory))


@contextmanager
def staged_directory(final: Path, mode: int = DIR_MODE) -> Iterator[Path]:
    """A temporary sibling of `final` to fill; on success every file in it is fsync'ed and the folder renamed
    to `final` (replacing an older one). On an error the temporary folder is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}.", dir=str(final.parent)))
    try:
        yield temporary
        os.chmod(str(temporary), mode)
        for item in temporary.iterdir():
            fsync_file(item)
        fsync_dir(temporary)
        if final.exists():
            shutil.rmtree(str(final))
        os.replace(str(temporary), str(final))
    finally:
        shutil.rmtree(str(temporary), ignore_errors=True)
    fsync_dir(final.parent)


def fsync_file(path: Path) -> None:
    with open(str(path), "rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(directory: Path) -> None:
    fd = os.open(str(directory), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
