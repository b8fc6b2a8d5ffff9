"""One trainer per row of the paper's Tables 1-3 and schedule; which name trains which row is
:mod:`nnunet_topkdice.paper_rows` (no nnU-Net needed to read it).

Rows use nnU-Net's own trainers where the loss is nnU-Net's (CE: ``nnUNetTrainerCELoss``, CE + Dice:
``nnUNetTrainer``) and this package's otherwise. Schedules: ``nnunet`` (nnU-Net's 1000 epochs of SGD),
``paper`` (:class:`PaperSchedule`) and ``demo`` (:class:`DemoSchedule`). Besides the paper's rows
(``PAPER_ROWS``), ``CONTROL_ROWS`` holds the ablation control that is not in the paper: CE +
TopK-Dice at k=100, which isolates what the selection buys.
"""

from __future__ import annotations

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.loss.nnUNetTrainerCELoss import nnUNetTrainerCELoss

from nnunet_topkdice.trainers.baselines import (
    SoftmaxOnly,
    nnUNetTrainerFocalDice,
    nnUNetTrainerTopKCEDice,
    nnUNetTrainerTopKCEDice30,
)
from nnunet_topkdice.trainers.schedules import DemoSchedule, PaperSchedule
from nnunet_topkdice.trainers.topk_dice import nnUNetTrainerTopKDice, nnUNetTrainerTopKDice30, nnUNetTrainerTopKDice100

# --- the paper's schedule ---------------------------------------------------------------------------


class nnUNetTrainerCEPaper(SoftmaxOnly, PaperSchedule, nnUNetTrainerCELoss):
    """Paper row "CE" under the paper's schedule (refuses region datasets: :class:`SoftmaxOnly`)."""


class nnUNetTrainerDiceCEPaper(PaperSchedule, nnUNetTrainer):
    """Paper row "CE + Dice" (nnU-Net's default loss) under the paper's schedule."""


class nnUNetTrainerFocalDicePaper(PaperSchedule, nnUNetTrainerFocalDice):
    """Paper row "focal + Dice" under the paper's schedule."""


class nnUNetTrainerTopKCEDicePaper(PaperSchedule, nnUNetTrainerTopKCEDice):
    """Paper row "topK + Dice" (k=50, Synapse and ACDC) under the paper's schedule."""


class nnUNetTrainerTopKCEDice30Paper(PaperSchedule, nnUNetTrainerTopKCEDice30):
    """Paper row "topK + Dice" (k=30, MSSEG) under the paper's schedule."""


class nnUNetTrainerTopKDicePaper(PaperSchedule, nnUNetTrainerTopKDice):
    """Paper row "CE + topK-Dice" (k=50, Synapse and ACDC) under the paper's schedule."""


class nnUNetTrainerTopKDice30Paper(PaperSchedule, nnUNetTrainerTopKDice30):
    """Paper row "CE + topK-Dice" (k=30, MSSEG) under the paper's schedule."""


class nnUNetTrainerTopKDice100Paper(PaperSchedule, nnUNetTrainerTopKDice100):
    """The ablation control, CE + topK-Dice at k=100 (nothing excluded), under the paper's schedule."""


# --- the short demo schedule ------------------------------------------------------------------------


class nnUNetTrainerCEDemo(SoftmaxOnly, DemoSchedule, nnUNetTrainerCELoss):
    """Paper row "CE" under the short demo schedule (refuses region datasets: :class:`SoftmaxOnly`)."""


class nnUNetTrainerDiceCEDemo(DemoSchedule, nnUNetTrainer):
    """Paper row "CE + Dice" under the short demo schedule."""


class nnUNetTrainerFocalDiceDemo(DemoSchedule, nnUNetTrainerFocalDice):
    """Paper row "focal + Dice" under the short demo schedule."""


class nnUNetTrainerTopKCEDiceDemo(DemoSchedule, nnUNetTrainerTopKCEDice):
    """Paper row "topK + Dice" (k=50) under the short demo schedule."""


class nnUNetTrainerTopKCEDice30Demo(DemoSchedule, nnUNetTrainerTopKCEDice30):
    """Paper row "topK + Dice" (k=30) under the short demo schedule."""


class nnUNetTrainerTopKDiceDemo(DemoSchedule, nnUNetTrainerTopKDice):
    """Paper row "CE + topK-Dice" (k=50) under the short demo schedule."""


class nnUNetTrainerTopKDice30Demo(DemoSchedule, nnUNetTrainerTopKDice30):
    """Paper row "CE + topK-Dice" (k=30) under the short demo schedule."""


class nnUNetTrainerTopKDice100Demo(DemoSchedule, nnUNetTrainerTopKDice100):
    """The ablation control, CE + topK-Dice at k=100, under the short demo schedule."""
