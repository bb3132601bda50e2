import logging
import random

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from segmaker.metrics import ConfusionMatrix
from segmaker.outputs import EpochRecord, History
from segmaker.training.checkpoints import CheckpointStore, TrainingState
from segmaker.training.early_stopping import EarlyStoppingState

HYPERPARAMETERS = {"num_classes": 3, "epochs": 4, "learning_rate": 0.1}


def tiny_net_and_trainer():
    net = gluon.nn.Dense(2, in_units=3)
    net.initialize(mx.init.Xavier())
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9})
    with autograd.record():
        loss = net(mx.nd.ones((4, 3))).sum()
    loss.backward()
    trainer.step(4)  # gives the momentum buffers a non-zero state worth restoring
    return net, trainer


def state(iterations, best=0.5):
    matrix = ConfusionMatrix(2)
    matrix.update(np.array([[0, 1], [1, 1]]), np.array([[0, 1], [0, 1]]))
    return TrainingState(
        completed_iterations=iterations,
        early_stopping=EarlyStoppingState(best_miou=best, best_epoch=1, epochs_without_gain=2, epochs_seen=3),
        history=History().add(EpochRecord.of_epoch(0, 1.25, 8.0, 0.01, 3.5, matrix), matrix),
        hyperparameters=HYPERPARAMETERS,
        data_seed=1234,
    )


def test_round_trip_restores_parameters_optimizer_and_state(tmp_path):
    net, trainer = tiny_net_and_trainer()
    best = tmp_path / "best.params"
    net.save_parameters(str(best))
    store = CheckpointStore(tmp_path / "ckpt", HYPERPARAMETERS)
    store.save(state(30), net, trainer, best)

    checkpoint = store.latest()
    assert checkpoint.state == state(30)
    restored, restored_trainer = tiny_net_and_trainer()
    restored.load_parameters(str(checkpoint.params_file))
    restored_trainer.load_states(str(checkpoint.trainer_file))
    np.testing.assert_array_equal(restored.weight.data().asnumpy(), net.weight.data().asnumpy())
    assert checkpoint.best_params_file.read_bytes() == best.read_bytes()
    momentum = restored_trainer._updaters[0].states[0].asnumpy()
    np.testing.assert_array_equal(momentum, trainer._updaters[0].states[0].asnumpy())


def test_keeps_the_newest_two_and_no_temporary_folders(tmp_path):
    net, trainer = tiny_net_and_trainer()
    store = CheckpointStore(tmp_path, HYPERPARAMETERS)
    for iterations in (5, 10, 15):
        store.save(state(iterations), net, trainer, None)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 2 and names[0].endswith("000000010") and names[1].endswith("000000015")
    assert store.latest().state.completed_iterations == 15


def test_truncated_newest_checkpoint_falls_back_to_the_previous(tmp_path):
    net, trainer = tiny_net_and_trainer()
    store = CheckpointStore(tmp_path, HYPERPARAMETERS)
    store.save(state(5), net, trainer, None)
    newest = store.save(state(10), net, trainer, None)
    params = newest / "net.params"
    params.write_bytes(params.read_bytes()[:-7])  # as a half-finished S3 download would leave it
    assert store.latest().state.completed_iterations == 5


def test_folder_without_state_file_does_not_count(tmp_path):
    net, trainer = tiny_net_and_trainer()
    store = CheckpointStore(tmp_path, HYPERPARAMETERS)
    newest = store.save(state(5), net, trainer, None)
    (newest / "state.json").unlink()
    assert store.latest() is None


def test_other_hyperparameters_start_fresh_and_leave_the_old_checkpoint(tmp_path, caplog):
    net, trainer = tiny_net_and_trainer()
    old = CheckpointStore(tmp_path, HYPERPARAMETERS).save(state(5), net, trainer, None)
    changed = dict(HYPERPARAMETERS, learning_rate=0.01)
    store = CheckpointStore(tmp_path, changed)
    with caplog.at_level(logging.WARNING):
        assert store.latest() is None
    assert "learning_rate: 0.1 -> 0.01" in caplog.text
    for iterations in (1, 2, 3):
        store.save(state(iterations), net, trainer, None)
    assert old.exists()


def test_missing_directory_means_no_checkpoint(tmp_path):
    assert CheckpointStore(tmp_path / "absent", HYPERPARAMETERS).latest() is None


def test_the_data_seed_is_the_hyperparameter_else_the_checkpoint_s_else_a_logged_fresh_one(tmp_path, caplog):
    from segmaker.training.loop import data_seed

    net, trainer = tiny_net_and_trainer()
    store = CheckpointStore(tmp_path, HYPERPARAMETERS)
    store.save(state(30), net, trainer, None)
    assert data_seed(5, store.latest()) == 5
    assert data_seed(None, store.latest()) == 1234  # a resumed run keeps the order it started with
    with caplog.at_level(logging.INFO):
        drawn = data_seed(None, None)
    assert f"data seed {drawn} drawn" in caplog.text
    assert len({data_seed(None, None) for _ in range(3)} | {drawn}) > 1


def test_a_state_is_checkpointed_once_and_restored_with_the_generator_states(tmp_path):
    """A stop right after an epoch's checkpoint must not write the same checkpoint again (it costs the
    time SageMaker gives a stop); a resumed run draws from Python's and numpy's generators what it would
    have drawn."""
    from segmaker.training.checkpoints import Checkpointing

    net, trainer = tiny_net_and_trainer()
    store = CheckpointStore(tmp_path, HYPERPARAMETERS)
    checkpointing = Checkpointing(store, True, net, trainer, tmp_path / "best.params")
    random.seed(1)
    np.random.seed(2)
    checkpointing.save(state(4))
    expected = (random.random(), np.random.rand())
    first = store.latest().directory
    first_written = (first / "state.json").stat().st_mtime_ns
    checkpointing.save(state(4))
    assert (first / "state.json").stat().st_mtime_ns == first_written
    assert [p.name for p in tmp_path.iterdir()] == [first.name]

    random.seed(99)
    np.random.seed(99)
    restored = Checkpointing(store, True, *tiny_net_and_trainer(), tmp_path / "best.params")
    assert restored.restore(store.latest(), [mx.cpu()]) == state(4)
    assert (random.random(), np.random.rand()) == expected


def test_only_the_main_worker_writes_checkpoints(tmp_path):
    from segmaker.training.checkpoints import Checkpointing

    net, trainer = tiny_net_and_trainer()
    store = CheckpointStore(tmp_path, HYPERPARAMETERS)
    Checkpointing(store, False, net, trainer, tmp_path / "best.params").save(state(4))
    assert list(tmp_path.iterdir()) == []


def test_mxnet_draws_depend_on_the_iteration_not_on_what_ran_before():
    """Dropout draws of step i are the same in an uninterrupted and in a resumed run."""
    from segmaker.training.rng import seeded_steps

    def draws(first, count):
        return [mx.nd.random.uniform(shape=(3,)).asnumpy() for _ in seeded_steps(range(count), 5, first)]

    mx.random.seed(0)
    uninterrupted = draws(0, 4)
    mx.random.seed(123)  # whatever state a new process starts in
    resumed = draws(2, 2)
    np.testing.assert_array_equal(np.stack(resumed), np.stack(uninterrupted[2:]))
    assert not np.array_equal(uninterrupted[0], uninterrupted[1])
