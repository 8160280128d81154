"""Start (and stop) the Serve application on a Ray cluster: what ``fastinst-rt serve`` runs."""

from __future__ import annotations

import re
import socket
import time

import ray
from ray import serve
from ray.exceptions import RayError

from .app import ServeConfig, build_app

__all__ = ["start_server", "stop_server", "serve_until_interrupted", "check_cluster_address", "last_line"]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def start_server(
    config: ServeConfig,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str | None = None,
    name: str = "fastinst",
    route_prefix: str = "/",
    num_cpus: int | None = None,
) -> str:
    """Deploy ``config`` and wait until every replica is up; returns the base URL (``http://host:port`` + prefix).

    Args:
        address: a running Ray cluster ("auto", "ip:6379"); None starts a local one (``num_cpus`` logical CPUs).
        name, route_prefix: the Serve application; several (e.g. two models) can share one HTTP proxy.
    Serve has one HTTP proxy per cluster: ``host``/``port`` apply when this call starts Serve, and are refused if
    Serve already listens elsewhere.
    Raises:
        ConnectionError: nothing listens at ``address``. OSError: the HTTP proxy cannot listen on ``host:port``
            (then Serve, and Ray if this call started it, are shut down). RuntimeError: the replicas did not start.
    """
    started_ray = not ray.is_initialized() and address is None
    if not ray.is_initialized():
        if address is None:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        else:
            check_cluster_address(address)
            ray.init(address=address, log_to_driver=False)
    try:
        serve.start(http_options={"host": host, "port": port})
    except (RayError, RuntimeError) as e:  # the HTTP proxy did not come up: a port in use, an address not this host's
        serve.shutdown()  # no half-started Serve left behind
        if started_ray:
            ray.shutdown()
        raise OSError(f"Serve could not listen on {host}:{port}: {last_line(str(e))}") from None
    gpus = float(ray.cluster_resources().get("GPU", 0.0))
    try:
        serve.run(build_app(config, gpus), name=name, route_prefix=route_prefix, blocking=False)
    except RuntimeError as e:
        reason = _failure_reason(name, e)
        serve.delete(name)  # leave no failed application behind on a shared cluster
        raise RuntimeError(f"the replicas of {config.model} did not start: {reason}") from None
    prefix = "" if route_prefix == "/" else route_prefix
    return f"http://{host}:{port}{prefix}"


def check_cluster_address(address: str, timeout: float = 5.0) -> None:
    """ConnectionError unless something listens at ``address`` ("host:port" or "ray://host:port"; "auto" is Ray's
    to find): ``ray.init`` retries a dead address for minutes."""
    if address in ("auto", "local"):
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--address must be host:port, ray://host:port or auto, got {address!r}")
    hosts = [host] + ([ray.util.get_node_ip_address()] if host in ("localhost", "127.0.0.1") else [])
    errors = []
    for candidate in hosts:  # Ray itself turns a loopback address into this node's address
        try:
            socket.create_connection((candidate, int(port)), timeout=timeout).close()
            return
        except OSError as e:
            errors.append(f"{candidate}:{port}: {e.strerror or e}")
    raise ConnectionError(f"no Ray cluster answers at --address {address} ({'; '.join(errors)})")


def last_line(text: str) -> str:
    """The last non-empty line of a (Ray) traceback, without its terminal colour codes."""
    lines = [line.strip() for line in _ANSI.sub("", text).splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


def _failure_reason(name: str, error: Exception) -> str:
    """The last line of the failed replicas' traceback (e.g. "FileNotFoundError: no such ONNX file: x.onnx")."""
    try:
        deployments = serve.status().applications[name].deployments.values()
        text = "\n".join(d.message for d in deployments if d.message) or str(error)
    except (KeyError, RuntimeError):
        text = str(error)
    return last_line(text) if text.strip() else type(error).__name__


def stop_server(name: str | None = None) -> None:
    """Delete one application (``name``), or shut Serve down entirely (None)."""
    if name is None:
        serve.shutdown()
    else:
        serve.delete(name)


def serve_until_interrupted(poll_s: float = 1.0) -> None:
    """Block until Ctrl-C (or SIGTERM turned into KeyboardInterrupt), then shut Serve down."""
    try:
        while True:
            time.sleep(poll_s)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
