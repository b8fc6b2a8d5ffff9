"""TopK-Dice for region-based (sigmoid) outputs: nnU-Net's ``regions_class_order`` datasets.

A region dataset (BraTS-style "whole tumour", "tumour core", "enhancing") has one sigmoid output per
region, and the regions overlap, so a voxel can belong to several. The paper's selection (eqs. 2-4) is
therefore made per image and region, independently: among the region's voxels, the
``floor((100 - k) / 100 * n_r)`` with the highest ``sigmoid + eps`` are removed from that region's target
and prediction, then a squared soft Dice per region and ``1 - mean`` over the regions present.

Written with plain autograd (the selection is that of :func:`channel_exclusion_mask`, not differentiated);
the Dice rules (presence, ``batch_dice``, DDP) are those of the softmax :class:`TopKDiceLoss`, and so are the
options (:class:`~nnunet_topkdice.losses.options.TopKDiceOptions`), with ``do_bg=True`` by default here.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import Tensor

from nnunet_topkdice.losses.fused import without_autocast
from nnunet_topkdice.losses.loss_module import TopKDiceModule
from nnunet_topkdice.losses.options import TopKDiceOptions
from nnunet_topkdice.losses.selection import select_per_channel
from nnunet_topkdice.losses.tie_break import DEFAULT_TIE_BREAK_SCALE, DEFAULT_TIE_BREAK_SEED

__all__ = [
    "SIGMOID_DEFAULT_OPTIONS",
    "SigmoidTopKDiceLoss",
    "check_binary_regions",
    "check_region_inputs",
    "sigmoid_topk_dice_loss",
]

# nnU-Net's region Dice counts every region (do_bg=True); otherwise the softmax loss's defaults
SIGMOID_DEFAULT_OPTIONS = TopKDiceOptions(do_bg=True)


def check_region_inputs(logits: Tensor, target: Tensor, loss_mask: Tensor | None) -> None:
    """Metadata-only checks of the region loss's inputs (shapes and dtypes; no host synchronisation).

    Raises:
        ValueError: shapes, dtypes, or an empty batch (no image, region or voxel), naming the argument.
    """
    if logits.ndim not in (4, 5) or not logits.is_floating_point():
        raise ValueError(
            f"logits must be a float tensor (B, R, X, Y[, Z]), got shape {tuple(logits.shape)} and dtype {logits.dtype}"
        )
    if logits.numel() == 0:
        raise ValueError(f"logits must hold at least one image, region and voxel, got shape {tuple(logits.shape)}")
    if target.shape != logits.shape:
        raise ValueError(
            f"target must be binary region maps of the shape of logits {tuple(logits.shape)} (B, R, *spatial), "
            f"got shape {tuple(target.shape)}"
        )
    if target.is_complex():
        raise ValueError(f"target must hold 0/1 region maps (bool, integer or float), got dtype {target.dtype}")
    if loss_mask is not None and (
        loss_mask.ndim != logits.ndim
        or loss_mask.shape[1] not in (1, logits.shape[1])
        or loss_mask.shape[0] != logits.shape[0]
        or loss_mask.shape[2:] != logits.shape[2:]
    ):
        raise ValueError(
            f"loss_mask must have shape (B, 1 or R, *spatial) for logits {tuple(logits.shape)}, "
            f"got {tuple(loss_mask.shape)}"
        )


def check_binary_regions(target: Tensor) -> None:
    """Region maps that hold only 0 and 1, checked where it costs no host synchronisation (a CPU tensor that
    is not bool; bool maps, nnU-Net's, are binary by type). The selection reads ``target != 0`` while BCE
    reads the values themselves, so a 0.5 or a 2 would be a different target for each term.

    Raises:
        ValueError: a value other than 0 and 1 (NaN included), naming it.
    """
    if target.dtype == torch.bool or target.device.type != "cpu" or torch.compiler.is_compiling():
        return
    values = target.detach()
    values = (values.float() if values.dtype == torch.bfloat16 else values).numpy()  # NumPy has no bfloat16
    outside = values[(values != 0) & (values != 1)]
    if outside.size:
        raise ValueError(f"target must hold binary (0/1) region maps, got the value {outside.flat[0].item()!r} "
                         f"({outside.size} voxel(s) neither 0 nor 1)")  # fmt: skip


def _present_regions_dice_loss(
    intersect: Tensor,
    sum_pred_sq: Tensor,
    sum_gt: Tensor,
    present: Tensor,
    options: TopKDiceOptions,
) -> Tensor:
    """``1 - mean Dice`` over the present regions from the per (image, region) sums.

    The rules of the softmax loss: without ``batch_dice``, the mean over the images that have a present
    region; with it, the sums (and presence) over the batch first and, with ``ddp``, over all ranks, by a
    differentiable all-reduce: every rank gets the global loss, and gradients ``world_size`` times the
    local ones, which DDP's gradient averaging brings back to the single-process gradient.

    Shape: all (B, R); present bool.  options: ``do_bg``, ``batch_dice``, ``smooth`` and ``ddp`` are read.
    returns: scalar of the sums' dtype.
    Raises:
        RuntimeError: ``ddp`` and ``batch_dice`` without an initialised process group.
    """
    first = 0 if options.do_bg else 1  # nnU-Net's do_bg=False drops the first output channel
    stats = torch.stack([intersect, sum_pred_sq, sum_gt, present.to(intersect.dtype)])[..., first:]
    if options.batch_dice:
        stats = stats.sum(1, keepdim=True)
        if options.ddp:
            if not (dist.is_available() and dist.is_initialized()):
                raise RuntimeError("SigmoidTopKDiceLoss(ddp=True, batch_dice=True) needs an initialised process group")
            stats = dist_fn.all_reduce(stats)
        stats = torch.cat([stats[:3], stats[3:].clamp(max=1)])  # present anywhere in the batch
    inter, pred, gt, present_f = stats.unbind(0)
    smooth = options.smooth
    dice = (2 * inter + smooth) / (gt + pred + smooth).clamp_min(1e-8)
    n_present = present_f.sum(-1)
    has_region = n_present.clamp(max=1)
    # per row (image, or the batch): 1 - mean over its present regions; then the mean over rows with one
    row_loss = has_region - (dice * present_f).sum(-1) / n_present.clamp_min(1)
    return row_loss.sum() / has_region.sum().clamp_min(1)


def sigmoid_topk_dice_loss(
    logits: Tensor,
    target: Tensor,
    *,
    loss_mask: Tensor | None = None,
    options: TopKDiceOptions = SIGMOID_DEFAULT_OPTIONS,
) -> Tensor:
    """TopK-Dice of sigmoid outputs against overlapping binary regions, ``1 - mean`` over present regions.

    Per image ``b`` and region ``r``: ``P = sigmoid(logits)``; ``n_r`` the voxels with target 1 that are
    not masked; the ``D_r = floor((100 - k) / 100 * n_r)`` of them with the highest ``P + eps`` (exactly
    ``D_r``, ties to the lower voxel index; ``eps`` the seeded map of :func:`tie_break_map`) are removed
    from the region's target and prediction; ``dice_r = (2 sum Yk Pk + smooth) / (sum Yk + sum Pk^2 +
    smooth)``. Voxels outside the region are never removed from it (its false positives stay).

    ``do_bg`` follows nnU-Net's region Dice (``DC_and_BCE_loss`` uses ``do_bg=True``, since every region is
    foreground): ``do_bg=False`` leaves the first region (output channel 0) out of the mean, as nnU-Net's
    ``MemoryEfficientSoftDiceLoss`` does.

    Shape:
        logits: (B, R, X, Y[, Z]) float (float16/bfloat16 allowed), unnormalised; the sigmoid and all sums
        are computed in float32 (float64 for float64 logits), also under autocast.
        target: (B, R, X, Y[, Z]) 0/1 region maps (bool, integer or float; nonzero counts as 1).
        loss_mask: optional (B, 1 or R, X, Y[, Z]); 0 marks voxels that take part in nothing.
        options: the hyper-parameters (:class:`TopKDiceOptions`; the default has ``do_bg=True``).
        returns: scalar in [0, 1]; 0 (still attached to the graph) when no region is present.
    Raises:
        ValueError: shapes or dtypes wrong, or an empty batch (metadata checks only).
        RuntimeError: ``ddp`` and ``batch_dice`` without an initialised process group.

    Example:
        >>> logits = torch.randn(2, 3, 16, 16)
        >>> regions = torch.rand(2, 3, 16, 16) > 0.5  # overlapping regions
        >>> float(sigmoid_topk_dice_loss(logits, regions, options=TopKDiceOptions(k=30, do_bg=True))) < 1.0
        True
    """
    check_region_inputs(logits, target, loss_mask)
    check_binary_regions(target)
    compute_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    batch, n_regions = logits.shape[:2]
    with without_autocast(logits.device.type):
        probs = torch.sigmoid(logits.to(compute_dtype))
        with torch.no_grad():
            valid = None if loss_mask is None else (loss_mask != 0).reshape(batch, loss_mask.shape[1], -1)
            region = target.reshape(batch, n_regions, -1)
            region = region if region.dtype == torch.bool else region != 0
            if valid is not None:
                region = region & valid
            # the spatial shape, not the flattened one, names the tie-break map (one per spatial shape)
            selection = select_per_channel(probs, region.view(probs.shape), options=options)
            # E, 1 where excluded, lies inside the region: Yk = Y - E (eq. 5), and Pk (eq. 6) is counted
            # where 1 - E (times the mask)
            excluded = selection.excluded.view(batch, n_regions, -1)
            kept_region = region.to(excluded.dtype).sub_(excluded)
            counted = torch.rsub(excluded, 1) if valid is None else valid.to(excluded.dtype).sub(excluded)
            n_region = selection.n_foreground.view(batch, n_regions)
            sum_gt = (n_region - selection.n_excluded.view(batch, n_regions)).to(compute_dtype)
            present = n_region > 0
        probs = probs.reshape(batch, n_regions, -1)
        intersect = (probs * kept_region).sum(-1, dtype=compute_dtype)
        sum_pred_sq = (probs.square() * counted).sum(-1, dtype=compute_dtype)
        return _present_regions_dice_loss(intersect, sum_pred_sq, sum_gt, present, options)


class SigmoidTopKDiceLoss(TopKDiceModule):
    """TopK-Dice for region-based (sigmoid) training; see :func:`sigmoid_topk_dice_loss`.

    Args:
        k: percent of each region's voxels that are KEPT (the hardest), ``0 < k <= 100``.
        do_bg: include the first region (output channel 0) in the mean; nnU-Net's region default is True.
        batch_dice: add the Dice sums over the batch before dividing (selection stays per image).
        smooth: added to numerator and denominator of each region's Dice.
        ddp: with ``batch_dice``, add the Dice sums over all DDP ranks.
        tie_break_seed, tie_break_scale: the fixed perturbation map ``eps`` of eq. 2.
    The options are kept, validated, in ``self.options`` (a :class:`TopKDiceOptions`).
    Raises:
        ValueError: as :class:`TopKDiceOptions` (``k`` not in (0, 100], ``smooth`` negative, ...).

    Example:
        >>> loss = SigmoidTopKDiceLoss(k=50, batch_dice=True)
        >>> value = loss(torch.randn(2, 3, 8, 8, 8), torch.rand(2, 3, 8, 8, 8) > 0.5)
        >>> value.shape, value.dtype
        (torch.Size([]), torch.float32)
    """

    loss_function = staticmethod(sigmoid_topk_dice_loss)

    def __init__(
        self,
        k: float = 50.0,
        do_bg: bool = True,
        batch_dice: bool = False,
        smooth: float = 1e-5,
        ddp: bool = False,
        tie_break_seed: int = DEFAULT_TIE_BREAK_SEED,
        tie_break_scale: float = DEFAULT_TIE_BREAK_SCALE,
    ) -> None:
        options = TopKDiceOptions(
            k=k,
            do_bg=do_bg,
            batch_dice=batch_dice,
            smooth=smooth,
            ddp=ddp,
            tie_break_seed=tie_break_seed,
            tie_break_scale=tie_break_scale,
        )
        super().__init__(options)
