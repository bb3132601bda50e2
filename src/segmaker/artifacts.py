"""The model directory: what training leaves in /opt/ml/model and what serving and incremental training read.

```
model_best.params   parameters at the best validation mIOU (built-in name; Gluon save_parameters format)
model_algo-1        final parameters (built-in name; same format)
hyperparams.json    the resolved hyperparameters
segmaker.json       the manifest: architecture, working size, class names, label map, best epoch and mIOU
model-symbol.json   hybridized export of the best parameters at working size, main head only
model-0000.params
model.onnx          where the algorithm exports (input 1x3xSxS, output 1xCxSxS logits)
model.int8.onnx     its int8 quantization, when it passed the gate (segmaker.quantize)
```

A directory the built-in algorithm wrote (`hyperparams.json`, `model_best.params`, `model_algo-1`, no
`segmaker.json`) is read too: its manifest is inferred from `hyperparams.json` (see `builtin_manifest`),
and its parameter files are in the same format as ours (GluonCV's `save_parameters`: structural names such
as `layer1.0.conv1.weight`, `head.block.4.weight`, `auxlayer.block.4.weight`), which is also how users load
either kind with GluonCV's own classes (`gluoncv.model_zoo.PSPNet(nclass, backbone="resnet50",
pretrained_base=False).load_parameters("model_algo-1")`).

Every file is first written into a staging folder inside the model directory and then renamed into place
(same file system, so each rename is atomic); the manifest comes last, so a directory with a manifest is
complete. The `model` channel may bring such a directory or a `model.tar.gz` of one.
"""

import json
import logging
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import mxnet as mx

from segmaker.config import BACKBONES as CONFIG_BACKBONES
from segmaker.errors import UserError
from segmaker.files import move_into, staged_file
from segmaker.metrics import class_names_or_default
from segmaker.models import (
    ALGORITHMS,
    IMAGE_SCALES,
    SegmentationInference,
    build_network,
    load_parameters,
    working_size_for,
)

LOG = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "segmaker.json"
BEST_PARAMS = "model_best.params"
FINAL_PARAMS = "model_algo-1"
HYPERPARAMETERS = "hyperparams.json"
EXPORT_PREFIX = "model"
SYMBOL_FILE = EXPORT_PREFIX + "-symbol.json"
EXPORT_PARAMS = EXPORT_PREFIX + "-0000.params"
ONNX_FILE = "model.onnx"
INT8_ONNX_FILE = "model.int8.onnx"
TARBALL = "model.tar.gz"


@dataclass(frozen=True)
class ModelManifest:
    """What `segmaker.json` records: enough to rebuild the network without the job's configuration."""

    algorithm: str
    backbone: str
    num_classes: int
    working_size: int
    class_names: Tuple[str, ...] = ()
    label_map: Optional[Mapping[str, object]] = None
    best_epoch: Optional[int] = None
    best_miou: Optional[float] = None
    int8: Optional[Mapping[str, object]] = None  # what segmaker.quantize measured and decided
    # How the network sees an image (models.IMAGE_SCALES): resized whole to the working size, or read at its
    # own resolution in sliding working-size tiles (trained with image_scale=native). Absent: base_size.
    image_scale: str = "base_size"

    def names(self) -> List[str]:
        """The class names, `class_<id>` for a model trained without names."""
        return class_names_or_default(self.class_names, self.num_classes)

    def to_json_dict(self) -> Dict[str, object]:
        raw = {
            "format_version": FORMAT_VERSION,
            "algorithm": self.algorithm,
            "backbone": self.backbone,
            "num_classes": self.num_classes,
            "working_size": self.working_size,
            "class_names": self.names(),
            "label_map": dict(self.label_map) if self.label_map is not None else None,
            "best_epoch": self.best_epoch,
            "best_mIOU": self.best_miou,
            "image_scale": self.image_scale,
        }
        if self.int8 is not None:  # only once segmaker.quantize ran
            raw["int8"] = dict(self.int8)
        return raw


def manifest_from_json_dict(raw: Mapping[str, object], source: Path) -> ModelManifest:
    """Parse a manifest; a missing or mistyped field is a UserError naming `source` and the key."""
    version = raw.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(f"{source}: format_version {version!r} is newer than this segmaker reads"
                        f" ({FORMAT_VERSION}); use the image that trained the model")
    return ModelManifest(
        algorithm=_field(raw, "algorithm", str, source),
        backbone=_field(raw, "backbone", str, source),
        num_classes=_field(raw, "num_classes", int, source),
        working_size=_field(raw, "working_size", int, source),
        class_names=tuple(str(name) for name in raw.get("class_names") or ()),
        label_map=raw.get("label_map"),
        best_epoch=raw.get("best_epoch"),
        best_miou=raw.get("best_mIOU"),
        int8=raw.get("int8"),
        image_scale=_image_scale(raw.get("image_scale", "base_size"), source),
    )


def _image_scale(value: object, source: Path) -> str:
    if value not in IMAGE_SCALES:
        raise UserError(f"{source}: 'image_scale' must be one of {', '.join(IMAGE_SCALES)}, not {value!r}")
    return str(value)


def _field(raw: Mapping[str, object], key: str, kind: type, source: Path):
    value = raw.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise UserError(f"{source}: '{key}' must be a {kind.__name__}, not {value!r}")
    return value


@dataclass(frozen=True)
class ModelArtifacts:
    """A model directory that was read: its manifest and the paths of the files present (None if absent)."""

    directory: Path
    manifest: ModelManifest
    best_params: Optional[Path] = None
    final_params: Optional[Path] = None
    hyperparameters: Optional[Path] = None
    symbol_file: Optional[Path] = None
    export_params: Optional[Path] = None
    onnx_file: Optional[Path] = None
    int8_onnx_file: Optional[Path] = None
    files: Tuple[str, ...] = field(default=(), repr=False)

    def params_file(self, which: str = "best") -> Path:
        """`best` (model_best.params) or `final` (model_algo-1); either falls back on the other."""
        if which not in ("best", "final"):
            raise ValueError(f"which must be 'best' or 'final', not {which!r}")
        order = [self.best_params, self.final_params]
        found = [path for path in (order if which == "best" else order[::-1]) if path is not None]
        if not found:
            raise UserError(f"model directory {self.directory} holds neither {BEST_PARAMS}"
                            f" nor {FINAL_PARAMS}")
        return found[0]


ParamsSource = Union[Path, mx.gluon.HybridBlock]


def write_model_dir(
    model_dir: Path,
    manifest: ModelManifest,
    *,
    final_net: mx.gluon.HybridBlock,
    best: Optional[ParamsSource] = None,
    hyperparameters: Mapping[str, object],
    onnx: bool = True,
    exports: bool = True,
) -> ModelArtifacts:
    """Write the whole model directory; call once at the end of training, or on SIGTERM with the best so far.

    `final_net` is the training network as it is now (written as model_algo-1). `best` holds the parameters
    at the best validation mIOU: a network, or a parameter file the loop saved when that epoch ended (it
    may already be `model_dir/model_best.params`); without it (no validation channel) the final parameters
    are the best. The export and ONNX files are made from the best parameters, without the auxiliary head.
    The ONNX export is the slow part (tens of seconds for ResNet-101 on a CPU): `onnx=False` skips it.
    `exports=False` writes the parameters, hyperparams.json and segmaker.json only, building no network
    (a stopped job, within SageMaker's 120 s): `add_exports` (`segmaker export DIR`) adds the rest later.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=str(model_dir)))
    try:
        final_net.save_parameters(str(staging / FINAL_PARAMS))
        _stage_best(best, staging, model_dir)
        _write_json(staging / HYPERPARAMETERS, dict(hyperparameters))
        if exports:
            _stage_exports(manifest, staging / BEST_PARAMS, staging, onnx)
        _write_json(staging / MANIFEST, manifest.to_json_dict())
        _publish(staging, model_dir, replace_all=True)
    finally:
        shutil.rmtree(str(staging), ignore_errors=True)
    return read_model_dir(model_dir)


def add_exports(model_dir: Path, *, onnx: bool = True) -> ModelArtifacts:
    """Add (or redo) the symbol export and the ONNX file of a model directory, from its best parameters.

    For a directory written with `exports=False` (a stopped job's model); the other files stay as they are.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserError(f"{model_dir} is not a model directory (extract a model.tar.gz first)")
    if (model_dir / TARBALL).is_file() and not (model_dir / MANIFEST).is_file():
        raise UserError(f"{model_dir} holds {TARBALL}: extract it and export the extracted directory")
    model = read_model_dir(model_dir)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=str(model.directory)))
    try:
        _stage_exports(model.manifest, model.params_file("best"), staging, onnx)
        _publish(staging, model.directory, replace_all=False)
    finally:
        shutil.rmtree(str(staging), ignore_errors=True)
    return read_model_dir(model.directory)


def _stage_exports(manifest: ModelManifest, params_file: Path, staging: Path, onnx: bool) -> None:
    """model-symbol.json, model-0000.params and (when `onnx`) model.onnx of `params_file`, into `staging`."""
    inference_net = load_network(manifest, params_file)
    _export_symbol(inference_net, manifest.working_size, staging)
    if onnx:
        _export_onnx(inference_net, manifest.working_size, staging / ONNX_FILE)


def _stage_best(best: Optional[ParamsSource], staging: Path, model_dir: Path) -> None:
    target = staging / BEST_PARAMS
    if best is None:
        shutil.copyfile(str(staging / FINAL_PARAMS), str(target))
    elif isinstance(best, mx.gluon.Block):
        best.save_parameters(str(target))
    else:
        # Copied even when it already is model_dir/model_best.params: the export below reads the staged copy,
        # and publishing it again is harmless.
        shutil.copyfile(str(best), str(target))


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load_network(manifest: ModelManifest, params_file: Path, *, size: Optional[int] = None,
                 aux: bool = False) -> mx.gluon.HybridBlock:
    """The manifest's network for `size` inputs (default: its working size), without the auxiliary head
    unless `aux`, holding the parameters of `params_file`."""
    net = build_network(manifest.algorithm, manifest.backbone, manifest.num_classes,
                        size=size or manifest.working_size, aux=aux)
    load_parameters(net, params_file)
    return net


def _export_symbol(net: mx.gluon.HybridBlock, working_size: int, staging: Path) -> None:
    # export() needs the cached graph, which exists only after one forward of the hybridized network.
    net.hybridize(static_alloc=True, static_shape=True)
    net(mx.nd.zeros((1, 3, working_size, working_size)))
    net.export(str(staging / EXPORT_PREFIX), epoch=0)


def _export_onnx(net: mx.gluon.HybridBlock, working_size: int, path: Path) -> None:
    try:
        from segmaker.export import export_onnx
    except ImportError as exc:
        LOG.info("ONNX export skipped: %s", exc)
        return
    export_onnx(net, working_size, path)


def _publish(staging: Path, model_dir: Path, replace_all: bool) -> None:
    """Rename every staged file (fsync'ed, mode 0644) into the model directory, the manifest last; with
    `replace_all`, drop the files of an older write that this one did not produce (an ONNX file the new
    model could not be exported to, or the exports of a stopped job's write)."""
    produced = sorted(p.name for p in staging.iterdir())
    if replace_all:
        for stale in set(_MANAGED_FILES) - set(produced):
            if (model_dir / stale).exists():
                (model_dir / stale).unlink()
    move_into([staging / name for name in sorted(produced, key=lambda n: n == MANIFEST)], model_dir)


# model.int8.onnx is managed too: a rewrite of the directory drops the int8 model of the older float one.
_MANAGED_FILES = (BEST_PARAMS, FINAL_PARAMS, HYPERPARAMETERS, SYMBOL_FILE, EXPORT_PARAMS, ONNX_FILE,
                  INT8_ONNX_FILE, MANIFEST)


def record_int8(model_dir: Path, int8_file: Optional[Path], report: Mapping[str, object]) -> None:
    """Publish a copy of `int8_file` (made anywhere, e.g. in a scratch folder) as model.int8.onnx (None:
    remove any older one) and keep `report` in segmaker.json.

    Each is written under a hidden temporary name and renamed in (`files.staged_file`), the int8 model
    before the manifest, as in write_model_dir.
    """
    model_dir = Path(model_dir)
    target = model_dir / INT8_ONNX_FILE
    if int8_file is not None:
        with staged_file(target) as temporary:
            shutil.copyfile(str(int8_file), str(temporary))
    elif target.exists():
        target.unlink()
    manifest_path = model_dir / MANIFEST
    raw = json.loads(manifest_path.read_text(encoding="utf-8"))
    raw["int8"] = dict(report)
    with staged_file(manifest_path) as temporary:
        _write_json(temporary, raw)


def read_model_dir(path: Path, *, extract_dir: Optional[Path] = None) -> ModelArtifacts:
    """Read a model directory, or a directory holding `model.tar.gz`, or such a tarball itself.

    A tarball is extracted into `extract_dir` (default: a new temporary directory, left for the process'
    lifetime since the returned paths point into it).
    """
    path = Path(path)
    if path.is_file() and path.name.endswith(".tar.gz"):
        return read_model_dir(_extract(path, extract_dir))
    if not path.is_dir():
        raise UserError(f"model directory {path} does not exist")
    directory = _model_directory(path)
    if directory is None:
        if (path / TARBALL).is_file():
            return read_model_dir(_extract(path / TARBALL, extract_dir))
        raise UserError(f"{path} holds no model: expected {MANIFEST} (segmaker), or {HYPERPARAMETERS} with "
                        f"{BEST_PARAMS} or {FINAL_PARAMS} (the built-in algorithm), or {TARBALL}; found "
                        f"{_listing(path)}")
    return _artifacts(directory)


def _model_directory(path: Path) -> Optional[Path]:
    """`path` itself, or its only subdirectory (a tarball made of the folder rather than its contents),
    when it holds a segmaker manifest or the built-in algorithm's files."""
    if _is_model_directory(path):
        return path
    subdirectories = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(subdirectories) == 1 and _is_model_directory(subdirectories[0]):
        return subdirectories[0]
    return None


def _is_model_directory(path: Path) -> bool:
    return (path / MANIFEST).is_file() or _is_builtin_directory(path)


def _is_builtin_directory(path: Path) -> bool:
    return (path / HYPERPARAMETERS).is_file() and any((path / name).is_file()
                                                      for name in (BEST_PARAMS, FINAL_PARAMS))


def _listing(path: Path) -> str:
    names = sorted(p.name for p in path.iterdir())
    return ", ".join(names[:10]) + (" ..." if len(names) > 10 else "") if names else "nothing"


def _read_json_object(path: Path) -> Mapping[str, object]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UserError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path} must hold a JSON object")
    return raw


def _artifacts(directory: Path) -> ModelArtifacts:
    manifest_path = directory / MANIFEST
    if manifest_path.is_file():
        manifest = manifest_from_json_dict(_read_json_object(manifest_path), manifest_path)
    else:
        hyperparameters = directory / HYPERPARAMETERS
        manifest = builtin_manifest(_read_json_object(hyperparameters), hyperparameters)
        LOG.info("%s has no %s: read as the built-in algorithm's model (%s %s, %d classes, working size %d)",
                 directory, MANIFEST, manifest.algorithm, manifest.backbone, manifest.num_classes,
                 manifest.working_size)

    def present(name: str) -> Optional[Path]:
        return directory / name if (directory / name).is_file() else None

    return ModelArtifacts(
        directory=directory,
        manifest=manifest,
        best_params=present(BEST_PARAMS),
        final_params=present(FINAL_PARAMS),
        hyperparameters=present(HYPERPARAMETERS),
        symbol_file=present(SYMBOL_FILE),
        export_params=present(EXPORT_PARAMS),
        onnx_file=present(ONNX_FILE),
        int8_onnx_file=present(INT8_ONNX_FILE),
        files=tuple(sorted(p.name for p in directory.iterdir() if p.is_file())),
    )


# The built-in algorithm's defaults for what its hyperparams.json may leave out (SPEC section 3).
_BUILTIN_DEFAULTS = {"algorithm": "fcn", "backbone": "resnet-50", "base_size": 520, "crop_size": 240}


def builtin_manifest(hyperparameters: Mapping[str, object], source: Path) -> ModelManifest:
    """The manifest of a model the built-in algorithm trained, inferred from its `hyperparams.json`.

    Read: `algorithm` (fcn | psp | deeplab), `backbone` (resnet-50 | resnet-101), `num_classes` (required),
    `base_size` and `crop_size` (the built-in's defaults 520 and 240 when absent), values as strings or JSON
    numbers. Inferred: the working size, as for our own models (`base_size`, at least `crop_size`, rounded up
    to a multiple of 8); class names `class_<id>`; no label map; the whole-image (`base_size`) scale. Other
    keys are ignored. Whether the files hold an auxiliary head does not matter: serving does not use it.
    """
    def value(key: str) -> object:
        found = hyperparameters.get(key, _BUILTIN_DEFAULTS.get(key))
        if found is None:
            raise UserError(f"{source}: '{key}' is missing; a built-in model's hyperparams.json must name it")
        return found.strip().lower() if isinstance(found, str) else found

    algorithm = value("algorithm")
    if algorithm not in ALGORITHMS:
        raise UserError(f"{source}: 'algorithm' {algorithm!r} is not one of {sorted(ALGORITHMS)}")
    backbone = CONFIG_BACKBONES.get(str(value("backbone")))
    if backbone is None:
        raise UserError(f"{source}: 'backbone' {value('backbone')!r} is not one of resnet-50, resnet-101")
    sizes = {key: _whole_number(value(key), key, source) for key in ("num_classes", "base_size", "crop_size")}
    return ModelManifest(algorithm=algorithm, backbone=backbone, num_classes=sizes["num_classes"],
                         working_size=working_size_for(max(sizes["base_size"], sizes["crop_size"])))


def _whole_number(raw: object, key: str, source: Path) -> int:
    try:
        number = float(raw)  # "21", 21, "21.0" (tuning jobs send whole numbers so)
    except (TypeError, ValueError):
        number = -1.0
    if isinstance(raw, bool) or number != int(number) or number < 1:
        raise UserError(f"{source}: '{key}' must be a positive whole number, not {raw!r}")
    return int(number)


def _extract(tarball: Path, extract_dir: Optional[Path]) -> Path:
    if extract_dir is None:
        extract_dir = Path(tempfile.mkdtemp(prefix="segmaker-model-"))
    target = Path(extract_dir)
    target.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(str(tarball), "r:*") as archive:
            members = [_checked_member(member, tarball) for member in archive.getmembers()]
            archive.extractall(str(target), members=[m for m in members if m is not None])
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UserError(f"cannot extract model archive {tarball}: {exc}") from None
    return target


def _checked_member(member: tarfile.TarInfo, tarball: Path) -> Optional[tarfile.TarInfo]:
    """Regular files and folders only, and only below the extraction folder (no '..', no absolute paths)."""
    parts = Path(member.name).parts
    if member.name.startswith(("/", "\\")) or ".." in parts:
        raise UserError(f"model archive {tarball} holds an entry outside its folder: {member.name!r}")
    return member if member.isfile() or member.isdir() else None


def check_compatible(artifacts: ModelArtifacts, algorithm: str, backbone: str, num_classes: int) -> None:
    """UserError listing every difference between the model channel's model and this job's architecture."""
    manifest = artifacts.manifest
    wanted = {"algorithm": algorithm, "backbone": backbone, "num_classes": num_classes}
    differences = [f"{key} is {getattr(manifest, key)!r} in the model but {value!r} in the hyperparameters"
                   for key, value in wanted.items() if getattr(manifest, key) != value]
    if differences:
        raise UserError(f"the model channel's model ({artifacts.directory}) cannot be trained further by this"
                        f" job: {'; '.join(differences)}")


def load_inference(artifacts: ModelArtifacts, contexts: Sequence[mx.Context], *, params: str = "best",
                   working_size: Optional[int] = None) -> SegmentationInference:
    """The MXNet inference engine for a model directory, at the manifest's working size or `working_size`."""
    size = working_size or artifacts.manifest.working_size
    net = load_network(artifacts.manifest, artifacts.params_file(params), size=size)
    return SegmentationInference(net, size, contexts, image_scale=artifacts.manifest.image_scale)
