"""Training: hand-checked losses, an optimal and location-aware matcher, the guided branch, data, CLI and resume."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from fastinst_rt import Segmenter, load_model
from fastinst_rt.cli import main
from fastinst_rt.export.onnx_export import export_onnx
from fastinst_rt.training import loop
from fastinst_rt.training.criterion import SetCriterion, dice_loss, sigmoid_ce_loss, uncertain_points
from fastinst_rt.training.data import AugmentSizes, CocoInstances, collate
from fastinst_rt.training.matcher import HungarianMatcher
from fastinst_rt.training.synth import SHAPES, make_synthetic_dataset
from fastinst_rt.zoo import MODELS, SYNTH_CLASSES, build_model

TINY = "fastinst-test-r50-d2"  # 100 queries: inputs need >= 160x160 (10x10 pixels at 1/16)
FIXED_160 = AugmentSizes(min_sizes=(160,), max_size=192)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """Six 160x192 synthetic images with polygon annotations."""
    root = tmp_path_factory.mktemp("synth")
    make_synthetic_dataset(root, 6, seed=3, size=(160, 192), segmentation="polygon")
    return root


def _tiny_model(num_classes: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(replace(MODELS[TINY].config, num_classes=num_classes)).train()


def _batch(root: Path, n: int = 2) -> dict:
    ds = CocoInstances(root / "annotations.json", root / "images", FIXED_160, augment=False)
    return collate([ds[i] for i in range(n)])


# ---- losses against hand-computed values -------------------------------------------------------------------


def test_mask_losses_equal_hand_computed_values() -> None:
    l3 = math.log(3.0)
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [l3, l3, -l3, -l3]])  # p = 0.5 / 0.75, 0.75, 0.25, 0.25
    targets = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0]])
    # BCE: log 2 everywhere; then -log .75, -log .25, -log .25, -log .75. Dice: 1 - (2*1 + 1) / (2 + 2 + 1) for both.
    bce = (math.log(2.0) + (2 * -math.log(0.75) + 2 * -math.log(0.25)) / 4) / 2
    assert sigmoid_ce_loss(logits, targets, 2.0).item() == pytest.approx(bce, rel=1e-6)
    assert dice_loss(logits, targets, 2.0).item() == pytest.approx(0.4, rel=1e-6)
    assert dice_loss(logits, targets, 1.0).item() == pytest.approx(0.8, rel=1e-6)


def test_class_loss_weights_no_object_by_a_tenth() -> None:
    criterion = SetCriterion(2, HungarianMatcher())
    logits = torch.tensor([[[2.0, 0.0, 1.0], [0.5, 1.5, -1.0], [0.0, 0.0, 3.0]]])  # 1 image, 3 queries, K = 2
    targets = [{"labels": torch.tensor([1]), "masks": torch.zeros(1, 32, 32, dtype=torch.bool)}]
    indices = [(torch.tensor([1]), torch.tensor([0]))]  # query 1 -> class 1; queries 0 and 2 -> no object (2)
    logp = torch.log_softmax(logits[0], -1)
    nll = [-logp[0, 2].item(), -logp[1, 1].item(), -logp[2, 2].item()]
    expected = (0.1 * nll[0] + 1.0 * nll[1] + 0.1 * nll[2]) / (0.1 + 1.0 + 0.1)
    assert criterion.loss_labels(logits, targets, indices).item() == pytest.approx(expected, rel=1e-6)


def test_proposal_loss_and_matcher_pick_a_pixel_inside_the_instance() -> None:
    # E4 is 2x2 for a 32x32 input; the GT (class 0) covers only the bottom-right 16x16 quadrant (pixel 3).
    mask = torch.zeros(1, 32, 32, dtype=torch.bool)
    mask[0, 20:28, 18:30] = True
    targets = [{"labels": torch.tensor([0]), "masks": mask}]
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 0, 0, 0] = 4.0  # pixel 0 (outside) is far more confident of class 0 than pixel 3
    indices = HungarianMatcher().match_proposals(logits, targets)
    assert indices[0][0].tolist() == [3] and indices[0][1].tolist() == [0]
    logp = torch.log_softmax(logits[0].flatten(1).T, -1)  # (4, 3)
    expected = -(logp[0, 2] + logp[1, 2] + logp[2, 2] + logp[3, 0]).item() / 4  # background = 2 elsewhere
    criterion = SetCriterion(2, HungarianMatcher())
    assert criterion.loss_proposal(logits, targets, indices).item() == pytest.approx(expected, rel=1e-6)


def test_importance_sampling_keeps_the_uncertain_points() -> None:
    logits = torch.full((1, 1, 8, 8), 10.0)
    logits[..., :4] = 0.0  # the left half is maximally uncertain
    torch.manual_seed(0)
    points = uncertain_points(logits, 400, 3.0, 0.75)
    assert points.shape == (1, 400, 2)
    # 300 most uncertain of 1200 candidates: all on the left (x < 0.5, plus the half pixel blended at the seam).
    assert (points[0, :300, 0] < 0.5 + 1 / 16).all()
    assert (points[0, 300:, 0] > 0.5 + 1 / 16).any(), "the remaining quarter is uniform"


# ---- matcher ---------------------------------------------------------------------------------------------------


def _random_outputs(q: int, k: int, g: int, seed: int) -> tuple[dict, list[dict]]:
    gen = torch.Generator().manual_seed(seed)
    outputs = {
        "pred_logits": torch.randn(1, q, k + 1, generator=gen),
        "pred_masks": torch.randn(1, q, 8, 8, generator=gen) * 3,
        "query_locations": torch.rand(1, q, 2, generator=gen),
    }
    masks = torch.rand(g, 64, 64, generator=gen) > 0.6
    return outputs, [{"labels": torch.randint(0, k, (g,), generator=gen), "masks": masks}]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matcher_assignment_is_optimal(seed: int) -> None:
    outputs, targets = _random_outputs(5, 3, 3, seed)
    matcher = HungarianMatcher(cost_location=0.0, num_points=256)  # location off: a non-trivial assignment
    torch.manual_seed(seed)
    ((rows, cols),) = matcher(outputs, targets)
    torch.manual_seed(seed)  # the same random points
    cost = matcher.cost_matrix(outputs, targets, 0)
    best = min(sum(cost[p[j], j].item() for j in range(3)) for p in itertools.permutations(range(5), 3))
    assert len(rows) == 3 and sorted(cols.tolist()) == [0, 1, 2]
    assert sum(cost[r, c].item() for r, c in zip(rows, cols)) == pytest.approx(best, abs=1e-5)


def test_matcher_location_cost_prefers_a_query_inside_the_instance() -> None:
    gt = torch.zeros(1, 64, 64, dtype=torch.bool)
    gt[0, 8:40, 8:40] = True
    perfect = torch.where(gt[0, ::8, ::8], 8.0, -8.0)  # (8, 8) logits exactly on the GT
    outputs = {
        "pred_logits": torch.zeros(1, 2, 3),
        "pred_masks": torch.stack([perfect * 0.5, perfect])[None],  # query 1 has the better mask ...
        "query_locations": torch.tensor([[[0.3, 0.3], [0.9, 0.9]]]),  # ... but only query 0 starts inside
    }
    targets = [{"labels": torch.tensor([0]), "masks": gt}]
    assert HungarianMatcher(num_points=512)(outputs, targets)[0][0].tolist() == [0]
    assert HungarianMatcher(cost_location=0.0, num_points=512)(outputs, targets)[0][0].tolist() == [1]


# ---- model + criterion -----------------------------------------------------------------------------------------


def test_guided_branch_outputs_enter_the_loss(synth: Path) -> None:
    model, batch = _tiny_model(), _batch(synth)
    matcher, layers = HungarianMatcher(num_points=1024), model.decoder.num_layers
    criterion = SetCriterion(4, matcher, num_points=1024)
    out = model(model.normalize(batch["images"], batch["sizes"]), batch["targets"], matcher)
    assert len(out["aux_outputs"]) == 2 * layers
    for i in range(layers):
        guided = out["aux_outputs"][i]
        assert guided["pred_matching_indices"] is out["pred_matching_indices"], "guided ones reuse the matching"
        # The guided pass re-runs layer i with ground-truth masks: not the same prediction as layer i's own.
        own = out["aux_outputs"][layers + 1 + i]["pred_masks"] if i < layers - 1 else out["pred_masks"]
        assert not torch.allclose(guided["pred_masks"], own)
    torch.manual_seed(0)
    total, terms = criterion(out, batch["targets"])
    assert {"loss_proposal", "loss_ce_0", "loss_mask_0", "loss_dice_0", f"loss_dice_{2 * layers - 1}"} <= set(terms)
    guided = out["aux_outputs"][0]
    grads = torch.autograd.grad(total, [guided["pred_masks"], guided["pred_logits"]], retain_graph=True)
    assert all(g.abs().sum() > 0 for g in grads), "gradient must flow into the guided predictions"
    changed = dict(out, aux_outputs=[dict(guided, pred_masks=guided["pred_masks"] * 2)] + out["aux_outputs"][1:])
    torch.manual_seed(0)
    assert criterion(changed, batch["targets"])[0].item() != pytest.approx(total.item(), rel=1e-6)


def test_an_image_without_instances_still_trains_every_parameter() -> None:
    model, matcher = _tiny_model(), HungarianMatcher(num_points=256)
    targets = [{"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 160, 160, dtype=torch.bool)}]
    torch.manual_seed(0)
    out = model(torch.randn(1, 3, 160, 160), targets, matcher)
    total, terms = SetCriterion(4, matcher, num_points=256)(out, targets)
    assert terms["loss_mask"].item() == 0.0 and terms["loss_ce"].item() > 0  # every query is "no object"
    total.backward()
    # DistributedDataParallel needs a gradient (zero or not) for every parameter.
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_one_optimizer_step_lowers_the_loss(synth: Path) -> None:
    model, batch = _tiny_model(), _batch(synth)
    matcher = HungarianMatcher(num_points=1024)
    criterion = SetCriterion(4, matcher, num_points=1024)
    optimizer = loop.build_optimizer(model, 1e-3, 0.05, 0.1)
    images = model.normalize(batch["images"], batch["sizes"])

    def loss() -> torch.Tensor:
        torch.manual_seed(1)  # same points for both evaluations
        return criterion(model(images, batch["targets"], matcher), batch["targets"])[0]

    before = loss()
    optimizer.zero_grad()
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after = loss()
    assert after.item() < before.item() - 0.5, (before.item(), after.item())


def test_optimizer_groups_follow_the_official_rules() -> None:
    model = _tiny_model()
    optimizer = loop.build_optimizer(model, 1e-4, 0.05, 0.1)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    assert len(group_of) == sum(1 for _ in model.parameters()), "every parameter once"
    check = {
        "backbone.stem.conv1.weight": (1e-5, 0.05),
        "pixel_decoder.adapter_1.norm.weight": (1e-4, 0.0),  # GroupNorm
        "decoder.decoder_query_norm_layers.0.weight": (1e-4, 0.0),  # LayerNorm
        "decoder.empty_query_features.weight": (1e-4, 0.0),  # nn.Embedding
        "decoder.meta_pos_embed": (1e-4, 0.05),  # a bare parameter: decayed, as officially
        "decoder.class_embed_layers.0.layers.2.bias": (1e-4, 0.05),
    }
    params = dict(model.named_parameters())
    for name, (lr, wd) in check.items():
        group = group_of[id(params[name])]
        assert group["lr"] == pytest.approx(lr) and group["weight_decay"] == wd, name


# ---- data --------------------------------------------------------------------------------------------------------


def _files(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synth_is_deterministic_and_valid_coco(tmp_path: Path) -> None:
    a = make_synthetic_dataset(tmp_path / "a", 4, seed=7, size=(96, 128), image_format="png")
    b = make_synthetic_dataset(tmp_path / "b", 4, seed=7, size=(96, 128), image_format="png")
    c = make_synthetic_dataset(tmp_path / "c", 4, seed=8, size=(96, 128), image_format="png")
    assert _files(a.parent) == _files(b.parent)
    assert _files(a.parent) != _files(c.parent)
    coco = COCO(str(a))
    assert [coco.cats[i]["name"] for i in sorted(coco.cats)] == list(SHAPES[:4]) == list(SYNTH_CLASSES)
    assert len(coco.anns) >= 2 * 4
    for ann in coco.anns.values():
        img = coco.imgs[ann["image_id"]]
        mask = coco.annToMask(ann)
        assert mask.shape == np.asarray(Image.open(a.parent / "images" / img["file_name"])).shape[:2] == (96, 128)
        assert mask.sum() == ann["area"] > 0 and not ann["iscrowd"]


def _border_share(annotations: Path) -> float:
    """Share of the instances whose box touches the image border."""
    coco = json.loads(annotations.read_text())
    size = {i["id"]: (i["width"], i["height"]) for i in coco["images"]}
    touching = [
        x <= 0 or y <= 0 or x + w >= size[a["image_id"]][0] or y + h >= size[a["image_id"]][1]
        for a in coco["annotations"]
        for x, y, w, h in [a["bbox"]]
    ]
    return float(np.mean(touching))


def test_synth_border_cut_places_shapes_across_the_edges(tmp_path: Path) -> None:
    """--border-cut cuts shapes at the image edges as a video's entering and leaving shapes are; 0 draws exactly
    the older datasets (no extra random draws)."""
    plain = make_synthetic_dataset(tmp_path / "plain", 30, seed=5, size=(96, 128))
    zero = make_synthetic_dataset(tmp_path / "zero", 30, seed=5, size=(96, 128), border_cut=0.0)
    cut = make_synthetic_dataset(tmp_path / "cut", 30, seed=5, size=(96, 128), border_cut=0.5)
    assert _files(plain.parent) == _files(zero.parent)
    assert _border_share(cut) > _border_share(plain) + 0.2, (_border_share(cut), _border_share(plain))
    with pytest.raises(ValueError, match="border_cut"):
        make_synthetic_dataset(tmp_path / "bad", 1, border_cut=1.5)


def test_video_frames_dataset_holds_decoded_frames_with_their_masks(tmp_path: Path) -> None:
    """``synth --video --every N``: one frame in N of each video as a still-image COCO set, plus included stills."""
    from fastinst_rt.training.synth_video import make_synthetic_video, make_video_frames_dataset

    stills = make_synthetic_dataset(tmp_path / "stills", 3, seed=2, size=(96, 128))
    path = make_video_frames_dataset(tmp_path / "frames", videos=2, frames=9, every=4, seed=40, include=(stills, 2))
    coco = COCO(str(path))
    names = [coco.imgs[i]["file_name"] for i in sorted(coco.imgs)]
    assert names == ["40_0001.jpg", "40_0005.jpg", "41_0001.jpg", "41_0005.jpg", "s_000000.jpg", "s_000001.jpg"]
    make_synthetic_video(tmp_path / "v", frames=9, seed=40)  # the first video again: frame 1 has its masks
    truth = [a["segmentation"] for a in json.loads((tmp_path / "v" / "annotations.json").read_text())["annotations"]
             if a["image_id"] == 2]  # fmt: skip
    assert truth and [a["segmentation"] for a in coco.imgToAnns[1]] == truth
    for ann in coco.anns.values():
        img = coco.imgs[ann["image_id"]]
        assert coco.annToMask(ann).sum() == ann["area"] > 0 and "track_id" not in ann
        image = np.asarray(Image.open(path.parent / "images" / img["file_name"]))
        assert image.shape[:2] == (img["height"], img["width"])
    still_anns = [a for a in coco.anns.values() if coco.imgs[a["image_id"]]["file_name"].startswith("s_")]
    original = COCO(str(stills))
    assert len(still_anns) == sum(len(original.getAnnIds(imgIds=[i])) for i in (1, 2))


def test_dataset_maps_categories_drops_crowd_and_augments(tmp_path: Path) -> None:
    Image.fromarray(np.full((100, 150, 3), 90, np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((100, 150, 3), 90, np.uint8)).save(tmp_path / "b.png")
    square = [[10.0, 20.0, 60.0, 20.0, 60.0, 70.0, 10.0, 70.0]]  # x 10..60, y 20..70
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "height": 100, "width": 150},
                   {"id": 2, "file_name": "b.png", "height": 100, "width": 150}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "segmentation": square, "iscrowd": 0},
                        {"id": 2, "image_id": 1, "category_id": 3, "segmentation": square, "iscrowd": 1},
                        {"id": 3, "image_id": 2, "category_id": 3, "segmentation": square, "iscrowd": 1}],
        "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}],
    }  # fmt: skip
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    sizes = AugmentSizes(min_sizes=(50, 60), max_size=90, crop_resize_sizes=(100,), crop_size=(40, 70))
    ds = CocoInstances(tmp_path / "ann.json", tmp_path, sizes)
    assert ds.class_names == ("three", "seven") and len(ds) == 1, "sorted ids; image 2 has only a crowd"
    torch.manual_seed(0)
    shapes = set()
    for _ in range(12):
        s = ds[0]
        h, w = s["image"].shape[:2]
        assert min(h, w) in (50, 60) and max(h, w) <= 90 and s["masks"].shape[1:] == (h, w)
        assert s["labels"].tolist() in ([1], []) and len(s["masks"]) == len(s["labels"])
        shapes.add((h, w))
    assert len(shapes) > 1, "the sizes must vary"
    fixed = CocoInstances(tmp_path / "ann.json", tmp_path, sizes, augment=False)[0]
    assert fixed["image"].shape == (60, 90, 3)
    assert fixed["masks"][0].sum() == pytest.approx(50 * 50 * 0.36, rel=0.1)  # the square at scale 0.6
    batch = collate([fixed, fixed])
    assert batch["images"].shape == (2, 3, 64, 96) and batch["images"].dtype == torch.uint8
    assert batch["targets"][0]["masks"].shape == (1, 64, 96) and not batch["targets"][0]["masks"][:, 60:].any()


# ---- the CLI end to end ------------------------------------------------------------------------------------------


def test_train_cli_writes_checkpoints_that_load_and_resume(tmp_path: Path, monkeypatch) -> None:
    data = tmp_path / "data"
    assert main(["synth", "--output", str(data), "--num", "4", "--seed", "1", "--size", "160x192"]) == 0
    run = tmp_path / "run"
    args = ["train", "--data", str(data / "annotations.json"), "--images", str(data / "images"), "--model", TINY,
            "--output", str(run), "--batch", "2", "--train-size", "160", "--min-size", "160", "--max-size", "192",
            "--workers", "0", "--checkpoint-period", "1", "--quiet"]  # fmt: skip
    assert main(args + ["--iters", "2"]) == 0
    state = torch.load(run / "last.pth", map_location="cpu", weights_only=True)
    assert state["iteration"] == 2 and state["config"]["model"] == TINY
    assert state["scheduler"]["last_epoch"] == 2

    net = load_model(run / "model_final.safetensors")
    assert net.info.class_names == SYNTH_CLASSES and net.info.config.num_classes == 4
    assert load_model(run / "last.pth").info.class_names == SYNTH_CLASSES, "last.pth is a loadable checkpoint too"
    image = np.asarray(Image.open(data / "images" / "000000.jpg"))
    res = Segmenter(run / "model_final.safetensors", conf=0.0, max_det=5).predict(image, color="rgb")
    assert len(res) == 5 and res.masks.shape == (5, 160, 192) and set(res.names) <= set(SYNTH_CLASSES)
    onnx_path = export_onnx(run / "model_final.safetensors", tmp_path / "trained.onnx", dynamic=True, progress=False)
    exported = Segmenter(onnx_path, conf=0.0, max_det=5).predict(image, color="rgb")
    assert list(exported.names) == list(res.names) and np.abs(exported.scores - res.scores).max() < 1e-4

    drawn = []
    original = CocoInstances.__getitem__
    monkeypatch.setattr(CocoInstances, "__getitem__", lambda self, i: drawn.append(i) or original(self, i))
    assert main(args + ["--iters", "3", "--resume"]) == 0
    assert len(drawn) == 2, "a resumed run does only the remaining iteration (one batch of 2)"
    state = torch.load(run / "last.pth", map_location="cpu", weights_only=True)
    assert state["iteration"] == 3 and state["scheduler"]["last_epoch"] == 3
    assert next(iter(state["optimizer"]["state"].values()))["step"].item() == 3


def test_train_refuses_sizes_too_small_for_the_queries(synth: Path) -> None:
    config = loop.TrainConfig(str(synth / "annotations.json"), str(synth / "images"), model=TINY, train_size=96)
    with pytest.raises(ValueError, match="too small for 100 queries"):
        loop.train(config)


@pytest.mark.slow
def test_train_runs_distributed_under_torchrun(synth: Path, tmp_path: Path) -> None:
    # Two CPU processes with the gloo backend: DistributedDataParallel, DistributedSampler and the all-reduced
    # mask count run for real (the CUDA/NCCL path differs only in the backend and device).
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "fastinst_rt.cli", "train", "--data", str(synth / "annotations.json"), "--images", str(synth / "images"),
           "--model", TINY, "--output", str(tmp_path), "--iters", "2", "--batch", "4", "--train-size", "160",
           "--min-size", "160", "--workers", "0", "--device", "cpu", "--quiet"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote") == 1, "only rank 0 reports (and writes) the checkpoint"
    assert torch.load(tmp_path / "last.pth", weights_only=True)["iteration"] == 2
    assert load_model(tmp_path / "model_final.safetensors").info.class_names == SYNTH_CLASSES
