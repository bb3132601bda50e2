"""Training throughput: end-to-end (File mode: JPEG decode + augmentation through the real loader) divided
by model-only (the same network, crop and batch on tensors already in memory). Target: >= 0.95.

Both measurements run the same `train_one_epoch` on the same network and trainer, so the only difference
is where the batches come from. Warm-up iterations (graph construction, worker start-up) are not timed.

    .venv/bin/python bench/bench_training.py                 # small CPU settings, a few minutes
    .venv/bin/python bench/bench_training.py --crop-size 240 --batch-size 16 --iterations 30   # on a GPU
"""

import argparse
import itertools
import statistics
import sys
import tempfile
import threading
import time
from contextlib import closing
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for tests.synthetic, the shared synthetic-data generator

from segmaker import environment  # noqa: E402
from segmaker.config import parse_hyperparameters  # noqa: E402
from segmaker.data.order import DataOrder  # noqa: E402
from segmaker.training.devices import training_contexts, visible_gpu_count  # noqa: E402
from segmaker.training.epoch import EpochPlan, train_one_epoch  # noqa: E402
from segmaker.training.feed import DataFeed, find_training_data  # noqa: E402
from segmaker.training.job import TrainingJob  # noqa: E402
from segmaker.training.loss import SegmentationLoss  # noqa: E402
from segmaker.training.network import build_training_network  # noqa: E402
from segmaker.training.optimizer import make_trainer  # noqa: E402
from segmaker.training.schedule import LearningRateSchedule  # noqa: E402
from tests.synthetic import write_opt_ml  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithm", default="fcn", choices=("fcn", "psp", "deeplab"))
    parser.add_argument("--crop-size", type=int, default=64)
    parser.add_argument("--base-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=6, help="timed iterations per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating model-only / end-to-end rounds")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", default="auto", help="data_workers hyperparameter")
    parser.add_argument("--samples", type=int, default=48, help="synthetic JPEGs to write")
    parser.add_argument("--cpu-devices", type=int, default=1)
    return parser.parse_args(argv)


def make_job(base: Path, args: argparse.Namespace) -> TrainingJob:
    hyperparameters = {
        "algorithm": args.algorithm,
        "use_pretrained_model": "False",
        "crop_size": args.crop_size,
        "base_size": args.base_size,
        "mini_batch_size": args.batch_size,
        "data_workers": args.workers,
        "seed": 1,
    }
    paths = write_opt_ml(base, train=args.samples, validation=0, hyperparameters=hyperparameters)
    return TrainingJob(
        paths=paths,
        config=parse_hyperparameters(environment.read_hyperparameters(paths)),
        channels=environment.read_input_data_config(paths),
        resources=environment.ResourceConfig(),
        checkpoint_dir=None,
        mxnet_home=environment.mxnet_home(),
        cpu_devices=args.cpu_devices,
    )


class Trainer:
    """One network + trainer; `run(batches, n)` times n iterations of the real epoch loop."""

    def __init__(self, job: TrainingJob, contexts):
        self.contexts = contexts
        self.config = job.config
        self.net = build_training_network(job, contexts)
        self.trainer = make_trainer(self.net, job.config, "local")
        config = job.config
        self.loss = SegmentationLoss(config.num_classes, config.loss, aux_weight=config.aux_weight)
        self.schedule = LearningRateSchedule(0.001, "poly", total_iterations=10**6)

    def run(self, batches, iterations: int) -> float:
        """Images per second over `iterations` steps."""
        plan = EpochPlan(0, 0, iterations, iterations)
        started = time.perf_counter()
        stats = train_one_epoch(
            self.net, self.trainer, self.loss, batches, self.contexts, self.schedule, plan, threading.Event()
        )
        return stats.images / (time.perf_counter() - started)


def in_memory_batches(config):
    rng = np.random.default_rng(0)
    size, batch = config.crop_size, config.mini_batch_size
    images = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
    masks = rng.integers(0, config.num_classes, (batch, size, size)).astype(np.uint8)
    return itertools.repeat((images, masks))


def main(argv=None) -> int:
    args = parse_args(argv)
    contexts = training_contexts(visible_gpu_count(), args.cpu_devices)
    rounds = []
    with tempfile.TemporaryDirectory(prefix="bench-training-") as scratch:
        job = make_job(Path(scratch), args)
        trainer = Trainer(job, contexts)
        order = DataOrder(seed=1, batch_size=job.config.mini_batch_size)
        with DataFeed(job.config, find_training_data(job, order.seed), order) as feed:
            total = args.warmup + args.rounds * args.iterations
            with closing(feed.train_batches(0, 0, total)) as batches:
                trainer.run(batches, args.warmup)  # starts the data workers and builds the graph
                # Alternating the two measurements spreads a busy machine's noise over both alike.
                for _ in range(args.rounds):
                    model_only = trainer.run(in_memory_batches(job.config), args.iterations)
                    end_to_end = trainer.run(batches, args.iterations)
                    rounds.append((model_only, end_to_end))
    report(args, contexts, rounds)
    return 0


def report(args, contexts, rounds) -> None:
    print(
        f"devices: {', '.join(map(str, contexts))}; {args.algorithm} resnet50, crop {args.crop_size}, "
        f"batch {args.batch_size}, data_workers {args.workers}, "
        f"{args.rounds} rounds x {args.iterations} iterations"
    )
    for index, (model_only, end_to_end) in enumerate(rounds):
        print(
            f"round {index}: model-only {model_only:8.2f} images/s (tensors in memory), "
            f"end-to-end {end_to_end:8.2f} images/s (File mode, real loader): "
            f"ratio {end_to_end / model_only:.3f}"
        )
    model_only = statistics.median(m for m, _ in rounds)
    end_to_end = statistics.median(e for _, e in rounds)
    print(f"median model-only {model_only:.2f} images/s, median end-to-end {end_to_end:.2f} images/s")
    print(f"ratio end-to-end / model-only: {end_to_end / model_only:.3f} (target >= 0.95)")


if __name__ == "__main__":
    raise SystemExit(main())
