"""TopK-Dice loss (Hosseini, *TopK Dice Loss for Medical Image Segmentation*, section 2): the public API.

Per image and class, the ``D_c = floor((100 - k) / 100 * n_c)`` easiest foreground voxels (highest
true-class probability, eqs. 2-4) are removed from both the ground truth and the prediction of that class
(eqs. 5-6) before a squared soft Dice (eq. 7). The modules behind it, in reading order:

* :mod:`~nnunet_topkdice.losses.reference`: the definition, eqs. 2-7 written out (dense, autograd);
* :mod:`~nnunet_topkdice.losses.selection`: the fast exact selection of eq. 4 (:func:`select_easiest`);
* :mod:`~nnunet_topkdice.losses.fused`: softmax, selection, Dice sums and cross entropy as one autograd
  node, with the derivation of its closed-form backward;
* :mod:`~nnunet_topkdice.losses.tie_break`: the fixed map ``eps`` of eq. 2 (a bounded cache);
* :mod:`~nnunet_topkdice.losses.options`: :class:`TopKDiceOptions`, the hyper-parameters every function
  and module here takes by keyword (``options=``), validated once.

On CUDA a call is designed to perform no device-to-host synchronisation once the tie-break map of its shape
is cached (the first call per shape copies it to the device; not yet run on a GPU), and under
``torch.compile(fullgraph=True)`` the loss is one graph. Label values are checked (``ValueError`` for a
label outside ``[0, C)`` that is not masked) where that costs no synchronisation: on the CPU, and on an
accelerator only with ``TopKDiceOptions(validate=True)``; never under ``torch.compile``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from nnunet_topkdice.losses.counts import n_excluded_voxels
from nnunet_topkdice.losses.fused import Output, TermWeights, fused_topk_dice_ce
from nnunet_topkdice.losses.loss_module import TopKDiceModule
from nnunet_topkdice.losses.options import TopKDiceOptions
from nnunet_topkdice.losses.selection import select_easiest, select_per_channel
from nnunet_topkdice.losses.tie_break import DEFAULT_TIE_BREAK_SCALE, DEFAULT_TIE_BREAK_SEED, tie_break_map

__all__ = [
    "DEFAULT_TIE_BREAK_SCALE",
    "DEFAULT_TIE_BREAK_SEED",
    "TopKDiceLoss",
    "TopKDiceOptions",
    "ce_and_topk_dice_loss",
    "channel_exclusion_mask",
    "deep_supervised_ce_and_topk_dice_loss",
    "n_excluded_voxels",
    "tie_break_map",
    "topk_dice_loss",
    "topk_exclusion_mask",
]

DEFAULT_OPTIONS = TopKDiceOptions()


def _check_inputs(logits: Tensor, target: Tensor, loss_mask: Tensor | None) -> None:
    """Metadata-only checks (no host synchronisation).

    Raises:
        ValueError: shapes, dtypes, or an empty batch (no image or no voxel), naming the argument.
    """
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
    if logits.numel() == 0:
        raise ValueError(f"logits must hold at least one image, class and voxel, got shape {tuple(logits.shape)}")
    if loss_mask is not None and loss_mask.shape != target.shape:
        raise ValueError(f"loss_mask must have the shape of target {tuple(target.shape)}, got {tuple(loss_mask.shape)}")


def _check_labels(labels: Tensor, n_classes: int, validate: bool) -> None:
    """Label values in ``[0, C)``, checked where it costs no host synchronisation (the CPU), or on request.

    Shape: labels (B, N) integer, masked voxels already set to 0.
    Raises:
        ValueError: a label outside ``[0, n_classes)``, naming it.
    """
    if torch.compiler.is_compiling() or not (validate or labels.device.type == "cpu"):
        return
    if labels.device.type == "cpu":  # NumPy reads the tensor's memory: no dispatch, no host copy
        values = labels.numpy()
        low, high = int(values.min()), int(values.max())
    else:
        low, high = (int(x) for x in torch.aminmax(labels))
    if low < 0 or high >= n_classes:
        bad = low if low < 0 else high
        raise ValueError(
            f"target holds label {bad}, outside [0, {n_classes}) for logits with {n_classes} classes; "
            "mark ignored voxels with loss_mask (or the compound loss's ignore_label)"
        )


def _prepare(logits: Tensor, target: Tensor, loss_mask: Tensor | None, options: TopKDiceOptions) -> Output:
    """Check the inputs and flatten them, with the tie-break map of their spatial shape.

    Shape: logits (B, C, *spatial); target, loss_mask (B, 1, *spatial).
    returns: logits (B, C, N), labels (B, N) int64 (0 under the mask), mask (B, N) bool or None, tie_break (N,).
    Raises:
        ValueError: as :func:`_check_inputs` and :func:`_check_labels`.
    """
    _check_inputs(logits, target, loss_mask)
    seed, scale = options.tie_break_seed, options.tie_break_scale
    tie_break = tie_break_map(logits.shape[2:], logits.device, seed=seed, scale=scale)
    batch, n_classes = logits.shape[:2]
    labels = target.reshape(batch, -1)
    labels = labels if labels.dtype == torch.int64 else labels.long()
    mask = None
    if loss_mask is not None:
        mask = loss_mask.reshape(batch, -1)
        mask = mask if mask.dtype == torch.bool else mask != 0
        # masked voxels may carry an ignore label outside [0, C): park them on class 0
        labels = torch.where(mask, labels, 0)
    _check_labels(labels, n_classes, options.validate)
    return Output(logits.reshape(batch, n_classes, -1), labels, mask, tie_break.view(-1))


def topk_exclusion_mask(
    probs: Tensor, target: Tensor, *, loss_mask: Tensor | None = None, options: TopKDiceOptions = DEFAULT_OPTIONS
) -> Tensor:
    """The paper's ignore map (Figure 1c): foreground voxels excluded as easy for their own class.

    Shape:
        probs: (B, C, *spatial) float probabilities (softmax output).  target: (B, 1, *spatial) integer.
        loss_mask: optional (B, 1, *spatial), 0 = ignored.  options: ``k``, ``do_bg`` and the tie-break
        map are read.
        returns: (B, 1, *spatial) bool, True where the voxel is one of the ``D_c`` easiest of its class.
    Raises:
        ValueError: shapes, dtypes or labels as in :func:`topk_dice_loss`.
    """
    flat_probs, labels, mask, tie_break = _prepare(probs, target, loss_mask, options)
    with torch.no_grad():
        value = flat_probs.gather(1, labels.unsqueeze(1)).squeeze(1).float() + tie_break
        selection = select_easiest(value, labels, flat_probs.shape[1], k=options.k, mask=mask, do_bg=options.do_bg)
    return (selection.excluded != 0).view(target.shape)


def channel_exclusion_mask(
    probs: Tensor, target: Tensor, *, loss_mask: Tensor | None = None, options: TopKDiceOptions = DEFAULT_OPTIONS
) -> Tensor:
    """Per image and channel, the ``floor((100 - k) / 100 * n)`` easiest voxels of a binary target.

    The selection of overlapping regions (sigmoid outputs) and of MONAI's one-hot targets: every channel
    is its own problem. Among the voxels with ``target == 1`` (and ``loss_mask != 0``) of a channel, the
    ``n_excluded_voxels(n, k)`` with the highest ``probs + eps`` are marked, ``eps`` the tie-break map of
    the spatial shape; exact ties go to the lower voxel index. Not differentiable (no gradient is needed).
    The same selection as the loss
    (:func:`~nnunet_topkdice.losses.selection.select_per_channel`), with one class per (image, channel) row.

    Shape:
        probs: (B, R, *spatial) float, activated (sigmoid or softmax) probabilities.
        target: (B, R, *spatial) binary (bool, integer or float 0/1).
        loss_mask: optional, broadcastable to (B, R, *spatial) over the channels ((B, 1, *spatial) or the
        full shape); 0 = ignored.  options: ``k`` and the tie-break map are read (every channel selects).
        returns: (B, R, *spatial) bool, True where the voxel is excluded from that channel.
    Raises:
        ValueError: fewer than 3 dimensions; no voxel; shapes differ.
    """
    if probs.ndim < 3 or not probs.is_floating_point() or probs.numel() == 0:
        raise ValueError(
            f"probs must be a non-empty float tensor (B, R, *spatial), got shape {tuple(probs.shape)} "
            f"and dtype {probs.dtype}"
        )
    if target.shape != probs.shape:
        raise ValueError(f"target must have the shape of probs {tuple(probs.shape)}, got {tuple(target.shape)}")
    if loss_mask is not None and (loss_mask.ndim != probs.ndim or loss_mask.shape[1] not in (1, probs.shape[1])):
        raise ValueError(
            f"loss_mask must have shape (B, 1 or R, *spatial) for probs {tuple(probs.shape)}, "
            f"got {tuple(loss_mask.shape)}"
        )
    selection = select_per_channel(probs, target, loss_mask, options=options)
    return (selection.excluded != 0).view(probs.shape)


def topk_dice_loss(
    logits: Tensor, target: Tensor, *, loss_mask: Tensor | None = None, options: TopKDiceOptions = DEFAULT_OPTIONS
) -> Tensor:
    """TopK-Dice loss, ``1 - mean Dice`` of the modified maps (paper eq. 7).

    Shape:
        logits: (B, C, X, Y[, Z]) float (float16/bfloat16 allowed), unnormalised; softmax is applied here,
        in float32.  target: (B, 1, X, Y[, Z]) integer labels in [0, C) (masked voxels may hold anything).
        loss_mask: optional (B, 1, X, Y[, Z]) bool/float; 0 marks voxels that take part in nothing.
        options: the hyper-parameters (:class:`TopKDiceOptions`, validated when made).
        returns: scalar float32 in [0, 1]; 0 (still attached to the graph) when no class is present.
    Raises:
        ValueError: target shape or dtype wrong; batch/spatial sizes differ; an empty batch; a label outside
        [0, C) that is not masked (checked on the CPU, and on an accelerator with ``options.validate``).
        RuntimeError: ``ddp`` and ``batch_dice`` without an initialised process group.

    Example:
        >>> logits = torch.randn(2, 3, 16, 16)
        >>> target = torch.randint(0, 3, (2, 1, 16, 16))
        >>> float(topk_dice_loss(logits, target, options=TopKDiceOptions(k=30))) < 1.0
        True
    """
    return ce_and_topk_dice_loss(logits, target, loss_mask=loss_mask, options=options, weight_ce=0.0)


def ce_and_topk_dice_loss(
    logits: Tensor,
    target: Tensor,
    *,
    loss_mask: Tensor | None = None,
    options: TopKDiceOptions = DEFAULT_OPTIONS,
    ce_weight: Tensor | None = None,
    weight_ce: float = 1.0,
    weight_dice: float = 1.0,
) -> Tensor:
    """``weight_ce * CE + weight_dice * TopK-Dice``, the paper's "CE + topK-Dice", from one softmax.

    The cross entropy is ``torch.nn.CrossEntropyLoss``'s mean (with ``ce_weight``: the weighted mean over
    the voxels not masked; a batch with every voxel masked gives 0). The TopK-Dice term is
    :func:`topk_dice_loss`. A term whose weight is 0 is not computed.

    Shape:
        logits: (B, C, X, Y[, Z]) float.  target: (B, 1, X, Y[, Z]) integer labels in [0, C) (anything where
        ``loss_mask`` is 0).  loss_mask: optional (B, 1, X, Y[, Z]), 0 = ignored by both terms.
        ce_weight: optional (C,) per-class weights of the cross entropy.
        returns: scalar float32 (float64 for float64 logits).
    Raises:
        ValueError: as :func:`topk_dice_loss`.
        RuntimeError: ``ddp`` and ``batch_dice`` without an initialised process group.

    Example:
        >>> logits, target = torch.randn(2, 3, 16, 16), torch.randint(0, 3, (2, 1, 16, 16))
        >>> ce_only = ce_and_topk_dice_loss(logits, target, weight_dice=0)
        >>> torch.allclose(ce_only, torch.nn.functional.cross_entropy(logits, target[:, 0]))
        True
    """
    return deep_supervised_ce_and_topk_dice_loss(
        [logits],
        [target],
        [1.0],
        loss_masks=None if loss_mask is None else [loss_mask],
        options=options,
        ce_weight=ce_weight,
        weight_ce=weight_ce,
        weight_dice=weight_dice,
    )


def deep_supervised_ce_and_topk_dice_loss(
    logits: Sequence[Tensor],
    targets: Sequence[Tensor],
    weights: Sequence[float],
    *,
    loss_masks: Sequence[Tensor] | None = None,
    options: TopKDiceOptions = DEFAULT_OPTIONS,
    ce_weight: Tensor | None = None,
    weight_ce: float = 1.0,
    weight_dice: float = 1.0,
) -> Tensor:
    """``sum_i weights[i] * ce_and_topk_dice_loss(logits[i], targets[i], ...)``, deep supervision in one node.

    The value and gradients of nnU-Net's ``DeepSupervisionWrapper`` around :func:`ce_and_topk_dice_loss`
    (outputs with weight 0 are skipped, as it skips them), but the selection, the Dice arithmetic and the
    autograd node run once for all outputs instead of once per output: on the CPU that fixed cost per call
    is what deep supervision's small outputs spend most of their time on.

    Shape:
        logits: one (B, C, *spatial_i) float per output, the same B and C.  targets: (B, 1, *spatial_i)
        integer labels.  loss_masks: None, or one (B, 1, *spatial_i) per output (0 = ignored).
        weights: one float per output.  returns: scalar float32 (float64 for float64 logits).
    Raises:
        ValueError: the lists differ in length or are empty; batch or classes differ between outputs;
        shapes, dtypes or labels as in :func:`ce_and_topk_dice_loss`.
        RuntimeError: ``ddp`` and ``batch_dice`` without an initialised process group.
    """
    masks = [None] * len(logits) if loss_masks is None else list(loss_masks)
    if not (len(logits) == len(targets) == len(weights) == len(masks)) or not logits:
        raise ValueError(
            f"logits, targets, weights (and loss_masks) need one entry per output, got {len(logits)}, "
            f"{len(targets)}, {len(weights)} (and {len(masks)})"
        )
    kept = [i for i, weight in enumerate(weights) if weight != 0]
    if not kept:
        raise ValueError(f"at least one deep-supervision weight must be non-zero, got {list(weights)}")
    if any(x.shape[:2] != logits[kept[0]].shape[:2] for x in logits):
        raise ValueError(f"every output needs the same batch and classes, got {[tuple(x.shape[:2]) for x in logits]}")
    if any(m is not None for m in masks):  # the outputs are selected together: all with a mask or none
        masks = [torch.ones_like(t, dtype=torch.bool) if m is None else m for t, m in zip(targets, masks, strict=True)]
    outputs = [_prepare(logits[i], targets[i], masks[i], options) for i in kept]
    return fused_topk_dice_ce(
        outputs,
        options=options,
        terms=TermWeights(dice=float(weight_dice), ce=float(weight_ce)),
        ce_weight=ce_weight,
        output_weights=[weights[i] for i in kept],
    )


class TopKDiceLoss(TopKDiceModule):
    """TopK-Dice loss as a module; see :func:`topk_dice_loss` for shapes and semantics.

    Args:
        k: percent of each class's foreground voxels that are KEPT (the hardest), ``0 < k <= 100``; a Python,
            NumPy or 0-d tensor number.
        do_bg: include the background class in the mean.
        batch_dice: sum the Dice terms over the batch before dividing (selection stays per image).
        smooth: added to numerator and denominator of each class's Dice.
        ddp: with ``batch_dice``, sum the Dice terms over all DDP ranks.
        tie_break_seed, tie_break_scale: the fixed perturbation map ``eps`` of eq. 2.
        validate: also check label values on an accelerator (a host synchronisation per call); on the CPU
            they are always checked.
    The options are kept, validated, in ``self.options`` (a :class:`TopKDiceOptions`).
    Raises:
        ValueError: as :class:`TopKDiceOptions` (``k`` not in (0, 100], ``smooth`` negative, ...).

    Example:
        >>> loss = TopKDiceLoss(k=50)
        >>> value = loss(torch.randn(2, 4, 8, 8, 8), torch.randint(0, 4, (2, 1, 8, 8, 8)))
        >>> value.shape, value.dtype
        (torch.Size([]), torch.float32)
    """

    loss_function = staticmethod(topk_dice_loss)

    def __init__(
        self,
        k: float = 50.0,
        do_bg: bool = False,
        batch_dice: bool = False,
        smooth: float = 1e-5,
        ddp: bool = False,
        tie_break_seed: int = DEFAULT_TIE_BREAK_SEED,
        tie_break_scale: float = DEFAULT_TIE_BREAK_SCALE,
        validate: bool = False,
    ) -> None:
        options = TopKDiceOptions(
            k=k,
            do_bg=do_bg,
            batch_dice=batch_dice,
            smooth=smooth,
            ddp=ddp,
            tie_break_seed=tie_break_seed,
            tie_break_scale=tie_break_scale,
            validate=validate,
        )
        super().__init__(options)

    def forward(
        self,
        logits: Tensor,
        target: Tensor,
        loss_mask: Tensor | None = None,
        *,
        ce_weight: Tensor | None = None,
        weight_ce: float = 0.0,
        weight_dice: float = 1.0,
    ) -> Tensor:
        """``weight_dice * TopK-Dice`` (+ ``weight_ce * CE`` from the same softmax, in the same node).

        Called as ``loss(logits, target[, loss_mask])`` it is the TopK-Dice loss. The cross-entropy keywords
        are how :class:`~nnunet_topkdice.losses.CE_and_TopKDice_loss` calls its ``dc``, so that nnU-Net's
        ``loss.dc = torch.compile(loss.dc)`` compiles the fused loss; see :func:`ce_and_topk_dice_loss`.
        """
        return ce_and_topk_dice_loss(
            logits,
            target,
            loss_mask=loss_mask,
            options=self.options,
            ce_weight=ce_weight,
            weight_ce=weight_ce,
            weight_dice=weight_dice,
        )
