"""Argument wiring of the scale-out subcommands (``serve``, ``export-triton``, ``predict --ray``), kept out of
``fastinst_rt/cli.py``. Importing this module imports neither Ray nor tritonclient: the commands import them."""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["add_serve_parser", "add_export_triton_parser", "add_ray_options", "cmd_predict_ray"]


def add_serve_parser(sub: argparse._SubParsersAction, add_model_options: Callable) -> None:
    from ..cli_parser import IntRange, fraction, non_negative_float, positive_int
    from ..runtime.preprocess import MAX_SIDE
    from .wire import MAX_PIXELS

    port, max_det, max_queued = IntRange(1, 65535), IntRange(1, 1000), IntRange(-1)  # 1000: app.MAX_DET_LIMIT
    max_pixels = IntRange(1, MAX_SIDE * MAX_SIDE)
    p = sub.add_parser("serve", help="serve a model over HTTP on Ray Serve (replicas, dynamic batching)")
    p.add_argument("model", help="checkpoint, artifact or zoo name (a path must exist on every node)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=port, default=8000, help=f"HTTP port, {port.text} (default 8000)")
    p.add_argument("--replicas", type=positive_int, default=1, help="replicas, >= 1 (the minimum with "
                   "--max-replicas); one per GPU")  # fmt: skip
    p.add_argument("--max-replicas", type=positive_int, help="autoscale between --replicas and this many (>= 1)")
    p.add_argument("--max-batch", type=positive_int, default=8, help="largest dynamic batch (>= 1, default 8)")
    p.add_argument("--batch-wait-ms", type=non_negative_float, default=10.0, help="longest wait to fill a batch "
                   "(>= 0, default 10)")  # fmt: skip
    p.add_argument("--max-queued", type=max_queued, default=64, help="waiting requests beyond which 503 "
                   "(>= -1; -1: no limit; default 64)")  # fmt: skip
    p.add_argument("--replica-cpus", type=non_negative_float, default=1.0, help="logical CPUs per replica "
                   "(>= 0, default 1)")  # fmt: skip
    p.add_argument("--conf", type=fraction, default=0.3, help="default minimum score, in [0, 1] (a request's conf "
                   "overrides)")  # fmt: skip
    p.add_argument("--max-det", type=max_det, default=100, help=f"default instances per image, {max_det.text} "
                   "(max_det overrides)")  # fmt: skip
    p.add_argument("--max-pixels", type=max_pixels, default=MAX_PIXELS, help="largest request image, width x height, "
                   f"{max_pixels.text} (default {MAX_PIXELS}: 4096 x 4096); larger ones get 413")  # fmt: skip
    p.add_argument("--address", help="a running Ray cluster (default: start a local one)")
    add_model_options(p)
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    if args.half:
        raise ValueError("serve takes --half through the artifact: serve an --fp16 export or engine")
    if args.max_replicas is not None and args.max_replicas < args.replicas:
        raise ValueError(f"--max-replicas {args.max_replicas} is below --replicas {args.replicas}")
    _check_model(args)  # before Ray (and its import, seconds): a bad model fails at once, not after the replicas
    if args.address is None:
        _check_port(args.host, args.port)  # a local Ray's proxy would listen here
    from .app import ServeConfig
    from .server import serve_until_interrupted, start_server

    config = ServeConfig(
        args.model, backend=args.backend, device=args.device, conf=args.conf, max_det=args.max_det,
        min_size=args.min_size, max_size=args.max_size, resize=args.resize, replicas=args.replicas,
        max_replicas=args.max_replicas,
        max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms, max_queued=args.max_queued,
        num_cpus=args.replica_cpus, max_pixels=args.max_pixels,
    )  # fmt: skip
    url = start_server(config, host=args.host, port=args.port, address=args.address)
    print(f"serving {args.model} at {url}/v1/segment ({args.replicas} replica(s), batch <= {args.max_batch}); "
          "Ctrl-C stops", flush=True)  # fmt: skip
    serve_until_interrupted()
    return 0


def _check_model(args: argparse.Namespace) -> None:
    """Load the model once here, on the CPU, and close it, as every replica will load it: a missing, corrupt or
    non-finite file, or a bad test size, is refused before Ray starts. An engine only loads on its GPU: its file
    and sidecar are checked instead (no CUDA context is kept in this process)."""
    from ..runtime.backends import backend_for
    from ..runtime.segmenter import Segmenter

    if (args.backend or backend_for(args.model)) == "tensorrt":
        from ..artifact import read_sidecar

        read_sidecar(args.model)
        return
    Segmenter(args.model, backend=args.backend, device="cpu", conf=args.conf, max_det=args.max_det,
              min_size=args.min_size, max_size=args.max_size).close()  # fmt: skip


def _check_port(host: str, port: int) -> None:
    """OSError naming the port if this host cannot listen on ``host:port`` (taken, or not one of its addresses)."""
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the HTTP server will: TIME_WAIT is no obstacle
            s.bind((host, port))
    except OSError as e:
        raise OSError(f"--port {port}: cannot listen on {host}:{port} ({e.strerror or e}); choose another port or "
                      "--host") from None  # fmt: skip


def add_ray_options(p: argparse.ArgumentParser) -> None:
    """``predict``'s options for the Ray Data path."""
    from ..cli_parser import positive_int

    p.add_argument("--ray", action="store_true", help="run on Ray Data: an actor pool, sharded durable results")
    p.add_argument("--address", help="with --ray: a running Ray cluster (default: start a local one)")
    p.add_argument("--workers", type=positive_int, help="with --ray: Segmenter actors, >= 1 (default one per GPU, "
                   "else CPUs - 1)")  # fmt: skip
    p.add_argument("--shard-size", type=positive_int, default=64, help="with --ray: images per result shard "
                   "(>= 1, default 64)")  # fmt: skip


def cmd_predict_ray(args: argparse.Namespace) -> int:
    from .batch import predict_ray

    if not args.json:
        raise ValueError("predict --ray writes its results with --json OUT (shards beside it in OUT.shards/)")
    if args.save:
        raise ValueError("predict --ray writes JSON only; --save (annotated pictures) runs without --ray")
    if args.half:
        raise ValueError("predict --ray takes precision from the artifact: use an --fp16 export or engine")
    summary = predict_ray(
        args.model, args.source, args.json, workers=args.workers, address=args.address, shard_size=args.shard_size,
        progress=not args.quiet, backend=args.backend, device=args.device, conf=args.conf, max_det=args.max_det,
        min_size=args.min_size, max_size=args.max_size, **({"resize": args.resize} if args.resize else {}),
    )  # fmt: skip
    print(f"{summary.images} image(s), {summary.instances} instance(s) at conf >= {args.conf}; "
          f"{summary.shards_written} shard(s) written, {summary.shards_skipped} already there")  # fmt: skip
    for name, reason in summary.errors.items():
        print(f"skipped {name}: {reason}")
    for path in summary.written:
        print(f"wrote {path}")
    return 0


def add_export_triton_parser(sub: argparse._SubParsersAction) -> None:
    from ..cli_parser import non_negative_int, positive_int

    p = sub.add_parser("export-triton", help="write a Triton Inference Server model repository for an artifact")
    p.add_argument("artifact", help="an .onnx export or an .engine/.plan with its sidecar")
    p.add_argument("--repo", required=True, help="model repository folder (DIR/<name>/1/model.onnx|plan)")
    p.add_argument("--name", help="model name in the repository (default: the artifact's file stem)")
    p.add_argument("--max-batch", type=positive_int, default=8, help="max_batch_size of a dynamic-batch artifact "
                   "(>= 1, default 8)")  # fmt: skip
    p.add_argument("--instances", type=positive_int, default=1, help="model instances per device (>= 1, default 1)")
    p.add_argument("--kind", choices=("gpu", "cpu"), default="gpu", help="where Triton runs the instances: KIND_GPU "
                   "or KIND_CPU (default gpu; an ONNX model runs on either, a TensorRT plan on GPUs only)")  # fmt: skip
    p.add_argument("--max-queue-delay-us", type=non_negative_int, default=2000, help="dynamic batcher wait in "
                   "microseconds (>= 0, default 2000)")  # fmt: skip
    p.set_defaults(func=_cmd_export_triton)


def _cmd_export_triton(args: argparse.Namespace) -> int:
    from fastinst_rt.export.triton import write_model_repository

    config = write_model_repository(
        args.artifact, args.repo, name=args.name, max_batch=args.max_batch, instances=args.instances,
        kind=args.kind, max_queue_delay_us=args.max_queue_delay_us,
    )  # fmt: skip
    print(f"wrote {config.parent}/ ({config.name} and 1/)")
    return 0
