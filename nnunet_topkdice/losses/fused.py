"""``weight_dice * TopK-Dice + weight_ce * CE`` as one autograd node with a closed-form backward.

The maths is :mod:`nnunet_topkdice.losses.reference`; this module computes the same value from a few
dense passes. Autograd through ``softmax -> gather -> scatter_add``, a dense ``sum P^2`` and the Dice
arithmetic would cost about twice the dense passes of the closed form, keep more tensors alive, and add
some fifty small operations per call, which dominate deep supervision's small outputs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from nnunet_topkdice.losses.selection import select_easiest

__all__ = ["LossConfig", "dice_loss_and_grads", "fused_topk_dice_ce"]


class LossConfig(NamedTuple):
    """What the node needs besides tensors; hyper-parameters validated by the caller."""

    k: float
    do_bg: bool
    batch_dice: bool
    smooth: float
    ddp: bool
    weight_dice: float
    weight_ce: float


def dice_loss_and_grads(
    intersect: Tensor, sum_pred_sq: Tensor, n_foreground: Tensor, n_excluded: Tensor, config: LossConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """``1 - mean Dice`` over the present classes (eq. 7) from the per-class sums, with its gradients.

    With ``W[b, c] = present[b, c] / (n_present[b] * n_rows)`` (``n_rows`` the images with a present class;
    with ``batch_dice`` one row, the batch), ``loss = sum W (1 - dice)``, so that
    ``d loss / d intersect = -2 W / den`` and ``d loss / d sum_pred_sq = W dice / den``, with
    ``dice = (2 intersect + smooth) / den`` and ``den = sum_gt + sum_pred_sq + smooth``; ``sum_gt`` is the
    number of kept voxels (``Y`` is binary). The background is a class with ``W = 0`` unless ``do_bg``. The
    clamp of ``den`` only binds for absent classes (``W = 0``): a present class keeps at least one voxel.
    Under ``ddp`` (with ``batch_dice``) the sums are added over the ranks first and every rank computes the
    global loss; its gradients are ``world_size`` times the local ones, which DDP's averaging brings back
    to the single-process gradient (nnU-Net's ``AllGatherGrad`` convention).

    Shape: intersect, sum_pred_sq (B, C) float; n_foreground, n_excluded (B, C) int64.
    returns: loss (), d loss / d intersect (B, C), d loss / d sum_pred_sq (B, C).
    Raises:
        RuntimeError: ``ddp`` and ``batch_dice`` without an initialised process group.
    """
    dtype = intersect.dtype
    n_kept = n_foreground - n_excluded
    grad_scale = 1.0
    if config.batch_dice and config.ddp:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("TopKDiceLoss(ddp=True, batch_dice=True) needs an initialised process group")
        # one all_reduce of everything; float64 counts stay exact over any batch and number of ranks
        stats = torch.stack([intersect.double(), sum_pred_sq.double(), n_kept.double(), n_foreground.double()])
        stats = stats.sum(1, keepdim=True)
        dist.all_reduce(stats)
        grad_scale = float(dist.get_world_size())
        intersect, sum_pred_sq, sum_gt, present = stats.to(dtype).unbind(0)
    elif config.batch_dice:  # counts summed as integers: exact
        intersect, sum_pred_sq = intersect.sum(0, keepdim=True), sum_pred_sq.sum(0, keepdim=True)
        sum_gt, present = n_kept.sum(0, keepdim=True).to(dtype), n_foreground.sum(0, keepdim=True).to(dtype)
    else:
        sum_gt, present = n_kept.to(dtype), n_foreground.to(dtype)
    present = present.clamp(max=1)
    if not config.do_bg:
        present[:, 0] = 0
    den = torch.add(sum_gt, sum_pred_sq).add_(config.smooth).clamp_min_(1e-8)
    dice = torch.add(intersect, intersect).add_(config.smooth).div_(den)
    n_present = present.sum(-1, keepdim=True)
    n_rows = n_present.clamp(max=1).sum().clamp_min_(1)
    weight = present.div_(n_present.clamp_min(1).mul_(n_rows))
    loss = torch.rsub(dice, 1).mul_(weight).sum()
    if grad_scale != 1.0:
        weight = weight * grad_scale
    grad_inter = weight.div(den).mul_(-2)
    grad_pred = weight.mul(dice).div_(den)
    if config.batch_dice:
        grad_inter, grad_pred = grad_inter.expand(n_kept.shape), grad_pred.expand(n_kept.shape)
    return loss, grad_inter, grad_pred


class _TopKDiceCE(torch.autograd.Function):
    """The whole loss as one node; see :func:`fused_topk_dice_ce`. Derivation of the backward:

    Per voxel ``i`` with label ``t``, mask ``m`` (0 or 1), softmax ``P_c`` of the logits ``z_c``, true-class
    probability ``q = P_t`` and selection state (kept or excluded for its class ``t``), the forward forms

        I_c = sum_{t_i = c, kept} q_i                                (eqs. 5-6: sum Yk Pk)
        S_c = sum_i m_i P_c(i)^2 - sum_{t_i = c, excluded} q_i^2     (sum Pk^2)
        CE  = -sum_i w_i log q_i / sum_i w_i                         (w: class weight times m)

    ``I_c`` and the excluded part of ``S_c`` come from one ``scatter_add`` of ``v_i`` (``q_i`` if kept,
    ``q_i^2`` if excluded) into the voxel's selection code (``2 C + 1`` columns, see ``selection``); the rest
    of ``S_c`` is one dense reduction. :func:`dice_loss_and_grads` gives ``gI = dLoss/dI`` and
    ``gS = dLoss/dS``; with ``gCE`` the weight of the CE term and ``a_i = gCE w_i / sum w``,

        dLoss/dP_c(i) = [c = t] (gI_c [kept] - 2 gS_c q_i [excluded] - a_i / q_i) + 2 m_i gS_c P_c(i).

    Write ``u_c = P_c dLoss/dP_c = 2 m gS_c P_c^2 + [c = t] (s_i - a_i)`` with ``s_i = G[code_i] v_i`` and
    ``G = (0, gI, -2 gS)`` per code column (masked, kept, excluded). Through the softmax,
    ``dLoss/dz_j = u_j - P_j sum_c u_c``:

        dz_j(i) = 2 m_i gS_j P_j^2 + P_j (a_i - s_i - 2 m_i sum_c gS_c P_c^2) + [j = t_i] (s_i - a_i)

    (the code's ``grad``, ``per_voxel`` and ``at_target``). The selection is a constant of the step (not
    differentiated, as in the paper). The CE value uses ``log q`` clamped at the smallest normal float
    (saturating at a per-voxel CE of 87 in float32); its gradient, from ``a_i`` alone, stays exact.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, *args: object) -> Tensor:  # type: ignore[override]
        device_type = logits.device.type
        # keep float32 arithmetic under autocast, which would run the einsum in half precision
        if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
            with torch.autocast(device_type=device_type, enabled=False):
                return _TopKDiceCE._forward(ctx, logits, *args)
        return _TopKDiceCE._forward(ctx, logits, *args)

    @staticmethod
    def _forward(
        ctx,
        logits: Tensor,
        labels: Tensor,
        mask: Tensor | None,
        ce_weight: Tensor | None,
        tie_break: Tensor,
        config: LossConfig,
    ) -> Tensor:
        compute_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        z = logits if logits.dtype == compute_dtype else logits.to(compute_dtype)
        batch, n_classes = z.shape[:2]
        probs = torch.softmax(z, 1)
        true_class_prob = probs.gather(1, labels.unsqueeze(1)).squeeze(1)
        mask_f = None if mask is None else mask.to(compute_dtype)
        ctx.dice, ctx.ce = config.weight_dice != 0, config.weight_ce != 0
        loss = code = contribution = grad_inter = grad_sq = ce_factor = None
        ce_scale = 0.0
        if ctx.dice:
            value = true_class_prob if compute_dtype == torch.float32 else true_class_prob.float()
            selection = select_easiest(value + tie_break, labels, n_classes, config.k, mask, config.do_bg)
            code = selection.code
            excluded = selection.excluded if compute_dtype == torch.float32 else selection.excluded.double()
            # v_i: q where kept, q^2 where excluded (masked voxels land in the discarded column 0); in place:
            # a fresh per-voxel buffer costs more than an operation on the CPU
            contribution = true_class_prob.square().sub_(true_class_prob).mul_(excluded).add_(true_class_prob)
            sums = z.new_zeros(batch, 2 * n_classes + 1).scatter_add_(1, code, contribution)
            if mask_f is None:
                dense_sq = torch.linalg.vector_norm(probs, 2, dim=-1).square_()
            else:
                dense_sq = torch.einsum("bcn,bn->bc", probs.square(), mask_f)
            dice_loss, grad_inter, grad_sq = dice_loss_and_grads(
                sums[:, 1 : n_classes + 1],
                dense_sq.sub_(sums[:, n_classes + 1 :]),
                selection.n_foreground,
                selection.n_excluded,
                config,
            )
            loss = dice_loss if config.weight_dice == 1 else dice_loss * config.weight_dice
        if ctx.ce:
            if ce_weight is not None:
                ce_factor = ce_weight.to(device=z.device, dtype=compute_dtype)[labels]
            if mask_f is not None:
                ce_factor = mask_f if ce_factor is None else ce_factor * mask_f
            log_q = true_class_prob.clamp_min(torch.finfo(compute_dtype).tiny).log_()
            if ce_factor is None:
                # torch.nn.CrossEntropyLoss's mean; a Python divisor: no tensor made from a host value
                ce_scale = config.weight_ce / labels.numel()
                ce = log_q.sum().mul_(-ce_scale)
            else:
                # the summed weights of the counted voxels (an all-ignored batch gives 0, not NaN)
                denominator = ce_factor.sum().clamp_min_(1 if ce_weight is None else 1e-8)
                ce_factor = ce_factor * (config.weight_ce / denominator)  # a_i / gCE, per voxel
                ce = torch.dot(log_q.view(-1), ce_factor.view(-1)).neg_()
            loss = ce if loss is None else loss.add_(ce)
        if loss is None:  # both weights 0
            loss = z.new_zeros(())
        ctx.save_for_backward(probs, contribution, code, labels, mask_f, grad_inter, grad_sq, ce_factor)
        ctx.weight_dice, ctx.ce_scale = config.weight_dice, ce_scale
        ctx.logits_dtype = logits.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor):  # type: ignore[override]
        probs, contribution, code, labels, mask_f, grad_inter, grad_sq, ce_factor = ctx.saved_tensors
        grad_loss = grad_loss.to(probs.dtype)
        at_target = per_voxel = grad = None
        if ctx.dice:
            scale = grad_loss * ctx.weight_dice
            # G per code column (masked, kept, excluded), then s_i = G[code_i] v_i
            per_column = torch.cat([grad_inter.new_zeros(grad_inter.shape[0], 1), grad_inter, grad_sq * -2], 1)
            at_target = per_column.mul_(scale).gather(1, code).mul_(contribution)
            # 2 m gS_c P_c^2, whose sum over the classes is also needed per voxel
            grad = probs.square() if mask_f is None else probs.square().mul_(mask_f.unsqueeze(1))
            grad.mul_((grad_sq * (2 * scale)).unsqueeze(-1))
            per_voxel = grad.sum(1).add_(at_target).neg_()
        if ctx.ce:
            # a_i: a scalar tensor, or per voxel with class weights or a mask
            ce = grad_loss * ctx.ce_scale if ce_factor is None else ce_factor * grad_loss
            per_voxel = ce.expand(labels.shape) if per_voxel is None else per_voxel.add_(ce)
            at_target = -ce.expand(labels.shape) if at_target is None else at_target.sub_(ce)
        if per_voxel is None:
            return torch.zeros_like(probs, dtype=ctx.logits_dtype), None, None, None, None, None
        grad = probs * per_voxel.unsqueeze(1) if grad is None else grad.addcmul_(probs, per_voxel.unsqueeze(1))
        grad.scatter_add_(1, labels.unsqueeze(1), at_target.unsqueeze(1))
        return grad.to(ctx.logits_dtype), None, None, None, None, None


def fused_topk_dice_ce(
    logits: Tensor,
    labels: Tensor,
    mask: Tensor | None,
    tie_break: Tensor,
    config: LossConfig,
    ce_weight: Tensor | None = None,
) -> Tensor:
    """``weight_dice * TopK-Dice + weight_ce * CE`` from flattened, checked inputs.

    Shape: logits (B, C, N) float; labels (B, N) int64 in [0, C) (0 under the mask); mask (B, N) bool or None;
    tie_break (N,) float32; ce_weight (C,) or None.  returns: scalar, float32 (float64 for float64 logits).
    """
    return _TopKDiceCE.apply(logits, labels, mask, ce_weight, tie_break, config)
