"""Satellite roads: DeepLabV3 on tiles kept in S3 as images/ and masks/ folders of 0/255 masks.

    segmaker prepare folders --images tiles/images --masks tiles/masks roads \\
        --class-names background,road --upload s3://my-bucket/roads
    python examples/satellite_roads_deeplab.py --image IMAGE_URI --data s3://my-bucket/roads --role ARN \\
        --output s3://my-bucket/roads-output
    # on this machine instead: --data roads --local

The 0/255 masks are read through {"map": {"0": 0, "1": 255}}, the label map `prepare` discovered and wrote
(255 is the road class here, not "ignore"). docs/RECIPES.md.
"""

import sys

from common import run_recipe

RECIPE = {"algorithm": "deeplab", "backbone": "resnet-101", "use_pretrained_model": "True", "epochs": "30",
          "crop_size": "480", "base_size": "512", "mini_batch_size": "8", "learning_rate": "0.001"}

if __name__ == "__main__":
    run_recipe(__doc__.splitlines()[0], RECIPE, "segmaker-roads-deeplab", sys.argv[1:])
