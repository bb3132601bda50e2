"""What the recipes' SDK scripts share: the command line, the session (SageMaker or local mode), the
estimator, reading a finished job's metrics and report, and one prediction from an endpoint.

Runs in the SageMaker Python SDK's environment (SDK 2.x, numpy; no mxnet, no segmaker): `make sdk-env`.
With `--local`, training and the endpoint run in Docker on this machine through SageMaker local mode (File
mode; channels may be file:// URIs as `segmaker prepare` prints them); no AWS call is made.
"""

import argparse
import io
import json
import tarfile
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from sagemaker.deserializers import BytesDeserializer
from sagemaker.estimator import Estimator
from sagemaker.serializers import IdentitySerializer

# segmaker.metrics.METRIC_DEFINITIONS, pasted: the client environment does not install segmaker.
NUMBER = r"([0-9.eE+-]+|nan|inf)"
METRIC_DEFINITIONS = [
    {"Name": "train:loss", "Regex": rf"#quality_metric\. host: \S+, epoch: \d+, train loss: {NUMBER} \."},
    {"Name": "validation:mIOU",
     "Regex": rf"#quality_metric\. host: \S+, epoch: \d+, validation mIOU: {NUMBER} \."},
    {"Name": "validation:dice",
     "Regex": rf"#quality_metric\. host: \S+, epoch: \d+, validation dice: {NUMBER} \."},
    {"Name": "validation:pixel_accuracy",
     "Regex": rf"#quality_metric\. host: \S+, epoch: \d+, validation pixel_accuracy: {NUMBER} \."},
]
LOCAL_ROLE = "arn:aws:iam::111111111111:role/SageMakerRole"  # local mode checks only the ARN's shape


def parser(description: str) -> argparse.ArgumentParser:
    """The options every recipe script takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--image", required=True, help="segmaker image URI (build_and_push.sh prints it)")
    parser.add_argument("--data", required=True,
                        help="the channels `segmaker prepare` wrote: s3://bucket/prefix or a local folder")
    parser.add_argument("--role", default=LOCAL_ROLE, help="SageMaker execution role ARN")
    parser.add_argument("--output", help="s3:// (or with --local, a folder) for the model and outputs")
    parser.add_argument("--instance-type", default="ml.p3.2xlarge")
    parser.add_argument("--endpoint-instance-type", default="ml.g4dn.xlarge")
    parser.add_argument("--local", action="store_true", help="SageMaker local mode: Docker on this machine")
    parser.add_argument("--work", default="/tmp/segmaker-local", help="--local: scratch folder for Docker")
    parser.add_argument("--port", type=int, default=8080, help="--local: the endpoint's port")
    parser.add_argument("--hyperparameter", "-H", action="append", default=[], metavar="KEY=VALUE",
                        help="override or add a hyperparameter (repeatable), e.g. -H epochs=2")
    parser.add_argument("--env", "-E", action="append", default=[], metavar="KEY=VALUE",
                        help="environment variable of the training container (repeatable), e.g. "
                             "-E SEGMAKER_QUANTIZE=off")
    parser.add_argument("--no-endpoint", action="store_true", help="train only")
    parser.add_argument("--query-image", help="picture to send to the endpoint (default: the first "
                        "validation image of a local --data folder)")
    return parser


def session(args: argparse.Namespace):
    if not args.local:
        import sagemaker

        return sagemaker.Session()
    from sagemaker.local import LocalSession

    local = LocalSession()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    local.config = {"local": {"local_code": True, "container_root": args.work, "serving_port": args.port}}
    return local


def channel_uris(args: argparse.Namespace, channels: List[str]) -> Dict[str, str]:
    """{channel: URI} under --data: s3:// as given, a local folder as file:// (local mode only)."""
    if args.data.startswith("s3://"):
        return {channel: f"{args.data.rstrip('/')}/{channel}" for channel in channels}
    root = Path(args.data).resolve()
    return {channel: (root / channel).as_uri() for channel in channels if (root / channel).is_dir()}


def prepared_hyperparameters(args: argparse.Namespace) -> Dict[str, str]:
    """num_classes and class_names from the hyperparameters.json `segmaker prepare` wrote (local --data)."""
    if args.data.startswith("s3://"):
        from sagemaker.s3 import S3Downloader

        return json.loads(S3Downloader.read_file(f"{args.data.rstrip('/')}/hyperparameters.json"))
    return json.loads((Path(args.data) / "hyperparameters.json").read_text())


def with_overrides(hyperparameters: Dict[str, object], args: argparse.Namespace) -> Dict[str, object]:
    return dict(hyperparameters, **key_values(args.hyperparameter))


def key_values(items: List[str]) -> Dict[str, str]:
    pairs = (item.partition("=") for item in items)
    return {key.strip(): value.strip() for key, _, value in pairs}


def estimator(args: argparse.Namespace, hyperparameters: Dict[str, object], base_job_name: str
              ) -> Estimator:
    output = args.output or (f"file://{Path(args.work).resolve() / 'output'}" if args.local else None)
    if args.local and output and not output.startswith("file://"):
        output = Path(output).resolve().as_uri()
    return Estimator(
        image_uri=args.image,
        role=args.role,
        instance_count=1,
        instance_type="local" if args.local else args.instance_type,
        hyperparameters=hyperparameters,
        metric_definitions=METRIC_DEFINITIONS,
        output_path=output,
        base_job_name=base_job_name,
        environment=key_values(args.env) or None,
        sagemaker_session=session(args),
    )


def job_outputs(trained: Estimator) -> Dict[str, bytes]:
    """The files of the job's output.tar.gz (output/data: metrics.json, report.html, plots), by name."""
    location = trained.model_data.rsplit("/", 1)[0] + "/output.tar.gz"
    if location.startswith("file://"):
        data = Path(location[len("file://"):]).read_bytes()
    else:
        from sagemaker.s3 import S3Downloader

        data = S3Downloader.read_bytes(location, sagemaker_session=trained.sagemaker_session)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        return {Path(m.name).name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}


def report_scores(files: Dict[str, bytes]) -> Dict[str, object]:
    """Print the best epoch's validation mIOU, Dice and per-class IoU/Dice; return them."""
    history = json.loads(files["metrics.json"])
    best = max(history, key=lambda row: row["mIOU"] if row["mIOU"] is not None else -1)
    print(f"best epoch {best['epoch']}: mIOU {best['mIOU']:.4f}, Dice {best['dice']:.4f}")
    for name, iou in (best.get("iou_per_class") or {}).items():
        dice = best["dice_per_class"][name]
        shown = "absent" if iou is None else f"IoU {iou:.4f}, Dice {dice:.4f}"
        print(f"  {name:20s} {shown}")
    return {"mIOU": best["mIOU"], "dice": best["dice"], "iou_per_class": best.get("iou_per_class"),
            "dice_per_class": best.get("dice_per_class"), "epochs": len(history)}


def predict_once(trained: Estimator, args: argparse.Namespace, image: bytes) -> Optional[Dict[str, object]]:
    """Deploy, ask for one mask (JSON: run-length encoded class ids), tear the endpoint down."""
    if args.no_endpoint:
        return None
    predictor = trained.deploy(1, "local" if args.local else args.endpoint_instance_type,
                               serializer=IdentitySerializer("image/jpeg"), deserializer=BytesDeserializer())
    try:
        answer = json.loads(predictor.predict(image, initial_args={"Accept": "application/json"}))
    finally:
        predictor.delete_endpoint()
    mask = np.repeat(answer["mask_rle"]["values"], answer["mask_rle"]["lengths"]).reshape(answer["shape"])
    share = {answer["class_names"][int(c)]: round(float(np.mean(mask == c)), 4) for c in np.unique(mask)}
    print(f"endpoint mask {mask.shape[1]}x{mask.shape[0]}, share of pixels by class: {share}")
    return {"shape": list(mask.shape), "class_share": share}


def query_image(args: argparse.Namespace) -> bytes:
    """--query-image, or the first validation picture of a local --data folder."""
    if args.query_image:
        return Path(args.query_image).read_bytes()
    folder = Path(args.data) / "validation"
    pictures = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return pictures[0].read_bytes()


def finish(summary: Dict[str, object]) -> None:
    """The last line: a JSON summary (tests read it)."""
    print(json.dumps(summary))


def run_recipe(description: str, recipe: Dict[str, object], base_job_name: str,
               argv: Optional[List[str]] = None) -> Dict[str, object]:
    """The shape every training recipe shares: the prepared classes + the recipe's hyperparameters (+ -H
    overrides), fit on the prepared channels, the job's scores, one endpoint prediction."""
    args = parser(description).parse_args(argv)
    hyperparameters = with_overrides(dict(prepared_hyperparameters(args), **recipe), args)
    channels = ["train", "train_annotation", "validation", "validation_annotation", "label_map"]
    trained = estimator(args, hyperparameters, base_job_name)
    trained.fit(channel_uris(args, channels), wait=True)
    summary = report_scores(job_outputs(trained))
    summary["model_data"] = trained.model_data
    summary["prediction"] = predict_once(trained, args, query_image(args))
    finish(summary)
    return summary
