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
from nnunet_topkdice.losses.topk_dice import TopKDiceLoss, ce_and_topk_dice_loss

__all__ = ["CE_and_TopKDice_loss", "DC_and_Focal_loss", "DC_and_TopKCE_loss"]


def _nnunet_soft_dice(soft_dice_kwargs: dict) -> nn.Module:
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    from nnunetv2.utilities.helpers import softmax_helper_dim1

    return MemoryEfficientSoftDiceLoss(apply_nonlin=softmax_helper_dim1, **soft_dice_kwargs)


class _RegionAndPixelLoss(nn.Module):
    """``weight_pixel * pixel_term(x, target) + weight_region * region_term(x, target, loss_mask)``."""

    def __init__(
        self,
        region_term: Callable[[], nn.Module],
        pixel_term: Callable[[int | None], nn.Module],
        weight_pixel: float,
        weight_region: float,
        ignore_label: int | None,
    ) -> None:
        super().__init__()
        self.weight_pixel = float(weight_pixel)
        self.weight_region = float(weight_region)
        self.ignore_label = ignore_label
        # nnU-Net's names, so that its trainers' ``loss.dc = torch.compile(loss.dc)`` works here too
        self.dc = region_term() if self.weight_region != 0 else None
        self.ce = pixel_term(ignore_label) if self.weight_pixel != 0 else None

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

    def forward(self, net_output: Tensor, target: Tensor) -> Tensor:
        """Shape: net_output (B, C, *spatial) float; target (B, 1, *spatial) integer. Returns a float32 scalar.

        Raises:
            ValueError: shapes or dtypes as in :func:`~nnunet_topkdice.losses.topk_dice_loss`.
        """
        dc = self.dc
        loss_mask = None if self.ignore_label is None else target != self.ignore_label
        # one autograd node computes the softmax once for both terms (nnunet_topkdice.losses.fused)
        return ce_and_topk_dice_loss(
            net_output,
            target,
            dc.k,
            loss_mask=loss_mask,
            ce_weight=self.ce_weight,
            weight_ce=self.weight_ce,
            weight_dice=self.weight_dice,
            do_bg=dc.do_bg,
            batch_dice=dc.batch_dice,
            smooth=dc.smooth,
            ddp=dc.ddp,
            tie_break_seed=dc.tie_break_seed,
            tie_break_scale=dc.tie_break_scale,
        )


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
        def focal(ignore: int | None) -> nn.Module:
            kwargs = dict(focal_kwargs)
            if ignore is not None:
                kwargs["ignore_index"] = ignore
            return FocalLoss(**kwargs)

        super().__init__(
            lambda: _nnunet_soft_dice(dict(soft_dice_kwargs)), focal, weight_focal, weight_dice, ignore_label
        )


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
        def topk_ce(ignore: int | None) -> nn.Module:
            from nnunetv2.training.loss.robust_ce_loss import TopKLoss

            kwargs = dict(topk_ce_kwargs)
            if ignore is not None:
                kwargs["ignore_index"] = ignore
            return TopKLoss(**kwargs)

        super().__init__(
            lambda: _nnunet_soft_dice(dict(soft_dice_kwargs)), topk_ce, weight_ce, weight_dice, ignore_label
        )
