"""``weight_dice * TopK-Dice + weight_ce * CE`` as one autograd node with a closed-form backward.

The maths is :mod:`nnunet_topkdice.losses.reference`; this module computes the same value from a few
dense passes. Autograd through ``softmax -> gather -> scatter_add``, a dense ``sum P^2`` and the Dice
arithmetic would cost about twice the dense passes of the closed form, keep more tensors alive, and add
some fifty small operations per call, which dominate deep supervision's small outputs. The node takes
all of deep supervision's outputs at once (one output is the case ``S = 1``): their dense passes are per
output, but the selection, the Dice arithmetic and the node itself are paid once per step, not once per
output.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from nnunet_topkdice.losses.options import TopKDiceOptions
from nnunet_topkdice.losses.selection import select_easiest

__all__ = [
    "Output",
    "TermWeights",
    "dice_loss_and_grads",
    "fused_topk_dice_ce",
    "refuse_double_backward",
    "without_autocast",
]

_CACHE_LINE_BYTES = 64


def without_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast off on ``device_type`` while it is on; nothing to do where it is off or does not exist
    (``meta``), so that a call outside autocast enters no context."""
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def refuse_double_backward(loss: str, autograd_alternative: str) -> None:
    """Raise inside a closed-form ``backward`` run with ``create_graph=True`` (grad mode on there): its
    gradient has no graph, so a second derivative (double backward, a gradient penalty) would silently be
    zero or wrong.

    Raises:
        RuntimeError: grad mode is on, naming ``loss`` and the plain-autograd ``autograd_alternative``.
    """
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"{loss} has a closed-form first derivative only: create_graph=True (double backward, a gradient "
            f"penalty) is not supported; {autograd_alternative} is plain autograd"
        )


class TermWeights(NamedTuple):
    """The weights of the two terms, ``dice * TopK-Dice + ce * CE``; a term with weight 0 is not computed."""

    dice: float
    ce: float


def dice_loss_and_grads(
    intersect: Tensor,
    sum_pred_sq: Tensor,
    n_foreground: Tensor,
    n_excluded: Tensor,
    options: TopKDiceOptions,
    output_weights: Sequence[float] = (1.0,),
) -> tuple[Tensor, Tensor, Tensor]:
    """``sum_s w_s (1 - mean Dice_s)`` over the present classes (eq. 7) from the per-class sums, with gradients.

    The columns are ``S = len(output_weights)`` groups of ``C`` classes, one group per deep-supervision
    output ``s`` of weight ``w_s`` (one output: ``S = 1``, ``w = 1``). Within an output, with
    ``W[b, c] = w_s present[b, c] / (n_present[b] * n_rows)`` (``n_rows`` the images with a present class;
    with ``batch_dice`` one row, the batch), ``loss = sum W (1 - dice)``, so that
    ``d loss / d intersect = -2 W / den`` and ``d loss / d sum_pred_sq = W dice / den``, with
    ``dice = (2 intersect + smooth) / den`` and ``den = sum_gt + sum_pred_sq + smooth``; ``sum_gt`` is the
    number of kept voxels (``Y`` is binary). The background is a class with ``W = 0`` unless ``do_bg``. The
    clamp of ``den`` only binds for absent classes (``W = 0``): a present class keeps at least one voxel.
    Under ``ddp`` (with ``batch_dice``) the sums are added over the ranks first and every rank computes the
    global loss; its gradients are ``world_size`` times the local ones, which DDP's averaging brings back
    to the single-process gradient (nnU-Net's ``AllGatherGrad`` convention).

    Shape: intersect, sum_pred_sq (B, S * C) float; n_foreground, n_excluded (B, S * C) int64.
    returns: loss (), d loss / d intersect (B, S * C), d loss / d sum_pred_sq (B, S * C).
    Raises:
        RuntimeError: ``ddp`` and ``batch_dice`` without an initialised process group.
    """
    dtype = intersect.dtype
    grad_scale = 1.0
    # on the CPU the small (B, S C) arithmetic runs in NumPy: elementwise float operations round exactly as
    # PyTorch's do, and a NumPy call on a few values costs a fraction of a PyTorch dispatch
    on_host = intersect.device.type == "cpu" and not torch.compiler.is_compiling()
    if options.batch_dice and options.ddp:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("TopKDiceLoss(ddp=True, batch_dice=True) needs an initialised process group")
        # one all_reduce of everything; float64 counts stay exact over any batch and number of ranks
        n_kept = n_foreground - n_excluded
        stats = torch.stack([intersect.double(), sum_pred_sq.double(), n_kept.double(), n_foreground.double()])
        stats = stats.sum(1, keepdim=True)
        dist.all_reduce(stats)
        grad_scale = float(dist.get_world_size())
        intersect, sum_pred_sq, sum_gt, present = stats.to(dtype).unbind(0)
        on_host = False
    else:
        if options.batch_dice:  # float sums in PyTorch (their order of additions is PyTorch's)
            intersect, sum_pred_sq = intersect.sum(0, keepdim=True), sum_pred_sq.sum(0, keepdim=True)
        if on_host:
            intersect, sum_pred_sq = intersect.numpy(), sum_pred_sq.numpy()
            n_foreground, n_excluded = n_foreground.numpy(), n_excluded.numpy()
        sum_gt, present = n_foreground - n_excluded, n_foreground
        if options.batch_dice:  # counts summed as integers: exact
            sum_gt, present = sum_gt.sum(0, keepdims=True), present.sum(0, keepdims=True)
        sum_gt, present = _as_float(sum_gt, intersect.dtype), _as_float(present, intersect.dtype)
    terms, grad_inter, grad_pred = _dice_arithmetic(
        intersect, sum_pred_sq, sum_gt, present, options, output_weights, grad_scale
    )
    if on_host:
        terms, grad_inter, grad_pred = (torch.from_numpy(x) for x in (terms, grad_inter, grad_pred))
    loss = terms.sum()  # the sum's order of additions is PyTorch's on every device
    if options.batch_dice:
        shape = (n_foreground.shape[0], grad_inter.shape[1])
        grad_inter, grad_pred = grad_inter.expand(shape), grad_pred.expand(shape)
    return loss, grad_inter, grad_pred


def _as_float(counts: Tensor | np.ndarray, dtype: torch.dtype | np.dtype) -> Tensor | np.ndarray:
    """Integer counts as the floats of the sums (``dtype`` of the same kind: torch or NumPy)."""
    return counts.astype(dtype) if isinstance(counts, np.ndarray) else counts.to(dtype)


def _dice_arithmetic(
    intersect: Tensor | np.ndarray,
    sum_pred_sq: Tensor | np.ndarray,
    sum_gt: Tensor | np.ndarray,
    present: Tensor | np.ndarray,
    options: TopKDiceOptions,
    output_weights: Sequence[float],
    grad_scale: float,
) -> tuple[Tensor | np.ndarray, Tensor | np.ndarray, Tensor | np.ndarray]:
    """The arithmetic of :func:`dice_loss_and_grads` on its reduced rows, written once for PyTorch tensors
    and NumPy arrays (operators, ``clip``, ``sum``, ``reshape`` only; float sums only of integer values, so
    exact in any order).

    Shape: all (rows, S * C), floats; present: the foreground counts.
    returns: the loss's terms ``W (1 - dice)`` (to be summed), ``d loss / d intersect``, ``d loss / d
    sum_pred_sq``, all (rows, S * C).
    """
    n_rows = present.shape[0]
    present = present.clip(max=1).reshape(n_rows, len(output_weights), -1)  # (rows, S, C)
    if not options.do_bg:
        present[..., 0] = 0
    den = (sum_gt + sum_pred_sq + options.smooth).clip(min=1e-8)
    dice = (intersect + intersect + options.smooth) / den
    n_present = present.sum(-1, keepdims=True)
    per_row = n_present.clip(min=1)
    if n_rows > 1:  # one row (batch_dice, or batch 1) counts as one: nothing to multiply
        per_row = per_row * n_present.clip(max=1).sum(0, keepdims=True).clip(min=1)  # rows with a present class
    weight = present / per_row
    for output, output_weight in enumerate(output_weights):
        if output_weight != 1:
            weight[:, output] *= output_weight
    weight = weight.reshape(n_rows, -1)
    terms = (1 - dice) * weight
    if grad_scale != 1.0:
        weight = weight * grad_scale
    return terms, weight / den * -2, weight * dice / den


class Output(NamedTuple):
    """One deep-supervision output, flattened and checked.

    Shape: logits (B, C, N) float; labels (B, N) int64 in [0, C) (0 under the mask); mask (B, N) bool or
    None; tie_break (N,) float32.
    """

    logits: Tensor
    labels: Tensor
    mask: Tensor | None
    tie_break: Tensor


def _as_dtype(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    """``tensor.to(dtype)`` without dispatching an operation when it already has that dtype (a few per call)."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def _concat(parts: list[Tensor], dim: int) -> Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim)


class _DiceSaved(NamedTuple):
    """What the TopK-Dice term leaves for the backward: code, contribution (B, sum N_s); per_column
    (B, 2 S C + 1), ``G = (0, gI, -2 gS)`` per code column (masked, kept, excluded); grad_sq (B, S C), ``2 gS``.
    All None without the Dice term."""

    code: Tensor | None
    contribution: Tensor | None
    per_column: Tensor | None
    grad_sq: Tensor | None


def _code_columns(grad_inter: Tensor, grad_sq: Tensor) -> tuple[Tensor, Tensor]:
    """``G = (0, gI, -2 gS)`` per code column and ``2 gS``, for the backward (products with powers of 2: exact).

    Shape: grad_inter, grad_sq (B, S C).  returns: (B, 2 S C + 1) and (B, S C).
    """
    if grad_inter.device.type == "cpu" and not torch.compiler.is_compiling():  # a few values: NumPy's cheaper calls
        inter, sq = grad_inter.numpy(), grad_sq.numpy()
        columns = np.concatenate([np.zeros((inter.shape[0], 1), inter.dtype), inter, sq * -2], 1)
        return torch.from_numpy(columns), torch.from_numpy(sq * 2)
    return torch.cat([grad_inter.new_zeros(grad_inter.shape[0], 1), grad_inter, grad_sq * -2], 1), grad_sq * 2


class _OutputSaved(NamedTuple):
    """What one output leaves for the backward: probs (B, C, N) float; labels (B, N) int64; mask_f (B, N)
    float or None; ce_factor, ``a_i`` per voxel (B, N), or None (then a Python scalar per output)."""

    probs: Tensor
    labels: Tensor
    mask_f: Tensor | None
    ce_factor: Tensor | None


def _groups(flat: Sequence, group: type[NamedTuple]) -> list:
    """``flat`` read back as consecutive ``group`` tuples (the inverse of concatenating them)."""
    size = len(group._fields)
    return [group._make(flat[start : start + size]) for start in range(0, len(flat), size)]


class _NodeSettings(NamedTuple):
    """What the node needs besides tensors: the validated options, the term weights, one weight per output."""

    options: TopKDiceOptions
    terms: TermWeights
    output_weights: tuple[float, ...]


def _dice_term(
    outputs: list[Output],
    probs: list[Tensor],
    true_class_prob: Tensor,
    masks_f: list[Tensor | None],
    options: TopKDiceOptions,
    output_weights: Sequence[float],
) -> tuple[Tensor, _DiceSaved]:
    """``sum_s w_s TopK-Dice_s`` with its gradients per class sum, from one selection over all outputs.

    Shape: probs (B, C, N_s) per output; true_class_prob (B, sum N_s), the outputs' voxels concatenated.
    returns: the term () and what its backward needs.
    """
    batch, n_classes = probs[0].shape[:2]
    n_columns = len(outputs) * n_classes
    value = _as_dtype(true_class_prob, torch.float32)
    value = value + _concat([output.tie_break for output in outputs], 0)
    # output s's class c is class s C + c of one selection over the concatenated voxels
    labels = _concat([o.labels + s * n_classes if s else o.labels for s, o in enumerate(outputs)], 1)
    mask = None if outputs[0].mask is None else _concat([output.mask for output in outputs], 1)
    selection = select_easiest(
        value, labels, n_columns, k=options.k, mask=mask, do_bg=options.do_bg, classes_per_group=n_classes
    )
    excluded = _as_dtype(selection.excluded, true_class_prob.dtype)
    # v_i: q where kept, q^2 where excluded (masked voxels land in the discarded column 0)
    contribution = torch.lerp(true_class_prob, true_class_prob.square(), excluded)
    n_sums = 2 * n_columns + 1
    # rows padded to whole cache lines: threads adding into the rows of different images that share a line
    # slow each other down (measured, batch 2, 0.5M voxels, 2 threads: 0.64 ms unpadded, 0.14 ms padded)
    per_line = _CACHE_LINE_BYTES // true_class_prob.element_size()
    width = -(-n_sums // per_line) * per_line
    sums = true_class_prob.new_zeros(batch, width).scatter_add_(1, selection.code, contribution)[:, :n_sums]
    dense_sq = [
        torch.linalg.vector_norm(p, 2, dim=-1).square_() if m is None else torch.einsum("bcn,bn->bc", p.square(), m)
        for p, m in zip(probs, masks_f, strict=True)
    ]
    loss, grad_inter, grad_sq = dice_loss_and_grads(
        sums[:, 1 : n_columns + 1],
        _concat(dense_sq, 1).sub_(sums[:, n_columns + 1 :]),
        selection.n_foreground,
        selection.n_excluded,
        options,
        output_weights,
    )
    per_column, grad_sq = _code_columns(grad_inter, grad_sq)
    return loss, _DiceSaved(code=selection.code, contribution=contribution, per_column=per_column, grad_sq=grad_sq)


def _ce_term(
    outputs: list[Output],
    log_q: Tensor,
    masks_f: list[Tensor | None],
    ce_weight: Tensor | None,
    weight_ce: float,
    output_weights: Sequence[float],
) -> tuple[Tensor, list[Tensor | None], list[float]]:
    """``sum_s w_s weight_ce CE_s``, with ``a_i / gCE`` per voxel (a tensor, or a Python scalar per output).

    Shape: log_q (B, sum N_s), the outputs' voxels concatenated.
    returns: the term (), the per-voxel factors (B, N_s) or None, the scalars (0 where a factor is given).
    """
    ce = None
    factors: list[Tensor | None] = [None] * len(outputs)
    scales = [0.0] * len(outputs)
    log_qs = [log_q] if len(outputs) == 1 else log_q.split([o.labels.shape[1] for o in outputs], 1)
    per_output = zip(outputs, log_qs, masks_f, strict=True)
    for s, (output, log_q_s, mask_f) in enumerate(per_output):
        factor = None
        if ce_weight is not None:
            factor = ce_weight.to(device=log_q.device, dtype=log_q.dtype)[output.labels]
        if mask_f is not None:
            factor = mask_f if factor is None else factor * mask_f
        if factor is None:
            # torch.nn.CrossEntropyLoss's mean; a Python divisor: no tensor made from a host value
            scales[s] = weight_ce * output_weights[s] / output.labels.numel()
            term = log_q_s.sum().mul_(-scales[s])
        else:
            # the summed weights of the counted voxels (an all-ignored batch gives 0, not NaN)
            denominator = factor.sum().clamp_min_(1 if ce_weight is None else 1e-8)
            factors[s] = factor = factor * (weight_ce * output_weights[s] / denominator)
            term = torch.dot(log_q_s.reshape(-1), factor.view(-1)).neg_()
        ce = term if ce is None else ce.add_(term)
    return ce, factors, scales


def _output_grad(
    probs: Tensor,
    labels: Tensor,
    mask_f: Tensor | None,
    at_target: Tensor | None,
    grad_sq: Tensor | None,
    ce: Tensor | None,
) -> Tensor:
    """``dLoss/dz`` of one output (the derivation in :class:`_TopKDiceCE`).

    Shape: probs (B, C, N); labels (B, N); at_target (B, N), ``s_i`` (scaled), or None without the Dice
    term; grad_sq (B, C), ``2 gS`` (scaled), or None; ce: ``a_i`` (B, N) or a scalar tensor, or None.
    """
    per_voxel = grad = None
    if grad_sq is not None:
        # 2 m gS_c P_c^2, whose sum over the classes is also needed per voxel
        grad = probs.square() if mask_f is None else probs.square().mul_(mask_f.unsqueeze(1))
        grad.mul_(grad_sq.unsqueeze(-1))
        per_voxel = grad.sum(1).add_(at_target).neg_()
    if ce is not None:
        per_voxel = ce.expand(labels.shape) if per_voxel is None else per_voxel.add_(ce)
        at_target = -ce.expand(labels.shape) if at_target is None else at_target.sub_(ce)
    if per_voxel is None:
        return torch.zeros_like(probs)
    grad = probs * per_voxel.unsqueeze(1) if grad is None else grad.addcmul_(probs, per_voxel.unsqueeze(1))
    return grad.scatter_add_(1, labels.unsqueeze(1), at_target.unsqueeze(1))


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

    (the code's ``grad``, ``per_voxel`` and ``at_target``). With deep supervision every output ``s`` adds
    its own terms, weighted by ``w_s``: the voxels of all outputs are concatenated for the selection and the
    ``scatter_add`` (output ``s``'s class ``c`` becomes class ``s C + c``, so its sums are its own), and
    ``w_s`` enters through ``gI``, ``gS`` and ``a_i``; the dense passes stay per output. The selection is a
    constant of the step (not differentiated, as in the paper). The CE value uses ``log q`` clamped at the
    smallest normal float (saturating at a per-voxel CE of 87 in float32); its gradient, from ``a_i``
    alone, stays exact.
    """

    @staticmethod
    def forward(ctx, settings: _NodeSettings, ce_weight: Tensor | None, *flat: Tensor | None) -> Tensor:  # type: ignore[override]
        outputs = _groups(flat, Output)
        # keep float32 arithmetic under autocast, which would run the einsum in half precision
        with without_autocast(outputs[0].logits.device.type):
            return _TopKDiceCE._forward(ctx, settings, ce_weight, outputs)

    @staticmethod
    def _forward(ctx, settings: _NodeSettings, ce_weight: Tensor | None, outputs: list[Output]) -> Tensor:
        n_outputs = len(outputs)
        terms, output_weights = settings.terms, settings.output_weights
        compute_dtype = torch.float64 if outputs[0].logits.dtype == torch.float64 else torch.float32
        probs = [torch.softmax(_as_dtype(output.logits, compute_dtype), 1) for output in outputs]
        true_class_prob = _concat(  # (B, sum N_s)
            [p.gather(1, output.labels.unsqueeze(1)).squeeze(1) for p, output in zip(probs, outputs, strict=True)], 1
        )
        masks_f = [None if output.mask is None else output.mask.to(compute_dtype) for output in outputs]
        ctx.dice, ctx.ce = terms.dice != 0, terms.ce != 0
        loss = None
        dice_saved = _DiceSaved(code=None, contribution=None, per_column=None, grad_sq=None)
        ce_factors: list[Tensor | None] = [None] * n_outputs
        ctx.ce_scales = [0.0] * n_outputs
        if ctx.dice:
            options = settings.options
            dice_loss, dice_saved = _dice_term(outputs, probs, true_class_prob, masks_f, options, output_weights)
            loss = dice_loss if terms.dice == 1 else dice_loss * terms.dice
        if ctx.ce:
            log_q = true_class_prob.clamp_min(torch.finfo(compute_dtype).tiny).log_()
            ce, ce_factors, ctx.ce_scales = _ce_term(outputs, log_q, masks_f, ce_weight, terms.ce, output_weights)
            loss = ce if loss is None else loss.add_(ce)
        if loss is None:  # both weights 0
            loss = true_class_prob.new_zeros(())
        per_output = [
            _OutputSaved(probs=p, labels=output.labels, mask_f=mask_f, ce_factor=ce_factor)
            for p, output, mask_f, ce_factor in zip(probs, outputs, masks_f, ce_factors, strict=True)
        ]
        ctx.save_for_backward(*dice_saved, *(t for saved in per_output for t in saved))
        ctx.weight_dice = terms.dice
        ctx.logits_dtypes = [output.logits.dtype for output in outputs]
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor):  # type: ignore[override]
        refuse_double_backward("TopK-Dice's fused loss", "nnunet_topkdice.losses.reference_topk_dice")
        saved = ctx.saved_tensors
        n_dice = len(_DiceSaved._fields)
        dice = _DiceSaved._make(saved[:n_dice])
        per_output: list[_OutputSaved] = _groups(saved[n_dice:], _OutputSaved)
        n = len(per_output)
        grad_loss = _as_dtype(grad_loss, per_output[0].probs.dtype)
        n_classes = per_output[0].probs.shape[1]
        at_targets: list[Tensor | None] = [None] * n
        grad_sqs: list[Tensor | None] = [None] * n
        if ctx.dice:
            scale = grad_loss if ctx.weight_dice == 1 else grad_loss * ctx.weight_dice  # x * 1 == x: no operation
            # s_i = G[code_i] v_i
            at_target = dice.per_column.mul(scale).gather(1, dice.code).mul_(dice.contribution)
            grad_sq = dice.grad_sq * scale
            if n == 1:  # nothing to split
                at_targets, grad_sqs = [at_target], [grad_sq]
            else:
                at_targets = list(at_target.split([saved_s.labels.shape[1] for saved_s in per_output], 1))
                grad_sqs = list(grad_sq.split(n_classes, 1))
        grads = []
        for s, saved_s in enumerate(per_output):
            ce = None
            if ctx.ce:  # a_i: a scalar tensor, or per voxel with class weights or a mask
                ce = grad_loss * ctx.ce_scales[s] if saved_s.ce_factor is None else saved_s.ce_factor * grad_loss
            grad = _output_grad(saved_s.probs, saved_s.labels, saved_s.mask_f, at_targets[s], grad_sqs[s], ce)
            grads.append(_as_dtype(grad, ctx.logits_dtypes[s]))
        # no gradient for the settings and ce_weight; per output, for its logits only (not labels, mask, tie_break)
        no_grad_fields = (None,) * (len(Output._fields) - 1)
        return None, None, *(g for grad in grads for g in (grad, *no_grad_fields))


def fused_topk_dice_ce(
    outputs: Sequence[Output],
    *,
    options: TopKDiceOptions,
    terms: TermWeights,
    ce_weight: Tensor | None = None,
    output_weights: Sequence[float] = (1.0,),
) -> Tensor:
    """``sum_s w_s (weight_dice * TopK-Dice + weight_ce * CE)`` over deep supervision's outputs, one node.

    One output with weight 1 is the plain loss. Every output is selected, summed and averaged on its own,
    exactly as separate calls weighted by ``output_weights`` (nnU-Net's ``DeepSupervisionWrapper``) would.

    Shape: outputs as :class:`Output`, the same batch and classes, all with a mask or none; ce_weight (C,) or
    None; output_weights: one per output.  returns: scalar, float32 (float64 for float64 logits).
    options: validated; terms: the weights of the TopK-Dice and CE terms.
    Raises:
        ValueError: the counts of outputs and weights differ, or ``ce_weight`` has not one value per class
            (torch's cross entropy refuses it too; indexing by label would drop the extra ones silently).
    """
    if len(outputs) != len(output_weights) or not outputs:
        raise ValueError(f"{len(outputs)} outputs need as many weights, got {len(output_weights)}")
    if ce_weight is not None:
        n_classes = outputs[0].logits.shape[1]
        if ce_weight.numel() != n_classes:
            raise ValueError(f"the cross entropy's weight needs one value per class ({n_classes}), got shape "
                             f"{tuple(ce_weight.shape)}")  # fmt: skip
        ce_weight = ce_weight.reshape(n_classes)  # (C, 1) too, as torch's cross entropy takes it
    settings = _NodeSettings(options=options, terms=terms, output_weights=tuple(float(w) for w in output_weights))
    flat = [x for output in outputs for x in output]
    return _TopKDiceCE.apply(settings, ce_weight, *flat)
