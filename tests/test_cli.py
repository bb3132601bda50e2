import json
import os
import signal
import sys
import threading
import types

import pytest

from segmaker import cli
from segmaker.environment import Paths
from segmaker.errors import DataError


@pytest.fixture
def paths(tmp_path):
    return Paths(tmp_path)


def test_user_error_writes_the_plain_message_and_exits_1(paths):
    def work():
        raise DataError("mask train_annotation/a.png: pixel value 7 maps to no class")

    assert cli.run_and_report(paths, work, threading.Event()) == cli.EXIT_USER_ERROR
    assert paths.failure_file.read_text() == "mask train_annotation/a.png: pixel value 7 maps to no class\n"


def test_internal_error_names_the_type_and_logs_the_traceback(paths, caplog):
    def work():
        raise ZeroDivisionError("division by zero")

    assert cli.run_and_report(paths, work, threading.Event()) == cli.EXIT_INTERNAL_ERROR
    assert paths.failure_file.read_text() == "Internal error: ZeroDivisionError: division by zero\n"
    assert "Traceback" in caplog.text and "ZeroDivisionError" in caplog.text


def test_success_removes_a_stale_failure_file(paths):
    paths.output_dir.mkdir(parents=True)
    paths.failure_file.write_text("old")
    assert cli.run_and_report(paths, lambda: True, threading.Event()) == cli.EXIT_OK
    assert not paths.failure_file.exists()


def test_sigterm_only_sets_the_flag_and_a_stopped_run_exits_143_without_failure(paths):
    flag = threading.Event()

    def work():
        os.kill(os.getpid(), signal.SIGTERM)
        return not flag.wait(timeout=5)

    before = signal.getsignal(signal.SIGTERM)
    assert cli.run_and_report(paths, work, flag) == cli.EXIT_STOPPED == 143
    assert flag.is_set()
    assert not paths.failure_file.exists()
    assert signal.getsignal(signal.SIGTERM) is before


def write_job(base, hyperparameters):
    config = base / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))


def test_train_with_bad_hyperparameters_fails_naming_the_keys(tmp_path, monkeypatch):
    write_job(tmp_path, {"num_classes": "2", "learning_rat": "0.1", "epochs": "zero"})
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path))
    assert cli.main(["train"]) == cli.EXIT_USER_ERROR
    reason = (tmp_path / "output" / "failure").read_text()
    assert "learning_rat" in reason and "learning_rate" in reason
    assert "epochs" in reason and "zero" in reason
    assert "Traceback" not in reason


def test_helpers_receive_the_rest_of_the_command_line(monkeypatch):
    received = {}
    fake = types.ModuleType("segmaker.data.pipe_feed")
    fake.main = lambda argv: received.setdefault("feed", argv) and 0
    fake.manifest_main = lambda argv: received.setdefault("manifest", argv) and 3
    monkeypatch.setitem(sys.modules, "segmaker.data.pipe_feed", fake)
    import segmaker.data

    monkeypatch.setattr(segmaker.data, "pipe_feed", fake, raising=False)
    assert cli.main(["pipe-feed", "--channel", "train", "-h"]) == 0
    assert cli.main(["make-manifest", "a", "b"]) == 3
    assert received == {"feed": ["--channel", "train", "-h"], "manifest": ["a", "b"]}


def test_serve_calls_the_server(monkeypatch):
    calls = []
    fake = types.ModuleType("segmaker.serving.server")
    fake.run = lambda: calls.append("run")
    monkeypatch.setitem(sys.modules, "segmaker.serving.server", fake)
    import segmaker.serving

    monkeypatch.setattr(segmaker.serving, "server", fake, raising=False)
    assert cli.main(["serve"]) == 0 and calls == ["run"]


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([])
    assert exit_info.value.code == 2
    assert "train" in capsys.readouterr().err
