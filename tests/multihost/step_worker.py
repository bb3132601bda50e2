"""One worker of the host-level test (tests/test_distributed.py): joins a two-host parameter server on
loopback addresses through segmaker's launcher, or trains alone (`alone`), and saves what it computed.

usage: python -m tests.multihost.step_worker HOST|alone OUT_DIR
"""

import json
import sys
import threading
from pathlib import Path

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from segmaker.environment import ResourceConfig, read_distributed_settings
from segmaker.training import distributed
from segmaker.training.optimizer import GlobalBatchTrainer

HOSTS = ["127.0.0.1", "127.0.0.2"]
GLOBAL_BATCH = 8
STEPS = 3
HIDDEN_LAYERS = 12
SEEDS = (7, 11)


def small_net(seed: int) -> gluon.HybridBlock:
    net = gluon.nn.HybridSequential()
    # BatchNorm in inference mode (use_global_stats): its statistics would otherwise differ per device.
    net.add(
        gluon.nn.Conv2D(4, 3, padding=1),
        gluon.nn.BatchNorm(use_global_stats=True),
        gluon.nn.Activation("relu"),
    )
    net.add(gluon.nn.GlobalAvgPool2D())
    # Many small layers: many kvstore keys, each a chance for the first step's init race (optimizer.py).
    for _ in range(HIDDEN_LAYERS):
        net.add(gluon.nn.Dense(8, activation="tanh"))
    net.add(gluon.nn.Dense(3))
    mx.random.seed(seed)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 2, 6, 6)))
    return net


def global_batches():
    rng = np.random.default_rng(0)
    for _ in range(STEPS):
        yield rng.normal(size=(GLOBAL_BATCH, 2, 6, 6)).astype(np.float32), rng.integers(0, 3, GLOBAL_BATCH)


def main(host: str, out_dir: Path) -> None:
    if host == "alone":
        for seed in SEEDS:
            net = train(small_net(seed), None, 0, 1)
            net.save_parameters(str(out_dir / f"alone-{seed}.params"))
        return
    resources = ResourceConfig(host, HOSTS)
    cluster = distributed.connect(resources, "dist_sync", read_distributed_settings(), _fail)
    rank = resources.rank
    # The hosts build different weights; broadcast_parameters must give every host algo-1's.
    net = small_net(SEEDS[rank])
    cluster.broadcast_parameters(net)
    net = train(net, cluster.kvstore, rank, 2)
    net.save_parameters(str(out_dir / f"{host}.params"))
    report = {}
    big = np.array([3 * 10**12 + rank, 2**24 + 1, 5], dtype=np.int64)
    report["sum"] = cluster.sum_integers("counts", big).tolist()
    report["seed"] = cluster.broadcast_integer("seed", 1234567 if rank == 0 else 99)
    local, agreed = threading.Event(), threading.Event()
    if rank == 1:
        local.set()  # a SIGTERM on the second host only
    report["batches_after_stop"] = len(list(cluster.agreed_batches(range(5), local, agreed)))
    report["agreed_stop"] = agreed.is_set()
    cluster.close()
    (out_dir / f"{host}.json").write_text(json.dumps(report))


def train(net: gluon.HybridBlock, kvstore, rank: int, world: int) -> gluon.HybridBlock:
    """STEPS steps of SGD with momentum through segmaker's trainer; this worker takes its contiguous share of
    each global batch and steps by its share (the trainer scales by the host count)."""
    trainer = GlobalBatchTrainer(
        net.collect_params(),
        "sgd",
        {"learning_rate": 0.1, "momentum": 0.9},
        hosts=world,
        kvstore=kvstore,
        update_on_kvstore=False if kvstore is not None else None,
    )
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    share = GLOBAL_BATCH // world
    for images, labels in global_batches():
        mine = slice(rank * share, (rank + 1) * share)
        with autograd.record():
            loss = loss_fn(net(mx.nd.array(images[mine])), mx.nd.array(labels[mine]))
        loss.backward()
        mx.nd.waitall()
        _occupy_the_engine()
        trainer.step(share)
    return net


def _occupy_the_engine() -> None:
    """Queue a long matrix product ahead of the step. The test runs the engine with ONE CPU worker thread
    (MXNET_CPU_WORKER_NTHREADS=1), so the step's kvstore operations all wait behind it and then leave in
    the engine's priority order rather than in the order they were issued: the first step's init pulls
    and gradient push-pulls meet as they would under load (the race optimizer.GlobalBatchTrainer closes)."""
    square = mx.nd.ones((1500, 1500))
    mx.nd.dot(square, square)


def _fail(reason: str) -> None:
    print("FAILED:", reason, flush=True)
    import os

    os._exit(3)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
