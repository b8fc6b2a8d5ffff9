"""nnU-Net's deep-supervision weighting in one place, so that no trainer carries a copy of it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from torch import nn

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


def wrap_deep_supervision(trainer: nnUNetTrainer, loss: nn.Module) -> nn.Module:
    """Wrap ``loss`` in nnU-Net's ``DeepSupervisionWrapper`` with nnU-Net's default weights.

    The wrapped loss is called with lists of outputs and targets, one per resolution. Without deep
    supervision (``trainer.enable_deep_supervision`` False) ``loss`` is returned unchanged.

    Example:
        >>> loss = wrap_deep_supervision(self, CE_and_TopKDice_loss(...))  # inside _build_loss
    """
    if not trainer.enable_deep_supervision:
        return loss
    return DeepSupervisionWrapper(loss, deep_supervision_weights(trainer))
