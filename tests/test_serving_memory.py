"""Peak memory of large requests, measured in fresh processes (tests/memory_probe.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def probe(*arguments: str) -> dict:
    environ = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
                   OMP_NUM_THREADS="2")
    done = subprocess.run([sys.executable, "-m", "tests.memory_probe", *arguments], cwd=str(ROOT),
                          env=environ, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(result)
    assert result["status"] == 200
    return result


def test_a_24_megapixel_image_at_native_scale_grows_the_server_by_less_than_1_5_gb():
    """6000 x 4000, 21 classes, 520-pixel tiles: the decoded image (72 MB), its mask (24 MB) and the
    blending accumulator (21 x 520 x 6000 floats, 262 MB) are what it costs, not 21 x 24 M floats (2 GB)."""
    result = probe("--height", "4000", "--width", "6000", "--classes", "21", "--image-scale", "native")
    assert result["growth_mb"] < 1536


@pytest.mark.parametrize("image_scale", ["base_size", "native"])
def test_probabilities_at_the_limit_cost_about_one_copy_of_the_answer(image_scale):
    """21 classes x 2000 x 2000 pixels at SEGMAKER_MAX_PROBABILITY_VALUES: a 320 MB answer written into its
    response buffer a few rows (native) or a class at a time (base_size). Besides the answer: the blending
    accumulator and tile buffers (native), two passes' class-sized maps (base_size), and what MXNet's and
    malloc's pools keep: measured 1.7 to 1.8 x the answer for both on a busy machine; computing the whole
    C x H x W softmax and then encoding it took several copies)."""
    result = probe("--height", "2000", "--width", "2000", "--classes", "21", "--image-scale", image_scale,
                   "--accept", "application/x-recordio-protobuf")
    assert 320 < result["answer_mb"] < 321
    assert result["growth_mb"] < 2.0 * result["answer_mb"]
