"""The FastInst training loop: AdamW with the official parameter groups, multi-step LR, AMP on CUDA, DDP.

Written after FastInst ``train_net.py`` (Detectron2 ``DefaultTrainer``/``AMPTrainer``) and
the configs' ``SOLVER`` section. Changes: parameters with the same learning rate and weight decay share one optimizer
group (the official code makes one group per parameter; the update is the same); the 10-iteration warm-up
with factor 1.0 is left out because it changes nothing; no periodic evaluation.

Run with ``torchrun --nproc_per_node N -m fastinst_rt.cli train ...`` for several GPUs: WORLD_SIZE > 1 turns
on DistributedDataParallel and a DistributedSampler; ``batch`` is the total over all workers.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..checkpoint import FORMAT_KEY, FORMAT_VERSION, ModelInfo, load_checkpoint, load_state_strict, save_checkpoint
from ..io.outputs import atomic_path, check_writable
from ..modeling.fastinst import FastInst
from ..zoo import MODELS, build_model
from .criterion import SetCriterion
from .data import AugmentSizes, CocoInstances, collate
from .matcher import HungarianMatcher

if TYPE_CHECKING:
    from tqdm import tqdm

__all__ = ["TrainConfig", "train", "build_optimizer"]

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm, nn.InstanceNorm1d,
               nn.InstanceNorm2d, nn.InstanceNorm3d)  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs (defaults: the official solver, scaled to ``iters``).

    Attributes:
        data, images: COCO JSON and the image folder.
        model: zoo variant; its class count is replaced by the dataset's.
        output: run folder (``last.pth``, ``metrics.jsonl``, ``model_final.safetensors``).
        init: checkpoint to start from (official ``.pth`` or ours), loaded strictly.
        iters, batch, lr: iterations, total batch over all workers, base learning rate.
        weight_decay, backbone_multiplier: 0.05, and the backbone's learning-rate factor 0.1.
        steps, gamma: LR x gamma at these fractions of ``iters`` (official 327778 and 355092 of 368750).
        train_size: largest training short side; the official sizes are scaled to it (default: the model's
            test size). min_sizes/max_size override the final resize's choices.
        resume: continue from ``output/last.pth`` at its iteration.
        device: "cpu", "cuda", "cuda:1" (default CUDA when available); AMP only on CUDA with ``amp``.
        workers, seed, checkpoint_period, num_points, progress: as named.
    """

    data: str
    images: str
    model: str = "fastinst-small-r26-d2"
    output: str = "runs/train"
    init: str | None = None
    iters: int = 2000
    batch: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.05
    backbone_multiplier: float = 0.1
    steps: tuple[float, ...] = (0.889, 0.963)
    gamma: float = 0.1
    train_size: int | None = None
    min_sizes: tuple[int, ...] | None = None
    max_size: int | None = None
    resume: bool = False
    device: str | None = None
    workers: int = 2
    seed: int = 42
    checkpoint_period: int = 500
    amp: bool = True
    num_points: int = 12544
    progress: bool = True


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, backbone_multiplier: float) -> torch.optim.AdamW:
    """AdamW with the official groups: backbone LR x ``backbone_multiplier``; no weight decay on norm layers and
    ``nn.Embedding``; ``weight_decay`` on everything else (biases and ``meta_pos_embed`` included)."""
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param in module.parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            scale = backbone_multiplier if "backbone" in module_name else 1.0
            decay = 0.0 if isinstance(module, (*_NORM_TYPES, nn.Embedding)) else weight_decay
            groups.setdefault((scale, decay), []).append(param)
    param_groups = [{"params": p, "lr": lr * s, "weight_decay": d} for (s, d), p in groups.items()]
    return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay)


def _distributed() -> tuple[int, int]:
    """(rank, world size), initialising the process group when launched by torchrun with WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def _batches(dataset: CocoInstances, config: TrainConfig, rank: int, world: int, epoch: int) -> Iterator[dict]:
    """Endless batches of ``batch / world`` samples, reshuffled every epoch."""
    per_worker = config.batch // world
    sampler = torch.utils.data.DistributedSampler(dataset, world, rank, seed=config.seed) if world > 1 else None
    generator = torch.Generator().manual_seed(config.seed + epoch)
    loader = torch.utils.data.DataLoader(
        dataset, per_worker, shuffle=sampler is None, sampler=sampler, num_workers=config.workers,
        collate_fn=collate, drop_last=len(dataset) >= config.batch, generator=generator,
        persistent_workers=config.workers > 0,
    )  # fmt: skip
    while True:
        if sampler is not None:
            sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def _state(
    model: FastInst,
    info: ModelInfo,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    iteration: int,
    config: TrainConfig,
) -> dict:
    # Plain containers, tensors, numbers and strings only, so torch.load(weights_only=True) reads it back; the
    # FORMAT_KEY entry makes the file a checkpoint that load_model/Segmenter accept as it is.
    return {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        FORMAT_KEY: {"format_version": FORMAT_VERSION, "info": info.to_dict()},
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
        "iteration": iteration, "config": dataclasses.asdict(config),
    }  # fmt: skip


def _train_sizes(config: TrainConfig) -> AugmentSizes:
    sizes = AugmentSizes.scaled(config.train_size or MODELS[config.model].test_size[0])
    if config.min_sizes:
        sizes = replace(sizes, min_sizes=tuple(config.min_sizes))
    if config.max_size:
        sizes = replace(sizes, max_size=config.max_size)
    return sizes


def _build(config: TrainConfig, class_names: tuple[str, ...], sizes: AugmentSizes) -> tuple[FastInst, ModelInfo]:
    """The variant with the dataset's class count, initialised from ``config.init`` if given."""
    spec = MODELS[config.model]
    arch = replace(spec.config, num_classes=len(class_names))
    side = -(-min(sizes.min_sizes) // 32) * 32 // 16  # E4 side of the smallest padded square input
    if side * side < arch.num_queries:
        raise ValueError(f"training sizes {sizes.min_sizes} are too small for {arch.num_queries} queries; "
                         f"use a short side of at least {int(np.ceil(np.sqrt(arch.num_queries))) * 16}")  # fmt: skip
    model = build_model(arch)
    if config.init:
        source, _ = load_checkpoint(config.init)
        load_state_strict(model, source.state_dict(), Path(config.init))
    return model, ModelInfo(spec.name, arch, class_names, (max(sizes.min_sizes), sizes.max_size))


def _device(config: TrainConfig, world: int) -> torch.device:
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def _step(
    net: nn.Module,
    model: FastInst,
    criterion: SetCriterion,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    batch: dict,
    device: torch.device,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward/backward/update on a collated batch; returns the loss and its terms."""
    images = model.normalize(batch["images"].to(device), batch["sizes"].to(device))
    targets = [{k: v.to(device) for k, v in t.items()} for t in batch["targets"]]
    with torch.autocast(device.type, dtype=torch.float16, enabled=scaler.is_enabled()):
        outputs = net(images, targets, criterion.matcher)
    # Outside autocast: the losses cast to float32 themselves and the matcher disables autocast.
    total, terms = criterion(outputs, targets)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(total).backward()
    scaler.step(optimizer)
    scaler.update()
    return total.detach(), {k: v.detach() for k, v in terms.items()}


def train(config: TrainConfig) -> Path:
    """Train a FastInst model and return the final ``.safetensors`` checkpoint (written by rank 0).

    Writes ``last.pth`` every ``checkpoint_period`` iterations and at the end, ``metrics.jsonl`` (one line per
    20 iterations), and ``model_final.safetensors`` with the dataset's class names.
    """
    if config.model not in MODELS:
        raise ValueError(f"unknown model {config.model!r}; known: {', '.join(MODELS)}")
    rank, world = _distributed()
    if config.batch % world:
        raise ValueError(f"batch {config.batch} is not divisible by the {world} workers")
    if rank == 0:
        check_writable(config.output, "--output", folder=True)  # before any iteration, not at the first checkpoint
    for seed_fn in (torch.manual_seed, np.random.seed, random.seed):
        seed_fn(config.seed + rank)
    device = _device(config, world)
    sizes = _train_sizes(config)
    dataset = CocoInstances(config.data, config.images, sizes)
    model, info = _build(config, dataset.class_names, sizes)
    model = model.to(device).train()
    optimizer = build_optimizer(model, config.lr, config.weight_decay, config.backbone_multiplier)
    milestones = sorted(int(f * config.iters) for f in config.steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: config.gamma ** bisect.bisect_right(milestones, it)
    )
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp and device.type == "cuda")
    output = Path(config.output)
    start = _resume(output / "last.pth", model, optimizer, scheduler, scaler, config) if config.resume else 0
    ddp = world > 1
    net = nn.parallel.DistributedDataParallel(model, [device] if device.type == "cuda" else None) if ddp else model
    criterion = SetCriterion(info.config.num_classes, HungarianMatcher(num_points=config.num_points),
                             num_points=config.num_points).to(device)  # fmt: skip
    # Reseeding with the start iteration gives a resumed run fresh (still reproducible) augmentations.
    torch.manual_seed(config.seed + rank + start)
    batches = _batches(dataset, config, rank, world, epoch=start)
    bar = _progress(config, start) if rank == 0 else None
    output.mkdir(parents=True, exist_ok=True)
    for it in range(start + 1, config.iters + 1):
        total, terms = _step(net, model, criterion, optimizer, scaler, next(batches), device)
        scheduler.step()
        if rank == 0:
            _log(bar, output, it, total, terms, max(scheduler.get_last_lr()))  # the head's LR
            if it % config.checkpoint_period == 0 or it == config.iters:
                with atomic_path(output / "last.pth") as tmp:  # never a half-written last.pth
                    torch.save(_state(model, info, optimizer, scheduler, scaler, it, config), tmp)
    if bar is not None:
        bar.close()
    final = output / "model_final.safetensors"
    if rank == 0:
        save_checkpoint(model, info, final)
    if ddp:
        dist.barrier()
        dist.destroy_process_group()
    return final


def _progress(config: TrainConfig, start: int) -> tqdm | None:
    if not config.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=config.iters, initial=start, desc="train", dynamic_ncols=True)


def _log(
    bar: tqdm | None, output: Path, it: int, total: torch.Tensor, terms: dict[str, torch.Tensor], lr: float
) -> None:
    if bar is not None:
        shown = {k[5:]: f"{terms[k].item():.3f}" for k in ("loss_proposal", "loss_ce", "loss_mask", "loss_dice")}
        bar.set_postfix(loss=f"{total.item():.3f}", **shown, lr=f"{lr:.2e}")
        bar.update(1)
    if it % 20 == 0 or it == 1:
        record = {"iteration": it, "loss": total.item(), "lr": lr, **{k: v.item() for k, v in terms.items()}}
        with open(output / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


def _resume(
    path: Path,
    model: FastInst,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    config: TrainConfig,
) -> int:
    """Load ``last.pth`` into the live objects; returns the iteration it was saved at."""
    if not path.exists():
        raise FileNotFoundError(f"cannot resume: {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved = state["config"].get("model")
    if saved != config.model:
        raise ValueError(f"{path} was trained as {saved}, not {config.model}")
    load_state_strict(model, state["model"], path)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return int(state["iteration"])
