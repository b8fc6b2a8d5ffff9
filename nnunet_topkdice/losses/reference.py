"""The definition of the TopK-Dice loss (Hosseini, *TopK Dice Loss for Medical Image Segmentation*, eqs. 2-7).

Written to be read next to the paper: a dense map and a sort per class, gradients from autograd,
any float dtype (float64 included). The fast loss (:mod:`nnunet_topkdice.losses.topk_dice`) must agree with
it: the same voxels excluded, the same value and gradient up to rounding; the tests hold it to that. For
one image ``b`` and class ``c``, with ``P = softmax(logits)``, ``Y = one_hot(target)`` and the loss mask ``m``:

* eq. 2: ``v = Y_c * (P_c + eps)``, ``eps`` the fixed tie-break map (:func:`tie_break_map`), computed in
  float32 (the precision the selection runs in, whatever the dtype of the logits);
* eq. 3: ``D_c = floor((100 - k) / 100 * n_c)``, ``n_c`` the voxels of class ``c`` with ``m = 1``
  (:func:`~nnunet_topkdice.losses.counts.n_excluded_voxels`, in exact integer arithmetic);
* eq. 4: the exclusion map ``E_c`` marks the ``D_c`` voxels of class ``c`` with the highest ``v``; equal
  ``v`` go to the lower flat voxel index, so that exactly ``D_c`` are marked (:func:`reference_exclusion`);
* eqs. 5-6: ``Yk_c = m Y_c (1 - E_c)``, ``Pk_c = m P_c (1 - E_c)``: only foreground voxels of class ``c``
  leave class ``c``, so its false positives stay in the loss;
* eq. 7: ``dice_c = (2 sum Yk Pk + smooth) / (sum Yk^2 + sum Pk^2 + smooth)``, and the loss is ``1 - mean``
  over the classes present (``n_c > 0``; background only with ``do_bg``), per image and then over the
  images that have a present class, or, with ``batch_dice``, over the sums added over the batch
  (:func:`kept_dice_loss`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from nnunet_topkdice.losses.counts import n_excluded_voxels
from nnunet_topkdice.losses.options import TopKDiceOptions
from nnunet_topkdice.losses.tie_break import tie_break_map

__all__ = [
    "kept_dice_loss",
    "n_excluded_voxels",
    "reference_channel_exclusion",
    "reference_exclusion",
    "reference_topk_dice",
]

_DEFAULT_OPTIONS = TopKDiceOptions()


def _tie_break(probs: Tensor, options: TopKDiceOptions) -> Tensor:
    """``eps`` of eq. 2 for the spatial shape of ``probs``, flattened.  Shape: (N,) float32."""
    seed, scale = options.tie_break_seed, options.tie_break_scale
    return tie_break_map(probs.shape[2:], probs.device, seed=seed, scale=scale).reshape(-1)


def _top_ranked(key: Tensor, n_top: Tensor) -> Tensor:
    """Per row, the ``n_top`` entries with the highest key, equal keys taken lowest index first.

    Shape: key (R, N) float; n_top (R,) int.  returns: (R, N) bool.
    """
    order = torch.sort(key, dim=1, descending=True, stable=True).indices  # stable: ties keep index order
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(key.shape[1]).expand_as(order))
    return rank < n_top[:, None]


def reference_exclusion(
    probs: Tensor, target: Tensor, *, loss_mask: Tensor | None = None, options: TopKDiceOptions = _DEFAULT_OPTIONS
) -> Tensor:
    """The exclusion map of eq. 4, folded over the classes: each voxel is excluded at most for its own class.

    Shape:
        probs: (B, C, *spatial) float probabilities.  target: (B, 1, *spatial) integer, in [0, C) where
        ``loss_mask != 0``.  loss_mask: optional (B, 1, *spatial), 0 = ignored.
        options: ``k``, ``do_bg`` and the tie-break map are read.
        returns: (B, 1, *spatial) bool, True where the voxel is one of the ``D_c`` easiest of its class ``c``.
    """
    batch, n_classes = probs.shape[:2]
    eps = _tie_break(probs, options)
    labels = target.reshape(batch, -1).long()
    valid = torch.ones_like(labels, dtype=torch.bool) if loss_mask is None else loss_mask.reshape(batch, -1) != 0
    excluded = torch.zeros_like(valid)
    for c in range(0 if options.do_bg else 1, n_classes):
        in_class = (labels == c) & valid
        value = probs[:, c].reshape(batch, -1).float() + eps  # eq. 2, in float32
        key = torch.where(in_class, value, -torch.inf)  # other voxels rank below every voxel of the class
        excluded |= in_class & _top_ranked(key, n_excluded_voxels(in_class.sum(1), options.k))
    return excluded.view(target.shape)


def reference_channel_exclusion(
    probs: Tensor, target: Tensor, *, loss_mask: Tensor | None = None, options: TopKDiceOptions = _DEFAULT_OPTIONS
) -> Tensor:
    """Eq. 4 for every channel of a binary target on its own (sigmoid regions, MONAI's one-hot targets).

    Shape:
        probs: (B, R, *spatial) float.  target: (B, R, *spatial) binary.  loss_mask: optional, broadcastable
        over the channels, 0 = ignored.  options: ``k`` and the tie-break map are read (every channel
        selects, whatever ``do_bg``).  returns: (B, R, *spatial) bool.
    """
    batch, n_channels = probs.shape[:2]
    eps = _tie_break(probs, options)
    inside = target != 0
    if loss_mask is not None:
        inside = inside & (loss_mask != 0)
    inside = inside.reshape(batch * n_channels, -1)
    key = torch.where(inside, probs.reshape(batch * n_channels, -1).float() + eps, -torch.inf)
    excluded = inside & _top_ranked(key, n_excluded_voxels(inside.sum(1), options.k))
    return excluded.view(probs.shape)


def kept_dice_loss(
    probs: Tensor,
    target: Tensor,
    excluded: Tensor,
    loss_mask: Tensor | None = None,
    *,
    options: TopKDiceOptions = _DEFAULT_OPTIONS,
) -> Tensor:
    """Eqs. 5-7: ``1 - mean`` squared soft Dice of the maps with the excluded voxels removed.

    One class at a time (memory of one map, also for a whole CT volume), sums in float64.

    Shape:
        probs: (B, C, *spatial) float (differentiable).  target: (B, 1, *spatial) integer, in [0, C) where
        ``loss_mask != 0``.  excluded: (B, 1, *spatial) bool (eq. 4, folded over the classes).
        loss_mask: optional (B, 1, *spatial), 0 = ignored.  options: ``do_bg``, ``batch_dice`` and ``smooth``
        are read.  returns: scalar float64; 0 (attached to the graph) when no class is present.
    """
    batch, n_classes = probs.shape[:2]
    labels = target.reshape(batch, -1)
    valid = torch.ones_like(labels, dtype=torch.bool) if loss_mask is None else loss_mask.reshape(batch, -1) != 0
    dropped = excluded.reshape(batch, -1) & valid
    stats = []  # per class: intersect, sum_gt, sum_pred, n_foreground, each (B,)
    for c in range(0 if options.do_bg else 1, n_classes):
        in_class = (labels == c) & valid  # Y_c under the mask
        leaves = in_class & dropped  # E_c: excluded voxels leave their own class only
        y_kept = (in_class & ~leaves).double()  # eq. 5
        p_kept = probs[:, c].reshape(batch, -1) * (valid & ~leaves)  # eq. 6
        intersect = (y_kept * p_kept).sum(1, dtype=torch.float64)
        sum_pred = (p_kept * p_kept).sum(1, dtype=torch.float64)
        stats.append(torch.stack([intersect, y_kept.sum(1), sum_pred, in_class.sum(1).double()]))
    if not stats:
        return probs.sum().double() * 0
    intersect, sum_gt, sum_pred, n_foreground = torch.stack(stats, -1).unbind(0)  # each (B, classes)
    if options.batch_dice:
        intersect, sum_gt, sum_pred, n_foreground = (
            t.sum(0, keepdim=True) for t in (intersect, sum_gt, sum_pred, n_foreground)
        )
    smooth = options.smooth
    dice = (2 * intersect + smooth) / (sum_gt + sum_pred + smooth).clamp_min(1e-8)  # eq. 7
    present = n_foreground > 0
    losses = [1 - dice[row][present[row]].mean() for row in range(dice.shape[0]) if present[row].any()]
    return torch.stack(losses).mean() if losses else probs.sum().double() * 0


def reference_topk_dice(
    logits: Tensor, target: Tensor, *, loss_mask: Tensor | None = None, options: TopKDiceOptions = _DEFAULT_OPTIONS
) -> Tensor:
    """The TopK-Dice loss of eqs. 2-7; the selection is not differentiated (it is a constant of the step).

    Shape:
        logits: (B, C, *spatial) float, unnormalised (softmax in their dtype).  target: (B, 1, *spatial)
        integer (anything where ``loss_mask == 0``).  options: every field but ``ddp`` is read.
        returns: scalar float64.
    """
    probs = torch.softmax(logits, 1)
    labels = target if loss_mask is None else torch.where(loss_mask != 0, target, 0)
    excluded = reference_exclusion(probs.detach(), labels, loss_mask=loss_mask, options=options)
    return kept_dice_loss(probs, labels, excluded, loss_mask, options=options)
