"""What training leaves in /opt/ml/model, written by `artifacts` (which owns the directory's format)."""

import logging
import tempfile
from pathlib import Path
from typing import Optional

import mxnet as mx

from segmaker.data import LabelMap
from segmaker.training.early_stopping import EarlyStoppingState

log = logging.getLogger(__name__)


def write_model(
    job,
    net: mx.gluon.HybridBlock,
    best_params: Optional[Path],
    early_stopping: EarlyStoppingState,
    label_map: LabelMap,
    working_size: int,
) -> None:
    """The model directory: best parameters (the final ones when nothing was validated) and final ones."""
    from segmaker import artifacts

    with tempfile.TemporaryDirectory(prefix="segmaker-final-") as scratch:
        final_params = Path(scratch) / "final.params"
        net.save_parameters(str(final_params))
        artifacts.write_model_dir(
            job.paths.model_dir,
            config=job.config,
            best_params=best_params or final_params,
            final_params=final_params,
            label_map=label_map,
            working_size=working_size,
            best_epoch=early_stopping.best_epoch,
            best_miou=early_stopping.best_miou if early_stopping.best_epoch is not None else None,
        )
    log.info("Model written to %s", job.paths.model_dir)
