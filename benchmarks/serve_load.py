"""Load and fault benchmark of ``fastinst-rt serve`` on loopback: throughput and latency with and without dynamic
batching, the queue limit (503s, not timeouts), and a replica killed mid-run.

    python benchmarks/serve_load.py --json benchmarks/results/DATE_cpu_serve-load.json --plot ...png

Every loop is bounded in requests and in time, and sends only to 127.0.0.1. The two batching settings run as two
applications of one Serve instance, measured in alternating rounds, so a busy shared machine slows both alike:
compare them as ratios.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import ray
from ray import serve

from fastinst_rt.cli import SAMPLE_PHOTO
from fastinst_rt.serving import Client, ServerError
from fastinst_rt.serving.app import ServeConfig
from fastinst_rt.serving.server import start_server, stop_server

MODEL = "fastinst-demo"


def load(url: str, clients: int, requests: int, image: bytes, deadline_s: float, timeout: float = 60.0) -> dict:
    """``clients`` threads send ``requests`` in all (or until ``deadline_s``); latency and outcome of each."""
    client = Client(url, timeout=timeout)
    stop_at = time.perf_counter() + deadline_s

    def one(_: int) -> tuple[str, float]:
        if time.perf_counter() > stop_at:
            return "not sent (deadline)", 0.0
        t = time.perf_counter()
        try:
            client.predict(image)
            return "200", time.perf_counter() - t
        except ServerError as e:
            return str(e.status), time.perf_counter() - t
        except (ConnectionError, TimeoutError, OSError) as e:
            return f"{type(e).__name__}", time.perf_counter() - t

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        outcomes = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - start
    ok = np.array([s for o, s in outcomes if o == "200"]) * 1e3
    counts: dict[str, int] = {}
    for o, _ in outcomes:
        counts[o] = counts.get(o, 0) + 1
    return {"clients": clients, "requests": requests, "wall_s": round(wall, 3), "outcomes": counts,
            "throughput_rps": round(len(ok) / wall, 2),
            "p50_ms": round(float(np.percentile(ok, 50)), 1) if ok.size else None,
            "p99_ms": round(float(np.percentile(ok, 99)), 1) if ok.size else None}  # fmt: skip


def batching(port: int, image: bytes, rounds: int, clients: int, requests: int) -> dict:
    apps = {"batch-1": ServeConfig(MODEL, device="cpu", max_batch=1, batch_wait_ms=0, max_queued=-1),
            "batch-8": ServeConfig(MODEL, device="cpu", max_batch=8, batch_wait_ms=10, max_queued=-1)}  # fmt: skip
    urls = {name: start_server(cfg, port=port, name=name, route_prefix=f"/{name}") for name, cfg in apps.items()}
    runs: dict[str, list] = {name: [] for name in apps}
    for url in urls.values():
        load(url, clients, clients * 2, image, 60)  # warm-up
    for _ in range(rounds):
        for name, url in urls.items():
            runs[name].append(load(url, clients, requests, image, 120))
    for name in apps:
        stop_server(name)
    summary = {name: {k: float(np.median([r[k] for r in rs])) for k in ("throughput_rps", "p50_ms", "p99_ms")}
               for name, rs in runs.items()}  # fmt: skip
    ratio = summary["batch-8"]["throughput_rps"] / summary["batch-1"]["throughput_rps"]
    return {"runs": runs, "median": summary, "throughput_ratio_batch8_over_batch1": round(ratio, 3)}


def queue_limit(port: int, image: bytes) -> dict:
    """Below the limit: no error. Above it: 503s, answered at once, no timeouts."""
    cfg = ServeConfig(MODEL, device="cpu", max_batch=2, batch_wait_ms=5, max_queued=4)
    url = start_server(cfg, port=port, name="queue", route_prefix="/queue")
    # One replica holds max_batch=2 and Serve queues up to 4 more, but Serve's router may reject early while
    # requests are between its queue and a replica (its own comment in router.py): 4 clients stay clear of it.
    below = load(url, 4, 60, image, 120)
    above = load(url, 32, 160, image, 120)
    stop_server("queue")
    return {"max_batch": 2, "max_queued": 4, "below_limit": below, "above_limit": above}


def replica_fault(port: int, image: bytes, clients: int, requests: int) -> dict:
    """Kill one of two replicas after a fifth of the requests; Serve restarts it, the other keeps serving."""
    cfg = ServeConfig(MODEL, device="cpu", replicas=2, max_batch=4, batch_wait_ms=10, max_queued=-1)
    url = start_server(cfg, port=port, name="fault", route_prefix="/fault")
    replicas = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith("SERVE_REPLICA::fault#")]  # fmt: skip
    killed_at: list[float] = []

    def killer() -> None:
        time.sleep(2.0)
        ray.kill(ray.get_actor(replicas[0], namespace="serve"), no_restart=True)
        killed_at.append(time.perf_counter())

    with ThreadPoolExecutor(1) as pool:
        pool.submit(killer)
        result = load(url, clients, requests, image, 180)
    restarted_s = None
    while restarted_s is None and time.perf_counter() - killed_at[0] < 120:
        state = serve.status().applications["fault"].deployments["Segmenter"].replica_states
        if state.get("RUNNING", 0) == 2:
            restarted_s = round(time.perf_counter() - killed_at[0], 1)
        time.sleep(0.5)
    after = load(url, clients, clients * 4, image, 60)
    stop_server("fault")
    return {"replicas": 2, "max_ongoing_per_replica": 4, "during": result, "back_to_2_running_after_s": restarted_s,
            "after_restart": after}  # fmt: skip


def machine() -> dict:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()[:20]
    return {"lscpu": lscpu, "python": platform.python_version(), "ray": ray.__version__,
            "loadavg_at_start": list(Path("/proc/loadavg").read_text().split()[:3]),
            "note": "CPU only; the machine was shared with other jobs: compare settings as ratios"}  # fmt: skip


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    med = result["batching"]["median"]
    names = list(med)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    axes[0].bar(names, [med[n]["throughput_rps"] for n in names], color=["#888", "#2a7"])
    axes[0].set_title("throughput (requests/s, median of rounds)")
    x = np.arange(len(names))
    axes[1].bar(x - 0.2, [med[n]["p50_ms"] for n in names], 0.4, label="p50")
    axes[1].bar(x + 0.2, [med[n]["p99_ms"] for n in names], 0.4, label="p99")
    axes[1].set_xticks(x, names)
    axes[1].set_title("latency (ms)")
    axes[1].legend()
    fig.suptitle(f"fastinst-rt serve {MODEL}, {result['clients']} clients, 1 CPU replica, loopback", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=96, help="per round and setting")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cpus", type=int, default=6, help="logical CPUs of the local Ray cluster")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--json", required=True)
    ap.add_argument("--plot")
    args = ap.parse_args()
    image = Path(SAMPLE_PHOTO).read_bytes()
    result = {"machine": machine(), "model": MODEL, "image": "fastinst_rt/assets/astronaut.jpg (512x512)",
              "clients": args.clients}  # fmt: skip
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        result["batching"] = batching(args.port, image, args.rounds, args.clients, args.requests)
        result["queue_limit"] = queue_limit(args.port, image)
        result["replica_fault"] = replica_fault(args.port, image, 4, 80)
    finally:
        serve.shutdown()
        ray.shutdown()
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1)[:4000])
    if args.plot:
        plot(result, args.plot)


if __name__ == "__main__":
    main()
