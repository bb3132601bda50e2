"""Issue 12's figures side by side in one run: int8 CPU serving, overlapping requests, Pipe mode.

1. Forward at 512x512 (ResNet-50; FCN, DeepLab, PSP; random weights: speed does not depend on them): GluonCV's
   eager `predict()`, our float ONNX model and its int8 quantization (segmaker.quantize.quantize_onnx), timed
   in interleaved rounds (each round runs all three once), ratios of the medians.
   Targets: int8 / eager <= 0.30 (FCN, DeepLab; PSP reported), int8 / float ONNX <= 0.6.
   Also printed: whether the CPU has AVX-512 VNNI, and the op types ONNX Runtime runs for the int8 model
   (QLinearConv = int8 kernels).
2. Serving: `segmaker serve` on the FCN model (auto engine: int8), 1 client and 4 clients in alternating
   rounds: 4-client throughput / 1-client (target >= 1.0), p99/p50 (<= 3), errors (0).
3. Training images/s in Pipe mode / File mode, alternating rounds (target >= 0.98; bench_pipe.py).

    .venv/bin/python bench/bench_speed.py [--rounds 5] [--seconds 30] [--skip-forward|serving|pipe]
"""

import argparse
import collections
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from bench_serving import alternating_load_tests, percentile  # noqa: E402

from segmaker.quantize import quantize_onnx  # noqa: E402
from tests.serving_model import image_bytes, write_tiny_model_dir  # noqa: E402
from tests.test_server_live import LiveServer  # noqa: E402

ALGORITHMS = ("fcn", "deeplab", "psp")
CALIBRATION_INPUTS = 4


def has_vnni() -> bool:
    try:
        return "avx512_vnni" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def session(onnx_file: Path, optimized: Path = None):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    return onnxruntime.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])


def make_int8(model_dir: Path, size: int) -> Path:
    rng = np.random.default_rng(0)
    calibration = [rng.standard_normal((3, size, size)).astype(np.float32) for _ in range(CALIBRATION_INPUTS)]
    target = model_dir / "model.int8.onnx"
    started = time.perf_counter()
    quantize_onnx(model_dir / "model.onnx", target, calibration)
    print(f"    {model_dir.name}: quantized in {time.perf_counter() - started:.0f} s")
    return target


def int8_op_types(int8_file: Path) -> collections.Counter:
    import onnx

    optimized = int8_file.with_name("optimized.int8.onnx")
    session(int8_file, optimized)
    return collections.Counter(node.op_type for node in onnx.load(str(optimized)).graph.node)


def forward_timer(onnx_file: Path, size: int) -> Callable[[], object]:
    run = session(onnx_file).run
    feed = {"data": np.zeros((1, 3, size, size), np.float32)}
    return lambda: run(None, feed)


def interleaved_forwards(timers: Dict[str, Callable[[], object]], rounds: int) -> Dict[str, float]:
    """Median seconds of each timer, all run once per round (a passing load weighs on all alike)."""
    for timer in timers.values():
        timer()  # warm-up
    times: Dict[str, List[float]] = {name: [] for name in timers}
    for _ in range(rounds):
        for name, timer in timers.items():
            start = time.perf_counter()
            timer()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def eager_timer(model_dir: Path) -> Callable[[], object]:
    import mxnet as mx

    from segmaker import artifacts

    model = artifacts.read_model_dir(model_dir)
    net = artifacts.load_network(model.manifest, model.params_file(), aux=True)
    x = mx.nd.zeros((1, 3, model.manifest.working_size, model.manifest.working_size))
    return lambda: net.predict(x).wait_to_read()


def bench_forwards(dirs: Dict[str, Path], size: int, rounds: int) -> None:
    print(f"1. forward at {size}x{size}, median of {rounds} interleaved rounds"
          f" (CPU has AVX-512 VNNI: {'yes' if has_vnni() else 'no'}):")
    for name, model_dir in dirs.items():
        timers = {"eager": eager_timer(model_dir), "float": forward_timer(model_dir / "model.onnx", size),
                  "int8": forward_timer(model_dir / "model.int8.onnx", size)}
        medians = interleaved_forwards(timers, rounds)
        target = "<= 0.30" if name != "psp" else "reported"
        eager, float_onnx = medians["eager"], medians["float"]
        print(f"    {name:8s} eager {eager * 1000:7.0f} ms  float ONNX {float_onnx * 1000:7.0f} ms"
              f"  int8 {medians['int8'] * 1000:7.0f} ms | int8/eager {medians['int8'] / medians['eager']:.2f}"
              f" ({target})  int8/float {medians['int8'] / medians['float']:.2f} (<= 0.6)"
              f"  float/eager {medians['float'] / medians['eager']:.2f}")
    ops = int8_op_types(dirs["fcn"] / "model.int8.onnx")
    print(f"    int8 FCN as ONNX Runtime runs it: {dict(ops.most_common(8))}")


def bench_concurrency(model_dir: Path, size: int, seconds: float, rounds: int) -> None:
    body = image_bytes(size, size, "JPEG")
    # The server's own plan for this machine (workers, intra-op threads), as `segmaker serve` runs it.
    server = LiveServer(model_dir, SAGEMAKER_MAX_PAYLOAD_IN_MB="6", SAGEMAKER_MODEL_SERVER_WORKERS="",
                        OMP_NUM_THREADS=str(os.cpu_count() or 1))
    try:
        server.wait_ready()
        seq_n, seq_err, _, seq_wall, con_n, con_err, con_lat, con_wall = alternating_load_tests(
            server.url, body, seconds, rounds)
    finally:
        server.stop()
    ratio = (con_n / con_wall) / (seq_n / seq_wall)
    p50, p99 = percentile(con_lat, 50), percentile(con_lat, 99)
    print(f"2. serving {size}x{size} JPEG -> PNG, {rounds} alternating rounds of {seconds / rounds:.0f} s"
          f" each: 1 client {seq_n / seq_wall:.2f}/s, 4 clients {con_n / con_wall:.2f}/s"
          f" = x{ratio:.2f} (>= 1.0);"
          f" p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, p99/p50 {p99 / p50:.2f} (<= 3);"
          f" errors {con_err + seq_err} (0)")


def bench_pipe_mode(workdir: Path, rounds: int) -> None:
    from bench_pipe import bench_training

    os.environ["SEGMAKER_QUANTIZE"] = "off"  # the runs measure training, not the minute of quantization
    print("3. training, Pipe / File:")
    workdir.mkdir(parents=True, exist_ok=True)
    bench_training(workdir, 64, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved forward rounds")
    parser.add_argument("--seconds", type=float, default=30, help="total seconds per client count")
    parser.add_argument("--load-rounds", type=int, default=3)
    parser.add_argument("--pipe-rounds", type=int, default=3)
    parser.add_argument("--skip-pipe", action="store_true")
    parser.add_argument("--skip-forward", action="store_true")
    parser.add_argument("--skip-serving", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_speed_") as scratch:
        print("models (random weights) and their int8 quantization:")
        names = ("fcn",) if args.skip_forward else ALGORITHMS
        dirs = {name: write_tiny_model_dir(Path(scratch) / name, name, size=args.size) for name in names}
        for model_dir in dirs.values():
            make_int8(model_dir, args.size)
        if not args.skip_forward:
            bench_forwards(dirs, args.size, args.rounds)
        if not args.skip_serving:
            bench_concurrency(dirs["fcn"], args.size, args.seconds, args.load_rounds)
        if not args.skip_pipe:
            bench_pipe_mode(Path(scratch) / "pipe", args.pipe_rounds)


if __name__ == "__main__":
    main()
