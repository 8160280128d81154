"""Offline batch prediction on Ray Data: images as a Ray Dataset, an actor pool of Segmenters, sharded results.

    predict_ray("fastinst-demo", "photos/", "out/results.json", workers=4)

The sorted image list is cut into shards of ``shard_size`` images; shard k's results go to
``<json>.shards/shard-<k>.jsonl`` (one line per image: ``{"index", "file_name", "results": [COCO dicts]}`` or
``{"index", "file_name", "error"}``), written atomically by the driver once all its images are back. A rerun with
the same inputs skips the shards already written. The merged COCO results file is the same list that local
``fastinst-rt predict FOLDER --json`` writes (``image_id`` = position in the sorted list, plus ``file_name``).
Each actor runs batch-1 ``Segmenter.predict`` on every image, as local predict does, so the results agree.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io.outputs import check_writable, write_atomic
from ..jobs.predict import coco_category_ids
from ..log import bar_disabled
from ..runtime.preprocess import ImageError
from ..runtime.segmenter import Segmenter
from ..runtime.sources import IMAGE_SUFFIXES
from .wire import decode_image

__all__ = ["BatchSummary", "predict_ray", "list_images"]

SHARD_FORMAT = "shard-{:05d}.jsonl"
# Logical CPUs of a file-reading task: reading is I/O, and the actors hold whole CPUs.
READ_CPUS = 0.25


@dataclass
class BatchSummary:
    """What ``predict_ray`` did: images listed, shards written now and skipped (done before), bad images."""

    images: int = 0
    instances: int = 0
    shards_written: int = 0
    shards_skipped: int = 0
    errors: dict[str, str] = field(default_factory=dict)  # file name -> reason
    written: list[str] = field(default_factory=list)


def list_images(source: str | os.PathLike) -> list[Path]:
    """The images of a folder (sorted by name, as local predict orders them) or a single image file."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"no such image or folder: {source}")
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"--ray takes a folder of images or an image ({', '.join(IMAGE_SUFFIXES)}), got {path}")
        return [path.resolve()]
    files = sorted(p.resolve() for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{source} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


class _Predictor:
    """A Ray Data actor: one Segmenter, batch-1 ``predict`` per image; an undecodable image becomes an error row."""

    def __init__(self, model: str, options: dict[str, Any]) -> None:
        self.seg = Segmenter(model, **options)
        self.category_ids = coco_category_ids(self.seg.class_names)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results, errors = [], []
        for data in batch["bytes"]:
            try:
                res = self.seg.predict(decode_image(bytes(data), "file"), color="rgb")
                results.append(json.dumps(res.to_coco(0, self.category_ids)))
                errors.append("")
            except (ImageError, ValueError) as e:  # a bad image is reported and skipped, the job goes on
                results.append("[]")
                errors.append(str(e))
        return {"path": batch["path"], "results": np.array(results, dtype=object), "error": np.array(errors, object)}


def predict_ray(
    model: str,
    source: str | os.PathLike,
    json_path: str | os.PathLike,
    *,
    workers: int | None = None,
    address: str | None = None,
    shard_size: int = 64,
    batch_size: int = 8,
    merge: bool = True,
    progress: bool = True,
    **options: Any,
) -> BatchSummary:
    """Segment every image of ``source`` on a Ray cluster; shards beside ``json_path``, merged into it on request.

    Args:
        model: checkpoint, artifact or zoo name; every worker loads it (a path must exist on every node).
        workers: actors in the pool; default one per GPU, else one per CPU of the cluster but one (for reading).
        address: a running cluster ("auto", "ip:6379"); None starts a local one for this call.
        shard_size: images per result shard (the unit of durability: a rerun skips shards already written).
        batch_size: images handed to an actor per call.
        merge: write the COCO results list to ``json_path`` once every shard is there.
        options: ``Segmenter`` keywords (backend, device, conf, max_det, min_size, max_size).
    """
    import ray

    files = list_images(source)
    check_writable(json_path, "--json")  # before any work: a bad output path is refused now, not after the run
    shard_dir = Path(str(json_path) + ".shards")
    _check_manifest(shard_dir, files, model, options, shard_size)
    shards = [files[i : i + shard_size] for i in range(0, len(files), shard_size)]
    done = {k for k in range(len(shards)) if (shard_dir / SHARD_FORMAT.format(k)).is_file()}
    summary = BatchSummary(images=len(files), shards_skipped=len(done))
    pending = [p for k, shard in enumerate(shards) if k not in done for p in shard]
    started = False
    if pending and not ray.is_initialized():
        # A local cluster gets a logical CPU beyond the actors' for Ray Data's read tasks (else they never start).
        cpus = None if address else max(os.cpu_count() or 1, (workers or 0) + 1)
        ray.init(address=address, num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        started = True
    try:
        if pending:
            rows = _run_pool(pending, model, options, workers, batch_size)
            _write_shards(rows, files, shards, done, shard_dir, summary, progress)
    finally:
        if started:
            ray.shutdown()
    records = _read_shards(shard_dir, len(shards), summary)
    if merge:
        summary.written.append(str(write_atomic(json_path, json.dumps(records))))
    return summary


def _run_pool(
    paths: list[Path], model: str, options: dict[str, Any], workers: int | None, batch_size: int
) -> Iterator[dict[str, Any]]:
    """Rows {"path", "results", "error"} in input order, from an actor pool over the images read by Ray Data."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # shards complete in order: the driver holds one at a time
    ctx.enable_progress_bars = False
    gpus = float(ray.cluster_resources().get("GPU", 0.0))
    use_gpu = gpus > 0 and options.get("device") != "cpu"
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    if workers is None:
        workers = int(gpus) if use_gpu else max(1, int(cpus) - 1)
    if not use_gpu and workers + READ_CPUS > cpus:
        raise ValueError(
            f"{workers} CPU workers need {workers + READ_CPUS} CPUs (one each, plus {READ_CPUS} for "
            f"reading) but the cluster has {cpus:g}: use --workers {max(1, int(cpus - READ_CPUS))}"
        )
    ds = ray.data.read_binary_files([str(p) for p in paths], include_paths=True, num_cpus=READ_CPUS)
    ds = ds.map_batches(
        _Predictor, fn_constructor_kwargs={"model": model, "options": options}, batch_size=batch_size,
        concurrency=workers, num_gpus=1 if use_gpu else 0, num_cpus=0 if use_gpu else 1, batch_format="numpy",
    )  # fmt: skip
    return ds.iter_rows()


def _write_shards(
    rows: Iterator[dict[str, Any]], files: list[Path], shards: list[list[Path]], done: set[int], shard_dir: Path,
    summary: BatchSummary, progress: bool,
) -> None:  # fmt: skip
    from tqdm import tqdm

    index_of = {str(p): i for i, p in enumerate(files)}
    shard_dir.mkdir(parents=True, exist_ok=True)
    lines: dict[int, dict[int, str]] = {}
    total = sum(len(s) for k, s in enumerate(shards) if k not in done)
    for row in tqdm(rows, total=total, desc="predict --ray", disable=bar_disabled(progress)):
        index = index_of[_local_path(row["path"])]
        k = index // len(shards[0])
        line: dict[str, Any] = {"index": index, "file_name": files[index].name}
        if row["error"]:
            line["error"] = str(row["error"])
        else:
            line["results"] = json.loads(row["results"])
        lines.setdefault(k, {})[index] = json.dumps(line)
        if len(lines[k]) == len(shards[k]):  # the shard is complete: write it atomically, forget it
            shard = lines.pop(k)
            write_atomic(shard_dir / SHARD_FORMAT.format(k), "".join(shard[i] + "\n" for i in sorted(shard)))
            summary.shards_written += 1


def _local_path(path: str) -> str:
    # Ray Data reports local files as given, or with a "local://" scheme on some filesystems.
    return str(Path(path.removeprefix("local://")).resolve())


def _read_shards(shard_dir: Path, count: int, summary: BatchSummary) -> list[dict[str, Any]]:
    """The COCO records of every shard in order (image_id = index, file_name added); errors into ``summary``."""
    records = []
    for k in range(count):
        for text in (shard_dir / SHARD_FORMAT.format(k)).read_text().splitlines():
            line = json.loads(text)
            if "error" in line:
                summary.errors[line["file_name"]] = line["error"]
                continue
            for rec in line["results"]:
                rec["image_id"], rec["file_name"] = line["index"], line["file_name"]
                records.append(rec)
    summary.instances = len(records)
    return records


def _check_manifest(shard_dir: Path, files: list[Path], model: str, options: dict[str, Any], shard_size: int) -> None:
    """Write the run's manifest, or refuse to mix shards of another run (other images, model or settings)."""
    manifest = {"model": str(model), "options": {k: v for k, v in options.items() if v is not None},
                "shard_size": shard_size, "files": [str(p) for p in files]}  # fmt: skip
    path = shard_dir / "manifest.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != manifest:
            changed = [k for k in manifest if old.get(k) != manifest[k]]
            raise ValueError(
                f"{shard_dir} holds shards of another run ({', '.join(changed)} differ): remove it or choose another "
                "--json"
            )
        return
    shard_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=1))
