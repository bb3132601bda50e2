"""Multi-host training on MXNet's parameter server, started as the SageMaker MXNet containers start it.

`segmaker train` stays the one entry point. On a job with several hosts (`resourceconfig.json`) every host
resolves the others (with backoff, for up to 15 minutes), then starts MXNet's parameter-server nodes as
child processes (the scheduler on the first sorted host, one server on every host: `python -c "import
mxnet"` with `DMLC_ROLE` set is how MXNet runs them) and becomes a worker itself, in-process. The loop sees
a `Cluster`: rank and world size, the kvstore the Trainer uses, exact global sums, a barrier.

- The Trainer runs with `update_on_kvstore=False`: the servers only SUM gradients (they run no optimizer),
  every worker applies the same summed gradient with the same optimizer. With `update_on_kvstore=True` the
  optimizer is pickled to the servers once, so our per-iteration learning rate (`set_learning_rate` on the
  worker) would never reach them, and `Trainer._check_and_rescale_grad` refuses any change of the rescale.
- Global sums (confusion matrices, per-step counts, the stop flag) ride on the same kvstore, under keys far
  above the Trainer's parameter indices: in `dist_sync` a server answers a push only once every worker has
  pushed that key, so push-and-pull is an allreduce. The wire carries float32 (a float64 array comes back
  rounded to float32), so integers travel split into limbs small enough to sum exactly.
- ps-lite never gives up on a dead node: a worker waiting on a push waits forever. So each worker also runs
  a small status port of its own (`DistributedSettings.status_port`): a host that fails tells the others
  at once, and every host probes the others every few seconds; a host that stops answering (killed, out of
  memory) makes the others fail within a minute, naming it.
"""

import logging
import math
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence

import numpy as np

from segmaker import environment
from segmaker.environment import DistributedSettings, ResourceConfig
from segmaker.errors import UserError
from segmaker.training.devices import WorkerRole

log = logging.getLogger(__name__)

# Keys of our global sums start here, clear of the Trainer's keys (its parameter indices 0..P-1, a few
# hundred). Not higher: KVStoreDist::EncodeDefaultKey picks a server with `int server = (key * 9973) %
# num_servers`, an int overflow (a negative server index) for keys above 2**31 / 9973 = 215,326.
SUM_KEY_BASE = 100_000
# Integers are summed in limbs of this many bits, so that a limb's sum over the hosts stays below 2**24
# (float32's exact integers) for up to 2**(24 - LIMB_BITS) = 16 hosts; more hosts get smaller limbs.
LIMB_BITS = 20
PROBE_EVERY_SECONDS = 10.0
PROBE_TIMEOUT_SECONDS = 5.0
MISSED_PROBES_TO_FAIL = 3
CHILD_EXIT_SECONDS = 30.0

# The child process that becomes a scheduler or server: importing mxnet with DMLC_ROLE=server|scheduler runs
# the node until the workers end it (mxnet/kvstore/kvstore_server.py). It dies with the worker that
# started it (PR_SET_PDEATHSIG) and ignores SIGTERM/SIGINT: a stop is the workers' to coordinate, and the
# servers must keep summing until the workers have agreed on the last iteration.
NODE_SCRIPT = """
import ctypes, os, signal, sys
ctypes.CDLL(None).prctl(1, signal.SIGKILL)
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)
import mxnet
"""

FailureHandler = Callable[[str], None]


# -- host names -------------------------------------------------------------------------------------------


def resolve_hosts(
    hosts: Sequence[str],
    wait_seconds: float,
    lookup: Callable[[str], str] = socket.gethostbyname,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Dict[str, str]:
    """Every host's IPv4 address. A host's name may appear in DNS only after a while: retry with
    exponential backoff (0.1 s doubling up to 30 s) for `wait_seconds`, then fail naming the host."""
    deadline = clock() + wait_seconds
    addresses = {}
    for host in hosts:
        delay = 0.1
        while True:
            try:
                addresses[host] = lookup(host)
                break
            except OSError as exc:
                if clock() + delay > deadline:
                    raise UserError(
                        f"host {host} could not be resolved within {wait_seconds:.0f} s ({exc}); the hosts of"
                        " a multi-host job must reach each other by name"
                    ) from None
                sleep(delay)
                delay = min(delay * 2, 30.0)
    return addresses


# -- the cluster as the loop sees it ----------------------------------------------------------------------


class Cluster:
    """One host: every collective is the identity. `ParameterServerCluster` does them across hosts."""

    def __init__(self, role: WorkerRole):
        self.role = role
        self.kvstore = None  # the Trainer makes its own (local/device) kvstore on one host

    @property
    def is_distributed(self) -> bool:
        return self.role.world_size > 1

    def sum_integers(self, name: str, values: np.ndarray) -> np.ndarray:
        """Exact element-wise sum over all hosts of non-negative integer arrays (same shape everywhere)."""
        return np.asarray(values, dtype=np.int64)

    def sum_floats(self, name: str, values: np.ndarray) -> np.ndarray:
        """Element-wise float32 sum over all hosts (same shape everywhere)."""
        return np.asarray(values, dtype=np.float32)

    def loss_statistics_sum(self, values: np.ndarray) -> np.ndarray:
        """The loss's `global_sum` (training/loss.py): its per-step statistics summed over all hosts."""
        return values

    def broadcast_integer(self, name: str, value: int) -> int:
        """The main host's `value`, on every host (e.g. a data seed the user left unset)."""
        return int(self.sum_integers(name, np.array([value if self.role.is_main else 0]))[0])

    def broadcast_parameters(self, net) -> None:
        """Give every host the main host's parameters (BatchNorm statistics included)."""

    def agreed_batches(
        self, batches: Iterable, local_stop: threading.Event, agreed_stop: threading.Event
    ) -> Iterator:
        """`batches` until any host runs out of data or any host is asked to stop (SIGTERM): every host
        ends at the same iteration. On one host the stop flags are one event and nothing is exchanged."""
        yield from batches

    def agreed_validation(
        self, batches: Iterable, local_stop: threading.Event, agreed_stop: threading.Event
    ) -> Iterator:
        """This host's share of the validation `batches`, until every host's share is done or any host is
        asked to stop: then every host ends its share at once (validation is abandoned everywhere). On one
        host: `batches` as they are (the validator watches the one stop flag itself)."""
        yield from batches

    def agree_on_stop(self, local_stop: threading.Event, agreed_stop: threading.Event) -> None:
        """Between collectives that all hosts reach (end of validation): a stop asked of any host is asked
        of all."""

    def check_same_checkpoint(self, completed_iterations: Optional[int]) -> None:
        """Every host must resume from the checkpoint the main host resumes from, or all start afresh
        (`completed_iterations`: the checkpoint's, None without one)."""

    def barrier(self) -> None:
        """Return when every host got here."""

    def close(self) -> None:
        """End the parameter-server nodes (after a barrier: no host leaves before the others are done)."""

    def fail(self, reason: str) -> None:
        """This host failed: tell the others (they fail at once instead of waiting) and end the nodes."""


class ParameterServerCluster(Cluster):
    """This host's worker in a parameter-server job; `connect()` builds one."""

    def __init__(self, role: WorkerRole, kvstore, nodes: "NodeProcesses", watch: "PeerWatch"):
        super().__init__(role)
        self.kvstore = kvstore
        self._nodes = nodes
        self._watch = watch
        self._keys: Dict[str, int] = {}
        self._limb_bits = min(LIMB_BITS, 23 - max(0, math.ceil(math.log2(role.world_size))))

    def _sum(self, name: str, values: np.ndarray) -> np.ndarray:
        import mxnet as mx

        array = mx.nd.array(np.asarray(values, dtype=np.float32).reshape(-1), dtype="float32")
        key = self._keys.get(name)
        if key is None:
            # init is itself a collective (the first worker pushes, then a barrier): every host meets
            # each name for the first time at the same point of the same code path.
            key = self._keys[name] = SUM_KEY_BASE + len(self._keys)
            self.kvstore.init(key, mx.nd.zeros(array.shape, dtype="float32"))
        self.kvstore.pushpull(key, array, out=array)
        return array.asnumpy().reshape(np.shape(values))

    def sum_floats(self, name: str, values: np.ndarray) -> np.ndarray:
        return self._sum(name, values)

    def loss_statistics_sum(self, values: np.ndarray) -> np.ndarray:
        # Once per step, before any host builds its objectives. float32 on the wire: the normalisers come
        # back exact to about 1e-7 relative, which is all a gradient needs.
        return self.sum_floats("loss-statistics", values).astype(np.float64)

    def sum_integers(self, name: str, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.int64)
        if values.size and values.min() < 0:
            raise ValueError(f"sum_integers({name!r}) takes non-negative counts")
        limbs = _to_limbs(values, self._limb_bits)
        summed = self._sum(name, limbs.astype(np.float32))
        return _from_limbs(np.rint(summed).astype(np.int64), self._limb_bits).reshape(values.shape)

    def broadcast_parameters(self, net) -> None:
        """Hosts must start from the same weights BEFORE the first forward pass: the Trainer's own kvstore
        init happens only inside the first step (after that step's gradients were computed), and hands out
        the weights of whichever worker ps-lite ranked first (it orders nodes by address, not by host)."""
        params = [net.collect_params()[name] for name in sorted(net.collect_params().keys())]
        arrays = [param.data(param.list_ctx()[0]).asnumpy() for param in params]
        flat = np.concatenate([a.ravel() for a in arrays]).astype(np.float32)
        summed = self.sum_floats("parameters", flat if self.role.is_main else np.zeros_like(flat))
        offset = 0
        for param, array in zip(params, arrays):
            param.set_data(summed[offset : offset + array.size].reshape(array.shape))
            offset += array.size

    def agreed_batches(self, batches, local_stop, agreed_stop):
        iterator = iter(batches)
        while True:
            batch = next(iterator, None)
            have, stops = self.sum_integers("step", np.array([batch is not None, local_stop.is_set()]))
            if stops:
                agreed_stop.set()
            if have < self.role.world_size or stops:
                return
            yield batch

    def agreed_validation(self, batches, local_stop, agreed_stop):
        # One small sum per validation batch: a stop is agreed within one batch instead of after the
        # slowest host's whole share (SageMaker kills the job 120 s after SIGTERM). A host whose share is
        # done keeps answering until every host's is: the shares may differ by a batch or more.
        iterator = iter(batches)
        while True:
            batch = next(iterator, None)
            have, stops = self.sum_integers(
                "validation-step", np.array([batch is not None, local_stop.is_set()])
            )
            if stops:
                agreed_stop.set()
                return
            if not have:
                return
            if batch is not None:
                yield batch

    def agree_on_stop(self, local_stop, agreed_stop):
        if self.sum_integers("stop", np.array([local_stop.is_set()]))[0]:
            agreed_stop.set()

    def check_same_checkpoint(self, completed_iterations):
        """SageMaker fills every host's checkpoint folder from the same S3 prefix, so the hosts normally
        agree. One that resumed from another state (a sync that missed a file, a local run with one copied
        folder) would train in lockstep from different weights and optimizer states, silently. A host
        that differs from the first host fails with what it holds; the others go on into their next
        collective, where its failure notice ends them with its reason (a host failing of its own accord
        here too would race that notice and the reason could be lost)."""
        mine = 0 if completed_iterations is None else completed_iterations + 1
        main = self.broadcast_integer("resume-from", mine)
        if mine != main:
            raise UserError(
                f"the hosts do not resume from the same checkpoint: this host ({self.role.host}) holds"
                f" {_resume_point(mine)}, the first host {_resume_point(main)}. Every host's"
                " /opt/ml/checkpoints must hold the same checkpoints (SageMaker syncs them from"
                " checkpoint_s3_uri); clear or complete this folder and start the job again"
            )

    def barrier(self) -> None:
        self.kvstore._barrier()

    def close(self) -> None:
        """After a barrier (the end together), free the kvstore: its destructor stops the servers and the
        scheduler (MXNet's KVStoreDist: the first worker sends kStopServer, then ps::Finalize)."""
        self.barrier()
        self._watch.stop()
        _free_kvstore(self.kvstore)
        self.kvstore = None
        self._nodes.wait_or_kill(CHILD_EXIT_SECONDS)

    def fail(self, reason: str) -> None:
        self._watch.announce_failure(reason)
        self._watch.stop()
        self._nodes.kill()
        _abandon_kvstore(self.kvstore)


def _abandon_kvstore(kvstore) -> None:
    """A failed host ends without freeing the native kvstore: its destructor waits at a barrier for every
    worker (KVStoreDist::~KVStoreDist), which the other hosts, failing too, never reach. Python frees the
    kvstore as soon as the failure's traceback lets go of the Trainer, before the process can end itself:
    give the object a null handle (MXKVStoreFree deletes nullptr harmlessly) and leak the native one."""
    import ctypes

    kvstore.handle = ctypes.c_void_p()


def _resume_point(encoded: int) -> str:
    """check_same_checkpoint's wire value: 0 for no checkpoint, else completed iterations + 1."""
    return "no checkpoint" if encoded == 0 else f"a checkpoint after iteration {encoded - 1}"


def _free_kvstore(kvstore) -> None:
    """Delete the native kvstore now, whoever still holds the Python object (the Trainer does). Left to
    the garbage collector, its destructor would run at interpreter exit, after the servers are gone, and
    wait for them forever in ps::Finalize. The object keeps a null handle (MXKVStoreFree deletes nullptr
    harmlessly when its own __del__ runs later)."""
    import ctypes

    from mxnet.base import _LIB, check_call

    handle, kvstore.handle = kvstore.handle, ctypes.c_void_p()
    check_call(_LIB.MXKVStoreFree(handle))


def _to_limbs(values: np.ndarray, bits: int) -> np.ndarray:
    """values (int64, >= 0) -> array of shape values.shape + (limbs,), lowest limb first."""
    count = math.ceil(63 / bits)
    shifts = np.arange(count, dtype=np.int64) * bits
    return (values.reshape(-1, 1) >> shifts) & ((1 << bits) - 1)


def _from_limbs(limbs: np.ndarray, bits: int) -> np.ndarray:
    shifts = np.arange(limbs.shape[-1], dtype=np.int64) * bits
    return (limbs << shifts).sum(axis=-1)


# -- starting and ending the nodes ------------------------------------------------------------------------


@dataclass(frozen=True)
class Launch:
    """Where this host's worker sits in the job, and how the nodes find each other."""

    role: WorkerRole
    hosts: Sequence[str]
    addresses: Mapping[str, str]
    settings: DistributedSettings
    interface: Optional[str]

    def node_environment(self, node_role: str) -> Dict[str, str]:
        scheduler = self.addresses[self.hosts[0]]
        return environment.dmlc_environment(
            node_role, scheduler, len(self.hosts), self.settings, self.interface
        )


class NodeProcesses:
    """The scheduler (first host only) and this host's server, as child processes."""

    def __init__(self, launch: Launch):
        roles = (["scheduler"] if launch.role.is_main else []) + ["server"]
        self.children: List[subprocess.Popen] = []
        for node_role in roles:
            env = dict(os.environ, **launch.node_environment(node_role))
            child = subprocess.Popen([sys.executable, "-c", NODE_SCRIPT, str(os.getpid())], env=env)
            log.info("Started the parameter-server %s (pid %d)", node_role, child.pid)
            self.children.append(child)

    def wait_or_kill(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        for child in self.children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("Parameter-server node %d did not end by itself; killing it", child.pid)
        self.kill()

    def kill(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.kill()
                child.wait()


def connect_job(
    job, settings: DistributedSettings, on_peer_failure: FailureHandler
) -> "ParameterServerCluster":
    """`connect` for a `TrainingJob`: the kvstore type from its `kvstore` hyperparameter and devices."""
    from segmaker.gpus import mxnet_gpu_count
    from segmaker.training.devices import resolve_kvstore, training_contexts

    gpus = mxnet_gpu_count() if job.num_gpus is None else job.num_gpus
    contexts = training_contexts(gpus, job.cpu_devices)
    kvstore_type = resolve_kvstore(job.config.kvstore, contexts, job.resources.world_size)
    return connect(job.resources, kvstore_type, settings, on_peer_failure)


def connect(
    resources: ResourceConfig,
    kvstore_type: str,
    settings: DistributedSettings,
    on_peer_failure: FailureHandler,
) -> ParameterServerCluster:
    """Resolve the hosts, start this host's nodes, join the parameter server as a worker."""
    role = WorkerRole(resources.rank, resources.world_size, resources.current_host)
    addresses = resolve_hosts(resources.hosts, settings.host_wait_seconds)
    launch = Launch(role, tuple(resources.hosts), addresses, settings, resources.network_interface_name)
    peers = {host: addresses[host] for host in resources.hosts if host != role.host}
    nodes = NodeProcesses(launch)
    watch = PeerWatch(
        role.host, addresses[role.host], peers, settings.status_port, _ending(nodes, on_peer_failure)
    )
    watch.start_serving()
    kvstore = _join(launch, kvstore_type, watch)
    watch.start_probing()
    log.info(
        "Joined the parameter server as worker %d of %d (%s; scheduler %s:%d)",
        role.rank,
        role.world_size,
        kvstore_type,
        launch.addresses[launch.hosts[0]],
        settings.ps_port,
    )
    return ParameterServerCluster(role, kvstore, nodes, watch)


def _ending(nodes: NodeProcesses, on_peer_failure: FailureHandler) -> FailureHandler:
    def end(reason: str) -> None:
        nodes.kill()
        on_peer_failure(reason)

    return end


def _join(launch: Launch, kvstore_type: str, watch: "PeerWatch"):
    """Create the dist kvstore: it returns once every node of every host has connected to the scheduler.
    ps-lite would wait for a missing host forever, so a timer fails the job after `host_wait_seconds`."""
    import mxnet as mx

    environment.set_process_environment(launch.node_environment("worker"))
    seconds = launch.settings.host_wait_seconds
    timer = threading.Timer(
        seconds,
        watch.fail_job,
        [
            f"not every host joined the parameter server within {seconds:.0f} s"
            f" (hosts {', '.join(launch.hosts)}; scheduler on {launch.hosts[0]})"
        ],
    )
    timer.daemon = True
    timer.start()
    try:
        return mx.kv.create(kvstore_type)
    finally:
        timer.cancel()


# -- failure detection ------------------------------------------------------------------------------------


class PeerWatch:
    """Our side channel for failures, which ps-lite lacks: a status port answering PING, taking failure
    notices from peers, and a thread probing every peer's port."""

    def __init__(
        self, host: str, address: str, peers: Mapping[str, str], port: int, on_failure: FailureHandler
    ):
        self.host, self.address, self.peers, self.port = host, address, dict(peers), port
        self._on_failure = on_failure
        self._failed = threading.Lock()
        self._stopped = threading.Event()
        self._server: Optional[socketserver.ThreadingTCPServer] = None

    def start_serving(self) -> None:
        watch = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline(65536).decode("utf-8", "replace").rstrip("\n")
                self.wfile.write(b"OK\n")
                if line.startswith("FAILED "):
                    host, _, reason = line[len("FAILED ") :].partition("\t")
                    watch.fail_job(f"host {host} failed: {reason}")

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self._server = socketserver.ThreadingTCPServer((self.address, self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="peer-status", daemon=True).start()

    def start_probing(self) -> None:
        threading.Thread(target=self._probe_forever, name="peer-probe", daemon=True).start()

    def _probe_forever(self) -> None:
        missed = {host: 0 for host in self.peers}
        while not self._stopped.wait(PROBE_EVERY_SECONDS):
            for host, address in self.peers.items():
                missed[host] = 0 if self._send(address, "PING") else missed[host] + 1
                if missed[host] >= MISSED_PROBES_TO_FAIL and not self._stopped.is_set():
                    self.fail_job(
                        f"host {host} stopped answering for {MISSED_PROBES_TO_FAIL * PROBE_EVERY_SECONDS:.0f}"
                        " s (killed, out of memory, or its container ended); see that host's own log and"
                        " failure file"
                    )

    def _send(self, address: str, line: str) -> bool:
        try:
            with socket.create_connection((address, self.port), timeout=PROBE_TIMEOUT_SECONDS) as conn:
                conn.sendall(line.encode("utf-8") + b"\n")
                return conn.makefile("rb").readline().startswith(b"OK")
        except OSError:
            return False

    def announce_failure(self, reason: str) -> None:
        """Tell every peer that this host failed and why (best effort: they probe us anyway). This host's
        own reason wins: a peer's notice arriving from now on is ignored (two hosts failing at once would
        otherwise each end with the other's reason)."""
        self._failed.acquire(blocking=False)
        message = " ".join(reason.split())[:900]
        for address in self.peers.values():
            self._send(address, f"FAILED {self.host}\t{message}")

    def fail_job(self, reason: str) -> None:
        """Once: hand the reason to the failure handler (which ends this process)."""
        if self._stopped.is_set() or not self._failed.acquire(blocking=False):
            return
        log.error("Multi-host job failed: %s", reason)
        self._on_failure(reason)

    def stop(self) -> None:
        self._stopped.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
