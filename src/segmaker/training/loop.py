"""The training job from start to end: set-up, resume, epochs, validation, checkpoints, the model.

`train(job, stop_requested)` is all the CLI calls. A run is a `_Run` object (no module state): it holds
what set-up built and advances a frozen `TrainingState` epoch by epoch; that state is exactly what a
checkpoint stores, so a resumed run continues as if it had never stopped.
"""

import logging
import tempfile
import threading
import time
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np

from segmaker import artifacts, metrics, outputs
from segmaker.data.order import DataOrder, check_divisible, draw_seed
from segmaker.gpus import mxnet_gpu_count
from segmaker.outputs import EpochRecord, History
from segmaker.quantize import quantize_after_training
from segmaker.training import rng
from segmaker.training.checkpoints import Checkpoint, Checkpointing, CheckpointStore, TrainingState
from segmaker.training.class_weights import check_training_classes, resolve_class_weights
from segmaker.training.devices import (
    check_precision,
    resolve_kvstore,
    training_contexts,
    worker_role,
)
from segmaker.training.distributed import Cluster
from segmaker.training.early_stopping import EarlyStoppingRule, EarlyStoppingState
from segmaker.training.epoch import EpochPlan, EpochStats, train_one_epoch
from segmaker.training.feed import (
    DataFeed,
    TrainingData,
    find_training_data,
    is_sharded_by_s3_key,
    iterations_per_epoch,
)
from segmaker.training.job import TrainingJob, TrainingResult
from segmaker.training.loss import SegmentationLoss
from segmaker.training.network import build_training_network, working_size
from segmaker.training.optimizer import make_trainer
from segmaker.training.reporting import Reporter
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
    gpus = mxnet_gpu_count() if job.num_gpus is None else job.num_gpus
    contexts = training_contexts(gpus, job.cpu_devices)
    check_precision(config.precision_dtype, contexts)
    store = CheckpointStore(job.checkpoint_dir, config.to_json_dict()) if job.checkpoint_dir else None
    checkpoint = store.latest() if store else None
    cluster.check_same_checkpoint(checkpoint.state.completed_iterations if checkpoint else None)
    # Every host must draw its batches from the same order: the main host's seed wins.
    seed = cluster.broadcast_integer("data-seed", data_seed(config.seed, checkpoint))
    order = _data_order(job, cluster, seed)
    rng.seed_all(order.seed)
    data = find_training_data(job, order.seed, role.rank, role.world_size)
    found = data.train.size
    if found is not None and order.world_size < role.world_size:
        found = int(cluster.sum_integers("train-samples", np.array([found]))[0])
    per_epoch = iterations_per_epoch(config.num_training_samples, found, config.mini_batch_size)
    _log_plan(config, contexts, data, per_epoch)
    net = build_training_network(job, contexts)
    with DataFeed(config, data, order, keep_examples=PLOTTED_EXAMPLES) as feed:
        with tempfile.TemporaryDirectory(prefix="segmaker-") as scratch:
            run = _Run(job, cluster, contexts, net, feed, per_epoch, Path(scratch), store)
            return run.run(stop_requested, checkpoint)


def _data_order(job: TrainingJob, cluster: Cluster, seed: int) -> DataOrder:
    """Each host's slice of every global batch. A train channel S3 split among the hosts
    (ShardedByS3Key) is each host's whole share: the host then draws its slice of each global batch from
    its own files, and an epoch has as many iterations as the hosts' files together make global batches."""
    batch, role = job.config.mini_batch_size, cluster.role
    if role.world_size > 1 and is_sharded_by_s3_key(job, "train"):
        check_divisible(batch, role.world_size)
        return DataOrder(seed, batch // role.world_size)
    return DataOrder(seed, batch, role.rank, role.world_size)


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
    """One training run: `run()` is the recipe, each step below it one small piece."""

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
            hosts=self.role.world_size,
        )
        self.schedule = schedule_for(config, per_epoch)
        self.rule = EarlyStoppingRule.from_config(config)
        self.best_params = scratch / "best.params"
        validated = scratch / "validated.params"
        self.validator = Validator(config, contexts, validated) if feed.data.has_validation else None
        self.checkpoints = Checkpointing(store, self.role.is_main, net, self.trainer, self.best_params)
        self.reporter = Reporter(config, self.role, job.paths)

    def run(self, stop_requested: threading.Event, checkpoint: Optional[Checkpoint]) -> TrainingResult:
        """`stop_requested` is this host's SIGTERM flag; on several hosts the loop acts on `self.stop`, set
        on every host at the same iteration when any host's flag is (see Cluster.agreed_batches)."""
        self.local_stop = stop_requested
        self.stop = stop = threading.Event() if self.cluster.is_distributed else stop_requested
        state = self._start(checkpoint)
        self.cluster.broadcast_parameters(self.net)
        while not self._done(state):
            epoch = len(state.history)
            state = self._train_rest_of_epoch(epoch, state, stop)
            if stop.is_set():
                return self._stop(state)
            if epoch == 0:
                check_training_classes(state.partial_epoch.class_pixels, self.config.num_classes)
            matrix = self._validate(epoch)
            if stop.is_set():
                return self._stop(state)
            state = self._end_epoch(epoch, state, matrix)
            self.checkpoints.save(state)
        return self._finish(state)

    def _start(self, checkpoint: Optional[Checkpoint]) -> TrainingState:
        if checkpoint is not None:
            return self.checkpoints.restore(checkpoint, self.contexts)
        return TrainingState(
            0, EarlyStoppingState(), History(), self.config.to_json_dict(), data_seed=self.feed.order.seed
        )

    def _done(self, state: TrainingState) -> bool:
        if state.early_stopping.should_stop(self.rule):
            log.info("Early stopping after epoch %d", len(state.history) - 1)
            return True
        return len(state.history) >= self.config.epochs

    # -- one epoch -----------------------------------------------------------------------------------------

    def _train_rest_of_epoch(self, epoch: int, state: TrainingState, stop: threading.Event) -> TrainingState:
        """Train the global batches `epoch` still lacks (all of them, unless it was interrupted before)."""
        remaining = (epoch + 1) * self.per_epoch - state.completed_iterations
        if remaining <= 0 or stop.is_set():
            return state
        plan = EpochPlan(epoch, state.completed_iterations, remaining, self.per_epoch)
        first = state.completed_iterations - epoch * self.per_epoch
        with closing(self.feed.train_batches(epoch, first, remaining)) as batches:
            batches = self.cluster.agreed_batches(batches, self.local_stop, self.stop)
            first_iteration = state.completed_iterations
            steps = rng.seeded_steps(batches, self.feed.order.seed, first_iteration, self.role.rank)
            stats = train_one_epoch(
                self.net,
                self.trainer,
                self.loss,
                steps,
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
        on classes without pixels decide alike everywhere), and the loss as the sum of the hosts' shares
        of each step's global loss (training/loss.py StepLoss.read): the loss of the global batch."""
        if not self.cluster.is_distributed:
            return stats
        loss_sum, images = self.cluster.sum_floats("epoch-loss", np.array([stats.loss_sum, stats.images]))
        pixels = stats.class_pixels
        if pixels:  # empty on every host alike: the hosts ran the same iterations
            pixels = tuple(self.cluster.sum_integers("class-pixels", np.array(pixels)).tolist())
        return replace(
            stats,
            loss_sum=float(loss_sum),
            images=int(round(images)),
            class_pixels=pixels,
        )

    def _validate(self, epoch: int) -> Optional[metrics.ConfusionMatrix]:
        """The epoch's confusion matrix (None without validation data, or when a stop cut it short).

        A stop request interrupts validation between batches: on several hosts every host's, at the same
        point (they agree on it after each batch), and none sums its counts."""
        if self.validator is None:
            return None
        log.info("Validating epoch %d", epoch)
        started = time.monotonic()
        with closing(self.feed.validation_batches()) as batches:
            batches = self.cluster.agreed_validation(batches, self.local_stop, self.stop)
            matrix = self.validator.validate(self.net, batches, self.stop)
        log.info("Epoch %d: validation %.1f s", epoch, time.monotonic() - started)
        if matrix is None:
            return None
        # Each host validated its share: the sum of the counts is the exact matrix of the whole set, known to
        # every host, so early stopping decides alike everywhere. A stop asked meanwhile is agreed here.
        matrix.counts = self.cluster.sum_integers("confusion", matrix.counts)
        self.cluster.agree_on_stop(self.local_stop, self.stop)
        return matrix

    def _end_epoch(
        self, epoch: int, state: TrainingState, matrix: Optional[metrics.ConfusionMatrix]
    ) -> TrainingState:
        """Early stopping and the best weights updated, the epoch reported and added to the history."""
        stats = state.partial_epoch
        early_stopping = state.early_stopping
        if matrix is not None:
            early_stopping = early_stopping.update(epoch, matrix.scores()["mIOU"], self.rule)
        best = matrix is not None and early_stopping.is_best(epoch)
        if best:
            self.validator.keep_snapshot_as(self.best_params)
        record = EpochRecord.of_epoch(
            epoch, stats.mean_loss, stats.throughput, stats.last_lr, stats.seconds, matrix
        )
        state = replace(
            state,
            early_stopping=early_stopping,
            history=state.history.add(record, matrix if best else None),
            partial_epoch=EpochStats(),
        )
        self.reporter.epoch(record, matrix, state.history)
        return state

    # -- the end -------------------------------------------------------------------------------------------

    def _stop(self, state: TrainingState) -> TrainingResult:
        """Within SageMaker's 120 s: one checkpoint (none if this state has one), the model without its
        exports (no network built: `segmaker export` adds them), output/data without the prediction plot."""
        self.checkpoints.save(state)
        self._write_model(state, exports=False)
        self.reporter.final(state.history, examples=None)
        return _result(state, completed=False)

    def _finish(self, state: TrainingState) -> TrainingResult:
        self._write_model(state, exports=True)
        self.reporter.final(state.history, self._prediction_examples())
        return _result(state, completed=True)

    def _write_model(self, state: TrainingState, exports: bool) -> None:
        """The model directory (main worker): best parameters (the final ones when nothing was validated)
        and final ones; the symbol and ONNX exports and the int8 model unless `exports` is False (a stop: no
        time to build networks)."""
        if not self.role.is_main:
            return
        model_dir = self.job.paths.model_dir
        written = artifacts.write_model_dir(
            model_dir,
            self._manifest(state.early_stopping),
            final_net=self.net,
            best=self.best_params if self.best_params.exists() else None,
            hyperparameters=self.config.to_json_dict(),
            exports=exports,
        )
        if not exports:
            log.info("Model written to %s without its symbol and ONNX exports (`segmaker export %s` adds"
                     " them)", model_dir, model_dir)
            return
        log.info("Model written to %s", model_dir)
        if written.onnx_file is not None:
            quantize_after_training(self.job.paths, self.job.channels, written.directory, self.local_stop)

    def _manifest(self, early_stopping: EarlyStoppingState) -> artifacts.ModelManifest:
        config, validated = self.config, early_stopping.best_epoch is not None
        return artifacts.ModelManifest(
            algorithm=config.algorithm,
            backbone=config.backbone,
            num_classes=config.num_classes,
            working_size=working_size(config),
            class_names=config.class_names,
            label_map=self.feed.data.train_label_map.to_json(),
            best_epoch=early_stopping.best_epoch,
            best_miou=early_stopping.best_miou if validated else None,
            image_scale=config.image_scale,
        )

    def _prediction_examples(self) -> Optional[outputs.Examples]:
        """A few validation images predicted with the best weights, for the plot (main worker only)."""
        images, truths = self.feed.examples
        if not self.role.is_main or self.validator is None or not images or not self.best_params.exists():
            return None
        self.validator.load_weights_file(self.best_params)
        return outputs.Examples(images, truths, self.validator.predict(images))


def _result(state: TrainingState, completed: bool) -> TrainingResult:
    early = state.early_stopping
    return TrainingResult(
        completed=completed,
        history=state.history.records,
        best_epoch=early.best_epoch,
        best_miou=early.best_miou if early.best_epoch is not None else None,
    )
