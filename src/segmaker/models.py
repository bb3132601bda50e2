"""The networks: (algorithm, backbone) -> GluonCV model, pretrained weights, and full-resolution inference.

GluonCV's FCN, PSPNet and DeepLabV3 are built for one fixed square input size (they upsample to a fixed
height/width; PSP and DeepLab also pool to a fixed feature-map size). Training uses them at the crop size;
inference at any image size goes through `SegmentationInference`, which resizes and pads every image to the
one size its network was built for.
"""

import contextlib
import io
import math
import threading
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import mxnet as mx
import numpy as np
from gluoncv.model_zoo.deeplabv3 import DeepLabV3
from gluoncv.model_zoo.fcn import FCN
from gluoncv.model_zoo.pspnet import PSPNet
from PIL import Image

from segmaker.config import IMAGE_SCALES
from segmaker.errors import UserError
from segmaker.transforms import normalize

ALGORITHMS = {"fcn": FCN, "psp": PSPNet, "deeplab": DeepLabV3}
BACKBONES = ("resnet50", "resnet101")

# GluonCV's model store names a weight file `<name>-<first 8 hex digits of its SHA-1>.params`
# (gluoncv/model_zoo/model_store.py, `_model_sha1`). These are the ImageNet dilated-stem ResNets that
# SegBaseModel builds its backbone from.
PRETRAINED_SHA1 = {
    "resnet50": ("resnet50_v1s", "25a187fa281ddc98afbcd0cc0f0646885b874b80"),
    "resnet101": ("resnet101_v1s", "bd93a83c05f709a803b1221aeff0b028e6eebb03"),
}

# SegBaseModel takes these children of the ResNet (conv1 ... layer4) and keeps their names, so a backbone
# parameter's structural name inside the segmentation network equals its name inside the ResNet.
BACKBONE_BLOCKS = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")

# Bound on the number of float32 values of one resized logit tensor while computing a mask: classes are
# resized in groups small enough to stay below it (resizing is per channel, so the result is the same).
MAX_RESIZED_VALUES = 1 << 22

# The static-shape forward of SegmentationInference: normalised, padded 3 x S x S inputs in, main-head
# logits (C x S x S) out, in order. Another engine (ONNX Runtime in serving) plugs in through this.
ForwardFunction = Callable[[List[np.ndarray]], List[mx.nd.NDArray]]


def build_network(
    algorithm: str,
    backbone: str,
    num_classes: int,
    *,
    size: int,
    aux: bool = True,
    norm_layer_kwargs: Optional[Mapping[str, object]] = None,
    syncbn_devices: int = 0,
) -> mx.gluon.HybridBlock:
    """A freshly initialised GluonCV segmentation network for `size` x `size` inputs, on the CPU.

    Every parameter has its shape and random initial values (move it with `collect_params().reset_ctx`).
    With `syncbn_devices` > 1 every BatchNorm is a SyncBatchNorm over that many devices.
    """
    model_class = _model_class(algorithm, backbone)
    norm_kwargs = dict(norm_layer_kwargs or {})
    extra = {}
    if syncbn_devices > 1:
        norm_kwargs["num_devices"] = syncbn_devices
        extra["norm_layer"] = mx.gluon.contrib.nn.SyncBatchNorm
    if norm_kwargs:
        extra["norm_kwargs"] = norm_kwargs
    # PSPNet's constructor prints its crop size to stdout; keep the job log clean.
    with contextlib.redirect_stdout(io.StringIO()):
        net = model_class(num_classes, backbone=backbone, aux=aux, pretrained_base=False,
                          base_size=size, crop_size=size, **extra)
    # With every shape known, initialisation happens now rather than at the first forward, so the random
    # values depend only on the seed at build time. GluonCV initialises the heads itself and leaves the
    # backbone alone; one initializer for all (force_reinit) makes a seeded run reproducible. He-style
    # uniform rather than gaussian: MXNet's CPU normal sampler is about 5x slower for the ~40M values.
    net.infer_shape(mx.nd.zeros((1, 3, size, size)))
    net.initialize(mx.init.Xavier(rnd_type="uniform", factor_type="in", magnitude=2), force_reinit=True)
    return net


def _model_class(algorithm: str, backbone: str):
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; expected one of {sorted(ALGORITHMS)}")
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; expected one of {list(BACKBONES)}")
    return ALGORITHMS[algorithm]


def working_size_for(base_size: int) -> int:
    """The inference size for a model trained at `base_size`: training sees objects at that scale, and the
    networks need a multiple of 8 (three stride-2 stages before the dilated layers)."""
    return int(math.ceil(base_size / 8.0)) * 8


def pretrained_file_name(backbone: str) -> str:
    name, sha1 = PRETRAINED_SHA1[backbone]
    return f"{name}-{sha1[:8]}.params"


def find_pretrained_weights(backbone: str, *, pretrained_dir: Optional[Path], mxnet_home: Path) -> Path:
    """The ImageNet weights for `backbone`: the `pretrained` channel first, then `$MXNET_HOME/models`.

    The channel may hold the file under GluonCV's exact name or any `resnet50_v1s*.params` name (a user
    may have renamed it); the baked-in copy has the exact name.
    """
    exact = pretrained_file_name(backbone)
    places = _pretrained_places(pretrained_dir, Path(mxnet_home) / "models")
    for folder in places:
        found = _weight_file_in(folder, exact, PRETRAINED_SHA1[backbone][0])
        if found is not None:
            return found
    raise UserError(
        f"use_pretrained_model=True but no ImageNet weights for backbone {backbone} were found: looked for"
        f" {exact} (or {PRETRAINED_SHA1[backbone][0]}*.params) in {', '.join(str(p) for p in places)}."
        " Either give the job a 'pretrained' channel holding that file, or set"
        " use_pretrained_model=False to train the backbone from scratch.")


def _pretrained_places(pretrained_dir: Optional[Path], models_dir: Path) -> List[Path]:
    return ([Path(pretrained_dir)] if pretrained_dir is not None else []) + [models_dir]


def _weight_file_in(folder: Path, exact_name: str, stem: str) -> Optional[Path]:
    if (folder / exact_name).is_file():
        return folder / exact_name
    if not folder.is_dir():
        return None
    candidates = sorted(p for p in folder.rglob(stem + "*.params") if p.is_file())
    return candidates[0] if candidates else None


def load_backbone_weights(net: mx.gluon.HybridBlock, params_file: Path) -> None:
    """Load a GluonCV `resnetXX_v1s` parameter file into the backbone of segmentation network `net`.

    The file's classifier (`fc.*`) has no counterpart and is skipped; a missing backbone parameter or
    a shape that differs is a UserError naming the file.
    """
    # Only part of `net` is loaded, by structural name, and a file lacking a backbone parameter must be
    # refused: Gluon's load_parameters(allow_missing=True) would skip it silently, so the file is checked
    # against the backbone's names, then its arrays set (one read of a file of ~100-170 MB).
    loaded = _load_parameter_file(params_file)
    backbone = {name: param for name, param in parameters_by_name(net).items()
                if name.split(".", 1)[0] in BACKBONE_BLOCKS}
    _check_fit(params_file, backbone, loaded)
    for name, param in backbone.items():
        param.set_data(loaded[name].astype(param.dtype))


def parameters_by_name(net: mx.gluon.Block) -> Dict[str, mx.gluon.Parameter]:
    """`net`'s parameters by structural name (`layer1.0.conv1.weight`, `head.block.4.weight`): the names
    save_parameters writes and load_parameters matches, the same in every instance of an architecture.

    Gluon 1.x gives these names only through the private `_collect_params_with_prefix` (what its own
    save_parameters/load_parameters call); the public `collect_params()` is keyed by per-instance prefixes
    (`fcn0_...`, `fcn1_...`). MXNet 2 made structural names public. The one place segmaker reaches it.
    """
    return net._collect_params_with_prefix()


def _load_parameter_file(params_file: Path) -> Dict[str, mx.nd.NDArray]:
    try:
        loaded = mx.nd.load(str(params_file))
    except (mx.base.MXNetError, OSError) as exc:
        raise UserError(f"cannot read parameter file {params_file}: {_first_line(exc)}") from None
    if not isinstance(loaded, dict):
        raise UserError(f"parameter file {params_file} holds a list of arrays, not named parameters")
    # Files written by `HybridBlock.export` prefix names with arg:/aux:; Gluon's save_parameters does not.
    return {name.split(":", 1)[-1]: array for name, array in loaded.items()}


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_fit(source: Path, params: Mapping[str, mx.gluon.Parameter],
               arrays: Mapping[str, mx.nd.NDArray]) -> None:
    """UserError naming `source` unless it has an array of a fitting shape for every parameter."""
    missing = sorted(set(params) - set(arrays))
    if missing:
        raise UserError(f"parameter file {source} does not fit the network: it lacks {len(missing)} of the"
                        f" {len(params)} parameters needed (first: {missing[0]})")
    wrong = [(name, arrays[name].shape, param.shape) for name, param in params.items()
             if not _shape_fits(arrays[name].shape, param.shape)]
    if wrong:
        name, got, want = wrong[0]
        raise UserError(f"parameter file {source} does not fit the network: {len(wrong)} parameters have"
                        f" other shapes (first: {name} is {got}, the network needs {want})")


def _shape_fits(got: Tuple[int, ...], want: Tuple[int, ...]) -> bool:
    # A 0 in a Gluon parameter's shape is a dimension not known yet; any size fits it.
    return len(got) == len(want) and all(w in (0, g) for g, w in zip(got, want))


def load_parameters(net: mx.gluon.HybridBlock, params_file: Path,
                    ctx: Optional[Sequence[mx.Context]] = None) -> None:
    """Load a saved segmentation network's parameters (Gluon `save_parameters` format) into `net`, cast to
    its dtypes (on `ctx` when given; it must be where `net`'s parameters already are).

    Gluon's `load_parameters` does it; parameters of an auxiliary head that `net` does not have are
    skipped (`ignore_extra`). Anything else that does not fit (another algorithm, backbone or class count,
    a file that is no parameter file) is a UserError naming the file and the first parameter at fault;
    `net` may then hold part of the file.
    """
    try:
        net.load_parameters(str(params_file), ctx=ctx, allow_missing=False, ignore_extra=True,
                            cast_dtype=True, dtype_source="current")
    except (mx.base.MXNetError, AssertionError, ValueError, OSError) as exc:
        # Gluon names a parameter by its per-instance name and states its checks as asserts: say it in
        # structural names, from the file, and keep Gluon's words for a misfit the check does not see.
        _check_fit(params_file, parameters_by_name(net), _load_parameter_file(params_file))
        raise UserError(f"cannot load parameter file {params_file}: {_first_line(exc)}") from None


# Native scale: neighbouring tiles share a quarter of the working size; their logits are blended with weights
# that fall linearly to near 0 across that strip, so no seam shows where one tile ends.
TILE_OVERLAP_FRACTION = 0.25


class SegmentationInference:
    """Full-resolution inference at any image size, with memory bounded by `working_size`, not the image.

    `image_scale` says at which resolution the network looks at an image (the model directory records it):

    - `base_size` (the built-in's way): the image's long side is resized to `working_size`, the image padded
      (after normalisation, with zeros) to a working_size square, one static-shape forward runs, the padding
      is cropped from the logits, which are resized bilinearly back to the image's H x W a few classes at a
      time.
    - `native`: the image is read at its own resolution: working_size tiles slide over it, neighbours
      overlapping by TILE_OVERLAP_FRACTION, and their logits are blended (weighted average, weights falling
      towards each tile's edges). Tile rows are processed top to bottom and finished rows handed on, so
      besides the image and its answer only C x working_size x W floats are held.

    Per call, `scale` resamples the image by that factor first (base_size: the long side becomes
    working_size x scale, tiled when that exceeds the working size), and `flip` averages the logits of each
    input and its mirror image. Only the network's first output (the main head) is used.

    A batch of inputs is split over `contexts` (several GPUs, or several CPU contexts in tests) exactly as
    training splits a batch; tiles go through one per context at a time.

    Safe to call from several threads: only the forward is serialised (a lock per instance, because the
    hybridized graph keeps its buffers between calls with static_alloc, and one forward already uses every
    intra-op thread); resizing, normalising, cropping, resizing back and the argmax of concurrent calls run
    outside it, overlapping another call's forward.
    """

    def __init__(self, net_at_working_size: Optional[mx.gluon.HybridBlock], working_size: int,
                 contexts: Sequence[mx.Context], *, forward: Optional[ForwardFunction] = None,
                 image_scale: str = "base_size"):
        """`forward`, when given, replaces the network's forward (`net_at_working_size` may then be None):
        the pre- and post-processing stay the same whatever engine computes the logits."""
        if working_size % 8:
            raise ValueError(f"working_size must be a multiple of 8, not {working_size}")
        if not contexts:
            raise ValueError("SegmentationInference needs at least one context")
        if net_at_working_size is None and forward is None:
            raise ValueError("SegmentationInference needs a network or a forward function")
        if image_scale not in IMAGE_SCALES:
            raise ValueError(f"image_scale must be one of {IMAGE_SCALES}, not {image_scale!r}")
        self.working_size = working_size
        self.image_scale = image_scale
        self.contexts = list(contexts)
        self._net = net_at_working_size
        if forward is None:
            self._net.collect_params().reset_ctx(self.contexts)
            self._net.hybridize(static_alloc=True, static_shape=True)
        self._forward_function: ForwardFunction = forward or self._network_forward
        self._forward_lock = threading.Lock()

    # ------------------------------------------------------------------------------------- public API

    def processing_shape(self, shape: Tuple[int, int], scale: float = 1.0) -> Tuple[int, int]:
        """(h, w) at which the network looks at an image of `shape` (H, W) resampled by `scale`."""
        if self.image_scale == "native":
            return max(1, int(round(shape[0] * scale))), max(1, int(round(shape[1] * scale)))
        return _fit_inside(shape, max(1, int(round(self.working_size * scale))))

    def predict_masks(self, images: List[np.ndarray], *, scale: float = 1.0,
                      flip: bool = False) -> List[np.ndarray]:
        """Class ids, H x W uint8, for each H x W x 3 uint8 RGB image (the argmax of the probabilities)."""
        masks: List[Optional[np.ndarray]] = [None] * len(images)
        for index, logits in self._whole_tile_logits(images, scale, flip):
            masks[index] = _argmax_at_size(logits, images[index].shape[:2])
        for index, image in enumerate(images):
            if masks[index] is None:
                masks[index] = self._tiled_mask(image, scale, flip)
        return masks

    def predict_probabilities(self, images: List[np.ndarray], *, scale: float = 1.0,
                              flip: bool = False) -> List[np.ndarray]:
        """Class probabilities, C x H x W float32, for each H x W x 3 uint8 RGB image."""
        answers = []
        for image in images:
            out = None

            def allocate(num_classes: int, shape=image.shape[:2]) -> np.ndarray:
                nonlocal out
                out = np.empty((num_classes,) + tuple(shape), np.float32)
                return out

            self.write_probabilities(image, allocate, scale=scale, flip=flip)
            answers.append(out)
        return answers

    def write_probabilities(self, image: np.ndarray, allocate: Callable[[int], np.ndarray], *,
                            scale: float = 1.0, flip: bool = False) -> None:
        """Write the C x H x W float32 probabilities of one image into `allocate(C)`, an array the caller
        provides (e.g. a view into the response buffer), a few classes or rows at a time: no other copy of
        the answer is made."""
        for _, logits in self._whole_tile_logits([image], scale, flip):
            _softmax_at_size_into(logits, allocate(logits.shape[0]))
            return
        shape = image.shape[:2]
        scaled = self._scaled(image, scale)
        if scaled.shape[:2] == shape:
            out = None
            for top, sums, weights in self._tiled_bands(scaled, flip):
                out = allocate(sums.shape[0]) if out is None else out
                _blended_softmax_into(sums, weights, out[:, top: top + sums.shape[1]])
            return
        # Resampled (scale != 1): probabilities at the processing size, then resized a class at a time.
        probabilities = None
        for top, sums, weights in self._tiled_bands(scaled, flip):
            if probabilities is None:
                probabilities = np.empty((sums.shape[0],) + scaled.shape[:2], np.float32)
            _blended_softmax_into(sums, weights, probabilities[:, top: top + sums.shape[1]])
        out = allocate(probabilities.shape[0])
        for index in range(probabilities.shape[0]):
            out[index] = _resize(mx.nd.array(probabilities[index: index + 1]), shape)[0].asnumpy()

    def forward(self, inputs: List[np.ndarray]) -> List[mx.nd.NDArray]:
        """Main-head logits (C x S x S, on the device that computed them) for each normalised, padded
        3 x S x S input, in order: the static-shape forward alone, without pre- or post-processing. One
        forward at a time per instance (see the class docstring)."""
        with self._forward_lock:
            return self._forward_function(inputs)

    # -------------------------------------------------------------------- one tile per image (batched)

    def _whole_tile_logits(self, images: List[np.ndarray], scale: float,
                           flip: bool) -> List[Tuple[int, mx.nd.NDArray]]:
        """(index, logits at processing size with the padding cropped) for every image whose processing
        size fits one tile; these go through the network together, as one batch."""
        fitting = [index for index, image in enumerate(images)
                   if max(self.processing_shape(image.shape[:2], scale)) <= self.working_size]
        if not fitting:
            return []
        prepared = [self._prepare(images[index], scale) for index in fitting]
        inputs, inners = [array for array, _ in prepared], [inner for _, inner in prepared]
        logits = self._forward_cropped(inputs, inners, flip)
        return list(zip(fitting, logits))

    def _prepare(self, image: np.ndarray, scale: float) -> Tuple[np.ndarray, Tuple[int, int]]:
        """The normalised, resampled and padded 3 x S x S input, and the (h, w) the image occupies in it."""
        _check_rgb(image)
        inner = self.processing_shape(image.shape[:2], scale)
        resized = image if inner == image.shape[:2] else _resample(image, inner)
        return self._padded(resized), inner

    def _padded(self, part: np.ndarray) -> np.ndarray:
        padded = np.zeros((3, self.working_size, self.working_size), np.float32)
        padded[:, : part.shape[0], : part.shape[1]] = normalize(part)
        return padded

    def _forward_cropped(self, inputs: List[np.ndarray], inners: List[Tuple[int, int]],
                         flip: bool) -> List[mx.nd.NDArray]:
        """Logits of each input cropped to its inner (h, w); with `flip`, averaged with those of its mirror
        image (the inner part mirrored, padding kept at the bottom and right), mirrored back."""
        outputs = [logits[:, :h, :w] for logits, (h, w) in zip(self.forward(inputs), inners)]
        if not flip:
            return outputs
        mirrored_inputs = [_mirror_inside(array, inner) for array, inner in zip(inputs, inners)]
        mirrored = self.forward(mirrored_inputs)
        return [(plain + mx.nd.flip(logits[:, :h, :w], axis=2)) / 2
                for plain, logits, (h, w) in zip(outputs, mirrored, inners)]

    def _network_forward(self, inputs: List[np.ndarray]) -> List[mx.nd.NDArray]:
        parts = _split(inputs, len(self.contexts))
        batches = [(ctx, part) for ctx, part in zip(self.contexts, parts) if part]
        # All devices get their batch before any result is read, so they compute at the same time.
        outputs = [_main_head(self._net(mx.nd.array(np.stack(part), ctx=ctx))) for ctx, part in batches]
        return [batch_output[i] for batch_output in outputs for i in range(batch_output.shape[0])]

    # ----------------------------------------------------------------------- sliding tiles (one image)

    def _scaled(self, image: np.ndarray, scale: float) -> np.ndarray:
        _check_rgb(image)
        shape = self.processing_shape(image.shape[:2], scale)
        return image if shape == image.shape[:2] else _resample(image, shape)

    def _tiled_mask(self, image: np.ndarray, scale: float, flip: bool) -> np.ndarray:
        scaled = self._scaled(image, scale)
        mask = np.empty(scaled.shape[:2], np.uint8)
        for top, sums, _ in self._tiled_bands(scaled, flip):
            # Dividing by the (positive) blend weights would not change which class is largest.
            _argmax_classes_into(sums, mask[top: top + sums.shape[1]])
        if mask.shape != image.shape[:2]:
            mask = np.asarray(Image.fromarray(mask).resize((image.shape[1], image.shape[0]), Image.NEAREST))
        return mask

    def _tiled_bands(self, image: np.ndarray, flip: bool) -> Iterator[Tuple[int, np.ndarray, np.ndarray]]:
        """(top, sums, weights) for finished rows of `image`, top to bottom: the blended logits of rows
        top .. top + n are sums (C x n x W) / weights (n x W). Views into the accumulator: use them before
        asking for the next band.

        Tile rows start at `_tile_starts`; when the next tile row starts at y, no later tile reaches the
        rows above y, so they are finished: handed on, and the accumulator (rows top .. top + S) moves up.
        """
        size = self.working_size
        overlap = int(round(size * TILE_OVERLAP_FRACTION))
        height, width = image.shape[:2]
        window = _blend_window(size, overlap)
        rows, columns = _tile_starts(height, size, size - overlap), _tile_starts(width, size, size - overlap)
        weights = np.zeros((size, width), np.float32)
        sums: Optional[np.ndarray] = None
        top = 0
        for y in rows:
            if y > top:
                done = y - top
                yield top, sums[:, :done], weights[:done]
                _shift_up(sums, done)
                _shift_up(weights, done)
                top = y
            strip = image[y: y + size]
            for chunk in _chunks(columns, len(self.contexts)):
                parts = [strip[:, x: x + size] for x in chunk]
                logits = self._forward_cropped([self._padded(part) for part in parts],
                                               [part.shape[:2] for part in parts], flip)
                for x, tile in zip(chunk, logits):
                    values = tile.asnumpy()
                    if sums is None:
                        sums = np.zeros((values.shape[0], size, width), np.float32)
                    h, w = values.shape[1:]
                    values *= window[:h, :w]
                    sums[:, :h, x: x + w] += values
                    weights[:h, x: x + w] += window[:h, :w]
        rows_left = min(height, top + size) - top
        yield top, sums[:, :rows_left], weights[:rows_left]


def _check_rgb(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 RGB image, got shape {image.shape}")


def _resample(image: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((shape[1], shape[0]), Image.BILINEAR))


def _mirror_inside(array: np.ndarray, inner: Tuple[int, int]) -> np.ndarray:
    mirrored = np.zeros_like(array)
    mirrored[:, : inner[0], : inner[1]] = array[:, : inner[0], inner[1] - 1:: -1]
    return mirrored


def _tile_starts(length: int, size: int, stride: int) -> List[int]:
    """Starts of windows of `size` covering 0..length with steps of at most `stride`; the last one ends at
    `length` (a single window at 0 when the length fits)."""
    if length <= size:
        return [0]
    starts = list(range(0, length - size, stride))
    return starts + [length - size]


def _blend_window(size: int, overlap: int) -> np.ndarray:
    """size x size weights: 1 inside, falling linearly to 1 / (overlap + 1) at the edges (never 0, so a
    pixel only one tile reaches still gets that tile's logits)."""
    index = np.arange(size, dtype=np.float32)
    ramp = np.minimum(1.0, np.minimum(index + 1, size - index) / float(overlap + 1))
    return np.outer(ramp, ramp).astype(np.float32)


def _shift_up(array: np.ndarray, rows: int) -> None:
    """Move the rows of `array` (along its second-to-last axis) up by `rows`, zeroing those freed below.

    Copied in blocks of at most `rows` rows, top first: a block's source never overlaps its destination,
    and rows are overwritten only after they were read, so no temporary copy of the array is needed."""
    kept = array.shape[-2] - rows
    for start in range(0, kept, rows):
        stop = min(kept, start + rows)
        array[..., start:stop, :] = array[..., start + rows: stop + rows, :]
    array[..., kept:, :] = 0


_ROWS_PER_STEP = 64  # rows of a band turned into probabilities at once: bounds the temporaries


def _argmax_classes_into(scores: np.ndarray, out: np.ndarray) -> None:
    """out[y, x] = the first c with the largest scores[c, y, x], one class at a time (numpy's argmax over
    the first axis of a C x H x W array is many times slower)."""
    best = scores[0].copy()
    out[...] = 0
    for index in range(1, scores.shape[0]):
        better = scores[index] > best
        np.copyto(best, scores[index], where=better)
        out[better] = index


def _blended_softmax_into(sums: np.ndarray, weights: np.ndarray, out: np.ndarray) -> None:
    """out = softmax over classes of sums / weights, a few rows at a time."""
    for start in range(0, sums.shape[1], _ROWS_PER_STEP):
        rows = slice(start, start + _ROWS_PER_STEP)
        out[:, rows] = _softmax(sums[:, rows] / weights[rows])


def _chunks(items: List, size: int) -> Iterator[List]:
    for start in range(0, len(items), size):
        yield items[start: start + size]


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the first axis, in float32."""
    exp = np.exp(logits - logits.max(axis=0))
    exp /= exp.sum(axis=0)
    return exp


def _fit_inside(shape: Tuple[int, int], size: int) -> Tuple[int, int]:
    """(h, w) scaled so that the long side is `size`, keeping the aspect ratio (each side at least 1)."""
    height, width = shape
    scale = size / float(max(height, width))
    return max(1, min(size, int(round(height * scale)))), max(1, min(size, int(round(width * scale))))


def _split(items: List, parts: int) -> List[List]:
    """`items` in `parts` consecutive runs whose lengths differ by at most one."""
    bounds = np.linspace(0, len(items), parts + 1).round().astype(int)
    return [items[start:stop] for start, stop in zip(bounds[:-1], bounds[1:])]


def _main_head(output) -> mx.nd.NDArray:
    return output[0] if isinstance(output, (list, tuple)) else output


def _resize(logits: mx.nd.NDArray, shape: Tuple[int, int]) -> mx.nd.NDArray:
    """C x h x w -> C x H x W, bilinear."""
    return mx.nd.contrib.BilinearResize2D(logits.expand_dims(0), height=shape[0], width=shape[1])[0]


def _argmax_at_size(logits: mx.nd.NDArray, shape: Tuple[int, int]) -> np.ndarray:
    """argmax over classes of the logits resized to `shape`, resizing a few classes at a time.

    Bilinear resizing treats every channel on its own, so a running maximum over groups of classes gives
    the same mask as resizing all of them at once, with at most MAX_RESIZED_VALUES floats per group.
    """
    best_value, best_class = None, None
    for first, group in _class_groups(logits, shape):
        resized = _resize(group, shape)
        value, index = resized.max(axis=0), resized.argmax(axis=0) + first
        if best_value is None:
            best_value, best_class = value, index
        else:
            better = value > best_value
            best_value = mx.nd.where(better, value, best_value)
            best_class = mx.nd.where(better, index, best_class)
        best_class.wait_to_read()  # one group at a time (MXNet would queue, and hold, all of them)
    return best_class.asnumpy().astype(np.uint8)


def _softmax_at_size_into(logits: mx.nd.NDArray, out: np.ndarray) -> None:
    """softmax over classes of the logits resized to out's H x W, written into `out` a few classes at a time.

    The softmax needs every class at each pixel, so the groups are resized twice: a first pass keeps the
    running maximum and sum of exponentials per pixel (two H x W maps), the second writes each group's
    probabilities. One group (small answers) takes one pass.
    """
    shape = out.shape[1:]
    groups = list(_class_groups(logits, shape))
    if len(groups) == 1:
        out[...] = mx.nd.softmax(_resize(logits, shape), axis=0).asnumpy()
        return
    peak, total = None, None
    for _, group in groups:
        resized = _resize(group, shape)
        group_peak = resized.max(axis=0)
        new_peak = group_peak if peak is None else mx.nd.maximum(peak, group_peak)
        group_sum = mx.nd.exp(mx.nd.broadcast_sub(resized, new_peak.expand_dims(0))).sum(axis=0)
        total = group_sum if total is None else total * mx.nd.exp(peak - new_peak) + group_sum
        peak = new_peak
        # MXNet runs operators asynchronously: without waiting, every group's resized copy would be queued
        # (and held) at once.
        total.wait_to_read()
    for first, group in groups:
        resized = _resize(group, shape)
        exp = mx.nd.exp(mx.nd.broadcast_sub(resized, peak.expand_dims(0)))
        out[first: first + group.shape[0]] = mx.nd.broadcast_div(exp, total.expand_dims(0)).asnumpy()


def _class_groups(logits: mx.nd.NDArray, shape: Tuple[int, int]) -> Iterator[Tuple[int, mx.nd.NDArray]]:
    num_classes = logits.shape[0]
    per_group = max(1, min(num_classes, MAX_RESIZED_VALUES // max(1, shape[0] * shape[1])))
    for first in range(0, num_classes, per_group):
        yield first, logits[first: first + per_group]
