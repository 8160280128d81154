"""Pipelined against sequential: the full job ``predict VIDEO --save DIR --json F`` on one video, interleaved.

Runs ``fastinst_rt.jobs.predict.predict_source`` (decode, pre-process, inference, post-process, RLE, draw + H.264
encode, COCO JSON or JSON Lines) in alternation, so a load that comes and goes hits every mode alike: pipelined and
sequential (the backend leaves ``stream.PIPELINE_RESERVED_CORES`` cores to the other work in both), and with
``--reserve0`` both again with that set to 0 (the backend keeps every core: the behaviour before); the model is
loaded once per model and warmed up first. Records per run the wall time and each stage's busy time per frame,
compares the JSON of every mode with the sequential run's (identical text, else the largest score difference and
whether the masks' RLE agree), and reports how close the pipelined run came to its slowest stage (1.0 is the ideal).

    python benchmarks/stream_pipeline.py --video v.mp4 --model demo.onnx --label demo --rounds 3 --out results/x
    python benchmarks/stream_pipeline.py --video v.mp4 --model fastinst-demo --label demo-torch --reserve0 ...
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fastinst_rt import Segmenter
from fastinst_rt.jobs.bench import machine_info
from fastinst_rt.jobs.predict import predict_source
from fastinst_rt.runtime import stream

MODES = {"pipelined": (True, stream.PIPELINE_RESERVED_CORES), "sequential": (False, stream.PIPELINE_RESERVED_CORES),
         "pipelined_reserve0": (True, 0), "sequential_reserve0": (False, 0)}  # fmt: skip


def one_run(seg: Segmenter, video: str, mode: str, work: Path, save: bool, suffix: str) -> dict:
    pipeline, stream.PIPELINE_RESERVED_CORES = MODES[mode]  # read by segment_stream at the start of the run
    out, res = (work / "out") if save else None, work / f"res{suffix}"
    start = time.perf_counter()
    summary = predict_source(seg, video, out, res, pipeline=pipeline, progress=False)
    wall = time.perf_counter() - start
    assert summary.complete, summary
    return {"mode": mode, "pipeline": pipeline, "wall_s": wall, "frames": summary.frames,
            "fps": summary.frames / wall, "stage_ms": summary.speed, "json": res.read_text()}  # fmt: skip


def json_agreement(a: str, b: str) -> dict:
    """Identical text, or the largest score difference and whether every mask's RLE agrees (COCO JSON or JSONL)."""
    if a == b:
        return {"identical": True}
    flat = [_records(a), _records(b)]
    same_rle = len(flat[0]) == len(flat[1]) and all(
        x["segmentation"] == y["segmentation"] and x["category_id"] == y["category_id"] for x, y in zip(*flat)
    )
    diff = max((abs(x["score"] - y["score"]) for x, y in zip(*flat)), default=0.0)
    return {"identical": False, "instances": [len(f) for f in flat], "same_masks": same_rle, "max_score_diff": diff}


def _records(text: str) -> list[dict]:
    """The COCO result dicts of a COCO JSON list or of JSON Lines (each line's ``instances``), in order."""
    if text.lstrip().startswith("["):
        return json.loads(text)
    return [r for line in text.splitlines() for r in json.loads(line)["instances"]]


def compare(model: str, video: str, rounds: int, backend: str | None, label: str, modes: list[str], save: bool,
            suffix: str) -> dict:  # fmt: skip
    seg = Segmenter(model, backend=backend, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        one_run(seg, video, modes[0], Path(tmp), save, suffix)  # warm-up: first-call allocations, encoder start
        runs = [one_run(seg, video, m, Path(tmp) / f"{i}", save, suffix) for i in range(rounds) for m in modes]
    stream.PIPELINE_RESERVED_CORES = MODES["pipelined"][1]
    seq_json = next(r["json"] for r in runs if r["mode"] == "sequential")
    agreement = {m: json_agreement(next(r["json"] for r in runs if r["mode"] == m), seq_json) for m in modes}
    for r in runs:
        r.pop("json")
    median = lambda m: sorted(r["wall_s"] for r in runs if r["mode"] == m)[rounds // 2]  # noqa: E731
    best_pipe = min((r for r in runs if r["mode"] == "pipelined"), key=lambda r: r["wall_s"])
    slowest = max(best_pipe["stage_ms"].values())
    frames = runs[0]["frames"]
    return {
        "label": label, "model": model, "backend": seg.backend.kind, "video": video, "rounds": rounds,
        "save": save, "json_suffix": suffix, "frames": frames, "json_vs_sequential": agreement,
        "identical_json": agreement["pipelined"]["identical"],
        "speedup_median": median("sequential") / median("pipelined"),
        "ms_per_frame": {m: median(m) * 1e3 / frames for m in modes},
        "pipelined_ms_per_frame": median("pipelined") * 1e3 / frames,
        "sequential_ms_per_frame": median("sequential") * 1e3 / frames,
        "slowest_stage_ms": slowest, "wall_over_slowest_stage": best_pipe["wall_s"] * 1e3 / frames / slowest,
        "runs": runs,
    }  # fmt: skip


def markdown(results: list[dict]) -> str:
    head = ("| model | frames | sequential ms/frame | pipelined ms/frame | speed-up | slowest stage (ms) | "
            "pipelined / slowest | identical JSON |\n|---|---|---|---|---|---|---|---|\n")  # fmt: skip
    rows = [f"| {r['label']} ({r['backend']}) | {r['frames']} | {r['sequential_ms_per_frame']:.1f} | "
            f"{r['pipelined_ms_per_frame']:.1f} | **{r['speedup_median']:.2f}x** | {r['slowest_stage_ms']:.1f} | "
            f"{r['wall_over_slowest_stage']:.2f} | {r['identical_json']} |" for r in results]  # fmt: skip
    names = list(results[0]["runs"][0]["stage_ms"])
    stages = ["\n| model | mode | ms/frame (median) | " + " | ".join(names) + " |",
              "|---|---|---|" + "---|" * len(names)]  # fmt: skip
    for r in results:
        for run in r["runs"][: len(r["ms_per_frame"])]:
            busy = " | ".join(f"{run['stage_ms'].get(k, 0.0):.1f}" for k in names)
            stages.append(f"| {r['label']} | {run['mode']} | {r['ms_per_frame'][run['mode']]:.1f} | {busy} |")
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
    ap.add_argument("--reserve0", action="store_true", help="also run both modes with no cores reserved (as before)")
    ap.add_argument("--no-save", action="store_true", help="without --save DIR (no drawing, no encoding)")
    ap.add_argument("--jsonl", action="store_true", help="--json F.jsonl instead of COCO JSON")
    ap.add_argument("--out", required=True, help="path prefix: writes .json, .md and .png")
    args = ap.parse_args()
    modes = ["pipelined", "sequential", *(["pipelined_reserve0", "sequential_reserve0"] if args.reserve0 else [])]
    suffix = ".jsonl" if args.jsonl else ".json"
    load_start = os.getloadavg()
    results = [compare(m, v, args.rounds, args.backend, lab, modes, not args.no_save, suffix)
               for m, v, lab in zip(args.model, args.video, args.label)]  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()[:20]
    record = {
        "command": " ".join(sys.argv),
        "machine": machine_info(),
        "lscpu": lscpu,
        "loadavg_at_start": load_start,
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
