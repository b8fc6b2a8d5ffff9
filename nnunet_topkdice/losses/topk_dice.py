"""TopK-Dice loss (Hosseini, *TopK Dice Loss for Medical Image Segmentation*, section 2).

Per image and class, the ``D_c = floor((100 - k) / 100 * n_c)`` easiest foreground voxels (highest
true-class probability, eqs. 2-4) are removed from both the ground truth and the prediction of that
class (eqs. 5-6) before a squared soft Dice (eq. 7).

Implementation notes (why it is fast):

* Every voxel has exactly one true class, so the foreground sets of the classes partition the image.
  The selection therefore works on one vector per image, the true-class probability ``q``, keyed by
  ``(image, class)`` segments, instead of on ``C`` dense maps.
* The cut of every segment is found at once by a radix (histogram) selection on an integer key made of
  the float bits of ``q + tie_break`` and the voxel index: O(N) per pass, a fixed number of passes that
  depends only on the shape, no sort, no host synchronisation and no data-dependent shapes. Because the
  index is part of the key, keys are unique and exactly ``D_c`` voxels are excluded even when
  probabilities tie.
* The Dice sums need no one-hot tensor: the intersection and the excluded part of ``sum P^2`` only
  involve each voxel's true class (``scatter_add`` over the labels); the rest of ``sum P^2`` is one dense
  reduction.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from fractions import Fraction

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "TopKDiceLoss",
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
_SORT_AT_MOST = 8192
_KEY_BITS = 31
_HALF_BITS = 0x3F000000  # float32 bits of 0.5
_FLOOR_BITS = 0x33800000  # float32 bits of 2**-24
_ONE_BITS = 0x3F800000  # float32 bits of 1.0

_tie_break_cache: dict[tuple, Tensor] = {}


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
    return _exact_drop_fraction(float(k))


@functools.lru_cache(maxsize=64)
def _exact_drop_fraction(k: float) -> Fraction:
    return 1 - Fraction(k).limit_denominator(10**6) / 100


def n_excluded_voxels(n_foreground: Tensor, k: float) -> Tensor:
    """``D = floor((100 - k) / 100 * n)`` (eq. 3), computed exactly in integer arithmetic.

    Shape:
        n_foreground: any shape, integer counts.  returns: same shape, int64.
    Raises:
        ValueError: ``k`` not in (0, 100].
    """
    drop = _drop_fraction(k)
    return torch.div(n_foreground.long() * drop.numerator, drop.denominator, rounding_mode="floor")


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


def _class_counts(target: Tensor, valid: Tensor | None, n_classes: int) -> Tensor:
    """Foreground voxels per image and class (``n_c``), masked voxels not counted.

    Shape: target (B, N) int64, valid (B, N) bool or None.  returns: (B, C) int64.
    """
    index = target if valid is None else torch.where(valid, target, n_classes)  # column C collects masked voxels
    counts = torch.zeros(target.shape[0], n_classes + 1, dtype=torch.long, device=target.device)
    counts.scatter_add_(1, index, torch.ones_like(index))
    return counts[:, :n_classes]


def _ordering_key(value: Tensor) -> Tensor:
    """A strictly increasing int32 image of non-negative float32 values below 2, in 31 bits.

    Its top bits resolve both ends on a logarithmic scale: hard voxels (``v < 0.5``) by the float bits
    of ``v``, easy ones by the float bits of ``1 - v`` (exact for ``v`` in [0.5, 1] by Sterbenz's lemma),
    so that the many confident voxels near ``q = 1``, where the cut usually lies, spread over many
    histogram bins. Values above 1 (``q`` near 1 plus the tie-break ``eps``) continue above 1's key.

    Shape: any float32.  returns: same shape, int32 in [0, 2**31).
    """
    bits = value.view(torch.int32)
    distance_bits = (1 - value).view(torch.int32)  # used only where 1 - value >= 0
    easy = torch.where(value <= 1, _HALF_BITS - distance_bits, bits + (_HALF_BITS - _ONE_BITS))
    return torch.where(value < 0.5, bits, easy + (1 << 30))


def _coarse_bucket(value: Tensor, bits: int, offset: Tensor) -> Tensor:
    """Histogram bucket of ``v`` plus ``offset``, non-decreasing in ``v``, in ``offset + [0, 2**bits)``.

    The lower half of the buckets covers ``v < 0.5`` by the float bits of ``v``, the upper half
    ``v >= 0.5`` by the float bits of ``1 - v`` (exact there), both on a logarithmic scale clipped at
    2**-24, so that hard voxels near 0 and the many confident voxels near 1, where the cut usually lies,
    both spread over many buckets. ``min(v, 1 - v)`` picks the side in one operation.

    Shape: value (B, N) float32, non-negative; offset (B, 1) int32.  returns: (B, N) int32.
    """
    top = (1 << bits) - 1
    shift = max(0, (_HALF_BITS - _FLOOR_BITS).bit_length() - (bits - 1))
    # distance to the nearer end; 1 - v < 0 (v > 1) clamps to the floor, the last bucket
    nearer_end = torch.minimum(value, 1 - value).view(torch.int32).clamp_(_FLOOR_BITS, _HALF_BITS - 1)
    level = (nearer_end - _FLOOR_BITS) >> shift
    # v >= 0.5 counts down from the top: (2**bits - 1) - level == level ^ (2**bits - 1); the sign bit of
    # v - 0.5 picks the side without a (slow) integer torch.where
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
    """Exact selection among the voxels left in the cut buckets: the ``still_needed[s]`` largest per segment.

    While many candidates remain, a histogram of the next bits of :func:`_ordering_key` narrows them down
    (radix selection on the compacted voxels); the rest are sorted by (segment, value descending, voxel
    index ascending).

    Shape: values (M,) float32; segment, flat_index (M,) int64, flat_index ascending; still_needed
    (n_segments,) int64, >= 1 for every segment that has candidates.  returns: flat indices to exclude, int64.
    """
    chosen = []
    if values.numel() > _SORT_AT_MOST:
        keys, key_bits = _ordering_key(values).long(), _KEY_BITS
        while keys.numel() > _SORT_AT_MOST and key_bits > 0:
            digit_bits = min(key_bits, _MAX_BUCKET_BITS, max(_MIN_BUCKET_BITS, keys.numel().bit_length() - 8))
            shift = key_bits - digit_bits
            digit = (keys >> shift) & ((1 << digit_bits) - 1)
            hist = torch.zeros(n_segments << digit_bits, dtype=torch.long, device=keys.device)
            hist.index_add_(0, (segment << digit_bits) + digit, torch.ones_like(digit))
            cut, n_above = _cut(hist.view(n_segments, 1 << digit_bits), still_needed.clamp_min(1))
            voxel_cut = cut[segment]
            chosen.append(flat_index[digit > voxel_cut])
            still_needed = still_needed - n_above
            inside = digit == voxel_cut
            keys, values, segment, flat_index = keys[inside], values[inside], segment[inside], flat_index[inside]
            key_bits = shift
    # two stable sorts, value then segment: flat_index is ascending, so equal values keep index order
    by_value = torch.sort(values, descending=True, stable=True).indices
    by_segment = torch.sort(segment[by_value], stable=True)
    sorted_segment = by_segment.values
    rank = torch.arange(sorted_segment.numel(), device=values.device) - torch.searchsorted(
        sorted_segment, sorted_segment
    )
    chosen.append(flat_index[by_value[by_segment.indices[rank < still_needed[sorted_segment]]]])
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

    One histogram per (image, class) over buckets of ``v`` finds the bucket that holds each cut, and
    everything in higher buckets is excluded. Buckets follow the float bits of ``1 - v``, a logarithmic
    scale near ``q = 1``, so the many confident voxels, where the cut usually lies, spread over many
    buckets. The voxels inside the cut buckets (usually few) are then resolved exactly by
    :func:`_resolve_candidates` on :func:`_ordering_key`; exact ties are taken lowest voxel index first,
    so that exactly ``D_c`` voxels are marked.

    Shape:
        true_class_prob: (B, N) float32 in [0, 1].  target: (B, N) int64 in [0, C).
        valid: (B, N) bool or None.  tie_break: (N,) float32 in [0, 1).
        returns: excluded (B, N) bool, n_foreground (B, C) int64, n_excluded (B, C) int64.
    """
    batch, n_voxels = target.shape
    if k >= 100:
        n_foreground = _class_counts(target, valid, n_classes)
        return torch.zeros_like(target, dtype=torch.bool), n_foreground, torch.zeros_like(n_foreground)
    device = target.device
    # many voxels per bucket on average keep the histogram much cheaper than the voxels
    bits = min(_MAX_BUCKET_BITS, max(_MIN_BUCKET_BITS, (n_voxels // n_classes).bit_length() - 5))
    n_buckets = 1 << bits
    value = true_class_prob + tie_break  # eq. 2 on the foreground, where Y = 1
    image_offset = torch.arange(batch, device=device, dtype=torch.int32).unsqueeze(1) * ((n_classes + 1) * n_buckets)
    cls = target if valid is None else torch.where(valid, target, n_classes)  # masked voxels: spare row
    row_bucket = torch.add(_coarse_bucket(value, bits, image_offset), cls, alpha=n_buckets).view(-1)  # int64
    hist = torch.bincount(row_bucket, minlength=batch * (n_classes + 1) * n_buckets)
    hist = hist.view(batch, n_classes + 1, n_buckets)[:, :n_classes]
    n_foreground = hist.sum(-1)
    n_excluded = n_excluded_voxels(n_foreground, k)
    if not do_bg:
        n_excluded[:, 0] = 0
    cut, n_above = _cut(hist, n_excluded.clamp_min(1))
    # per bucket: 0 keep, 1 cut bucket (to resolve), 2 exclude, i.e. sign(bucket - cut) + 1; classes that
    # exclude nothing and the spare row get a cut above every bucket
    cut = torch.cat([torch.where(n_excluded > 0, cut, n_buckets), cut.new_full((batch, 1), n_buckets)], 1)
    state = (torch.arange(n_buckets, device=device) - cut.unsqueeze(-1)).sign_().add_(1).to(torch.int8)
    voxel_state = torch.take(state.view(-1), row_bucket).view(batch, n_voxels)
    excluded = voxel_state == 2

    candidates = (voxel_state == 1).view(-1).nonzero().squeeze(1)
    if candidates.numel() > 0:
        segment = torch.div(candidates, n_voxels, rounding_mode="floor") * n_classes + target.view(-1)[candidates]
        still_needed = (n_excluded - n_above).view(-1)
        chosen = _resolve_candidates(value.view(-1)[candidates], segment, candidates, still_needed, batch * n_classes)
        excluded.view(-1)[chosen] = True
    return excluded, n_foreground, n_excluded


def _flatten(logits: Tensor, target: Tensor, loss_mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    batch, n_classes = logits.shape[:2]
    target = target.reshape(batch, -1).long()
    mask = None if loss_mask is None else loss_mask.reshape(batch, -1).bool()
    if mask is not None:
        # masked voxels may carry an ignore label outside [0, C): park them on class 0
        target = torch.where(mask, target, 0)
    return logits.reshape(batch, n_classes, -1), target, mask


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
    _check_inputs(probs, target, loss_mask)
    flat_probs, flat_target, mask = _flatten(probs, target, loss_mask)
    tie_break = tie_break_map(probs.shape[2:], probs.device, seed=tie_break_seed, scale=tie_break_scale)
    with torch.no_grad():
        true_class_prob = flat_probs.gather(1, flat_target.unsqueeze(1)).squeeze(1).float()
        excluded = _topk_selection(
            true_class_prob, flat_target, flat_probs.shape[1], k, mask, do_bg, tie_break.reshape(-1)
        )[0]
    return excluded.view(target.shape)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward also sums, like nnU-Net's ``AllGatherGrad`` followed by ``sum(0)``.

    Every rank computes the same global loss, so each local gradient comes out ``world_size`` times too
    large and DDP's gradient averaging brings it back to the single-process gradient.
    """

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:  # noqa: D401
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> Tensor:
        grad = grad_output.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class _TopKDiceSums(torch.autograd.Function):
    """Softmax, selection and the per-class Dice sums in one node, with a hand-written backward.

    Autograd through ``softmax -> gather -> where -> scatter_add`` and a dense ``sum P^2`` costs about
    twice the dense passes of the closed form below, and keeps more tensors alive. The (B, C) sums it
    returns go on through ordinary autograd (Dice, means, DDP reduction).

    Forward, with ``m`` the loss mask, ``t`` the labels, ``q = P[t]`` and ``w`` the cross-entropy weights:
        intersect[c] = sum_{t_i = c, kept} q_i
        sum_pred_sq[c] = sum_i m_i P_c(i)^2 - sum_{t_i = c, excluded} q_i^2
        ce_sum = -sum_i w_i log P_{t_i}(i)
    Backward, with ``s_i = gI[t_i] kept_i - 2 gS[t_i] excluded_i q_i`` and ``a_i = gCE w_i``:
        dz_c(i) = 2 m_i gS[c] P_c(i)^2 + P_c(i) (a_i - q_i s_i - 2 m_i sum_c' gS[c'] P_c'(i)^2)
                  + [c = t_i] (q_i s_i - a_i)
    """

    @staticmethod
    def forward(ctx, logits: Tensor, *args: object) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # type: ignore[override]
        # float32 arithmetic even under autocast, which would run the einsum in half precision
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return _TopKDiceSums._forward(ctx, logits, *args)

    @staticmethod
    def _forward(
        ctx,
        logits: Tensor,
        target: Tensor,
        mask: Tensor | None,
        ce_weight: Tensor | None,
        tie_break: Tensor,
        k: float,
        do_bg: bool,
        with_ce: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        compute_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        z = logits.to(compute_dtype)
        batch, n_classes = z.shape[:2]
        probs = torch.softmax(z, 1)
        true_class_prob = probs.gather(1, target.unsqueeze(1)).squeeze(1)
        excluded, n_foreground, n_excluded = _topk_selection(
            true_class_prob.float(), target, n_classes, k, mask, do_bg, tie_break
        )
        kept = ~excluded if mask is None else mask & ~excluded
        zero = true_class_prob.new_zeros(())
        intersect = torch.zeros(batch, n_classes, dtype=compute_dtype, device=z.device).scatter_add_(
            1, target, torch.where(kept, true_class_prob, zero)
        )
        excluded_sq = torch.zeros(batch, n_classes, dtype=compute_dtype, device=z.device).scatter_add_(
            1, target, torch.where(excluded, true_class_prob, zero).square()
        )
        if mask is None:
            dense_sq = torch.linalg.vector_norm(probs, 2, dim=-1).square()
        else:
            dense_sq = torch.einsum("bcn,bn->bc", probs.square(), mask.to(compute_dtype))
        sum_pred_sq = dense_sq - excluded_sq
        voxel_weight = None
        if with_ce:
            voxel_weight = None if ce_weight is None else ce_weight.to(device=z.device, dtype=compute_dtype)[target]
            if mask is not None:
                voxel_weight = mask.to(compute_dtype) if voxel_weight is None else voxel_weight * mask
            # log q instead of z_t - logsumexp(z): one dense pass less; equal to float precision down to
            # q = 1.2e-38 (a per-voxel CE of 87), where the value (not the gradient, see backward) saturates
            true_class_log_prob = true_class_prob.clamp_min(torch.finfo(compute_dtype).tiny).log()
            weighted = true_class_log_prob if voxel_weight is None else true_class_log_prob * voxel_weight
            ce_sum = -weighted.sum()
        else:
            ce_sum = zero.clone()
        ctx.save_for_backward(probs, true_class_prob, target, kept, excluded, mask, voxel_weight)
        ctx.logits_dtype = logits.dtype
        ctx.with_ce = with_ce
        ctx.mark_non_differentiable(n_foreground, n_excluded)
        return intersect, sum_pred_sq, ce_sum, n_foreground, n_excluded

    @staticmethod
    def backward(ctx, grad_intersect, grad_sum_pred_sq, grad_ce, _grad_fg, _grad_ex):  # type: ignore[override]
        probs, true_class_prob, target, kept, excluded, mask, voxel_weight = ctx.saved_tensors
        zeros = torch.zeros(probs.shape[:2], dtype=probs.dtype, device=probs.device)
        g_inter = zeros if grad_intersect is None else grad_intersect.to(probs.dtype)
        g_sq = zeros if grad_sum_pred_sq is None else grad_sum_pred_sq.to(probs.dtype)
        # gradient of the sums with respect to P at each voxel's own class, divided out of the dense part
        kept_grad = g_inter.gather(1, target) if mask is None else torch.where(kept, g_inter.gather(1, target), 0)
        own = torch.where(excluded, -2 * g_sq.gather(1, target) * true_class_prob, kept_grad)
        squared = probs.square() if mask is None else probs.square() * mask.unsqueeze(1)
        weighted_sq = torch.einsum("bcn,bc->bn", squared, g_sq)
        per_voxel = -true_class_prob * own - 2 * weighted_sq
        at_target = true_class_prob * own
        if ctx.with_ce and grad_ce is not None:
            ce = grad_ce.to(probs.dtype) if voxel_weight is None else grad_ce.to(probs.dtype) * voxel_weight
            per_voxel = per_voxel + ce
            at_target = at_target - ce
        grad = probs * per_voxel.unsqueeze(1)
        grad.addcmul_(squared, 2 * g_sq.unsqueeze(-1))
        grad.scatter_add_(1, target.unsqueeze(1), at_target.unsqueeze(1))
        return grad.to(ctx.logits_dtype), None, None, None, None, None, None, None


def _topk_dice_sums(
    logits: Tensor,
    target: Tensor,
    mask: Tensor | None,
    tie_break: Tensor,
    k: float,
    do_bg: bool,
    ce_weight: Tensor | None = None,
    with_ce: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per-class TopK-Dice sums (and the cross-entropy sum) from flattened logits.

    Shape: logits (B, C, N) float; target (B, N) int64 in [0, C); mask (B, N) bool or None; tie_break (N,);
    ce_weight (C,) or None.  returns: intersect (B, C), sum_pred_sq (B, C), ce_sum (), n_foreground (B, C)
    int64, n_excluded (B, C) int64.
    """
    return _TopKDiceSums.apply(logits, target, mask, ce_weight, tie_break, k, do_bg, with_ce)


def _dice_from_sums(
    intersect: Tensor,
    sum_pred_sq: Tensor,
    n_foreground: Tensor,
    n_excluded: Tensor,
    do_bg: bool,
    batch_dice: bool,
    smooth: float,
    ddp: bool,
) -> Tensor:
    """``1 - mean Dice`` over the present classes (eq. 7) from the (B, C) sums; scalar."""
    sum_gt = (n_foreground - n_excluded).to(intersect.dtype)  # Y is binary, so sum(Yk^2) = number kept
    present = n_foreground > 0
    if not do_bg:
        intersect, sum_pred_sq, sum_gt, present = intersect[:, 1:], sum_pred_sq[:, 1:], sum_gt[:, 1:], present[:, 1:]
    if batch_dice:
        intersect, sum_pred_sq, sum_gt = intersect.sum(0), sum_pred_sq.sum(0), sum_gt.sum(0)
        n_present = present.sum(0)
        if ddp:
            if not (dist.is_available() and dist.is_initialized()):
                raise RuntimeError("TopKDiceLoss(ddp=True, batch_dice=True) needs an initialised process group")
            intersect = _AllReduceSum.apply(intersect)
            sum_pred_sq = _AllReduceSum.apply(sum_pred_sq)
            dist.all_reduce(sum_gt)
            dist.all_reduce(n_present)
        present = n_present > 0
    dice = (2 * intersect + smooth) / (sum_gt + sum_pred_sq + smooth).clamp_min(1e-8)
    present_f = present.to(dice.dtype)
    n_classes_present = present_f.sum(-1)
    mean_dice = (dice * present_f).sum(-1) / n_classes_present.clamp_min(1)
    has_class = (n_classes_present > 0).to(dice.dtype)
    per_image_loss = (1 - mean_dice) * has_class
    if batch_dice:
        return per_image_loss
    return per_image_loss.sum() / has_class.sum().clamp_min(1)


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
    _check_inputs(logits, target, loss_mask)
    flat_logits, flat_target, mask = _flatten(logits, target, loss_mask)
    tie_break = tie_break_map(logits.shape[2:], logits.device, seed=tie_break_seed, scale=tie_break_scale)
    intersect, sum_pred_sq, _, n_foreground, n_excluded = _topk_dice_sums(
        flat_logits, flat_target, mask, tie_break.view(-1), k, do_bg
    )
    return _dice_from_sums(intersect, sum_pred_sq, n_foreground, n_excluded, do_bg, batch_dice, smooth, ddp)


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
