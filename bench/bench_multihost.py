"""One host against two hosts on the same global batch and seed: validation mIOU and training loss per epoch
(agreement target: within 2 %), images/s per host, and the time per step spent communicating.

The two-host job runs as two local `segmaker train` processes on 127.0.0.1 and 127.0.0.2 (each with its own
/opt/ml tree and resourceconfig.json, as SageMaker lays them out); the one-host job splits the same global
batch over as many CPU devices (SEGMAKER_CPU_DEVICES), so both see the same slices. The three processes run
one after the other, never side by side, so no run slows another.

Communication is timed by wrapping `gluon.Trainer._allreduce_grads` with `mx.nd.waitall()` on both sides (in
the bench's own worker processes only: the wait costs the overlap MXNet would otherwise get).

Dropout is off by default (the test harness does the same): one host draws its devices' dropout masks from one
CPU generator in turn, each host from its own, so with `--dropout` the two jobs differ like two seeds.

On a machine with 2 cores, two hosts share those cores with each other and with their servers: no wall-clock
speed-up can show here, and the bench does not claim one. Run it on two real hosts for that.

    .venv/bin/python bench/bench_multihost.py [--epochs 3] [--samples 16] [--batch-size 4]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

HOSTS = ["127.0.0.1", "127.0.0.2"]
WITHOUT_DROPOUT_ENV = "SEGMAKER_BENCH_WITHOUT_DROPOUT"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop-size", type=int, default=48)
    parser.add_argument(
        "--dropout",
        action="store_true",
        help="keep the Dropout layers (each host then draws its own masks: the runs differ like two seeds)",
    )
    parser.add_argument("--worker", nargs=1, help=argparse.SUPPRESS)  # internal: run one timed `train`
    return parser.parse_args(argv)


def timed_worker(report: Path) -> int:
    """`segmaker train` with the gradient exchange timed; the totals go to `report` (JSON)."""
    import mxnet as mx
    from mxnet import gluon

    from segmaker import cli

    totals = {"steps": 0, "allreduce_seconds": 0.0}
    original = gluon.Trainer._allreduce_grads

    def timed(self):
        mx.nd.waitall()
        started = time.perf_counter()
        original(self)
        mx.nd.waitall()
        totals["allreduce_seconds"] += time.perf_counter() - started
        totals["steps"] += 1

    gluon.Trainer._allreduce_grads = timed
    if os.environ.get(WITHOUT_DROPOUT_ENV) == "1":
        # One host draws its devices' dropout masks from one CPU generator in turn, each host from its own:
        # with dropout the comparison would measure two random streams, not the distributed step.
        gluon.nn.Dropout.hybrid_forward = lambda self, F, x: x
    code = cli.main(["train"])
    report.write_text(json.dumps(totals))
    return code


def write_tree(base: Path, args, host=None):
    from tests.synthetic import write_opt_ml

    hyperparameters = {
        "use_pretrained_model": "False",
        "crop_size": args.crop_size,
        "base_size": args.crop_size,
        "epochs": args.epochs,
        "mini_batch_size": args.batch_size,
        "validation_mini_batch_size": 2,
        "data_workers": 1,
        "seed": 5,
        "optimizer": "adam",
        "learning_rate": 0.001,
    }
    paths = write_opt_ml(
        base, num_classes=2, train=args.samples, validation=4, hyperparameters=hyperparameters
    )
    if host is not None:
        resources = {"current_host": host, "hosts": HOSTS, "network_interface_name": "lo"}
        paths.resource_config_file.write_text(json.dumps(resources))
    return paths


def launch(paths, host, ports, dropout: bool, **environ):
    env = dict(
        os.environ,
        **{WITHOUT_DROPOUT_ENV: "0" if dropout else "1"},
        SAGEMAKER_BASE_DIR=str(paths.base),
        PYTHONPATH=f"{REPO / 'src'}:{REPO}",
        SEGMAKER_PS_PORT=str(ports[0]),
        SEGMAKER_STATUS_PORT=str(ports[1]),
        **environ,
    )
    if host is not None:
        env["SEGMAKER_NODE_HOST"] = host
    log = open(paths.base / "train.log", "wb")  # noqa: SIM115
    command = [sys.executable, __file__, "--worker", str(paths.base / "comm.json")]
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


def summarise(name: str, paths, seconds: float, images_per_host: int) -> list:
    from segmaker.outputs import read_metrics

    records = read_metrics(paths.output_data_dir)
    comm = json.loads((paths.base / "comm.json").read_text())
    per_step = comm["allreduce_seconds"] / max(1, comm["steps"])
    print(
        f"{name}: {seconds:.0f} s, {images_per_host / seconds:.2f} images/s per host (wall clock, set-up"
        f" included), {per_step * 1000:.0f} ms per step in the gradient exchange ({comm['steps']} steps)"
    )
    return records


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return timed_worker(Path(args.worker[0]))
    from tests.docker_helpers import free_port

    with tempfile.TemporaryDirectory(prefix="bench-multihost-") as scratch:
        base = Path(scratch)
        ports = (free_port(), free_port())
        images = args.epochs * (args.samples // args.batch_size) * args.batch_size
        alone = write_tree(base / "alone", args)
        started = time.monotonic()
        assert launch(alone, None, ports, args.dropout, SEGMAKER_CPU_DEVICES="2").wait() == 0
        one = summarise("1 host x 2 devices", alone, time.monotonic() - started, images)
        trees = [write_tree(base / host, args, host) for host in HOSTS]
        started = time.monotonic()
        jobs = [launch(paths, host, ports, args.dropout) for paths, host in zip(trees, HOSTS)]
        codes = [job.wait() for job in jobs]
        assert codes == [0, 0], (trees[0].base / "train.log").read_text()[-3000:]
        two = summarise("2 hosts x 1 device", trees[0], time.monotonic() - started, images // 2)
        print(f"GluonCV's Dropout layers {'on' if args.dropout else 'off (--dropout keeps them)'}")
        print("epoch  mIOU 1 host  mIOU 2 hosts  diff    loss 1 host  loss 2 hosts  diff")
        worst = 0.0
        for a, b in zip(one, two):
            d_miou = abs(a.mIOU - b.mIOU) / max(a.mIOU, 1e-9)
            d_loss = abs(a.train_loss - b.train_loss) / max(a.train_loss, 1e-9)
            worst = max(worst, d_miou, d_loss)
            print(
                f"{a.epoch:5d}  {a.mIOU:11.4f}  {b.mIOU:12.4f}  {d_miou:5.1%}  {a.train_loss:11.4f}"
                f"  {b.train_loss:12.4f}  {d_loss:5.1%}"
            )
        print(f"largest relative difference {worst:.2%} (target <= 2 %)")
        print("On this machine both hosts share the same cores: no wall-clock speed-up can show.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
