"""Results <-> supervision.Detections, checked with supervision's own annotators and zones on a real photo and video.

Real supervision (the ``supervision`` extra), the bundled ``fastinst-demo`` model, no mocks.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastinst_rt import Results, Segmenter
from fastinst_rt.training.synth_video import make_synthetic_video

sv = pytest.importorskip("supervision", reason="the supervision extra (Python >= 3.10)")
PHOTO = Path(__file__).parents[1] / "fastinst_rt" / "assets" / "astronaut.jpg"


@pytest.fixture(scope="module")
def seg() -> Segmenter:
    return Segmenter("fastinst-demo", backend="torch", device="cpu")


@pytest.fixture(scope="module")
def photo_results(seg) -> tuple[np.ndarray, Results]:
    from PIL import Image

    image = np.asarray(Image.open(PHOTO).convert("RGB"))
    res = seg.predict(image, color="rgb")
    assert len(res) >= 3, "the demo model finds shapes on the astronaut photo: needed to test anything"
    return image, res


def test_the_runtime_does_not_import_supervision() -> None:
    code = (
        "import sys, numpy as np, fastinst_rt, fastinst_rt.tracking, fastinst_rt.jobs.predict, fastinst_rt.cli\n"
        "seg = fastinst_rt.Segmenter('fastinst-demo', backend='torch', device='cpu')\n"
        "r = seg.predict(np.zeros((64, 64, 3), np.uint8)); r.to_coco(1); fastinst_rt.tracking.ByteTracker().update(r)\n"
        "print(sorted(m for m in ('supervision', 'trackeval', 'trackers', 'polygraphy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_detections_fields_and_compact_masks(photo_results) -> None:
    _, res = photo_results
    det = res.to_supervision()
    assert isinstance(det.mask, sv.CompactMask), "supervision 0.31 has CompactMask: the crops must go as one"
    assert len(det) == len(res) and det.mask.shape == (len(res), *res.orig_shape)
    np.testing.assert_array_equal(np.asarray(det.mask), res.masks)  # the crops land where they belong
    np.testing.assert_array_equal(det.xyxy, res.boxes)
    np.testing.assert_array_equal(det.confidence, res.scores)
    np.testing.assert_array_equal(det.class_id, res.labels)
    assert det.tracker_id is None and det.data["class_name"].tolist() == res.names
    np.testing.assert_array_equal(det.area, res.areas)
    # supervision's centroids from the compact masks equal its centroids from the dense ones.
    np.testing.assert_array_equal(sv.calculate_masks_centroids(det.mask), sv.calculate_masks_centroids(res.masks))
    # supervision's own filtering keeps the compact form and the right instances.
    kept = det[det.confidence > 0.5]
    assert isinstance(kept.mask, sv.CompactMask)
    np.testing.assert_array_equal(np.asarray(kept.mask), res.masks[res.scores > 0.5])


def test_round_trip_and_the_converse(photo_results) -> None:
    _, res = photo_results
    back = Results.from_supervision(res.to_supervision(), res.class_names)
    np.testing.assert_array_equal(back.crop_masks.boxes, res.crop_masks.boxes)
    assert all(np.array_equal(a, b) for a, b in zip(back.crop_masks.crops, res.crop_masks.crops))
    assert back.names == res.names and np.array_equal(back.scores, res.scores) and back.track_ids is None
    # A Detections with dense masks, class names only, no confidence, and loose CompactMask boxes.
    dense = sv.Detections(xyxy=res.boxes, mask=res.masks, data={"class_name": np.array(res.names)})
    from_dense = Results.from_supervision(dense, res.class_names, res.orig_shape)
    assert from_dense.labels.tolist() == res.labels.tolist() and (from_dense.scores == 1.0).all()
    loose = sv.CompactMask.from_dense(res.masks, np.tile([0, 0, 511, 511], (len(res), 1)), res.orig_shape)
    np.testing.assert_array_equal(
        Results.from_supervision(
            sv.Detections(res.boxes, loose, class_id=res.labels), res.class_names
        ).crop_masks.boxes,
        res.crop_masks.boxes,
    )
    with pytest.raises(ValueError, match="image_shape"):
        Results.from_supervision(res.to_supervision(), res.class_names, (100, 100))
    with pytest.raises(ValueError, match="without masks"):
        Results.from_supervision(sv.Detections(xyxy=res.boxes), res.class_names)
    with pytest.raises(ValueError, match="not in class_names"):
        Results.from_supervision(dense, ["circle"])
    empty = res[res.scores > 2].to_supervision()
    assert len(empty) == 0 and len(Results.from_supervision(empty, res.class_names)) == 0


def test_supervision_annotators_draw_our_instances(photo_results) -> None:
    image, res = photo_results
    det = res.to_supervision()
    masked = sv.MaskAnnotator(opacity=0.5).annotate(image.copy(), det)
    changed = (masked != image).any(-1)
    union = res.masks.any(0)
    assert not changed[~union].any(), "the mask annotator drew outside our masks"
    assert changed[union].mean() > 0.9
    # The same picture from the dense masks: the compact form carries the same pixels.
    dense = sv.Detections(xyxy=det.xyxy, mask=res.masks, confidence=det.confidence, class_id=det.class_id)
    np.testing.assert_array_equal(sv.MaskAnnotator(opacity=0.5).annotate(image.copy(), dense), masked)
    boxed = sv.BoxAnnotator(thickness=1).annotate(image.copy(), det)
    for x1, y1, _, _ in res.boxes.astype(int):
        assert (boxed[y1, x1] != image[y1, x1]).any(), "a box corner is not drawn"
    labelled = sv.LabelAnnotator().annotate(image.copy(), det)  # its text is data["class_name"]
    names = sv.LabelAnnotator().annotate(image.copy(), det, labels=list(det.data["class_name"]))
    np.testing.assert_array_equal(labelled, names)
    assert (labelled != image).any()


def _in_zone(res: Results, zone: tuple[int, int, int, int]) -> int:
    """Instances whose bottom-centre anchor (rounded as supervision rounds) lies in the rectangle zone, computed
    from our boxes without supervision."""
    x0, y0, x1, y1 = zone
    ax = np.rint((res.boxes[:, 0] + res.boxes[:, 2]) / 2)
    ay = np.rint(res.boxes[:, 3])
    return int(((ax >= x0) & (ax <= x1) & (ay >= y0) & (ay <= y1)).sum())


def _zone(rect: tuple[int, int, int, int]):
    x0, y0, x1, y1 = rect
    return sv.PolygonZone(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]))


def test_polygon_zone_counts_on_a_photo(photo_results) -> None:
    _, res = photo_results
    rect = (0, 0, 255, 511)  # the left half
    zone = _zone(rect)
    inside = zone.trigger(res.to_supervision())
    expected = _in_zone(res, rect)
    assert zone.current_count == expected == int(inside.sum())
    assert 0 < expected < len(res), "the zone must split the instances for the count to mean anything"


def test_polygon_zone_counts_on_a_tracked_video(seg, tmp_path) -> None:
    pytest.importorskip("av", reason="video decoding needs PyAV (the video extra)")
    video = make_synthetic_video(tmp_path, frames=30, seed=11)
    rect = (0, 0, 159, 255)  # the left half of 256x320 frames
    zone, counts, totals = _zone(rect), [], []
    for res in seg.track(str(video)):
        totals.append(len(res))
        det = res.to_supervision()
        np.testing.assert_array_equal(det.tracker_id, res.track_ids)
        zone.trigger(det)
        assert zone.current_count == _in_zone(res, rect), f"frame {res.frame.index}"
        counts.append(zone.current_count)
    assert len(counts) == 30 and 0 < sum(counts) < sum(totals), "the zone must hold some instances, not all"
