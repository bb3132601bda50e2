"""Run one of the tests' check scripts in a fresh Python process and read the JSON report it prints last.

Some MXNet behaviour can only be checked in a new process: `amp.init()` patches operators process-wide, and
the engine reads its thread and workspace settings (MXNET_CPU_*) once, when the library loads.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Sequence

REPO = Path(__file__).resolve().parents[1]


def run_check_script(script: str, args: Sequence[str] = (), env: Dict[str, str] = None, timeout: float = 300):
    """`tests/<script> args...` with this checkout first on the path; its last stdout line parsed as JSON.

    A non-zero exit (or the timeout: a deadlock counts as a failure) fails the calling test with the tail
    of the script's stderr."""
    return CheckScript(script, args, env).report(timeout)


class BackgroundProcess:
    """A process a test starts in the background (output to files, never pipes) and waits for later:
    `wait` ends it on a timeout, `stop` ends it if it still runs (module teardown)."""

    process: subprocess.Popen

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class CheckScript(BackgroundProcess):
    """A check script started in the background (see run_check_script); `report` waits for its JSON."""

    def __init__(self, script: str, args: Sequence[str] = (), env: Dict[str, str] = None):
        environment = dict(os.environ, **(env or {}))
        environment["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO)])
        # Output to temporary files, not pipes: nobody reads a pipe while the script runs in the background.
        self._stdout, self._stderr = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen([sys.executable, str(REPO / "tests" / script), *args],
                                        env=environment, stdout=self._stdout, stderr=self._stderr, text=True)

    def report(self, timeout: float):
        code = self.wait(timeout)
        try:
            self._stdout.seek(0)
            self._stderr.seek(0)
            stdout, stderr = self._stdout.read(), self._stderr.read()
        finally:
            self._stdout.close()
            self._stderr.close()
        assert code == 0, stderr[-3000:]
        return json.loads(stdout.strip().splitlines()[-1])
