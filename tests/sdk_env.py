"""A separate Python environment with the SageMaker Python SDK 2.x and boto3, for client-side tests.

The SDK needs numpy >= 1.26 and MXNet needs numpy < 1.24, so they can never share `.venv`. Tests (and the
docker/SDK tests) call `sdk_python()` to get the SDK environment's interpreter, created on first use;
`python tests/sdk_env.py` creates it by hand and prints that interpreter's path.
"""

import os
import subprocess
import sys
import venv
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_LOCATION = REPO_ROOT / ".venv-sdk"
REQUIREMENTS = ("sagemaker>=2.200,<3", "boto3>=1.28,<2")
# Written last, so an interrupted creation is redone rather than used half-installed.
READY_MARKER = "segmaker-sdk-ready"


def _interpreter(location: Path) -> Path:
    return location / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def _is_ready(location: Path) -> bool:
    marker = location / READY_MARKER
    return (_interpreter(location).exists() and marker.exists()
            and marker.read_text(encoding="utf-8") == "\n".join(REQUIREMENTS))


def sdk_python(location: Path = DEFAULT_LOCATION) -> Path:
    """The SDK environment's python, creating the environment (venv + pip install) when needed."""
    python = _interpreter(location)
    if _is_ready(location):
        return python
    venv.EnvBuilder(with_pip=True, clear=True).create(str(location))
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    *REQUIREMENTS], check=True)
    (location / READY_MARKER).write_text("\n".join(REQUIREMENTS), encoding="utf-8")
    return python


def run_in_sdk(code: str, *args: str, timeout: float = 300, location: Path = DEFAULT_LOCATION
               ) -> subprocess.CompletedProcess:
    """Run Python `code` in the SDK environment (argv[1:] = args); output captured as text."""
    # SDK 2.x prints a deprecation notice on import unless told not to; tests parse stdout.
    environ = dict(os.environ, SAGEMAKER_SUPPRESS_V2_WARNING="1")
    return subprocess.run([str(sdk_python(location)), "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout, check=False, env=environ)


if __name__ == "__main__":
    print(sdk_python(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_LOCATION))
