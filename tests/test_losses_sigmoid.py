"""Region (sigmoid) losses: TopK-Dice against a dense reference (ties, masks, numerics), BCE + TopK-Dice, the
region baselines (sigmoid focal + Dice, top-k BCE + Dice) against nnU-Net's DC_and_BCE_loss, argument checks."""

from __future__ import annotations

import doctest
from fractions import Fraction

import pytest
import torch

from nnunet_topkdice.losses import (
    BCE_and_TopKDice_loss,
    DC_and_SigmoidFocal_loss,
    DC_and_TopKBCE_loss,
    SigmoidFocalLoss,
    SigmoidTopKDiceLoss,
    TopKBCELoss,
    TopKDiceOptions,
    n_excluded_voxels,
    sigmoid_topk_dice_loss,
    tie_break_map,
)
from nnunet_topkdice.losses import compound as compound_module
from nnunet_topkdice.losses import region_terms as region_terms_module
from nnunet_topkdice.losses import sigmoid_topk_dice as sigmoid_module
from nnunet_topkdice.losses import tie_break as tie_break_module

SHAPES = [(2, 3, 12, 10), (2, 3, 5, 6, 7)]
SHAPE_IDS = ["2d", "3d"]


def region_case(shape, seed=0, scale=3.0):
    """Nested regions like BraTS (whole >= core >= enhancing) plus one random region overlapping them."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=generator) * scale
    labels = torch.randint(0, 4, (shape[0], *shape[2:]), generator=generator)
    regions = [labels >= 1, labels >= 2, labels == 3, torch.rand(labels.shape, generator=generator) > 0.6]
    return logits, torch.stack(regions[: shape[1]], 1)


def literal_region_exclusion(probs, target, k):
    """(B, R, *spatial) bool: per image and region, a Python sort of the region's voxels by p + eps (the
    library's map), highest first and ties to the lower flat index; the first floor((100-k)/100 n) are excluded."""
    eps = tie_break_map(probs.shape[2:]).reshape(-1)
    drop = 1 - Fraction(k).limit_denominator(10**6) / 100
    out = torch.zeros(probs.shape[0], probs.shape[1], eps.numel(), dtype=torch.bool)
    for b in range(probs.shape[0]):
        for r in range(probs.shape[1]):
            key = (probs[b, r].reshape(-1).float() + eps).tolist()  # eq. 2, in float32 as the selection
            inside = [i for i, y in enumerate(target[b, r].reshape(-1).tolist()) if y != 0]
            order = sorted(inside, key=lambda i: (-key[i], i))
            out[b, r, order[: int(drop * len(inside))]] = True
    return out.view(probs.shape)


def reference_sigmoid_topk_dice(logits, target, k, mask=None, do_bg=True, batch_dice=False, smooth=1e-5):
    """Literal dense float64 version: Yk = Y (1 - E), Pk = P (1 - E) per region, squared Dice over present regions."""
    probs = torch.sigmoid(logits.double())
    valid = torch.ones_like(probs) if mask is None else mask.double().expand_as(probs)
    y = (target != 0).double() * valid
    excluded = literal_region_exclusion(probs.detach(), y, k).double()
    y_k = y * (1 - excluded)
    p_k = probs * valid * (1 - excluded)
    axes = tuple(range(2, logits.ndim))
    intersect, sum_y, sum_p = (y_k * p_k).sum(axes), y_k.sum(axes), (p_k**2).sum(axes)
    present = y.sum(axes) > 0
    first = 0 if do_bg else 1
    intersect, sum_y, sum_p, present = intersect[:, first:], sum_y[:, first:], sum_p[:, first:], present[:, first:]
    if batch_dice:
        intersect, sum_y, sum_p, present = intersect.sum(0), sum_y.sum(0), sum_p.sum(0), present.any(0)
        dice = (2 * intersect + smooth) / (sum_y + sum_p + smooth)
        return 1 - dice[present].mean() if present.any() else logits.sum() * 0
    dice = (2 * intersect + smooth) / (sum_y + sum_p + smooth)
    losses = [1 - dice[b][present[b]].mean() for b in range(dice.shape[0]) if present[b].any()]
    return torch.stack(losses).mean() if losses else logits.sum() * 0


def _mask(shape, channels, seed=3):
    return torch.rand((shape[0], channels, *shape[2:]), generator=torch.Generator().manual_seed(seed)) > 0.3


# --- the loss against the dense reference -----------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize(("do_bg", "batch_dice"), [(True, False), (True, True), (False, False)])
@pytest.mark.parametrize("k", [100, 50, 10])
@pytest.mark.parametrize("mask_channels", [None, 1, 3], ids=["no-mask", "shared-mask", "per-region-mask"])
def test_value_and_gradient_match_dense_reference(shape, do_bg, batch_dice, k, mask_channels):
    logits, target = region_case(shape, seed=5)
    mask = None if mask_channels is None else _mask(shape, mask_channels)
    ours_in = logits.double().clone().requires_grad_(True)
    ref_in = logits.double().clone().requires_grad_(True)
    ours = sigmoid_topk_dice_loss(
        ours_in, target, loss_mask=mask, options=TopKDiceOptions(k=k, do_bg=do_bg, batch_dice=batch_dice)
    )
    ref = reference_sigmoid_topk_dice(ref_in, target, k, mask, do_bg=do_bg, batch_dice=batch_dice)
    ours.backward()
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), abs=1e-10)
    torch.testing.assert_close(ours_in.grad, ref_in.grad, atol=1e-12, rtol=1e-9)


def test_float32_matches_the_reference():
    logits, target = region_case(SHAPES[0], seed=6)
    ours = sigmoid_topk_dice_loss(logits, target.float(), options=TopKDiceOptions(k=30, do_bg=True, batch_dice=True))
    assert ours.dtype == torch.float32
    reference = reference_sigmoid_topk_dice(logits, target, 30, batch_dice=True)
    assert ours.item() == pytest.approx(reference.item(), abs=1e-6)


def test_hand_computed_overlapping_regions():
    # (B=1, R=2, 1x4): region 0 = all four voxels, region 1 = voxels 2, 3 (inside region 0); k=50.
    # sigmoid(logits) = (0.9, 0.2, 0.8, 0.6) in both channels.
    p = torch.tensor([0.9, 0.2, 0.8, 0.6], dtype=torch.float64)
    logits = torch.logit(p).expand(2, 4).reshape(1, 2, 1, 4).clone()
    target = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]]).reshape(1, 2, 1, 4)
    # region 0: D = 2, the two highest (0.9 at voxel 0, 0.8 at voxel 2) go: kept 0.2, 0.6
    dice0 = (2 * (0.2 + 0.6)) / (2 + 0.2**2 + 0.6**2)
    # region 1: D = 1, voxel 2 (0.8) goes even though region 0 dropped it too; voxel 0 (0.9) is outside
    # region 1, so it stays as a false positive
    dice1 = (2 * 0.6) / (1 + 0.9**2 + 0.2**2 + 0.6**2)
    loss = sigmoid_topk_dice_loss(logits, target, options=TopKDiceOptions(k=50, do_bg=True, smooth=0))
    assert loss.item() == pytest.approx(1 - (dice0 + dice1) / 2, abs=1e-12)
    # do_bg=False drops the first region (output channel 0), as nnU-Net's Dice does
    without_first = sigmoid_topk_dice_loss(logits, target, options=TopKDiceOptions(k=50, do_bg=False, smooth=0))
    assert without_first.item() == pytest.approx(1 - dice1, abs=1e-12)


@pytest.mark.parametrize("k", [10, 33, 50, 90])
def test_exactly_floor_excluded_when_every_probability_ties(k):
    # every voxel has the same probability and the tie-break map is off: the count alone is observable
    shape = (2, 3, 7, 9)
    target = region_case(shape, seed=7)[1]
    p = 0.75
    logits = torch.full(shape, float(torch.logit(torch.tensor(p, dtype=torch.float64))), dtype=torch.float64)
    loss = sigmoid_topk_dice_loss(
        logits, target, options=TopKDiceOptions(k=k, do_bg=True, smooth=0, tie_break_scale=0.0)
    )
    n = target.flatten(2).sum(-1)
    n_excluded = n_excluded_voxels(n, k).double()
    kept = n - n_excluded
    n_voxels = target[0, 0].numel()
    dice = 2 * p * kept / (kept + p**2 * (n_voxels - n_excluded))
    assert (n > 0).all()
    assert loss.item() == pytest.approx((1 - dice.mean(-1)).mean().item(), abs=1e-12)
    # with the default map the same inputs select what the literal reference selects
    with_map = sigmoid_topk_dice_loss(logits, target, options=TopKDiceOptions(k=k, do_bg=True))
    assert with_map.item() == pytest.approx(reference_sigmoid_topk_dice(logits, target, k).item(), abs=1e-12)


def test_absent_regions_are_left_out_and_empty_batch_gives_zero():
    logits, target = region_case((2, 3, 6, 6), seed=8)
    target[:, 2] = False
    loss = sigmoid_topk_dice_loss(logits, target, options=TopKDiceOptions(k=50, do_bg=True))
    assert loss.item() == pytest.approx(
        sigmoid_topk_dice_loss(logits[:, :2], target[:, :2], options=TopKDiceOptions(k=50, do_bg=True)).item(), abs=1e-7
    )
    empty = logits.clone().requires_grad_(True)
    for batch_dice in (False, True):
        value = sigmoid_topk_dice_loss(
            empty, torch.zeros_like(target), options=TopKDiceOptions(k=50, do_bg=True, batch_dice=batch_dice)
        )
        value.backward()
        assert value.item() == 0.0 and torch.isfinite(empty.grad).all() and (empty.grad == 0).all()


@pytest.mark.parametrize("batch_dice", [False, True], ids=["per-image", "batch"])
def test_region_present_in_one_image_only(batch_dice):
    # region 2 only in image 0, region 1 only in image 1: per image each image averages its own regions;
    # with batch Dice every region present somewhere counts once
    logits, target = region_case((2, 3, 8, 8), seed=18)
    target[1, 2] = False
    target[0, 1] = False
    ours = sigmoid_topk_dice_loss(
        logits.double(), target, options=TopKDiceOptions(k=50, do_bg=True, batch_dice=batch_dice)
    )
    reference = reference_sigmoid_topk_dice(logits, target, 50, batch_dice=batch_dice)
    assert ours.item() == pytest.approx(reference.item(), abs=1e-10)


@pytest.mark.parametrize("batch_dice", [False, True], ids=["per-image", "batch"])
def test_masked_voxels_change_nothing_and_get_no_gradient(batch_dice):
    logits, target = region_case((2, 3, 10, 10), seed=9)
    mask = torch.ones(2, 1, 10, 10, dtype=torch.bool)
    mask[:, :, :4] = False
    other_logits, other_target = logits.clone(), target.clone()
    other_logits[:, :, :4] = torch.randn(2, 3, 4, 10) * 5
    other_target[:, :, :4] = ~other_target[:, :, :4]
    a, b = logits.clone().requires_grad_(True), other_logits.clone().requires_grad_(True)
    loss_a = sigmoid_topk_dice_loss(
        a, target, loss_mask=mask, options=TopKDiceOptions(k=50, do_bg=True, batch_dice=batch_dice)
    )
    loss_b = sigmoid_topk_dice_loss(
        b, other_target, loss_mask=mask, options=TopKDiceOptions(k=50, do_bg=True, batch_dice=batch_dice)
    )
    loss_a.backward()
    loss_b.backward()
    assert loss_a.item() == pytest.approx(loss_b.item(), abs=1e-7)
    assert (b.grad[:, :, :4] == 0).all()
    torch.testing.assert_close(a.grad[:, :, 4:], b.grad[:, :, 4:])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_low_precision_logits_and_autocast_compute_in_float32(dtype):
    logits, target = region_case(SHAPES[1], seed=10)
    low = logits.to(dtype).requires_grad_(True)
    loss = sigmoid_topk_dice_loss(low, target, options=TopKDiceOptions(k=50, do_bg=True, batch_dice=True))
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert low.grad.dtype == dtype and torch.isfinite(low.grad.float()).all()
    full = sigmoid_topk_dice_loss(
        low.detach().float(), target, options=TopKDiceOptions(k=50, do_bg=True, batch_dice=True)
    )
    assert loss.item() == pytest.approx(full.item(), abs=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = sigmoid_topk_dice_loss(
            logits, target, options=TopKDiceOptions(k=50, do_bg=True, batch_dice=True)
        )
    assert under_autocast.dtype == torch.float32
    assert under_autocast.item() == pytest.approx(
        sigmoid_topk_dice_loss(logits, target, options=TopKDiceOptions(k=50, do_bg=True, batch_dice=True)).item()
    )


def test_target_dtypes_from_nnunet_are_accepted():
    logits, target = region_case((2, 3, 6, 6), seed=11)
    dtypes = (torch.bool, torch.uint8, torch.int16, torch.float32, torch.float16)
    values = {
        sigmoid_topk_dice_loss(logits, target.to(dtype), options=TopKDiceOptions(k=50, do_bg=True)).item()
        for dtype in dtypes
    }
    assert len(values) == 1


@pytest.mark.parametrize("fused", [True, False], ids=["node", "autograd"])
@pytest.mark.parametrize(("value", "shown"), [(2, "2"), (-1, "-1"), (0.5, "0.5"), (float("nan"), "nan")])
def test_targets_other_than_zero_and_one_are_refused(value, shown: str, fused: bool):
    """The selection read ``target != 0`` and BCE the value itself: a 0.5 was 0.5 for BCE and 1 for the Dice
    term, and a 2, a -1 or a NaN gave the loss of a 1 without a word."""
    logits, target = region_case((2, 3, 6, 6), seed=12)
    dtype = torch.int16 if float(value).is_integer() else torch.float32
    broken = target.to(dtype)
    broken[1, 2, 3, 4] = value
    message = rf"target must hold binary \(0/1\) region maps, got the value {shown} \(1 voxel\(s\) neither 0 nor 1\)"
    with pytest.raises(ValueError, match=message):
        SigmoidTopKDiceLoss(k=50)(logits, broken)
    with pytest.raises(ValueError, match=message):
        BCE_and_TopKDice_loss({"k": 50}, {}, fused=fused)(logits, broken)
    broken[1, 2, 3, 4] = 1
    assert torch.isfinite(BCE_and_TopKDice_loss({"k": 50}, {}, fused=fused)(logits, broken))


def test_gradcheck_float64():
    logits, target = region_case((2, 3, 5, 4), seed=12)
    logits = logits.double().requires_grad_(True)
    mask = torch.ones(2, 1, 5, 4, dtype=torch.bool)
    mask[0, 0, 0] = False
    for batch_dice in (False, True):
        assert torch.autograd.gradcheck(
            lambda x, bd=batch_dice: sigmoid_topk_dice_loss(
                x, target, loss_mask=mask, options=TopKDiceOptions(k=50, do_bg=True, batch_dice=bd)
            ),
            (logits,),
        )


def test_the_tie_break_map_is_the_one_of_the_spatial_shape(monkeypatch):
    # one map per spatial shape, shared with the softmax loss and channel_exclusion_mask: not one per flattening
    monkeypatch.setattr(tie_break_module, "_cache", type(tie_break_module._cache)())
    logits, regions = region_case((2, 3, 5, 6, 7), seed=9)
    sigmoid_topk_dice_loss(logits, regions, options=TopKDiceOptions(k=50, do_bg=True))
    assert [key[0] for key in tie_break_module._cache] == [(5, 6, 7)]


def test_function_equals_module():
    logits, target = region_case((2, 3, 7, 5), seed=13)
    module = SigmoidTopKDiceLoss(k=30, do_bg=False, batch_dice=True, smooth=1e-3)
    function = sigmoid_topk_dice_loss(
        logits, target, options=TopKDiceOptions(k=30, do_bg=False, batch_dice=True, smooth=1e-3)
    )
    assert module(logits, target).item() == function.item()
    assert "k=30.0" in repr(module) and "do_bg=False" in repr(module)


# --- BCE + TopK-Dice --------------------------------------------------------------------------------


@pytest.mark.parametrize("with_ignore", [False, True], ids=["plain", "ignore-label"])
@pytest.mark.parametrize(("weight_ce", "weight_dice"), [(1, 1), (0.3, 2.0)], ids=["default", "weighted"])
def test_bce_and_topk_dice_is_the_sum_of_its_parts(with_ignore, weight_ce, weight_dice):
    logits, regions = region_case((2, 3, 9, 8), seed=14)
    logits = logits.double()
    ignored = ~_mask(logits.shape, 1, seed=15)
    target = torch.cat([regions, ignored], 1) if with_ignore else regions  # nnU-Net: ignore mask last
    dice_kwargs = {"k": 30, "batch_dice": True, "do_bg": True}
    loss = BCE_and_TopKDice_loss(dice_kwargs, {}, weight_ce, weight_dice, use_ignore_label=with_ignore)
    a, b = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    value = loss(a, target)
    valid = ~ignored
    bce = torch.nn.functional.binary_cross_entropy_with_logits(b, regions.double(), reduction="none")
    # nnU-Net's DC_and_BCE_loss: with an ignore label, summed over regions per valid voxel
    bce = (bce * valid).sum() / valid.sum() if with_ignore else bce.mean()
    dice = SigmoidTopKDiceLoss(**dice_kwargs)(b, regions, loss_mask=valid if with_ignore else None)
    expected = weight_ce * bce + weight_dice * dice
    value.backward()
    expected.backward()
    assert value.item() == pytest.approx(expected.item(), abs=1e-12)
    torch.testing.assert_close(a.grad, b.grad, atol=1e-14, rtol=1e-10)
    if with_ignore:
        assert (a.grad.masked_select(ignored.expand_as(a.grad)) == 0).all()


@pytest.mark.parametrize("with_ignore", [False, True], ids=["plain", "ignore-label"])
def test_bce_and_topk_dice_gpu_path_has_only_fixed_shapes(with_ignore):
    # meta tensors carry no data: a value-dependent shape (nonzero, boolean indexing, .item()) fails on them
    loss = BCE_and_TopKDice_loss({"k": 50, "batch_dice": True}, {}, use_ignore_label=with_ignore)
    logits = torch.empty(2, 3, 6, 8, 5, device="meta", requires_grad=True)
    target = torch.empty(2, 4 if with_ignore else 3, 6, 8, 5, dtype=torch.bool, device="meta")
    value = loss(logits, target)
    value.backward()
    assert value.shape == () and logits.grad.shape == logits.shape


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("with_ignore", [False, True], ids=["plain", "ignore-label"])
def test_bce_and_topk_dice_cuda_equals_the_cpu_and_does_not_synchronise_with_the_host(no_host_sync, with_ignore):
    logits, regions = region_case((2, 3, 20, 24, 16), seed=21)
    ignored = ~_mask(logits.shape, 1, seed=22)
    target = torch.cat([regions, ignored], 1) if with_ignore else regions
    loss = BCE_and_TopKDice_loss({"k": 50, "batch_dice": True}, {}, use_ignore_label=with_ignore)
    cpu_logits = logits.clone().requires_grad_(True)
    expected = loss(cpu_logits, target)
    expected.backward()
    cuda_target = target.cuda()
    loss(logits.cuda(), cuda_target)  # the first call per shape copies the tie-break map to the device
    cuda_logits = logits.cuda().requires_grad_(True)
    with no_host_sync():
        value = loss(cuda_logits, cuda_target)
        value.backward()
    assert value.item() == pytest.approx(expected.item(), abs=1e-5)
    torch.testing.assert_close(cuda_logits.grad.cpu(), cpu_logits.grad, atol=1e-6, rtol=1e-4)


def test_bce_and_topk_dice_equals_nnunets_region_loss_at_k100_on_the_bce_term():
    # the BCE term (with its ignore normalisation) is nnU-Net's: compare with DC_and_BCE_loss, Dice weight 0
    from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss

    logits, regions = region_case((2, 3, 9, 8), seed=16)
    target = torch.cat([regions, ~_mask(logits.shape, 1, seed=17)], 1)
    ours = BCE_and_TopKDice_loss({"k": 100}, {}, weight_dice=0, use_ignore_label=True)
    theirs = DC_and_BCE_loss({}, {"do_bg": True, "smooth": 1e-5, "ddp": False}, weight_dice=0, use_ignore_label=True)
    assert ours(logits, target).item() == pytest.approx(theirs(logits, target).item(), abs=1e-6)
    assert ours.dc is None  # a term with weight 0 is not built


def test_bce_and_topk_dice_does_not_mutate_kwargs_and_passes_bce_weights():
    dice_kwargs, bce_kwargs = {"k": 50}, {"pos_weight": torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1)}
    loss = BCE_and_TopKDice_loss(dice_kwargs, bce_kwargs, use_ignore_label=True)
    assert dice_kwargs == {"k": 50} and set(bce_kwargs) == {"pos_weight"}
    assert loss.ce.reduction == "none" and torch.equal(loss.ce.pos_weight, bce_kwargs["pos_weight"])
    assert loss.dc.k == 50.0 and loss.dc.do_bg is True


def test_docstring_examples_run():
    for module in (sigmoid_module, compound_module, region_terms_module):
        assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0


# --- the region baselines: sigmoid focal + Dice, top-k BCE + Dice ------------------------------------


def _nnunet_region_loss(use_ignore_label: bool):
    """nnU-Net's default region loss, as nnUNetTrainer._build_loss builds it for regions (batch Dice here)."""
    from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss

    dice_kwargs = {"batch_dice": True, "do_bg": True, "smooth": 1e-5, "ddp": False}
    return DC_and_BCE_loss({}, dice_kwargs, use_ignore_label=use_ignore_label)


def _region_target(with_ignore: bool, seed: int = 19):
    logits, regions = region_case((2, 3, 9, 8), seed=seed)
    ignored = ~_mask(logits.shape, 1, seed=seed + 1)
    return logits, regions, ignored, (torch.cat([regions, ignored], 1) if with_ignore else regions)


def test_sigmoid_focal_is_the_literal_formula_and_bce_at_gamma_0():
    logits, regions, ignored, _ = _region_target(False)
    x = logits.double()
    p_t = torch.where(regions, torch.sigmoid(x), 1 - torch.sigmoid(x))
    literal = -((1 - p_t) ** 2) * torch.log(p_t)
    valid = ~ignored
    assert SigmoidFocalLoss()(x, regions).item() == pytest.approx(literal.mean().item(), rel=1e-12)
    masked = (literal * valid).sum() / valid.sum()  # DC_and_BCE_loss's normalisation with a mask
    assert SigmoidFocalLoss()(x, regions, valid).item() == pytest.approx(masked.item(), rel=1e-12)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(x, regions.double())
    assert SigmoidFocalLoss(gamma=0)(x, regions).item() == pytest.approx(bce.item(), rel=1e-12)
    # logit 0: p_t = 1/2, so 0.25 * log 2 per voxel
    half = SigmoidFocalLoss()(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2))
    assert half.item() == pytest.approx(0.25 * 0.6931471805599453, rel=1e-6)


@pytest.mark.parametrize("k", [100, 50, 10, 0.1])
@pytest.mark.parametrize("with_mask", [False, True], ids=["plain", "mask"])
def test_topk_bce_is_the_mean_of_the_k_percent_highest(k, with_mask):
    logits, regions, ignored, _ = _region_target(False, seed=21)
    x = logits.double()
    mask = ~ignored if with_mask else None
    values = torch.nn.functional.binary_cross_entropy_with_logits(x, regions.double(), reduction="none")
    if with_mask:
        values = values * mask  # masked values are 0 and still counted, as TopKLoss counts ignored voxels
    ordered = sorted(values.reshape(-1).tolist(), reverse=True)
    n_kept = max(1, int(len(ordered) * k / 100))
    expected = sum(ordered[:n_kept]) / n_kept
    assert TopKBCELoss(k=k)(x, regions, mask).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("with_ignore", [False, True], ids=["plain", "ignore-label"])
def test_region_baselines_at_their_limits_equal_nnunets_region_loss(with_ignore):
    # focal at gamma=0 is BCE; top-k BCE at k=100 is the BCE mean (no ignore label: TopKLoss's count differs)
    logits, _, _, target = _region_target(with_ignore, seed=23)
    dice_kwargs = {"batch_dice": True, "do_bg": True, "smooth": 1e-5, "ddp": False}
    losses = [DC_and_SigmoidFocal_loss(dice_kwargs, {"gamma": 0}, use_ignore_label=with_ignore)]
    if not with_ignore:
        losses.append(DC_and_TopKBCE_loss(dice_kwargs, {"k": 100}))
    reference_in = logits.clone().requires_grad_(True)
    reference = _nnunet_region_loss(with_ignore)(reference_in, target)
    reference.backward()
    for loss in losses:
        ours_in = logits.clone().requires_grad_(True)
        value = loss(ours_in, target)
        value.backward()
        assert value.item() == pytest.approx(reference.item(), abs=1e-6), type(loss).__name__
        torch.testing.assert_close(ours_in.grad, reference_in.grad, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("with_ignore", [False, True], ids=["plain", "ignore-label"])
def test_region_baselines_are_the_sum_of_their_parts(with_ignore):
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    logits, regions, ignored, target = _region_target(with_ignore, seed=25)
    mask = ~ignored if with_ignore else None
    dice_kwargs = {"batch_dice": False, "do_bg": True, "smooth": 1e-5, "ddp": False}
    dice = MemoryEfficientSoftDiceLoss(apply_nonlin=torch.sigmoid, **dice_kwargs)(logits, regions, loss_mask=mask)
    focal = DC_and_SigmoidFocal_loss(dice_kwargs, {"gamma": 2.0}, 0.5, 2.0, use_ignore_label=with_ignore)
    expected = 0.5 * SigmoidFocalLoss(2.0)(logits, regions, mask) + 2.0 * dice
    assert focal(logits, target).item() == pytest.approx(expected.item(), abs=1e-6)
    topk = DC_and_TopKBCE_loss(dice_kwargs, {"k": 30}, use_ignore_label=with_ignore)
    expected = TopKBCELoss(30)(logits, regions, mask) + dice
    assert topk(logits, target).item() == pytest.approx(expected.item(), abs=1e-6)
    assert DC_and_TopKBCE_loss(dice_kwargs, {"k": 30}, weight_ce=0).ce is None  # weight 0: not built


# --- argument checks: ValueError naming the argument, metadata only ---------------------------------


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: SigmoidFocalLoss(gamma=-1.0), "gamma must be"),
        (lambda: SigmoidFocalLoss(gamma="2"), "gamma must be"),
        (lambda: DC_and_SigmoidFocal_loss({}, {"gamma": -0.5}), "gamma must be"),
        (lambda: TopKBCELoss(k=0), "k must be"),
        (lambda: TopKBCELoss(k=101), "k must be"),
        (lambda: DC_and_TopKBCE_loss({}, {"k": True}), "k must be"),
    ],
    ids=["focal-gamma", "focal-gamma-str", "compound-gamma", "topk-k0", "topk-k101", "compound-k"],
)
def test_region_baseline_bad_arguments_raise(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_region_terms_check_metadata_only():
    logits = torch.empty(2, 3, 8, 8, device="meta")
    for term in (SigmoidFocalLoss(), TopKBCELoss(50)):
        with pytest.raises(ValueError, match="target must have the shape of logits"):
            term(logits, torch.empty(2, 1, 8, 8, device="meta"))
        with pytest.raises(ValueError, match=r"mask must have shape \(B, 1, \*spatial\)"):
            term(logits, torch.empty(2, 3, 8, 8, device="meta"), torch.empty(2, 3, 8, 8, device="meta"))
    for loss in (DC_and_SigmoidFocal_loss({}, {}, use_ignore_label=True), DC_and_TopKBCE_loss({}, {})):
        with pytest.raises(ValueError, match="target must have shape"):
            loss(torch.randn(2, 3, 8, 8), torch.zeros(2, 5, 8, 8, dtype=torch.bool))


# --- argument checks: ValueError naming the argument, metadata only ---------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 0}, "k must be"),
        ({"k": 100.5}, "k must be"),
        ({"k": float("nan")}, "k must be"),
        ({"k": True}, "k must be"),
        ({"k": "50"}, "k must be"),
        ({"smooth": -1.0}, "smooth must be"),
        ({"smooth": "1"}, "smooth must be"),
        ({"tie_break_scale": -1.0}, "tie_break_scale must be"),
    ],
    ids=["zero", "above-100", "nan", "bool", "string", "smooth", "smooth-str", "scale"],
)
def test_bad_hyper_parameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SigmoidTopKDiceLoss(**kwargs)
    with pytest.raises(ValueError, match=match):
        BCE_and_TopKDice_loss(kwargs, {})


def test_bad_bce_kwargs_raise():
    with pytest.raises(ValueError, match=r"bce_kwargs supports 'weight' and 'pos_weight', got \['reduction'\]"):
        BCE_and_TopKDice_loss({}, {"reduction": "sum"})


@pytest.mark.parametrize(
    ("target_shape", "mask_shape", "match"),
    [
        ((2, 1, 8, 8), None, "target must be binary region maps"),
        ((2, 3, 8, 9), None, "target must be binary region maps"),
        ((2, 3, 8, 8), (2, 2, 8, 8), "loss_mask must have shape"),
        ((2, 3, 8, 8), (2, 1, 8, 9), "loss_mask must have shape"),
        ((2, 3, 8, 8), (2, 8, 8), "loss_mask must have shape"),
    ],
    ids=["label-map", "spatial", "mask-channels", "mask-spatial", "mask-ndim"],
)
def test_bad_inputs_raise_on_metadata_only(target_shape, mask_shape, match):
    # meta tensors have no data: a check that read values (a GPU sync) would fail here
    logits = torch.empty(2, 3, 8, 8, device="meta")
    target = torch.empty(target_shape, dtype=torch.bool, device="meta")
    mask = None if mask_shape is None else torch.empty(mask_shape, dtype=torch.bool, device="meta")
    with pytest.raises(ValueError, match=match):
        sigmoid_topk_dice_loss(logits, target, loss_mask=mask)
    value = sigmoid_topk_dice_loss(logits, torch.empty(2, 3, 8, 8, device="meta"))
    assert value.device.type == "meta" and value.shape == ()
    with pytest.raises(ValueError, match="logits must be a float tensor"):
        sigmoid_topk_dice_loss(torch.randn(2, 3, 8), torch.zeros(2, 3, 8))


@pytest.mark.parametrize("use_ignore_label", [False, True], ids=["plain", "ignore-label"])
def test_compound_checks_the_target_channels(use_ignore_label):
    loss = BCE_and_TopKDice_loss({}, {}, use_ignore_label=use_ignore_label)
    wrong = 3 if use_ignore_label else 4  # R channels with an ignore label, R + 1 without
    with pytest.raises(ValueError, match=r"target must have shape \(B, R( \+ 1)?, \*spatial\)"):
        loss(torch.randn(2, 3, 8, 8), torch.zeros(2, wrong, 8, 8, dtype=torch.bool))
