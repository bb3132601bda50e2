"""Run by tests/test_syncbn_cpu.py in a fresh process: segmaker's FCN (ResNet-50, random weights) with
`syncbn` over 2 CPU contexts, through the real training step (train_one_epoch).

`compare`: one SGD step (learning rate 1, no momentum or weight decay, so update = -gradient / batch) from
the same weights on the same global batch of 4 images with
  - the 2-device training network with syncbn (build_training_network: SyncBatchNorm, ndev 2),
  - the 1-device training network (plain BatchNorm over the whole batch),
  - the 2-device training network without syncbn (plain BatchNorm over each device's 2 images),
and, as reference, the gradient of the same loss through the 1-device network in float64 (SyncBatchNorm
exists in float32 only; BatchNorm over the whole batch in float64 is what it should compute). Dropout is
switched off here: the devices draw different masks than one device would. Prints
{variant: relative L2 distance of its gradient (all trained parameters together) from the float64 reference,
 and syncbn_2_devices_from_one_device: that of the 2-device syncbn step from the 1-device step}.

`steps N COPIES`: N steps of the 2-device syncbn network, Dropout on, with MXNet's pool of CPU temporary
workspaces cut to COPIES, so that its round-robin counter passes over every copy within the run (it
advances with every imperative operator; with the full pool it would take many more steps). Prints
{"steps": steps done}; a deadlock is the caller's timeout.
"""

import json
import sys
import tempfile
import threading
from pathlib import Path

from segmaker import environment

DEVICES = 2
BATCH = 4
SIZE = 32
CLASSES = 3

# As `segmaker train` does, before MXNet loads.
SETTINGS = environment.mxnet_cpu_syncbn_environment(DEVICES)
if sys.argv[1] == "steps":
    SETTINGS["MXNET_CPU_TEMP_COPY"] = sys.argv[3]
environment.set_process_environment(SETTINGS)

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402
from mxnet import autograd, gluon  # noqa: E402

from segmaker import models  # noqa: E402
from segmaker.config import parse_hyperparameters  # noqa: E402
from segmaker.training.epoch import EpochPlan, train_one_epoch  # noqa: E402
from segmaker.training.job import TrainingJob  # noqa: E402
from segmaker.training.loss import SegmentationLoss  # noqa: E402
from segmaker.training.network import build_training_network  # noqa: E402
from segmaker.training.schedule import LearningRateSchedule  # noqa: E402


def training_network(devices, syncbn, weights, dropout):
    config = parse_hyperparameters({
        "num_classes": CLASSES, "algorithm": "fcn", "backbone": "resnet50", "crop_size": SIZE,
        "base_size": SIZE, "mini_batch_size": BATCH, "syncbn": syncbn, "use_pretrained_model": False,
    })
    with tempfile.TemporaryDirectory() as base:
        job = TrainingJob(paths=environment.Paths(Path(base)), config=config, channels={},
                          resources=environment.ResourceConfig(), checkpoint_dir=None,
                          mxnet_home=Path(base), cpu_devices=devices)
        net = build_training_network(job, [mx.cpu(i) for i in range(devices)])
    if weights is not None:
        models.load_parameters(net, weights)
    if not dropout:
        for block in _blocks(net):
            if isinstance(block, gluon.nn.Dropout):
                block._rate = 0.0  # read when the graph is built, at the first forward
    return net


def _blocks(block):
    yield block
    for child in block._children.values():
        yield from _blocks(child)


def batches(count, seed=0):
    rng = np.random.RandomState(seed)
    for _ in range(count):
        masks = rng.randint(0, CLASSES, size=(BATCH, SIZE, SIZE)).astype(np.uint8)
        masks[:, :4] = 255  # some ignored pixels
        yield rng.randn(BATCH, 3, SIZE, SIZE).astype(np.float32), masks


def run_steps(net, devices, steps):
    contexts = [mx.cpu(i) for i in range(devices)]
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 1.0, "momentum": 0.0, "wd": 0.0})
    schedule = LearningRateSchedule(1.0, "step", total_iterations=steps)  # no boundaries: constant
    plan = EpochPlan(0, 0, steps, steps)
    return train_one_epoch(net, trainer, SegmentationLoss(CLASSES), batches(steps), contexts, schedule, plan,
                           threading.Event())


def trained_parameters(net):
    return {name: p for name, p in net._collect_params_with_prefix().items() if p.grad_req != "null"}


def values(params):
    return {name: p.data(p.list_ctx()[0]).asnumpy().astype(np.float64) for name, p in params.items()}


def step_gradient(devices, syncbn, weights):
    """-update x batch / (learning rate x the parameter's lr_mult: GluonCV's heads learn 10x faster) of one
    step through train_one_epoch: the gradient it applied."""
    net = training_network(devices, syncbn, weights, dropout=False)
    params = trained_parameters(net)
    before = values(params)
    run_steps(net, devices, 1)
    after = values(params)
    return {name: (before[name] - after[name]) * BATCH / params[name].lr_mult for name in params}


def float64_gradient(weights):
    net = training_network(1, False, weights, dropout=False)
    net.cast("float64")
    images, masks = next(batches(1))
    loss = SegmentationLoss(CLASSES)
    with autograd.record():
        output = net(mx.nd.array(images, dtype="float64"))
        step = loss([output], [mx.nd.array(masks.astype(np.float32))], loss.class_counts(masks))
    autograd.backward(step.objectives)
    return {name: p.grad().asnumpy() for name, p in trained_parameters(net).items()}


def relative_distance(gradient, reference):
    difference = sum(float(((gradient[n] - reference[n]) ** 2).sum()) for n in reference)
    scale = sum(float((reference[n] ** 2).sum()) for n in reference)
    return (difference / scale) ** 0.5


def compare():
    with tempfile.TemporaryDirectory() as folder:
        weights = Path(folder) / "start.params"
        mx.random.seed(3)
        training_network(1, False, None, dropout=False).save_parameters(str(weights))
        reference = float64_gradient(weights)
        syncbn, one_device = step_gradient(2, True, weights), step_gradient(1, False, weights)
        report = {
            "syncbn_2_devices": relative_distance(syncbn, reference),
            "one_device": relative_distance(one_device, reference),
            "batchnorm_per_device_2_devices": relative_distance(step_gradient(2, False, weights), reference),
            "syncbn_2_devices_from_one_device": relative_distance(syncbn, one_device),
        }
    print(json.dumps(report))


def steps(count):
    # As build_training_network builds it (which refuses the shrunk pool).
    net = models.build_network("fcn", "resnet50", CLASSES, size=SIZE, syncbn_devices=DEVICES)
    net.collect_params().reset_ctx([mx.cpu(i) for i in range(DEVICES)])
    net.hybridize(static_alloc=True, static_shape=True)
    stats = run_steps(net, DEVICES, count)
    print(json.dumps({"steps": stats.iterations, "loss": stats.mean_loss}))


if __name__ == "__main__":
    if sys.argv[1] == "compare":
        compare()
    else:
        steps(int(sys.argv[2]))
