"""`segmaker serve`: gunicorn (through its Python API) running the Flask app, one model per worker.

- Bind 0.0.0.0:$SAGEMAKER_BIND_TO_PORT (8080). Workers: $SAGEMAKER_MODEL_SERVER_WORKERS, else one per GPU
  (MXNet's count, `gpus.gpu_count_before_fork`: the CPU image on a GPU host serves on the CPU),
  else cpu_count // THREADS_PER_MODEL (at least 1); each CPU worker's MXNet (OMP_NUM_THREADS) and ONNX
  Runtime use cpu_count // workers intra-op threads, so workers do not fight over cores.
- The master never imports MXNet (it does not survive a fork): each worker loads and warms up the model
  in `load()`, after the fork. A worker that cannot load it exits with gunicorn's boot-error status, and
  gunicorn then stops the whole server ("Worker failed to boot") after our log line says why, instead of
  restarting it forever.
- Worker class gthread with a few request threads: /ping is answered while a long inference runs (the
  predictor serialises only the engine's forward). With gthread, gunicorn's `timeout` guards the worker's
  main loop (and the model load), not single requests; SageMaker enforces its own invocation timeout.
- SIGTERM: gunicorn stops accepting, lets in-flight requests finish for up to the timeout, then exits.
"""

import logging
import os
import time
from dataclasses import dataclass
from typing import Optional

from gunicorn.app.base import BaseApplication

from segmaker.environment import ServingSettings, read_serving_settings, visible_gpu_devices
from segmaker.errors import UserError
from segmaker.gpus import gpu_count_before_fork

LOG = logging.getLogger(__name__)

THREADS_PER_MODEL = 4  # intra-op threads that still speed up one forward noticeably
# Per worker: one request in the forward (serialised, on all the worker's intra-op threads) while the others
# decode, resize, crop, resize back and encode theirs (single-threaded each), and /ping is still answered.
REQUEST_THREADS = 4
KEEPALIVE_SECONDS = 5
LOG_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"


@dataclass(frozen=True)
class ServerPlan:
    """How the server uses the machine."""

    workers: int
    threads_per_worker: int  # intra-op threads of each worker's engine
    gpus: int

    def gpu_of(self, worker_age: int) -> Optional[int]:
        """The GPU a worker uses (workers are spread round-robin), or None on CPU."""
        return worker_age % self.gpus if self.gpus else None


def plan_server(settings: ServingSettings, cpu_count: int, gpus: int) -> ServerPlan:
    """Workers and threads for this machine, honouring SAGEMAKER_MODEL_SERVER_WORKERS when set."""
    cpu_count = max(1, cpu_count)
    if settings.workers:
        workers = settings.workers
    elif gpus:
        workers = gpus
    else:
        workers = max(1, cpu_count // THREADS_PER_MODEL)
    return ServerPlan(workers=workers, threads_per_worker=max(1, cpu_count // workers), gpus=gpus)


class ModelServer(BaseApplication):
    """gunicorn application whose workers each load the model after forking."""

    def __init__(self, settings: ServingSettings, plan: ServerPlan):
        self.settings = settings
        self.plan = plan
        self._worker_age = 0
        super().__init__()

    def load_config(self) -> None:
        options = {
            "bind": f"0.0.0.0:{self.settings.port}",
            "workers": self.plan.workers,
            "worker_class": "gthread",
            "threads": REQUEST_THREADS,
            "timeout": self.settings.timeout_seconds,
            "graceful_timeout": self.settings.timeout_seconds,
            "keepalive": KEEPALIVE_SECONDS,
            "post_fork": self._remember_worker,
            "pre_request": self._close_oversized_requests,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": "info",
        }
        # gunicorn >= 23 opens a control socket in ~/.gunicorn: not needed, and the home may be read-only.
        if "control_socket_disable" in self.cfg.settings:
            options["control_socket_disable"] = True
        for key, value in options.items():
            self.cfg.set(key, value)

    def _remember_worker(self, server, worker) -> None:
        # Runs in the new worker process, so this attribute is the worker's own copy.
        self._worker_age = worker.age

    def _close_oversized_requests(self, worker, req) -> None:
        close_oversized_request(req, self.settings.max_payload_bytes)

    def load(self):
        """Build the worker's app: load and warm up the model (runs in the worker, after the fork)."""
        started = time.perf_counter()
        from segmaker.serving.app import create_app
        from segmaker.serving.predictor import load_predictor  # imports MXNet: seconds of the cold start

        LOG.info("model load: imports (MXNet, Flask) in %.2f s", time.perf_counter() - started)
        gpu = self.plan.gpu_of(self._worker_age)
        try:
            predictor = load_predictor(self.settings.model_dir, engine=self.settings.engine, gpu=gpu,
                                       threads=self.plan.threads_per_worker)
        except Exception as exc:
            LOG.error("segmaker serve: worker %d cannot load the model from %s: %s; stopping the server",
                      os.getpid(), self.settings.model_dir, exc)
            raise
        return create_app(predictor, self.settings, workers=self.plan.workers)


def close_oversized_request(req, limit: int) -> None:
    """Make gunicorn close the connection after answering a request whose declared body exceeds `limit`.

    The app refuses such a body (413) without reading it, and gunicorn strips the app's own
    `Connection: close` (a hop-by-hop header), so it is told here, from the request line and headers,
    before the app runs; its answer then says `Connection: close` and the client opens a new connection.
    """
    declared = next((value for name, value in req.headers if name.upper() == "CONTENT-LENGTH"), None)
    try:
        oversized = declared is not None and int(declared) > limit
    except ValueError:
        return  # gunicorn refuses a malformed Content-Length itself
    if oversized:
        req.must_close = True  # what gunicorn's Request.force_close() sets; read by its should_close()


def run(settings: Optional[ServingSettings] = None) -> int:
    """Serve until SIGTERM/SIGINT, then return 0; when a worker cannot load the model, gunicorn stops the
    server and raises SystemExit(3) out of this call."""
    settings = settings or read_serving_settings()
    if not settings.model_dir.is_dir():
        raise UserError(f"no model to serve: {settings.model_dir} is not a directory "
                        "(SageMaker extracts model.tar.gz there; set SEGMAKER_MODEL_DIR to serve another)")
    plan = plan_server(settings, os.cpu_count() or 1, gpu_count_before_fork(visible_gpu_devices()))
    _limit_intra_op_threads(plan.threads_per_worker)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    LOG.info("serving %s on port %d: %d worker(s) x %d thread(s)%s", settings.model_dir, settings.port,
             plan.workers, plan.threads_per_worker, f", {plan.gpus} GPU(s)" if plan.gpus else "")
    # No `except SystemExit` here: workers are forked from inside this call, and each ends with
    # sys.exit(status) that must reach the interpreter unchanged (a worker that could not load the model
    # exits 3, which makes the master halt the server, itself via sys.exit(3), rather than respawn it).
    ModelServer(settings, plan).run()
    return 0


def _limit_intra_op_threads(threads: int) -> None:
    # Read by MXNet's OpenMP when each worker imports it; set in the master so every worker inherits it.
    # A value the operator set explicitly wins.
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
