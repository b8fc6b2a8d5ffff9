"""What is already on disk: nnU-Net's folders, datasets, preprocessing, trainings, predictions, evaluations.

Pure look-ups of files (nothing here writes, except :func:`write_splits` and
:func:`link_files`), used by the steps to tell whether they are done.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from nnunet_topkdice.errors import InputError

NNUNET_FOLDER_VARIABLES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
#: nnU-Net's own cross-validation: 5 folds, split with this seed (nnunetv2.utilities.crossval_split).
NNUNET_NUM_FOLDS = 5
NNUNET_SPLIT_SEED = 12345
SPLITS_FILE = "splits_final.json"


@dataclass(frozen=True)
class NnunetFolders:
    """nnU-Net's three data folders, from the environment or, where unset, under a work dir."""

    raw: Path
    preprocessed: Path
    results: Path
    from_environment: tuple[str, ...]  # which variables were already set

    @classmethod
    def resolve(cls, workdir: Path, environ: Mapping[str, str] | None = None) -> NnunetFolders:
        environ = os.environ if environ is None else environ
        paths = {
            var: Path(environ[var]).resolve() if environ.get(var) else (Path(workdir) / var).resolve()
            for var in NNUNET_FOLDER_VARIABLES
        }
        set_vars = tuple(v for v in NNUNET_FOLDER_VARIABLES if environ.get(v))
        return cls(paths["nnUNet_raw"], paths["nnUNet_preprocessed"], paths["nnUNet_results"], set_vars)

    def with_raw(self, raw: Path) -> NnunetFolders:
        """The same folders with ``nnUNet_raw`` at ``raw`` (where an unset variable's dataset was found)."""
        return NnunetFolders(Path(raw).resolve(), self.preprocessed, self.results, self.from_environment)

    def env(self) -> dict[str, str]:
        return {"nnUNet_raw": str(self.raw), "nnUNet_preprocessed": str(self.preprocessed),
                "nnUNet_results": str(self.results)}  # fmt: skip


def seed_results_root(results_root: Path, seed: int) -> Path:
    """Where ``topkdice train --seed S`` keeps its models: one nnU-Net results folder per seed."""
    from nnunet_topkdice.training.layout import seed_results_root as of_training

    return Path(of_training(results_root, seed))


# --- datasets ---------------------------------------------------------------------------------------


def find_dataset(root: Path, dataset_id: int) -> Path | None:
    """The ``DatasetXXX_Name`` folder of ``dataset_id`` under ``root``, or None.

    Raises:
        InputError: two folders share the id (nnU-Net would refuse them too).
    """
    matches = sorted(p for p in Path(root).glob(f"Dataset{dataset_id:03d}_*") if p.is_dir())
    if len(matches) > 1:
        raise InputError(f"several datasets with id {dataset_id} in {root}: {', '.join(p.name for p in matches)}")
    return matches[0] if matches else None


#: Where nnU-Net's raw folder is looked for when ``nnUNet_raw`` is unset: the current folder's ``nnUNet_raw``.
LOCAL_RAW = Path("nnUNet_raw")


def raw_roots(folders: NnunetFolders, local: Path = LOCAL_RAW) -> list[Path]:
    """The ``nnUNet_raw`` folders a dataset is looked for in, in order: the variable's folder when it is set;
    otherwise ``./nnUNet_raw``, then the work dir's (``folders.raw``)."""
    if "nnUNet_raw" in folders.from_environment:
        return [folders.raw]
    return list(dict.fromkeys([Path(local).resolve(), folders.raw]))


def locate_raw_dataset(
    folders: NnunetFolders, dataset_id: int, name: str | None = None, local: Path = LOCAL_RAW
) -> tuple[NnunetFolders, Path | None]:
    """Find a raw dataset and make ``nnUNet_raw`` of every command the folder it was found in.

    Returns:
        ``(folders, dataset)``: ``folders.raw`` is the first of :func:`raw_roots` holding the dataset (with
        a ``dataset.json``), ``dataset`` its ``DatasetXXX_Name`` folder; ``(folders, None)`` unchanged when
        no root holds it.
    Raises:
        InputError: two folders share the id in one root.
    """
    for root in raw_roots(folders, local):
        dataset = root / name if name else find_dataset(root, dataset_id)
        if dataset is not None and (dataset / "dataset.json").is_file():
            return folders.with_raw(root), dataset
    return folders, None


def parse_dataset(text: str) -> tuple[int, str | None]:
    """``"4"`` -> ``(4, None)``; ``"Dataset004_Hippocampus"`` -> ``(4, "Dataset004_Hippocampus")``.

    Raises:
        InputError: neither an id in [1, 999] nor a ``DatasetXXX_Name``.
    """
    if text.isdigit() and 1 <= int(text) <= 999:
        return int(text), None
    if text.startswith("Dataset") and text[7:10].isdigit() and text[10:11] == "_" and len(text) > 11:
        return int(text[7:10]), text
    raise InputError(f"-d {text!r}: expected a dataset id (1-999) or a name like Dataset004_Hippocampus")


def list_case_ids(images_dir: Path, file_ending: str) -> list[str]:
    """Case ids of an nnU-Net images folder (files ``<case>_0000<file_ending>``)."""
    suffix = "_0000" + file_ending
    return sorted(p.name.removesuffix(suffix) for p in Path(images_dir).glob("*" + suffix))


def list_label_ids(labels_dir: Path, file_ending: str) -> list[str]:
    """Case ids of an nnU-Net labels folder (files ``<case><file_ending>``)."""
    return sorted(p.name.removesuffix(file_ending) for p in Path(labels_dir).glob("*" + file_ending))


# --- preprocessing ----------------------------------------------------------------------------------


def plans_configurations(plans_file: Path) -> dict[str, str]:
    """Configuration name -> data identifier (the preprocessed folder's name) of an nnU-Net plans file.

    A configuration that ``inherits_from`` another takes its data identifier when it has none.
    """
    configurations = json.loads(Path(plans_file).read_text())["configurations"]

    def identifier(name: str) -> str:
        config = configurations[name]
        if "data_identifier" in config:
            return config["data_identifier"]
        return identifier(config["inherits_from"])

    return {name: identifier(name) for name in configurations}


def preprocessing_complete(preprocessed_dataset: Path, plans: str, configuration: str, num_training: int) -> bool:
    """True when the plans file exists and every training case was preprocessed for the configuration.

    nnU-Net writes a ``.pkl`` of properties per case, after its arrays, so counting them tells whether an
    interrupted preprocessing finished.

    Raises:
        InputError: the plans file has no such configuration.
    """
    plans_file = Path(preprocessed_dataset) / f"{plans}.json"
    if not plans_file.is_file():
        return False
    configurations = plans_configurations(plans_file)
    if configuration not in configurations:
        raise InputError(
            f"configuration {configuration!r} is not in {plans_file} (it has: {', '.join(configurations)})"
        )
    data_dir = Path(preprocessed_dataset) / configurations[configuration]
    return data_dir.is_dir() and len(list(data_dir.glob("*.pkl"))) >= num_training


# --- cross-validation splits --------------------------------------------------------------------------


def read_splits(preprocessed_dataset: Path) -> list[dict[str, list[str]]] | None:
    """nnU-Net's ``splits_final.json`` of a dataset (a list of ``{"train": [...], "val": [...]}``), or None."""
    path = Path(preprocessed_dataset) / SPLITS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def nnunet_split(case_ids: Sequence[str]) -> list[dict[str, list[str]]]:
    """The 5-fold split nnU-Net itself writes on its first training (same function, same seed)."""
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    return generate_crossval_split(sorted(case_ids), seed=NNUNET_SPLIT_SEED, n_splits=NNUNET_NUM_FOLDS)


def write_splits(preprocessed_dataset: Path, splits: Sequence[Mapping[str, Sequence[str]]]) -> Path:
    """Write ``splits_final.json`` (a temporary name first, then renamed).

    Writing nnU-Net's split before the trainings start lets several of them start at once (on a cluster)
    without racing to create it.
    """
    path = Path(preprocessed_dataset) / SPLITS_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps([{key: list(cases) for key, cases in split.items()} for split in splits], indent=4))
    tmp.replace(path)
    return path


def check_folds(folds: Iterable[str], n_folds: int, split: str = f"the dataset's {SPLITS_FILE}") -> None:
    """Refuse a numeric fold that a split of ``n_folds`` folds does not have: nnU-Net would not refuse it but
    train it on a random 80:20 split of the cases (``nnUNetTrainer.do_split``). Fold ``all`` needs no split.

    Raises:
        InputError: naming the fold, ``split`` and the folds it has.
    """
    for fold in folds:
        if fold != "all" and (not fold.isdigit() or int(fold) >= n_folds):
            has = "no fold" if n_folds == 0 else "1 fold: 0" if n_folds == 1 else f"{n_folds} folds: 0-{n_folds - 1}"
            raise InputError(
                f"fold {fold} is not in {split} ({has}); nnU-Net would train it on a random 80:20 split of the "
                "cases instead"
            )


def validation_cases(splits: Sequence[Mapping[str, Sequence[str]]], folds: Iterable[str]) -> dict[str, list[str]]:
    """Fold -> its validation case ids (fold ``all`` has none: it trains on every case).

    Raises:
        InputError: a fold that the split file does not have (:func:`check_folds`).
    """
    folds = list(folds)
    check_folds(folds, len(splits))
    return {fold: sorted(splits[int(fold)]["val"]) for fold in folds if fold != "all"}


# --- trainings ----------------------------------------------------------------------------------------


class TrainingStatus(Enum):
    NEW = "new"  # nothing to resume from
    INTERRUPTED = "interrupted"  # a checkpoint to resume from with --c
    DONE = "done"  # checkpoint_final.pth exists


def training_dir(results_dataset: Path, trainer: str, plans: str, configuration: str, fold: str) -> Path:
    """nnU-Net's output folder of one training: ``RESULTS/DatasetXXX/TRAINER__PLANS__CONFIG/fold_F``."""
    return Path(results_dataset) / f"{trainer}__{plans}__{configuration}" / f"fold_{fold}"


def training_status(run_dir: Path) -> TrainingStatus:
    """DONE with ``checkpoint_final.pth``; INTERRUPTED with a checkpoint nnU-Net's ``--c`` resumes
    from (``checkpoint_latest.pth``, else ``checkpoint_best.pth``); NEW otherwise."""
    if (run_dir / "checkpoint_final.pth").is_file():
        return TrainingStatus.DONE
    if (run_dir / "checkpoint_latest.pth").is_file() or (run_dir / "checkpoint_best.pth").is_file():
        return TrainingStatus.INTERRUPTED
    return TrainingStatus.NEW


def missing_files(case_ids: Iterable[str], folder: Path, file_ending: str, newer_than: Path | None = None) -> list[str]:
    """The cases without ``<case><file_ending>`` in ``folder``, or with one older than ``newer_than``
    (a prediction made by an earlier model is stale)."""
    limit = newer_than.stat().st_mtime if newer_than is not None and newer_than.is_file() else 0.0
    missing = []
    for case in case_ids:
        path = Path(folder) / (case + file_ending)
        if not path.is_file() or path.stat().st_mtime < limit:
            missing.append(case)
    return missing


def newest(paths: Iterable[Path]) -> Path | None:
    """The most recently modified of the existing ``paths``, or None."""
    existing = [p for p in paths if p.is_file()]
    return max(existing, key=lambda p: p.stat().st_mtime) if existing else None


# --- collecting files ---------------------------------------------------------------------------------


def link_files(sources: Mapping[str, Path], out_dir: Path) -> None:
    """Make ``out_dir`` hold exactly the files ``sources``: ``out_dir/<name>`` a hard link to
    ``sources[name]``, or a copy across file systems.

    Files already there that are the same file (or an up-to-date copy) are kept; other files are replaced,
    and files that are not in ``sources`` (a case of an earlier run's folds or split) are removed, so that
    the evaluation reads only the cases asked for. ``out_dir`` is the pipeline's own folder.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in _extra_files(sources, out_dir):
        stale.unlink()
    for name, source in sources.items():
        target = out_dir / name
        if _same_content(source, target):
            continue
        tmp = out_dir / f".{name}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copy2(source, tmp)
        tmp.replace(target)


def _same_content(source: Path, target: Path) -> bool:
    if not target.is_file():
        return False
    if os.path.samefile(source, target):
        return True
    s, t = source.stat(), target.stat()
    return s.st_size == t.st_size and s.st_mtime <= t.st_mtime


def _extra_files(sources: Mapping[str, Path], out_dir: Path) -> list[Path]:
    """The files of ``out_dir`` that are not in ``sources`` (hidden ones, such as a copy in progress, aside)."""
    if not out_dir.is_dir():
        return []
    return [p for p in out_dir.iterdir() if p.name not in sources and not p.name.startswith(".") and not p.is_dir()]


def files_linked(sources: Mapping[str, Path], out_dir: Path) -> bool:
    """True when :func:`link_files` has nothing left to do."""
    linked = all(source.is_file() and _same_content(source, out_dir / name) for name, source in sources.items())
    return linked and not _extra_files(sources, out_dir)


# --- evaluations --------------------------------------------------------------------------------------

EVALUATION_FILES: tuple[str, ...] = ("results.json", "table.md", "table.csv", "per_case.csv", "figure.png")
EVALUATION_STAMP = ".topkdice_pipeline.json"  # what the evaluation in a folder was run on


def evaluation_stamp(argv: Sequence[str], folders: Iterable[Path], file_ending: str) -> dict:
    """What makes an evaluation current: its command, the newest file it read and which files those are
    (the same command reads other cases when the folds asked for change).

    ``folders``: the prediction folders and the reference folder the command reads.
    """
    files = sorted(p for folder in folders for p in Path(folder).glob("*" + file_ending))
    newest_mtime = max((p.stat().st_mtime for p in files), default=0.0)
    listing = hashlib.sha256("\n".join(map(str, files)).encode()).hexdigest()
    return {"command": list(argv), "newest_prediction": newest_mtime, "files": listing}


def evaluation_current(out_dir: Path, stamp: dict) -> bool:
    """True when ``out_dir`` holds every output of ``topkdice evaluate`` made from ``stamp``."""
    stamp_file = Path(out_dir) / EVALUATION_STAMP
    if not stamp_file.is_file() or not all((Path(out_dir) / name).is_file() for name in EVALUATION_FILES):
        return False
    try:
        return json.loads(stamp_file.read_text()) == stamp
    except json.JSONDecodeError:
        return False
