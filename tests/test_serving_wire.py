"""The serving wire format and client without a server, and that the core never imports Ray or tritonclient."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fastinst_rt import Segmenter
from fastinst_rt.cli import SAMPLE_PHOTO
from fastinst_rt.runtime.preprocess import ImageError, load_image
from fastinst_rt.serving.client import Client, _encode
from fastinst_rt.serving.wire import decode_image, results_from_json, results_to_json


def test_core_runtime_and_cli_import_neither_ray_nor_tritonclient() -> None:
    code = (
        "import sys, fastinst_rt, fastinst_rt.runtime.segmenter, fastinst_rt.runtime.backends.ort, fastinst_rt.cli\n"
        "import fastinst_rt.serving.client, fastinst_rt.serving.wire\n"
        "fastinst_rt.cli.build_parser()\n"
        "c = fastinst_rt.Segmenter('http://127.0.0.1:9')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'tritonclient', 'grpc'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_results_survive_the_wire(photo: np.ndarray) -> None:
    res = Segmenter("fastinst-demo", device="cpu", conf=0.0, max_det=20).predict(photo, color="rgb")
    assert len(res) == 20
    body = json.loads(json.dumps(results_to_json(res, {"inference": 1.5})))
    assert body["image_size"] == [512, 512] and body["timing_ms"] == {"inference": 1.5}
    assert body["instances"][0]["name"] == res.names[0] and len(body["instances"][0]["box"]) == 4
    back = results_from_json(body, res.class_names)
    assert (back.masks == res.masks).all() and (back.labels == res.labels).all()
    np.testing.assert_array_equal(back.scores, res.scores)  # float32 -> JSON double -> float32 is exact
    np.testing.assert_array_equal(back.boxes, res.boxes)
    empty = results_from_json(results_to_json(res[res.scores > 2]), res.class_names)
    assert len(empty) == 0 and empty.orig_shape == (512, 512)


def test_decode_image_reads_bytes_as_load_image_reads_files(tmp_path) -> None:
    data = open(SAMPLE_PHOTO, "rb").read()
    np.testing.assert_array_equal(decode_image(data), load_image(SAMPLE_PHOTO))
    for bad, reason in [(b"", "empty"), (b"hello, world", "unknown format"), (data[:3000], "not a decodable")]:
        with pytest.raises(ImageError, match=reason):
            decode_image(bad)
    # The client sends pixels losslessly: PNG decodes to the same array.
    rgb = load_image(SAMPLE_PHOTO)[:100, :150]
    body, ctype = _encode(rgb, "rgb")
    assert ctype == "image/png" and (np.asarray(Image.open(io.BytesIO(body))) == rgb).all()


def test_client_refuses_local_options_and_reports_an_unreachable_server() -> None:
    with pytest.raises(ValueError, match="device"):
        Segmenter("http://127.0.0.1:9", device="cuda")
    with pytest.raises(ValueError, match="http://"):
        Client("127.0.0.1:9")
    with pytest.raises(ConnectionError, match="cannot reach"):
        Client("http://127.0.0.1:9", timeout=5).health()
