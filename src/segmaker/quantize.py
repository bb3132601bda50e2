"""int8 serving: quantize a model directory's `model.onnx` and keep `model.int8.onnx` only if it holds up.

How (ONNX Runtime's static quantization, read in onnxruntime/quantization/quantize.py and registry.py):
- `quant_pre_process` first runs ORT's basic graph optimisations, which fold every BatchNormalization into
  the Conv before it. Left alone, `quantize_static` would put QDQ pairs around BatchNormalization too
  (QDQRegistry maps it to QDQNormalization, which even quantizes its scale to int8), with no int8 kernel
  to gain from it; BatchNormalization is also left out of the op types below for a graph where it survives.
- QDQ format, int8 weights per output channel (symmetric), uint8 activations (asymmetric): what ONNX
  Runtime recommends for CPUs, run by its u8s8 kernels (VNNI where the CPU has it, AVX2 otherwise).
- Quantized op types: Conv, Relu, Add, MaxPool, Concat, MatMul and the inner Resize ops (QDQResize runs
  them in 8 bits). Not the Resize that makes the output: logits stay float, so near-ties between classes
  are decided as the float model decides them (quantized logits would tie more often).
- Calibration: min/max of every tensor over the network inputs of calibration images, prepared exactly as
  serving prepares them (they are recorded from a float-model pass through SegmentationInference).

The gate: on the validation images the int8 model's masks must equal the float model's on >= 99 % of
pixels (MIN_PIXEL_AGREEMENT) and its mIOU against the labels may be at most 0.5 points lower
(MAX_MIOU_LOSS); otherwise `model.int8.onnx` is not kept and the reason is recorded. Both figures go into
`segmaker.json` ("int8") and the log. Images without labels (`segmaker quantize --calibration` on a folder
of images) give the agreement only, and the mIOU condition is recorded as not measured.
"""

import argparse
import logging
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import mxnet as mx
import numpy as np

from segmaker import artifacts
from segmaker.data.decode import decode_image, decode_mask
from segmaker.data.labelmaps import LabelMap, label_map_file, load_label_map, parse_label_map
from segmaker.data.samples import IMAGE_SUFFIXES, MASK_SUFFIXES, find_file_samples, has_split
from segmaker.environment import Paths, int8_enabled, paths_from_env
from segmaker.errors import UserError
from segmaker.metrics import ConfusionMatrix
from segmaker.models import SegmentationInference

LOG = logging.getLogger(__name__)

MIN_PIXEL_AGREEMENT = 0.99
MAX_MIOU_LOSS = 0.005  # 0.5 mIOU points
MAX_CALIBRATION_IMAGES = 16  # min/max ranges settle after a few images; each costs a slow forward
MAX_GATE_IMAGES = 64  # the gate judges at most this many images, spread evenly over the set
QUANTIZED_OP_TYPES = ("Conv", "Relu", "Add", "MaxPool", "Concat", "MatMul", "Resize")

# (image H x W x 3 uint8 RGB, mask H x W uint8 class ids with 255 = ignore, or None when unlabelled)
Sample = Tuple[np.ndarray, Optional[np.ndarray]]


@dataclass(frozen=True)
class QuantizationResult:
    """What the gate measured and decided; `to_json_dict()` is what segmaker.json keeps under "int8"."""

    kept: bool
    reason: str
    images: int
    pixel_agreement: Optional[float] = None
    miou_float: Optional[float] = None
    miou_int8: Optional[float] = None

    @property
    def miou_loss_points(self) -> Optional[float]:
        if self.miou_float is None or self.miou_int8 is None:
            return None
        return 100.0 * (self.miou_float - self.miou_int8)

    def to_json_dict(self) -> Dict[str, object]:
        return {
            "kept": self.kept,
            "reason": self.reason,
            "images": self.images,
            "pixel_agreement": self.pixel_agreement,
            "mIOU_float": self.miou_float,
            "mIOU_int8": self.miou_int8,
            "mIOU_loss_points": self.miou_loss_points,
        }

    def describe(self) -> str:
        agreement = "n/a" if self.pixel_agreement is None else f"{100 * self.pixel_agreement:.2f} %"
        loss = self.miou_loss_points
        loss_text = "not measured (no labels)" if loss is None else f"{loss:.2f} mIOU points"
        verdict = "kept" if self.kept else "dropped"
        return (f"int8 model {verdict}: pixel agreement with the float model {agreement}, mIOU loss"
                f" {loss_text} on {self.images} images; {self.reason}")


class QuantizationStopped(Exception):
    """The job was asked to stop (SIGTERM) while the int8 model was being made or judged."""


def quantize_model_dir(model_dir: Path, samples: Sequence[Sample],
                       calibration: Optional[Sequence[np.ndarray]] = None,
                       stop: Optional[threading.Event] = None) -> QuantizationResult:
    """Quantize `model_dir/model.onnx`, judge it on `samples`, keep or drop `model.int8.onnx`, record why.

    Calibration uses the network inputs of the first MAX_CALIBRATION_IMAGES samples, unless `calibration`
    gives other 3 x S x S inputs (tests use that to make a badly calibrated model). `stop` (the job's
    SIGTERM flag) is looked at between images and after quantizing: QuantizationStopped, nothing published.

    The int8 model is made and judged in a scratch folder outside the model directory, so a stop, an error
    or a SIGKILL there leaves nothing in model/ (SageMaker uploads whatever it holds); only the publishing
    copy passes through a hidden temporary name inside it (`artifacts.record_int8`, `files.staged_file`).
    """
    model = artifacts.read_model_dir(model_dir)
    if model.onnx_file is None:
        raise UserError(f"{model.directory} has no {artifacts.ONNX_FILE} to quantize (the algorithm could not"
                        " be exported, or the job was stopped before the export)")
    if not samples:
        raise UserError("no images to calibrate the int8 model with")
    stop = stop or threading.Event()
    manifest = model.manifest
    float_engine, recorded_inputs = _recording_engine(model.onnx_file, manifest.working_size,
                                                      manifest.image_scale)
    float_masks = _masks(float_engine, [image for image, _ in samples[:MAX_CALIBRATION_IMAGES]], stop)
    calibration = list(recorded_inputs) if calibration is None else list(calibration)
    float_masks += _masks(float_engine, [image for image, _ in samples[MAX_CALIBRATION_IMAGES:]], stop)
    with tempfile.TemporaryDirectory(prefix="segmaker-int8-") as scratch:
        int8_file = Path(scratch) / artifacts.INT8_ONNX_FILE
        quantize_onnx(model.onnx_file, int8_file, calibration)
        int8_engine = SegmentationInference(None, manifest.working_size, [mx.cpu()],
                                            forward=onnx_forward(int8_file), image_scale=manifest.image_scale)
        int8_masks = _masks(int8_engine, [image for image, _ in samples], stop)
        result = judge(float_masks, int8_masks, [mask for _, mask in samples], manifest.num_classes)
        artifacts.record_int8(model.directory, int8_file if result.kept else None, result.to_json_dict())
    (LOG.info if result.kept else LOG.warning)("%s", result.describe())
    return result


def _masks(engine: SegmentationInference, images: Sequence[np.ndarray], stop: threading.Event
           ) -> List[np.ndarray]:
    """The engine's masks of `images`, one image at a time so that a stop request is seen between them."""
    masks = []
    for image in images:
        if stop.is_set():
            raise QuantizationStopped("the job was asked to stop")
        masks += engine.predict_masks([image])
    return masks


def quantize_onnx(float_file: Path, int8_file: Path, calibration_inputs: Sequence[np.ndarray]) -> None:
    """Static QDQ quantization of `float_file` into `int8_file`, calibrated on 3 x S x S network inputs."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._inputs = iter(calibration_inputs)

        def get_next(self) -> Optional[Dict[str, np.ndarray]]:
            array = next(self._inputs, None)
            return None if array is None else {input_name: array[np.newaxis].astype(np.float32)}

    import onnx

    input_name = onnx.load(str(float_file), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="segmaker-quantize-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(float_file), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(int8_file), Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(QUANTIZED_OP_TYPES),
            nodes_to_exclude=_output_nodes(prepared),
        )


def _output_nodes(model_file: Path) -> List[str]:
    """Names of the nodes that produce the graph's outputs (the final logits Resize)."""
    import onnx

    graph = onnx.load(str(model_file)).graph
    outputs = {output.name for output in graph.output}
    return [node.name for node in graph.node if set(node.output) & outputs]


def onnx_session(onnx_file: Path, threads: int = 0):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])


def onnx_forward(onnx_file: Path) -> Callable[[List[np.ndarray]], List[mx.nd.NDArray]]:
    """A SegmentationInference forward hook running `onnx_file` one image at a time."""
    session = onnx_session(onnx_file)
    name = session.get_inputs()[0].name

    def forward(inputs: List[np.ndarray]) -> List[mx.nd.NDArray]:
        return [mx.nd.array(session.run(None, {name: array[np.newaxis]})[0][0]) for array in inputs]

    return forward


def _recording_engine(onnx_file: Path, working_size: int,
                      image_scale: str = "base_size") -> Tuple[SegmentationInference, List[np.ndarray]]:
    """The float model as serving runs it (whole images or native-scale tiles), plus the list into which it
    records every network input."""
    forward = onnx_forward(onnx_file)
    recorded: List[np.ndarray] = []

    def recording_forward(inputs: List[np.ndarray]) -> List[mx.nd.NDArray]:
        recorded.extend(np.array(array, np.float32) for array in inputs)
        return forward(inputs)

    engine = SegmentationInference(None, working_size, [mx.cpu()], forward=recording_forward,
                                   image_scale=image_scale)
    return engine, recorded


def judge(float_masks: Sequence[np.ndarray], int8_masks: Sequence[np.ndarray],
          labels: Sequence[Optional[np.ndarray]], num_classes: int) -> QuantizationResult:
    """The gate: pixel agreement between the two models' masks, and the mIOU each reaches on the labels."""
    same = sum(int(np.count_nonzero(a == b)) for a, b in zip(float_masks, int8_masks))
    agreement = same / max(1, sum(mask.size for mask in float_masks))
    miou_float = miou_int8 = None
    if all(label is not None for label in labels):
        miou_float = _miou(float_masks, labels, num_classes)
        miou_int8 = _miou(int8_masks, labels, num_classes)
    problems = []
    if agreement < MIN_PIXEL_AGREEMENT:
        problems.append(f"pixel agreement {100 * agreement:.2f} % is below {100 * MIN_PIXEL_AGREEMENT:g} %")
    if miou_float is not None and miou_float - miou_int8 > MAX_MIOU_LOSS:
        problems.append(f"mIOU drops by {100 * (miou_float - miou_int8):.2f} points, more than"
                        f" {100 * MAX_MIOU_LOSS:g}")
    if problems:
        reason = "; ".join(problems) + ": serving keeps the float model"
    else:
        reason = "within the gate (agreement >= 99 %, mIOU loss <= 0.5 points)"
        if miou_float is None:
            reason += "; the mIOU loss was not measured (images without labels)"
    return QuantizationResult(kept=not problems, reason=reason, images=len(float_masks),
                              pixel_agreement=agreement, miou_float=miou_float, miou_int8=miou_int8)


def _miou(masks: Sequence[np.ndarray], labels: Sequence[np.ndarray], num_classes: int) -> float:
    matrix = ConfusionMatrix(num_classes)
    for mask, label in zip(masks, labels):
        matrix.update(mask, label)
    return float(matrix.mean_iou())


# --- where the images come from ------------------------------------------------------------------------
def quantize_after_training(paths: Paths, channels: Mapping[str, object], model_dir: Path,
                            stop: Optional[threading.Event] = None) -> None:
    """The end of a training job: quantize the model just written, judged on the validation split (the
    train split when there is none). Never fails the job: the float model is already complete. A stop
    request (`stop`, the SIGTERM flag) abandons it, recorded, so the job ends within SageMaker's 120 s."""
    if not int8_enabled():
        LOG.info("int8 quantization skipped: SEGMAKER_QUANTIZE=off")
        return
    split = "validation" if has_split(paths, "validation") or _is_pipe(channels, "validation") else "train"
    if _is_pipe(channels, split):
        _record_skip(model_dir, f"the {split} channel is in Pipe mode (read once): run `segmaker quantize"
                                " MODEL_DIR --calibration DIR` on a folder of images")
        return
    try:
        label_map = load_label_map(label_map_file(_label_map_dir(paths), split),
                                   artifacts.read_model_dir(model_dir).manifest.num_classes)
        samples = load_samples([(s.image_path, s.mask_path) for s in find_file_samples(paths, split)],
                               label_map)
        quantize_model_dir(model_dir, samples, stop=stop)
    except QuantizationStopped:
        _record_skip(model_dir, "the job was stopped during quantization: run `segmaker quantize MODEL_DIR"
                                " --calibration DIR` on the extracted model")
    except Exception as exc:  # an optimisation failed; the float model serves
        LOG.warning("int8 quantization failed, serving keeps the float model: %s", exc, exc_info=True)
        _record_skip(model_dir, f"quantization failed: {type(exc).__name__}: {exc}")


def _record_skip(model_dir: Path, reason: str) -> None:
    LOG.warning("int8 model not made: %s", reason)
    skipped = QuantizationResult(kept=False, reason=reason, images=0)
    artifacts.record_int8(model_dir, None, skipped.to_json_dict())


def _is_pipe(channels: Mapping[str, object], name: str) -> bool:
    channel = channels.get(name)
    return bool(getattr(channel, "is_pipe", False))


def _label_map_dir(paths: Paths) -> Optional[Path]:
    folder = paths.channel_dir("label_map")
    return folder if folder.is_dir() else None


def calibration_folder_samples(folder: Path, label_map: LabelMap) -> List[Sample]:
    """`segmaker quantize --calibration DIR`: DIR holding images/ and masks/ (labelled, decoded with the
    model's label map), or a folder of images (unlabelled: the gate then measures agreement only)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--calibration {folder} is not a folder")
    if (folder / "images").is_dir() and (folder / "masks").is_dir():
        images = _files_by_stem(folder / "images", IMAGE_SUFFIXES)
        masks = _files_by_stem(folder / "masks", MASK_SUFFIXES)
        missing = sorted(set(images) - set(masks))
        if missing:
            raise UserError(f"--calibration {folder}: images without a mask in masks/:"
                            f" {', '.join(missing[:5])}")
        return load_samples([(images[k], masks[k]) for k in sorted(images)], label_map)
    images = _files_by_stem(folder, IMAGE_SUFFIXES)
    if not images:
        raise UserError(f"--calibration {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}) and no"
                        " images/ + masks/ folders")
    return load_samples([(images[k], None) for k in sorted(images)], label_map)


def _files_by_stem(folder: Path, suffixes: Sequence[str]) -> Dict[str, Path]:
    return {p.stem: p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes}


def load_samples(pairs: Sequence[Tuple[Path, Optional[Path]]], label_map: LabelMap) -> List[Sample]:
    """Decode at most MAX_GATE_IMAGES (image, mask) file pairs, spread evenly over `pairs`."""
    step = max(1, -(-len(pairs) // MAX_GATE_IMAGES))
    samples = []
    for image_path, mask_path in list(pairs)[::step]:
        image = decode_image(_read(image_path), str(image_path))
        mask = None if mask_path is None else decode_mask(_read(mask_path), str(mask_path), label_map)
        if mask is not None and mask.shape != image.shape[:2]:
            raise UserError(f"{mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image {image_path} is"
                            f" {image.shape[1]}x{image.shape[0]}")
        samples.append((image, mask))
    return samples


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None


# --- `segmaker quantize` -------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    """`segmaker quantize MODEL_DIR [--calibration DIR]`: int8 model for a model trained earlier."""
    parser = argparse.ArgumentParser(prog="segmaker quantize", description=main.__doc__)
    parser.add_argument("model_dir", type=Path, help="a model directory (an extracted model.tar.gz)")
    parser.add_argument("--calibration", type=Path, default=None,
                        help="images/ + masks/ (or a folder of images) to calibrate and judge with; default:"
                             " the validation (else train) channel under $SAGEMAKER_BASE_DIR")
    args = parser.parse_args(argv)
    model = artifacts.read_model_dir(args.model_dir)
    if Path(args.model_dir).resolve() not in (model.directory.resolve(), *model.directory.resolve().parents):
        # read_model_dir extracted a tarball into a temporary folder: the int8 model would be lost there.
        raise UserError(f"{args.model_dir} is a model.tar.gz: extract it and give the folder")
    label_map = _model_label_map(model)
    if args.calibration is not None:
        samples = calibration_folder_samples(args.calibration, label_map)
    else:
        paths = paths_from_env()
        split = "validation" if has_split(paths, "validation") else "train"
        if not has_split(paths, split):
            raise UserError(f"no --calibration folder and no train or validation channel under {paths.base}")
        samples = load_samples([(s.image_path, s.mask_path) for s in find_file_samples(paths, split)],
                               label_map)
    result = quantize_model_dir(model.directory, samples)
    print(result.describe())
    return 0


def _model_label_map(model: "artifacts.ModelArtifacts") -> LabelMap:
    if model.manifest.label_map is None:
        return LabelMap.from_scale(1, model.manifest.num_classes)
    source = str(model.directory / artifacts.MANIFEST)
    return parse_label_map(dict(model.manifest.label_map), model.manifest.num_classes, source)
