"""``topkdice reproduce``: the paper's presets over the comparison engine.

A preset is the dataset's converter in front of :func:`~nnunet_topkdice.pipeline.compare.compare_steps`,
with the paper's protocol: 2d, the paper's fold (``all`` for Synapse and MSSEG, ``0`` for ACDC, whose
converter writes the paper's train/val split as fold 0), evaluation on the test set, the rows of the
paper's table (with the paper's k for the dataset) and its reported rows (``--paper``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from nnunet_topkdice.errors import InputError
from nnunet_topkdice.input_checks import check_dataset_id_free
from nnunet_topkdice.paper_datasets import PAPER_DATASETS, paper_dataset
from nnunet_topkdice.paper_rows import ALL_ROWS, paper_trainer
from nnunet_topkdice.pipeline import commands, state
from nnunet_topkdice.pipeline.compare import CompareConfig
from nnunet_topkdice.pipeline.steps import Command, Step

CONFIGURATION = "2d"  # the paper trains 2D networks on slices
BASELINE_ROW = "CE + Dice"  # nnU-Net's default loss: what every other row is compared with
#: The rows of the paper's Tables 1-3, in its order (``PAPER_ROWS`` may hold more, e.g. controls).
PAPER_TABLE_ROWS: tuple[str, ...] = ("CE", "CE + Dice", "focal + Dice", "topK + Dice", "CE + topK-Dice")


def paper_trainers(dataset: str, schedule: str, rows: Sequence[str] | None = None) -> dict[str, str]:
    """The trainers of the paper's table for a dataset: ``{row name: trainer class name}``.

    Picks the paper's k for the dataset (k=50 for Synapse and ACDC, k=30 for MSSEG) from
    :data:`~nnunet_topkdice.paper_rows.PAPER_ROWS`; ``rows`` limits and orders the rows (default: the paper's
    five). Imports no trainer.

    Raises:
        InputError: unknown dataset, schedule or row.
    """
    k = paper_dataset(dataset).topk_k
    try:
        return {row: paper_trainer(row, schedule, k) for row in rows or PAPER_TABLE_ROWS}
    except ValueError as e:
        raise InputError(str(e)) from None


def every_row_trainer(dataset: str, schedule: str) -> dict[str, str]:
    """``{row: trainer}`` for every row of :data:`~nnunet_topkdice.paper_rows.ALL_ROWS` that has a trainer
    for the dataset's k and the schedule: the paper's rows plus the control row (k=100)."""
    k = paper_dataset(dataset).topk_k
    rows = {}
    for row in ALL_ROWS:
        try:
            rows[row] = paper_trainer(row, schedule, k)
        except ValueError:
            continue  # no trainer of this row for this k and schedule
    return rows


def table_names(dataset: str, schedule: str, trainers: Sequence[str]) -> dict[str, str]:
    """``--trainers``: a trainer of a row keeps the row's name in the table, others their class name."""
    names = {trainer: row for row, trainer in every_row_trainer(dataset, schedule).items()}
    return {names.get(t, t): t for t in dict.fromkeys(trainers)}


def raw_dataset_folder(raw_root: Path, dataset: str, dataset_id: int) -> Path:
    """The converted dataset's folder, the converter's ``DatasetXXX_<Name>`` (already there or still to write).

    Raises:
        InputError: another dataset name already uses the id in ``raw_root``: the converter refuses it too
            (the same check), and every later step would work on that other dataset.
    """
    folder = raw_root / f"Dataset{dataset_id:03d}_{paper_dataset(dataset).name}"
    check_dataset_id_free(raw_root, folder.name)
    return folder


def convert_step(dataset: str, source: Path | None, config: CompareConfig) -> Step:
    """``topkdice convert`` into nnU-Net's raw folder, done when the dataset.json is there."""

    def done() -> str | None:
        return "already converted" if (config.raw_dataset / "dataset.json").is_file() else None

    def command() -> Command:
        if source is None:
            raise InputError(f"dataset {config.dataset_id} is not in {config.folders.raw} yet: give its source with -i")
        argv = commands.convert_command(dataset, source, config.folders.raw, config.dataset_id, config.num_processes)
        return Command(tuple(argv))

    return Step("convert", f"Converting {dataset} into nnU-Net's raw format", done, command)


def check_source(source: Path | None, config: CompareConfig) -> None:
    """Refuse a missing ``-i`` while the dataset is not converted yet.

    Raises:
        InputError: no ``-i`` or not a folder.
    """
    if (config.raw_dataset / "dataset.json").is_file():
        return
    if source is None:
        raise InputError(f"dataset {config.dataset_id} is not in {config.folders.raw} yet: give its source with -i")
    if not source.is_dir():
        raise InputError(f"-i {source}: not a folder")


def reproduce_config(
    dataset: str,
    *,
    workdir: Path,
    folders: state.NnunetFolders,
    trainers: dict[str, str],
    dataset_id: int | None = None,
    fold: str | None = None,
    seeds: tuple[int, ...] = (0,),
    device: str = "cuda",
    num_processes: int = 1,
    num_gpus: int = 1,
    paper: str | None = "",
    target_difference: float | None = None,
    train_env: dict[str, str] | None = None,
    extra_env: dict[str, str] | None = None,
) -> CompareConfig:
    """The comparison of the paper's protocol on one of its datasets: the test set of the paper's fold,
    CE + Dice as the baseline when it is one of ``trainers`` (else the first), the paper's reported rows
    of the dataset (``paper=""``) or none (``paper=None``).

    A numeric ``fold`` must be one of the split's: the dataset's ``splits_final.json`` where it is on disk,
    else the one its converter writes (:attr:`~nnunet_topkdice.paper_datasets.PaperDataset.split_folds`);
    :func:`~nnunet_topkdice.pipeline.plan.resolve_plan` refuses it before anything runs.

    Raises:
        InputError: another dataset name uses the id in ``folders.raw`` (:func:`raw_dataset_folder`).
    """
    info = PAPER_DATASETS[dataset]
    dataset_id = dataset_id or info.dataset_id
    return CompareConfig(
        dataset_id=dataset_id,
        raw_dataset=raw_dataset_folder(folders.raw, dataset, dataset_id),
        configuration=CONFIGURATION,
        trainers=trainers,
        workdir=workdir,
        folders=folders,
        baseline=BASELINE_ROW if BASELINE_ROW in trainers else None,
        seeds=seeds,
        folds=(fold or info.default_fold,),
        test_set=True,
        split_folds=info.split_folds,
        device=device,
        num_processes=num_processes,
        num_gpus=num_gpus,
        paper=dataset if paper == "" else paper,
        target_difference=target_difference,
        train_env=train_env or {},
        extra_env=extra_env or {},
    )
