"""nnU-Net v2 trainers for the TopK-Dice paper: its loss, its baselines, its schedule.

Every trainer subclasses ``nnUNetTrainer``, keeps its constructor and changes only the loss
(``_build_loss``) or the schedule (a mixin from :mod:`.schedules`). All of them also train region-based
(sigmoid) datasets, switching as nnU-Net's default trainer does. nnU-Net finds them through
``nnUNet_extTrainer`` (``export nnUNet_extTrainer="$(topkdice trainer-dir)"``).
"""

from nnunet_topkdice.paper_rows import ALL_ROWS, CONTROL_ROW, CONTROL_ROWS, PAPER_ROWS, SCHEDULES, paper_trainer
from nnunet_topkdice.trainers.baselines import (
    nnUNetTrainerFocalDice,
    nnUNetTrainerTopKCEDice,
    nnUNetTrainerTopKCEDice30,
)
from nnunet_topkdice.trainers.deep_supervision import (
    RegionTopKDiceDeepSupervision,
    TopKDiceDeepSupervision,
    deep_supervision_weights,
    wrap_deep_supervision,
)
from nnunet_topkdice.trainers.paper_rows import (
    nnUNetTrainerCEDemo,
    nnUNetTrainerCEPaper,
    nnUNetTrainerDiceCEDemo,
    nnUNetTrainerDiceCEPaper,
    nnUNetTrainerFocalDiceDemo,
    nnUNetTrainerFocalDicePaper,
    nnUNetTrainerTopKCEDice30Demo,
    nnUNetTrainerTopKCEDice30Paper,
    nnUNetTrainerTopKCEDiceDemo,
    nnUNetTrainerTopKCEDicePaper,
    nnUNetTrainerTopKDice30Demo,
    nnUNetTrainerTopKDice30Paper,
    nnUNetTrainerTopKDice100Demo,
    nnUNetTrainerTopKDice100Paper,
    nnUNetTrainerTopKDiceDemo,
    nnUNetTrainerTopKDicePaper,
)
from nnunet_topkdice.trainers.schedules import DemoSchedule, PaperSchedule
from nnunet_topkdice.trainers.topk_dice import (
    nnUNetTrainerTopKDice,
    nnUNetTrainerTopKDice10,
    nnUNetTrainerTopKDice30,
    nnUNetTrainerTopKDice70,
    nnUNetTrainerTopKDice90,
    nnUNetTrainerTopKDice100,
)

__all__ = [
    # the loss rows (nnU-Net's schedule)
    "nnUNetTrainerTopKDice",
    "nnUNetTrainerTopKDice10",
    "nnUNetTrainerTopKDice30",
    "nnUNetTrainerTopKDice70",
    "nnUNetTrainerTopKDice90",
    "nnUNetTrainerTopKDice100",  # the ablation control (k=100: nothing excluded)
    "nnUNetTrainerFocalDice",
    "nnUNetTrainerTopKCEDice",
    "nnUNetTrainerTopKCEDice30",
    # the paper's schedule
    "nnUNetTrainerCEPaper",
    "nnUNetTrainerDiceCEPaper",
    "nnUNetTrainerFocalDicePaper",
    "nnUNetTrainerTopKCEDicePaper",
    "nnUNetTrainerTopKCEDice30Paper",
    "nnUNetTrainerTopKDicePaper",
    "nnUNetTrainerTopKDice30Paper",
    "nnUNetTrainerTopKDice100Paper",
    # the short demo schedule
    "nnUNetTrainerCEDemo",
    "nnUNetTrainerDiceCEDemo",
    "nnUNetTrainerFocalDiceDemo",
    "nnUNetTrainerTopKCEDiceDemo",
    "nnUNetTrainerTopKCEDice30Demo",
    "nnUNetTrainerTopKDiceDemo",
    "nnUNetTrainerTopKDice30Demo",
    "nnUNetTrainerTopKDice100Demo",
    # helpers
    "ALL_ROWS",
    "CONTROL_ROW",
    "CONTROL_ROWS",
    "PAPER_ROWS",
    "SCHEDULES",
    "TRAINER_NAMES",
    "DemoSchedule",
    "PaperSchedule",
    "RegionTopKDiceDeepSupervision",
    "TopKDiceDeepSupervision",
    "deep_supervision_weights",
    "paper_trainer",
    "wrap_deep_supervision",
]

# Every trainer class this package defines (the names nnU-Net finds through nnUNet_extTrainer).
TRAINER_NAMES: tuple[str, ...] = tuple(name for name in __all__ if name.startswith("nnUNetTrainer"))
