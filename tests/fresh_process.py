"""Run one of the tests' check scripts in a fresh Python process and read the JSON report it prints last.

Some MXNet behaviour can only be checked in a new process: `amp.init()` patches operators process-wide, and
the engine reads its thread and workspace settings (MXNET_CPU_*) once, when the library loads.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Sequence

REPO = Path(__file__).resolve().parents[1]


def run_check_script(script: str, args: Sequence[str] = (), env: Dict[str, str] = None, timeout: float = 300):
    """`tests/<script> args...` with this checkout first on the path; its last stdout line parsed as JSON.

    A non-zero exit (or the timeout: a deadlock counts as a failure) fails the calling test with the tail
    of the script's stderr."""
    environment = dict(os.environ, **(env or {}))
    environment["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO)])
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / script), *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
