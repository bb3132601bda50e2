"""Write-then-rename, in one place: a reader (or a crash, or SIGKILL) sees the old file or the complete new
one, never half of one. Files get explicit modes: a tempfile's 0600 would otherwise reach the model tarball.
"""

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

FILE_MODE = 0o644
DIR_MODE = 0o755


def write_file_atomically(path: Path, write: Callable[[Path], None], mode: int = FILE_MODE) -> None:
    """`write(temporary_path)`, then fsync, chmod `mode` and rename it to `path` (same directory)."""
    path = Path(path)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    os.close(fd)
    try:
        write(Path(temporary))
        os.chmod(temporary, mode)
        fsync_file(Path(temporary))
        os.replace(temporary, str(path))
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    fsync_dir(path.parent)


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
