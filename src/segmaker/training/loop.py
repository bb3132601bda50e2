"""The training job from start to end: set-up, resume, epochs, validation, checkpoints, the model.

`train(job, stop_requested)` is all the CLI calls. A run is a `_Run` object (no module state): it holds
what set-up built and advances a frozen `TrainingState` epoch by epoch; that state is exactly what a
checkpoint stores, so a resumed run continues as if it had never stopped.
"""

import logging
import random
import shutil
import tempfile
import threading
import time
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Dict, Optional

import mxnet as mx
import numpy as np

from segmaker import metrics, outputs
from segmaker.data.order import DataOrder, draw_seed
from segmaker.outputs import EpochRecord
from segmaker.training.checkpoints import Checkpoint, CheckpointStore, TrainingState
from segmaker.training.class_weights import check_training_classes, resolve_class_weights
from segmaker.training.devices import (
    check_precision,
    resolve_kvstore,
    training_contexts,
    visible_gpu_count,
    worker_role,
)
from segmaker.training.distributed import Cluster
from segmaker.training.early_stopping import EarlyStoppingRule, EarlyStoppingState
from segmaker.training.epoch import EpochPlan, EpochStats, train_one_epoch
from segmaker.training.feed import DataFeed, TrainingData, find_training_data, iterations_per_epoch
from segmaker.training.job import TrainingJob, TrainingResult
from segmaker.training.loss import SegmentationLoss
from segmaker.training.model_dir import write_model
from segmaker.training.network import build_training_network, working_size
from segmaker.training.optimizer import make_trainer
from segmaker.training.schedule import schedule_for
from segmaker.training.validation import Validator

log = logging.getLogger(__name__)

PLOTTED_EXAMPLES = 4


def train(
    job: TrainingJob, stop_requested: threading.Event, cluster: Optional[Cluster] = None
) -> TrainingResult:
    """Train as the job says; on a stop request save a checkpoint and the best model so far, and return.

    `cluster`: this host's place in a multi-host job (training.distributed); None on one host."""
    config = job.config
    cluster = cluster or Cluster(worker_role(job.resources))
    role = cluster.role
    gpus = visible_gpu_count() if job.num_gpus is None else job.num_gpus
    contexts = training_contexts(gpus, job.cpu_devices)
    check_precision(config.precision_dtype, contexts)
    store = CheckpointStore(job.checkpoint_dir, config.to_json_dict()) if job.checkpoint_dir else None
    checkpoint = store.latest() if store else None
    # Every host must draw its batches from the same order: the main host's seed wins.
    seed = cluster.broadcast_integer("data-seed", data_seed(config.seed, checkpoint))
    order = DataOrder(seed, config.mini_batch_size, role.rank, role.world_size)
    _seed(order.seed)
    data = find_training_data(job, order.seed, role.rank, role.world_size)
    per_epoch = iterations_per_epoch(config.num_training_samples, data.train.size, config.mini_batch_size)
    _log_plan(config, contexts, data, per_epoch)
    net = build_training_network(job, contexts)
    with DataFeed(config, data, order, keep_examples=PLOTTED_EXAMPLES) as feed:
        with tempfile.TemporaryDirectory(prefix="segmaker-") as scratch:
            run = _Run(job, cluster, contexts, net, feed, per_epoch, Path(scratch), store)
            return run.run(stop_requested, checkpoint)


def data_seed(configured: Optional[int], checkpoint: Optional[Checkpoint]) -> int:
    """The seed of data order and augmentation: the `seed` hyperparameter, else the one the checkpoint
    being resumed used, else a fresh one (logged, so a run can be repeated with `seed` set to it)."""
    if configured is not None:
        return configured
    if checkpoint is not None and checkpoint.state.data_seed is not None:
        return checkpoint.state.data_seed
    seed = draw_seed()
    log.info("No seed hyperparameter: data seed %d drawn for this run (set seed=%d to repeat it)", seed, seed)
    return seed


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    mx.random.seed(seed)


def _log_plan(config, contexts, data: TrainingData, per_epoch: int) -> None:
    log.info(
        "Training %s/%s (%d classes) on %s: %s, %d iterations per epoch of %d images, %d epochs",
        config.algorithm,
        config.backbone,
        config.num_classes,
        ", ".join(str(ctx) for ctx in contexts),
        data.describe_train(),
        per_epoch,
        config.mini_batch_size,
        config.epochs,
    )
    if not data.has_validation:
        log.warning(
            "No validation channel: no validation metrics, no early stopping; the final weights count as best"
        )


class _Run:
    """One training run; `run()` drives the epochs."""

    def __init__(
        self,
        job: TrainingJob,
        cluster: Cluster,
        contexts,
        net,
        feed: DataFeed,
        per_epoch: int,
        scratch: Path,
        store: Optional[CheckpointStore],
    ):
        config = job.config
        self.job, self.config, self.contexts = job, config, contexts
        self.cluster, self.role = cluster, cluster.role
        self.net, self.feed, self.per_epoch = net, feed, per_epoch
        kvstore = cluster.kvstore or resolve_kvstore(config.kvstore, contexts, self.role.world_size)
        self.trainer = make_trainer(net, config, kvstore, hosts=self.role.world_size)
        weights = resolve_class_weights(config, feed)
        self.loss = SegmentationLoss(
            config.num_classes,
            config.loss,
            weights,
            aux_weight=config.aux_weight,
            global_sum=cluster.loss_statistics_sum,
        )
        self.schedule = schedule_for(config, per_epoch)
        self.rule = EarlyStoppingRule.from_config(config)
        self.validator = Validator(config, contexts) if feed.data.has_validation else None
        self.best_params = scratch / "best.params"
        self.hyperparameters = config.to_json_dict()
        self.store = store

    def run(self, stop_requested: threading.Event, checkpoint: Optional[Checkpoint]) -> TrainingResult:
        """`stop_requested` is this host's SIGTERM flag; on several hosts the loop acts on `self.stop`, set
        on every host at the same iteration when any host's flag is (see Cluster.agreed_batches)."""
        self.local_stop = stop_requested
        self.stop = threading.Event() if self.cluster.is_distributed else stop_requested
        stop_requested = self.stop
        state = self._resume(checkpoint)
        self.cluster.broadcast_parameters(self.net)
        while len(state.history) < self.config.epochs and not state.early_stopping.should_stop(self.rule):
            epoch = len(state.history)
            state = self._train_rest_of_epoch(epoch, state, stop_requested)
            if stop_requested.is_set():
                self._save(state, finished=False)
                return self._result(state, completed=False)
            state = self._end_epoch(epoch, state)
            self._checkpoint(state)
        if state.early_stopping.should_stop(self.rule):
            log.info("Early stopping after epoch %d", len(state.history) - 1)
        self._save(state, finished=True)
        return self._result(state, completed=True)

    # -- resume and checkpoints -------------------------------------------------------------------------

    def _resume(self, checkpoint: Optional[Checkpoint]) -> TrainingState:
        seed = self.feed.order.seed
        fresh = TrainingState(0, EarlyStoppingState(), (), self.hyperparameters, data_seed=seed)
        if checkpoint is None:
            return fresh
        self.net.load_parameters(str(checkpoint.params_file), ctx=self.contexts, cast_dtype=True)
        self.trainer.load_states(str(checkpoint.trainer_file))
        if checkpoint.best_params_file.exists():
            shutil.copyfile(str(checkpoint.best_params_file), str(self.best_params))
        state = checkpoint.state
        log.info(
            "Resuming from checkpoint %s: %d epochs done, %d iterations into epoch %d",
            checkpoint.directory,
            len(state.history),
            state.partial_epoch.iterations,
            len(state.history),
        )
        return state

    def _checkpoint(self, state: TrainingState) -> None:
        if self.store is not None and self.role.is_main:
            path = self.store.save(state, self.net, self.trainer, self.best_params)
            log.info("Checkpoint written: %s", path)

    # -- one epoch -----------------------------------------------------------------------------------------

    def _train_rest_of_epoch(self, epoch: int, state: TrainingState, stop: threading.Event) -> TrainingState:
        """Train the iterations `epoch` still lacks (all of them, unless it was interrupted before)."""
        remaining = (epoch + 1) * self.per_epoch - state.completed_iterations
        if remaining <= 0 or stop.is_set():
            return state
        plan = EpochPlan(epoch, state.completed_iterations, remaining, self.per_epoch)
        first = state.completed_iterations - epoch * self.per_epoch
        with closing(self.feed.train_batches(epoch, first, remaining)) as batches:
            batches = self.cluster.agreed_batches(batches, self.local_stop, self.stop)
            stats = train_one_epoch(
                self.net,
                self.trainer,
                self.loss,
                batches,
                self.contexts,
                self.schedule,
                plan,
                stop,
            )
        stats = self._whole_job(stats)
        completed = state.completed_iterations + stats.iterations
        if stats.iterations < remaining and not stop.is_set():
            log.warning(
                "The training data ended after %d of the %d iterations of epoch %d (Pipe mode: fewer samples"
                " than num_training_samples?); going on with the next epoch",
                stats.iterations,
                remaining,
                epoch,
            )
            completed = (epoch + 1) * self.per_epoch  # keep the schedule on its epoch boundaries
        return replace(state, completed_iterations=completed, partial_epoch=state.partial_epoch + stats)

    def _whole_job(self, stats: EpochStats) -> EpochStats:
        """On several hosts, what the whole job measured: images and class pixels summed (so the checks
        on classes without pixels decide alike everywhere), and the loss as the mean of the hosts' means
        (every host trained on an equal slice of each global batch)."""
        if not self.cluster.is_distributed:
            return stats
        loss_sum, images = self.cluster.sum_floats("epoch-loss", np.array([stats.loss_sum, stats.images]))
        pixels = stats.class_pixels
        if pixels:  # empty on every host alike: the hosts ran the same iterations
            pixels = tuple(self.cluster.sum_integers("class-pixels", np.array(pixels)).tolist())
        return replace(
            stats,
            loss_sum=float(loss_sum) / self.role.world_size,
            images=int(round(images)),
            class_pixels=pixels,
        )

    def _end_epoch(self, epoch: int, state: TrainingState) -> TrainingState:
        """Validate, update early stopping and the best weights, report; the epoch joins the history."""
        stats = state.partial_epoch
        if epoch == 0:
            check_training_classes(stats.class_pixels, self.config.num_classes)
        validation_started = time.monotonic()
        matrix = self._validate()
        scores = matrix.scores() if matrix is not None else None
        validation_seconds = time.monotonic() - validation_started
        early_stopping = state.early_stopping
        if scores is not None:
            early_stopping = early_stopping.update(epoch, scores["mIOU"], self.rule)
        best = scores is None or early_stopping.is_best(epoch)
        if best:
            self.net.save_parameters(str(self.best_params))
        record = EpochRecord.of_epoch(
            epoch, stats.mean_loss, stats.throughput, stats.last_lr, stats.seconds, matrix
        )
        state = replace(
            state,
            early_stopping=early_stopping,
            history=outputs.append_history(state.history, record, matrix if best else None),
            partial_epoch=EpochStats(),
        )
        self._report(record, scores)
        if matrix is not None:
            log.info("Epoch %d validation per class:\n%s", epoch,
                     metrics.per_class_table(matrix, self.config.class_names))
        log.info("Epoch %d: training %.1f s, validation %.1f s", epoch, record.seconds, validation_seconds)
        if self.role.is_main:
            outputs.write_metrics([EpochRecord.from_dict(row) for row in state.history],
                                  self.job.paths.output_data_dir, self.config.class_names)
        return state

    def _validate(self) -> Optional[metrics.ConfusionMatrix]:
        if self.validator is None:
            return None
        self.validator.load_weights_from(self.net)
        matrix = self.validator.evaluate(self.feed.validation_batches())
        # Each host validated its share: the sum of the counts is the exact matrix of the whole set, known to
        # every host, so early stopping decides alike everywhere. A stop asked meanwhile is agreed here.
        matrix.counts = self.cluster.sum_integers("confusion", matrix.counts)
        self.cluster.agree_on_stop(self.local_stop, self.stop)
        return matrix

    def _report(self, record: EpochRecord, scores: Optional[Dict[str, float]]) -> None:
        host, epoch = self.role.host, record.epoch
        lines = [
            metrics.train_loss_line(host, epoch, record.train_loss),
            metrics.train_throughput_line(host, epoch, record.throughput),
        ]
        if scores is not None:
            lines += [metrics.validation_line(host, epoch, name, value) for name, value in scores.items()]
        lines.append(metrics.progress_line(host, epoch + 1, self.config.epochs))
        if not self.role.is_main:
            return  # one voice: the metric lines of a multi-host job come from algo-1 only
        # The metric lines go to stdout bare (no timestamp prefix), byte for byte as the built-in prints them.
        print("\n".join(lines), flush=True)

    # -- the end -------------------------------------------------------------------------------------------

    def _save(self, state: TrainingState, finished: bool) -> None:
        """The model directory and output/data (main worker only); when stopped early, a checkpoint first
        and no prediction plot (SageMaker's 120 s before SIGKILL are better spent on the model)."""
        if not self.role.is_main:
            return
        if not finished:
            self._checkpoint(state)
        best = self.best_params if self.best_params.exists() else None
        label_map = self.feed.data.train_label_map
        write_model(self.job, self.net, best, state.early_stopping, label_map, working_size(self.config))
        self._write_outputs(state.history, best if finished else None)

    def _write_outputs(self, history, plot_with: Optional[Path]) -> None:
        """output/data and its report.html; prediction examples too when given the parameters to plot with."""
        examples = None
        images, truths = self.feed.examples
        if self.validator is not None and plot_with is not None and images:
            self.validator.load_weights_file(plot_with)
            examples = outputs.Examples(images, truths, self.validator.predict(images))
        report = outputs.write_outputs(self.job.paths.output_data_dir, history, self.config, examples)
        log.info("Report: %s", report)

    def _result(self, state: TrainingState, completed: bool) -> TrainingResult:
        early = state.early_stopping
        return TrainingResult(
            completed=completed,
            history=tuple(EpochRecord.from_dict(row) for row in state.history),
            best_epoch=early.best_epoch,
            best_miou=early.best_miou if early.best_epoch is not None else None,
        )
