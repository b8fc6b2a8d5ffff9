"""A slow, literal implementation of the paper's eqs. 2-7 (dense one-hot maps, a Python sort per class).

Independent of the library's selection and of its hand-written backward: gradients come from autograd.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nnunet_topkdice.losses import tie_break_map


def reference_exclusion(
    probs: Tensor, target: Tensor, k: float, mask: Tensor | None = None, do_bg: bool = False
) -> Tensor:
    """(B, 1, *spatial) bool: per image and class the floor((100-k)/100 n) voxels with the highest q + eps,
    ties to the lower flat index."""
    batch, n_classes = probs.shape[:2]
    eps = tie_break_map(probs.shape[2:]).reshape(-1)
    out = torch.zeros(batch, probs[0, 0].numel(), dtype=torch.bool)
    for b in range(batch):
        labels = target[b, 0].reshape(-1)
        p = probs[b].reshape(n_classes, -1).float()
        valid = torch.ones_like(labels, dtype=torch.bool) if mask is None else mask[b, 0].reshape(-1).bool()
        for c in range(0 if do_bg else 1, n_classes):
            index = torch.nonzero((labels == c) & valid).squeeze(1).tolist()
            n_excluded = int((100 - k) * len(index) // 100)
            key = (p[c] + eps).tolist()
            order = sorted(index, key=lambda i: (-key[i], i))
            out[b, order[:n_excluded]] = True
    return out.view(target.shape)


def reference_topk_dice(
    logits: Tensor,
    target: Tensor,
    k: float,
    mask: Tensor | None = None,
    do_bg: bool = False,
    batch_dice: bool = False,
    smooth: float = 1e-5,
) -> Tensor:
    """Eqs. 5-7 with dense maps: Yk = Y * (1 - E), Pk = P * (1 - E) per class, squared Dice over present classes."""
    n_classes = logits.shape[1]
    probs = torch.softmax(logits.double(), 1)
    labels = target if mask is None else torch.where(mask.bool(), target, 0)
    excluded = reference_exclusion(probs.detach(), labels, k, mask, do_bg)
    one_hot = torch.nn.functional.one_hot(labels[:, 0].long(), n_classes).movedim(-1, 1).double()
    valid = torch.ones_like(probs[:, :1]) if mask is None else mask.double()
    one_hot = one_hot * valid
    drop = one_hot * excluded.double()  # excluded voxels, on their own class only
    y_k = one_hot - drop
    p_k = probs * valid * (1 - drop)
    axes = tuple(range(2, logits.ndim))
    intersect, sum_y, sum_p = (y_k * p_k).sum(axes), (y_k**2).sum(axes), (p_k**2).sum(axes)
    present = one_hot.sum(axes) > 0
    first = 0 if do_bg else 1
    intersect, sum_y, sum_p, present = intersect[:, first:], sum_y[:, first:], sum_p[:, first:], present[:, first:]
    if batch_dice:
        intersect, sum_y, sum_p, present = intersect.sum(0), sum_y.sum(0), sum_p.sum(0), present.any(0)
        dice = (2 * intersect + smooth) / (sum_y + sum_p + smooth)
        return 1 - dice[present].mean() if present.any() else logits.sum() * 0
    dice = (2 * intersect + smooth) / (sum_y + sum_p + smooth)
    losses = [1 - dice[b][present[b]].mean() for b in range(dice.shape[0]) if present[b].any()]
    return torch.stack(losses).mean() if losses else logits.sum() * 0


def reference_channel_exclusion(probs: Tensor, target: Tensor, k: float, mask: Tensor | None = None) -> Tensor:
    """(B, R, *spatial) bool: per image and channel, among the voxels of a binary target, the
    floor((100-k)/100 n) with the highest p + eps, ties to the lower flat index."""
    batch, n_channels = probs.shape[:2]
    eps = tie_break_map(probs.shape[2:]).reshape(-1)
    out = torch.zeros(batch, n_channels, probs[0, 0].numel(), dtype=torch.bool)
    for b in range(batch):
        for r in range(n_channels):
            inside = target[b, r].reshape(-1) != 0
            if mask is not None:
                inside &= mask[b, min(r, mask.shape[1] - 1)].reshape(-1) != 0
            index = torch.nonzero(inside).squeeze(1).tolist()
            n_excluded = int((100 - k) * len(index) // 100)
            key = (probs[b, r].reshape(-1).float() + eps).tolist()
            order = sorted(index, key=lambda i: (-key[i], i))
            out[b, r, order[:n_excluded]] = True
    return out.view(probs.shape)
