"""One trainer per row of the paper's Tables 1-3 and schedule, and the map from rows to trainer names.

Rows use nnU-Net's own trainers where the loss is nnU-Net's (CE: ``nnUNetTrainerCELoss``, CE + Dice:
``nnUNetTrainer``) and this package's otherwise. Schedules: ``nnunet`` (nnU-Net's 1000 epochs of SGD),
``paper`` (:class:`PaperSchedule`) and ``demo`` (:class:`DemoSchedule`). Besides the paper's rows
(:data:`PAPER_ROWS`), :data:`CONTROL_ROWS` holds the ablation control that is not in the paper: CE +
TopK-Dice at k=100, which isolates what the selection buys.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.loss.nnUNetTrainerCELoss import nnUNetTrainerCELoss

from nnunet_topkdice.trainers.baselines import (
    nnUNetTrainerFocalDice,
    nnUNetTrainerTopKCEDice,
    nnUNetTrainerTopKCEDice30,
)
from nnunet_topkdice.trainers.schedules import DemoSchedule, PaperSchedule
from nnunet_topkdice.trainers.topk_dice import nnUNetTrainerTopKDice, nnUNetTrainerTopKDice30, nnUNetTrainerTopKDice100

# --- the paper's schedule ---------------------------------------------------------------------------


class nnUNetTrainerCEPaper(PaperSchedule, nnUNetTrainerCELoss):
    """Paper row "CE" under the paper's schedule."""


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


class nnUNetTrainerCEDemo(DemoSchedule, nnUNetTrainerCELoss):
    """Paper row "CE" under the short demo schedule."""


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


# --- rows -> trainer names --------------------------------------------------------------------------

SCHEDULES: tuple[str, ...] = ("nnunet", "paper", "demo")

RowTable = Mapping[str, Mapping[str, Mapping[int | None, str]]]


def _read_only(rows: dict[str, dict[str, dict[int | None, str]]]) -> RowTable:
    return MappingProxyType(
        {
            row: MappingProxyType({schedule: MappingProxyType(names) for schedule, names in by_schedule.items()})
            for row, by_schedule in rows.items()
        }
    )


# Row -> schedule -> k -> trainer name (read-only). Rows whose loss has no k use the key None. The paper uses
# k=50 for Synapse and ACDC and k=30 for MSSEG, for topK-CE and topK-Dice alike.
PAPER_ROWS: RowTable = _read_only(
    {
        "CE": {
            "nnunet": {None: "nnUNetTrainerCELoss"},
            "paper": {None: "nnUNetTrainerCEPaper"},
            "demo": {None: "nnUNetTrainerCEDemo"},
        },
        "CE + Dice": {
            "nnunet": {None: "nnUNetTrainer"},
            "paper": {None: "nnUNetTrainerDiceCEPaper"},
            "demo": {None: "nnUNetTrainerDiceCEDemo"},
        },
        "focal + Dice": {
            "nnunet": {None: "nnUNetTrainerFocalDice"},
            "paper": {None: "nnUNetTrainerFocalDicePaper"},
            "demo": {None: "nnUNetTrainerFocalDiceDemo"},
        },
        "topK + Dice": {
            "nnunet": {50: "nnUNetTrainerTopKCEDice", 30: "nnUNetTrainerTopKCEDice30"},
            "paper": {50: "nnUNetTrainerTopKCEDicePaper", 30: "nnUNetTrainerTopKCEDice30Paper"},
            "demo": {50: "nnUNetTrainerTopKCEDiceDemo", 30: "nnUNetTrainerTopKCEDice30Demo"},
        },
        "CE + topK-Dice": {
            "nnunet": {
                50: "nnUNetTrainerTopKDice",
                10: "nnUNetTrainerTopKDice10",
                30: "nnUNetTrainerTopKDice30",
                70: "nnUNetTrainerTopKDice70",
                90: "nnUNetTrainerTopKDice90",
            },
            "paper": {50: "nnUNetTrainerTopKDicePaper", 30: "nnUNetTrainerTopKDice30Paper"},
            "demo": {50: "nnUNetTrainerTopKDiceDemo", 30: "nnUNetTrainerTopKDice30Demo"},
        },
    }
)

# The ablation control (not a row of the paper): the paper's loss with nothing excluded. Against "CE +
# topK-Dice" it isolates the selection; against "CE + Dice" it shows what the squared denominator and the
# mean over present classes alone do. Same shape as PAPER_ROWS, so paper_trainer() and the pipeline name it
# like a paper row.
CONTROL_ROW = "CE + topK-Dice (k=100)"
CONTROL_ROWS: RowTable = _read_only(
    {
        CONTROL_ROW: {
            "nnunet": {None: "nnUNetTrainerTopKDice100"},
            "paper": {None: "nnUNetTrainerTopKDice100Paper"},
            "demo": {None: "nnUNetTrainerTopKDice100Demo"},
        },
    }
)

# Every row paper_trainer() knows: the paper's, then the control.
ALL_ROWS: RowTable = MappingProxyType({**PAPER_ROWS, **CONTROL_ROWS})


def paper_trainer(row: str, schedule: str = "nnunet", k: int = 50) -> str:
    """The trainer name for one row of the paper's tables (or the control row) under one schedule.

    ``k`` (percent kept) matters only for the topK rows and is ignored for the others, the control
    :data:`CONTROL_ROW` (always k=100) included.

    Example:
        >>> paper_trainer("CE + topK-Dice", "paper", k=30)
        'nnUNetTrainerTopKDice30Paper'
        >>> paper_trainer("CE", "demo", k=30)
        'nnUNetTrainerCEDemo'
        >>> paper_trainer(CONTROL_ROW, "demo", k=30)
        'nnUNetTrainerTopKDice100Demo'

    Raises:
        ValueError: unknown row or schedule, or a k that has no trainer for that row and schedule.
    """
    if row not in ALL_ROWS:
        raise ValueError(f"unknown paper row {row!r}; choose one of {list(ALL_ROWS)}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {list(SCHEDULES)}")
    names = ALL_ROWS[row][schedule]
    if None in names:
        return names[None]
    if k not in names:
        raise ValueError(f"no {schedule!r} trainer for row {row!r} with k={k!r}; available k: {sorted(names)}")
    return names[k]
