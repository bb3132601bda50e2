"""What a training run tells the world: metric lines per epoch (the built-in's, on stdout), the per-class
table in the log, output/data (metrics files, curves, report) written by the main worker."""

import logging
from typing import Optional

from segmaker import metrics, outputs
from segmaker.config import TrainingConfig
from segmaker.environment import Paths
from segmaker.outputs import EpochRecord
from segmaker.training.devices import WorkerRole

log = logging.getLogger(__name__)


class Reporter:
    def __init__(self, config: TrainingConfig, role: WorkerRole, paths: Paths):
        self.config, self.role, self.paths = config, role, paths

    def epoch(
        self, record: EpochRecord, matrix: Optional[metrics.ConfusionMatrix], history: outputs.History
    ) -> None:
        """One finished epoch: metric lines, per-class table, metrics files (history includes `record`)."""
        self._print_metric_lines(record, matrix)
        if matrix is not None:
            table = metrics.per_class_table(matrix, self.config.class_names)
            log.info("Epoch %d validation per class:\n%s", record.epoch, table)
        if self.role.is_main:
            outputs.write_metrics(history.records, self.paths.output_data_dir, self.config.class_names)

    def final(self, history: outputs.History, examples: Optional[outputs.Examples]) -> None:
        """output/data and its report.html; `examples` are the prediction plot's (None: no plot)."""
        if self.role.is_main:
            report = outputs.write_outputs(self.paths.output_data_dir, history, self.config, examples)
            log.info("Report: %s", report)

    def _print_metric_lines(self, record: EpochRecord, matrix: Optional[metrics.ConfusionMatrix]) -> None:
        host, epoch = self.role.host, record.epoch
        lines = [
            metrics.train_loss_line(host, epoch, record.train_loss),
            metrics.train_throughput_line(host, epoch, record.throughput),
        ]
        if matrix is not None:
            lines += metrics.validation_lines(host, epoch, matrix)
        lines.append(metrics.progress_line(host, epoch + 1, self.config.epochs))
        if not self.role.is_main:
            return  # one voice: the metric lines of a multi-host job come from algo-1 only
        # The metric lines go to stdout bare (no timestamp prefix), byte for byte as the built-in prints them.
        print("\n".join(lines), flush=True)
