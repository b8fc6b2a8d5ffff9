"""``weight_dice * TopK-Dice + weight_ce * BCE`` of region (sigmoid) outputs as one autograd node.

The region loss of :class:`~nnunet_topkdice.losses.BCE_and_TopKDice_loss`, written with plain autograd in
:func:`~nnunet_topkdice.losses.sigmoid_topk_dice_loss` (the tested reference), computed by one node with a
closed-form backward, for one output or all of deep supervision's outputs at once. The node saves the
sigmoid ``P`` and two boolean maps (the exclusion and the region) where autograd saves float weight maps
and the BCE's own copies, and the BCE's backward uses ``P`` instead of a second sigmoid. One selection
serves every output (output ``s`` is class ``s`` of each (image, region) row).

Bit for bit: every value and gradient is formed by the same floating-point operations, in the same order,
as autograd forms them on the reference path (``BCE_and_TopKDice_loss(..., fused=False)`` inside nnU-Net's
``DeepSupervisionWrapper``); products with 0/1 maps are exact, so a boolean map stands in for a float one.
The derivation is in :class:`_RegionTopKDiceBCE`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from nnunet_topkdice.losses.fused import refuse_double_backward, without_autocast
from nnunet_topkdice.losses.options import TopKDiceOptions
from nnunet_topkdice.losses.selection import select_easiest

__all__ = ["RegionConfig", "RegionOutput", "fused_bce_and_topk_dice"]


class RegionConfig(NamedTuple):
    """What the node needs besides tensors: the TopK-Dice options and the weights of the two terms."""

    options: TopKDiceOptions | None  # None where weight_dice is 0
    weight_dice: float
    weight_ce: float


class RegionOutput(NamedTuple):
    """One output, checked by the caller.

    Shape: logits (B, R, *spatial) float; target (B, R, *spatial) 0/1 (bool, integer or float; the BCE
    target as given); mask (B, 1, *spatial) bool (True = counted) or None; tie_break (N,) float32, the map of
    ``*spatial`` flattened (None where the dice term has weight 0).
    """

    logits: Tensor
    target: Tensor
    mask: Tensor | None
    tie_break: Tensor


class _DiceSums(NamedTuple):
    """Per (image, region) sums of one output.  Shape: all (B, R); present bool."""

    intersect: Tensor
    sum_pred_sq: Tensor
    sum_gt: Tensor
    present: Tensor


class _DiceState(NamedTuple):
    """The small tensors of the Dice arithmetic that its backward reads (see :func:`_dice_forward`)."""

    numerator: Tensor
    denominator: Tensor
    unclamped: Tensor
    present: Tensor
    n_present: Tensor
    n_rows: Tensor


def _dice_forward(sums: _DiceSums, options: TopKDiceOptions) -> tuple[Tensor, _DiceState]:
    """``1 - mean Dice`` over the present regions: the operations of the reference, in its order.

    Without ``batch_dice`` the mean over the images that have a present region; with it, the sums (and
    presence) over the batch first and, with ``ddp``, over all ranks.

    Shape: sums (B, R).  returns: the loss () and the state its backward needs.
    Raises:
        RuntimeError: ``ddp`` and ``batch_dice`` without an initialised process group.
    """
    first = 0 if options.do_bg else 1  # nnU-Net's do_bg=False drops the first output channel
    stats = torch.stack([sums.intersect, sums.sum_pred_sq, sums.sum_gt, sums.present.to(sums.intersect.dtype)])
    stats = stats[..., first:]
    if options.batch_dice:
        stats = stats.sum(1, keepdim=True)
        if options.ddp:
            if not (dist.is_available() and dist.is_initialized()):
                raise RuntimeError("SigmoidTopKDiceLoss(ddp=True, batch_dice=True) needs an initialised process group")
            dist.all_reduce(stats)
        stats = torch.cat([stats[:3], stats[3:].clamp(max=1)])  # present anywhere in the batch
    inter, pred, gt, present_f = stats.unbind(0)
    numerator = 2 * inter + options.smooth
    unclamped = gt + pred + options.smooth
    denominator = unclamped.clamp_min(1e-8)
    dice = numerator / denominator
    n_present = present_f.sum(-1)
    has_region = n_present.clamp(max=1)
    n_present = n_present.clamp_min(1)
    row_loss = has_region - (dice * present_f).sum(-1) / n_present
    n_rows = has_region.sum().clamp_min(1)
    return row_loss.sum() / n_rows, _DiceState(numerator, denominator, unclamped, present_f, n_present, n_rows)


def _dice_backward(
    state: _DiceState, grad: Tensor, shape: torch.Size, options: TopKDiceOptions
) -> tuple[Tensor, Tensor]:
    """``dLoss/d intersect`` and ``dLoss/d sum_pred_sq`` from ``grad = dTotal/dLoss``, as autograd forms them.

    Shape: grad (); shape (B, R).  returns: two (B, R) tensors (expanded views under ``batch_dice``).
    """
    grad_rows = (grad / state.n_rows).expand(state.n_present.shape)
    grad_dice = ((-grad_rows) / state.n_present).unsqueeze(-1).expand(state.present.shape) * state.present
    grad_inter = grad_dice / state.denominator * 2
    grad_den = -grad_dice * ((state.numerator / state.denominator) / state.denominator)
    grad_pred = torch.where(state.unclamped >= 1e-8, grad_den, 0.0)
    if options.batch_dice and options.ddp:  # the backward of a summing all-reduce: the sum of the gradients
        both = torch.stack([grad_inter, grad_pred])
        dist.all_reduce(both)
        grad_inter, grad_pred = both.unbind(0)
    if not options.do_bg:
        grad_inter, grad_pred = F.pad(grad_inter, (1, 0)), F.pad(grad_pred, (1, 0))
    return grad_inter.expand(shape), grad_pred.expand(shape)


def _select(
    probs: list[Tensor], regions: list[Tensor], tie_breaks: list[Tensor], k: float
) -> tuple[list[Tensor], Tensor, Tensor]:
    """Per (image, region) row and output, the ``floor((100 - k) / 100 n)`` region voxels with the highest ``P + eps``.

    One selection for all outputs: their voxels are concatenated per row, output ``s`` being class ``s``
    (the selection is per class, ties to the lower voxel index within it, so this is the selection of each
    output on its own).

    Shape: probs, regions (B, R, N_s) per output (regions bool, the mask applied); tie_breaks (N_s,).
    returns: the exclusion (B, R, N_s) float32 0/1 per output (views of one buffer, the caller's to
    overwrite), n_region and n_excluded (B * R, S) int64.
    """
    batch, n_regions = probs[0].shape[:2]
    rows = batch * n_regions
    sizes = [p.shape[-1] for p in probs]
    if len(probs) == 1:
        value = probs[0].reshape(rows, -1).float() + tie_breaks[0]
        mask = regions[0].reshape(rows, -1)
        labels = torch.zeros((), dtype=torch.long, device=value.device).expand(mask.shape)
    else:
        value = torch.cat([p.reshape(rows, -1).float() + t for p, t in zip(probs, tie_breaks, strict=True)], 1)
        mask = torch.cat([r.reshape(rows, -1) for r in regions], 1)
        output_ids = [torch.full((n,), s, dtype=torch.long, device=value.device) for s, n in enumerate(sizes)]
        labels = torch.cat(output_ids).expand(mask.shape)
    selection = select_easiest(value, labels, len(probs), k, mask, True, with_codes=False)
    excluded = selection.excluded.view(batch, n_regions, -1).split(sizes, -1)
    return list(excluded), selection.n_foreground, selection.n_excluded


def _bce(logits: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
    """nnU-Net's ``DC_and_BCE_loss`` BCE term, by the reference's operations: the mean, or with a mask the sum
    over the regions and counted voxels divided by the number of counted voxels.

    Shape: logits (B, R, *spatial) float; target the same shape, of the logits' dtype; mask (B, 1, *spatial)
    bool or None.  returns: ().
    """
    if mask is None:
        return F.binary_cross_entropy_with_logits(logits, target)
    per_voxel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (per_voxel * mask).sum() / mask.sum(dtype=logits.dtype).clamp_min(1e-8)


def _bce_grad_(probs: Tensor, target: Tensor, mask: Tensor | None, grad: Tensor) -> Tensor:
    """``dBCE/dz`` times ``grad``, as ``binary_cross_entropy_with_logits``'s backward forms it, from ``P``;
    written into ``target``.

    Shape: probs (B, R, N); target (B, R, N) 0/1 of the probabilities' dtype (overwritten); mask (B, 1, N) or
    None; grad ().  returns: (B, R, N), ``target``'s storage.
    """
    out = torch.sub(probs, target, out=target)  # P - y
    if mask is None:
        return out.mul_(grad).div_(probs.numel())
    return out.mul_(grad / mask.sum(dtype=probs.dtype).clamp_min(1e-8)).mul_(_as_float(mask, probs.dtype))


def _counted_(excluded: Tensor, mask: Tensor | None) -> Tensor:
    """The voxels whose ``P^2`` is summed, ``m - E`` (``1 - E`` without a mask), written into ``excluded``.

    Shape: excluded (B, R, N) float 0/1 (overwritten); mask (B, 1, N) bool or None.  returns: ``excluded``.
    """
    return excluded.neg_().add_(1 if mask is None else _as_float(mask, excluded.dtype))


def _region_as_float(target: Tensor, region: Tensor, dtype: torch.dtype) -> Tensor:
    """``Y`` as 0/1 of ``dtype``, (B, R, N): from a bool target (the BCE's own target; where the mask takes
    voxels out of the region, their factors are 0 anyway), or from the region map for other dtypes.

    Float arithmetic is several times faster on the CPU than arithmetic that mixes in a bool operand, and
    products with 0/1 are exact.
    """
    source = target if target.dtype == torch.bool else region
    return _as_float(source.reshape(region.shape), dtype)


def _as_float(zero_one: Tensor, dtype: torch.dtype, copy: bool = False) -> Tensor:
    """A 0/1 map as ``dtype``; a bool map is read as uint8 (the same bytes, 0 and 1): on the CPU the
    conversion from uint8 is vectorised and the one from bool is not (0.07 ms against 0.54 ms for 1.6 M
    voxels, one thread).  Shape: unchanged."""
    source = zero_one.view(torch.uint8) if zero_one.dtype == torch.bool else zero_one
    return source.to(dtype, copy=copy)


class _RegionTopKDiceBCE(torch.autograd.Function):
    """The loss of every output as one node; see :func:`fused_bce_and_topk_dice`. Derivation:

    Per output, voxel ``i`` and region ``r``, with ``P = sigmoid(z)``, ``E`` the exclusion (inside the region),
    ``Y`` the region (the mask applied) and ``m`` the mask, the forward forms (eqs. 5-6)

        I_r = sum_i P (Y - E)           S_r = sum_i P^2 (m - E)

    and the Dice arithmetic of :func:`_dice_forward` gives ``gI = dLoss/dI`` and ``gS = dLoss/dS``
    (:func:`_dice_backward`), so that

        dLoss/dP = gI [kept] + gS [counted] 2 P,    dLoss/dz = dLoss/dP (1 - P) P

    (``kept = Y (m - E)``, ``counted = m - E``), formed as autograd forms ``(gI Yk) + (gS Ck)(2 P)`` and
    ``sigmoid_backward``. The BCE term's gradient is ``(P - y) g / n`` (``n`` the voxels times regions) or,
    with a mask, ``(P - y) (g / n_counted) m``, as ``binary_cross_entropy_with_logits``' backward forms it with
    its own sigmoid, which is ``P``. Deep supervision weights output ``s`` by ``w_s`` through ``g = w_s
    weight``; outputs are independent but for the one selection. The selection is a constant of the step
    (not differentiated, as in the paper). The 0/1 maps are saved as bool and made float32 where used:
    float arithmetic is several times faster on the CPU than arithmetic that mixes in a bool operand.
    """

    @staticmethod
    def forward(ctx, config: RegionConfig, output_weights: tuple[float, ...] | None, *flat: Tensor | None) -> Tensor:  # type: ignore[override]
        with without_autocast(flat[0].device.type):  # the first output's logits
            return _RegionTopKDiceBCE._forward(ctx, config, output_weights, *flat)

    @staticmethod
    def _forward(ctx, config: RegionConfig, output_weights: tuple[float, ...] | None, *flat: Tensor | None) -> Tensor:
        outputs = [RegionOutput(*flat[4 * s : 4 * s + 4]) for s in range(len(flat) // 4)]
        n_outputs = len(outputs)
        compute_dtype = torch.float64 if outputs[0].logits.dtype == torch.float64 else torch.float32
        logits = [o.logits.to(compute_dtype) for o in outputs]
        batch, n_regions = logits[0].shape[:2]
        probs = [torch.sigmoid(z) for z in logits]
        flat_probs = [p.reshape(batch, n_regions, -1) for p in probs]
        masks = [None if o.mask is None else o.mask.reshape(batch, 1, -1) for o in outputs]
        regions: list[Tensor | None] = [None] * n_outputs
        excluded: list[Tensor | None] = [None] * n_outputs
        ctx.dice_states = [None] * n_outputs
        losses = [o.logits.new_zeros((), dtype=compute_dtype) for o in outputs]  # BCE_and_TopKDice_loss.forward
        if config.weight_dice != 0:
            for s, o in enumerate(outputs):
                region = o.target.reshape(batch, n_regions, -1)
                region = region if region.dtype == torch.bool else region != 0
                regions[s] = region if masks[s] is None else region & masks[s]
            tie_breaks = [o.tie_break for o in outputs]
            selected, n_region, n_excluded = _select(flat_probs, regions, tie_breaks, config.options.k)
            for s, p in enumerate(flat_probs):
                excluded[s] = selected[s].bool()
                counted = _counted_(selected[s], masks[s])
                kept = _region_as_float(outputs[s].target, regions[s], compute_dtype).mul_(counted)  # Y (m - E)
                n_r = n_region[:, s].view(batch, n_regions)
                sums = _DiceSums(
                    (p * kept).sum(-1, dtype=compute_dtype),
                    (p.square() * counted).sum(-1, dtype=compute_dtype),
                    (n_r - n_excluded[:, s].view(batch, n_regions)).to(compute_dtype),
                    n_r > 0,
                )
                dice, ctx.dice_states[s] = _dice_forward(sums, config.options)
                losses[s] = losses[s] + config.weight_dice * dice
        if config.weight_ce != 0:
            for s, o in enumerate(outputs):
                bce = _bce(logits[s], _as_float(o.target, compute_dtype), o.mask)
                losses[s] = losses[s] + config.weight_ce * bce
        loss = losses[0] if output_weights is None else sum(w * x for w, x in zip(output_weights, losses, strict=True))
        targets, masks = [o.target for o in outputs], [o.mask for o in outputs]
        ctx.save_for_backward(*probs, *targets, *masks, *regions, *excluded)
        ctx.config, ctx.output_weights, ctx.n_outputs = config, output_weights, n_outputs
        ctx.logits_dtypes = [o.logits.dtype for o in outputs]
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor):  # type: ignore[override]
        refuse_double_backward("The fused region loss", "BCE_and_TopKDice_loss(..., fused=False)")
        n, config = ctx.n_outputs, ctx.config
        saved = ctx.saved_tensors
        probs, targets, masks, regions, excluded = (saved[i * n : (i + 1) * n] for i in range(5))
        grads = []
        for s in range(n):
            grad = grad_loss if ctx.output_weights is None else grad_loss * ctx.output_weights[s]
            p, dtype = probs[s], ctx.logits_dtypes[s]
            batch, n_regions = p.shape[:2]
            flat = p.reshape(batch, n_regions, -1)
            mask = None if masks[s] is None else masks[s].reshape(batch, 1, -1)
            dice_grad = bce_grad = None
            if config.weight_dice != 0:
                grad_inter, grad_pred = _dice_backward(
                    ctx.dice_states[s], grad * config.weight_dice, flat.shape[:2], config.options
                )
                # (gS counted)(2 P) + gI kept, then through the sigmoid; counted P (2 gS) is the same product
                counted = _counted_(_as_float(excluded[s], p.dtype), mask)
                region = _region_as_float(targets[s], regions[s], p.dtype)
                kept = region * counted
                dice_grad = (
                    counted.mul_(flat).mul_(grad_pred.unsqueeze(-1) * 2).addcmul_(kept, grad_inter.unsqueeze(-1))
                )
                del kept
                dice_grad = torch.ops.aten.sigmoid_backward.grad_input(dice_grad, flat, grad_input=dice_grad)
            if config.weight_ce != 0:
                if dice_grad is None or targets[s].dtype != torch.bool:  # else the bool target, made float above
                    region = _as_float(targets[s].reshape(flat.shape), p.dtype, copy=True)
                bce_grad = _bce_grad_(flat, region, mask, grad * config.weight_ce)
            if dice_grad is None or bce_grad is None:
                grad_s = (bce_grad if dice_grad is None else dice_grad).to(dtype)
            elif dtype == p.dtype:
                grad_s = dice_grad.add_(bce_grad)
            else:  # the two terms reach the logits through their own casts and add in the logits' dtype
                grad_s = dice_grad.to(dtype).add_(bce_grad.to(dtype))
            grads.append(grad_s.view(p.shape))
        return None, None, *(g for grad in grads for g in (grad, None, None, None))


def fused_bce_and_topk_dice(
    outputs: Sequence[RegionOutput], config: RegionConfig, output_weights: Sequence[float] | None = None
) -> Tensor:
    """``sum_s w_s (weight_dice * TopK-Dice_s + weight_ce * BCE_s)`` over region outputs, one autograd node.

    ``output_weights=None`` (one output) is ``BCE_and_TopKDice_loss``'s value; with weights, the value of
    nnU-Net's ``DeepSupervisionWrapper`` around it (outputs of weight 0 left out by the caller). Values and
    gradients are those of the autograd reference, bit for bit.

    Shape: outputs as :class:`RegionOutput`, the same batch and regions, all with a mask or none.
    returns: scalar, float32 (float64 for float64 logits).
    Raises:
        ValueError: no outputs, or not one weight per output.
        RuntimeError: ``ddp`` and ``batch_dice`` without an initialised process group.
    """
    n_weights = 1 if output_weights is None else len(output_weights)
    if not outputs or n_weights != len(outputs):
        raise ValueError(f"{len(outputs)} outputs need as many output weights, got {n_weights}")
    weights = None if output_weights is None else tuple(output_weights)
    return _RegionTopKDiceBCE.apply(config, weights, *(x for output in outputs for x in output))
