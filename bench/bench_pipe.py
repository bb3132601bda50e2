"""Pipe-mode benchmark, in one run:

1. RecordIO parse throughput over a FIFO ÷ a raw read of the same FIFO (`cat fifo > /dev/null`), with the
   same writer (`cat file > fifo`) in both cases. Target >= 0.8.
2. Training images/s in Pipe mode ÷ File mode on the same data (`segmaker train`, CPU, tiny FCN).
   Target >= 0.98. The two modes alternate round by round (the machine may be shared and noisy).

    .venv/bin/python bench/bench_pipe.py [--megabytes 200] [--repeats 5] [--skip-training]
"""

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.synthetic writes the training data

from segmaker.data.pipe import PipeChannel  # noqa: E402
from segmaker.data.pipe_feed import manifest_lines_for_folders, write_pipe_input_config  # noqa: E402
from segmaker.data.recordio import read_records, write_record  # noqa: E402
from segmaker.environment import Paths  # noqa: E402


# --- 1. parse throughput --------------------------------------------------------------------------------
def write_stream(path: Path, megabytes: int, seed: int = 0) -> int:
    """Image-like (50-200 kB) and mask-like (5-20 kB) records in turn; returns the record count."""
    rng = random.Random(seed)
    records, size = 0, 0
    with open(path, "wb") as out:
        while size < megabytes * 1_000_000:
            size += write_record(out, os.urandom(rng.randint(50_000, 200_000)))
            size += write_record(out, os.urandom(rng.randint(5_000, 20_000)))
            records += 2
    return records


def time_fifo_read(data: Path, fifo: Path, read: Callable[[Path], None]) -> float:
    """Seconds for `read` to drain the FIFO while `cat data > fifo` writes it."""
    if fifo.exists():
        fifo.unlink()
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", 'cat "$0" > "$1"', str(data), str(fifo)])
    started = time.perf_counter()
    read(fifo)
    elapsed = time.perf_counter() - started
    if writer.wait() != 0:
        raise RuntimeError("the writer failed")
    return elapsed


def cat_to_null(fifo: Path) -> None:
    subprocess.run(["sh", "-c", 'cat "$0" > /dev/null', str(fifo)], check=True)


def parse_records(fifo: Path) -> None:
    with open(fifo, "rb", buffering=0) as stream:
        for _ in read_records(stream, source=fifo.name):
            pass


def parse_samples(fifo: Path) -> None:
    """The whole Pipe-mode reading path: wait for the FIFO, records, pairs (no shuffle)."""
    channel = PipeChannel(Paths(fifo.parent.parent.parent), fifo.name.rsplit("_", 1)[0])
    for _ in channel.epoch(int(fifo.name.rsplit("_", 1)[1])):
        pass


def bench_parse(workdir: Path, megabytes: int, repeats: int) -> Dict[str, float]:
    data = workdir / "stream.rec"
    count = write_stream(data, megabytes)
    size = data.stat().st_size
    fifo_dir = workdir / "opt_ml" / "input" / "data"
    fifo_dir.mkdir(parents=True)
    fifo = fifo_dir / "train_0"
    readers = {"cat": cat_to_null, "read_records": parse_records, "PipeChannel": parse_samples}
    times: Dict[str, List[float]] = {name: [] for name in readers}
    for _ in range(repeats):  # interleaved, so a busy neighbour slows all of them alike
        for name, read in readers.items():
            times[name].append(time_fifo_read(data, fifo, read))
    medians = {name: size / statistics.median(t) / 1e6 for name, t in times.items()}
    print(f"stream: {size / 1e6:.0f} MB, {count} records; median of {repeats} runs, MB/s:")
    for name, rate in medians.items():
        print(f"  {name:13s} {rate:8.0f}   ratio to cat {rate / medians['cat']:.2f}")
    return medians


# --- 2. training throughput -----------------------------------------------------------------------------
HYPERPARAMETERS = {
    "use_pretrained_model": "False",
    "algorithm": "fcn",
    "mini_batch_size": "8",
    "crop_size": "64",
    "base_size": "96",
    "epochs": "4",  # the first is warm-up; the mean of the other three is the rate
    "seed": "1",
}


def training_tree(base: Path, data: Path, samples: int, pipe: bool) -> Paths:
    from tests.synthetic import write_opt_ml

    hyperparameters = dict(HYPERPARAMETERS, num_training_samples=str(samples))
    paths = write_opt_ml(base, train=0, validation=4, hyperparameters=hyperparameters)
    if pipe:
        write_pipe_input_config(paths, "train")
    else:  # the same files, linked into the File-mode layout
        (paths.data_dir / "train").symlink_to(data / "images")
        (paths.data_dir / "train_annotation").symlink_to(data / "masks")
        config = json.loads(paths.input_data_config_file.read_text())
        config.update({c: {"TrainingInputMode": "File"} for c in ("train", "train_annotation")})
        paths.input_data_config_file.write_text(json.dumps(config))
    return paths


def train_throughput(paths: Paths, manifest: Optional[Path]) -> float:
    """Mean `train throughput` (samples/s) over the epochs after the first (warm-up)."""
    feeder = None
    if manifest is not None:
        feeder = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "segmaker.data.pipe_feed",
                "--manifest",
                str(manifest),
                "--base-dir",
                str(paths.base),
                "--epochs",
                HYPERPARAMETERS["epochs"],
                "--reader-timeout",
                "120",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    # No int8 quantization after each run: it is not part of the training throughput and costs a minute.
    env = dict(os.environ, SAGEMAKER_BASE_DIR=str(paths.base), SEGMAKER_QUANTIZE="off")
    try:
        result = subprocess.run(
            [sys.executable, "-m", "segmaker", "train"], env=env, capture_output=True, text=True, timeout=1800
        )
    finally:
        if feeder is not None:
            feeder.kill()
            feeder.wait()
    if result.returncode != 0:
        reason = (
            paths.failure_file.read_text().strip() if paths.failure_file.exists() else result.stderr[-500:]
        )
        raise RuntimeError(reason)
    rates = [
        float(r)
        for r in re.findall(r"train throughput: ([0-9.]+) samples/sec", result.stdout + result.stderr)
    ]
    return statistics.mean(rates[1:] or rates)


def bench_training(workdir: Path, samples: int, rounds: int) -> float:
    """Pipe ÷ File training images/s, alternating the two modes round by round so that background load on
    a shared machine weighs on both alike; the ratio is of the medians."""
    from tests.synthetic import write_split

    data = workdir / "train_data"
    write_split(data / "images", data / "masks", samples, seed=0)
    manifest = workdir / "train.jsonl"
    lines = manifest_lines_for_folders(data / "images", data / "masks", "segmentation-ref")
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    rates: Dict[str, List[float]] = {"File": [], "Pipe": []}
    for index in range(rounds):
        for mode, source in (("File", None), ("Pipe", manifest)):
            tree = training_tree(workdir / f"{mode.lower()}_{index}", data, samples, pipe=source is not None)
            rates[mode].append(train_throughput(tree, source))
            print(f"training round {index}, {mode} mode: {rates[mode][-1]:.2f} samples/s")
    ratio = statistics.median(rates["Pipe"]) / statistics.median(rates["File"])
    print(f"training images/s, Pipe ÷ File (median of {rounds} rounds each): {ratio:.3f}   (target >= 0.98)")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--training-samples", type=int, default=64)
    parser.add_argument("--training-rounds", type=int, default=3)
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_pipe_") as tmp:
        bench_parse(Path(tmp), args.megabytes, args.repeats)
        if not args.skip_training:
            bench_training(Path(tmp), args.training_samples, args.training_rounds)


if __name__ == "__main__":
    main()
