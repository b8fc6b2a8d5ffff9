"""nnU-Net's deep-supervision weighting in one place, so that no trainer carries a copy of it, and the
deep supervision of CE + TopK-Dice and of the region loss (BCE + TopK-Dice) as one autograd node each."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from torch import Tensor, nn

from nnunet_topkdice.losses import BCE_and_TopKDice_loss, CE_and_TopKDice_loss, deep_supervised_ce_and_topk_dice_loss
from nnunet_topkdice.losses.region_fused import fused_bce_and_topk_dice

if TYPE_CHECKING:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


def deep_supervision_weights(trainer: nnUNetTrainer) -> np.ndarray:
    """The weights ``nnUNetTrainer._build_loss`` gives the outputs, highest resolution first.

    ``1 / 2**i`` per output, the lowest-resolution output set to 0 (or to 1e-6 under DDP without
    torch.compile, where nnU-Net avoids DDP's unused-parameter error the same way), normalised to sum 1.

    Shape:
        returns: (n_outputs,) float64, where n_outputs = len(trainer._get_deep_supervision_scales()).
    """
    n_outputs = len(trainer._get_deep_supervision_scales())
    weights = np.array([1 / (2**i) for i in range(n_outputs)])
    weights[-1] = 1e-6 if trainer.is_ddp and not trainer._do_i_compile() else 0
    return weights / weights.sum()


class TopKDiceDeepSupervision(DeepSupervisionWrapper):
    """nnU-Net's ``DeepSupervisionWrapper`` around a :class:`CE_and_TopKDice_loss`, as one autograd node.

    ``sum_i weight_factors[i] * self.loss(outputs[i], targets[i])`` over the outputs with a non-zero
    weight, as nnU-Net's wrapper computes it, through
    :func:`~nnunet_topkdice.losses.deep_supervised_ce_and_topk_dice_loss`: the selection, the Dice
    arithmetic and the autograd node run once per step instead of once per output (on the CPU, the fixed
    cost per call is most of what deep supervision's small outputs cost).

    Args:
        loss: the loss of one output.
        weight_factors: one weight per output, highest resolution first.
    Raises:
        ValueError: every weight is 0.
    """

    def __init__(self, loss: CE_and_TopKDice_loss, weight_factors: Sequence[float]) -> None:
        super().__init__(loss, _checked_weights(weight_factors))

    def forward(self, net_outputs: Sequence[Tensor], targets: Sequence[Tensor]) -> Tensor:  # type: ignore[override]
        """Shape: one (B, C, *spatial_i) output and (B, 1, *spatial_i) target per resolution.

        Raises:
            ValueError: the lists do not have one entry per weight; shapes as in ``self.loss``.
        """
        _check_one_per_weight(self.weight_factors, net_outputs, targets)
        masks = None if self.loss.ignore_label is None else [self.loss.loss_mask(t) for t in targets]
        return deep_supervised_ce_and_topk_dice_loss(
            net_outputs,
            targets,
            self.weight_factors,
            loss_masks=masks,
            options=self.loss.dc.options,
            **self.loss.ce_terms(),
        )


def _check_one_per_weight(
    weight_factors: Sequence[float], outputs: Sequence[Tensor], targets: Sequence[Tensor]
) -> None:
    """Raises: ValueError: the outputs or the targets are not one per weight factor."""
    if len(outputs) != len(weight_factors) or len(targets) != len(weight_factors):
        raise ValueError(
            f"{len(weight_factors)} weight factors need as many outputs and targets, "
            f"got {len(outputs)} and {len(targets)}"
        )


def _checked_weights(weight_factors: Sequence[float]) -> tuple[float, ...]:
    """The weights as floats. Raises: ValueError: every weight is 0."""
    weights = tuple(float(w) for w in weight_factors)
    if not any(w != 0 for w in weights):
        raise ValueError(f"at least one weight factor must be non-zero, got {list(weight_factors)}")
    return weights


class RegionTopKDiceDeepSupervision(DeepSupervisionWrapper):
    """nnU-Net's ``DeepSupervisionWrapper`` around a fused :class:`BCE_and_TopKDice_loss`, as one autograd node.

    ``sum_i weight_factors[i] * self.loss(outputs[i], targets[i])`` over the outputs with a non-zero weight,
    as nnU-Net's wrapper computes it, bit for bit in value and gradients, through
    :func:`~nnunet_topkdice.losses.region_fused.fused_bce_and_topk_dice`: one selection and one node per
    step instead of one per output.

    Args:
        loss: the loss of one output (``loss.fused`` True: no BCE weights).
        weight_factors: one weight per output, highest resolution first.
    Raises:
        ValueError: every weight is 0, or ``loss`` is not fused.
    """

    def __init__(self, loss: BCE_and_TopKDice_loss, weight_factors: Sequence[float]) -> None:
        if not loss.fused:
            raise ValueError("RegionTopKDiceDeepSupervision needs a fused BCE_and_TopKDice_loss (no BCE weights)")
        super().__init__(loss, _checked_weights(weight_factors))

    def forward(self, net_outputs: Sequence[Tensor], targets: Sequence[Tensor]) -> Tensor:  # type: ignore[override]
        """Shape: one (B, R, *spatial_i) output and (B, R [+ 1], *spatial_i) target per resolution.

        Raises:
            ValueError: the lists do not have one entry per weight; shapes as in ``self.loss``.
        """
        _check_one_per_weight(self.weight_factors, net_outputs, targets)
        kept = [i for i, weight in enumerate(self.weight_factors) if weight != 0]
        if any(net_outputs[i].shape[:2] != net_outputs[kept[0]].shape[:2] for i in kept):
            shapes = [tuple(x.shape[:2]) for x in net_outputs]
            raise ValueError(f"every output needs the same batch and regions, got {shapes}")
        outputs = [self.loss.region_output(net_outputs[i], targets[i]) for i in kept]
        weights = [self.weight_factors[i] for i in kept]
        return fused_bce_and_topk_dice(outputs, self.loss.region_config(), weights)


def wrap_deep_supervision(trainer: nnUNetTrainer, loss: nn.Module, fused: bool = True) -> nn.Module:
    """Wrap ``loss`` in nnU-Net's ``DeepSupervisionWrapper`` with nnU-Net's default weights.

    The wrapped loss is called with lists of outputs and targets, one per resolution. With ``fused``, a
    :class:`CE_and_TopKDice_loss` gets :class:`TopKDiceDeepSupervision` and a fused
    :class:`BCE_and_TopKDice_loss` :class:`RegionTopKDiceDeepSupervision` (the same value and gradients, one
    node). Without deep supervision (``trainer.enable_deep_supervision`` False) ``loss`` is returned unchanged.

    Example:
        >>> loss = wrap_deep_supervision(self, CE_and_TopKDice_loss(...))  # inside _build_loss
    """
    if not trainer.enable_deep_supervision:
        return loss
    return fused_wrapper(loss, fused)(loss, deep_supervision_weights(trainer))


def fused_wrapper(loss: nn.Module, fused: bool = True) -> type[DeepSupervisionWrapper]:
    """The deep-supervision wrapper for ``loss``: the one-node wrapper of its kind with ``fused``, where there is
    one, else nnU-Net's ``DeepSupervisionWrapper``."""
    if fused and type(loss) is CE_and_TopKDice_loss:
        return TopKDiceDeepSupervision
    if fused and type(loss) is BCE_and_TopKDice_loss and loss.fused:
        return RegionTopKDiceDeepSupervision
    return DeepSupervisionWrapper
