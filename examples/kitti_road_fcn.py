"""KITTI road: a binary FCN (road, not road) on the colour ground truth, black "don't care" ignored.

    segmaker prepare kitti-road ~/data_road kitti --upload s3://my-bucket/kitti
    python examples/kitti_road_fcn.py --image IMAGE_URI --data s3://my-bucket/kitti --role ROLE_ARN \\
        --output s3://my-bucket/kitti-output
    # on this machine instead: --data kitti --local

KITTI's pictures are wide (1242 x 375): base_size 640 keeps the road's width at training scale, and
validation and the endpoint see each picture whole at that working size. docs/RECIPES.md.
"""

import sys

from common import run_recipe

RECIPE = {"algorithm": "fcn", "backbone": "resnet-50", "use_pretrained_model": "True", "epochs": "30",
          "crop_size": "320", "base_size": "640", "mini_batch_size": "8", "learning_rate": "0.001"}

if __name__ == "__main__":
    run_recipe(__doc__.splitlines()[0], RECIPE, "segmaker-kitti-fcn", sys.argv[1:])
