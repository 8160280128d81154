"""What makes a static graph give other instances than the dynamic one on another aspect ratio: an ablation.

The official model sees each image padded to the next multiple of 32 (a); a static graph pads it to one fixed HxW
(b). This runs the bundled model in PyTorch through the deploy wrapper on the same resized image both ways, with
each padding component of ``fastinst_rt.export.padding`` (masking the extra padding of (b)) switched on alone, all
of them but one, all and none, and compares the final instances of (b) with those of (a).

    fastinst-rt synth -o syn/s2025_256x256 --num 12 --seed 2025 --size 256x256    # and 320x256, 256x448
    python benchmarks/static_padding.py --data syn/s2025_256x256 syn/s2025_320x256 syn/s2025_256x448

Prints a table and writes ``benchmarks/results/<date>_static-padding_ablation.json`` (with the CPU from lscpu).
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from fastinst_rt import load_model
from fastinst_rt.export.deploy import DeployModel
from fastinst_rt.export.onnx_export import default_imgsz
from fastinst_rt.export.padding import COMPONENTS
from fastinst_rt.runtime.postprocess import instances_from_outputs
from fastinst_rt.runtime.preprocess import load_image, pad_batch, prepare

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.compare import match_instances, matched_errors  # noqa: E402  (the tests' instance matching, one definition)

CONF = 0.3  # the Segmenter's default: the instances a user sees


class Instances(NamedTuple):
    scores: np.ndarray  # (N,)
    labels: np.ndarray  # (N,)
    masks: np.ndarray  # (N, H, W) bool


class Case(NamedTuple):
    name: str
    image: np.ndarray  # (H, W, 3) uint8 RGB, original size


def photos() -> list[Case]:
    """scikit-image's photos: square, 3:2 landscape, and a portrait crop."""
    from skimage import data

    return [Case("astronaut", data.astronaut()), Case("coffee", data.coffee()), Case("chelsea", data.chelsea()),
            Case("astronaut-portrait", np.ascontiguousarray(data.astronaut()[:, 100:400]))]  # fmt: skip


def synthetic(folders: list[Path], per_folder: int) -> list[Case]:
    """The first ``per_folder`` images of each ``fastinst-rt synth`` folder (held-out seeds)."""
    cases = []
    for folder in folders:
        for path in sorted((folder / "images").iterdir())[:per_folder]:
            cases.append(Case(f"{folder.name}/{path.name}", load_image(path, "rgb")))
    return cases


def inputs(image: np.ndarray, test_size: tuple[int, int], fixed: tuple[int, int]) -> tuple[tuple, tuple, tuple]:
    """The static graph's resized image padded (a) to /32 as the official code does and (b) to ``fixed``.

    Returns ((batch, sizes) of a, (batch, sizes) of b, (resized (h, w), original (h, w))).
    """
    b_batch, sizes, (info,) = prepare([image], *test_size, fixed_size=fixed)
    h, w = info.resized_size
    a_batch, _ = pad_batch([np.ascontiguousarray(b_batch[0, :, :h, :w].transpose(1, 2, 0))])
    return (a_batch, sizes), (b_batch, sizes), (info.resized_size, info.orig_size)


def instances(wrapper: DeployModel, batch: np.ndarray, sizes: np.ndarray, meta: tuple) -> tuple[Instances, tuple]:
    """Final instances at ``CONF`` and the raw outputs ((1, Q, K+1) logits, (1, Q, h, w) mask logits) of one image
    through ``wrapper`` (raw)."""
    with torch.no_grad():
        logits, masks = (t.numpy() for t in wrapper(torch.from_numpy(batch), torch.from_numpy(sizes)))
    scores, labels, m = instances_from_outputs(logits[0], masks[0], meta[0], batch.shape[-2:], meta[1], conf=CONF)
    return Instances(scores, labels, m), (logits, masks)


def variants() -> dict[str, tuple[str, ...]]:
    """Name -> masked components: none, each alone, all but each, all."""
    out: dict[str, tuple[str, ...]] = {"none": ()}
    out.update({f"only {c}": (c,) for c in COMPONENTS})
    out.update({f"all but {c}": tuple(x for x in COMPONENTS if x != c) for c in COMPONENTS})
    out["all"] = COMPONENTS
    return out


def agree(ref: Instances, ours: Instances) -> dict:
    """Count, labels, worst score difference and mask IoU of ``ours`` against ``ref``."""
    m = match_instances(ref, ours)
    same = len(ref.scores) == len(ours.scores) and m.label_agreement == 1.0 and m.max_score_diff <= 1e-3
    diff = m.max_score_diff if np.isfinite(m.max_score_diff) else None  # None: an instance without a partner
    return {"count_ref": len(ref.scores), "count": len(ours.scores), "score_diff": diff,
            "min_iou": m.min_iou, "same": bool(same and m.min_iou >= 0.9)}  # fmt: skip


def summarize(rows: list[dict]) -> dict:
    """Over images: share with the same instances, mean |count difference|, worst score diff, worst IoU, logits."""
    finite = [r["score_diff"] for r in rows if r["score_diff"] is not None]
    return {
        "same": sum(r["same"] for r in rows) / len(rows),
        "count_diff": float(np.mean([abs(r["count"] - r["count_ref"]) for r in rows])),
        "count_ref": int(sum(r["count_ref"] for r in rows)), "count": int(sum(r["count"] for r in rows)),
        "score_diff_max": max(finite) if finite else None,
        "unmatched": sum(r["score_diff"] is None for r in rows),
        "min_iou": float(min(r["min_iou"] for r in rows)),
        "logit_rel_error": float(max(r["logit_rel_error"] for r in rows)),
        "mask_rel_error": float(max(r["mask_rel_error"] for r in rows)),
    }  # fmt: skip


def run(cases: list[Case], test_size: tuple[int, int], fixed: tuple[int, int]) -> dict[str, dict]:
    """Every variant on every case: {variant: {"images": [...], "summary": {...}}}."""
    model = load_model("fastinst-demo")
    reference = DeployModel(model, raw=True).eval()
    prepared = []
    for case in cases:
        a, b, meta = inputs(case.image, test_size, fixed)
        ref, ref_raw = instances(reference, *a, meta)
        prepared.append((case, b, meta, ref, ref_raw))
    out = {}
    for name, comps in variants().items():
        wrapper, rows = DeployModel(model, raw=True, padding=comps).eval(), []
        for case, b, meta, ref, (ref_l, ref_m) in prepared:
            ours, (logits, masks) = instances(wrapper, *b, meta)
            # Raw outputs as sets of queries (tied proposal scores may leave top-k in another order), the masks
            # over the official input's extent.
            err = matched_errors(logits, masks[..., : ref_m.shape[2], : ref_m.shape[3]], ref_l, ref_m)
            rows.append({"image": case.name, "resized": list(meta[0]), **agree(ref, ours),
                         "logit_rel_error": err[0], "mask_rel_error": err[1]})  # fmt: skip
        out[name] = {"components": list(comps), "images": rows, "summary": summarize(rows)}
        print(f"{name:>16}: {_line(out[name]['summary'])}", file=sys.stderr, flush=True)
    return out


def _line(s: dict) -> str:
    diff = "-" if s["score_diff_max"] is None else f"{s['score_diff_max']:.2e}"
    return (f"same {100 * s['same']:5.1f}% | count {s['count']}/{s['count_ref']} (mean |d| {s['count_diff']:.2f}) | "
            f"max score diff {diff} ({s['unmatched']} unmatched) | min IoU {s['min_iou']:.3f} | "
            f"rel. error logits {s['logit_rel_error']:.1e} masks {s['mask_rel_error']:.1e}")  # fmt: skip


def table(results: dict[str, dict], groups: dict[str, list[str]]) -> str:
    """Markdown: one row per variant; per group of images, how many give the same instances; over all images the
    instance count (official), images with an unmatched instance, the worst score difference and mask IoU."""
    head = ["masked", *(f"same: {g}" for g in groups), "instances (official)", "unmatched", "max score diff",
            "min IoU", "rel. error logits / masks"]  # fmt: skip
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, res in results.items():
        s, cells = res["summary"], [name]
        for members in groups.values():
            sel = [r for r in res["images"] if r["image"] in members]
            cells.append(f"{sum(r['same'] for r in sel)}/{len(sel)}")
        diff = "-" if s["score_diff_max"] is None else f"{s['score_diff_max']:.1e}"
        cells += [f"{s['count']} ({s['count_ref']})", str(s["unmatched"]), diff, f"{s['min_iou']:.2f}",
                  f"{s['logit_rel_error']:.1e} / {s['mask_rel_error']:.1e}"]  # fmt: skip
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "?")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="*", type=Path, default=[], help="fastinst-rt synth folders (held-out seeds)")
    p.add_argument("--per-folder", type=int, default=12)
    p.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args()
    torch.set_num_threads(1)  # the machine is shared; numbers here are agreement, not speed
    test_size = (256, 341)  # fastinst-demo's
    fixed = default_imgsz(test_size)  # the default static export: 256x352
    cases = photos() + synthetic(args.data, args.per_folder)
    groups = {"photos": [c.name for c in photos()]}
    for folder in args.data:
        groups[folder.name] = [c.name for c in cases if c.name.startswith(folder.name + "/")]
    start = time.time()
    results = run(cases, test_size, fixed)
    print(table(results, groups))
    today = datetime.date.today().isoformat()
    record = {"date": today, "cpu": cpu_model(), "torch": torch.__version__, "model": "fastinst-demo",
              "test_size": list(test_size), "static_size": list(fixed), "conf": CONF, "groups": groups,
              "seconds": round(time.time() - start, 1), "variants": results}  # fmt: skip
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"{today}_static-padding_ablation.json"
    path.write_text(json.dumps(record, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
