"""The `segmaker` command: `train`, `serve`, `export`, `quantize`, and the Pipe-mode helpers.

This is the one place that decides exit codes, writes `output/failure` and installs signal handlers.
- A `UserError` becomes its plain message in the failure file (SageMaker shows the first 1024
  characters as FailureReason); exit 1.
- Any other exception is a bug: "Internal error: <type>: <message>" in the failure file, the full
  traceback in the log; exit 2.
- SIGTERM (StopTrainingJob, spot interruption) asks training to stop after the current iteration (or
  validation batch); it writes a checkpoint and the best model so far and we exit 143 (128 + SIGTERM)
  without a failure file: SageMaker marks a job it stopped as "Stopped" whatever the exit code, and a
  non-zero code keeps a stopped local run from looking like a finished one.
"""

import argparse
import logging
import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Callable, List, Optional

from segmaker import environment
from segmaker.errors import UserError

log = logging.getLogger("segmaker")

EXIT_OK = 0
EXIT_USER_ERROR = 1
EXIT_INTERNAL_ERROR = 2
EXIT_STOPPED = 128 + signal.SIGTERM
EXIT_INTERRUPTED = 128 + signal.SIGINT
FAILURE_REASON_LIMIT = 1024
# Subcommand -> "module:function" that takes the rest of the command line (imported only when used).
HELPERS = {
    "pipe-feed": "segmaker.data.pipe_feed:main",
    "make-manifest": "segmaker.data.pipe_feed:manifest_main",
    "prepare": "segmaker.prepare:main",
    "quantize": "segmaker.quantize:main",
}
HELPER_HELP = {
    "pipe-feed": "Pipe-mode helper",
    "make-manifest": "Pipe-mode helper",
    "prepare": "a dataset in its published layout -> SageMaker channels",
    "quantize": "int8 model for a model trained earlier",
}


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of `segmaker` and `python -m segmaker`; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    configure_logging()
    if argv and argv[0] in HELPERS:
        # The helpers parse their own options (`--help` included), so argparse must not see them.
        return _run_helper(HELPERS[argv[0]], argv[1:])
    args = _parser().parse_args(argv)
    return args.handler(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segmaker", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    commands.required = True
    train = commands.add_parser("train", help="train from the /opt/ml tree ($SAGEMAKER_BASE_DIR)")
    train.set_defaults(handler=_train_command)
    serve = commands.add_parser("serve", help="serve the model in /opt/ml/model over HTTP")
    serve.set_defaults(handler=_serve_command)
    export = commands.add_parser(
        "export", help="add the MXNet symbol and ONNX exports to a model directory (a stopped job's)"
    )
    export.add_argument("model_dir", type=Path, help="a model directory (model.tar.gz extracted)")
    export.set_defaults(handler=_export_command)
    for name in HELPERS:
        # Listed for `segmaker --help` only: main() hands these commands to their own parsers.
        commands.add_parser(name, add_help=False, help=f"{HELPER_HELP[name]}; `--help` for its options")
    return parser


def configure_logging(level: int = logging.INFO) -> None:
    """Timestamped log lines on stdout, where SageMaker collects them into CloudWatch."""
    logging.basicConfig(
        stream=sys.stdout,
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )


def _train_command(_args: argparse.Namespace) -> int:
    paths = environment.paths_from_env()
    stop_requested = threading.Event()
    ended_cluster = threading.Event()
    code = run_and_report(paths, lambda: _train(paths, stop_requested, ended_cluster), stop_requested)
    if ended_cluster.is_set():
        # A multi-host job that failed: the parameter-server client must not run its destructor at
        # interpreter exit (it would wait for the other hosts forever in ps::Finalize).
        _end_process(code)
    return code


def _train(paths: environment.Paths, stop_requested: threading.Event, ended_cluster: threading.Event) -> bool:
    """Run the job; True when it ran to its end, False when a stop request cut it short."""
    from segmaker.config import parse_hyperparameters

    # Hyperparameter mistakes are reported before the (slow) import of MXNet and GluonCV.
    config = parse_hyperparameters(environment.read_hyperparameters(paths))
    cpu_devices = environment.cpu_device_count()
    if config.syncbn and cpu_devices > 1:
        # MXNet reads its engine settings when it loads, which the import below does.
        environment.export_mxnet_cpu_syncbn_environment(cpu_devices)
    from segmaker.training import TrainingJob, train

    job = TrainingJob(
        paths=paths,
        config=config,
        channels=environment.read_input_data_config(paths),
        resources=environment.read_resource_config(paths),
        checkpoint_dir=environment.checkpoint_dir(paths),
        cpu_devices=cpu_devices,
        mxnet_home=environment.mxnet_home(),
    )
    if job.resources.world_size == 1:
        return train(job, stop_requested).completed
    return _train_on_hosts(job, stop_requested, ended_cluster)


def _train_on_hosts(job, stop_requested: threading.Event, ended_cluster: threading.Event) -> bool:
    """Several hosts: join the parameter server, train, and leave together (or tell the others why not)."""
    from segmaker.training import distributed, train

    settings = environment.read_distributed_settings()
    cluster = distributed.connect_job(job, settings, _peer_failed(job.paths))
    try:
        completed = train(job, stop_requested, cluster).completed
    except BaseException as exc:
        ended_cluster.set()
        cluster.fail(failure_reason(exc))
        raise
    cluster.close()
    return completed


def _peer_failed(paths: environment.Paths) -> Callable[[str], None]:
    def fail_now(reason: str) -> None:
        # Called from a watcher thread while the main thread may be blocked inside MXNet: end here.
        write_failure(paths, reason)
        _end_process(EXIT_USER_ERROR)

    return fail_now


def _end_process(code: int) -> None:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def failure_reason(exc: BaseException) -> str:
    """What the failure file says: a user error's message, else an internal error with its type."""
    if isinstance(exc, UserError):
        return str(exc)
    return f"Internal error: {type(exc).__name__}: {exc}"


def run_and_report(
    paths: environment.Paths, work: Callable[[], bool], stop_requested: threading.Event
) -> int:
    """Run `work` with SIGTERM wired to `stop_requested`; turn its outcome into failure file + exit code."""
    _clear_stale_failure(paths)
    previous = signal.signal(signal.SIGTERM, _set_flag(stop_requested))
    try:
        completed = work()
    except UserError as exc:
        log.error("Training failed: %s", exc)
        write_failure(paths, str(exc))
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        log.error("Interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - every other exception is by definition a bug of ours
        log.error("Internal error\n%s", traceback.format_exc())
        write_failure(paths, failure_reason(exc))
        return EXIT_INTERNAL_ERROR
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not completed:
        log.info("Stopped on request after saving a checkpoint and the best model so far")
        return EXIT_STOPPED
    return EXIT_OK


def _set_flag(flag: threading.Event) -> Callable:
    def handler(signum, _frame) -> None:
        # Only set the flag: the loop checks it between iterations, where stopping is safe.
        log.warning("Received signal %d: stopping after the current iteration or validation batch", signum)
        flag.set()

    return handler


def write_failure(paths: environment.Paths, reason: str) -> None:
    """`output/failure`: the reason SageMaker shows; what matters must fit in its first 1024 characters."""
    try:
        paths.output_dir.mkdir(parents=True, exist_ok=True)
        paths.failure_file.write_text(reason.strip() + "\n", encoding="utf-8")
    except OSError as exc:
        log.error("Could not write the failure file %s: %s", paths.failure_file, exc)
    if len(reason) > FAILURE_REASON_LIMIT:
        log.warning(
            "The failure reason is longer than %d characters; SageMaker cuts it", FAILURE_REASON_LIMIT
        )


def _clear_stale_failure(paths: environment.Paths) -> None:
    # A failure file left by an earlier run in the same tree would describe the wrong job.
    if paths.failure_file.exists():
        paths.failure_file.unlink()


def _serve_command(_args: argparse.Namespace) -> int:
    from segmaker.serving import server

    try:
        server.run()
    except UserError as exc:
        log.error("Cannot serve: %s", exc)
        return EXIT_USER_ERROR
    return EXIT_OK


def _export_command(args: argparse.Namespace) -> int:
    from segmaker import artifacts

    try:
        model = artifacts.add_exports(args.model_dir)
    except UserError as exc:
        log.error("Cannot export: %s", exc)
        return EXIT_USER_ERROR
    exports = (model.symbol_file, model.export_params, model.onnx_file)
    made = [path.name for path in exports if path is not None]
    log.info("Exported %s into %s", ", ".join(made), model.directory)
    return EXIT_OK


def _run_helper(target: str, rest: List[str]) -> int:
    import importlib

    module_name, function_name = target.split(":")
    try:
        return int(getattr(importlib.import_module(module_name), function_name)(rest) or 0)
    except UserError as exc:
        log.error("%s", exc)
        return EXIT_USER_ERROR
