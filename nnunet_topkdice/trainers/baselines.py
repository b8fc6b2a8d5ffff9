"""The paper's baseline losses that nnU-Net does not ship: focal + Dice and topK-CE + Dice.

Both keep nnU-Net's default soft Dice (``MemoryEfficientSoftDiceLoss``) so that, as in the paper, only
the cross-entropy part differs from nnU-Net's default CE + Dice. Both are softmax losses and refuse
region-based (sigmoid) datasets at ``_build_loss``.
"""

from __future__ import annotations

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

from nnunet_topkdice.losses import DC_and_Focal_loss, DC_and_TopKCE_loss
from nnunet_topkdice.trainers.deep_supervision import wrap_deep_supervision
from nnunet_topkdice.trainers.loss_setup import compile_dice_term, dice_kwargs, refuse_regions


class nnUNetTrainerFocalDice(nnUNetTrainer):
    """nnU-Net's default trainer with softmax focal CE (gamma 2, no alpha) + nnU-Net soft Dice."""

    focal_gamma: float = 2.0

    def _build_loss(self) -> nn.Module:
        refuse_regions(self, "softmax focal cross entropy")
        loss = DC_and_Focal_loss(
            dice_kwargs(self),
            {"gamma": self.focal_gamma},
            weight_focal=1,
            weight_dice=1,
            ignore_label=self.label_manager.ignore_label,
        )
        return wrap_deep_supervision(self, compile_dice_term(self, loss))


class nnUNetTrainerTopKCEDice(nnUNetTrainer):
    """nnU-Net's default trainer with topK CE (the k percent hardest voxels kept) + nnU-Net soft Dice."""

    topk_k: float = 50.0

    def _build_loss(self) -> nn.Module:
        refuse_regions(self, "topK cross entropy")
        loss = DC_and_TopKCE_loss(
            dice_kwargs(self),
            {"k": self.topk_k},
            weight_ce=1,
            weight_dice=1,
            ignore_label=self.label_manager.ignore_label,
        )
        return wrap_deep_supervision(self, compile_dice_term(self, loss))


class nnUNetTrainerTopKCEDice30(nnUNetTrainerTopKCEDice):
    """topK-CE (30 %, the paper's MSSEG setting) + nnU-Net soft Dice."""

    topk_k = 30.0
