"""What training leaves in /opt/ml/model, written by `artifacts` (which owns the directory's format)."""

import logging
from pathlib import Path
from typing import Optional

import mxnet as mx

from segmaker import artifacts
from segmaker.data import LabelMap
from segmaker.quantize import quantize_after_training
from segmaker.training.early_stopping import EarlyStoppingState
from segmaker.training.job import TrainingJob

log = logging.getLogger(__name__)


def write_model(
    job: TrainingJob,
    net: mx.gluon.HybridBlock,
    best_params: Optional[Path],
    early_stopping: EarlyStoppingState,
    label_map: LabelMap,
    working_size: int,
    exports: bool = True,
) -> None:
    """The model directory: best parameters (the final ones when nothing was validated) and final ones;
    the symbol and ONNX exports too unless `exports` is False (a stop: no time to build networks)."""
    config = job.config
    validated = early_stopping.best_epoch is not None
    manifest = artifacts.ModelManifest(
        algorithm=config.algorithm,
        backbone=config.backbone,
        num_classes=config.num_classes,
        working_size=working_size,
        class_names=config.class_names,
        label_map=label_map.to_json(),
        best_epoch=early_stopping.best_epoch,
        best_miou=early_stopping.best_miou if validated else None,
        image_scale=config.image_scale,
    )
    written = artifacts.write_model_dir(
        job.paths.model_dir,
        manifest,
        final_net=net,
        best=best_params,
        hyperparameters=config.to_json_dict(),
        exports=exports,
    )
    if not exports:
        log.info("Model written to %s without its symbol and ONNX exports (`segmaker export %s` adds them)",
                 job.paths.model_dir, job.paths.model_dir)
        return
    log.info("Model written to %s", job.paths.model_dir)
    if written.onnx_file is not None:
        quantize_after_training(job.paths, job.channels, written.directory)
