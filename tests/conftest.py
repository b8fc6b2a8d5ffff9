"""Fixtures shared by the test modules that run nnU-Net end to end."""

from __future__ import annotations

import pytest
from nnunet_e2e import BIN, DATASET_ID, TinyDataset, make_dataset, run


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> TinyDataset:
    """12 training and 4 test cases, preprocessed once per test session (the tests only read it)."""
    base = tmp_path_factory.mktemp("tiny_nnunet")
    dataset = TinyDataset(base / "raw", base / "preprocessed", make_dataset(base / "raw"), DATASET_ID)
    # no nnUNet_n_proc_DA here: 0 breaks planning
    env = dataset.environment(base / "unused_results")
    run([BIN / "nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-c", "2d", "-np", "1"], env)
    return dataset
