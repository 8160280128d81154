"""Ray Serve on a real Ray cluster started for this module (``ray_cluster``: loopback, few logical CPUs).

``fastinst-rt serve`` runs as a subprocess attached to the cluster; requests go over real HTTP on 127.0.0.1.
Ray Data's batch prediction is in ``test_serving_batch.py`` (its own cluster: the server's Ctrl-C shutdown was
measured to stall for minutes after a Ray Data run in the same cluster).
"""

from __future__ import annotations

import io
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray", reason="ray[serve,data] (the serve extra) is not installed")
serve = pytest.importorskip("ray.serve")

from fastinst_rt import Results, Segmenter  # noqa: E402
from fastinst_rt.cli import SAMPLE_PHOTO  # noqa: E402
from fastinst_rt.runtime.backends import open_backend  # noqa: E402
from fastinst_rt.serving import Client, ServerError  # noqa: E402
from fastinst_rt.serving.app import ServeConfig, public_description  # noqa: E402
from fastinst_rt.serving.server import start_server, stop_server  # noqa: E402
from fastinst_rt.training.synth import make_synthetic_dataset  # noqa: E402

pytestmark = pytest.mark.ray
MODEL = "fastinst-demo"


MAX_PIXELS = 1_000_000  # above every test image (at most 512 x 512), below a 1100 x 1000 one


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(ray_cluster: str):
    """``fastinst-rt serve fastinst-demo`` with 2 replicas and batches of up to 4, attached to the cluster."""
    port = _free_port()
    cmd = [sys.executable, "-m", "fastinst_rt.cli", "serve", MODEL, "--port", str(port), "--address", ray_cluster,
           "--replicas", "2", "--max-batch", "4", "--batch-wait-ms", "20", "--device", "cpu",
           "--max-pixels", str(MAX_PIXELS)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("serving "):
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(180):
        proc.kill()
        pytest.fail("fastinst-rt serve did not come up in 180 s:\n" + "".join(lines[-30:]))
    yield f"http://127.0.0.1:{port}"
    proc.send_signal(signal.SIGINT)  # the CLI shuts Serve down on Ctrl-C
    t = time.time()
    try:
        proc.wait(60)
        print(f"serve stopped {time.time() - t:.1f} s after Ctrl-C")
    except subprocess.TimeoutExpired:  # a slow shutdown on a busy machine: finish it from here
        proc.kill()
        serve.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """Real encoded images of several sizes: the shipped photo, synthetic shapes (JPEG), a PNG crop."""
    from PIL import Image

    root = tmp_path_factory.mktemp("serve-images")
    make_synthetic_dataset(root / "synth", 6, 3, (256, 320), ("circle", "square", "triangle", "star"))
    files = [Path(SAMPLE_PHOTO), *sorted((root / "synth" / "images").glob("*.jpg"))]
    Image.open(files[1]).crop((0, 0, 200, 256)).save(root / "portrait.png")
    return [*files, root / "portrait.png"]


def _same(a: Results, b: Results) -> None:
    """The same instances. A batch of other sizes (padding) moves logits by ~1e-6, so a mask pixel whose logit sits
    at 0 may flip, and with it the instance's mask score (measured between PyTorch and ONNX Runtime on 16 held-out
    images: 2-7 pixels per instance, 4.4e-3 in score at most)."""
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-2)
    assert a.masks.shape == b.masks.shape
    inter, union = (a.masks & b.masks).sum((1, 2)), (a.masks | b.masks).sum((1, 2))
    assert (inter >= 0.99 * union).all(), inter / np.maximum(union, 1)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=2)


def test_200_requests_from_8_clients_equal_local_predict(server: str, images: list[Path]) -> None:
    local = Segmenter(MODEL, device="cpu")
    expected = [local.predict(p) for p in images]
    assert sum(len(r) for r in expected) > 10  # the demo model finds the shapes: masks are really compared
    client = Client(server)

    def one(i: int) -> tuple[int, Results]:
        return i, client.predict(images[i % len(images)])

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(200)))
    assert len(answers) == 200
    for i, res in answers:
        _same(res, expected[i % len(images)])
    batches = [r.speed["batch"] for _, r in answers]
    assert max(batches) > 1  # requests of different clients were batched together
    assert {"decode", "queue", "preprocess", "inference", "postprocess"} <= set(answers[0][1].speed)


def _post(url: str, body: bytes, ctype: str = "image/jpeg") -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        text = e.read().decode()
        return e.code, json.loads(text) if e.code != 503 else {"error": text}  # Serve's own 503 is plain text


def test_bad_requests_get_a_reason(server: str, images: list[Path]) -> None:
    status, body = _post(server + "/v1/segment", b"this is a text file, not an image\n")
    assert status == 400 and "not a decodable image" in body["error"] and "\n" not in body["error"]
    jpeg = images[0].read_bytes()
    assert _post(server + "/v1/segment?conf=2", jpeg)[0] == 400
    assert "max_det" in _post(server + "/v1/segment?max_det=abc", jpeg)[1]["error"]
    assert "unknown" in _post(server + "/v1/segment?confidence=0.5", jpeg)[1]["error"]
    assert _post(server + "/v1/segment", jpeg, "text/plain")[0] == 400
    assert _post(server + "/v1/segment", jpeg[: len(jpeg) // 3])[0] == 400  # truncated JPEG
    status, body = _post(server + "/v1/segment", bytes(33 * 2**20))
    assert status == 413 and "limit" in body["error"]
    big = io.BytesIO()  # a few KB of PNG that declares more pixels than the server takes: refused before decoding
    Image.new("RGB", (1100, 1000)).save(big, format="PNG")
    status, body = _post(server + "/v1/segment", big.getvalue(), "image/png")
    assert status == 413 and f"limit of {MAX_PIXELS} pixels" in body["error"], body
    with pytest.raises(ServerError) as e:
        Client(server, conf=1.5).predict(images[0])
    assert e.value.status == 400


def test_health_model_and_segmenter_url(server: str, photo: np.ndarray) -> None:
    client = Segmenter(server)
    assert isinstance(client, Client) and isinstance(client, Segmenter)
    assert client.health()["status"] == "ok"
    info = client.model_info()
    with open_backend(MODEL, device="cpu") as backend:
        described = backend.describe()
    server_path = Path(described["source"])
    assert server_path.is_absolute() and info["source"] == server_path.name == "fastinst-demo.safetensors"
    text = json.dumps(info)
    assert str(server_path.parent) not in text and '"/' not in text, "no path of the server's is shown"
    described["source"] = server_path.name
    assert {k: info[k] for k in described} == json.loads(json.dumps(described))  # what `fastinst-rt info` says
    assert info["serving"]["max_batch"] == 4 and info["serving"]["max_pixels"] == MAX_PIXELS
    _same(client.predict(photo[:300], color="rgb"), Segmenter(MODEL, device="cpu").predict(photo[:300], color="rgb"))
    with pytest.raises(ValueError, match="chosen by the server"):
        Segmenter(server, backend="onnxruntime")


def test_model_description_shows_file_names_only() -> None:
    described = {"backend": "onnxruntime", "file": "/srv/models/r50.onnx", "source": "/data/ckpt/r50.pth",
                 "onnx": "r50.onnx", "test_size": [576, 800]}  # fmt: skip
    assert public_description(described) == {**described, "file": "r50.onnx", "source": "r50.pth"}
    assert public_description({"source": ""}) == {"source": ""}


def test_queue_limit_answers_503_not_timeouts(server: str, images: list[Path]) -> None:
    port = int(server.rsplit(":", 1)[1])
    config = ServeConfig(MODEL, device="cpu", max_batch=1, batch_wait_ms=0, max_queued=1, num_cpus=1)
    url = start_server(config, port=port, name="tight", route_prefix="/tight")
    try:
        body = Path(SAMPLE_PHOTO).read_bytes()
        with ThreadPoolExecutor(12) as pool:
            codes = [c for c, _ in pool.map(lambda _: _post(url + "/v1/segment", body), range(12))]
    finally:
        stop_server("tight")
    assert set(codes) <= {200, 503}, codes
    assert codes.count(503) >= 1 and codes.count(200) >= 2, codes


def test_a_model_that_cannot_load_fails_with_its_reason(server: str) -> None:
    port = int(server.rsplit(":", 1)[1])
    with pytest.raises(RuntimeError, match="did not start: FileNotFoundError: no such ONNX file"):
        start_server(ServeConfig("missing.onnx", num_cpus=0.5), port=port, name="broken", route_prefix="/broken")
    assert "broken" not in serve.status().applications


def test_killed_replica_is_restarted_and_other_requests_are_served(server: str, images: list[Path]) -> None:
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "Segmenter" in a["name"]]
    replicas = [n for n in names if n.startswith("SERVE_REPLICA") and "fastinst#" in n]
    assert len(replicas) == 2, names
    client = Client(server, timeout=120)
    outcomes: list[str] = []

    def one(i: int) -> None:
        try:
            client.predict(images[i % len(images)])
            outcomes.append("ok")
        except (ServerError, ConnectionError) as e:
            outcomes.append(str(e))

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(one, i) for i in range(60)]
        deadline = time.time() + 120
        while len(outcomes) < 10 and time.time() < deadline:
            time.sleep(0.05)
        ray.kill(ray.get_actor(replicas[0], namespace="serve"), no_restart=True)
        for f in futures:
            f.result()
    failed = [o for o in outcomes if o != "ok"]
    assert len(failed) <= 4, failed  # at most what the killed replica held (max_ongoing_requests = max_batch)
    deadline = time.time() + 120
    while time.time() < deadline:
        status = serve.status().applications["fastinst"].deployments["Segmenter"]
        if status.replica_states.get("RUNNING", 0) == 2:
            break
        time.sleep(1)
    assert status.replica_states.get("RUNNING", 0) == 2, status
    assert client.predict(images[0]).orig_shape == (512, 512)
