"""TopK-Dice loss: exactness of the selection, the paper's semantics, numerics and argument checks."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from loss_reference import reference_exclusion, reference_topk_dice
from monai.losses import DiceLoss

from nnunet_topkdice.losses import TopKDiceLoss, n_excluded_voxels, tie_break_map, topk_dice_loss, topk_exclusion_mask
from nnunet_topkdice.losses import topk_dice as topk_module

SHAPES = [(2, 4, 12, 10), (2, 3, 5, 6, 7)]
SHAPE_IDS = ["2d", "3d"]


def random_case(shape, seed=0, scale=3.0, all_present=True):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=generator) * scale
    target = torch.randint(0, shape[1], (shape[0], 1, *shape[2:]), generator=generator)
    if all_present:  # every class in every image
        flat = target.view(shape[0], -1)
        flat[:, : shape[1]] = torch.arange(shape[1])
    return logits, target


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize(("do_bg", "batch_dice"), [(True, False), (False, False), (True, True), (False, True)])
def test_k100_equals_monai_squared_dice(shape, do_bg, batch_dice):
    logits, target = random_case(shape)
    monai = DiceLoss(softmax=True, to_onehot_y=True, squared_pred=True, include_background=do_bg, batch=batch_dice)
    ours = TopKDiceLoss(k=100, do_bg=do_bg, batch_dice=batch_dice)(logits, target)
    assert ours.dtype == torch.float32
    assert ours.item() == pytest.approx(monai(logits, target).item(), abs=1e-5)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("k", [10, 30, 50, 70, 90, 100, 12.5])
def test_excludes_exactly_floor_of_the_easiest(shape, k):
    logits, target = random_case(shape, seed=1)
    probs = logits.softmax(1)
    excluded = topk_exclusion_mask(probs, target, k)
    assert torch.equal(excluded, reference_exclusion(probs, target, k))
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
    excluded = topk_exclusion_mask(probs, target, k)
    assert torch.equal(excluded, reference_exclusion(probs, target, k))
    for b in range(2):
        for c in (1, 2):
            n = int((target[b, 0] == c).sum())
            assert int((excluded[b, 0] & (target[b, 0] == c)).sum()) == (100 - k) * n // 100


def test_exact_with_saturated_probabilities_and_tie_break_disabled():
    # q == 1.0 exactly for most voxels and no perturbation: only the index can break the ties
    logits, target = random_case((2, 3, 20, 30), seed=2)
    logits = torch.nn.functional.one_hot(target[:, 0], 3).movedim(-1, 1).float() * 60
    logits[:, :, :4] += torch.randn(2, 3, 4, 30)
    probs = logits.softmax(1)
    excluded = topk_exclusion_mask(probs, target, 30, tie_break_scale=0.0)
    expected_counts = n_excluded_voxels(torch.stack([(target == c).sum((1, 2, 3)) for c in range(3)], 1), 30)
    got = torch.stack([(excluded & (target == c)).sum((1, 2, 3)) for c in range(3)], 1)
    assert torch.equal(got[:, 1:], expected_counts[:, 1:])


@pytest.mark.parametrize(
    ("sort_at_most", "min_bucket_bits"),
    [(10**6, 8), (300, 8), (4, 2)],
    ids=["one-sort", "histogram", "histogram+radix"],
)
@pytest.mark.parametrize("scale", [1.0, 5.0, 40.0], ids=["soft", "confident", "saturated"])
def test_every_selection_path_matches_reference(monkeypatch, scale, sort_at_most, min_bucket_bits):
    # small inputs are sorted whole; larger ones go through the histogram, and many candidates in a cut
    # bucket through the radix refinement: force each path on the same input
    monkeypatch.setattr(topk_module, "_SORT_AT_MOST", sort_at_most)
    monkeypatch.setattr(topk_module, "_MIN_BUCKET_BITS", min_bucket_bits)
    logits, target = random_case((2, 3, 24, 20), seed=3, scale=scale)
    probs = logits.softmax(1)
    mask = torch.rand(2, 1, 24, 20, generator=torch.Generator().manual_seed(4)) > 0.2
    for k in (10, 50, 90):
        for do_bg in (False, True):
            got = topk_exclusion_mask(probs, target, k, mask, do_bg=do_bg)
            assert torch.equal(got, reference_exclusion(probs, target, k, mask, do_bg))


def test_n_excluded_voxels_is_exact_integer_arithmetic():
    n = torch.tensor([0, 1, 3, 10, 20, 33, 100, 12345])
    assert n_excluded_voxels(n, 70).tolist() == [(30 * v) // 100 for v in n.tolist()]
    assert n_excluded_voxels(n, 90).tolist() == [v // 10 for v in n.tolist()]
    assert n_excluded_voxels(n, 100).tolist() == [0] * len(n)
    assert n_excluded_voxels(torch.tensor([8]), 12.5).tolist() == [7]


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize(("do_bg", "batch_dice"), [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("k", [100, 50, 10])
def test_value_and_gradient_match_dense_reference(shape, do_bg, batch_dice, k):
    logits, target = random_case(shape, seed=5, all_present=False)
    ours_in = logits.clone().requires_grad_(True)
    ref_in = logits.double().clone().requires_grad_(True)
    ours = topk_dice_loss(ours_in, target, k, do_bg=do_bg, batch_dice=batch_dice)
    ref = reference_topk_dice(ref_in, target, k, do_bg=do_bg, batch_dice=batch_dice)
    ours.backward()
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), abs=1e-5)
    torch.testing.assert_close(ours_in.grad.double(), ref_in.grad, atol=1e-6, rtol=1e-4)


def test_absent_classes_are_skipped():
    logits, target = random_case((1, 4, 8, 8), seed=6, all_present=False)
    target[target == 3] = 1  # class 3 absent: its false positives must not count
    loss = topk_dice_loss(logits, target, 50)
    only_present = topk_dice_loss(logits[:, :3] - 0, torch.where(target == 3, 1, target), 50)
    assert loss.item() == pytest.approx(reference_topk_dice(logits, target, 50).item(), abs=1e-6)
    assert loss.item() != pytest.approx(only_present.item(), abs=1e-6)  # the softmax still sees 4 classes
    # mean over present classes only: 2 present foreground classes
    per_class = [
        reference_topk_dice(logits, torch.where((target == c) | (target == 0), target, 0), 50).item() for c in (1, 2)
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


def test_images_without_foreground_are_left_out_of_the_mean():
    logits, target = random_case((2, 3, 6, 6), seed=7)
    target[1] = 0
    both = topk_dice_loss(logits, target, 50)
    first = topk_dice_loss(logits[:1], target[:1], 50)
    assert both.item() == pytest.approx(first.item(), abs=1e-7)


@pytest.mark.parametrize("batch_dice", [False, True], ids=["per-image", "batch"])
def test_masked_voxels_change_nothing_and_get_no_gradient(batch_dice):
    logits, target = random_case((2, 4, 10, 10), seed=8)
    mask = torch.ones(2, 1, 10, 10, dtype=torch.bool)
    mask[:, :, :4] = False
    other_logits = logits.clone()
    other_logits[:, :, :4] = torch.randn(2, 4, 4, 10) * 5
    other_target = target.clone()
    other_target[:, :, :4] = 255  # an ignore label outside [0, C)
    a = logits.clone().requires_grad_(True)
    b = other_logits.clone().requires_grad_(True)
    loss_a = topk_dice_loss(a, target, 50, loss_mask=mask, batch_dice=batch_dice)
    loss_b = topk_dice_loss(b, other_target, 50, loss_mask=mask, batch_dice=batch_dice)
    loss_a.backward()
    loss_b.backward()
    assert loss_a.item() == pytest.approx(loss_b.item(), abs=1e-7)
    assert (b.grad[:, :, :4] == 0).all()
    torch.testing.assert_close(a.grad[:, :, 4:], b.grad[:, :, 4:])
    ref = reference_topk_dice(logits, target, 50, mask=mask, batch_dice=batch_dice)
    assert loss_a.item() == pytest.approx(ref.item(), abs=1e-6)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_low_precision_logits_give_finite_float32(shape, dtype):
    logits, target = random_case(shape, seed=9)
    low = logits.to(dtype).requires_grad_(True)
    loss = topk_dice_loss(low, target, 50, batch_dice=True)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert low.grad.dtype == dtype and torch.isfinite(low.grad.float()).all()
    full = topk_dice_loss(low.detach().float(), target, 50, batch_dice=True)
    assert loss.item() == pytest.approx(full.item(), abs=1e-6)


def test_target_dtypes_from_nnunet_are_accepted():
    logits, target = random_case((2, 3, 6, 6), seed=10)
    values = {topk_dice_loss(logits, target.to(dtype), 50).item() for dtype in (torch.int16, torch.int32, torch.uint8)}
    assert len(values) == 1


def test_tie_break_map_is_fixed_by_seed_across_processes():
    first = tie_break_map((5, 7), seed=3)
    assert first.dtype == torch.float32 and first.shape == (5, 7)
    assert 0 <= first.min() and first.max() < 1e-6
    topk_module._tie_break_cache.clear()
    assert torch.equal(first, tie_break_map((5, 7), seed=3))
    assert not torch.equal(first, tie_break_map((5, 7), seed=4))
    code = "from nnunet_topkdice.losses import tie_break_map; print(repr(tie_break_map((5, 7), seed=3).sum().item()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert float(out) == first.sum().item()
    # two loss instances use the same map, so they agree voxel for voxel
    logits, target = random_case((1, 3, 5, 7), seed=11)
    assert TopKDiceLoss(k=50)(logits, target).item() == TopKDiceLoss(k=50)(logits, target).item()


def test_gradcheck_float64():
    logits, target = random_case((2, 3, 5, 4), seed=12)
    logits = logits.double().requires_grad_(True)
    mask = torch.ones(2, 1, 5, 4, dtype=torch.bool)
    mask[0, 0, 0] = False
    for batch_dice in (False, True):
        assert torch.autograd.gradcheck(
            lambda x, bd=batch_dice: topk_dice_loss(x, target, 50, loss_mask=mask, batch_dice=bd), (logits,)
        )


def test_loss_grows_as_k_shrinks_for_a_partly_missed_object():
    # paper Figure 2: a large object, predicted well in its core and missed along one side
    target = torch.zeros(1, 1, 32, 32, dtype=torch.long)
    target[..., 4:28, 4:28] = 1
    logits = torch.zeros(1, 2, 32, 32)
    logits[:, 1] = -4.0
    logits[:, 1, 4:28, 4:28] = 4.0  # the object: confident
    logits[:, 1, 4:28, 4:10] = -1.0  # a missed strip
    values = [topk_dice_loss(logits, target, k).item() for k in (100, 90, 50, 30, 10)]
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
    # the argument checks run on meta tensors (which have no data), so they cannot sync a GPU
    logits = torch.empty(2, 3, 8, 8, device="meta")
    topk_module._check_inputs(logits, torch.empty(2, 1, 8, 8, dtype=torch.long, device="meta"), None)
    with pytest.raises(ValueError, match="differ in batch or spatial size"):
        topk_module._check_inputs(logits, torch.empty(2, 1, 8, 9, dtype=torch.long, device="meta"), None)
    with pytest.raises(ValueError, match="loss_mask must have the shape"):
        topk_module._check_inputs(
            logits, torch.empty(2, 1, 8, 8, dtype=torch.long, device="meta"), torch.empty(2, 8, 8, device="meta")
        )


def test_function_equals_module():
    logits, target = random_case((2, 3, 7, 5), seed=13)
    module = TopKDiceLoss(k=30, do_bg=True, batch_dice=True, smooth=1e-3)
    function = topk_dice_loss(logits, target, 30, do_bg=True, batch_dice=True, smooth=1e-3)
    assert module(logits, target).item() == function.item()
    assert "k=30.0" in repr(module)


@pytest.mark.slow
def test_torch_compile_matches_eager():
    logits, target = random_case((2, 3, 16, 16), seed=14)
    loss = TopKDiceLoss(k=50, batch_dice=True)
    compiled = torch.compile(loss)
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    eager_value = loss(a, target)
    compiled_value = compiled(b, target)
    eager_value.backward()
    compiled_value.backward()
    assert compiled_value.item() == pytest.approx(eager_value.item(), abs=1e-6)
    torch.testing.assert_close(a.grad, b.grad)


def test_autocast_does_not_lower_the_precision():
    logits, target = random_case((2, 3, 12, 10), seed=15)
    mask = torch.rand(2, 1, 12, 10, generator=torch.Generator().manual_seed(16)) > 0.3
    full = topk_dice_loss(logits, target, 50, loss_mask=mask, batch_dice=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = topk_dice_loss(logits, target, 50, loss_mask=mask, batch_dice=True)
    assert under_autocast.dtype == torch.float32
    assert under_autocast.item() == pytest.approx(full.item(), abs=1e-6)
