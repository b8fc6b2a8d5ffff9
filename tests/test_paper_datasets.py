"""The registry of the paper's datasets: the values SPEC fixes, and that every layer reads the same ones."""

from __future__ import annotations

import argparse

import pytest

from dataset_conversion import cli as conversion_cli
from nnunet_topkdice.errors import InputError
from nnunet_topkdice.evaluation.cli import add_parsers as add_evaluation_parsers
from nnunet_topkdice.evaluation.paper import match_paper_classes
from nnunet_topkdice.paper_datasets import PAPER_DATASET_KEYS, PAPER_DATASETS, PAPER_TABLES, paper_dataset


@pytest.mark.parametrize(
    ("key", "folder", "fold", "split_folds", "k", "labels"),
    [
        ("synapse", "Dataset201_Synapse", "all", None, 50,
         ["spleen", "right_kidney", "left_kidney", "gallbladder", "liver", "stomach", "aorta", "pancreas"]),
        ("acdc", "Dataset202_ACDC", "0", 1, 50, ["RV", "MYO", "LV"]),  # splits_final.json: fold 0 = train/val
        ("msseg", "Dataset203_MSSEG", "all", None, 30, ["lesion"]),
    ],
    ids=["synapse", "acdc", "msseg"],
)  # fmt: skip
def test_spec_values(key: str, folder: str, fold: str, split_folds: int | None, k: int, labels: list[str]) -> None:
    dataset = paper_dataset(key)
    assert (dataset.folder_name, dataset.default_fold, dataset.split_folds, dataset.topk_k) == (
        folder, fold, split_folds, k
    )  # fmt: skip
    assert list(dataset.labels.items()) == [("background", 0), *((name, i) for i, name in enumerate(labels, 1))]
    assert PAPER_TABLES[key].k == k


def test_unknown_key_names_the_choices() -> None:
    with pytest.raises(InputError, match=r"unknown paper dataset 'brats'; choose from synapse, acdc, msseg"):
        paper_dataset("brats")


@pytest.mark.parametrize("key", PAPER_DATASET_KEYS)
def test_converter_labels_match_the_papers_columns(key: str) -> None:
    """What the converter writes into dataset.json is recognised as exactly that paper table's classes."""
    dataset = PAPER_DATASETS[key]
    found_key, mapping = match_paper_classes(list(dataset.label_names))
    assert found_key == key
    assert mapping == dict(dataset.paper_columns)
    assert tuple(mapping.values()) == (PAPER_TABLES[key].class_columns or ("lesion",))  # the paper's order


def test_commands_offer_the_registry_keys(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="topkdice")
    subparsers = parser.add_subparsers(dest="command")
    conversion_cli.add_parsers(subparsers)
    add_evaluation_parsers(subparsers)
    for argv in (["convert", "brats"], ["evaluate", "-r", "r", "-pred", "a", "-d", "1", "-o", "o", "--paper", "x"]):
        with pytest.raises(SystemExit, match="^2$"):  # argparse's usage error
            parser.parse_args(argv)
        err = capsys.readouterr().err
        assert "invalid choice" in err and all(key in err.split("choose from")[1] for key in PAPER_DATASET_KEYS)
    for key in PAPER_DATASET_KEYS:  # each is accepted; the convert default id is the registry's
        assert parser.parse_args(["convert", key, "-i", "x"]).dataset_id == PAPER_DATASETS[key].dataset_id
        argv = ["evaluate", "-r", "r", "-pred", "a", "-d", "1", "-o", "o", "--paper", key]
        assert parser.parse_args(argv).paper == key
