"""The paper's baseline losses that nnU-Net does not ship: focal + Dice and topK-CE + Dice; and the
refusal of region-based datasets by the baseline that has no region formulation, CE alone.

Both keep nnU-Net's default soft Dice (``MemoryEfficientSoftDiceLoss``) so that, as in the paper, only
the cross-entropy part differs from nnU-Net's default CE + Dice. On region-based (sigmoid) datasets they
switch as nnU-Net's default trainer does (BCE + soft Dice on sigmoids), with the BCE replaced by its focal
or top-k version.
"""

from __future__ import annotations

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.loss.nnUNetTrainerCELoss import nnUNetTrainerCELoss
from torch import nn

from nnunet_topkdice.losses import DC_and_Focal_loss, DC_and_SigmoidFocal_loss, DC_and_TopKBCE_loss, DC_and_TopKCE_loss
from nnunet_topkdice.trainers.deep_supervision import wrap_deep_supervision
from nnunet_topkdice.trainers.loss_setup import compile_dice_term, dice_kwargs


class nnUNetTrainerFocalDice(nnUNetTrainer):
    """nnU-Net's default trainer with focal CE (gamma 2, no alpha) + nnU-Net soft Dice.

    Softmax focal CE on label datasets; on region datasets sigmoid focal BCE per voxel and region
    (:class:`~nnunet_topkdice.losses.DC_and_SigmoidFocal_loss`).
    """

    focal_gamma: float = 2.0

    def _build_loss(self) -> nn.Module:
        focal_kwargs, ignore_label = {"gamma": self.focal_gamma}, self.label_manager.ignore_label
        if self.label_manager.has_regions:
            loss = DC_and_SigmoidFocal_loss(dice_kwargs(self), focal_kwargs, use_ignore_label=ignore_label is not None)
        else:
            loss = DC_and_Focal_loss(dice_kwargs(self), focal_kwargs, ignore_label=ignore_label)
        return compile_dice_term(self, wrap_deep_supervision(self, loss))


class nnUNetTrainerTopKCEDice(nnUNetTrainer):
    """nnU-Net's default trainer with topK CE (the k percent hardest voxels kept) + nnU-Net soft Dice.

    nnU-Net's ``TopKLoss`` on label datasets; on region datasets the same selection over the BCE of every
    voxel and region (:class:`~nnunet_topkdice.losses.DC_and_TopKBCE_loss`).
    """

    topk_k: float = 50.0

    def _build_loss(self) -> nn.Module:
        topk_kwargs, ignore_label = {"k": self.topk_k}, self.label_manager.ignore_label
        if self.label_manager.has_regions:
            loss = DC_and_TopKBCE_loss(dice_kwargs(self), topk_kwargs, use_ignore_label=ignore_label is not None)
        else:
            loss = DC_and_TopKCE_loss(dice_kwargs(self), topk_kwargs, ignore_label=ignore_label)
        return compile_dice_term(self, wrap_deep_supervision(self, loss))


class nnUNetTrainerTopKCEDice30(nnUNetTrainerTopKCEDice):
    """topK-CE (30 %, the paper's MSSEG setting) + nnU-Net soft Dice."""

    topk_k = 30.0


def region_refusal(trainer: str) -> str:
    """Why ``trainer``, whose loss is cross entropy over softmax classes, cannot train a region dataset."""
    return (
        f"{trainer} trains cross entropy over softmax classes, which has no region formulation, and this dataset "
        "is region-based (its dataset.json gives labels as lists of values, trained with one sigmoid per "
        "region): train it with nnUNetTrainer (BCE + Dice), nnUNetTrainerTopKDice (BCE + TopK-Dice) or another "
        "trainer of docs/region_based_training.md"
    )


class SoftmaxOnly:
    """First base of a trainer whose loss has no region formulation (the paper's CE row): on a region-based
    dataset ``_build_loss`` refuses, naming the trainer and why, where nnU-Net's ``nnUNetTrainerCELoss``
    stops at a bare ``assert`` (which ``python -O`` would even skip)."""

    def _build_loss(self) -> nn.Module:
        if self.label_manager.has_regions:
            raise RuntimeError(region_refusal(type(self).__name__))
        return super()._build_loss()


def refuses_regions(trainer_class: type) -> bool:
    """Whether ``trainer_class`` builds its loss with a ``_build_loss`` known to refuse region datasets
    (:class:`SoftmaxOnly`'s, or nnU-Net's ``nnUNetTrainerCELoss``'s); a subclass that builds its own is
    taken at its word."""
    build = getattr(trainer_class, "_build_loss", None)
    return build is SoftmaxOnly._build_loss or build is nnUNetTrainerCELoss._build_loss
