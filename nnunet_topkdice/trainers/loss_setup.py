"""What every loss trainer derives from the trainer the same way: the Dice kwargs and torch.compile."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from torch import nn

from nnunet_topkdice.losses import BCE_and_TopKDice_loss
from nnunet_topkdice.trainers.deep_supervision import RegionTopKDiceDeepSupervision, TopKDiceDeepSupervision

if TYPE_CHECKING:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

# nnU-Net's default Dice settings (nnUNetTrainer._build_loss); only batch_dice and ddp vary.
DICE_SMOOTH = 1e-5


def dice_kwargs(trainer: nnUNetTrainer) -> dict[str, Any]:
    """The Dice kwargs nnU-Net's default trainer uses: ``batch_dice`` from the plans, ``ddp`` from the run.

    ``do_bg`` is nnU-Net's too: False for softmax labels (channel 0 is the background), True for region
    datasets (every sigmoid output is a foreground region).
    """
    return {
        "batch_dice": trainer.configuration_manager.batch_dice,
        "smooth": DICE_SMOOTH,
        "do_bg": trainer.label_manager.has_regions,
        "ddp": trainer.is_ddp,
    }


def compile_dice_term(trainer: nnUNetTrainer, loss: nn.Module) -> nn.Module:
    """Compile the compound loss's Dice term exactly when nnU-Net compiles its own; returns the loss to use.

    nnU-Net compiles ``loss.dc`` of its default ``DC_and_CE_loss`` when ``trainer._do_i_compile()``
    (CUDA, not Windows, ``nnUNet_compile`` not false) and leaves the cross-entropy eager; every loss here
    gets the same. For ``CE_and_TopKDice_loss`` that compiles both terms, since its ``dc`` computes them in
    one fused autograd node (one graph: under compile the selection takes its fixed-shape path). The
    :class:`TopKDiceDeepSupervision`, which calls that node once for all outputs, is compiled as a whole.
    The fused region loss ``BCE_and_TopKDice_loss`` (one node for both terms, which does not call its
    ``dc``) and its :class:`RegionTopKDiceDeepSupervision` are compiled as a whole too. Inside nnU-Net's
    ``DeepSupervisionWrapper`` the wrapped loss is compiled the same way, so that a trainer can wrap first
    and compile last whatever its loss.
    """
    if not trainer._do_i_compile():
        return loss
    if isinstance(loss, (TopKDiceDeepSupervision, RegionTopKDiceDeepSupervision)):
        return torch.compile(loss)
    if isinstance(loss, BCE_and_TopKDice_loss) and loss.fused:  # one node: loss.dc is not called
        return torch.compile(loss)
    if isinstance(loss, DeepSupervisionWrapper):
        loss.loss = compile_dice_term(trainer, loss.loss)
        return loss
    loss.dc = torch.compile(loss.dc)
    return loss
