"""Oxford-IIIT Pet: an FCN endpoint that segments pets, with the job's IoU and Dice per class.

    segmaker prepare oxford-pets ~/oxford-iiit-pet pets --upload s3://my-bucket/pets
    python examples/oxford_pets_fcn.py --image IMAGE_URI --data s3://my-bucket/pets --role ROLE_ARN \\
        --output s3://my-bucket/pets-output
    # on this machine instead (SageMaker local mode, Docker): --data pets --local

The trimaps train as they are (border = ignore, through the label map `prepare` wrote). docs/RECIPES.md.
"""

import sys

from common import run_recipe

RECIPE = {"algorithm": "fcn", "backbone": "resnet-50", "use_pretrained_model": "True", "epochs": "20",
          "crop_size": "320", "base_size": "400", "mini_batch_size": "8", "learning_rate": "0.001",
          "early_stopping": "True"}

if __name__ == "__main__":
    run_recipe(__doc__.splitlines()[0], RECIPE, "segmaker-pets-fcn", sys.argv[1:])
