"""INT8 sensitivity pass: quantize one region of the network at a time (and a few whole-network policies), then
measure mask/box AP on held-out images and how the instances move against the FP32 graph.

    fastinst-rt synth --output syn-test --num 200 --seed 7 && fastinst-rt synth --output syn-calib --num 64 --seed 3
    fastinst-rt export fastinst-demo -o demo.onnx --imgsz 256x320
    python benchmarks/int8_sensitivity.py demo.onnx --calib syn-calib/images --eval syn-test --json out.json

The region rows answer "which layers must stay in higher precision"; the policy rows compare calibration methods
and what the exporter ships (``export.quantize.SENSITIVE``). Writes a JSON and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from fastinst_rt import Segmenter
from fastinst_rt.artifact import read_onnx_meta
from fastinst_rt.export.checks import compare_instances
from fastinst_rt.export.quantize import (
    calibration_images,
    quantizable_convs,
    quantize_onnx,
    regions,
    runtime_input,
)
from fastinst_rt.jobs.evaluate import evaluate_coco
from fastinst_rt.runtime.preprocess import load_image


def _outputs(proto: onnx.ModelProto, feeds: list[dict]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    runs = [dict(zip(names, sess.run(None, f))) for f in feeds]
    return {k: np.concatenate([r[k] for r in runs]) for k in ("scores", "labels", "masks")}


def _measure(proto: onnx.ModelProto, ref: dict, feeds: list[dict], ann: Path, num: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        onnx.save(proto, path)
        r = evaluate_coco(Segmenter(str(path), conf=0.0), ann, ann.parent / "images", max_images=num, progress=False)
    agreement = compare_instances(ref, _outputs(proto, feeds)).to_dict() if ref else {}
    return {"mask_ap": round(r["segm"]["AP"], 2), "box_ap": round(r["bbox"]["AP"], 2), **agreement}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("fp32", type=Path, help="an FP32 e2e export (static)")
    ap.add_argument("--calib", type=Path, required=True, help="calibration images (not the held-out ones)")
    ap.add_argument("--calib-images", type=int, default=32)
    ap.add_argument("--eval", type=Path, required=True, help="held-out synthetic set (annotations.json, images/)")
    ap.add_argument("--eval-images", type=int, default=60)
    ap.add_argument("--agreement-images", type=int, default=8, help="held-out images for the instance agreement")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    base = onnx.load(args.fp32)
    meta, ann = read_onnx_meta(base, args.fp32), args.eval / "annotations.json"
    files = calibration_images(args.calib, args.calib_images)

    held = sorted((args.eval / "images").iterdir())[: args.agreement_images]
    feeds = [dict(zip(("images", "sizes"), runtime_input([load_image(p, "rgb")], meta))) for p in held]
    ref = _outputs(base, feeds)
    rows = [{"config": "fp32", "nodes": 0, **_measure(base, {}, feeds, ann, args.eval_images)}]
    groups = regions(base)
    configs = [(f"only {k}", {"nodes": v, "op_types": ("Conv", "Gemm", "MatMul")}) for k, v in groups.items()]
    every = [n for v in groups.values() for n in v]
    convs = [n for k, v in groups.items() if "(" not in k for n in v]
    configs += [
        ("every Conv/Gemm/MatMul, percentile", {"nodes": every, "op_types": ("Conv", "Gemm", "MatMul")}),
        ("every Conv, percentile", {"nodes": convs}),
        ("shipped policy, minmax", {"method": "minmax"}),
        ("shipped policy, entropy", {"method": "entropy"}),
        ("shipped policy, percentile", {}),
    ]
    for name, kwargs in configs:
        nodes = kwargs.pop("nodes", quantizable_convs(base))
        q = quantize_onnx(base, files, nodes=nodes, progress=False, **kwargs)
        rows.append({"config": name, "nodes": len(nodes), **_measure(q, ref, feeds, ann, args.eval_images)})
        print(json.dumps(rows[-1]), flush=True)
    cols = ["config", "nodes", "mask_ap", "box_ap", "matched", "mask_iou", "score_diff", "rank_misses", "count_diff"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print(
            "| " + " | ".join(f"{r[c]:.3g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols) + " |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"fp32": str(args.fp32), "calibration_images": len(files), "rows": rows}, indent=1)
        )


if __name__ == "__main__":
    main()
