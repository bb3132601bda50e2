"""The image's lock files (container/requirements-*.lock) against their sources; fast and offline.

`make lock` resolves them with uv: CPU from pyproject.toml's dependencies + extra `cpu`, GPU from the
dependencies + extra `gpu`, the build tools from container/requirements-build.in. These tests fail when a
source changes without `make lock`: a requirement added, dropped or tightened past its pin, or the command
itself changed.
"""

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.lockfiles import (
    CONTAINER,
    LOCKS,
    REPO_ROOT,
    Pin,
    lock_command,
    parse_lock,
    read_lock,
    target_python,
)

try:  # Python 3.11+
    import tomllib
except ImportError:  # older interpreters: the same parser, as the tomli distribution
    import tomli as tomllib

# What uv writes in `# via` for a requirement read from each source.
VIA_PYPROJECT = "segmaker (pyproject.toml)"
VIA_BUILD_IN = "-r container/requirements-build.in"


def pyproject() -> dict:
    with open(REPO_ROOT / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)


def source_requirements(flavour: str) -> List[Requirement]:
    """What `make lock` resolves for a lock: its flavour's part of pyproject.toml or requirements-build.in."""
    if flavour == "build":
        lines = (CONTAINER / "requirements-build.in").read_text().splitlines()
        return [Requirement(line) for line in (line.split("#")[0].strip() for line in lines) if line]
    project = pyproject()["project"]
    return [Requirement(text) for text in project["dependencies"] + project["optional-dependencies"][flavour]]


def applies_to(requirement: Requirement, python_version: str) -> bool:
    """Whether the requirement's marker holds on the lock's target (Linux x86_64, that Python)."""
    if requirement.marker is None:
        return True
    environment = dict(default_environment(), python_version=python_version)
    environment.update(python_full_version=python_version + ".0", sys_platform="linux",
                       platform_system="Linux", platform_machine="x86_64", os_name="posix")
    return requirement.marker.evaluate(environment)


def direct_requirements(flavour: str) -> List[Requirement]:
    python_version = target_python(LOCKS[flavour])
    return [r for r in source_requirements(flavour) if applies_to(r, python_version)]


@pytest.mark.parametrize("flavour", sorted(LOCKS))
def test_every_source_requirement_is_pinned_with_hashes_at_an_admitted_version(flavour):
    path = LOCKS[flavour]
    pins = read_lock(path)
    for requirement in direct_requirements(flavour):
        pin = pins.get(canonicalize_name(requirement.name))
        assert pin is not None, f"{path.name} does not pin {requirement} (run `make lock`)"
        assert requirement.specifier.contains(pin.version, prereleases=True), (
            f"{path.name} pins {requirement.name}=={pin.version}, which `{requirement}` excludes "
            "(run `make lock`)"
        )
    unhashed = sorted(name for name, pin in pins.items() if not pin.hashes)
    assert not unhashed, f"{path.name}: no hash for {unhashed}"


@pytest.mark.parametrize("flavour", sorted(LOCKS))
def test_the_direct_requirements_of_a_lock_are_exactly_its_sources(flavour):
    """A requirement dropped from its source keeps its `# via` line in the lock until `make lock` runs."""
    path = LOCKS[flavour]
    source = VIA_BUILD_IN if flavour == "build" else VIA_PYPROJECT
    locked_direct = {name for name, pin in read_lock(path).items() if source in pin.via}
    wanted = {canonicalize_name(requirement.name) for requirement in direct_requirements(flavour)}
    assert locked_direct == wanted, f"{path.name}: run `make lock`"


def test_flavour_locks_are_for_the_image_pythons_and_their_mxnet():
    """CPU: Debian bookworm's Python 3.11 and mxnet; GPU: Ubuntu 20.04's 3.8 and mxnet-cu112, never both."""
    assert target_python(LOCKS["cpu"]) == "3.11"
    assert target_python(LOCKS["gpu"]) == "3.8"
    cpu, gpu = read_lock(LOCKS["cpu"]), read_lock(LOCKS["gpu"])
    assert "mxnet" in cpu and "mxnet-cu112" not in cpu
    assert "mxnet-cu112" in gpu and "mxnet" not in gpu


def test_mxnet_comes_only_from_the_flavour_extras_and_dev_takes_the_cpu_one():
    """`mxnet` and `mxnet-cu112` overwrite each other's module, so neither is a plain dependency (the GPU
    image's `pip check` would then miss `mxnet`); `make setup` installs the dev extra, which brings the CPU
    one."""
    project = pyproject()["project"]
    extras = project["optional-dependencies"]
    assert not [text for text in project["dependencies"] if Requirement(text).name.startswith("mxnet")]
    assert [Requirement(text).name for text in extras["cpu"]] == ["mxnet"]
    assert [Requirement(text).name for text in extras["gpu"]] == ["mxnet-cu112"]
    dev_self = [Requirement(text) for text in extras["dev"] if Requirement(text).name == project["name"]]
    assert len(dev_self) == 1 and "cpu" in dev_self[0].extras


def test_the_build_lock_satisfies_pyprojects_build_system():
    """segmaker is built in the image without build isolation, from the build lock's setuptools and wheel."""
    pins = read_lock(LOCKS["build"])
    for text in pyproject()["build-system"]["requires"]:
        requirement = Requirement(text)
        pin = pins.get(canonicalize_name(requirement.name))
        assert pin is not None and requirement.specifier.contains(pin.version), f"{text}: run `make lock`"


@dataclass
class LockCommand:
    environment: Dict[str, str]  # the variables the recipe sets (UV_SYSTEM_CERTS=1 ...)
    arguments: List[str]  # as uv records them in the header: `uv pip compile ...`, without --quiet


def make_lock_commands() -> Dict[str, LockCommand]:
    """The `uv pip compile` commands of `make -n lock` ($(UPGRADE) empty), keyed by the lock each writes."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    dry_run = subprocess.run([make, "-n", "lock"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    commands = {}
    for line in dry_run.stdout.replace("\\\n", " ").splitlines():
        words = shlex.split(line)
        if "compile" not in words:
            continue
        environment = dict(word.split("=", 1) for word in words[: words.index("compile")] if "=" in word)
        arguments = [word for word in words[words.index("compile") + 1 :] if word != "--quiet"]
        relative = arguments[arguments.index("-o") + 1]
        commands[relative] = LockCommand(environment, ["uv", "pip", "compile", *arguments])
    return commands


def test_each_lock_header_is_the_command_make_lock_runs():
    commands = make_lock_commands()
    assert sorted(commands) == sorted(str(path.relative_to(REPO_ROOT)) for path in LOCKS.values())
    for relative, command in commands.items():
        assert lock_command(REPO_ROOT / relative) == command.arguments, f"{relative} is not from `make lock`"


@pytest.mark.slow
def test_make_lock_run_again_reproduces_every_lock_byte_for_byte(tmp_path):
    """The strong form (needs PyPI and uv): `make lock`'s commands, run on a copy of the sources and of the
    locks' pins, write the locks byte for byte: the same pins, transitive set, hashes and header. (uv keeps
    the pins of the file it writes to: a new release upstream changes nothing; a new wheel of a pinned
    version would.)"""
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed (pip install -e '.[dev]')")
    commands = make_lock_commands()
    (tmp_path / "container").mkdir()
    for relative in ["pyproject.toml", "container/requirements-build.in"]:
        shutil.copyfile(REPO_ROOT / relative, tmp_path / relative)
    for relative, command in commands.items():
        # Only the pins, no hashes: uv would copy the hashes of the file it rewrites instead of fetching them.
        pins = read_lock(REPO_ROOT / relative)
        (tmp_path / relative).write_text("".join(f"{name}=={pin.version}\n" for name, pin in pins.items()))
        environment = dict(os.environ, **command.environment)
        result = subprocess.run([uv, *command.arguments[1:], "--quiet"], cwd=tmp_path, env=environment,
                                capture_output=True, text=True, timeout=600, check=False)
        assert result.returncode == 0, result.stderr[-3000:]
        regenerated = (tmp_path / relative).read_text()
        assert regenerated == (REPO_ROOT / relative).read_text(), f"{relative} differs from `make lock`'s"


def test_parse_lock_reads_pins_hashes_and_both_via_forms():
    """The parser against a hand-written excerpt in uv's format."""
    text = (
        "# This file was autogenerated by uv via the following command:\n"
        "#    uv pip compile pyproject.toml -o x.lock\n"
        "Flask==3.0.3 \\\n"
        "    --hash=sha256:aa \\\n"
        "    --hash=sha256:bb\n"
        "    # via segmaker (pyproject.toml)\n"
        "numpy==1.23.5 \\\n"
        "    --hash=sha256:cc\n"
        "    # via\n"
        "    #   segmaker (pyproject.toml)\n"
        "    #   mxnet\n"
        "# a comment of the file's own\n"
    )
    assert parse_lock(text) == {
        "flask": Pin("3.0.3", ["sha256:aa", "sha256:bb"], ["segmaker (pyproject.toml)"]),
        "numpy": Pin("1.23.5", ["sha256:cc"], ["segmaker (pyproject.toml)", "mxnet"]),
    }
    with pytest.raises(AssertionError, match="line 1"):
        parse_lock("pillow>=9.5\n")
