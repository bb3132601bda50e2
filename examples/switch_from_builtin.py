"""Switching a built-in Semantic Segmentation job to segmaker: the same channels, hyperparameters and metric
names; only `image_uri` changes.

    python examples/switch_from_builtin.py --image IMAGE_URI --data s3://my-bucket/voc --role ROLE_ARN \\
        --output s3://my-bucket/voc-output                 # segmaker
    python examples/switch_from_builtin.py --builtin ...   # the same job on the built-in algorithm
    # on this machine (segmaker only, the built-in image is not public): --data FOLDER --local

--data holds the built-in's channels: train/, train_annotation/, validation/, validation_annotation/ and
optionally label_map/ (train_label_map.json). docs/RECIPES.md.
"""

import sys

from common import (
    channel_uris,
    estimator,
    finish,
    job_outputs,
    parser,
    predict_once,
    query_image,
    report_scores,
    with_overrides,
)

# A built-in job's hyperparameters, exactly as its users write them (the built-in's names and value strings).
BUILTIN_HYPERPARAMETERS = {
    "backbone": "resnet-50", "algorithm": "fcn", "use_pretrained_model": "True", "num_classes": "21",
    "crop_size": "240", "epochs": "10", "learning_rate": "0.0001", "optimizer": "rmsprop",
    "lr_scheduler": "poly", "mini_batch_size": "16", "validation_mini_batch_size": "16",
    "early_stopping": "True", "early_stopping_patience": "2", "early_stopping_min_epochs": "10",
}
CHANNELS = ["train", "train_annotation", "validation", "validation_annotation", "label_map"]


def main(argv) -> None:
    options = parser(__doc__.splitlines()[0])
    options.add_argument("--builtin", action="store_true", help="run on the built-in algorithm's image")
    options.add_argument("--region", default="us-east-1", help="--builtin: the region of its image")
    args = options.parse_args(argv)
    if args.builtin:
        from sagemaker import image_uris

        args.image = image_uris.retrieve("semantic-segmentation", args.region)  # the only line that differs
    trained = estimator(args, with_overrides(BUILTIN_HYPERPARAMETERS, args), "segmaker-switch")
    trained.fit(channel_uris(args, CHANNELS), wait=True)
    summary = report_scores(job_outputs(trained)) if not args.builtin else {}
    summary["model_data"] = trained.model_data
    summary["prediction"] = predict_once(trained, args, query_image(args))
    finish(summary)


if __name__ == "__main__":
    main(sys.argv[1:])
