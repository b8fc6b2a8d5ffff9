"""TopK-Dice loss (Hosseini, *TopK Dice Loss for Medical Image Segmentation*, section 2).

Per image and class, the ``D_c = floor((100 - k) / 100 * n_c)`` easiest foreground voxels (highest
true-class probability, eqs. 2-4) are removed from both the ground truth and the prediction of that
class (eqs. 5-6) before a squared soft Dice (eq. 7).

Implementation notes (why it is fast):

* Every voxel has exactly one true class, so the foreground sets of the classes partition the image.
  The selection therefore works on one vector per image, the true-class probability ``q``, keyed by
  ``(image, class)`` segments, instead of on ``C`` dense maps.
* The cut of every segment is found at once by one histogram over (image, class, bucket of ``q + eps``),
  O(N); only the voxels in the bucket that holds a cut are compacted and resolved exactly (a radix
  refinement on their float bits, then one sort). Ties go to the lower voxel index, so exactly ``D_c``
  voxels are excluded even when probabilities tie. The compactions (``nonzero``, boolean indexing)
  synchronise with the host on a GPU; the input checks do not.
* The Dice sums need no one-hot tensor: the intersection and the excluded part of ``sum P^2`` only
  involve each voxel's true class (one ``scatter_add`` into kept and excluded columns); the rest of
  ``sum P^2`` is one dense reduction.
* Softmax, selection, the sums, the Dice arithmetic and the cross entropy form one autograd node with
  a closed-form backward: a few dense passes and 130 to 200 operations per forward+backward (nnU-Net's
  ``DC_and_CE_loss``: about 60), which matters for deep supervision's many small outputs. The per-voxel
  work of the common path (no ignore label) avoids ``bool`` tensors, ``torch.where`` and int64
  arithmetic, several times slower than float32 and int32 arithmetic on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "TopKDiceLoss",
    "channel_exclusion_mask",
    "n_excluded_voxels",
    "tie_break_map",
    "topk_dice_loss",
    "topk_exclusion_mask",
]

DEFAULT_TIE_BREAK_SEED = 0
DEFAULT_TIE_BREAK_SCALE = 1e-6

# Selection (see _topk_selection): histogram bits per (image, class) and pass, and the number of
# candidates small enough to sort directly.
_MIN_BUCKET_BITS = 8
_MAX_BUCKET_BITS = 16
_SORT_AT_MOST = 2048
_KEY_BITS = 31
_HALF_BITS = 0x3F000000  # float32 bits of 0.5
_FLOOR_BITS = 0x33800000  # float32 bits of 2**-24

_tie_break_cache: dict[tuple, Tensor] = {}
_drop_fractions: dict[float, Fraction] = {}


def tie_break_map(
    spatial_shape: Sequence[int],
    device: torch.device | str = "cpu",
    *,
    seed: int = DEFAULT_TIE_BREAK_SEED,
    scale: float = DEFAULT_TIE_BREAK_SCALE,
) -> Tensor:
    """The fixed random perturbation ``eps`` of eq. 2 for one spatial shape.

    Drawn once per ``(shape, seed, scale)`` on the CPU from a ``torch.Generator`` seeded with ``seed``
    and then copied to ``device``, so it is identical on every device, for every class and image, in
    every process (for example after resuming a training). Cached per shape and device.

    Shape:
        returns: ``spatial_shape`` float32, uniform in ``[0, scale)``.
    Raises:
        ValueError: a dimension is not positive or ``scale`` is negative.
    """
    shape = tuple(int(s) for s in spatial_shape)
    if not shape or min(shape) <= 0:
        raise ValueError(f"spatial_shape must be non-empty and positive, got {spatial_shape!r}")
    if not scale >= 0:
        raise ValueError(f"tie-break scale must be >= 0, got {scale!r}")
    device = torch.device(device)
    cache_key = (shape, str(device), int(seed), float(scale))
    cached = _tie_break_cache.get(cache_key)
    if cached is None:
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        cached = (torch.rand(shape, generator=generator, dtype=torch.float32) * scale).to(device)
        _tie_break_cache[cache_key] = cached
    return cached


def _drop_fraction(k: float) -> Fraction:
    """``(100 - k) / 100`` as an exact fraction, so that ``floor`` of it times ``n`` is exact."""
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not 0 < k <= 100:
        raise ValueError(f"k must be a number in (0, 100] (percent of foreground voxels kept), got {k!r}")
    k = float(k)
    drop = _drop_fractions.get(k)
    if drop is None:  # a plain dict, not functools.lru_cache, which torch.compile warns about
        drop = _drop_fractions[k] = 1 - Fraction(k).limit_denominator(10**6) / 100
    return drop


def n_excluded_voxels(n_foreground: Tensor, k: float) -> Tensor:
    """``D = floor((100 - k) / 100 * n)`` (eq. 3), computed exactly in integer arithmetic.

    Shape:
        n_foreground: any shape, integer counts.  returns: same shape, int64.
    Raises:
        ValueError: ``k`` not in (0, 100].
    """
    drop = _drop_fraction(k)
    return torch.div(n_foreground.long() * drop.numerator, drop.denominator, rounding_mode="floor")


def _n_excluded_per_class(n_foreground: Tensor, k: float, do_bg: bool) -> Tensor:
    """``D_c`` per image and class; background (class 0) excludes nothing unless ``do_bg``.

    Shape: n_foreground (B, C) int.  returns: (B, C) int64.
    """
    n_excluded = n_excluded_voxels(n_foreground, k)
    if not do_bg:
        n_excluded[:, 0] = 0
    return n_excluded


def _check_inputs(logits: Tensor, target: Tensor, loss_mask: Tensor | None) -> None:
    """Metadata-only checks (no host synchronisation)."""
    if logits.ndim not in (4, 5) or not logits.is_floating_point():
        raise ValueError(
            f"logits must be a float tensor (B, C, X, Y[, Z]), got shape {tuple(logits.shape)} and dtype {logits.dtype}"
        )
    if target.ndim != logits.ndim or target.shape[1] != 1:
        raise ValueError(
            f"target must be a label map of shape (B, 1, *spatial) matching logits {tuple(logits.shape)}, "
            f"got shape {tuple(target.shape)}"
        )
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer labels, got dtype {target.dtype}")
    if target.shape[0] != logits.shape[0] or target.shape[2:] != logits.shape[2:]:
        raise ValueError(
            f"target {tuple(target.shape)} and logits {tuple(logits.shape)} differ in batch or spatial size"
        )
    if loss_mask is not None and loss_mask.shape != target.shape:
        raise ValueError(f"loss_mask must have the shape of target {tuple(target.shape)}, got {tuple(loss_mask.shape)}")


def _selection_rows(target: Tensor, valid: Tensor | None) -> Tensor:
    """Histogram row of every voxel: ``1 + c`` for its class ``c``, or 0 for masked voxels.

    Shape: target (B, N) int64; valid (B, N) bool or None.  returns: (B, N) int32.
    """
    rows = target.int() + 1
    if valid is not None:
        rows *= valid
    return rows


def _coarse_bucket(value: Tensor, bits: int, offset: Tensor) -> Tensor:
    """Histogram bucket of ``v`` plus ``offset``, non-decreasing in ``v``, in ``offset + [0, 2**bits)``.

    The lower half of the buckets covers ``v < 0.5`` by the float bits of ``v``, the upper half
    ``v >= 0.5`` by the float bits of ``1 - v`` (exact there), both on a logarithmic scale clipped at
    2**-24, so that hard voxels near 0 and the many confident voxels near 1, where the cut usually lies,
    both spread over many buckets. ``min(v, 1 - v)`` picks the side in one operation. Only int32 and
    float32 operations: int64 and bool ones cost several times more on the CPU.

    Shape: value (B, N) float32, non-negative; offset broadcastable to (B, N), int32.  returns: (B, N) int32.
    """
    top = (1 << bits) - 1
    shift = max(0, (_HALF_BITS - _FLOOR_BITS).bit_length() - (bits - 1))
    # distance to the nearer end; 1 - v < 0 (v > 1) clamps to the floor, the last bucket
    nearer_end = torch.minimum(value, 1 - value).view(torch.int32).clamp_(_FLOOR_BITS, _HALF_BITS - 1)
    level = (nearer_end - _FLOOR_BITS) >> shift
    # v >= 0.5 counts down from the top: (2**bits - 1) - level == level ^ (2**bits - 1); the sign bit of
    # v - 0.5 picks the side without a (slow) torch.where
    hard_side = (value - 0.5).view(torch.int32) >> 31  # -1 where v < 0.5, else 0
    return (level ^ ((hard_side & top) ^ top)) + offset


def _cut(hist: Tensor, n_top: Tensor) -> tuple[Tensor, Tensor]:
    """Find, per row of a histogram, the bin that holds the ``n_top``-th largest element.

    Shape: hist (..., W) int, n_top (...) int64 with ``0 < n_top <= hist.sum(-1)`` (rows violating it
    get a meaningless bin that the caller must disregard).
    returns: the bin (...) and how many elements lie strictly above it (...), both int64.
    """
    inclusive = hist.cumsum(-1)
    total = inclusive[..., -1:]
    # the cut is the highest bin with at least n_top elements at or above it
    cut = ((inclusive - hist <= total - n_top.unsqueeze(-1)).sum(-1) - 1).clamp_min(0)
    n_above = (total - inclusive.gather(-1, cut.unsqueeze(-1))).squeeze(-1).long()
    return cut, n_above


def _resolve_candidates(
    values: Tensor, segment: Tensor, flat_index: Tensor, still_needed: Tensor, n_segments: int
) -> Tensor:
    """Exact selection among candidate voxels: the ``still_needed[s]`` largest values of each segment ``s``.

    The float bits of non-negative float32 values, read as integers, are in the same order as the values.
    While many candidates remain, a histogram of the next bits narrows them down (radix selection on the
    compacted voxels); the rest are ordered by one stable sort on (segment, value descending), so that
    equal values keep their (ascending) voxel index order.

    Shape: values (M,) float32, non-negative; segment, flat_index (M,) int64, flat_index ascending;
    still_needed (n_segments,) int64, >= 1 for every segment that has candidates.
    returns: flat indices to exclude, int64.
    """
    chosen = []
    keys, key_bits = values.view(torch.int32).long(), _KEY_BITS
    while keys.numel() > _SORT_AT_MOST and key_bits > 0:
        digit_bits = min(key_bits, _MAX_BUCKET_BITS, max(_MIN_BUCKET_BITS, keys.numel().bit_length() - 8))
        shift = key_bits - digit_bits
        digit = (keys >> shift) & ((1 << digit_bits) - 1)
        hist = torch.bincount((segment << digit_bits) + digit, minlength=n_segments << digit_bits)
        cut, n_above = _cut(hist.view(n_segments, 1 << digit_bits), still_needed.clamp_min(1))
        voxel_cut = cut[segment]
        chosen.append(flat_index[digit > voxel_cut])
        still_needed = still_needed - n_above
        inside = digit == voxel_cut
        keys, segment, flat_index = keys[inside], segment[inside], flat_index[inside]
        key_bits = shift
    order = torch.sort((segment << _KEY_BITS) | (((1 << _KEY_BITS) - 1) - keys), stable=True).indices
    sorted_segment = segment[order]
    rank = torch.arange(order.numel(), device=order.device) - torch.searchsorted(sorted_segment, sorted_segment)
    chosen.append(flat_index[order[rank < still_needed[sorted_segment]]])
    return torch.cat(chosen)


def _topk_selection(
    true_class_prob: Tensor,
    target: Tensor,
    n_classes: int,
    k: float,
    valid: Tensor | None,
    do_bg: bool,
    tie_break: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Mark, per image and class, the ``D_c`` voxels with the highest ``v = q + eps`` (eqs. 2-4).

    The result is a column per voxel: 0 if masked, ``1 + c`` if kept, ``1 + C + c`` if excluded (``c`` its
    class), so that one ``scatter_add`` over ``2C + 1`` columns forms the kept and the excluded sums.

    Small inputs are resolved by one sort (:func:`_resolve_candidates`). Otherwise one histogram per
    (image, class) over buckets of ``v`` finds the bucket that holds each cut, and everything in higher
    buckets is excluded. Buckets follow the float bits of ``1 - v``, a logarithmic scale near ``q = 1``, so
    the many confident voxels, where the cut usually lies, spread over many buckets; only the voxels
    inside the cut buckets (usually few) go to :func:`_resolve_candidates`. Exact ties are taken lowest
    voxel index first, so that exactly ``D_c`` voxels are marked.

    Shape:
        true_class_prob: (B, N) float32 in [0, 1].  target: (B, N) int64 in [0, C) (0 under the mask).
        valid: (B, N) bool or None.  tie_break: (N,) float32 in [0, 1).
        returns: column (B, N) float32 (small integers), n_foreground (B, C) int64, n_excluded (B, C) int64.
    """
    batch, n_voxels = target.shape
    device = target.device
    rows = _selection_rows(target, valid)
    value = true_class_prob + tie_break  # eq. 2 on the foreground, where Y = 1

    if k >= 100 or batch * n_voxels <= _SORT_AT_MOST:
        segment = (rows + torch.arange(0, batch * (n_classes + 1), n_classes + 1, device=device)[:, None]).view(-1)
        n_foreground = torch.bincount(segment, minlength=batch * (n_classes + 1)).view(batch, -1)[:, 1:]
        n_excluded = _n_excluded_per_class(n_foreground, k, do_bg)
        column = rows.float()
        if k < 100:  # every voxel is a candidate; masked voxels (row 0) are never needed
            still_needed = torch.nn.functional.pad(n_excluded, (1, 0)).view(-1)
            flat_index = torch.arange(batch * n_voxels, device=device)
            chosen = _resolve_candidates(value.view(-1), segment, flat_index, still_needed, batch * (n_classes + 1))
            column.view(-1)[chosen] += n_classes
        return column, n_foreground, n_excluded

    # many voxels per bucket on average keep the histogram much cheaper than the voxels
    bits = min(_MAX_BUCKET_BITS, max(_MIN_BUCKET_BITS, (n_voxels // n_classes).bit_length() - 5))
    n_buckets = 1 << bits
    n_rows = batch * (n_classes + 1)
    image_offset = torch.arange(0, n_rows * n_buckets, (n_classes + 1) * n_buckets, device=device, dtype=torch.int32)
    row_bucket = _coarse_bucket(value, bits, rows * n_buckets + image_offset[:, None]).view(-1)
    hist = torch.bincount(row_bucket, minlength=n_rows * n_buckets).view(batch, n_classes + 1, n_buckets)[:, 1:]
    n_foreground = hist.sum(-1)
    n_excluded = _n_excluded_per_class(n_foreground, k, do_bg)
    cut, n_above = _cut(hist, n_excluded.clamp_min(1))
    # classes that exclude nothing, and the masked row, get a cut above every bucket
    cut = torch.nn.functional.pad(torch.where(n_excluded > 0, cut, n_buckets), (1, 0), value=n_buckets)
    # per bucket, from its side of the cut: keep (-1) -> row, cut bucket (0) -> row + 3C, exclude (1) -> row + C,
    # i.e. row + C (side + 1)(3 - 2.5 side)
    side = (torch.arange(n_buckets, device=device) - cut.unsqueeze(-1)).sign_().float()
    lookup = (side + 1).mul_(3 - 2.5 * side).mul_(n_classes)
    lookup += torch.arange(n_classes + 1, device=device, dtype=torch.float32)[:, None]
    column = lookup.view(-1).index_select(0, row_bucket).view(batch, n_voxels)

    candidates = (column.view(-1) > 3 * n_classes).nonzero().squeeze(1)
    if candidates.numel() > 0:
        row = column.view(-1)[candidates] - 3 * n_classes
        column.view(-1)[candidates] = row
        segment = torch.div(candidates, n_voxels, rounding_mode="floor") * n_classes + (row.long() - 1)
        still_needed = (n_excluded - n_above).view(-1)
        chosen = _resolve_candidates(value.view(-1)[candidates], segment, candidates, still_needed, batch * n_classes)
        column.view(-1)[chosen] += n_classes
    return column, n_foreground, n_excluded


def _prepare(
    logits: Tensor, target: Tensor, loss_mask: Tensor | None, tie_break_seed: int, tie_break_scale: float
) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """Check the inputs (metadata only) and flatten them, with the tie-break map of their spatial shape.

    Shape: logits (B, C, *spatial); target, loss_mask (B, 1, *spatial).
    returns: logits (B, C, N), target (B, N) int64 (0 under the mask), mask (B, N) bool or None, tie_break (N,).
    Raises:
        ValueError: as :func:`_check_inputs`.
    """
    _check_inputs(logits, target, loss_mask)
    tie_break = tie_break_map(logits.shape[2:], logits.device, seed=tie_break_seed, scale=tie_break_scale)
    batch, n_classes = logits.shape[:2]
    target = target.reshape(batch, -1).long()
    mask = None if loss_mask is None else loss_mask.reshape(batch, -1).bool()
    if mask is not None:
        # masked voxels may carry an ignore label outside [0, C): park them on class 0
        target = torch.where(mask, target, 0)
    return logits.reshape(batch, n_classes, -1), target, mask, tie_break.view(-1)


def topk_exclusion_mask(
    probs: Tensor,
    target: Tensor,
    k: float,
    loss_mask: Tensor | None = None,
    *,
    do_bg: bool = False,
    tie_break_seed: int = DEFAULT_TIE_BREAK_SEED,
    tie_break_scale: float = DEFAULT_TIE_BREAK_SCALE,
) -> Tensor:
    """The paper's ignore map (Figure 1c): foreground voxels excluded as easy for their own class.

    Shape:
        probs: (B, C, *spatial) float probabilities (softmax output).  target: (B, 1, *spatial) integer.
        loss_mask: optional (B, 1, *spatial), 0 = ignored.
        returns: (B, 1, *spatial) bool, True where the voxel is one of the ``D_c`` easiest of its class.
    Raises:
        ValueError: ``k`` not in (0, 100] or shapes/dtypes as in :func:`topk_dice_loss`.
    """
    _drop_fraction(k)
    flat_probs, flat_target, mask, tie_break = _prepare(probs, target, loss_mask, tie_break_seed, tie_break_scale)
    with torch.no_grad():
        true_class_prob = flat_probs.gather(1, flat_target.unsqueeze(1)).squeeze(1).float()
        n_classes = flat_probs.shape[1]
        column = _topk_selection(true_class_prob, flat_target, n_classes, k, mask, do_bg, tie_break)[0]
    return (column > n_classes).view(target.shape)


def channel_exclusion_mask(
    probs: Tensor,
    target: Tensor,
    k: float,
    loss_mask: Tensor | None = None,
    *,
    tie_break_seed: int = DEFAULT_TIE_BREAK_SEED,
    tie_break_scale: float = DEFAULT_TIE_BREAK_SCALE,
) -> Tensor:
    """Per image and channel, the ``floor((100 - k) / 100 * n)`` easiest voxels of a binary target.

    The selection of overlapping regions (sigmoid outputs) and of MONAI's one-hot targets: every channel
    is its own problem. Among the voxels with ``target == 1`` (and ``loss_mask != 0``) of a channel, the
    ``n_excluded_voxels(n, k)`` with the highest ``probs + eps`` are marked, ``eps`` the tie-break map of
    the spatial shape; exact ties go to the lower voxel index. Not differentiable (no gradient is needed).

    Shape:
        probs: (B, R, *spatial) float, activated (sigmoid or softmax) probabilities.
        target: (B, R, *spatial) binary (bool, integer or float 0/1).
        loss_mask: optional, broadcastable to (B, R, *spatial) over the channels ((B, 1, *spatial) or the
        full shape); 0 = ignored.
        returns: (B, R, *spatial) bool, True where the voxel is excluded from that channel.
    Raises:
        ValueError: ``k`` not in (0, 100]; fewer than 3 dimensions; shapes differ.
    """
    _drop_fraction(k)
    if probs.ndim < 3 or not probs.is_floating_point():
        raise ValueError(f"probs must be a float tensor (B, R, *spatial), got shape {tuple(probs.shape)}")
    if target.shape != probs.shape:
        raise ValueError(f"target must have the shape of probs {tuple(probs.shape)}, got {tuple(target.shape)}")
    if loss_mask is not None and (loss_mask.ndim != probs.ndim or loss_mask.shape[1] not in (1, probs.shape[1])):
        raise ValueError(
            f"loss_mask must have shape (B, 1 or R, *spatial) for probs {tuple(probs.shape)}, "
            f"got {tuple(loss_mask.shape)}"
        )
    batch, n_channels = probs.shape[:2]
    tie_break = tie_break_map(probs.shape[2:], probs.device, seed=tie_break_seed, scale=tie_break_scale).view(-1)
    with torch.no_grad():
        valid = target.reshape(batch * n_channels, -1) != 0
        if loss_mask is not None:
            valid = valid & (loss_mask != 0).expand_as(probs).reshape(batch * n_channels, -1)
        # one class (0) per (image, channel) row; voxels outside the channel's region are masked out
        value = probs.detach().reshape(batch * n_channels, -1).float()
        labels = torch.zeros_like(valid, dtype=torch.long)
        column = _topk_selection(value, labels, 1, k, valid, True, tie_break)[0]
    return (column > 1).view(probs.shape)


class _LossConfig(NamedTuple):
    """What the fused node needs besides tensors (see :func:`_topk_dice_ce`)."""

    k: float
    do_bg: bool
    batch_dice: bool
    smooth: float
    ddp: bool
    weight_dice: float
    weight_ce: float


def _dice_loss_and_grads(
    intersect: Tensor,
    sum_pred_sq: Tensor,
    n_foreground: Tensor,
    n_excluded: Tensor,
    do_bg: bool,
    batch_dice: bool,
    smooth: float,
    ddp: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """``1 - mean Dice`` over the present classes (eq. 7) from the (B, C) sums, with its gradients.

    Without ``batch_dice`` the loss is the mean over the images that have a present class; with it, the
    sums are added over the batch (and, with ``ddp``, over all ranks) first. The gradients are in closed
    form, so the (B, C) arithmetic costs no autograd graph. Under ``ddp`` every rank computes the same
    global loss; its gradients are ``world_size`` times the local ones, which DDP's averaging brings back
    to the single-process gradient (nnU-Net's ``AllGatherGrad`` convention).

    Shape: intersect, sum_pred_sq (B, C) float; n_foreground, n_excluded (B, C) int64.
    returns: loss (), d loss / d intersect (B, C), d loss / d sum_pred_sq (B, C).
    Raises:
        RuntimeError: ``ddp`` and ``batch_dice`` without an initialised process group.
    """
    dtype = intersect.dtype
    first = 0 if do_bg else 1
    # rows: intersect, sum_pred_sq, sum_gt (Y is binary: sum(Yk^2) = voxels kept), present
    stats = torch.stack([intersect, sum_pred_sq, n_foreground - n_excluded, n_foreground.clamp(max=1)])[..., first:]
    grad_scale = 1.0
    if batch_dice:
        stats = stats.sum(1, keepdim=True)
        if ddp:
            if not (dist.is_available() and dist.is_initialized()):
                raise RuntimeError("TopKDiceLoss(ddp=True, batch_dice=True) needs an initialised process group")
            dist.all_reduce(stats)
            grad_scale = float(dist.get_world_size())
        stats[3].clamp_(max=1)
    inter, pred, sum_gt, present = stats.to(dtype).unbind(0)
    denominator = torch.add(sum_gt, pred).add_(smooth)
    clamped = denominator.clamp_min(1e-8)
    dice = torch.add(inter, inter).add_(smooth).div_(clamped)
    n_present = present.sum(-1, keepdim=True)
    # each row (image, or the batch) that has a present class weighs 1 / n_rows; its classes share that
    class_weight = present / n_present.clamp_min(1)
    n_rows_with_class = n_present.clamp(max=1).sum()
    n_rows = n_rows_with_class.clamp_min(1)
    loss = (n_rows_with_class - (dice * class_weight).sum()) / n_rows
    d_dice = class_weight.mul_(-grad_scale / n_rows)
    d_inter = (2 * d_dice).div_(clamped)
    d_pred = (d_dice * dice).div_(clamped).neg_().mul_(denominator >= 1e-8)  # no gradient through the clamp
    if batch_dice:
        d_inter, d_pred = d_inter.expand(intersect.shape[0], -1), d_pred.expand(intersect.shape[0], -1)
    if first:
        d_inter, d_pred = torch.nn.functional.pad(d_inter, (1, 0)), torch.nn.functional.pad(d_pred, (1, 0))
    return loss, d_inter, d_pred


class _TopKDiceCE(torch.autograd.Function):
    """The whole loss, ``weight_dice * TopK-Dice + weight_ce * CE``, as one node with a closed-form backward.

    Autograd through ``softmax -> gather -> where -> scatter_add``, a dense ``sum P^2`` and the Dice
    arithmetic costs about twice the dense passes of the closed form below, keeps more tensors alive,
    and adds some fifty small operations per call, which dominate deep supervision's small outputs.

    Forward, with ``m`` the loss mask, ``t`` the labels, ``q = P[t]`` and ``w`` the cross-entropy weights:
        intersect[c] = sum_{t_i = c, kept} q_i
        sum_pred_sq[c] = sum_i m_i P_c(i)^2 - sum_{t_i = c, excluded} q_i^2
        ce = -sum_i w_i log P_{t_i}(i) / sum_i w_i
    Both class sums come from one ``scatter_add`` of ``v_i`` (``q_i`` if kept, ``q_i^2`` if excluded) into
    the voxel's selection column (see :func:`_topk_selection`); the Dice loss and its gradients ``gI``,
    ``gS`` with respect to those sums come from :func:`_dice_loss_and_grads`. Backward, with ``G`` =
    (0, gI, -2 gS) per column, ``s_i = G[column_i] v_i`` and ``a_i = gCE w_i``:
        dz_c(i) = 2 m_i gS[c] P_c(i)^2 + P_c(i) (a_i - s_i - 2 m_i sum_c' gS[c'] P_c'(i)^2) + [c = t_i] (s_i - a_i)
    Only float32 and int64 index tensors take part in the per-voxel work: bool masks and ``torch.where``
    are several times slower on the CPU.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, *args: object) -> Tensor:  # type: ignore[override]
        # float32 arithmetic even under autocast, which would run the einsum in half precision
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return _TopKDiceCE._forward(ctx, logits, *args)

    @staticmethod
    def _forward(
        ctx,
        logits: Tensor,
        target: Tensor,
        mask: Tensor | None,
        ce_weight: Tensor | None,
        tie_break: Tensor,
        config: _LossConfig,
    ) -> Tensor:
        compute_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        z = logits.to(compute_dtype)
        batch, n_classes = z.shape[:2]
        probs = torch.softmax(z, 1)
        true_class_prob = probs.gather(1, target.unsqueeze(1)).squeeze(1)
        mask_f = None if mask is None else mask.to(compute_dtype)
        loss = true_class_prob.new_zeros(())
        ctx.dice, ctx.ce = config.weight_dice != 0, config.weight_ce != 0
        column = contribution = grad_inter = grad_sq = ce_grad = None
        if ctx.dice:
            column, n_foreground, n_excluded = _topk_selection(
                true_class_prob.float(), target, n_classes, config.k, mask, config.do_bg, tie_break
            )
            # 1 where excluded, 0 where kept (or masked, whose column is discarded)
            excluded = (column - n_classes).clamp_(0, 1).to(compute_dtype)
            contribution = torch.lerp(true_class_prob, true_class_prob.square(), excluded)
            column = column.long()
            sums = torch.zeros(batch, 2 * n_classes + 1, dtype=compute_dtype, device=z.device)
            sums.scatter_add_(1, column, contribution)
            if mask_f is None:
                dense_sq = torch.linalg.vector_norm(probs, 2, dim=-1).square()
            else:
                dense_sq = torch.einsum("bcn,bn->bc", probs.square(), mask_f)
            dice_loss, grad_inter, grad_sq = _dice_loss_and_grads(
                sums[:, 1 : n_classes + 1],
                dense_sq - sums[:, n_classes + 1 :],
                n_foreground,
                n_excluded,
                config.do_bg,
                config.batch_dice,
                config.smooth,
                config.ddp,
            )
            loss = loss + config.weight_dice * dice_loss
        if ctx.ce:
            ce_factor = None if ce_weight is None else ce_weight.to(device=z.device, dtype=compute_dtype)[target]
            if mask_f is not None:
                ce_factor = mask_f if ce_factor is None else ce_factor * mask_f
            # log q instead of z_t - logsumexp(z): one dense pass less; equal to float precision down to
            # q = 1.2e-38 (a per-voxel CE of 87), where the value (not the gradient, see backward) saturates
            log_q = true_class_prob.clamp_min(torch.finfo(compute_dtype).tiny).log()
            if ce_factor is None:
                ce_sum, denominator = log_q.sum(), log_q.new_tensor(float(target.numel()))
            else:
                # torch.nn.CrossEntropyLoss's mean: the summed weights of the counted voxels (an all-ignored
                # batch gives 0 instead of nnU-Net's skipped term)
                ce_sum = (log_q * ce_factor).sum()
                denominator = ce_factor.sum().clamp_min(1 if ce_weight is None else 1e-8)
            loss = loss - config.weight_ce * ce_sum / denominator
            # d loss / d(-log q_i): a scalar, or per voxel with weights or a mask
            ce_grad = config.weight_ce / denominator
            ce_grad = ce_grad if ce_factor is None else ce_factor * ce_grad
        ctx.save_for_backward(probs, contribution, column, target, mask_f, grad_inter, grad_sq, ce_grad)
        ctx.weight_dice = config.weight_dice
        ctx.logits_dtype = logits.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor):  # type: ignore[override]
        probs, contribution, column, target, mask_f, grad_inter, grad_sq, ce_grad = ctx.saved_tensors
        grad_loss = grad_loss.to(probs.dtype)
        at_target = per_voxel = None
        grad = None
        if ctx.dice:
            g_inter = grad_inter * (grad_loss * ctx.weight_dice)
            g_sq = grad_sq * (grad_loss * ctx.weight_dice)
            # q * d(sums)/dq at each voxel's own class, per selection column (masked, kept, excluded)
            per_column = torch.cat([torch.zeros_like(g_inter[:, :1]), g_inter, -2 * g_sq], 1)
            at_target = per_column.gather(1, column).mul_(contribution)
            # 2 m gS[c] P_c^2, whose sum over classes is also needed per voxel
            grad = probs.square() if mask_f is None else probs.square().mul_(mask_f.unsqueeze(1))
            grad.mul_(2 * g_sq.unsqueeze(-1))
            per_voxel = grad.sum(1).add_(at_target).neg_()
        if ctx.ce:
            ce = ce_grad * grad_loss  # a_i, a scalar tensor or (B, N)
            per_voxel = ce.expand(target.shape) if per_voxel is None else per_voxel + ce
            at_target = -ce.expand(target.shape) if at_target is None else at_target - ce
        if per_voxel is None:
            return torch.zeros_like(probs, dtype=ctx.logits_dtype), None, None, None, None, None
        grad = probs * per_voxel.unsqueeze(1) if grad is None else grad.addcmul_(probs, per_voxel.unsqueeze(1))
        grad.scatter_add_(1, target.unsqueeze(1), at_target.unsqueeze(1))
        return grad.to(ctx.logits_dtype), None, None, None, None, None


def _topk_dice_ce(
    logits: Tensor,
    target: Tensor,
    mask: Tensor | None,
    tie_break: Tensor,
    config: _LossConfig,
    ce_weight: Tensor | None = None,
) -> Tensor:
    """``weight_dice * TopK-Dice + weight_ce * CE`` from flattened logits (see :class:`_TopKDiceCE`).

    Shape: logits (B, C, N) float; target (B, N) int64 in [0, C) (anything under the mask); mask (B, N) bool
    or None; tie_break (N,); ce_weight (C,) or None.  returns: scalar, float32 (float64 for float64 logits).
    """
    return _TopKDiceCE.apply(logits, target, mask, ce_weight, tie_break, config)


def topk_dice_loss(
    logits: Tensor,
    target: Tensor,
    k: float = 50.0,
    *,
    loss_mask: Tensor | None = None,
    do_bg: bool = False,
    batch_dice: bool = False,
    smooth: float = 1e-5,
    ddp: bool = False,
    tie_break_seed: int = DEFAULT_TIE_BREAK_SEED,
    tie_break_scale: float = DEFAULT_TIE_BREAK_SCALE,
) -> Tensor:
    """TopK-Dice loss, ``1 - mean Dice`` of the modified maps (paper eq. 7).

    Shape:
        logits: (B, C, X, Y[, Z]) float (float16/bfloat16 allowed), unnormalised; softmax is applied here,
        in float32.  target: (B, 1, X, Y[, Z]) integer labels in [0, C) (masked voxels may hold anything).
        loss_mask: optional (B, 1, X, Y[, Z]) bool/float; 0 marks voxels that take part in nothing.
        returns: scalar float32 in [0, 1]; 0 (still attached to the graph) when no class is present.
    Raises:
        ValueError: ``k`` not in (0, 100]; target shape or dtype wrong; batch/spatial sizes differ.
        RuntimeError: ``ddp`` and ``batch_dice`` without an initialised process group.

    Example:
        >>> logits = torch.randn(2, 3, 16, 16)
        >>> target = torch.randint(0, 3, (2, 1, 16, 16))
        >>> float(topk_dice_loss(logits, target, k=50)) < 1.0
        True
    """
    _drop_fraction(k)
    flat_logits, flat_target, mask, tie_break = _prepare(logits, target, loss_mask, tie_break_seed, tie_break_scale)
    config = _LossConfig(float(k), do_bg, batch_dice, smooth, ddp, weight_dice=1.0, weight_ce=0.0)
    return _topk_dice_ce(flat_logits, flat_target, mask, tie_break, config)


class TopKDiceLoss(nn.Module):
    """TopK-Dice loss as a module; see :func:`topk_dice_loss` for shapes and semantics.

    Args:
        k: percent of each class's foreground voxels that are KEPT (the hardest), ``0 < k <= 100``.
        do_bg: include the background class in the mean.
        batch_dice: sum the Dice terms over the batch before dividing (selection stays per image).
        smooth: added to numerator and denominator of each class's Dice.
        ddp: with ``batch_dice``, sum the Dice terms over all DDP ranks.
        tie_break_seed, tie_break_scale: the fixed perturbation map ``eps`` of eq. 2.
    Raises:
        ValueError: ``k`` not in (0, 100], ``smooth`` negative.

    Example:
        >>> loss = TopKDiceLoss(k=50)
        >>> value = loss(torch.randn(2, 4, 8, 8, 8), torch.randint(0, 4, (2, 1, 8, 8, 8)))
        >>> value.shape, value.dtype
        (torch.Size([]), torch.float32)
    """

    def __init__(
        self,
        k: float = 50.0,
        do_bg: bool = False,
        batch_dice: bool = False,
        smooth: float = 1e-5,
        ddp: bool = False,
        tie_break_seed: int = DEFAULT_TIE_BREAK_SEED,
        tie_break_scale: float = DEFAULT_TIE_BREAK_SCALE,
    ) -> None:
        super().__init__()
        _drop_fraction(k)
        if not smooth >= 0:
            raise ValueError(f"smooth must be >= 0, got {smooth!r}")
        if not tie_break_scale >= 0:
            raise ValueError(f"tie_break_scale must be >= 0, got {tie_break_scale!r}")
        self.k = float(k)
        self.do_bg = bool(do_bg)
        self.batch_dice = bool(batch_dice)
        self.smooth = float(smooth)
        self.ddp = bool(ddp)
        self.tie_break_seed = int(tie_break_seed)
        self.tie_break_scale = float(tie_break_scale)

    def forward(self, logits: Tensor, target: Tensor, loss_mask: Tensor | None = None) -> Tensor:
        return topk_dice_loss(
            logits,
            target,
            self.k,
            loss_mask=loss_mask,
            do_bg=self.do_bg,
            batch_dice=self.batch_dice,
            smooth=self.smooth,
            ddp=self.ddp,
            tie_break_seed=self.tie_break_seed,
            tie_break_scale=self.tie_break_scale,
        )

    def extra_repr(self) -> str:
        return f"k={self.k}, do_bg={self.do_bg}, batch_dice={self.batch_dice}, smooth={self.smooth}, ddp={self.ddp}"
