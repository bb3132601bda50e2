"""Overlapping requests: only the forward is serialised; everything around it runs concurrently."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import List

import mxnet as mx
import numpy as np

from segmaker.models import SegmentationInference
from segmaker.serving.predictor import Predictor
from tests.serving_model import tiny_predictor

SIZE = 32


class GatedForward:
    """A forward that records how many calls are inside it at once, and can be held open by a test."""

    def __init__(self) -> None:
        self.inside = 0
        self.most_inside = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        self._count_lock = threading.Lock()

    def __call__(self, inputs: List[np.ndarray]) -> List[mx.nd.NDArray]:
        with self._count_lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        self.entered.set()
        self.release.wait(30)
        with self._count_lock:
            self.inside -= 1
        # Logits favouring class 1 over the whole working square.
        return [mx.nd.array(np.stack([np.zeros((SIZE, SIZE)), np.ones((SIZE, SIZE))]).astype(np.float32))
                for _ in inputs]


def test_preparation_of_a_request_overlaps_another_requests_forward():
    """While request A is held inside the forward, request B's resize and normalisation run (they are
    observed happening), B then waits for the forward; both finish once A's forward is released."""
    forward = GatedForward()
    engine = SegmentationInference(None, SIZE, [mx.cpu()], forward=forward)
    prepared_by = []
    original_prepare = engine._prepare

    def observed_prepare(image, *options):
        prepared_by.append(threading.current_thread().name)
        return original_prepare(image, *options)

    engine._prepare = observed_prepare
    predictor = Predictor(engine, ["a", "b"], "test")
    image = np.zeros((20, 30, 3), np.uint8)
    with ThreadPoolExecutor(2, thread_name_prefix="request") as pool:
        first = pool.submit(predictor.predict_mask, image)
        assert forward.entered.wait(10)
        second = pool.submit(predictor.predict_mask, image)
        deadline = time.monotonic() + 3  # well before the held forward would give up (30 s)
        while len(prepared_by) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(prepared_by) == 2 and forward.inside == 1  # B prepared while A is still in the forward
        forward.release.set()
        masks = [first.result(10), second.result(10)]
    assert all(mask.shape == (20, 30) and (mask == 1).all() for mask in masks)
    assert forward.most_inside == 1  # never two forwards at once


def test_concurrent_requests_give_the_masks_of_sequential_ones():
    """The real MXNet engine (hybridized static graph, shared buffers) from four threads at once: every mask
    equals the one computed alone, so the forward lock protects the graph and nothing else is shared."""
    predictor = tiny_predictor("fcn", size=SIZE)
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (int(rng.integers(16, 60)), int(rng.integers(16, 60)), 3), np.uint8)
              for _ in range(12)]
    alone = [predictor.predict_mask(image) for image in images]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(predictor.predict_mask, images))
    assert all(np.array_equal(a, b) for a, b in zip(alone, together))
