"""Export every full-size zoo architecture as a static, a dynamic and an FP16 graph, and report each one.

Each export goes through ``export_onnx``'s own gates (the opset written, ``check_graph``'s TensorRT-readiness
rules, ONNX Runtime against PyTorch on the tracing example), so a row in the table is a graph that passed all
three; this script adds the numbers: seconds, MB, nodes, DeformConv nodes and the measured ONNX Runtime vs
PyTorch errors. Seeded random weights (the graphs do not depend on the values).

    python benchmarks/export_sweep.py --output /tmp/sweep --json benchmarks/results/export-sweep.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import time
from pathlib import Path

import onnx
import torch

from fastinst_rt.checkpoint import ModelInfo
from fastinst_rt.export import export_onnx
from fastinst_rt.export.checks import check_graph
from fastinst_rt.zoo import MODELS, build_model

FULL_SIZE = ("fastinst-r50-d1", "fastinst-r50-d3", "fastinst-r101-d3", "fastinst-r50vd-dcn-d1", "fastinst-r50vd-dcn-d3")
MODES = {
    "static": {},
    "dynamic": {"dynamic": True},
    "fp16": {"fp16": True},
    "fp16-dynamic": {"fp16": True, "dynamic": True},
}


def sweep(names: list[str], output: Path, modes: list[str]) -> list[dict]:
    rows = []
    for name in names:
        spec = MODELS[name]
        torch.manual_seed(0)
        model = build_model(spec.config).eval()
        info = ModelInfo(spec.name, spec.config, spec.class_names, spec.test_size)
        for mode in modes:
            options = MODES[mode]
            path = output / f"{name}-{mode}.onnx"
            log = io.StringIO()
            start = time.perf_counter()
            with contextlib.redirect_stderr(log):
                export_onnx(model, path, info=info, **options)
            seconds = time.perf_counter() - start
            proto = onnx.load(str(path))
            verified = re.search(r"verified against torch: (.*)", log.getvalue())
            gate = re.findall(r"(?:fp16|int8) (\(.*?\)) vs FP32: (.*)", log.getvalue())
            row = {
                "model": name, "mode": mode, "seconds": round(seconds, 1), "mb": round(path.stat().st_size / 2**20, 1),
                "nodes": len(proto.graph.node), "deformconv": sum(n.op_type == "DeformConv" for n in proto.graph.node),
                "opset": proto.opset_import[0].version,
                "problems": check_graph(proto, fixed=not options.get("dynamic")),
                "ort_vs_torch": verified.group(1) if verified else "not verified",
                "instances_vs_fp32": gate,  # one line per gate input: the tracing example, the shipped photo
            }  # fmt: skip
            print(" | ".join(str(v) for v in row.values()), flush=True)
            rows.append(row)
            path.unlink()  # 60-210 MB each; the numbers are what is kept
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(FULL_SIZE), choices=sorted(MODELS))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--output", type=Path, default=Path("/tmp/fastinst-export-sweep"))
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    rows = sweep(args.models, args.output, args.modes)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"torch": torch.__version__, "onnx": onnx.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
