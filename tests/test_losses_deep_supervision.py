"""Deep supervision of CE + TopK-Dice as one node: the value and gradients of nnU-Net's DeepSupervisionWrapper."""

from __future__ import annotations

import pytest
import torch
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

from nnunet_topkdice.losses import CE_and_TopKDice_loss, TopKDiceOptions, deep_supervised_ce_and_topk_dice_loss
from nnunet_topkdice.losses.selection import select_easiest
from nnunet_topkdice.trainers import TopKDiceDeepSupervision

# nnU-Net's weights for 4 outputs (1, 1/2, 1/4, 0), normalised; the last output is skipped
WEIGHTS = (1 / 1.75, 0.5 / 1.75, 0.25 / 1.75, 0.0)
SPATIAL = {"2d": [(24, 20), (12, 10), (6, 5), (3, 3)], "3d": [(8, 12, 10), (4, 6, 5), (2, 3, 3), (1, 2, 2)]}


def _pyramid(dim: str, n_classes: int = 3, seed: int = 0, ignore_label: int | None = None):
    """Logits and label maps, one per output, highest resolution first (batch 2)."""
    generator = torch.Generator().manual_seed(seed)
    logits, targets = [], []
    for size in SPATIAL[dim]:
        logits.append(torch.randn(2, n_classes, *size, generator=generator) * 3)
        high = n_classes if ignore_label is None else n_classes + 1
        targets.append(torch.randint(0, high, (2, 1, *size), generator=generator))
    return logits, targets


def _value_and_grads(loss, logits, targets):
    leaves = [x.clone().requires_grad_(True) for x in logits]
    value = loss(leaves, targets)
    value.backward()
    return value, [x.grad for x in leaves]


def _assert_same(ours, reference):
    (value, grads), (expected, expected_grads) = ours, reference
    assert value.item() == pytest.approx(expected.item(), rel=1e-6, abs=1e-6)
    for got, want in zip(grads, expected_grads, strict=True):
        if want is None:  # an output with weight 0 takes no part, in both
            assert got is None
        else:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dim", ["2d", "3d"])
@pytest.mark.parametrize("batch_dice", [False, True], ids=["sample_dice", "batch_dice"])
@pytest.mark.parametrize("ignore_label", [None, 3], ids=["no_ignore", "ignore"])
def test_equals_nnunets_wrapper_on_every_selection_path(selection_path, dim, batch_dice, ignore_label):
    logits, targets = _pyramid(dim, ignore_label=ignore_label)
    inner = CE_and_TopKDice_loss({"k": 50, "batch_dice": batch_dice}, {}, ignore_label=ignore_label)
    ours = _value_and_grads(TopKDiceDeepSupervision(inner, WEIGHTS), logits, targets)
    _assert_same(ours, _value_and_grads(DeepSupervisionWrapper(inner, WEIGHTS), logits, targets))
    assert ours[1][-1] is None


@pytest.mark.parametrize(
    ("ce_kwargs", "weight_ce", "weight_dice", "k"),
    [({"weight": [0.2, 1.0, 3.0]}, 1.0, 1.0, 30), ({}, 0.0, 1.0, 50), ({}, 1.0, 0.0, 50), ({}, 0.5, 2.0, 100)],
    ids=["class_weights", "dice_only", "ce_only", "weighted_k100"],
)
def test_equals_nnunets_wrapper_for_every_term_setting(ce_kwargs, weight_ce, weight_dice, k):
    logits, targets = _pyramid("2d", seed=3)
    inner = CE_and_TopKDice_loss({"k": k, "do_bg": True}, ce_kwargs, weight_ce=weight_ce, weight_dice=weight_dice)
    weights = (0.5, 0.3, 0.2, 1e-6)  # nnU-Net's DDP weights keep the last output at 1e-6
    ours = _value_and_grads(TopKDiceDeepSupervision(inner, weights), logits, targets)
    _assert_same(ours, _value_and_grads(DeepSupervisionWrapper(inner, weights), logits, targets))


def test_one_output_with_weight_one_is_the_plain_loss():
    logits, targets = _pyramid("2d", seed=4)
    inner = CE_and_TopKDice_loss({"k": 50}, {})
    ours = TopKDiceDeepSupervision(inner, (0.0, 1.0, 0.0, 0.0))(logits, targets)
    assert torch.equal(ours, inner(logits[1], targets[1]))


def test_float64_gradients_match_finite_differences():
    logits, targets = _pyramid("2d", seed=5)
    logits = [x[:, :, :6, :5].double().requires_grad_(True) for x in logits[1:3]]
    targets = [t[:, :, :6, :5] for t in targets[1:3]]
    mask = [torch.ones_like(t, dtype=torch.bool) for t in targets]
    mask[0][0, 0, 0] = False
    for batch_dice in (False, True):
        assert torch.autograd.gradcheck(
            lambda a, b, bd=batch_dice: deep_supervised_ce_and_topk_dice_loss(
                [a, b], targets, [0.7, 0.3], loss_masks=mask, options=TopKDiceOptions(k=50, batch_dice=bd)
            ),
            tuple(logits),
        )


@pytest.mark.parametrize("do_bg", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_grouped_selection_is_each_outputs_own_selection(selection_path, do_bg, masked):
    generator = torch.Generator().manual_seed(6)
    n_classes, sizes = 3, (300, 75, 20)
    values = [torch.rand(2, n, generator=generator) for n in sizes]
    values[0][:, :40] = 0.5  # ties, resolved by the voxel index within the output
    labels = [torch.randint(0, n_classes, (2, n), generator=generator) for n in sizes]
    masks = [torch.rand(2, n, generator=generator) > 0.2 if masked else None for n in sizes]
    grouped = select_easiest(
        torch.cat(values, 1),
        torch.cat([lab + s * n_classes for s, lab in enumerate(labels)], 1),
        len(sizes) * n_classes,
        30,
        torch.cat(masks, 1) if masked else None,
        do_bg,
        classes_per_group=n_classes,
    )
    excluded = grouped.excluded.split(sizes, 1)
    for s, (value, label, mask) in enumerate(zip(values, labels, masks, strict=True)):
        alone = select_easiest(value, label, n_classes, 30, mask, do_bg)
        assert torch.equal(excluded[s], alone.excluded)
        columns = slice(s * n_classes, (s + 1) * n_classes)
        assert torch.equal(grouped.n_foreground[:, columns], alone.n_foreground)
        assert torch.equal(grouped.n_excluded[:, columns], alone.n_excluded)
    assert grouped.n_excluded[:, 0::n_classes].any() == do_bg  # every output's background, only with do_bg


def test_full_graph_compile_equals_eager():
    from torch._dynamo.testing import CompileCounterWithBackend

    logits, targets = _pyramid("2d", seed=7, ignore_label=3)
    loss = TopKDiceDeepSupervision(CE_and_TopKDice_loss({"k": 50, "batch_dice": True}, {}, ignore_label=3), WEIGHTS)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(loss, fullgraph=True, backend=counter)
    eager = _value_and_grads(loss, logits, targets)
    _assert_same(_value_and_grads(compiled, logits, targets), eager)
    assert counter.frame_count == 1


def test_bad_lists_are_refused_with_the_counts():
    logits, targets = _pyramid("2d")
    loss = TopKDiceDeepSupervision(CE_and_TopKDice_loss({"k": 50}, {}), WEIGHTS)
    with pytest.raises(ValueError, match="4 weight factors need as many outputs and targets, got 3 and 4"):
        loss(logits[:3], targets)
    with pytest.raises(ValueError, match="at least one weight factor must be non-zero"):
        TopKDiceDeepSupervision(CE_and_TopKDice_loss({"k": 50}, {}), (0.0, 0.0))
    with pytest.raises(ValueError, match="one entry per output, got 4, 4, 3"):
        deep_supervised_ce_and_topk_dice_loss(logits, targets, [0.5, 0.3, 0.2])
    with pytest.raises(ValueError, match="the same batch and classes"):
        deep_supervised_ce_and_topk_dice_loss([logits[0], logits[1][:1]], targets[:2], [0.5, 0.5])


@pytest.mark.parametrize("ignore_label", [None, 3], ids=["plain", "ignore-label"])
def test_gpu_path_has_only_fixed_shapes(ignore_label):
    # meta tensors carry no data: a value-dependent shape (nonzero, boolean indexing, .item()) fails on them
    loss = TopKDiceDeepSupervision(CE_and_TopKDice_loss({"k": 50}, {}, ignore_label=ignore_label), WEIGHTS)
    logits = [torch.empty(2, 3, *size, device="meta", requires_grad=True) for size in SPATIAL["3d"]]
    targets = [torch.empty(2, 1, *size, dtype=torch.int16, device="meta") for size in SPATIAL["3d"]]
    value = loss(logits, targets)
    value.backward()
    assert value.shape == () and [x.grad.shape for x in logits[:3]] == [x.shape for x in logits[:3]]


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("ignore_label", [None, 3], ids=["plain", "ignore-label"])
def test_cuda_equals_the_cpu_and_does_not_synchronise_with_the_host(no_host_sync, ignore_label):
    logits, targets = _pyramid("3d", seed=8, ignore_label=ignore_label)
    loss = TopKDiceDeepSupervision(CE_and_TopKDice_loss({"k": 50}, {}, ignore_label=ignore_label), WEIGHTS)
    expected = _value_and_grads(loss, logits, targets)
    logits, targets = [x.cuda() for x in logits], [t.cuda() for t in targets]
    loss(logits, targets)  # the first call per shape copies the tie-break maps to the device
    leaves = [x.clone().requires_grad_(True) for x in logits]
    with no_host_sync():
        loss(leaves, targets).backward()
    value, grads = _value_and_grads(loss, logits, targets)
    _assert_same((value.cpu(), [None if g is None else g.cpu() for g in grads]), expected)
