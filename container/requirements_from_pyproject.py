"""Print pyproject.toml's runtime dependencies as requirements, with MXNet swapped for the image's flavour.

Why: pyproject.toml names the CPU distribution `mxnet`; the GPU image needs `mxnet-cu112`, a different
distribution that provides the same `mxnet` module. Installing both would overwrite one with the other, so the
image installs these requirements first and then segmaker itself with `--no-deps`.

    python requirements_from_pyproject.py PYPROJECT MXNET_REQUIREMENT > requirements.txt
"""

import re
import sys
from typing import List

try:  # Python 3.11+
    import tomllib
except ImportError:  # Python 3.8 (the GPU image): the TOML parser pip vendors since 21.2
    from pip._vendor import tomli as tomllib

MXNET_DISTRIBUTION = "mxnet"


def distribution_name(requirement: str) -> str:
    """The normalised distribution name of a PEP 508 requirement ('MXNet==1.9.1' -> 'mxnet')."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def image_requirements(dependencies: List[str], mxnet_requirement: str) -> List[str]:
    """The project's dependencies with the `mxnet` one replaced by `mxnet_requirement`."""
    kept = [dep for dep in dependencies if distribution_name(dep) != MXNET_DISTRIBUTION]
    if len(kept) == len(dependencies):
        raise ValueError("pyproject.toml has no mxnet dependency to replace")
    return [mxnet_requirement] + kept


def main(argv: List[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    with open(argv[1], "rb") as handle:
        dependencies = tomllib.load(handle)["project"]["dependencies"]
    print("\n".join(image_requirements(dependencies, argv[2])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
