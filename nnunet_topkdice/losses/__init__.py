"""Losses: TopK-Dice (pure PyTorch), softmax focal loss, and compound losses for nnU-Net trainers.

``topk_dice`` (the public TopK-Dice API over ``reference``, the definition, ``selection``, ``fused`` and
``tie_break``) and ``focal`` import nothing from nnU-Net; the compound baselines build nnU-Net's own soft
Dice, cross entropy and TopK cross entropy when they are constructed.
Region-based (sigmoid) datasets: ``sigmoid_topk_dice`` and ``region_terms`` are pure PyTorch as well.
``options`` holds :class:`TopKDiceOptions`, the one options object of every TopK-Dice function and module;
``arguments`` the hyper-parameter checks the losses share.
"""

from nnunet_topkdice.losses.compound import (
    BCE_and_TopKDice_loss,
    CE_and_TopKDice_loss,
    DC_and_Focal_loss,
    DC_and_SigmoidFocal_loss,
    DC_and_TopKBCE_loss,
    DC_and_TopKCE_loss,
)
from nnunet_topkdice.losses.focal import FocalLoss, focal_loss
from nnunet_topkdice.losses.options import TopKDiceOptions
from nnunet_topkdice.losses.region_terms import SigmoidFocalLoss, TopKBCELoss
from nnunet_topkdice.losses.sigmoid_topk_dice import SigmoidTopKDiceLoss, sigmoid_topk_dice_loss
from nnunet_topkdice.losses.topk_dice import (
    TopKDiceLoss,
    ce_and_topk_dice_loss,
    channel_exclusion_mask,
    deep_supervised_ce_and_topk_dice_loss,
    n_excluded_voxels,
    tie_break_map,
    topk_dice_loss,
    topk_exclusion_mask,
)

__all__ = [
    "BCE_and_TopKDice_loss",
    "CE_and_TopKDice_loss",
    "DC_and_Focal_loss",
    "DC_and_SigmoidFocal_loss",
    "DC_and_TopKBCE_loss",
    "DC_and_TopKCE_loss",
    "FocalLoss",
    "SigmoidFocalLoss",
    "SigmoidTopKDiceLoss",
    "TopKBCELoss",
    "TopKDiceLoss",
    "TopKDiceOptions",
    "ce_and_topk_dice_loss",
    "channel_exclusion_mask",
    "deep_supervised_ce_and_topk_dice_loss",
    "focal_loss",
    "n_excluded_voxels",
    "sigmoid_topk_dice_loss",
    "tie_break_map",
    "topk_dice_loss",
    "topk_exclusion_mask",
]
