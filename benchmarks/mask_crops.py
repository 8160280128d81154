"""Masks as box + crop against whole-image masks: post-processing + RLE + drawing at camera resolution, interleaved.

The bundled ``fastinst-demo`` model's real outputs (conf 0, ``max_det`` N) on a 1920x1080 and a 3840x2160 frame are
post-processed, RLE-encoded and drawn two ways, in alternation (dense, crop, dense, crop, ...) so that a load that
comes and goes hits both alike. The frame is a synthetic image of the kind the model was trained on (coloured
shapes, seed 7), so the masks have the sizes of real instances; ``--photo`` adds the sample photo upscaled, where
the model is outside its domain and its masks scatter over the frame (the worst case: most windows cover most of
the image and fall back to the whole-image resize).

- dense: the code before crops (``tests/dense_reference.py``): every kept mask upsampled to the whole image,
  ``boxes_from_masks``, pycocotools' ``encode`` of the (N, H, W) masks, and the former ``draw``;
- crop: ``instances_from_pairs`` (windowed upsampling, ``CropMasks``) + ``Results``, ``CropMasks.to_rle`` and
  ``Results.draw``.

Before timing, each configuration asserts identical results: scores and labels bit for bit, RLE strings byte for
byte, the dense masks equal, the drawings equal. Peak RSS of each path is measured in a child process per path (the
growth of VmHWM over the inputs already loaded). Writes a markdown table and JSON.

    python benchmarks/mask_crops.py --rounds 7 --photo --out benchmarks/results/2026-12-08_cpu_mask-crops
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.dense_reference: the former whole-image code, kept as the reference

from fastinst_rt.jobs.bench import machine_info  # noqa: E402
from fastinst_rt.runtime.postprocess import boxes_from_masks, instances_from_pairs  # noqa: E402
from fastinst_rt.runtime.preprocess import load_image  # noqa: E402
from fastinst_rt.runtime.results import Results  # noqa: E402
from tests.dense_reference import dense_draw, dense_instances_from_pairs, dense_rles  # noqa: E402

SIZES = {"1080p": (1080, 1920), "2160p": (2160, 3840)}
PHOTO = ROOT / "fastinst_rt" / "assets" / "astronaut.jpg"
SHAPES_SEED = 7


def scene(kind: str, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 RGB: "shapes", a synthetic image of the demo model's own kind (coloured shapes, up to 8)
    rendered at ``size``; "photo", the sample photo resized to it (outside the model's domain)."""
    if kind == "photo":
        return cv2.resize(load_image(str(PHOTO)), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    from fastinst_rt.training.synth import make_synthetic_dataset

    with tempfile.TemporaryDirectory() as tmp:
        ann = make_synthetic_dataset(tmp, 1, seed=SHAPES_SEED, size=size, max_instances=8, image_format="png")
        return load_image(str(next((ann.parent / "images").iterdir())))


def model_outputs(kind: str, size: tuple[int, int], n: int) -> dict:
    """The demo model's top-``n`` pairs on ``scene(kind, size)``, and the image (BGR)."""
    from fastinst_rt import Segmenter

    rgb = scene(kind, size)
    seg = Segmenter("fastinst-demo", device="cpu", conf=0.0, max_det=n)
    prepared = seg.preprocess([rgb], color="rgb")
    out = seg.infer(prepared)
    return {
        **{k: out[k][0] for k in ("scores", "labels", "query", "masks")},
        "resized": np.array(prepared.metas[0].resized_size), "padded": np.array(prepared.batch.shape[-2:]),
        "orig": np.array(size), "image": np.ascontiguousarray(rgb[:, :, ::-1]), "names": np.array(seg.class_names),
    }  # fmt: skip


def _pairs(p: dict) -> tuple:
    sizes = tuple(tuple(int(v) for v in p[k]) for k in ("resized", "padded", "orig"))
    return (p["scores"], p["labels"], p["query"], p["masks"], *sizes)


def dense_path(p: dict) -> tuple[dict, tuple]:
    """The former code: (stage ms, (scores, labels, masks, rles, drawing))."""
    t0 = time.perf_counter()
    scores, labels, masks = dense_instances_from_pairs(*_pairs(p))
    boxes = boxes_from_masks(masks)  # the former Results computed them from the dense masks
    t1 = time.perf_counter()
    rles = dense_rles(masks)
    t2 = time.perf_counter()
    view = SimpleNamespace(orig_shape=masks.shape[1:], scores=scores, labels=labels, boxes=boxes, track_ids=None,
                           class_names=list(p["names"]))  # fmt: skip
    drawing = dense_draw(view, masks, p["image"])
    t3 = time.perf_counter()
    return _ms(t0, t1, t2, t3), (scores, labels, masks, rles, drawing)


def crop_path(p: dict) -> tuple[dict, tuple]:
    """The crop code: (stage ms, (scores, labels, CropMasks, rles, drawing))."""
    t0 = time.perf_counter()
    scores, labels, crops = instances_from_pairs(*_pairs(p))
    res = Results(crops, scores, labels, list(p["names"]))
    t1 = time.perf_counter()
    rles = res.crop_masks.to_rle()
    t2 = time.perf_counter()
    drawing = res.draw(p["image"])
    t3 = time.perf_counter()
    return _ms(t0, t1, t2, t3), (scores, labels, crops, rles, drawing)


def _ms(t0: float, t1: float, t2: float, t3: float) -> dict:
    return {"postprocess": (t1 - t0) * 1e3, "rle": (t2 - t1) * 1e3, "draw": (t3 - t2) * 1e3, "total": (t3 - t0) * 1e3}


def assert_identical(dense: tuple, crop: tuple) -> None:
    """Scores and labels bit for bit, RLE strings byte for byte, dense masks and drawings equal."""
    assert np.array_equal(dense[0], crop[0]) and dense[0].dtype == crop[0].dtype, "scores differ"
    assert np.array_equal(dense[1], crop[1]), "labels differ"
    assert [r["counts"] for r in dense[3]] == [r["counts"] for r in crop[3]], "RLE strings differ"
    assert np.array_equal(dense[2], crop[2].dense()), "masks differ"
    assert np.array_equal(dense[4], crop[4]), "drawings differ"


def peak_rss(npz: Path, path: str) -> float:
    """MiB that VmHWM grows by while ``path`` runs once, in a fresh child process with the inputs loaded."""
    code = (
        "import sys, json; sys.argv = ['x']; import numpy as np\n"
        f"sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import mask_crops as b\n"
        f"p = dict(np.load({str(npz)!r}))\n"
        "def hwm():\n"
        "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
        f"before = hwm(); b.{path}_path(p); print(json.dumps((hwm() - before) / 1024))\n"
    )  # both children import the same modules and load the same inputs before the baseline
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return float(out.stdout.strip().splitlines()[-1])


def run_config(kind: str, label: str, n: int, rounds: int, work: Path) -> dict:
    p = model_outputs(kind, SIZES[label], n)
    dense, crop = dense_path(p), crop_path(p)  # warm-up, and the identity check
    assert_identical(dense[1], crop[1])
    crops = crop[1][2]
    h, w = SIZES[label]
    times: dict[str, list[dict]] = {"dense": [], "crop": []}
    for _ in range(rounds):
        times["dense"].append(dense_path(p)[0])
        times["crop"].append(crop_path(p)[0])
    npz = work / f"{kind}-{label}-{n}.npz"
    np.savez(npz, **p)
    ratios = [d["total"] / c["total"] for d, c in zip(times["dense"], times["crop"])]
    return {
        "scene": kind, "frame": label, "instances": len(crops), "rounds": rounds,
        "mean_mask_area_pct": float(crops.areas().mean() / (h * w) * 100) if len(crops) else 0.0,
        "crop_pixels_pct_of_dense": float(sum(c.size for c in crops.crops) / max(len(crops) * h * w, 1) * 100),
        "median_ms": {k: {s: float(np.median([t[s] for t in v])) for s in v[0]} for k, v in times.items()},
        "median_ratio_total": float(np.median(ratios)),
        "peak_rss_mib": {"dense": peak_rss(npz, "dense"), "crop": peak_rss(npz, "crop")},
        "identical": True,
    }  # fmt: skip


def table(rows: list[dict]) -> str:
    lines = [
        "| scene | frame | N | mean mask area | crop pixels / dense pixels | dense post / RLE / draw (ms) | "
        "crop post / RLE / draw (ms) | dense total | "
        "crop total | median ratio | peak RSS dense / crop (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d, c = r["median_ms"]["dense"], r["median_ms"]["crop"]
        lines.append(
            f"| {r['scene']} | {r['frame']} | {r['instances']} | {r['mean_mask_area_pct']:.1f}% | "
            f"{r['crop_pixels_pct_of_dense']:.1f}% | {d['postprocess']:.1f} / "
            f"{d['rle']:.1f} / {d['draw']:.1f} | {c['postprocess']:.2f} / {c['rle']:.2f} / {c['draw']:.2f} | "
            f"{d['total']:.1f} | {c['total']:.2f} | {r['median_ratio_total']:.1f}x | "
            f"{r['peak_rss_mib']['dense']:.0f} / {r['peak_rss_mib']['crop']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds per configuration (3 for 2160p x 100)")
    ap.add_argument("--instances", type=int, nargs="+", default=[1, 5, 20, 100])
    ap.add_argument("--frames", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--photo", action="store_true", help="also the photo scene, at 1080p with 20 instances")
    ap.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    args = ap.parse_args()
    rows = []
    configs = [("shapes", label, n) for label in args.frames for n in args.instances]
    configs += [("photo", "1080p", 20)] if args.photo else []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, label, n in configs:
            rounds = min(args.rounds, 3) if label == "2160p" and n >= 100 else args.rounds
            rows.append(run_config(kind, label, n, rounds, Path(tmp)))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    machine = machine_info()
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    machine["lscpu_model"] = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if "Model name" in ln), "?")
    report = {"date": datetime.date.today().isoformat(), "machine": machine, "rows": rows}
    md = f"Machine: {machine['lscpu_model']}, {machine['cpus']} CPUs, {report['date']}\n\n{table(rows)}\n"
    print("\n" + md)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(md)


if __name__ == "__main__":
    main()
