"""Shim that nnU-Net imports when ``nnUNet_extTrainer`` points at this folder.

nnU-Net imports every module of that folder as a top-level module and forgets it afterwards, so this
module only re-exports: the classes keep their home in ``nnunet_topkdice.trainers`` (one class object
per trainer, whichever way it was found).
"""

from nnunet_topkdice.trainers import (  # noqa: F401
    nnUNetTrainerCEDemo,
    nnUNetTrainerCEPaper,
    nnUNetTrainerDiceCEDemo,
    nnUNetTrainerDiceCEPaper,
    nnUNetTrainerFocalDice,
    nnUNetTrainerFocalDiceDemo,
    nnUNetTrainerFocalDicePaper,
    nnUNetTrainerTopKCEDice,
    nnUNetTrainerTopKCEDice30,
    nnUNetTrainerTopKCEDice30Demo,
    nnUNetTrainerTopKCEDice30Paper,
    nnUNetTrainerTopKCEDiceDemo,
    nnUNetTrainerTopKCEDicePaper,
    nnUNetTrainerTopKDice,
    nnUNetTrainerTopKDice10,
    nnUNetTrainerTopKDice30,
    nnUNetTrainerTopKDice30Demo,
    nnUNetTrainerTopKDice30Paper,
    nnUNetTrainerTopKDice70,
    nnUNetTrainerTopKDice90,
    nnUNetTrainerTopKDice100,
    nnUNetTrainerTopKDice100Demo,
    nnUNetTrainerTopKDice100Paper,
    nnUNetTrainerTopKDiceDemo,
    nnUNetTrainerTopKDicePaper,
)
