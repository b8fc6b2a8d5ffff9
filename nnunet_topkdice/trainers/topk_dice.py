"""The paper's loss, CE + TopK-Dice, as nnU-Net trainers (one per k), for label and region datasets."""

from __future__ import annotations

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

from nnunet_topkdice.losses import BCE_and_TopKDice_loss, CE_and_TopKDice_loss
from nnunet_topkdice.trainers.deep_supervision import wrap_deep_supervision
from nnunet_topkdice.trainers.loss_setup import compile_dice_term, dice_kwargs


class nnUNetTrainerTopKDice(nnUNetTrainer):
    """nnU-Net's default trainer with CE + TopK-Dice (paper eq. 7) instead of CE + soft Dice.

    ``topk_k`` is the percent of each class's foreground voxels KEPT (the hardest ones); the paper uses
    50 for Synapse and ACDC and 30 for MSSEG. Everything else (network, schedule, deep supervision and its
    weights, mixed precision, torch.compile of the Dice term) is nnU-Net's.

    Region-based datasets (``regions_class_order`` in dataset.json) train as nnU-Net's default trainer
    trains them, with sigmoid outputs: BCE + :class:`~nnunet_topkdice.losses.SigmoidTopKDiceLoss` (the
    selection per image and region, ``do_bg=True``, the ignore label as the target's last channel).
    """

    topk_k: float = 50.0
    # the loss and its deep supervision as one fused node (TopKDiceDeepSupervision, and for region datasets
    # a fused BCE_and_TopKDice_loss in RegionTopKDiceDeepSupervision); False: autograd for the region loss
    # and nnU-Net's DeepSupervisionWrapper for both
    fuse_deep_supervision: bool = True

    def _build_loss(self) -> nn.Module:
        topk_dice_kwargs = {**dice_kwargs(self), "k": self.topk_k}
        ignore_label = self.label_manager.ignore_label
        if self.label_manager.has_regions:
            loss = BCE_and_TopKDice_loss(
                topk_dice_kwargs,
                {},
                weight_ce=1,
                weight_dice=1,
                use_ignore_label=ignore_label is not None,
                fused=self.fuse_deep_supervision,
            )
        else:
            loss = CE_and_TopKDice_loss(topk_dice_kwargs, {}, weight_ce=1, weight_dice=1, ignore_label=ignore_label)
        # fused: one node for every output, compiled whole where nnU-Net compiles
        return compile_dice_term(self, wrap_deep_supervision(self, loss, fused=self.fuse_deep_supervision))


class nnUNetTrainerTopKDice10(nnUNetTrainerTopKDice):
    """CE + TopK-Dice keeping the hardest 10 % of each class's foreground."""

    topk_k = 10.0


class nnUNetTrainerTopKDice30(nnUNetTrainerTopKDice):
    """CE + TopK-Dice keeping the hardest 30 % (the paper's MSSEG setting)."""

    topk_k = 30.0


class nnUNetTrainerTopKDice70(nnUNetTrainerTopKDice):
    """CE + TopK-Dice keeping the hardest 70 % of each class's foreground."""

    topk_k = 70.0


class nnUNetTrainerTopKDice90(nnUNetTrainerTopKDice):
    """CE + TopK-Dice keeping the hardest 90 % of each class's foreground."""

    topk_k = 90.0


class nnUNetTrainerTopKDice100(nnUNetTrainerTopKDice):
    """The ablation control: CE + TopK-Dice at k=100, nothing excluded.

    The same loss code as the other k, so it differs from the paper's loss only by the selection; against
    nnU-Net's default CE + soft Dice it still differs by the mean over the classes present and the squared
    denominator. Compare k=50 with this trainer to measure what the selection itself buys.
    """

    topk_k = 100.0
