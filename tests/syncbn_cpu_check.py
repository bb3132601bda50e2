"""Run by tests/test_syncbn_cpu.py in a fresh process (MXNet reads its engine settings when it loads):
gradients of a small conv + SyncBatchNorm network on 2 CPU contexts and of the same network with plain
BatchNorm on 1 context, from the same weights and batch. Prints one JSON line:
{tensor name: [max |difference|, max |gradient on 1 device|]}."""

import json
import sys

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon


def make_network(contexts, hybridize):
    mx.random.seed(3)
    if len(contexts) > 1:

        def norm(channels):
            return mx.gluon.contrib.nn.SyncBatchNorm(in_channels=channels, num_devices=len(contexts))
    else:

        def norm(channels):
            return gluon.nn.BatchNorm(in_channels=channels)

    net = gluon.nn.HybridSequential()
    net.add(
        gluon.nn.Conv2D(4, 3, in_channels=3, use_bias=False),
        norm(4),
        gluon.nn.Activation("relu"),
        gluon.nn.Conv2D(2, 1, in_channels=4, use_bias=False),
        norm(2),
    )
    net.initialize(mx.init.Normal(0.5), ctx=contexts)
    if hybridize:
        net.hybridize(static_alloc=True, static_shape=True)
    return net


def gradients(contexts, hybridize):
    """Summed over devices (what the kvstore reduces), by position in the network."""
    rng = np.random.RandomState(0)
    images, weights = mx.nd.array(rng.randn(4, 3, 8, 8)), mx.nd.array(rng.randn(4, 2, 6, 6))
    net = make_network(contexts, hybridize)
    parts = zip(gluon.utils.split_and_load(images, contexts), gluon.utils.split_and_load(weights, contexts))
    with autograd.record():
        # A weighted sum of squares: the gradient reaching each BatchNorm varies per pixel.
        losses = [(net(x) ** 2 * w).sum() for x, w in parts]
    autograd.backward(losses)
    return [
        sum(g.asnumpy() for g in p.list_grad()) for p in net.collect_params().values() if p.grad_req != "null"
    ]


def main():
    hybridize = sys.argv[1] == "hybridized"
    one = gradients([mx.cpu(0)], hybridize)
    two = gradients([mx.cpu(0), mx.cpu(1)], hybridize)
    report = {
        str(i): [float(np.abs(a - b).max()), float(np.abs(a).max())] for i, (a, b) in enumerate(zip(one, two))
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
