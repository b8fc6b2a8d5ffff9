"""The rows of the paper's Tables 1-3 (and the k=100 control) and the trainer that trains each, by name.

Pure data, without nnU-Net or torch: the pipeline names the trainers of ``reproduce`` and ``demo`` from
here without importing them (nnU-Net's trainer module takes seconds to import). The classes themselves are in
:mod:`nnunet_topkdice.trainers.paper_rows`, and ``tests/test_trainers.py`` checks that every name here is
one of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["ALL_ROWS", "CONTROL_ROW", "CONTROL_ROWS", "PAPER_ROWS", "SCHEDULES", "RowTable", "paper_trainer"]

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
