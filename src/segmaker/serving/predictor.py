"""The model as the server sees it: loaded once per worker process, after the fork, and warmed up.

Any input size works for all three algorithms with bounded memory: inference goes through
`models.SegmentationInference`, which resizes the image's long side to the model's working size, pads to
a square, runs one static-shape forward and resizes the logits back to the image's H x W (the mask is
computed a few classes at a time). Only the decoded image, its mask and one working-size forward scale
with the request.

Two engines run that forward: MXNet's hybridized static graph, or ONNX Runtime on `model.onnx` when the
model directory has one (CPU only). Unless SEGMAKER_ENGINE forces one, both are built at load, timed on
a working-size input after a warm-up call, and the faster is kept.
"""

import logging
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import mxnet as mx
import numpy as np

from segmaker.errors import UserError
from segmaker.models import SegmentationInference

LOG = logging.getLogger(__name__)

EngineFactory = Callable[[], SegmentationInference]


class OnnxInference(SegmentationInference):
    """SegmentationInference whose static-shape forward runs in ONNX Runtime instead of MXNet.

    Pre- and post-processing (resize, pad, crop, resize back, argmax) are inherited unchanged, so both
    engines give the same masks; only `_forward` differs.
    """

    def __init__(self, onnx_file: Path, working_size: int, threads: int = 1):
        # No super().__init__(): there is no MXNet network to move to a device or hybridize.
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        # Idle intra-op threads would otherwise spin after each run, stealing the cores that decoding,
        # resizing and encoding of concurrent requests need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.working_size = working_size
        self.contexts = [mx.cpu()]
        self._session = onnxruntime.InferenceSession(str(onnx_file), options,
                                                     providers=["CPUExecutionProvider"])
        self._input_name = self._session.get_inputs()[0].name

    def _forward(self, inputs: List[np.ndarray]) -> List[mx.nd.NDArray]:
        # The graph is exported for a batch of one (static shape), so images go through one at a time.
        return [mx.nd.array(self._session.run(None, {self._input_name: array[np.newaxis]})[0][0])
                for array in inputs]


class Predictor:
    """One worker's model: image in, mask or probabilities out. Safe to call from several threads.

    The hybridized graph and the ONNX session keep state between calls, so forwards are serialised with a
    lock; decoding and encoding (in the app) run outside it.
    """

    def __init__(self, engine: SegmentationInference, class_names: Sequence[str], engine_name: str):
        self.engine_name = engine_name
        self.class_names = list(class_names)
        self.working_size = engine.working_size
        self._engine = engine
        self._lock = threading.Lock()
        self._ready = threading.Event()

    @property
    def ready(self) -> bool:
        """True once a warm-up forward has completed."""
        return self._ready.is_set()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def warm_up(self) -> float:
        """Run one forward at the working size (allocates the static graph); return its seconds."""
        seconds = _time_forward(self._engine)
        self._ready.set()
        return seconds

    def mark_warm(self) -> None:
        """Declare the engine warm (it has already run a working-size forward)."""
        self._ready.set()

    def predict_mask(self, image: np.ndarray) -> np.ndarray:
        """H x W uint8 class ids for an H x W x 3 uint8 RGB image."""
        with self._lock:
            return self._engine.predict_masks([image])[0]

    def predict_probabilities(self, image: np.ndarray) -> np.ndarray:
        """C x H x W float32 class probabilities for an H x W x 3 uint8 RGB image."""
        with self._lock:
            return self._engine.predict_probabilities([image])[0]


def _time_forward(engine: SegmentationInference) -> float:
    image = np.zeros((engine.working_size, engine.working_size, 3), np.uint8)
    start = time.perf_counter()
    engine.predict_masks([image])
    return time.perf_counter() - start


def pick_fastest(factories: Dict[str, EngineFactory]) -> Tuple[str, SegmentationInference]:
    """Build each engine, warm it up, time one more forward, and return the fastest (name, engine).

    Either way the returned engine has run at least once (it is warm). With a single candidate nothing
    is timed: one warm-up forward only, which keeps the cold start short."""
    if not factories:
        raise ValueError("no inference engine to choose from")
    if len(factories) == 1:
        (name, factory), = factories.items()
        engine = factory()
        _time_forward(engine)  # warm-up: allocates the static graph's buffers
        return name, engine
    timed = []
    for name, factory in factories.items():
        engine = factory()
        _time_forward(engine)  # the first call allocates buffers and is not representative
        seconds = _time_forward(engine)
        LOG.info("engine %s: %.1f ms per forward at %dx%d", name, seconds * 1000,
                 engine.working_size, engine.working_size)
        timed.append((seconds, name, engine))
    seconds, name, engine = min(timed, key=lambda item: item[0])
    return name, engine


def engine_factories(model_dir: Path, *, engine: Optional[str] = None, gpu: Optional[int] = None,
                     threads: int = 1) -> Tuple[Dict[str, EngineFactory], List[str]]:
    """The engines that can serve the model in `model_dir` (all, or the forced one) and its class names."""
    from segmaker import artifacts

    model = artifacts.read_model_dir(model_dir)
    contexts = [mx.gpu(gpu)] if gpu is not None else [mx.cpu()]
    onnx_file = _onnx_file(model_dir, model)
    factories: Dict[str, EngineFactory] = {}
    if engine in (None, "mxnet"):
        factories["mxnet"] = lambda: artifacts.load_inference(model, contexts)
    if engine in (None, "onnx") and onnx_file is not None and gpu is None:
        factories["onnx"] = lambda: OnnxInference(onnx_file, model.working_size, threads)
    if engine == "onnx" and "onnx" not in factories:
        raise UserError(f"SEGMAKER_ENGINE=onnx, but {model_dir} has no model.onnx usable on this device "
                        "(ONNX serving is CPU only); unset SEGMAKER_ENGINE to use MXNet")
    return factories, _class_names(model)


def _onnx_file(model_dir: Path, model) -> Optional[Path]:
    candidate = getattr(model, "onnx_file", None) or Path(model_dir) / "model.onnx"
    return Path(candidate) if Path(candidate).is_file() else None


def _class_names(model) -> List[str]:
    names = list(getattr(model, "class_names", None) or [])
    return names or [str(i) for i in range(int(model.num_classes))]


def load_predictor(model_dir: Path, *, engine: Optional[str] = None, gpu: Optional[int] = None,
                   threads: int = 1) -> Predictor:
    """Load the model directory, choose the engine (forced, or the faster), and warm it up."""
    factories, class_names = engine_factories(model_dir, engine=engine, gpu=gpu, threads=threads)
    name, chosen = pick_fastest(factories)
    predictor = Predictor(chosen, class_names, name)
    predictor.mark_warm()  # pick_fastest already ran it
    LOG.info("model %s loaded: engine %s, %d classes, working size %d", model_dir, name,
             predictor.num_classes, predictor.working_size)
    return predictor
