"""The image's lock files (container/requirements-*.lock) as uv writes them, parsed for the tests that hold
them against their sources (test_locks.py) and against the packages in the built image (test_docker_image.py).
"""

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parent.parent
CONTAINER = REPO_ROOT / "container"
LOCKS = {
    "cpu": CONTAINER / "requirements-cpu.lock",
    "gpu": CONTAINER / "requirements-gpu.lock",
    "build": CONTAINER / "requirements-build.lock",
}
HEADER_COMMAND = re.compile(r"^#\s+(uv pip compile .*)$", re.MULTILINE)


@dataclass
class Pin:
    version: str
    hashes: List[str] = field(default_factory=list)
    via: List[str] = field(default_factory=list)


def parse_lock(text: str) -> Dict[str, Pin]:
    """Pins by normalised name. uv's format: `name==version \\`, indented `--hash=` lines, then the sources as
    `# via X` or as `# via` followed by `#   X` lines; unindented `#` lines are the file's own comments."""
    pins: Dict[str, Pin] = {}
    current = None
    for number, line in enumerate(text.splitlines(), 1):
        content = line.strip().rstrip("\\").strip()
        if not content or line.startswith("#"):
            continue
        if not line[0].isspace():
            name, separator, version = content.partition("==")
            assert separator and version, f"line {number}: {line!r} is not an exact `name==version` pin"
            current = pins.setdefault(canonicalize_name(name), Pin(version))
        elif current is None:
            raise AssertionError(f"line {number}: {line!r} before the first pin")
        elif content.startswith("--hash="):
            current.hashes.append(content[len("--hash=") :])
        elif content == "# via":  # the sources follow, one per line
            continue
        elif content.startswith("# via "):
            current.via.append(content[len("# via ") :].strip())
        elif content.startswith("#"):
            current.via.append(content.lstrip("#").strip())
        else:
            raise AssertionError(f"line {number}: unexpected {line!r}")
    return pins


def read_lock(path: Path) -> Dict[str, Pin]:
    return parse_lock(path.read_text())


def lock_command(path: Path) -> List[str]:
    """The command in the lock's header, as arguments."""
    match = HEADER_COMMAND.search(path.read_text())
    assert match, f"{path.name} has no `uv pip compile` command in its header"
    return shlex.split(match.group(1))


def target_python(path: Path) -> str:
    """The Python version the lock was resolved for (its header's --python-version)."""
    command = lock_command(path)
    return command[command.index("--python-version") + 1]
