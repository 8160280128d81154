"""The model: every variant builds and runs, the output contract, and the pieces whose numerics we re-expressed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastinst_rt.modeling.decoder import attention_bias
from fastinst_rt.modeling.layers import deform_conv2d
from fastinst_rt.modeling.query_proposal import selection_scores
from fastinst_rt.zoo import MODELS, build_model

from .conftest import TEST_VARIANTS, make_model


@pytest.mark.parametrize("name", list(MODELS))
def test_every_variant_builds_and_runs(name: str) -> None:
    spec = MODELS[name]
    torch.manual_seed(0)
    model = build_model(spec.config)
    x = torch.randn(1, 3, 160, 224)
    with torch.no_grad():
        out = model(x)
    q, k = spec.config.num_queries, spec.config.num_classes
    assert out["pred_logits"].shape == (1, q, k + 1)
    assert out["pred_masks"].shape == (1, q, 20, 28)
    assert torch.isfinite(out["pred_logits"]).all() and torch.isfinite(out["pred_masks"]).all()


def test_official_parameter_counts() -> None:
    # The README's 30M / 34M / 53M / 30M / 35M (FrozenBN statistics are buffers, not parameters).
    expected = {"fastinst-r50-d1": 29.7, "fastinst-r50-d3": 34.2, "fastinst-r101-d3": 53.1,
                "fastinst-r50vd-dcn-d1": 30.2, "fastinst-r50vd-dcn-d3": 34.7}  # fmt: skip
    for name, millions in expected.items():
        count = sum(p.numel() for p in build_model(MODELS[name].config).parameters()) / 1e6
        assert abs(count - millions) < 0.1, (name, count)


@pytest.mark.parametrize("name", TEST_VARIANTS)
def test_batch_matches_single_images(name: str) -> None:
    model, _ = make_model(name)
    x = torch.randn(2, 3, 192, 256)
    with torch.no_grad():
        both = model(x)
        first = model(x[:1])
    torch.testing.assert_close(both["pred_masks"][:1], first["pred_masks"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(both["pred_logits"][:1], first["pred_logits"], rtol=1e-4, atol=1e-4)


def test_bad_inputs_are_refused() -> None:
    model, _ = make_model(TEST_VARIANTS[0])
    with pytest.raises(ValueError, match="multiple of 32"):
        model(torch.zeros(1, 3, 200, 256))
    with pytest.raises(ValueError, match="too small"):
        model(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="B, 3, H, W"):
        model(torch.zeros(3, 256, 256))


def test_normalize_zeroes_padding_after_normalization() -> None:
    model, _ = make_model(TEST_VARIANTS[0])
    images = torch.full((2, 3, 64, 96), 200, dtype=torch.uint8)
    x = model.normalize(images, torch.tensor([[64, 96], [40, 50]]))
    expected = (200 - model.pixel_mean) / model.pixel_std
    torch.testing.assert_close(x[0], expected.expand(3, 64, 96))
    torch.testing.assert_close(x[1, :, :40, :50], expected.expand(3, 40, 50))
    assert (x[1, :, 40:] == 0).all() and (x[1, :, :, 50:] == 0).all()


def _official_selection_scores(probs: torch.Tensor) -> torch.Tensor:
    """The official QueryProposal scoring on all K+1 planes (spec §3.4), as a reference."""
    num_classes = probs.shape[1] - 1
    one_hot = F.one_hot(probs[:, :-1].max(1)[1], num_classes=num_classes + 1).permute(0, 3, 1, 2)
    x = probs * one_hot
    p = F.pad(x, (1, 1, 1, 1))
    is_max = x >= 1e-6
    for dy, dx in [(0, 1), (2, 1), (1, 0), (1, 2), (0, 0), (0, 2), (2, 0), (2, 2)]:
        is_max &= x >= p[:, :, dy : dy + x.shape[2], dx : dx + x.shape[3]]
    return (x + is_max.to(x))[:, :-1].flatten(2).max(1)[0]


def test_selection_scores_equal_the_official_planes() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 9, 11) * 3
    logits[:, :, 2:5, 3:7] = 0.0  # a flat plateau: ties everywhere count as maxima
    probs = logits.softmax(1)
    assert torch.equal(selection_scores(probs), _official_selection_scores(probs))


def _deform_reference(x, offset, weight, stride, padding):
    """A direct loop over kernel taps with explicit bilinear sampling (zeros outside), as torchvision defines it."""
    b, cin, h, w = x.shape
    cout, _, kh, kw = weight.shape
    ho, wo = offset.shape[-2:]
    out = torch.zeros(b, cout, ho, wo, dtype=torch.float64)
    for tap in range(kh * kw):
        ky, kx = divmod(tap, kw)
        py = torch.arange(ho)[:, None] * stride - padding + ky + offset[:, 2 * tap].double()
        px = torch.arange(wo)[None, :] * stride - padding + kx + offset[:, 2 * tap + 1].double()
        y0, x0 = py.floor().long(), px.floor().long()
        sampled = torch.zeros(b, cin, ho, wo, dtype=torch.float64)
        for yy, xx in [(y0, x0), (y0 + 1, x0), (y0, x0 + 1), (y0 + 1, x0 + 1)]:
            wgt = (1 - (py - yy).abs()) * (1 - (px - xx).abs())
            valid = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            idx = (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)).flatten(1)
            vals = torch.gather(x.double().flatten(2), 2, idx[:, None].expand(b, cin, -1)).view(b, cin, ho, wo)
            sampled += vals * (wgt * valid)[:, None]
        out += torch.einsum("oc,bchw->bohw", weight[:, :, ky, kx].double(), sampled)
    return out


@pytest.mark.parametrize("stride", [1, 2])
def test_deform_conv_matches_direct_bilinear_taps(stride: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 9)
    weight = torch.randn(4, 3, 3, 3)
    ho, wo = (7 - 1) // stride + 1, (9 - 1) // stride + 1
    offset = torch.randn(2, 18, ho, wo) * 2.5  # pushes many taps outside the image
    ours = deform_conv2d(x, offset, weight, stride=stride, padding=1)
    torch.testing.assert_close(ours.double(), _deform_reference(x, offset, weight, stride, 1), rtol=1e-5, atol=1e-5)


def test_deform_conv_with_zero_offsets_is_a_convolution() -> None:
    torch.manual_seed(0)
    x, weight = torch.randn(1, 5, 8, 6), torch.randn(3, 5, 3, 3)
    ours = deform_conv2d(x, torch.zeros(1, 18, 4, 3), weight, stride=2, padding=1)
    torch.testing.assert_close(ours, F.conv2d(x, weight, stride=2, padding=1), rtol=1e-5, atol=1e-5)


def test_fully_masked_rows_attend_everywhere() -> None:
    blocked = torch.zeros(1, 3, 5, dtype=torch.bool)
    blocked[0, 0] = True  # an empty predicted mask
    blocked[0, 1, :2] = True
    bias = attention_bias(blocked)
    assert bias.shape == (1, 1, 3, 5)
    assert (bias[0, 0, 0] == 0).all(), "a row blocking every key must be reopened"
    assert (bias[0, 0, 1, :2] < -1e3).all() and (bias[0, 0, 1, 2:] == 0).all()
    weights = (torch.randn(1, 1, 3, 5) + bias).softmax(-1)
    assert torch.isfinite(weights).all()


def test_empty_masks_do_not_produce_nan() -> None:
    model, _ = make_model(TEST_VARIANTS[0])
    with torch.no_grad():
        # Push every initial mask logit negative: every query's first-layer mask is empty.
        model.decoder.mask_features_layers[0].bias.fill_(-1e3)
        model.decoder.mask_features_layers[0].weight.zero_()
        model.decoder.mask_embed_layers[0].layers[-1].bias.fill_(1.0)
        model.decoder.mask_embed_layers[0].layers[-1].weight.zero_()
        out = model(torch.randn(1, 3, 192, 192))
    assert torch.isfinite(out["pred_masks"]).all() and torch.isfinite(out["pred_logits"]).all()


@pytest.mark.parametrize("name", TEST_VARIANTS)
def test_training_outputs(name: str) -> None:
    model, _ = make_model(name)
    model.train()
    x = torch.randn(2, 3, 192, 256)
    masks = torch.zeros(3, 192, 256, dtype=torch.bool)
    masks[0, 20:90, 30:120] = True
    masks[1, 100:180, 50:200] = True
    targets = [{"labels": torch.tensor([1, 5]), "masks": masks[:2]}, {"labels": torch.tensor([7]), "masks": masks[2:]}]

    def matcher(outputs, tgts):
        return [(torch.arange(len(t["labels"])), torch.arange(len(t["labels"]))) for t in tgts]

    out = model(x, targets, matcher)
    layers = model.decoder.num_layers
    assert out["proposal_cls_logits"].shape == (2, 81, 12, 16)
    loc = out["query_locations"]
    assert loc.shape == (2, 100, 2) and loc.min() >= 0 and loc.max() <= 1
    assert len(out["aux_outputs"]) == 2 * layers
    guided = out["aux_outputs"][:layers]
    assert all(a["pred_matching_indices"] is not None and a["pred_logits"].shape == (2, 100, 81) for a in guided)
    # The guided pass uses the ground truth: it must differ from the unguided last layer, and carry gradients.
    assert not torch.allclose(guided[-1]["pred_masks"], out["pred_masks"])
    loss = out["pred_masks"].mean() + sum(a["pred_masks"].mean() + a["pred_logits"].mean() for a in out["aux_outputs"])
    loss.backward()
    assert model.decoder.meta_pos_embed.grad is not None
    # Without targets the model still returns the unguided auxiliary predictions only.
    assert len(model(x)["aux_outputs"]) == layers
