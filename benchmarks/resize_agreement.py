"""Pre-processing at camera resolution: the official resize against faster ones, for speed and for agreement.

The official resize (PIL bilinear on uint8, which antialiases with a triangle filter as wide as the scale) is what
``resize="exact"`` runs. The candidates:

- ``fast``: ``preprocess.resize_image(..., "fast")``, exact 2x2 box halvings (OpenCV's integer ``INTER_AREA``) while at
  least a factor 4 is left, then the official PIL bilinear for the rest: what PIL's own ``reducing_gap=2`` computes.
- ``pil_gap2``: PIL's ``resize(..., reducing_gap=2.0)`` (``Image.reduce`` box then bilinear).
- ``fast_gap1``: the same halvings while a factor 2 is left (the last bilinear step shrinks less than 2x).
- ``cv_area``, ``cv_linear``: OpenCV ``INTER_AREA`` / ``INTER_LINEAR`` straight to the size (no PIL).

Measured, each against ``exact``: the time of one resize of a 1080p and a 2160p frame (interleaved, median); the
pixel differences; the instances of the bundled model on scikit-image's photos (native size and upscaled to a 1080
short side, conf 0, top 20); and mask AP of the bundled model on the held-out synthetic set
(``fastinst-rt synth --num 200 --seed 7``, 256x320) upscaled 4.22x to 1080x1350 (bilinear, masks nearest).

    python benchmarks/resize_agreement.py --work /tmp/rs --out benchmarks/results/<date>_cpu_resize-agreement
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from skimage import data

from fastinst_rt import Segmenter
from fastinst_rt.jobs.bench import machine_info
from fastinst_rt.jobs.evaluate import evaluate_coco
from fastinst_rt.runtime.preprocess import pad_batch, resize_image, resized_size
from fastinst_rt.training.synth import make_synthetic_dataset

Resize = Callable[[np.ndarray, tuple[int, int]], np.ndarray]
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "retina", "immunohistochemistry", "hubble_deep_field",
          "colorwheel")  # fmt: skip


def _pil_gap(rgb: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).resize((hw[1], hw[0]), Image.BILINEAR, reducing_gap=2.0))


def _halve_then_pil(gap: float) -> Resize:
    def resize(rgb: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
        cur = rgb
        while (
            not cur.shape[0] % 2 and not cur.shape[1] % 2 and min(cur.shape[0] / hw[0], cur.shape[1] / hw[1]) >= 2 * gap
        ):
            cur = cv2.resize(cur, (cur.shape[1] // 2, cur.shape[0] // 2), interpolation=cv2.INTER_AREA)
        return resize_image(cur, hw)

    return resize


def _cv(interpolation: int) -> Resize:
    return lambda rgb, hw: cv2.resize(rgb, (hw[1], hw[0]), interpolation=interpolation)


CANDIDATES: dict[str, Resize] = {
    "exact": lambda rgb, hw: resize_image(rgb, hw, "exact"),
    "fast": lambda rgb, hw: resize_image(rgb, hw, "fast"),
    "pil_gap2": _pil_gap,
    "fast_gap1": _halve_then_pil(1.0),
    "cv_area": _cv(cv2.INTER_AREA),
    "cv_linear": _cv(cv2.INTER_LINEAR),
}


class CandidateSegmenter(Segmenter):
    """The bundled model with one candidate resize in place of ``preprocess.prepare``'s (dynamic input sizes only)."""

    resize_fn: Resize = CANDIDATES["exact"]

    def prepare(self, rgb: Sequence[np.ndarray]) -> tuple:
        sizes = [resized_size(*im.shape[:2], self.min_size, self.max_size) for im in rgb]
        batch, valid = pad_batch(
            [self.resize_fn(im, s) for im, s in zip(rgb, sizes)], self.backend.info.size_divisibility
        )
        from fastinst_rt.runtime.preprocess import PreprocessInfo

        return batch, valid, [PreprocessInfo(im.shape[:2], s) for im, s in zip(rgb, sizes)]


def frame(h: int, w: int) -> np.ndarray:
    """A camera-sized RGB frame: the astronaut photo upscaled (bicubic) to ``h`` x ``w``."""
    return cv2.resize(data.astronaut(), (w, h), interpolation=cv2.INTER_CUBIC)


def timings(rounds: int = 30) -> dict:
    """Median ms of one resize per candidate at 1080p and 2160p (to the bundled model's 192x341), interleaved."""
    out = {}
    for h, w in ((1080, 1920), (2160, 3840)):
        img, hw = frame(h, w), resized_size(h, w, 256, 341)
        ref = CANDIDATES["exact"](img, hw)
        samples: dict[str, list[float]] = {k: [] for k in CANDIDATES}
        for _ in range(rounds):
            for name, fn in CANDIDATES.items():
                t0 = time.perf_counter()
                fn(img, hw)
                samples[name].append(time.perf_counter() - t0)
        for name, fn in CANDIDATES.items():
            d = np.abs(fn(img, hw).astype(np.int16) - ref)
            out[f"{h}p/{name}"] = {
                "ms": float(np.median(samples[name]) * 1e3), "mean_abs_diff": float(d.mean()),
                "p99_abs_diff": float(np.percentile(d, 99)), "max_abs_diff": int(d.max()),
            }  # fmt: skip
    return out


def _match(ref, res, conf: float) -> dict:
    """Instances of ``ref`` at score >= conf matched in ``res`` (same label, greedy by mask IoU >= 0.5)."""
    keep = np.flatnonzero(ref.scores >= conf)
    if len(res) == 0 or len(keep) == 0:
        return {"ref": len(keep), "matched": 0, "ious": [], "score_diffs": []}
    iou = ref.crop_masks[keep].iou(res.crop_masks)
    iou[ref.labels[keep][:, None] != res.labels[None, :]] = 0
    matched, ious, diffs, used = 0, [], [], set()
    for i in np.argsort(-ref.scores[keep], kind="stable"):
        j = int(np.argmax(np.where([k in used for k in range(len(res))], -1, iou[i])))
        if iou[i, j] >= 0.5 and j not in used:
            used.add(j)
            matched += 1
            ious.append(float(iou[i, j]))
            diffs.append(abs(float(ref.scores[keep][i] - res.scores[j])))
    return {"ref": len(keep), "matched": matched, "ious": ious, "score_diffs": diffs}


def photo_agreement(segs: dict[str, CandidateSegmenter]) -> dict:
    """Per candidate: exact's instances (score >= 0.3 of the top 20) found again, mean IoU, worst score change."""
    totals: dict[str, dict] = {k: {"ref": 0, "matched": 0, "ious": [], "score_diffs": []} for k in segs}
    for name in PHOTOS:
        photo = getattr(data, name)()
        h, w = photo.shape[:2]
        big = cv2.resize(
            photo, (round(w * 1080 / min(h, w)), round(h * 1080 / min(h, w))), interpolation=cv2.INTER_CUBIC
        )
        for img in (photo, big):
            ref = segs["exact"].predict(img, color="rgb")
            for cand, seg in segs.items():
                m = _match(ref, seg.predict(img, color="rgb"), 0.3)
                for k in totals[cand]:
                    totals[cand][k] += m[k]
    return {
        k: {"instances": t["ref"], "matched": t["matched"], "mean_iou": float(np.mean(t["ious"] or [0])),
            "min_iou": float(np.min(t["ious"] or [0])), "max_score_diff": float(np.max(t["score_diffs"] or [0]))}
        for k, t in totals.items()
    }  # fmt: skip


def upscaled_synth(work: Path, factor: float = 1080 / 256) -> tuple[Path, Path]:
    """The seed-7 held-out set, written at 256x320, and its copy upscaled by ``factor`` (images bilinear, PNG;
    masks nearest, RLE). Returns (annotations.json, images/) of the upscaled copy."""
    from pycocotools import mask as mask_utils

    small = work / "synth-seed7"
    if not (small / "annotations.json").exists():
        make_synthetic_dataset(small, 200, 7)
    big = work / "synth-seed7-1080"
    ann_path = big / "annotations.json"
    if ann_path.exists():
        return ann_path, big / "images"
    (big / "images").mkdir(parents=True, exist_ok=True)
    coco = json.loads((small / "annotations.json").read_text())
    sizes = {}
    for im in coco["images"]:
        rgb = np.asarray(Image.open(small / "images" / im["file_name"]).convert("RGB"))
        h, w = round(im["height"] * factor), round(im["width"] * factor)
        up = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)
        im["file_name"] = Path(im["file_name"]).with_suffix(".png").name
        Image.fromarray(up).save(big / "images" / im["file_name"])
        sizes[im["id"]], im["height"], im["width"] = (h, w), h, w
    for ann in coco["annotations"]:
        h, w = sizes[ann["image_id"]]
        m = cv2.resize(mask_utils.decode(ann["segmentation"]), (w, h), interpolation=cv2.INTER_NEAREST)
        rle = mask_utils.encode(np.asfortranarray(m))
        ann["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        ann["area"] = float(mask_utils.area(rle))
        ann["bbox"] = [float(v) for v in mask_utils.toBbox(rle)]
    ann_path.write_text(json.dumps(coco))
    return ann_path, big / "images"


def mask_ap(segs: dict[str, CandidateSegmenter], ann: Path, images: Path) -> dict:
    """Mask AP (and AP50/AP75) per candidate on the upscaled set, conf 0 / top 100 (the official protocol)."""
    out = {}
    for name, seg in segs.items():
        r = evaluate_coco(seg, ann, images, progress=False)
        out[name] = {k: r["segm"][k] for k in ("AP", "AP50", "AP75")} | {"preprocess_ms": r["speed"]["preprocess"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, help="folder for the generated data sets (kept between runs)")
    ap.add_argument("--out", required=True, help="path prefix: writes .json")
    args = ap.parse_args()
    work = Path(args.work)
    segs = {}
    for name, fn in CANDIDATES.items():
        seg = CandidateSegmenter("fastinst-demo", backend="torch", device="cpu", conf=0.0, max_det=20)
        seg.resize_fn = fn
        segs[name] = seg
    record: dict = {"machine": machine_info(), "loadavg_start": os.getloadavg(), "cv2_threads": cv2.getNumThreads()}
    record["timings"] = timings()
    print(json.dumps(record["timings"], indent=1))
    record["photos"] = photo_agreement(segs)
    print(json.dumps(record["photos"], indent=1))
    for seg in segs.values():
        seg.max_det = 100
    ann, images = upscaled_synth(work)
    record["mask_ap_1080x1350"] = mask_ap(segs, ann, images)
    small = work / "synth-seed7"
    record["mask_ap_256x320_exact"] = evaluate_coco(
        segs["exact"], small / "annotations.json", small / "images", progress=False
    )["segm"]
    record["loadavg_end"] = os.getloadavg()
    print(json.dumps({k: record[k] for k in ("mask_ap_1080x1350", "mask_ap_256x320_exact")}, indent=1))
    Path(args.out).with_suffix(".json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
