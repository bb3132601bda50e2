"""The SageMaker SDK's own RecordIO-protobuf reader decodes our protobuf answer (separate SDK venv)."""

import json

import numpy as np
import pytest

from segmaker.serving.app import create_app
from tests.sdk_env import run_in_sdk
from tests.serving_model import image_bytes, tiny_predictor

pytestmark = pytest.mark.sdk

READ_WITH_SDK = """
import io, json, sys
from sagemaker.amazon.common import RecordDeserializer, read_records
body = open(sys.argv[1], "rb").read()
records = RecordDeserializer().deserialize(io.BytesIO(body), sys.argv[2])
assert len(read_records(io.BytesIO(body))) == len(records)
out = [{"keys": sorted(r.features.keys()),
        "shape": list(r.features["shape"].int32_tensor.values),
        "target": list(r.features["target"].float32_tensor.values)} for r in records]
print(json.dumps(out))
"""


@pytest.mark.parametrize("accept", ["application/x-recordio-protobuf", "application/x-protobuf"])
def test_sdk_reads_the_probabilities(tmp_path, accept):
    predictor = tiny_predictor("deeplab", size=32)
    client = create_app(predictor).test_client()
    image = image_bytes(19, 27, "PNG")
    headers = {"Content-Type": "image/png", "Accept": accept}
    response = client.post("/invocations", data=image, headers=headers)
    assert response.status_code == 200
    answer = tmp_path / "answer.pb"
    answer.write_bytes(response.data)

    result = run_in_sdk(READ_WITH_SDK, str(answer), accept)
    assert result.returncode == 0, result.stderr
    (record,) = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["keys"] == ["shape", "target"]
    assert record["shape"] == [1, 3, 19, 27]
    from segmaker.serving.codecs import decode_image

    expected = predictor.predict_probabilities(decode_image(image, 10**6))
    np.testing.assert_array_equal(np.array(record["target"], np.float32).reshape(3, 19, 27), expected)
