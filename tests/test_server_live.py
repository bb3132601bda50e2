"""`segmaker serve` for real: gunicorn on a free port, two workers, a tiny model directory."""

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.serving_model import image_bytes, write_tiny_model_dir

pytestmark = pytest.mark.slow
pytest.importorskip("segmaker.artifacts")

START_TIMEOUT = 180


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    def __init__(self, model_dir: Path, **env):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environ = dict(os.environ, SEGMAKER_MODEL_DIR=str(model_dir), SAGEMAKER_BIND_TO_PORT=str(self.port),
                       SAGEMAKER_MODEL_SERVER_WORKERS="2", SAGEMAKER_MAX_PAYLOAD_IN_MB="1",
                       OMP_NUM_THREADS="1")
        environ.update(env)
        self.process = subprocess.Popen([sys.executable, "-m", "segmaker", "serve"], env=environ,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._log = []
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()

    def _collect(self):
        for line in self.process.stdout:
            self._log.append(line.decode("utf-8", "replace"))

    @property
    def log(self) -> str:
        return "".join(self._log)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "server exited:\n" + self.log
            try:
                if requests.get(self.url + "/ping", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise AssertionError("server not ready:\n" + self.log)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tiny_model_dir(tmp_path_factory.mktemp("model") / "model", "psp", size=32)


@pytest.fixture(scope="module")
def server(model_dir):
    live = LiveServer(model_dir)
    try:
        live.wait_ready()
        yield live
    finally:
        live.stop()


def _post(server, body, content_type="image/jpeg", accept=None, timeout=60):
    headers = {"Content-Type": content_type}
    if accept:
        headers["Accept"] = accept
    return requests.post(server.url + "/invocations", data=body, headers=headers, timeout=timeout)


def test_ping_and_execution_parameters(server):
    assert requests.get(server.url + "/ping", timeout=2).status_code == 200
    assert requests.get(server.url + "/execution-parameters", timeout=2).json() == {
        "MaxConcurrentTransforms": 2, "BatchStrategy": "SINGLE_RECORD", "MaxPayloadInMB": 1}


@pytest.mark.parametrize("height, width", [(7, 300), (32, 32), (240, 181)])
def test_any_size_comes_back_at_its_size(server, height, width):
    response = _post(server, image_bytes(height, width))
    assert response.status_code == 200 and response.headers["Content-Type"] == "image/png"
    assert np.asarray(Image.open(io.BytesIO(response.content))).shape == (height, width)


@pytest.mark.parametrize("content_type, accept, body, status", [
    ("text/plain", None, image_bytes(8, 8), 415),
    ("image/jpeg", "text/html", image_bytes(8, 8), 406),
    ("image/jpeg", None, b"", 400),
    ("image/png", None, b"\x89PNG garbage", 400),
    ("image/png", None, b"\0" * (1024 * 1024 + 1), 413),
])
def test_errors_are_json_with_status(server, content_type, accept, body, status):
    response = _post(server, body, content_type, accept)
    assert response.status_code == status and response.json()["error"]


def _same_connection(server, requests_to_send):
    """Send each (method, path, body, headers) on ONE kept-alive http.client connection: (status, body)s."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    answers = []
    try:
        for method, path, body, headers in requests_to_send:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            answers.append((response.status, response.read()))
    finally:
        connection.close()
    return answers


GOOD = ("POST", "/invocations", image_bytes(20, 30), {"Content-Type": "image/jpeg"})


@pytest.mark.parametrize("refused, status", [
    (("POST", "/invocations", b"x" * 70_000, {"Content-Type": "text/plain"}), 415),
    (("POST", "/invocations", b"x" * 70_000, {"Content-Type": "image/png", "Accept": "text/html"}), 406),
    (("POST", "/nowhere", b"x" * 70_000, {"Content-Type": "image/png"}), 404),
    (("POST", "/invocations", b"\0" * (1024 * 1024 + 1), {"Content-Type": "image/png"}), 413),
])
def test_a_refused_request_does_not_break_the_next_one_on_its_connection(server, refused, status):
    """gunicorn discards at most 64 KB of a body the app left unread and then closes the connection
    without telling the client, whose next request on it then fails: the app reads refused bodies (up to
    the payload limit), and a body over the limit is answered with Connection: close."""
    answers = _same_connection(server, [refused, GOOD, GOOD])
    assert [code for code, _ in answers] == [status, 200, 200], answers[0]


def test_four_concurrent_clients(server):
    sizes = [(40 + 7 * i, 60 + 5 * i) for i in range(16)]

    def call(size):
        response = _post(server, image_bytes(*size, seed=size[0]))
        return response.status_code, np.asarray(Image.open(io.BytesIO(response.content))).shape

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(call, sizes))
    assert results == [(200, size) for size in sizes]


def noise_jpeg(height: int, width: int, seed: int) -> bytes:
    """A JPEG of noise: about 1.5 bytes per pixel at quality 95, so a few megapixels make megabytes."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def test_a_batch_transform_pushes_large_images_through_at_the_default_limit(model_dir):
    """As batch transform runs: /execution-parameters first (MaxPayloadInMB 10 by default, the built-in's
    batch limit), then one image per request on kept-alive connections, MaxConcurrentTransforms at a time."""
    live = LiveServer(model_dir, SAGEMAKER_MAX_PAYLOAD_IN_MB="", SAGEMAKER_MODEL_SERVER_WORKERS="1")
    try:
        live.wait_ready()
        parameters = requests.get(live.url + "/execution-parameters", timeout=5).json()
        assert parameters == {"MaxConcurrentTransforms": 1, "BatchStrategy": "SINGLE_RECORD",
                              "MaxPayloadInMB": 10}
        sizes = [(2400, 1800), (1700, 2900), (3000, 2200)]
        bodies = [noise_jpeg(height, width, seed) for seed, (height, width) in enumerate(sizes)]
        assert 6 * 2 ** 20 < max(len(body) for body in bodies) <= 10 * 2 ** 20  # over the old 6 MB default
        headers = {"Content-Type": "application/x-image", "Accept": "image/png"}
        with requests.Session() as session:
            for (height, width), body in zip(sizes, bodies):
                response = session.post(live.url + "/invocations", data=body, headers=headers, timeout=300)
                assert response.status_code == 200, response.text[:300]
                assert np.asarray(Image.open(io.BytesIO(response.content))).shape == (height, width)
            too_big = session.post(live.url + "/invocations", data=b"\0" * (10 * 2 ** 20 + 1),
                                   headers=headers, timeout=300)
            assert too_big.status_code == 413
            refusal = too_big.json()["error"]
            assert "more than the limit of 10485760 bytes (SAGEMAKER_MAX_PAYLOAD_IN_MB=10)" in refusal
            assert session.post(live.url + "/invocations", data=image_bytes(30, 40), headers=headers,
                                timeout=300).status_code == 200
    finally:
        live.stop()


def test_sigterm_drains_the_request_in_flight(model_dir):
    live = LiveServer(model_dir, SAGEMAKER_MODEL_SERVER_WORKERS="1")
    try:
        live.wait_ready()
        body = image_bytes(300, 400, "PNG")
        head = (f"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", live.port), timeout=60) as sock:
            sock.sendall(head + body[:1000])  # the request is in flight...
            time.sleep(0.5)
            live.process.send_signal(signal.SIGTERM)  # ...when the server is told to stop
            time.sleep(0.5)
            sock.sendall(body[1000:])
            answer = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert live.process.wait(timeout=60) == 0
        with pytest.raises(requests.ConnectionError):
            requests.get(live.url + "/ping", timeout=2)
    finally:
        live.stop()


def test_a_model_that_cannot_load_stops_the_server_with_a_clear_line(tmp_path):
    broken = tmp_path / "model"
    broken.mkdir()
    (broken / "segmaker.json").write_text("{not json")
    live = LiveServer(broken)
    try:
        live.process.wait(timeout=START_TIMEOUT)
    finally:
        code = live.stop()
    live._reader.join(timeout=5)
    assert "cannot load the model from" in live.log
    assert live.log.count("cannot load the model from") <= 2  # one per worker: no restart loop
    assert code != 0
