"""Training: the loop (devices, trainer, schedules, validation, early stopping, checkpoints, SIGTERM).

Modules: `loop` (the job from start to end), `epoch` (one epoch over the devices), `schedule`,
`job`, `early_stopping`, `checkpoints`, `devices`, `optimizer`, `network` (training/validation networks and
their starting weights), `validation`, `feed` (data for training).
"""

from segmaker.training.job import TrainingJob, TrainingResult
from segmaker.training.loop import train

__all__ = ["TrainingJob", "TrainingResult", "train"]
