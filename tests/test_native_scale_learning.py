"""Native scale end to end on large images with tiny objects: training crops at the images' own resolution
and tiled inference find objects that the whole-image path (resize to base_size) cannot see at all.

Both runs use the same network, data, seed and number of steps; only `image_scale` differs (the training
transform and the inference engine). What is under test is what each scale shows the network and how
inference reads the image back, which does not depend on the network: a three-layer fully convolutional
net stands in for ResNet-50 (which takes seconds per step on a busy CPU), with this test's own step loop.
"""

import time

import mxnet as mx
import numpy as np
import pytest

from segmaker.metrics import ConfusionMatrix
from segmaker.models import SegmentationInference
from segmaker.transforms import IGNORE, train_transform

pytestmark = pytest.mark.slow

IMAGE_SIZE = 320  # "large": base_size 40 shrinks it 8 x
BASE_SIZE = CROP_SIZE = 40
OBJECT = 4  # 4 x 4 squares: half a pixel at base_size
STEPS = 150
BATCH = 8


class TinySegmenter(mx.gluon.HybridBlock):
    """Convolutions at half resolution, then bilinear upsampling to the input size (as GluonCV's heads do)."""

    def __init__(self, classes: int, size: int):
        super().__init__()
        self.size = size
        with self.name_scope():
            self.body = mx.gluon.nn.HybridSequential()
            self.body.add(mx.gluon.nn.Conv2D(16, 3, strides=2, padding=1, activation="relu"),
                          mx.gluon.nn.Conv2D(16, 3, padding=1, activation="relu"),
                          mx.gluon.nn.Conv2D(classes, 1))

    def hybrid_forward(self, F, x):
        return F.contrib.BilinearResize2D(self.body(x), height=self.size, width=self.size)


def tiny_object_image(rng: np.random.Generator):
    """Grey noise with 4 x 4 red squares (class 1) on a grid with random offsets."""
    image = rng.normal(120, 12, (IMAGE_SIZE, IMAGE_SIZE, 3)).clip(0, 255).astype(np.uint8)
    mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    for top in range(4, IMAGE_SIZE - 2 * OBJECT, 20):
        for left in range(4, IMAGE_SIZE - 2 * OBJECT, 20):
            y, x = top + int(rng.integers(0, 6)), left + int(rng.integers(0, 6))
            image[y: y + OBJECT, x: x + OBJECT] = (220, 30, 30)
            mask[y: y + OBJECT, x: x + OBJECT] = 1
    return image, mask


def train_and_validate(image_scale: str, train_set, validation_set) -> float:
    mx.random.seed(3)
    net = TinySegmenter(2, CROP_SIZE)
    net.initialize(mx.init.Xavier())
    trainer = mx.gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 0.01})
    loss_function = mx.gluon.loss.SoftmaxCrossEntropyLoss(axis=1, sparse_label=True)
    transform = train_transform(BASE_SIZE, CROP_SIZE, image_scale)
    rng = np.random.default_rng(5)
    for _ in range(STEPS):
        picks = rng.integers(0, len(train_set), BATCH)
        pairs = [transform(*train_set[i], rng) for i in picks]
        images = mx.nd.array(np.stack([image for image, _ in pairs]))
        masks = np.stack([mask for _, mask in pairs]).astype(np.float32)
        weights = mx.nd.array((masks != IGNORE).astype(np.float32)[:, np.newaxis])
        with mx.autograd.record():
            loss = loss_function(net(images), mx.nd.array(np.where(masks == IGNORE, 0, masks)), weights)
        loss.backward()
        trainer.step(BATCH)
    engine = SegmentationInference(net, CROP_SIZE, [mx.cpu()], image_scale=image_scale)
    matrix = ConfusionMatrix(2)
    for image, mask in validation_set:
        matrix.update(engine.predict_masks([image])[0], mask)
    return matrix.mean_iou()


def test_native_scale_finds_tiny_objects_the_resize_path_loses():
    rng = np.random.default_rng(0)
    train_set = [tiny_object_image(rng) for _ in range(6)]
    validation_set = [tiny_object_image(rng) for _ in range(2)]
    start = time.time()
    native = train_and_validate("native", train_set, validation_set)
    resized = train_and_validate("base_size", train_set, validation_set)
    print(f"mIOU native {native:.3f}, base_size {resized:.3f} ({time.time() - start:.0f} s)")
    assert native > resized + 0.2, (native, resized)
