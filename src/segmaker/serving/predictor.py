"""The model as the server sees it: loaded once per worker process, after the fork, and warmed up.

Any input size works for all three algorithms with bounded memory: inference goes through
`models.SegmentationInference`, which resizes the image's long side to the model's working size, pads to
a square, runs one static-shape forward and resizes the logits back to the image's H x W (the mask is
computed a few classes at a time). Only the decoded image, its mask and one working-size forward scale
with the request.

Three engines run that forward: MXNet's hybridized static graph, or ONNX Runtime (CPU only) on
`model.onnx` or on its int8 quantization `model.int8.onnx` (segmaker.quantize; present only when it agreed
with the float model on the validation images). The choice is a rule, not a measurement at load (building
and timing engines cost several working-size forwards of cold start): SEGMAKER_ENGINE when set; MXNet on a
GPU; on a CPU the int8 model when present, else `model.onnx` when present (written only when the export
succeeded; both faster than MXNet on CPU for all three algorithms, see bench/bench_serving.py (b)); MXNet
otherwise. Only the chosen engine
is built, and warmed up with one working-size forward before /ping answers 200.
"""

import logging
import threading
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import mxnet as mx
import numpy as np

from segmaker.errors import UserError
from segmaker.models import SegmentationInference
from segmaker.serving.codecs import RequestOptions

LOG = logging.getLogger(__name__)


class OnnxInference(SegmentationInference):
    """SegmentationInference whose static-shape forward runs in ONNX Runtime instead of MXNet.

    Pre- and post-processing (resize, pad, crop, resize back, argmax) are SegmentationInference's, so
    both engines give the same masks; only the forward function differs, and no MXNet network is built.
    """

    def __init__(self, onnx_file: Path, working_size: int, threads: int = 1, image_scale: str = "base_size"):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        # Idle intra-op threads would otherwise spin after each run, stealing the cores that decoding,
        # resizing and encoding of concurrent requests need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = onnxruntime.InferenceSession(str(onnx_file), options,
                                                     providers=["CPUExecutionProvider"])
        self._input_name = self._session.get_inputs()[0].name
        super().__init__(None, working_size, [mx.cpu()], forward=self._run_session, image_scale=image_scale)

    def _run_session(self, inputs: List[np.ndarray]) -> List[mx.nd.NDArray]:
        # The graph is exported for a batch of one (static shape), so images go through one at a time.
        return [mx.nd.array(self._session.run(None, {self._input_name: array[np.newaxis]})[0][0])
                for array in inputs]


class Predictor:
    """One worker's model: image in, mask or probabilities out. Safe to call from several threads.

    Only the engine's forward is serialised (SegmentationInference's lock): the resizing and normalising
    before it and the cropping, resizing back and argmax after it, like decoding and encoding in the app,
    run in the request's own thread while another request's forward runs.
    """

    def __init__(self, engine: SegmentationInference, class_names: Sequence[str], engine_name: str):
        self.engine_name = engine_name
        self.class_names = list(class_names)
        self.working_size = engine.working_size
        self._engine = engine
        self._probabilities_lock = threading.Lock()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def warm_up(self) -> float:
        """Run one forward at the working size (allocates the static graph); return its seconds."""
        return _time_forward(self._engine)

    @property
    def image_scale(self) -> str:
        return self._engine.image_scale

    def processing_shape(self, shape: Tuple[int, int], options: Optional[RequestOptions] = None
                         ) -> Tuple[int, int]:
        """(h, w) at which the model looks at an H x W image with these options."""
        return self._engine.processing_shape(shape, (options or RequestOptions()).scale)

    def predict_mask(self, image: np.ndarray, options: Optional[RequestOptions] = None) -> np.ndarray:
        """H x W uint8 class ids for an H x W x 3 uint8 RGB image."""
        options = options or RequestOptions()
        return self._engine.predict_masks([image], scale=options.scale, flip=options.flip)[0]

    def predict_probabilities(self, image: np.ndarray,
                              options: Optional[RequestOptions] = None) -> np.ndarray:
        """C x H x W float32 class probabilities for an H x W x 3 uint8 RGB image."""
        options = options or RequestOptions()
        return self._engine.predict_probabilities([image], scale=options.scale, flip=options.flip)[0]

    def write_probabilities(self, image: np.ndarray, allocate: Callable[[int], np.ndarray],
                            options: Optional[RequestOptions] = None) -> None:
        """The probabilities written into `allocate(C)` (the response buffer). One such answer at a time per
        worker: at the SEGMAKER_MAX_PROBABILITY_VALUES limit each holds 480 MB."""
        options = options or RequestOptions()
        with self._probabilities_lock:
            self._engine.write_probabilities(image, allocate, scale=options.scale, flip=options.flip)


def _time_forward(engine: SegmentationInference) -> float:
    image = np.zeros((engine.working_size, engine.working_size, 3), np.uint8)
    start = time.perf_counter()
    engine.predict_masks([image])
    return time.perf_counter() - start


def choose_engine(forced: Optional[str], has_onnx: bool, gpu: Optional[int], has_int8: bool = False) -> str:
    """The engine that serves the model: `forced` (SEGMAKER_ENGINE) when set; else on a CPU the int8 ONNX
    model when it exists (it passed the quantization gate), then the float ONNX model; else MXNet.
    UserError when an ONNX engine is forced but cannot run."""
    if forced not in (None, "mxnet", "onnx", "onnx-int8"):
        raise ValueError(f"unknown engine {forced!r}")
    if forced in ("onnx", "onnx-int8"):
        present = has_int8 if forced == "onnx-int8" else has_onnx
        file_name = "model.int8.onnx" if forced == "onnx-int8" else "model.onnx"
        if not present or gpu is not None:
            reason = "ONNX serving is CPU only" if present else f"the model directory has no {file_name}"
            raise UserError(f"SEGMAKER_ENGINE={forced} cannot be used: {reason}; unset SEGMAKER_ENGINE to"
                            " let segmaker choose")
    if forced is not None:
        return forced
    if gpu is None and has_int8:
        return "onnx-int8"
    return "onnx" if has_onnx and gpu is None else "mxnet"


class _StartupLog:
    """Logs how long each step of loading the model took, and the total (the cold start's budget)."""

    def __init__(self) -> None:
        self._start = self._last = time.perf_counter()

    def step(self, what: str) -> None:
        now = time.perf_counter()
        LOG.info("model load: %s in %.2f s", what, now - self._last)
        self._last = now

    def total(self) -> float:
        return time.perf_counter() - self._start


def load_predictor(model_dir: Path, *, engine: Optional[str] = None, gpu: Optional[int] = None,
                   threads: int = 1) -> Predictor:
    """Load the model directory, build the engine `choose_engine` picks (only that one), and warm it up."""
    from segmaker import artifacts

    clock = _StartupLog()
    model = artifacts.read_model_dir(model_dir)
    clock.step("read model directory")
    name = choose_engine(engine, model.onnx_file is not None, gpu, model.int8_onnx_file is not None)
    if name in ("onnx", "onnx-int8"):
        onnx_file = model.int8_onnx_file if name == "onnx-int8" else model.onnx_file
        chosen: SegmentationInference = OnnxInference(onnx_file, model.manifest.working_size, threads,
                                                      image_scale=model.manifest.image_scale)
        clock.step(f"ONNX Runtime session ({threads} intra-op threads)")
    else:
        contexts = [mx.gpu(gpu)] if gpu is not None else [mx.cpu()]
        chosen = artifacts.load_inference(model, contexts)
        clock.step("MXNet network built, parameters loaded, hybridized")
    predictor = Predictor(chosen, model.manifest.names(), name)
    seconds = predictor.warm_up()
    clock.step(f"warm-up forward at {model.manifest.working_size}x{model.manifest.working_size}")
    LOG.info("model %s loaded in %.1f s: engine %s, %d classes, working size %d (one forward %.2f s)",
             model_dir, clock.total(), name, predictor.num_classes, predictor.working_size, seconds)
    return predictor
