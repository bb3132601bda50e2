"""SageMaker Python SDK 2.x local mode against the segmaker image: fit -> deploy -> predict -> tear down.

Runs in the SDK's own venv (never the mxnet one), started by tests/test_sdk_local_mode.py:

    python local_mode_roundtrip.py --image segmaker:cpu --data DIR --work DIR --jpeg FILE --port PORT
    python local_mode_roundtrip.py ... --instance-count 2 --fit-only     # a multi-host fit, no endpoint

No AWS call is made: dummy credentials and a region come from the environment, channels and output are file://.
Prints one JSON line last: {"model_tar": ..., "model_files": [...], "mask_size": [w, h], "png_bytes": n}.
"""

import argparse
import json
import struct
import sys
import tarfile
from pathlib import Path
from typing import Dict, List, Tuple

from sagemaker.deserializers import BytesDeserializer
from sagemaker.estimator import Estimator
from sagemaker.local import LocalSession
from sagemaker.serializers import IdentitySerializer

DUMMY_ROLE = "arn:aws:iam::111111111111:role/SageMakerRole"
CHANNELS = ("train", "train_annotation", "validation", "validation_annotation")
HYPERPARAMETERS = {
    "num_classes": 3,
    "algorithm": "fcn",
    "backbone": "resnet-50",
    "use_pretrained_model": False,
    "epochs": 1,
    "crop_size": 32,
    "base_size": 48,
    "mini_batch_size": 2,
    "validation_mini_batch_size": 2,
}


def local_session(work: Path, port: int) -> LocalSession:
    """Local mode whose scratch folders live under `work` and whose endpoint listens on `port`."""
    session = LocalSession()
    session.config = {"local": {"local_code": True, "container_root": str(work), "serving_port": port}}
    return session


def train(args: argparse.Namespace, session: LocalSession) -> Estimator:
    estimator = Estimator(
        image_uri=args.image,
        role=DUMMY_ROLE,
        instance_count=args.instance_count,
        instance_type="local",
        hyperparameters=HYPERPARAMETERS,
        output_path=f"file://{args.work / 'output'}",
        base_job_name="segmaker-local",
        sagemaker_session=session,
    )
    estimator.fit({name: f"file://{args.data / name}" for name in CHANNELS}, wait=True)
    return estimator


def model_files(model_data: str) -> Tuple[str, List[str]]:
    path = Path(model_data.replace("file://", "", 1))
    with tarfile.open(path) as archive:
        names = [member.name for member in archive.getmembers() if member.isfile()]
    return str(path), sorted(name[2:] if name.startswith("./") else name for name in names)


def png_size(data: bytes) -> Tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk (the SDK venv need not have Pillow)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError(f"not a PNG: {data[:32]!r}")
    return struct.unpack(">II", data[16:24])


def predict_once(estimator: Estimator, jpeg: bytes) -> bytes:
    predictor = estimator.deploy(
        1, "local", serializer=IdentitySerializer("image/jpeg"), deserializer=BytesDeserializer()
    )
    try:
        return predictor.predict(jpeg, initial_args={"Accept": "image/png"})
    finally:
        predictor.delete_endpoint()


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--data", required=True, type=Path, help="folder with the four channel folders")
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--jpeg", required=True, type=Path)
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--instance-count", type=int, default=1)
    parser.add_argument("--fit-only", action="store_true", help="stop after fit (no endpoint)")
    args = parser.parse_args(argv)

    estimator = train(args, local_session(args.work, args.port))
    tar_path, files = model_files(estimator.model_data)
    if args.fit_only:
        print(json.dumps({"model_tar": tar_path, "model_files": files}))
        return 0
    mask = predict_once(estimator, args.jpeg.read_bytes())
    result: Dict[str, object] = {
        "model_tar": tar_path,
        "model_files": files,
        "mask_size": list(png_size(mask)),
        "png_bytes": len(mask),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
