"""The per-channel selection shared by the sigmoid (region) loss and the MONAI drop-in."""

from __future__ import annotations

import pytest
import torch

from nnunet_topkdice.losses import TopKDiceOptions, channel_exclusion_mask, n_excluded_voxels
from nnunet_topkdice.losses.reference import reference_channel_exclusion


def _case(shape, seed=0, density=0.5, confident=False):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=generator) * (20.0 if confident else 2.0)
    target = torch.rand(shape, generator=generator) < density  # overlapping binary regions
    return torch.sigmoid(logits), target


@pytest.mark.parametrize("shape", [(2, 3, 9, 7), (1, 2, 4, 5, 6), (2, 2, 64, 48)], ids=["2d-small", "3d-small", "2d"])
@pytest.mark.parametrize("k", [10, 50, 90, 100])
@pytest.mark.parametrize("confident", [False, True], ids=["soft", "saturated"])
def test_matches_the_brute_force_reference(selection_path, shape, k, confident) -> None:
    probs, target = _case(shape, confident=confident)
    ours = channel_exclusion_mask(probs, target, options=TopKDiceOptions(k=k))
    assert torch.equal(ours, reference_channel_exclusion(probs, target, options=TopKDiceOptions(k=k)))
    expected = n_excluded_voxels(target.flatten(2).sum(-1), k)
    assert torch.equal(ours.flatten(2).sum(-1), expected)  # exactly D per image and channel
    assert not (ours & ~target).any()  # only voxels of the channel's own region


@pytest.mark.parametrize("mask_channels", [1, 3], ids=["shared-mask", "per-channel-mask"])
def test_mask_and_ties(selection_path, mask_channels) -> None:
    probs = torch.full((2, 3, 40, 40), 0.5)  # every voxel ties: the map and then the index decide
    target = _case((2, 3, 40, 40), seed=1)[1]
    mask = torch.rand((2, mask_channels, 40, 40), generator=torch.Generator().manual_seed(2)) > 0.3
    ours = channel_exclusion_mask(probs, target, loss_mask=mask, options=TopKDiceOptions(k=30))
    assert torch.equal(ours, reference_channel_exclusion(probs, target, loss_mask=mask, options=TopKDiceOptions(k=30)))
    assert not (ours & ~mask.expand_as(ours)).any()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target": torch.zeros(2, 3, 4, 4)}, "target must have the shape"),
        ({"loss_mask": torch.ones(2, 2, 5, 5)}, "loss_mask must have shape"),
    ],
    ids=["target", "mask"],
)
def test_bad_arguments(kwargs, match) -> None:
    probs, target = _case((2, 3, 5, 5))
    arguments = {"probs": probs, "target": target, **kwargs}
    with pytest.raises(ValueError, match=match):
        channel_exclusion_mask(**arguments)


@pytest.mark.parametrize("do_bg", [True, False], ids=["all-classes", "no-background"])
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("refine", [False, True], ids=["sorted-candidates", "radix-refined"])
def test_classes_per_column_match_the_sort_path(monkeypatch, do_bg, ties, refine) -> None:
    """Rows that share their classes per column (the region node's deep-supervision outputs side by side) take
    their own histogram path, and it selects exactly what the fixed-shape sort path selects."""
    from nnunet_topkdice.losses import selection

    generator = torch.Generator().manual_seed(3)
    sizes = [3000, 700, 160]  # three outputs of different sizes, as deep supervision's
    value = torch.sigmoid(torch.randn(4, sum(sizes), generator=generator) * 3)
    if ties:
        value = (value * 16).round() / 16
    mask = torch.rand(value.shape, generator=generator) < 0.6
    column_class = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    labels = column_class.expand(value.shape)
    if refine:  # every cut bucket through the radix refinement
        monkeypatch.setattr(selection, "SORT_CANDIDATES_AT_MOST", 4)
        monkeypatch.setattr(selection, "_MIN_BUCKET_BITS", 2)
    monkeypatch.setattr(selection, "FORCE_PATH", "sort")
    expected = selection.select_easiest(value, labels.contiguous(), 3, 40, mask, do_bg, with_codes=False)

    def general_path(*args, **kwargs):
        raise AssertionError("rows with shared column classes took the general histogram path")

    monkeypatch.setattr(selection, "FORCE_PATH", "histogram")
    monkeypatch.setattr(selection, "_histogram_selection", general_path)
    ours = selection.select_easiest(value, labels, 3, 40, mask, do_bg, with_codes=False)
    assert ours.code is None
    assert torch.equal(ours.excluded, expected.excluded)
    assert torch.equal(ours.n_foreground, expected.n_foreground)
    assert torch.equal(ours.n_excluded, expected.n_excluded)
    per_class = torch.stack([part.sum(-1) for part in ours.excluded.split(sizes, 1)], 1)
    assert torch.equal(per_class.long(), ours.n_excluded)  # exactly D per image and class
    assert (ours.n_excluded[:, 0] == 0).all() != do_bg  # without do_bg, class 0 excludes nothing
    assert not (ours.excluded.bool() & ~mask).any()
    # the NumPy path on the same rows (expanded labels, a mask, no codes): the same selection
    monkeypatch.setattr(selection, "FORCE_PATH", "numpy")
    lean = selection.select_easiest(value, labels, 3, 40, mask, do_bg, with_codes=False)
    assert lean.code is None
    assert torch.equal(lean.excluded, expected.excluded) and torch.equal(lean.n_excluded, expected.n_excluded)
