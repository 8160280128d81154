"""``fastinst-rt serve`` refuses what it can before Ray starts (a bad model, a port in use, no cluster at --address),
and Ray's own startup error (Serve's HTTP proxy cannot listen) ends in one line too. Real sockets on 127.0.0.1.

The first tests must find Ray not started in this process: the Ray test (last) starts the module's cluster.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .test_hardening import cli_error

ray = pytest.importorskip("ray", reason="ray[serve,data] (the serve extra) is not installed")
MODEL = "fastinst-demo"


@contextmanager
def held_port() -> Iterator[int]:
    """A port on 127.0.0.1 that a listening socket of this test holds."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_a_missing_model_fails_before_ray_starts(tmp_path: Path, capsys) -> None:
    start = time.monotonic()
    cli_error(["serve", str(tmp_path / "missing.onnx"), "--port", "8123"], capsys, "missing.onnx")
    assert time.monotonic() - start < 5 and not ray.is_initialized()
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"an engine without its sidecar")  # checked without a GPU: the file and its sidecar
    cli_error(["serve", str(engine)], capsys, "model.engine has no model.engine.json beside it")
    empty = tmp_path / "model.safetensors"
    empty.write_bytes(b"")
    cli_error(["serve", str(empty), "--max-replicas", "1", "--replicas", "2"], capsys, "--max-replicas 1 is below")
    cli_error(["serve", str(empty)], capsys, "model.safetensors is not a readable safetensors file")
    assert not ray.is_initialized()


def test_a_port_in_use_fails_before_ray_starts(capsys) -> None:
    with held_port() as port:
        argv = ["serve", MODEL, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
        cli_error(argv, capsys, f"--port {port}: cannot listen on 127.0.0.1:{port}", "choose another port")
    assert not ray.is_initialized()


def test_no_cluster_at_address_is_one_line_not_minutes_of_retries(capsys) -> None:
    with held_port() as port:  # the port is free again once the socket closes: nothing answers there
        pass
    start = time.monotonic()
    line = cli_error(["serve", MODEL, "--address", f"127.0.0.1:{port}", "--device", "cpu"], capsys)
    assert f"no Ray cluster answers at --address 127.0.0.1:{port}" in line and "refused" in line.lower()
    cli_error(["serve", MODEL, "--address", "nowhere", "--device", "cpu"], capsys, "--address must be host:port")
    assert time.monotonic() - start < 15 and not ray.is_initialized()


@pytest.mark.ray
@pytest.mark.slow
def test_serve_proxy_that_cannot_listen_is_one_line(ray_cluster: str, capsys) -> None:
    """On a running cluster (no pre-check of the port: the proxy may run on another node), Ray's own failure."""
    with held_port() as port:
        argv = ["serve", MODEL, "--address", ray_cluster, "--port", str(port), "--device", "cpu"]
        line = cli_error(argv, capsys, f"Serve could not listen on 127.0.0.1:{port}", f"127.0.0.1:{port}")
    assert "\x1b" not in line and "Traceback" not in line and "Failed to bind" in line
    deadline, controllers = time.monotonic() + 60, ["?"]
    while controllers and time.monotonic() < deadline:
        actors = ray.util.list_named_actors(all_namespaces=True)
        controllers = [a["name"] for a in actors if "SERVE_CONTROLLER" in a["name"]]
        time.sleep(0.5)
    assert not controllers, "the half-started Serve is shut down"
