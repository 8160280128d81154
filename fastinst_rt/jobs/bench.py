"""Latency of ``Segmenter.predict`` per stage, for several models or backends measured side by side.

What is timed: ``preprocess`` (decode-free: the image is already in memory; resize as ``Segmenter.resize`` says,
pad), ``inference`` (the backend call, including host/device copies and the top-k pair selection), ``postprocess``
(mask upsampling to the original size, scoring, boxes), and ``total`` (the whole ``predict_batch`` call, wall
clock). Runs are interleaved iteration by iteration, so a load that comes and goes on the machine affects every
run alike. Percentiles are over ``iters`` timed iterations after ``warmup`` untimed ones.
"""

from __future__ import annotations

import io
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..io.outputs import write_atomic
from ..log import bar_disabled
from ..runtime.preprocess import load_image
from ..runtime.segmenter import Segmenter

__all__ = ["BenchRun", "benchmark", "markdown_table", "plot_runs", "machine_info", "STAGES"]

STAGES = ("preprocess", "inference", "postprocess", "total")


@dataclass
class BenchRun:
    """One model on one backend: per-stage statistics in milliseconds per batch, FPS in images per second."""

    model: str
    backend: str
    device: str
    precision: str
    batch: int
    input_size: list[int]  # padded network input (H, W)
    resize: str = "exact"  # the test-time resize ("exact" or "fast", ``Segmenter.resize``)
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    fps: float = 0.0
    instances: int = 0
    peak_memory_mb: float = 0.0
    memory_kind: str = ""
    padding: str = ""  # a static graph's input size and whether it masks the extra padding (runtime.padding)

    def to_dict(self) -> dict:
        return asdict(self)


def _stats(samples: Sequence[float]) -> dict[str, float]:
    a = np.asarray(samples, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"mean": float(a.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99),
            "min": float(a.min()), "max": float(a.max())}  # fmt: skip


def _peak_rss_mb() -> float:
    # ru_maxrss is kilobytes on Linux, bytes on macOS; a process-wide high-water mark.
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _cuda_peak_mb(seg: Segmenter, reset: bool) -> float | None:
    if "torch" not in sys.modules or seg.backend.kind != "torch":
        return None  # never import torch for a torch-free backend
    import torch

    if (
        not torch.cuda.is_available()
        or getattr(seg.backend, "device", None) is None
        or seg.backend.device.type != "cuda"
    ):
        return None
    if reset:
        torch.cuda.reset_peak_memory_stats(seg.backend.device)
        return 0.0
    return torch.cuda.max_memory_allocated(seg.backend.device) / 2**20


def benchmark(
    segmenters: Sequence[Segmenter],
    image: str | os.PathLike | np.ndarray,
    *,
    batch: int = 1,
    warmup: int = 5,
    iters: int = 50,
    labels: Sequence[str] | None = None,
    progress: bool = True,
) -> list[BenchRun]:
    """Time every segmenter on the same image(s), interleaved, and summarise each.

    Args:
        segmenters: already configured (model, backend, device, test size, conf).
        image: a path or an RGB HxWx3 uint8 array; a batch repeats it ``batch`` times.
        labels: display names of the runs (default: model name).
    """
    from tqdm import tqdm

    if batch < 1 or iters < 1 or warmup < 0:
        raise ValueError(f"need batch >= 1, iters >= 1 and warmup >= 0; got {batch}, {iters}, {warmup}")
    rgb = load_image(image) if not isinstance(image, np.ndarray) else image
    images = [rgb] * batch
    labels = list(labels or [s.backend.info.name for s in segmenters])
    samples: list[dict[str, list[float]]] = [{k: [] for k in STAGES} for _ in segmenters]
    instances = [0] * len(segmenters)
    for seg in segmenters:
        for _ in range(warmup):
            seg.predict_batch(images, color="rgb")
        _cuda_peak_mb(seg, reset=True)
    for _ in tqdm(range(iters), desc="bench", disable=bar_disabled(progress)):
        for i, seg in enumerate(segmenters):
            start = time.perf_counter()
            results = seg.predict_batch(images, color="rgb")
            total = (time.perf_counter() - start) * 1e3
            for stage in ("preprocess", "inference", "postprocess"):
                samples[i][stage].append(results[0].speed[stage] * batch)
            samples[i]["total"].append(total)
            instances[i] = len(results[0])
    runs = []
    for i, seg in enumerate(segmenters):
        describe = seg.backend.describe()
        padded = seg.prepare([rgb])[0].shape[-2:]
        cuda_peak = _cuda_peak_mb(seg, reset=False)
        run = BenchRun(
            model=labels[i],
            backend=seg.backend.kind,
            device=str(describe.get("device", "cpu")),
            precision=str(describe.get("precision", "fp32")),
            batch=batch,
            input_size=[int(padded[0]), int(padded[1])],
            resize=seg.resize,
            stages={k: _stats(v) for k, v in samples[i].items()},
            instances=instances[i],
            peak_memory_mb=cuda_peak if cuda_peak is not None else _peak_rss_mb(),
            memory_kind="cuda max allocated" if cuda_peak is not None else "process peak RSS",
            padding=str(describe.get("padding") or ""),
        )
        run.fps = 1e3 * batch / run.stages["total"]["p50"]
        runs.append(run)
    return runs


def machine_info() -> dict:
    """CPU, clocks where readable, GPU, and library versions, recorded beside every result."""
    info: dict = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    freq = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")
    if freq.exists():
        info["cpu_mhz"] = int(freq.read_text()) / 1000
    versions = {}
    for name in ("numpy", "cv2", "torch", "onnxruntime", "tensorrt"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "?")
    info["versions"] = versions
    if "torch" in sys.modules:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
    info.update(_gpu_clocks())
    return info


_SMI_FIELDS = ("name", "driver_version", "pstate", "clocks.sm", "clocks.max.sm", "clocks.mem", "power.limit")


def _gpu_clocks() -> dict:
    """Name, driver and clocks of each GPU from ``nvidia-smi``, or devfreq on a Jetson; {} if neither.

    Clocks decide GPU latency as much as the code does (a T4 throttles under load, a Jetson's power mode caps
    them), so they are recorded beside every result; no torch needed, the TensorRT backend runs without it.
    """
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, f"--query-gpu={','.join(_SMI_FIELDS)}", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return {}
        gpus = [dict(zip(_SMI_FIELDS, (v.strip() for v in line.split(",")))) for line in out.strip().splitlines()]
        return {"nvidia_smi": gpus}  # one entry per GPU, in nvidia-smi (PCI bus) order
    jetson = {}
    try:
        for freq in sorted(Path("/sys/class/devfreq").glob("*gpu*/cur_freq"))[:1]:
            jetson["gpu_mhz"] = int(freq.read_text()) / 1e6  # Hz
        release = Path("/etc/nv_tegra_release")
        if release.exists():
            jetson["l4t"] = release.read_text().splitlines()[0].strip("# ")
    except (OSError, ValueError, IndexError):
        pass
    return {"jetson": jetson} if jetson else {}


def markdown_table(runs: Sequence[BenchRun]) -> str:
    """One row per run: p50 / p90 / p99 ms of every stage, FPS, instances, memory."""
    head = ["model", "backend", "device", "prec", "batch", "input", "resize"]
    head += [f"{s} p50/p90/p99 ms" for s in STAGES] + ["FPS", "inst", "peak MB"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        cells = [r.model, r.backend, r.device, r.precision, str(r.batch), "x".join(map(str, r.input_size)), r.resize]
        cells += ["{p50:.1f} / {p90:.1f} / {p99:.1f}".format(**r.stages[s]) for s in STAGES]
        cells += [f"{r.fps:.1f}", str(r.instances), f"{r.peak_memory_mb:.0f}"]
        rows.append("| " + " | ".join(cells) + " |")
    # Instance counts of a static and a dynamic graph differ on another aspect ratio unless the static one masks
    # its extra padding: say so under the table, once per run that has a static input.
    notes = [f"{r.model}: {r.padding}" for r in runs if r.padding]
    return "\n".join(rows + ([""] + notes if notes else []))


def write_json(runs: Sequence[BenchRun], path: str | os.PathLike, extra: dict | None = None) -> None:
    """``{"machine": ..., "runs": [...]}`` written whole (temporary file, then rename)."""
    write_atomic(
        path, json.dumps({"machine": machine_info(), **(extra or {}), "runs": [r.to_dict() for r in runs]}, indent=2)
    )


def plot_runs(runs: Sequence[BenchRun], path: str | os.PathLike, title: str = "") -> None:
    """A PNG: per run, stacked p50 bars of pre/inference/post with the p90 of the total as a whisker."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("--plot needs matplotlib: pip install 'fastinst-rt[plot]'") from e
    # Bars at numeric positions (two runs may carry the same name), labels wrapped to the bar width.
    x = np.arange(len(runs))
    names = [f"{_wrap(r.model)}\n{r.backend} {r.device} {r.precision}" for r in runs]
    fig, ax = plt.subplots(figsize=(max(6.0, 2.2 * len(runs)), 4.8))
    bottom = np.zeros(len(runs))
    colors = {"preprocess": "#8da0cb", "inference": "#fc8d62", "postprocess": "#66c2a5"}
    for stage, color in colors.items():
        values = np.array([r.stages[stage]["p50"] for r in runs])
        ax.bar(x, values, bottom=bottom, color=color, label=f"{stage} (p50)")
        bottom += values
    ax.set_xticks(x, names, fontsize=8)
    totals = np.array([r.stages["total"]["p50"] for r in runs])
    p90 = np.array([r.stages["total"]["p90"] for r in runs])
    ax.errorbar(x, totals, yerr=[np.zeros_like(p90), np.maximum(p90 - totals, 0)], fmt="none", ecolor="k",
                capsize=6, label="total p50 -> p90")  # fmt: skip
    top = np.maximum(p90, totals)
    for i, (t, r) in enumerate(zip(top, runs)):
        ax.text(
            i, t * 1.02, f"{r.stages['total']['p50']:.1f} ms\n{r.fps:.1f} FPS", ha="center", va="bottom", fontsize=9
        )
    ax.set_ylabel("milliseconds per batch")
    ax.set_ylim(0, top.max() * 1.25)
    ax.set_title(title or "fastinst-rt latency per stage")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    picture = io.BytesIO()  # rendered in memory, then written whole (never a half-written file)
    fig.savefig(picture, format=Path(path).suffix.lstrip(".").lower() or "png", dpi=120)
    plt.close(fig)
    write_atomic(path, picture.getvalue())


def _wrap(name: str, width: int = 20) -> str:
    """Break a long model or file name into lines of at most ~``width`` characters after '_', '-' or '.'."""
    lines, line = [], ""
    for piece in re.split(r"(?<=[_.-])", name):
        if line and len(line) + len(piece) > width:
            lines.append(line)
            line = ""
        line += piece
    return "\n".join([*lines, line])
