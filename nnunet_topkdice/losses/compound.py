"""Compound losses called like nnU-Net's ``DC_and_CE_loss``: ``loss(net_output, target)``.

``target`` is a ``(B, 1, *spatial)`` label map. With an ``ignore_label``, its voxels are masked out of the
Dice term (``loss_mask``) and passed as ``ignore_index`` to the pixel-wise term, exactly as nnU-Net does.
Unlike nnU-Net, the kwargs dicts are copied, never mutated, and a term whose weight is 0 is not built.

The baselines reuse nnU-Net's own pieces (``MemoryEfficientSoftDiceLoss``, ``RobustCrossEntropyLoss``,
``TopKLoss``), imported when a loss is built so that ``nnunet_topkdice.losses`` imports without nnU-Net.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from nnunet_topkdice.losses.focal import FocalLoss
from nnunet_topkdice.losses.region_fused import RegionConfig, RegionOutput, fused_bce_and_topk_dice
from nnunet_topkdice.losses.region_terms import SigmoidFocalLoss, TopKBCELoss
from nnunet_topkdice.losses.sigmoid_topk_dice import SigmoidTopKDiceLoss, check_binary_regions, check_region_inputs
from nnunet_topkdice.losses.tie_break import tie_break_map
from nnunet_topkdice.losses.topk_dice import TopKDiceLoss

__all__ = [
    "BCE_and_TopKDice_loss",
    "CE_and_TopKDice_loss",
    "DC_and_Focal_loss",
    "DC_and_SigmoidFocal_loss",
    "DC_and_TopKBCE_loss",
    "DC_and_TopKCE_loss",
]


def _nnunet_soft_dice(soft_dice_kwargs: dict, *, sigmoid: bool = False) -> nn.Module:
    """nnU-Net's ``MemoryEfficientSoftDiceLoss`` on softmax outputs, or on sigmoid outputs (regions)."""
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    from nnunetv2.utilities.helpers import softmax_helper_dim1

    nonlin = torch.sigmoid if sigmoid else softmax_helper_dim1
    return MemoryEfficientSoftDiceLoss(apply_nonlin=nonlin, **soft_dice_kwargs)


def _nnunet_topk_ce(**topk_ce_kwargs: object) -> nn.Module:
    from nnunetv2.training.loss.robust_ce_loss import TopKLoss

    return TopKLoss(**topk_ce_kwargs)


class _RegionAndPixelLoss(nn.Module):
    """``weight_pixel * pixel_term(x, target) + weight_region * soft_dice(x, target, loss_mask)``.

    ``soft_dice`` is nnU-Net's ``MemoryEfficientSoftDiceLoss`` (softmax) built from a copy of
    ``soft_dice_kwargs``; the pixel term is ``pixel_term(**pixel_kwargs)`` on a copy of ``pixel_kwargs``,
    with nnU-Net's ignore label as its ``ignore_index`` when there is one.
    """

    def __init__(
        self,
        soft_dice_kwargs: dict,
        pixel_term: Callable[..., nn.Module],
        pixel_kwargs: dict,
        weight_pixel: float,
        weight_region: float,
        ignore_label: int | None,
    ) -> None:
        super().__init__()
        self.weight_pixel = float(weight_pixel)
        self.weight_region = float(weight_region)
        self.ignore_label = ignore_label
        # nnU-Net's names, so that its trainers' ``loss.dc = torch.compile(loss.dc)`` works here too
        self.dc = _nnunet_soft_dice(dict(soft_dice_kwargs)) if self.weight_region != 0 else None
        self.ce = None
        if self.weight_pixel != 0:
            pixel_kwargs = dict(pixel_kwargs)
            if ignore_label is not None:
                pixel_kwargs["ignore_index"] = ignore_label
            self.ce = pixel_term(**pixel_kwargs)

    def _split_target(self, target: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.ignore_label is None:
            return target, None
        if target.ndim < 2 or target.shape[1] != 1:
            raise ValueError(f"an ignore label needs a (B, 1, *spatial) label map, got {tuple(target.shape)}")
        mask = target != self.ignore_label
        # the value under the mask is irrelevant: those voxels get no gradient
        return torch.where(mask, target, 0), mask

    def forward(self, net_output: Tensor, target: Tensor) -> Tensor:
        target_region, mask = self._split_target(target)
        total = net_output.new_zeros((), dtype=torch.float32)
        if self.dc is not None:
            total = total + self.weight_region * self.dc(net_output, target_region, loss_mask=mask)
        if self.ce is not None:
            total = total + self.weight_pixel * self.ce(net_output, target)
        return total


class CE_and_TopKDice_loss(nn.Module):
    """The paper's loss: cross entropy + TopK-Dice (section 3.2, "CE + topK-Dice").

    One float32 softmax serves both terms: the cross entropy is ``-log`` of its true-class probability
    (``torch.nn.CrossEntropyLoss``'s mean, with class weights and ignore index), and the whole loss is one
    autograd node with a closed-form backward (see ``nnunet_topkdice.losses.fused``).

    ``self.dc`` is the :class:`TopKDiceLoss` (its options in ``self.dc.options``), and ``forward`` calls it,
    with the cross-entropy weights, to compute that node: nnU-Net's ``loss.dc = torch.compile(loss.dc)``
    therefore compiles the whole fused loss (cross entropy included, since it shares the node), where
    nnU-Net's own ``DC_and_CE_loss`` compiles only its Dice.

    Args:
        topk_dice_kwargs: arguments of :class:`TopKDiceLoss` (``k``, ``batch_dice``, ``do_bg``, ``smooth``, ``ddp``).
        ce_kwargs: ``weight`` (per-class, as in ``torch.nn.CrossEntropyLoss``) and/or ``ignore_index``.
        weight_ce, weight_dice: weights of the two terms (a term with weight 0 is skipped).
        ignore_label: nnU-Net's ignore label; masked out of both terms.
    Raises:
        ValueError: bad TopK-Dice arguments, or ce_kwargs other than ``weight``/``ignore_index``.
    """

    def __init__(
        self,
        topk_dice_kwargs: dict,
        ce_kwargs: dict,
        weight_ce: float = 1,
        weight_dice: float = 1,
        ignore_label: int | None = None,
    ) -> None:
        super().__init__()
        ce_kwargs = dict(ce_kwargs)
        unknown = set(ce_kwargs) - {"weight", "ignore_index"}
        if unknown:
            raise ValueError(f"ce_kwargs supports 'weight' and 'ignore_index', got {sorted(unknown)}")
        if ignore_label is not None:
            ce_kwargs["ignore_index"] = ignore_label
        self.weight_ce = float(weight_ce)
        self.weight_dice = float(weight_dice)
        self.ignore_label = ignore_label if ignore_label is not None else ce_kwargs.get("ignore_index")
        weight = ce_kwargs.get("weight")
        self.register_buffer(
            "ce_weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32), persistent=False
        )
        self.dc = TopKDiceLoss(**dict(topk_dice_kwargs))

    def loss_mask(self, target: Tensor) -> Tensor | None:
        """Where the target is not the ignore label (None without one).  Shape: (B, 1, *spatial) bool."""
        return None if self.ignore_label is None else target != self.ignore_label

    def ce_terms(self) -> dict[str, object]:
        """The cross-entropy keywords of :func:`~nnunet_topkdice.losses.ce_and_topk_dice_loss` this loss fixes
        (the TopK-Dice options are ``self.dc.options``)."""
        return {"ce_weight": self.ce_weight, "weight_ce": self.weight_ce, "weight_dice": self.weight_dice}

    def forward(self, net_output: Tensor, target: Tensor) -> Tensor:
        """Shape: net_output (B, C, *spatial) float; target (B, 1, *spatial) integer. Returns a float32 scalar.

        Raises:
            ValueError: shapes or dtypes as in :func:`~nnunet_topkdice.losses.topk_dice_loss`.
        """
        # one autograd node computes the softmax once for both terms (nnunet_topkdice.losses.fused)
        return self.dc(net_output, target, self.loss_mask(target), **self.ce_terms())


class DC_and_Focal_loss(_RegionAndPixelLoss):
    """The paper's "focal + Dice" baseline: softmax focal CE + nnU-Net's default soft Dice.

    Args:
        soft_dice_kwargs: arguments of nnU-Net's ``MemoryEfficientSoftDiceLoss`` (``batch_dice``, ``do_bg``,
            ``smooth``, ``ddp``).
        focal_kwargs: arguments of :class:`FocalLoss` (``gamma``, ``alpha``).
        weight_focal, weight_dice: weights of the two terms.
        ignore_label: nnU-Net's ignore label.
    """

    def __init__(
        self,
        soft_dice_kwargs: dict,
        focal_kwargs: dict,
        weight_focal: float = 1,
        weight_dice: float = 1,
        ignore_label: int | None = None,
    ) -> None:
        super().__init__(soft_dice_kwargs, FocalLoss, focal_kwargs, weight_focal, weight_dice, ignore_label)


class DC_and_TopKCE_loss(_RegionAndPixelLoss):
    """The paper's "topK + Dice" baseline: nnU-Net's ``TopKLoss`` (top k% cross entropy) + soft Dice.

    Args:
        soft_dice_kwargs: arguments of nnU-Net's ``MemoryEfficientSoftDiceLoss``.
        topk_ce_kwargs: arguments of nnU-Net's ``TopKLoss`` (``k`` in percent, ``label_smoothing``, ``weight``).
        weight_ce, weight_dice: weights of the two terms.
        ignore_label: nnU-Net's ignore label.
    """

    def __init__(
        self,
        soft_dice_kwargs: dict,
        topk_ce_kwargs: dict,
        weight_ce: float = 1,
        weight_dice: float = 1,
        ignore_label: int | None = None,
    ) -> None:
        super().__init__(soft_dice_kwargs, _nnunet_topk_ce, topk_ce_kwargs, weight_ce, weight_dice, ignore_label)


# --- region-based (sigmoid) datasets ----------------------------------------------------------------


def _split_region_target(net_output: Tensor, target: Tensor, use_ignore_label: bool) -> tuple[Tensor, Tensor | None]:
    """nnU-Net's region target layout: the regions, and (with an ignore label) the last channel as a mask.

    Shape: net_output (B, R, *spatial); target (B, R [+ 1], *spatial) 0/1.
    returns: regions (B, R, *spatial) and mask (B, 1, *spatial) bool, True where the loss is computed, or None.
    Raises:
        ValueError: the target's channels do not match (R, or R + 1 with ``use_ignore_label``).
    """
    n_channels = net_output.shape[1] + int(use_ignore_label) if net_output.ndim >= 2 else None
    if net_output.ndim < 3 or target.ndim != net_output.ndim or target.shape[1] != n_channels:
        raise ValueError(
            f"target must have shape (B, {'R + 1' if use_ignore_label else 'R'}, *spatial) for "
            f"net_output {tuple(net_output.shape)}, got {tuple(target.shape)}"
        )
    if not use_ignore_label:
        return target, None
    return target[:, :-1], target[:, -1:] == 0


class BCE_and_TopKDice_loss(nn.Module):
    """BCE + TopK-Dice for region-based (sigmoid) training, called like nnU-Net's ``DC_and_BCE_loss``.

    ``loss(net_output, target)`` with ``net_output`` (B, R, *spatial) logits and ``target`` the region
    maps nnU-Net's region pipeline delivers: (B, R, *spatial) 0/1 (bool from its data loader), or with
    ``use_ignore_label`` (B, R + 1, *spatial) whose LAST channel marks the ignored voxels. As in nnU-Net,
    the ignored voxels are masked out of the Dice term, and the BCE is then summed over the regions and
    divided by the number of voxels not ignored (not by voxels times regions: nnU-Net's normalisation,
    kept so that only the Dice term differs from nnU-Net's default region loss). Without an ignore label
    the BCE is ``torch.nn.BCEWithLogitsLoss``'s mean. The BCE runs in float32 for half-precision logits.

    Args:
        topk_dice_kwargs: arguments of :class:`SigmoidTopKDiceLoss` (``k``, ``batch_dice``, ``do_bg``,
            ``smooth``, ``ddp``).
        bce_kwargs: ``weight`` and/or ``pos_weight`` of ``torch.nn.BCEWithLogitsLoss``.
        weight_ce, weight_dice: weights of the two terms (a term with weight 0 is not built).
        use_ignore_label: the target's last channel is nnU-Net's ignore mask.
        fused: compute both terms as one autograd node (:mod:`~nnunet_topkdice.losses.region_fused`; not
            with ``weight``/``pos_weight``); False: plain autograd through ``self.dc`` and ``self.ce``, the
            reference the node is tested against (the same values and gradients, bit for bit).
    Raises:
        ValueError: bad TopK-Dice arguments, or bce_kwargs other than ``weight``/``pos_weight``.

    Example:
        >>> loss = BCE_and_TopKDice_loss({"k": 50, "do_bg": True}, {})
        >>> float(loss(torch.randn(2, 3, 8, 8), torch.rand(2, 3, 8, 8) > 0.5)) > 0
        True
    """

    def __init__(
        self,
        topk_dice_kwargs: dict,
        bce_kwargs: dict,
        weight_ce: float = 1,
        weight_dice: float = 1,
        use_ignore_label: bool = False,
        *,
        fused: bool = True,
    ) -> None:
        super().__init__()
        bce_kwargs = dict(bce_kwargs)
        unknown = set(bce_kwargs) - {"weight", "pos_weight"}
        if unknown:
            raise ValueError(f"bce_kwargs supports 'weight' and 'pos_weight', got {sorted(unknown)}")
        if use_ignore_label:
            bce_kwargs["reduction"] = "none"  # masked and normalised in forward, as nnU-Net does
        self.weight_ce = float(weight_ce)
        self.weight_dice = float(weight_dice)
        self.use_ignore_label = bool(use_ignore_label)
        # nnU-Net's names, so that its trainers' ``loss.dc = torch.compile(loss.dc)`` works here too
        self.dc = SigmoidTopKDiceLoss(**dict(topk_dice_kwargs)) if self.weight_dice != 0 else None
        self.ce = nn.BCEWithLogitsLoss(**bce_kwargs) if self.weight_ce != 0 else None
        # the node has the BCE without class weights; the dice options are read from self.dc when called
        self.fused = bool(fused) and not ("weight" in bce_kwargs or "pos_weight" in bce_kwargs)

    def region_config(self) -> RegionConfig:
        """The options of :func:`~nnunet_topkdice.losses.region_fused.fused_bce_and_topk_dice` this loss fixes
        (no dice options where the dice term has weight 0: the node does not compute it)."""
        return RegionConfig(None if self.dc is None else self.dc.options, self.weight_dice, self.weight_ce)

    def region_output(self, net_output: Tensor, target: Tensor) -> RegionOutput:
        """One output for the fused node: the target split as nnU-Net does, the inputs checked (metadata, and
        the values of a CPU target that is not bool), and the tie-break map of the spatial shape.

        Shape: net_output (B, R, *spatial) float; target (B, R [+ 1], *spatial) 0/1.
        Raises:
            ValueError: the target's channels do not match, or it holds values other than 0 and 1; shapes or
                dtypes as in ``sigmoid_topk_dice_loss``.
        """
        target_regions, mask = _split_region_target(net_output, target, self.use_ignore_label)
        check_region_inputs(net_output, target_regions, mask)
        check_binary_regions(target_regions)
        tie_break = None
        if self.dc is not None:
            shape, device = net_output.shape[2:], net_output.device
            options = self.dc.options
            tie_break = tie_break_map(shape, device, seed=options.tie_break_seed, scale=options.tie_break_scale)
            tie_break = tie_break.view(-1)
        return RegionOutput(net_output, target_regions, mask, tie_break)

    def forward(self, net_output: Tensor, target: Tensor) -> Tensor:
        """Shape: net_output (B, R, *spatial) float; target (B, R [+ 1], *spatial) 0/1. Returns a scalar.

        With ``fused`` (the default, without BCE weights) one autograd node computes both terms
        (``nnunet_topkdice.losses.region_fused``, bit for bit the values and gradients of the path below).

        Raises:
            ValueError: the target's channels do not match (R, or R + 1 with ``use_ignore_label``).
        """
        if self.fused:
            return fused_bce_and_topk_dice([self.region_output(net_output, target)], self.region_config())
        target_regions, mask = _split_region_target(net_output, target, self.use_ignore_label)
        compute_dtype = torch.float64 if net_output.dtype == torch.float64 else torch.float32
        total = net_output.new_zeros((), dtype=compute_dtype)
        if self.dc is not None:
            total = total + self.weight_dice * self.dc(net_output, target_regions, loss_mask=mask)
        if self.ce is not None:
            logits = net_output.to(compute_dtype)
            bce = self.ce(logits, target_regions.to(compute_dtype))
            if mask is not None:
                bce = (bce * mask).sum() / mask.sum(dtype=compute_dtype).clamp_min(1e-8)
            total = total + self.weight_ce * bce
        return total


class _SigmoidBaselineLoss(nn.Module):
    """nnU-Net's soft Dice on sigmoid outputs (as in ``DC_and_BCE_loss``) + a pixel-wise sigmoid term.

    The pixel term, ``pixel_term(**pixel_kwargs)`` on a copy of ``pixel_kwargs``, is called
    ``term(net_output, regions, mask)`` and reduces itself (see ``region_terms``).
    """

    def __init__(
        self,
        soft_dice_kwargs: dict,
        pixel_term: Callable[..., nn.Module],
        pixel_kwargs: dict,
        weight_pixel: float,
        weight_dice: float,
        use_ignore_label: bool,
    ) -> None:
        super().__init__()
        self.weight_pixel = float(weight_pixel)
        self.weight_dice = float(weight_dice)
        self.use_ignore_label = bool(use_ignore_label)
        self.dc = _nnunet_soft_dice(dict(soft_dice_kwargs), sigmoid=True) if self.weight_dice != 0 else None
        self.ce = pixel_term(**dict(pixel_kwargs)) if self.weight_pixel != 0 else None

    def forward(self, net_output: Tensor, target: Tensor) -> Tensor:
        """Shape: net_output (B, R, *spatial) float; target (B, R [+ 1], *spatial) 0/1. Returns a scalar.

        Raises:
            ValueError: the target's channels do not match (R, or R + 1 with ``use_ignore_label``).
        """
        target_regions, mask = _split_region_target(net_output, target, self.use_ignore_label)
        total = net_output.new_zeros((), dtype=torch.float64 if net_output.dtype == torch.float64 else torch.float32)
        if self.dc is not None:
            total = total + self.weight_dice * self.dc(net_output, target_regions, loss_mask=mask)
        if self.ce is not None:
            total = total + self.weight_pixel * self.ce(net_output, target_regions, mask)
        return total


class DC_and_SigmoidFocal_loss(_SigmoidBaselineLoss):
    """The "focal + Dice" baseline for region datasets: sigmoid focal BCE + nnU-Net's soft Dice (sigmoid).

    nnU-Net's ``DC_and_BCE_loss`` with its BCE replaced by :class:`SigmoidFocalLoss` (same reduction and
    ignore-label layout); ``gamma=0`` gives ``DC_and_BCE_loss`` back.

    Args:
        soft_dice_kwargs: arguments of nnU-Net's ``MemoryEfficientSoftDiceLoss`` (``batch_dice``, ``do_bg``,
            ``smooth``, ``ddp``); nnU-Net's region trainer uses ``do_bg=True``.
        focal_kwargs: arguments of :class:`SigmoidFocalLoss` (``gamma``).
        weight_focal, weight_dice: weights of the two terms (a term with weight 0 is not built).
        use_ignore_label: the target's last channel is nnU-Net's ignore mask.
    Raises:
        ValueError: bad focal arguments.
    """

    def __init__(
        self,
        soft_dice_kwargs: dict,
        focal_kwargs: dict,
        weight_focal: float = 1,
        weight_dice: float = 1,
        use_ignore_label: bool = False,
    ) -> None:
        super().__init__(soft_dice_kwargs, SigmoidFocalLoss, focal_kwargs, weight_focal, weight_dice, use_ignore_label)


class DC_and_TopKBCE_loss(_SigmoidBaselineLoss):
    """The "topK + Dice" baseline for region datasets: top-k BCE + nnU-Net's soft Dice (sigmoid).

    nnU-Net's ``DC_and_BCE_loss`` with its BCE replaced by :class:`TopKBCELoss` (nnU-Net's ``TopKLoss`` on
    the per voxel and region BCE); ``k=100`` without an ignore label gives ``DC_and_BCE_loss`` back.

    Args:
        soft_dice_kwargs: arguments of nnU-Net's ``MemoryEfficientSoftDiceLoss``.
        topk_bce_kwargs: arguments of :class:`TopKBCELoss` (``k`` in percent).
        weight_ce, weight_dice: weights of the two terms (a term with weight 0 is not built).
        use_ignore_label: the target's last channel is nnU-Net's ignore mask.
    Raises:
        ValueError: bad top-k arguments.
    """

    def __init__(
        self,
        soft_dice_kwargs: dict,
        topk_bce_kwargs: dict,
        weight_ce: float = 1,
        weight_dice: float = 1,
        use_ignore_label: bool = False,
    ) -> None:
        super().__init__(soft_dice_kwargs, TopKBCELoss, topk_bce_kwargs, weight_ce, weight_dice, use_ignore_label)
