"""Offline batch prediction on Ray Data (``predict --ray``) on a real local Ray cluster started for this module."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="ray[serve,data] (the serve extra) is not installed")

from fastinst_rt.cli import main  # noqa: E402
from fastinst_rt.training.synth import make_synthetic_dataset  # noqa: E402

pytestmark = pytest.mark.ray
MODEL = "fastinst-demo"


def test_predict_ray_equals_local_predict_on_50_images(ray_cluster: str, tmp_path: Path, capsys) -> None:
    make_synthetic_dataset(tmp_path / "d", 50, 11, (192, 256), ("circle", "square", "triangle", "star"))
    folder = tmp_path / "d" / "images"
    common = ["-m", MODEL, "--device", "cpu", "-q"]
    assert main(["predict", str(folder), *common, "--json", str(tmp_path / "local.json")]) == 0
    ray_args = ["predict", str(folder), *common, "--ray", "--workers", "2", "--shard-size", "16"]
    assert main([*ray_args, "--json", str(tmp_path / "ray.json")]) == 0
    local, remote = (json.loads((tmp_path / f).read_text()) for f in ("local.json", "ray.json"))
    assert len(local) == len(remote) > 50
    for a, b in zip(local, remote):
        assert {k: v for k, v in a.items() if k != "score"} == {k: v for k, v in b.items() if k != "score"}
        assert abs(a["score"] - b["score"]) < 1e-4
    assert sorted(p.name for p in (tmp_path / "ray.json.shards").glob("*.jsonl")) == [
        f"shard-0000{k}.jsonl" for k in range(4)
    ]
    capsys.readouterr()
    assert main([*ray_args, "--json", str(tmp_path / "ray.json")]) == 0  # a rerun: every shard is already there
    assert "0 shard(s) written, 4 already there" in capsys.readouterr().out
    assert json.loads((tmp_path / "ray.json").read_text()) == remote


def test_predict_ray_reports_and_skips_a_bad_image(ray_cluster: str, tmp_path: Path, capsys) -> None:
    make_synthetic_dataset(tmp_path / "d", 3, 5, (192, 256), ("circle", "square", "triangle", "star"))
    folder = tmp_path / "d" / "images"
    (folder / "000001.jpg").write_text("not a picture")
    args = ["predict", str(folder), "-m", MODEL, "--device", "cpu", "-q", "--ray", "--workers", "1"]
    assert main([*args, "--json", str(tmp_path / "out.json")]) == 0
    out = capsys.readouterr().out
    assert "skipped 000001.jpg: file is not a decodable image" in out
    records = json.loads((tmp_path / "out.json").read_text())
    assert {r["file_name"] for r in records} <= {"000000.jpg", "000002.jpg"} and records
    assert main([*args, "--conf", "0.5", "--json", str(tmp_path / "out.json")]) == 2  # shards of other settings
    assert "shards of another run (options differ)" in capsys.readouterr().err
