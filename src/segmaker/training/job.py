"""What a training run is given (`TrainingJob`) and what it reports back (`TrainingResult`)."""

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

from segmaker.config import TrainingConfig
from segmaker.environment import ChannelConfig, Paths, ResourceConfig
from segmaker.outputs import EpochRecord


@dataclass(frozen=True)
class TrainingJob:
    """Everything the job reads from the /opt/ml contract, already parsed (cli builds it)."""

    paths: Paths
    config: TrainingConfig
    channels: Dict[str, ChannelConfig]
    resources: ResourceConfig
    checkpoint_dir: Optional[Path]
    mxnet_home: Path
    cpu_devices: int = 1
    num_gpus: Optional[int] = None  # None: every GPU MXNet sees


@dataclass(frozen=True)
class TrainingResult:
    completed: bool  # False when a stop request cut training short
    history: Tuple[EpochRecord, ...]
    best_epoch: Optional[int]
    best_miou: Optional[float]
