"""Serving benchmark, all in one run (random weights: speed does not depend on them).

(a) p50 /invocations latency of a 512x512 JPEG -> PNG mask through the real server, divided by the
    forward time of the served engine at the same working size (target <= 1.10: serving overhead small);
(b) served forward (engine chosen as the server does) / GluonCV eager `predict()` with the same weights
    and size, for FCN, DeepLab and PSP (targets 0.55, 0.80, 0.85);
(c) 4 concurrent clients for a bounded time: errors, throughput vs sequential, p99/p50 latency;
(d) cold start: `segmaker serve` to the first 200 on /ping (target <= 15 s).

Usage: .venv/bin/python bench/bench_serving.py [--size 512] [--seconds 30] [--rounds 3]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, List, Tuple

import numpy as np
import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.serving_model import image_bytes, write_tiny_model_dir  # noqa: E402
from tests.test_server_live import LiveServer  # noqa: E402


def timed(function: Callable[[], object], repeats: int) -> List[float]:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def bare_forward(model_dir: Path) -> Tuple[str, Callable[[], object]]:
    """The engine the server would choose, and a call of its bare forward at the working size (no decode,
    resize, argmax or encode): what a request costs at the least."""
    from segmaker.serving.predictor import load_predictor

    predictor = load_predictor(model_dir, threads=os.cpu_count() or 1)
    engine = predictor._engine  # the bench measures the bare forward, without pre/post-processing
    batch = [np.zeros((3, predictor.working_size, predictor.working_size), np.float32)]
    return predictor.engine_name, lambda: engine.forward(batch)[0].wait_to_read()


def served_forward_seconds(model_dir: Path, repeats: int) -> Tuple[str, float]:
    """The served engine's name and the median time of its bare forward."""
    name, forward = bare_forward(model_dir)
    return name, statistics.median(timed(forward, repeats))


def interleaved_overhead(
    model_dir: Path, url: str, body: bytes, repeats: int, rounds: int
) -> Tuple[float, float]:
    """(p50 request latency, median bare forward), taken in alternating rounds: the server and this process
    never compute at the same time, and a background load that comes and goes weighs on both alike."""
    _, forward = bare_forward(model_dir)
    forwards: List[float] = []
    latencies: List[float] = []
    for _ in range(rounds):
        forwards += timed(forward, repeats)
        latencies += [post(url, body)[1] for _ in range(repeats)]
    return statistics.median(latencies), statistics.median(forwards)


def eager_predict_seconds(model_dir: Path, repeats: int) -> float:
    """GluonCV's own `predict()` (eager, not hybridized) with the same weights at the same size."""
    import mxnet as mx

    from segmaker import artifacts

    model = artifacts.read_model_dir(model_dir)
    net = artifacts.load_network(model.manifest, model.params_file(), aux=True)
    x = mx.nd.zeros((1, 3, model.manifest.working_size, model.manifest.working_size))
    return statistics.median(timed(lambda: net.predict(x).wait_to_read(), repeats))


def post(url: str, body: bytes) -> Tuple[int, float]:
    start = time.perf_counter()
    status = requests.post(url + "/invocations", data=body, headers={"Content-Type": "image/jpeg"},
                           timeout=120).status_code
    return status, time.perf_counter() - start


def load_test(url: str, body: bytes, clients: int, seconds: float) -> Tuple[int, int, List[float], float]:
    """Each client posts in a loop until `seconds` pass: (requests, errors, latencies, wall seconds)."""
    deadline = time.monotonic() + seconds

    def client(_):
        results = []
        while time.monotonic() < deadline:
            results.append(post(url, body))
        return results

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = [r for batch in pool.map(client, range(clients)) for r in batch]
    wall = time.perf_counter() - start
    return len(results), sum(1 for s, _ in results if s != 200), [t for _, t in results], wall


def alternating_load_tests(url: str, body: bytes, seconds: float, rounds: int):
    """1-client and 4-client load tests in alternating rounds of seconds / rounds each, summed per client
    count: a background load that comes and goes then weighs on both alike (one long run each would not).
    Returns (requests, errors, latencies, wall seconds) for 1 client, then the same for 4."""
    results = {1: [], 4: []}
    for _ in range(rounds):
        for clients in (1, 4):
            results[clients].append(load_test(url, body, clients, seconds / rounds))
    return tuple(value for clients in (1, 4) for value in _summed(results[clients]))


def _summed(runs):
    return (sum(r[0] for r in runs), sum(r[1] for r in runs), [t for r in runs for t in r[2]],
            sum(r[3] for r in runs))


def percentile(values: List[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="working size and test image side")
    parser.add_argument("--seconds", type=float, default=30, help="duration of each load test")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="alternating 1-client / 4-client rounds")
    args = parser.parse_args()
    body = image_bytes(args.size, args.size, "JPEG")
    with tempfile.TemporaryDirectory() as scratch:
        dirs = {name: write_tiny_model_dir(Path(scratch) / name, name, size=args.size)
                for name in ("fcn", "deeplab", "psp")}
        targets = {"fcn": 0.55, "deeplab": 0.80, "psp": 0.85}
        print(f"(b) served forward / GluonCV eager predict() at {args.size}x{args.size}:")
        for name, model_dir in dirs.items():
            engine, served = served_forward_seconds(model_dir, args.repeats)
            eager = eager_predict_seconds(model_dir, args.repeats)
            print(f"    {name:8s} engine {engine:5s} served {served * 1000:7.1f} ms"
                  f"  eager {eager * 1000:7.1f} ms  ratio {served / eager:.2f} (target {targets[name]:.2f})")

        start = time.perf_counter()
        server = LiveServer(dirs["fcn"], SAGEMAKER_MODEL_SERVER_WORKERS="1", SAGEMAKER_MAX_PAYLOAD_IN_MB="6",
                            OMP_NUM_THREADS=str(os.cpu_count() or 1))
        try:
            server.wait_ready()
            cold = time.perf_counter() - start
            p50, bare = interleaved_overhead(dirs["fcn"], server.url, body, args.repeats, args.rounds)
            print(f"(a) p50 /invocations {args.size}x{args.size} JPEG->PNG {p50 * 1000:.1f} ms / forward"
                  f" {bare * 1000:.1f} ms = {p50 / bare:.2f} (target <= 1.10; alternating rounds)")
            seq_n, seq_err, seq_lat, seq_wall, con_n, con_err, con_lat, con_wall = alternating_load_tests(
                server.url, body, args.seconds, args.rounds)
            print(f"(c) 4 clients for {args.seconds:.0f} s: {con_n} requests, {con_err} errors (sequential:"
                  f" {seq_err}); throughput {con_n / con_wall:.2f}/s vs sequential {seq_n / seq_wall:.2f}/s"
                  f" = x{(con_n / con_wall) / (seq_n / seq_wall):.2f};"
                  f" p50 {percentile(con_lat, 50) * 1000:.0f} ms,"
                  f" p99 {percentile(con_lat, 99) * 1000:.0f} ms, p99/p50"
                  f" {percentile(con_lat, 99) / percentile(con_lat, 50):.2f}")
            print(f"(d) cold start `segmaker serve` to first /ping 200: {cold:.1f} s (target <= 15 s)")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
