"""Focal loss and the compound losses (each equals the sum of its parts, ignore label included)."""

from __future__ import annotations

import doctest
import math

import pytest
import torch
import torch.nn.functional as F
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.training.loss.robust_ce_loss import RobustCrossEntropyLoss, TopKLoss
from nnunetv2.utilities.helpers import softmax_helper_dim1

import nnunet_topkdice.losses.compound as compound_module
import nnunet_topkdice.losses.focal as focal_module
import nnunet_topkdice.losses.topk_dice as topk_module
from nnunet_topkdice.losses import (
    CE_and_TopKDice_loss,
    DC_and_Focal_loss,
    DC_and_TopKCE_loss,
    FocalLoss,
    TopKDiceLoss,
    TopKDiceOptions,
    focal_loss,
)
from nnunet_topkdice.losses.reference import reference_topk_dice

IGNORE = 3
DICE_KWARGS = {"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}


def case(seed=0, with_ignore=False, shape=(2, 3, 10, 12)):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=generator) * 2
    target = torch.randint(0, shape[1], (shape[0], 1, *shape[2:]), generator=generator)
    if with_ignore:
        target[:, :, :3] = IGNORE
    return logits, target


@pytest.mark.parametrize("shape", [(2, 3, 6, 7), (2, 4, 3, 4, 5)], ids=["2d", "3d"])
def test_focal_gamma0_equals_cross_entropy(shape):
    logits, target = case(shape=shape)
    assert focal_loss(logits, target, gamma=0.0).item() == pytest.approx(
        F.cross_entropy(logits, target[:, 0]).item(), rel=1e-6
    )


def test_focal_hand_computed_value():
    # one voxel with p_t = e^2 / (e^2 + 1): loss = -(1 - p_t)^2 log p_t
    logits = torch.tensor([[0.0, 2.0]]).view(1, 2, 1, 1)
    target = torch.ones(1, 1, 1, 1, dtype=torch.long)
    p_t = math.exp(2) / (math.exp(2) + 1)
    assert FocalLoss(gamma=2)(logits, target).item() == pytest.approx(-((1 - p_t) ** 2) * math.log(p_t), rel=1e-6)
    weighted = FocalLoss(gamma=2, alpha=[0.25, 0.75])(logits, target).item()
    assert weighted == pytest.approx(-0.75 * (1 - p_t) ** 2 * math.log(p_t), rel=1e-6)


def test_focal_mean_is_over_voxels_and_ignore_index_works():
    logits, target = case(with_ignore=True)
    valid = target != IGNORE
    per_voxel = focal_loss(logits, torch.where(valid, target, 0), gamma=2.0, reduction="none")
    expected = per_voxel[valid[:, 0]].mean()
    got = FocalLoss(gamma=2.0, ignore_index=IGNORE)(logits, target)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    # ignored voxels get no gradient
    x = logits.clone().requires_grad_(True)
    FocalLoss(ignore_index=IGNORE)(x, target).backward()
    assert (x.grad[:, :, :3] == 0).all() and (x.grad[:, :, 3:] != 0).any()
    # everything ignored: 0, not NaN
    assert FocalLoss(ignore_index=IGNORE)(logits, torch.full_like(target, IGNORE)).item() == 0.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gamma": -1.0}, "gamma must be"),
        ({"alpha": [0.5, -1.0]}, "alpha must be"),
        ({"reduction": "max"}, "reduction"),
    ],
    ids=["gamma", "alpha", "reduction"],
)
def test_focal_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FocalLoss(**kwargs)


def test_focal_bad_target():
    with pytest.raises(ValueError, match="target must hold integer labels"):
        focal_loss(torch.randn(1, 2, 4, 4), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="differ in batch or spatial size"):
        focal_loss(torch.randn(1, 2, 4, 4), torch.zeros(1, 1, 4, 5, dtype=torch.long))


@pytest.mark.parametrize("with_ignore", [False, True], ids=["plain", "ignore-label"])
def test_ce_and_topk_dice_is_the_sum_of_its_parts(with_ignore):
    logits, target = case(seed=1, with_ignore=with_ignore)
    ignore = IGNORE if with_ignore else None
    loss = CE_and_TopKDice_loss({"k": 50, **DICE_KWARGS}, {}, weight_ce=1, weight_dice=1, ignore_label=ignore)
    ce = RobustCrossEntropyLoss(ignore_index=IGNORE if with_ignore else -100)
    dice = TopKDiceLoss(k=50, batch_dice=True)
    mask = (target != IGNORE) if with_ignore else None
    dice_target = torch.where(target == IGNORE, 0, target) if with_ignore else target

    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    combined = loss(a, target)
    parts = ce(b, target) + dice(b, dice_target, loss_mask=mask)
    combined.backward()
    parts.backward()
    assert combined.item() == pytest.approx(parts.item(), abs=1e-6)
    torch.testing.assert_close(a.grad, b.grad, atol=1e-7, rtol=1e-5)
    if with_ignore:
        assert (a.grad[:, :, :3] == 0).all()


def test_ce_and_topk_dice_weights_and_class_weights():
    logits, target = case(seed=2)
    weight = [0.2, 1.0, 3.0]
    loss = CE_and_TopKDice_loss({"k": 30}, {"weight": weight}, weight_ce=0.5, weight_dice=2.0)
    expected = 0.5 * F.cross_entropy(logits, target[:, 0], weight=torch.tensor(weight)) + 2.0 * TopKDiceLoss(k=30)(
        logits, target
    )
    assert loss(logits, target).item() == pytest.approx(expected.item(), abs=1e-6)
    only_ce = CE_and_TopKDice_loss({"k": 30}, {}, weight_dice=0)
    assert only_ce(logits, target).item() == pytest.approx(F.cross_entropy(logits, target[:, 0]).item(), abs=1e-6)


@pytest.mark.parametrize(("weight_ce", "weight_dice"), [(0.5, 2.0), (1.0, 0.0), (0.0, 1.0)], ids=["both", "ce", "dice"])
@pytest.mark.parametrize("with_ignore", [False, True], ids=["plain", "ignore-label"])
@pytest.mark.parametrize("class_weights", [False, True], ids=["unweighted", "class-weights"])
def test_ce_and_topk_dice_gradient_matches_autograd_reference(weight_ce, weight_dice, with_ignore, class_weights):
    # the fused node's hand-written backward against autograd through a dense float64 reference
    logits, target = case(seed=4, with_ignore=with_ignore)
    weight = [0.2, 1.0, 3.0] if class_weights else None
    ignore = IGNORE if with_ignore else None
    loss = CE_and_TopKDice_loss(
        {"k": 30, **DICE_KWARGS}, {} if weight is None else {"weight": weight}, weight_ce, weight_dice, ignore
    )
    mask = (target != IGNORE) if with_ignore else None
    labels = torch.where(target == IGNORE, 0, target) if with_ignore else target

    ours_in = logits.clone().requires_grad_(True)
    ref_in = logits.double().clone().requires_grad_(True)
    ours = loss(ours_in, target)
    ce = F.cross_entropy(
        ref_in,
        target[:, 0],
        weight=None if weight is None else torch.tensor(weight, dtype=torch.float64),
        ignore_index=IGNORE if with_ignore else -100,
    )
    ref = weight_ce * ce + weight_dice * reference_topk_dice(
        ref_in, labels, loss_mask=mask, options=TopKDiceOptions(k=30, batch_dice=True)
    )
    ours.backward()
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), abs=1e-5)
    torch.testing.assert_close(ours_in.grad.double(), ref_in.grad, atol=1e-7, rtol=1e-4)


def test_ce_and_topk_dice_all_ignored_is_zero_not_nan():
    logits, _ = case(seed=3)
    x = logits.clone().requires_grad_(True)
    value = CE_and_TopKDice_loss({"k": 50}, {}, ignore_label=IGNORE)(x, torch.full((2, 1, 10, 12), IGNORE))
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(x.grad).all()


def test_compound_losses_do_not_mutate_kwargs():
    dice_kwargs, ce_kwargs = dict(DICE_KWARGS), {}
    CE_and_TopKDice_loss({"k": 50}, ce_kwargs, ignore_label=IGNORE)
    DC_and_Focal_loss(dice_kwargs, ce_kwargs, ignore_label=IGNORE)
    DC_and_TopKCE_loss(dice_kwargs, {"k": 10}, ignore_label=IGNORE)
    assert ce_kwargs == {} and dice_kwargs == DICE_KWARGS


def test_ce_and_topk_dice_rejects_unknown_ce_kwargs():
    with pytest.raises(ValueError, match="ce_kwargs supports"):
        CE_and_TopKDice_loss({"k": 50}, {"label_smoothing": 0.1})
    with pytest.raises(ValueError, match="k must be"):
        CE_and_TopKDice_loss({"k": 0}, {})


def _nnunet_dice():
    return MemoryEfficientSoftDiceLoss(apply_nonlin=softmax_helper_dim1, **DICE_KWARGS)


@pytest.mark.parametrize("with_ignore", [False, True], ids=["plain", "ignore-label"])
def test_dc_and_focal_is_the_sum_of_its_parts(with_ignore):
    logits, target = case(seed=4, with_ignore=with_ignore)
    ignore = IGNORE if with_ignore else None
    loss = DC_and_Focal_loss(DICE_KWARGS, {"gamma": 2.0}, ignore_label=ignore)
    mask = (target != IGNORE) if with_ignore else None
    dice_target = torch.where(target == IGNORE, 0, target) if with_ignore else target
    focal = FocalLoss(gamma=2.0, ignore_index=IGNORE if with_ignore else -100)
    expected = focal(logits, target) + _nnunet_dice()(logits, dice_target, loss_mask=mask)
    assert loss(logits, target).item() == pytest.approx(expected.item(), abs=1e-6)


@pytest.mark.parametrize("with_ignore", [False, True], ids=["plain", "ignore-label"])
def test_dc_and_topk_ce_is_the_sum_of_its_parts(with_ignore):
    logits, target = case(seed=5, with_ignore=with_ignore)
    ignore = IGNORE if with_ignore else None
    loss = DC_and_TopKCE_loss(DICE_KWARGS, {"k": 50}, weight_ce=1, weight_dice=1, ignore_label=ignore)
    mask = (target != IGNORE) if with_ignore else None
    dice_target = torch.where(target == IGNORE, 0, target) if with_ignore else target
    topk = TopKLoss(k=50, ignore_index=IGNORE if with_ignore else -100)
    expected = topk(logits, target) + _nnunet_dice()(logits, dice_target, loss_mask=mask)
    assert loss(logits, target).item() == pytest.approx(expected.item(), abs=1e-6)
    weight_zero = DC_and_TopKCE_loss(DICE_KWARGS, {"k": 50}, weight_ce=0)
    assert weight_zero.ce is None  # a term with weight 0 is not built


@pytest.mark.parametrize("module", [topk_module, focal_module, compound_module], ids=["topk_dice", "focal", "compound"])
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_ce_value_saturates_only_beyond_float32_range_gradient_stays_exact():
    # a voxel whose true class has probability e^-200: nn.CrossEntropyLoss gives 200, we report -log(tiny)
    logits = torch.zeros(1, 2, 1, 2)
    logits[0, 0, 0, 0] = 200.0
    target = torch.ones(1, 1, 1, 2, dtype=torch.long)
    ours_in = logits.clone().requires_grad_(True)
    ref_in = logits.clone().requires_grad_(True)
    CE_and_TopKDice_loss({"k": 50}, {}, weight_dice=0)(ours_in, target).backward()
    reference = F.cross_entropy(ref_in, target[:, 0])
    reference.backward()
    value = CE_and_TopKDice_loss({"k": 50}, {}, weight_dice=0)(logits, target).item()
    tiny = torch.finfo(torch.float32).tiny
    assert value == pytest.approx((-math.log(tiny) + math.log(2)) / 2, rel=1e-6)
    assert reference.item() == pytest.approx((200 + math.log(2)) / 2, rel=1e-6)
    torch.testing.assert_close(ours_in.grad, ref_in.grad)
