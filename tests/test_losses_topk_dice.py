"""TopK-Dice loss: exactness of every selection path, the paper's semantics, numerics, compile, GPU syncs."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from monai.losses import DiceLoss

from nnunet_topkdice.losses import (
    CE_and_TopKDice_loss,
    TopKDiceLoss,
    TopKDiceOptions,
    n_excluded_voxels,
    tie_break_map,
    topk_dice_loss,
    topk_exclusion_mask,
)
from nnunet_topkdice.losses import selection as selection_module
from nnunet_topkdice.losses import tie_break as tie_break_module
from nnunet_topkdice.losses.arguments import k_fraction
from nnunet_topkdice.losses.reference import reference_exclusion, reference_topk_dice

SHAPES = [(2, 4, 12, 10), (2, 3, 5, 6, 7)]
SHAPE_IDS = ["2d", "3d"]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize(("do_bg", "batch_dice"), [(True, False), (False, False), (True, True), (False, True)])
def test_k100_equals_monai_squared_dice(random_case, shape, do_bg, batch_dice):
    logits, target = random_case(shape)
    monai = DiceLoss(softmax=True, to_onehot_y=True, squared_pred=True, include_background=do_bg, batch=batch_dice)
    ours = TopKDiceLoss(k=100, do_bg=do_bg, batch_dice=batch_dice)(logits, target)
    assert ours.dtype == torch.float32
    assert ours.item() == pytest.approx(monai(logits, target).item(), abs=1e-5)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("k", [10, 30, 50, 70, 90, 100, 12.5])
def test_excludes_exactly_floor_of_the_easiest(random_case, shape, k):
    logits, target = random_case(shape, seed=1)
    probs = logits.softmax(1)
    excluded = topk_exclusion_mask(probs, target, options=TopKDiceOptions(k=k))
    assert torch.equal(excluded, reference_exclusion(probs, target, options=TopKDiceOptions(k=k)))
    for b in range(shape[0]):
        for c in range(1, shape[1]):
            in_class = target[b, 0] == c
            n = int(in_class.sum())
            assert int((excluded[b, 0] & in_class).sum()) == int((100 - k) * n // 100)
            dropped = probs[b, c][excluded[b, 0] & in_class]
            kept = probs[b, c][~excluded[b, 0] & in_class]
            if len(dropped) and len(kept):  # the excluded voxels are the easiest ones
                assert dropped.min() >= kept.max() - 1e-6
    assert not excluded[target == 0].any()  # background is never selected without do_bg


@pytest.mark.parametrize("k", [10, 50, 90])
def test_exact_count_when_all_probabilities_tie(k):
    target = torch.zeros(2, 1, 9, 11, dtype=torch.long)
    target[:, :, 2:7, 3:9] = 1
    target[0, :, 0, :5] = 2
    probs = torch.full((2, 3, 9, 11), 1 / 3)
    excluded = topk_exclusion_mask(probs, target, options=TopKDiceOptions(k=k))
    assert torch.equal(excluded, reference_exclusion(probs, target, options=TopKDiceOptions(k=k)))
    for b in range(2):
        for c in (1, 2):
            n = int((target[b, 0] == c).sum())
            assert int((excluded[b, 0] & (target[b, 0] == c)).sum()) == (100 - k) * n // 100


def test_exact_with_saturated_probabilities_and_tie_break_disabled(random_case):
    # q == 1.0 exactly for most voxels and no perturbation: only the index can break the ties
    logits, target = random_case((2, 3, 20, 30), seed=2)
    logits = torch.nn.functional.one_hot(target[:, 0], 3).movedim(-1, 1).float() * 60
    logits[:, :, :4] += torch.randn(2, 3, 4, 30)
    probs = logits.softmax(1)
    excluded = topk_exclusion_mask(probs, target, options=TopKDiceOptions(k=30, tie_break_scale=0.0))
    expected_counts = n_excluded_voxels(torch.stack([(target == c).sum((1, 2, 3)) for c in range(3)], 1), 30)
    got = torch.stack([(excluded & (target == c)).sum((1, 2, 3)) for c in range(3)], 1)
    assert torch.equal(got[:, 1:], expected_counts[:, 1:])


# --- every selection path against the reference ------------------------------------------------------

PATH_SHAPES = [(2, 3, 24, 20), (2, 3, 6, 8, 10)]  # 960 voxels: small enough to force any path cheaply
KINDS = ["soft", "confident", "saturated", "tied"]


def _case_of_kind(random_case, shape, kind):
    """Logits whose true-class probabilities are spread (soft), near 1 (confident), exactly 1 for most voxels
    (saturated, where only the tie-break map and the index order them) or all equal (tied, with the
    tie-break map switched off: only the index orders them). Returns logits, target, tie-break scale."""
    scale = {"soft": 1.0, "confident": 5.0, "saturated": 40.0, "tied": 0.0}[kind]
    logits, target = random_case(shape, seed=3, scale=scale)
    return logits, target, 0.0 if kind == "tied" else 1e-6


@pytest.mark.parametrize("shape", PATH_SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_selection_path_matches_reference(random_case, selection_path, shape, kind):
    logits, target, scale = _case_of_kind(random_case, shape, kind)
    probs = logits.softmax(1)
    mask = torch.rand(shape[0], 1, *shape[2:], generator=torch.Generator().manual_seed(4)) > 0.2
    for k in (10, 50, 90):
        for do_bg in (False, True):
            for loss_mask in (None, mask):
                got = topk_exclusion_mask(
                    probs, target, loss_mask=loss_mask, options=TopKDiceOptions(k=k, do_bg=do_bg, tie_break_scale=scale)
                )
                want = reference_exclusion(
                    probs, target, loss_mask=loss_mask, options=TopKDiceOptions(k=k, do_bg=do_bg, tie_break_scale=scale)
                )
                assert torch.equal(got, want), (k, do_bg, loss_mask is not None)


@pytest.mark.parametrize("shape", PATH_SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("kind", ["soft", "tied"])
@pytest.mark.parametrize("batch_dice", [False, True], ids=["per-image", "batch"])
def test_every_selection_path_gives_the_reference_loss(random_case, selection_path, shape, kind, batch_dice):
    logits, target, scale = _case_of_kind(random_case, shape, kind)
    mask = torch.rand(shape[0], 1, *shape[2:], generator=torch.Generator().manual_seed(5)) > 0.2
    for loss_mask in (None, mask):
        ours_in = logits.clone().requires_grad_(True)
        ref_in = logits.double().clone().requires_grad_(True)
        ours = topk_dice_loss(
            ours_in,
            target,
            loss_mask=loss_mask,
            options=TopKDiceOptions(k=30, batch_dice=batch_dice, tie_break_scale=scale),
        )
        ref = reference_topk_dice(
            ref_in,
            target,
            loss_mask=loss_mask,
            options=TopKDiceOptions(k=30, batch_dice=batch_dice, tie_break_scale=scale),
        )
        ours.backward()
        ref.backward()
        assert ours.item() == pytest.approx(ref.item(), abs=1e-5)
        torch.testing.assert_close(ours_in.grad.double(), ref_in.grad, atol=1e-6, rtol=1e-4)


def test_every_selection_path_on_images_smaller_than_the_class_count(random_case, selection_path):
    # 2 x 3 voxels per image and 5 classes: more (image, class) segments than voxels
    logits, target = random_case((2, 5, 2, 3), seed=7, all_present=False)
    probs = logits.softmax(1)
    for k in (10, 50):
        assert torch.equal(
            topk_exclusion_mask(probs, target, options=TopKDiceOptions(k=k)),
            reference_exclusion(probs, target, options=TopKDiceOptions(k=k)),
        )


@pytest.mark.parametrize("k", [50, 100])
def test_every_selection_path_without_codes_selects_the_same(random_case, selection_path, k):
    logits, target = random_case((2, 4, 9, 10), seed=11)
    labels = target.reshape(2, -1).long()
    value = logits.reshape(2, 4, -1).softmax(1).gather(1, labels.unsqueeze(1)).squeeze(1)
    mask = torch.rand(labels.shape, generator=torch.Generator().manual_seed(12)) > 0.2
    for loss_mask in (None, mask):
        full = selection_module.select_easiest(value, labels, 4, k, loss_mask, False)
        lean = selection_module.select_easiest(value, labels, 4, k, loss_mask, False, with_codes=False)
        assert lean.code is None and full.code is not None
        assert torch.equal(lean.excluded, full.excluded)
        assert torch.equal(lean.n_foreground, full.n_foreground) and torch.equal(lean.n_excluded, full.n_excluded)


def test_path_follows_device_and_size():
    # the CPU sorts with NumPy up to NUMPY_INPUT_AT_MOST values (batch x voxels) while the key fits in 63
    # bits, and takes the data-dependent histogram path above; CUDA and meta always take the fixed-shape sort
    most = selection_module.NUMPY_INPUT_AT_MOST
    assert selection_module._path(torch.device("cpu"), 2, most // 2, 4) == "numpy"
    assert selection_module._path(torch.device("cpu"), 2, most // 2 + 1, 4) == "histogram"
    assert selection_module._path(torch.device("cpu"), 1, 64, 2**40) == "histogram"  # the key would not fit
    assert selection_module._path(torch.device("cuda"), 2, 64, 4) == "sort"
    assert selection_module._path(torch.device("meta"), 2, most, 4) == "sort"


@pytest.mark.parametrize("with_ignore", [False, True], ids=["plain", "ignore-label"])
def test_sort_path_has_only_fixed_shapes(with_ignore):
    # meta tensors carry no data: an operation whose output shape depends on values (nonzero, boolean
    # indexing, .item(), bincount) fails on them, so this runs the whole GPU path without a GPU
    loss = CE_and_TopKDice_loss({"k": 50, "batch_dice": True}, {}, ignore_label=3 if with_ignore else None)
    logits = torch.empty(2, 3, 40, 50, device="meta", requires_grad=True)
    target = torch.empty(2, 1, 40, 50, dtype=torch.int16, device="meta")
    value = loss(logits, target)
    value.backward()
    assert value.shape == () and logits.grad.shape == logits.shape


def test_n_excluded_voxels_is_exact_integer_arithmetic():
    n = torch.tensor([0, 1, 3, 10, 20, 33, 100, 12345])
    assert n_excluded_voxels(n, 70).tolist() == [(30 * v) // 100 for v in n.tolist()]
    assert n_excluded_voxels(n, 90).tolist() == [v // 10 for v in n.tolist()]
    assert n_excluded_voxels(n, 100).tolist() == [0] * len(n)
    assert n_excluded_voxels(torch.tensor([8]), 12.5).tolist() == [7]
    # the NumPy selection's counts: the same exact integers, as a NumPy array
    for k in (70, 12.5, 100):
        counts = n_excluded_voxels(n.numpy().astype(np.int32), k)
        assert isinstance(counts, np.ndarray) and counts.dtype == np.int64
        assert counts.tolist() == n_excluded_voxels(n, k).tolist()


def test_a_k_that_eq_3_cannot_count_exactly_is_refused_not_rounded():
    """k = 1e-9 was read as 0 (every foreground voxel excluded: 10 of 10 where eq. 3 says 9)."""
    n = torch.tensor([10, 1000, 10**9])
    assert n_excluded_voxels(n, 1e-6).tolist() == [9, 999, 10**9 - 10]  # floor((100 - 1e-6) / 100 n)
    assert n_excluded_voxels(n, 100 / 3).tolist() == [6, 666, 666666666]  # exactly 2/3 n, not the float's k
    assert n_excluded_voxels(n, 33.3).tolist() == [6, 667, 667000000]  # 333/10, the decimal written
    # more decimal places: the closest fraction of denominator <= 10^6 where it matches to 12 digits
    assert k_fraction(12.1234567) == Fraction(11625219, 958903)
    assert n_excluded_voxels(n, 12.1234567).tolist() == [8, 878, 878765433]
    for k in (1e-9, 4e-7, 33.3333333):
        message = r"k must match a fraction of denominator at most 10\^6 to 12 significant digits"
        with pytest.raises(ValueError, match=rf"{message} .* got {k!r}"):
            TopKDiceLoss(k=k)
        with pytest.raises(ValueError, match=message):
            n_excluded_voxels(n, k)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize(("do_bg", "batch_dice"), [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("k", [100, 50, 10])
def test_value_and_gradient_match_dense_reference(random_case, shape, do_bg, batch_dice, k):
    logits, target = random_case(shape, seed=5, all_present=False)
    ours_in = logits.clone().requires_grad_(True)
    ref_in = logits.double().clone().requires_grad_(True)
    ours = topk_dice_loss(ours_in, target, options=TopKDiceOptions(k=k, do_bg=do_bg, batch_dice=batch_dice))
    ref = reference_topk_dice(ref_in, target, options=TopKDiceOptions(k=k, do_bg=do_bg, batch_dice=batch_dice))
    ours.backward()
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), abs=1e-5)
    torch.testing.assert_close(ours_in.grad.double(), ref_in.grad, atol=1e-6, rtol=1e-4)


def test_absent_classes_are_skipped(random_case):
    logits, target = random_case((1, 4, 8, 8), seed=6, all_present=False)
    target[target == 3] = 1  # class 3 absent: its false positives must not count
    loss = topk_dice_loss(logits, target, options=TopKDiceOptions(k=50))
    only_present = topk_dice_loss(logits[:, :3] - 0, torch.where(target == 3, 1, target), options=TopKDiceOptions(k=50))
    assert loss.item() == pytest.approx(
        reference_topk_dice(logits, target, options=TopKDiceOptions(k=50)).item(), abs=1e-6
    )
    assert loss.item() != pytest.approx(only_present.item(), abs=1e-6)  # the softmax still sees 4 classes
    # mean over present classes only: 2 present foreground classes
    per_class = [
        reference_topk_dice(
            logits, torch.where((target == c) | (target == 0), target, 0), options=TopKDiceOptions(k=50)
        ).item()
        for c in (1, 2)
    ]
    assert loss.item() == pytest.approx(sum(per_class) / 2, abs=1e-6)


@pytest.mark.parametrize("batch_dice", [False, True], ids=["per-image", "batch"])
def test_no_foreground_gives_zero_with_finite_zero_gradient(batch_dice):
    logits = torch.randn(2, 3, 6, 6, requires_grad=True)
    target = torch.zeros(2, 1, 6, 6, dtype=torch.long)
    loss = TopKDiceLoss(k=50, batch_dice=batch_dice)(logits, target)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(logits.grad).all() and (logits.grad == 0).all()


def test_images_without_foreground_are_left_out_of_the_mean(random_case):
    logits, target = random_case((2, 3, 6, 6), seed=7)
    target[1] = 0
    both = topk_dice_loss(logits, target, options=TopKDiceOptions(k=50))
    first = topk_dice_loss(logits[:1], target[:1], options=TopKDiceOptions(k=50))
    assert both.item() == pytest.approx(first.item(), abs=1e-7)


@pytest.mark.parametrize("batch_dice", [False, True], ids=["per-image", "batch"])
def test_masked_voxels_change_nothing_and_get_no_gradient(random_case, batch_dice):
    logits, target = random_case((2, 4, 10, 10), seed=8)
    mask = torch.ones(2, 1, 10, 10, dtype=torch.bool)
    mask[:, :, :4] = False
    other_logits = logits.clone()
    other_logits[:, :, :4] = torch.randn(2, 4, 4, 10) * 5
    other_target = target.clone()
    other_target[:, :, :4] = 255  # an ignore label outside [0, C)
    a = logits.clone().requires_grad_(True)
    b = other_logits.clone().requires_grad_(True)
    loss_a = topk_dice_loss(a, target, loss_mask=mask, options=TopKDiceOptions(k=50, batch_dice=batch_dice))
    loss_b = topk_dice_loss(b, other_target, loss_mask=mask, options=TopKDiceOptions(k=50, batch_dice=batch_dice))
    loss_a.backward()
    loss_b.backward()
    assert loss_a.item() == pytest.approx(loss_b.item(), abs=1e-7)
    assert (b.grad[:, :, :4] == 0).all()
    torch.testing.assert_close(a.grad[:, :, 4:], b.grad[:, :, 4:])
    ref = reference_topk_dice(logits, target, loss_mask=mask, options=TopKDiceOptions(k=50, batch_dice=batch_dice))
    assert loss_a.item() == pytest.approx(ref.item(), abs=1e-6)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_low_precision_logits_give_finite_float32(random_case, shape, dtype):
    logits, target = random_case(shape, seed=9)
    low = logits.to(dtype).requires_grad_(True)
    loss = topk_dice_loss(low, target, options=TopKDiceOptions(k=50, batch_dice=True))
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert low.grad.dtype == dtype and torch.isfinite(low.grad.float()).all()
    full = topk_dice_loss(low.detach().float(), target, options=TopKDiceOptions(k=50, batch_dice=True))
    assert loss.item() == pytest.approx(full.item(), abs=1e-6)


def test_target_dtypes_from_nnunet_are_accepted(random_case):
    logits, target = random_case((2, 3, 6, 6), seed=10)
    values = {
        topk_dice_loss(logits, target.to(dtype), options=TopKDiceOptions(k=50)).item()
        for dtype in (torch.int16, torch.int32, torch.uint8)
    }
    assert len(values) == 1


def test_tie_break_map_is_seeded_and_its_cache_bounded(monkeypatch):
    # identity across processes and resumed trainings: tests/test_trainers_e2e.py (resume end to end)
    first = tie_break_map((5, 7), seed=3)
    assert first.dtype == torch.float32 and first.shape == (5, 7)
    assert 0 <= first.min() and first.max() < 1e-6
    tie_break_module._cache.clear()
    assert torch.equal(first, tie_break_map((5, 7), seed=3))  # drawn again, not only cached
    assert not torch.equal(first, tie_break_map((5, 7), seed=4))
    # a bounded LRU: many shapes keep at most CACHE_ENTRIES maps, the most recently used ones
    monkeypatch.setattr(tie_break_module, "CACHE_ENTRIES", 4)
    tie_break_module._cache.clear()
    for n in range(1, 7):
        tie_break_map((n, 3))
        tie_break_map((1, 3))  # used again and again: stays
    assert [key[0] for key in tie_break_module._cache] == [(4, 3), (5, 3), (6, 3), (1, 3)]


def test_gradcheck_float64(random_case):
    logits, target = random_case((2, 3, 5, 4), seed=12)
    logits = logits.double().requires_grad_(True)
    mask = torch.ones(2, 1, 5, 4, dtype=torch.bool)
    mask[0, 0, 0] = False
    for batch_dice in (False, True):
        assert torch.autograd.gradcheck(
            lambda x, bd=batch_dice: topk_dice_loss(
                x, target, loss_mask=mask, options=TopKDiceOptions(k=50, batch_dice=bd)
            ),
            (logits,),
        )


def test_loss_grows_as_k_shrinks_for_a_partly_missed_object():
    # paper Figure 2: a large object, predicted well in its core and missed along one side
    target = torch.zeros(1, 1, 32, 32, dtype=torch.long)
    target[..., 4:28, 4:28] = 1
    logits = torch.zeros(1, 2, 32, 32)
    logits[:, 1] = -4.0
    logits[:, 1, 4:28, 4:28] = 4.0  # the object: confident
    logits[:, 1, 4:28, 4:10] = -1.0  # a missed strip
    values = [topk_dice_loss(logits, target, options=TopKDiceOptions(k=k)).item() for k in (100, 90, 50, 30, 10)]
    assert all(a < b for a, b in zip(values, values[1:], strict=False)), values


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 0}, "k must be"),
        ({"k": -5}, "k must be"),
        ({"k": 100.5}, "k must be"),
        ({"k": float("nan")}, "k must be"),
        ({"k": True}, "k must be"),
        ({"k": "50"}, "k must be"),
        ({"smooth": -1.0}, "smooth must be"),
        ({"tie_break_scale": -1.0}, "tie_break_scale must be"),
    ],
    ids=["zero", "negative", "above-100", "nan", "bool", "string", "smooth", "scale"],
)
def test_bad_hyper_parameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TopKDiceLoss(**kwargs)


@pytest.mark.parametrize(
    ("logits_shape", "target_shape", "target_dtype", "match"),
    [
        ((2, 3, 8, 8), (2, 8, 8), torch.long, "target must be a label map"),
        ((2, 3, 8, 8), (2, 3, 8, 8), torch.long, "target must be a label map"),
        ((2, 3, 8, 8), (2, 1, 8, 8), torch.float32, "target must hold integer labels"),
        ((2, 3, 8, 8), (2, 1, 8, 8), torch.bool, "target must hold integer labels"),
        ((2, 3, 8, 8), (3, 1, 8, 8), torch.long, "differ in batch or spatial size"),
        ((2, 3, 8, 8), (2, 1, 8, 9), torch.long, "differ in batch or spatial size"),
        ((2, 3, 8), (2, 1, 8), torch.long, "logits must be"),
    ],
    ids=["no-channel", "one-hot", "float", "bool", "batch", "spatial", "1d"],
)
def test_bad_inputs_raise_naming_the_argument(logits_shape, target_shape, target_dtype, match):
    logits = torch.randn(logits_shape)
    target = torch.zeros(target_shape, dtype=target_dtype)
    with pytest.raises(ValueError, match=match):
        topk_dice_loss(logits, target)


def test_checks_read_only_metadata():
    # the public loss runs on meta tensors (which have no data), so its checks cannot sync a GPU
    logits = torch.empty(2, 3, 8, 8, device="meta")
    value = topk_dice_loss(logits, torch.empty(2, 1, 8, 8, dtype=torch.long, device="meta"))
    assert value.device.type == "meta" and value.shape == ()
    with pytest.raises(ValueError, match="differ in batch or spatial size"):
        topk_dice_loss(logits, torch.empty(2, 1, 8, 9, dtype=torch.long, device="meta"))
    with pytest.raises(ValueError, match="loss_mask must have the shape"):
        target = torch.empty(2, 1, 8, 8, dtype=torch.long, device="meta")
        topk_dice_loss(logits, target, loss_mask=torch.empty(2, 8, 8, device="meta"))


def test_function_equals_module(random_case):
    logits, target = random_case((2, 3, 7, 5), seed=13)
    module = TopKDiceLoss(k=30, do_bg=True, batch_dice=True, smooth=1e-3)
    function = topk_dice_loss(logits, target, options=TopKDiceOptions(k=30, do_bg=True, batch_dice=True, smooth=1e-3))
    assert module(logits, target).item() == function.item()


def test_autocast_does_not_lower_the_precision(random_case):
    logits, target = random_case((2, 3, 12, 10), seed=15)
    mask = torch.rand(2, 1, 12, 10, generator=torch.Generator().manual_seed(16)) > 0.3
    full = topk_dice_loss(logits, target, loss_mask=mask, options=TopKDiceOptions(k=50, batch_dice=True))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = topk_dice_loss(logits, target, loss_mask=mask, options=TopKDiceOptions(k=50, batch_dice=True))
    assert under_autocast.dtype == torch.float32
    assert under_autocast.item() == pytest.approx(full.item(), abs=1e-6)


# --- torch.compile and CUDA ------------------------------------------------------------------------------


def _compound_case(random_case, shape, device="cpu"):
    logits, target = random_case(shape, seed=14)
    target[:, :, :2] = 3  # ignore label
    return logits.to(device), target.to(device=device, dtype=torch.int16)


def test_full_graph_compile_equals_eager(random_case):
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    tie_break_module._cache.clear()  # the map is drawn inside the compiled region (custom operator)
    loss = CE_and_TopKDice_loss({"k": 50, "batch_dice": True}, {"weight": [0.5, 1.0, 2.0]}, ignore_label=3)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(loss, fullgraph=True, backend=counter)
    # 9600 voxels: eager runs the CPU histogram path, compiled the fixed-shape sort
    logits, target = _compound_case(random_case, (2, 3, 60, 80))
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    compiled_value = compiled(b, target)
    eager_value = loss(a, target)
    compiled_value.backward()
    eager_value.backward()
    assert counter.frame_count == 1  # one graph (fullgraph=True would raise on a break)
    assert compiled_value.item() == pytest.approx(eager_value.item(), abs=1e-6)
    torch.testing.assert_close(b.grad, a.grad)
    assert len(tie_break_module._cache) == 1  # the map drawn under compile was cached
    compiled(b, target)  # the cache filled since compiling is no reason to recompile
    assert counter.frame_count == 1


@needs_cuda
@pytest.mark.parametrize("shape", [(2, 4, 64, 80), (2, 3, 16, 24, 20)], ids=SHAPE_IDS)
@pytest.mark.parametrize("with_ignore", [False, True], ids=["plain", "ignore-label"])
def test_cuda_call_does_not_synchronise_with_the_host(random_case, no_host_sync, shape, with_ignore):
    loss = CE_and_TopKDice_loss({"k": 50, "batch_dice": True}, {}, ignore_label=3 if with_ignore else None)
    logits, target = _compound_case(random_case, shape, "cuda")
    loss(logits, target)  # the first call per shape copies the tie-break map to the device
    x = logits.clone().requires_grad_(True)
    with no_host_sync():
        loss(x, target).backward()
    assert torch.isfinite(x.grad).all()


@needs_cuda
@pytest.mark.parametrize("shape", [(2, 4, 96, 80), (2, 3, 16, 24, 20)], ids=SHAPE_IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_selection_is_exact_against_the_cpu_reference(random_case, shape, kind):
    logits, target, scale = _case_of_kind(random_case, shape, kind)
    probs = logits.softmax(1)
    mask = torch.rand(shape[0], 1, *shape[2:], generator=torch.Generator().manual_seed(6)) > 0.2
    for k in (10, 50, 90):
        got = topk_exclusion_mask(
            probs.cuda(), target.cuda(), loss_mask=mask.cuda(), options=TopKDiceOptions(k=k, tie_break_scale=scale)
        )
        assert torch.equal(
            got.cpu(),
            reference_exclusion(probs, target, loss_mask=mask, options=TopKDiceOptions(k=k, tie_break_scale=scale)),
        )


@needs_cuda
@pytest.mark.parametrize("batch_dice", [False, True], ids=["per-image", "batch"])
def test_cuda_loss_and_gradient_match_the_cpu_reference(random_case, batch_dice):
    logits, target = random_case((2, 4, 48, 40), seed=17, scale=2.0)
    ours_in = logits.cuda().requires_grad_(True)
    ref_in = logits.double().requires_grad_(True)
    ours = topk_dice_loss(ours_in, target.cuda(), options=TopKDiceOptions(k=30, batch_dice=batch_dice))
    ref = reference_topk_dice(ref_in, target, options=TopKDiceOptions(k=30, batch_dice=batch_dice))
    ours.backward()
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), abs=1e-5)
    torch.testing.assert_close(ours_in.grad.cpu().double(), ref_in.grad, atol=1e-6, rtol=1e-4)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_cuda_autocast_keeps_float32(random_case, dtype):
    logits, target = _compound_case(random_case, (2, 3, 32, 40), "cuda")
    loss = CE_and_TopKDice_loss({"k": 50, "batch_dice": True}, {}, ignore_label=3)
    conv = torch.nn.Conv2d(3, 3, 1).cuda()
    with torch.autocast("cuda", dtype=dtype):
        low = conv(logits)  # half-precision logits from the network
        value = loss(low, target)
    value.backward()
    assert low.dtype == dtype and value.dtype == torch.float32 and torch.isfinite(value)
    assert all(torch.isfinite(p.grad).all() for p in conv.parameters())
    full = loss(low.detach().float(), target)  # the same logits, no autocast: computed alike in float32
    assert value.item() == pytest.approx(full.item(), abs=1e-6)


@needs_cuda
def test_cuda_full_graph_compile_equals_eager(random_case):
    torch._dynamo.reset()
    loss = CE_and_TopKDice_loss({"k": 50, "batch_dice": True}, {}, ignore_label=3)
    compiled = torch.compile(loss, fullgraph=True)  # inductor, as nnU-Net compiles on a GPU
    logits, target = _compound_case(random_case, (2, 3, 64, 80), "cuda")
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    eager_value, compiled_value = loss(a, target), compiled(b, target)
    eager_value.backward()
    compiled_value.backward()
    assert compiled_value.item() == pytest.approx(eager_value.item(), abs=1e-5)
    torch.testing.assert_close(b.grad, a.grad, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("which", ["topk-dice", "ce-and-topk-dice"])
def test_a_second_derivative_is_refused_not_silently_wrong(which: str) -> None:
    """The fused node's backward is closed form: under create_graph=True a Hessian-vector product through
    TopKDiceLoss was off (0.015 against 0.028) and CE_and_TopKDice_loss's gradient had no graph. Now both
    refuse it; the reference, plain autograd, differentiates twice."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn((2, 3, 6, 6), generator=generator, dtype=torch.float64).requires_grad_(True)
    labels = torch.randint(0, 3, (2, 1, 6, 6), generator=generator)
    loss = TopKDiceLoss(k=50) if which == "topk-dice" else CE_and_TopKDice_loss({"k": 50}, {})
    with pytest.raises(RuntimeError, match=r"TopK-Dice's fused loss has a closed-form first derivative only: "
                                           r"create_graph=True .*reference_topk_dice is plain autograd"):  # fmt: skip
        torch.autograd.grad(loss(x, labels), x, create_graph=True)
    (first,) = torch.autograd.grad(loss(x, labels), x)  # once, as always
    assert torch.isfinite(first).all() and first.abs().sum() > 0


def test_a_cross_entropy_weight_needs_one_value_per_class() -> None:
    """4 weights for 3 classes were cut to the first 3 without a word (torch's cross entropy refuses them),
    2 raised an IndexError that named nothing; (C, 1) is taken, as torch takes it."""
    generator = torch.Generator().manual_seed(4)
    x = torch.randn((2, 3, 6, 6), generator=generator)
    labels = torch.randint(0, 3, (2, 1, 6, 6), generator=generator)
    for weight in (torch.ones(2), torch.tensor([1.0, 2.0, 3.0, 4.0])):
        with pytest.raises(ValueError, match=rf"weight needs one value per class \(3\), got shape \({len(weight)},\)"):
            CE_and_TopKDice_loss({"k": 50}, {"weight": weight})(x, labels)
    weight = torch.tensor([1.0, 2.0, 3.0])
    column = CE_and_TopKDice_loss({"k": 50}, {"weight": weight[:, None]})(x, labels)
    assert torch.equal(column, CE_and_TopKDice_loss({"k": 50}, {"weight": weight})(x, labels))
    ce = torch.nn.functional.cross_entropy(x, labels[:, 0], weight=weight)
    torch.testing.assert_close(column, ce + TopKDiceLoss(k=50)(x, labels), rtol=1e-6, atol=0)
