"""Pipelined against sequential: the full job ``predict VIDEO --save DIR --json F`` on one video, interleaved.

Runs ``fastinst_rt.jobs.predict.predict_source`` (decode, pre-process, inference, post-process, draw + H.264
encode, COCO JSON) with ``pipeline=True`` and ``pipeline=False`` in alternation (p, s, p, s, ...), so a load that
comes and goes hits both alike; the model is loaded once per model and warmed up first. Records per run the wall
time and each stage's busy time per frame, checks that both modes wrote identical JSON, and reports how close the
pipelined run came to its slowest stage (wall per frame / busiest stage per frame; 1.0 is the ideal).

    python benchmarks/stream_pipeline.py --video v.mp4 --model demo.onnx --label demo --rounds 3 --out results/x
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

from fastinst_rt import Segmenter
from fastinst_rt.jobs.bench import machine_info
from fastinst_rt.jobs.predict import predict_source


def one_run(seg: Segmenter, video: str, pipeline: bool, work: Path, max_frames: int | None) -> dict:
    out, res = work / "out", work / "res.json"
    start = time.perf_counter()
    summary = predict_source(seg, video, out, res, pipeline=pipeline, progress=False)
    wall = time.perf_counter() - start
    assert summary.complete, summary
    return {"pipeline": pipeline, "wall_s": wall, "frames": summary.frames, "fps": summary.frames / wall,
            "stage_ms": summary.speed, "json": res.read_text()}  # fmt: skip


def compare(model: str, video: str, rounds: int, backend: str | None, label: str) -> dict:
    seg = Segmenter(model, backend=backend, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        one_run(seg, video, True, Path(tmp), None)  # warm-up: first-call allocations, encoder start
        runs = [one_run(seg, video, mode, Path(tmp) / f"{i}", None) for i in range(rounds) for mode in (True, False)]
    same = len({r.pop("json") for r in runs}) == 1
    pipe = sorted(r["wall_s"] for r in runs if r["pipeline"])
    seq = sorted(r["wall_s"] for r in runs if not r["pipeline"])
    median = lambda v: v[len(v) // 2]  # noqa: E731
    best_pipe = min((r for r in runs if r["pipeline"]), key=lambda r: r["wall_s"])
    slowest = max(best_pipe["stage_ms"].values())
    return {
        "label": label, "model": model, "backend": seg.backend.kind, "video": video, "rounds": rounds,
        "frames": runs[0]["frames"], "identical_json": same, "speedup_median": median(seq) / median(pipe),
        "pipelined_ms_per_frame": median(pipe) * 1e3 / runs[0]["frames"],
        "sequential_ms_per_frame": median(seq) * 1e3 / runs[0]["frames"],
        "slowest_stage_ms": slowest,
        "wall_over_slowest_stage": best_pipe["wall_s"] * 1e3 / best_pipe["frames"] / slowest,
        "runs": runs,
    }  # fmt: skip


def markdown(results: list[dict]) -> str:
    head = ("| model | frames | sequential ms/frame | pipelined ms/frame | speed-up | slowest stage (ms) | "
            "pipelined / slowest | identical JSON |\n|---|---|---|---|---|---|---|---|\n")  # fmt: skip
    rows = [f"| {r['label']} ({r['backend']}) | {r['frames']} | {r['sequential_ms_per_frame']:.1f} | "
            f"{r['pipelined_ms_per_frame']:.1f} | **{r['speedup_median']:.2f}x** | {r['slowest_stage_ms']:.1f} | "
            f"{r['wall_over_slowest_stage']:.2f} | {r['identical_json']} |" for r in results]  # fmt: skip
    stages = ["\n| model | mode | " + " | ".join(results[0]["runs"][0]["stage_ms"]) + " |",
              "|---|---|" + "---|" * len(results[0]["runs"][0]["stage_ms"])]  # fmt: skip
    for r in results:
        for run in r["runs"][:2]:
            mode = "pipelined" if run["pipeline"] else "sequential"
            stages.append(
                f"| {r['label']} | {mode} | " + " | ".join(f"{v:.1f}" for v in run["stage_ms"].values()) + " |"
            )
    return head + "\n".join(rows) + "\n\nBusy ms per frame of each stage (first round):\n" + "\n".join(stages) + "\n"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # One panel per model: their scales differ by orders of magnitude.
    fig, axes = plt.subplots(1, len(results), figsize=(3.6 * len(results), 3.2), squeeze=False)
    for ax, r in zip(axes[0], results):
        values = [r["sequential_ms_per_frame"], r["pipelined_ms_per_frame"]]
        ax.bar([0, 1], values, 0.6, color=["tab:blue", "tab:orange"])
        ax.axhline(r["slowest_stage_ms"], color="k", ls="--", lw=1, label="slowest stage (busy)")
        ax.text(1, values[1] * 1.02, f"{r['speedup_median']:.2f}x faster", ha="center", va="bottom")
        ax.set_xticks([0, 1], ["--no-pipeline", "pipelined"])
        ax.set_ylim(0, max(values) * 1.18)
        ax.set_title(f"{r['label']} ({r['backend']}), {r['frames']} frames", fontsize=9)
        ax.set_ylabel("ms per frame, full job")
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle("predict VIDEO --save DIR --json F on a 2-core CPU (shared with other jobs)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", action="append", required=True, help="one per --model")
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--label", action="append", required=True)
    ap.add_argument("--backend")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", required=True, help="path prefix: writes .json, .md and .png")
    args = ap.parse_args()
    results = [compare(m, v, args.rounds, args.backend, lab) for m, v, lab in zip(args.model, args.video, args.label)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()[:20]
    record = {
        "machine": machine_info(),
        "lscpu": lscpu,
        "loadavg_at_end": load,
        "note": "2-core VM shared with other jobs during the run",
        "results": results,
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    out.with_suffix(".md").write_text(markdown(results))
    plot(results, out.with_suffix(".png"))
    print(markdown(results))


if __name__ == "__main__":
    main()
