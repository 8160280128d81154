"""The GPU check in one call: CUDA-marked tests, the torch backend timed on CUDA (FP32/FP16, with and without CUDA
graphs) for FastInst-D1-R50 and -D3-R50, and CUDA against CPU outputs on the parity photos. JSON under --out.

    bash benchmarks/gpu_check.sh                       # on the GPU machine: installs the carried wheels, then this
    bash benchmarks/gpu_check.sh --device cpu          # dry run here: every step on the CPU (FP32 timings only)

Weights: ``benchmarks/random_checkpoint.py`` (seeded, 10 instances pass conf 0.3 on the shipped photo), so latency
includes a realistic post-processing load. No TensorRT on that machine: the TensorRT tests skip and say so.
The timings are interleaved per model (``jobs.bench.benchmark``); TF32 is off for the FP32 runs and the parity
check (the official evaluation ran in full FP32).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

MODELS = ("fastinst-r50-d1", "fastinst-r50-d3")
PHOTOS = ("astronaut", "coffee", "chelsea")  # scikit-image's, as in the parity check
HERE = Path(__file__).resolve().parent


def _step(results: dict, name: str, fn, *args) -> None:  # noqa: ANN001 - any step function
    """Run one step, record its result or its error (a failed step does not stop the others), save at once."""
    start = time.perf_counter()
    try:
        results[name] = {"ok": True, **fn(*args)}
    except Exception as exc:  # noqa: BLE001 - the check reports every failure and goes on
        results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-3000:]}
    results[name]["seconds"] = round(time.perf_counter() - start, 1)
    print(f"[gpu_check] {name}: {'ok' if results[name]['ok'] else results[name]['error']} "
          f"({results[name]['seconds']} s)", flush=True)  # fmt: skip


def run_tests(out: Path) -> dict:
    """The CUDA/GPU-marked tests (tests/test_cuda.py and the TensorRT ones, which skip without TensorRT)."""
    xml = out / "gpu_tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-rs", f"--junitxml={xml}", "tests/"]
    proc = subprocess.run(cmd, cwd=HERE.parent, capture_output=True, text=True, timeout=900)
    tail = proc.stdout.strip().splitlines()[-15:]
    return {"returncode": proc.returncode, "summary": tail, "passed": proc.returncode in (0, 5)}


def checkpoints(work: Path, models: list[str]) -> dict:
    sys.path.insert(0, str(HERE))
    from random_checkpoint import random_checkpoint

    made = {}
    for name in models:
        path, reached = random_checkpoint(name, work / name, 10)
        made[name] = {"path": str(path), "instances": reached}
    return made


def timings(ckpts: dict, device: str, warmup: int, iters: int, out: Path) -> dict:
    """Per model: the torch backend in FP32 and FP16, each with and without CUDA graphs, interleaved."""
    import torch

    from fastinst_rt import Segmenter
    from fastinst_rt.cli import SAMPLE_PHOTO
    from fastinst_rt.jobs.bench import benchmark, machine_info

    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    cuda = device.startswith("cuda")
    configs = [("fp32", False, False), ("fp16", True, False), ("fp32+graph", False, True), ("fp16+graph", True, True)]
    if not cuda:  # half and CUDA graphs need CUDA: the dry run times FP32 only
        configs = configs[:1]
    report = {"machine": machine_info(), "models": {}}
    for name, c in ckpts.items():
        segs = [Segmenter(c["path"], device=device, half=h, cuda_graph=g) for _, h, g in configs]
        labels = [f"{name} {label}" for label, _, _ in configs]
        runs = benchmark(segs, SAMPLE_PHOTO, warmup=warmup, iters=iters, labels=labels, progress=False)
        report["models"][name] = [r.to_dict() for r in runs]
        for r in runs:
            t = r.stages["total"]
            print(f"  {r.model}: total p50 {t['p50']:.2f} ms (inference {r.stages['inference']['p50']:.2f})")
        for seg in segs:
            seg.close()
    (out / "timings.json").write_text(json.dumps(report, indent=1))
    return {"file": "timings.json", "p50_total_ms": {r["model"]: r["stages"]["total"]["p50"]
                                                      for rs in report["models"].values() for r in rs}}  # fmt: skip


def parity(ckpts: dict, device: str) -> dict:
    """CUDA (FP32, TF32 off) against CPU on the parity photos: instances matched by label and mask IoU."""
    import torch
    from skimage import data

    from fastinst_rt import Segmenter
    from fastinst_rt.export.checks import compare_instances

    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    report = {}
    for name, c in ckpts.items():
        cpu = Segmenter(c["path"], device="cpu", conf=0.0, max_det=100)
        dev = Segmenter(c["path"], device=device, conf=0.0, max_det=100)
        for photo in PHOTOS:
            rgb = getattr(data, photo)()
            a, b = cpu.predict(rgb, color="rgb"), dev.predict(rgb, color="rgb")
            ref = {"scores": a.scores[None], "labels": a.labels[None], "masks": a.masks[None].astype(np.float32) - 0.5}
            got = {"scores": b.scores[None], "labels": b.labels[None], "masks": b.masks[None].astype(np.float32) - 0.5}
            agreement = compare_instances(ref, got, top_k=10).to_dict()
            top = min(10, len(a), len(b))
            agreement["max_top10_score_diff_by_rank"] = float(np.abs(a.scores[:top] - b.scores[:top]).max(initial=0))
            report[f"{name}/{photo}"] = agreement
            print(f"  {name}/{photo}: {agreement}")
    worst = min(r["mask_iou"] for r in report.values())
    return {"cases": report, "worst_mask_iou": worst, "max_score_diff": max(r["score_diff"] for r in report.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a dry run)")
    ap.add_argument("--out", type=Path, required=True, help="folder for the JSON results")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--models", nargs="+", default=list(MODELS), help="zoo names (a CPU dry run may take test ones)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"device": args.device, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            sys.exit("gpu_check: --device cuda but PyTorch sees no GPU (use --device cpu for a dry run)")
    if not args.skip_tests:
        _step(results, "tests", run_tests, args.out)
    _step(results, "checkpoints", checkpoints, args.out.parent / "gpu-check-ckpt", args.models)
    ckpts = {k: v for k, v in results["checkpoints"].items() if isinstance(v, dict)}
    if results["checkpoints"]["ok"]:
        _step(results, "timings", timings, ckpts, args.device, args.warmup, args.iters, args.out)
        _step(results, "parity", parity, ckpts, args.device)
    results["ok"] = all(v.get("ok", True) for v in results.values() if isinstance(v, dict))
    (args.out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"[gpu_check] wrote {args.out / 'gpu_check.json'}: {'all ok' if results['ok'] else 'FAILURES'}")
    sys.exit(0 if results["ok"] else 1)


if __name__ == "__main__":
    main()
