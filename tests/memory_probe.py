"""Peak memory of one request, measured in a fresh process: `python -m tests.memory_probe ...` prints JSON.

The model is a stand-in whose logits are a fixed linear function of the input (C classes), so the measure is
that of the serving code (decoding, tiling, blending, resizing, encoding), not of a network's buffers, which
are fixed by the working size. The process's peak RSS is reset (/proc/self/clear_refs, 5) after a warm-up
request; growth = peak during the request - RSS before it.
"""

import argparse
import io
import json
import time

import mxnet as mx
import numpy as np
from PIL import Image

from segmaker.environment import ServingSettings
from segmaker.models import SegmentationInference
from segmaker.serving.app import create_app
from segmaker.serving.predictor import Predictor


def memory_mb() -> dict:
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024.0
    return fields


def smooth_jpeg(height: int, width: int) -> bytes:
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=2).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image-scale", default="native")
    parser.add_argument("--accept", default="image/png")
    parser.add_argument("--height", type=int, required=True)
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--working-size", type=int, default=520)
    args = parser.parse_args()

    mix = np.random.default_rng(0).standard_normal((args.classes, 3)).astype(np.float32)
    engine = SegmentationInference(None, args.working_size, [mx.cpu()], image_scale=args.image_scale,
                                   forward=lambda inputs: [mx.nd.array(np.tensordot(mix, x, axes=1))
                                                           for x in inputs])
    predictor = Predictor(engine, [f"class_{i}" for i in range(args.classes)], "stand-in")
    predictor.warm_up()
    at_the_limit = args.classes * args.height * args.width
    settings = ServingSettings(max_payload_mb=100, max_pixels=args.height * args.width,
                               max_probability_values=at_the_limit)
    client = create_app(predictor, settings).test_client()
    headers = {"Content-Type": "image/jpeg", "Accept": args.accept}
    body = smooth_jpeg(args.height, args.width)
    client.post("/invocations", data=smooth_jpeg(200, 300), headers=headers)  # warm-up: imports, buffers

    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset VmHWM to the current RSS
    before = memory_mb()
    start = time.perf_counter()
    # Not buffered: the answer's chunks are counted and dropped, as gunicorn sends them.
    response = client.post("/invocations", data=body, headers=headers, buffered=False)
    sent = sum(len(chunk) for chunk in response.response)
    after = memory_mb()
    print(json.dumps({"status": response.status_code, "growth_mb": after["VmHWM"] - before["VmRSS"],
                      "answer_mb": sent / 2 ** 20, "seconds": time.perf_counter() - start}))


if __name__ == "__main__":
    main()
