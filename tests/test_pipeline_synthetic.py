"""The demo's synthetic dataset: Synapse's raw layout, accepted by the Synapse converter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dataset_conversion import synapse
from nnunet_topkdice.errors import InputError
from nnunet_topkdice.pipeline.synthetic import (
    DEFAULT_IN_PLANE,
    DEFAULT_SLICES,
    ORGANS,
    SYNAPSE_CASE_IDS,
    generate_case,
    generate_synapse_like,
)


def test_case_ids_are_synapses() -> None:
    assert len(SYNAPSE_CASE_IDS) == 30
    assert {f"case{i:04d}" for i in SYNAPSE_CASE_IDS} == set(synapse.TRAIN_CASES) | set(synapse.TEST_CASES)


def test_every_original_label_is_drawn_at_demo_size() -> None:
    # (6, 40, 40) volume: all 13 BTCV labels present, so the converter's relabelling is exercised.
    image, label = generate_case(1, in_plane=DEFAULT_IN_PLANE, num_slices=DEFAULT_SLICES[1])
    assert image.shape == label.shape == (DEFAULT_SLICES[1], DEFAULT_IN_PLANE, DEFAULT_IN_PLANE)
    assert (image.dtype, label.dtype) == (np.int16, np.uint8)
    counts = np.bincount(label.ravel(), minlength=14)
    assert counts.size == 14 and (counts > 0).all()
    assert sorted(o.label for o in ORGANS) == list(range(1, 14))


def test_organ_sizes_are_imbalanced() -> None:
    # The imbalance the paper is about, in voxels summed over the 30 cases: the liver (6) is over 20x the
    # gallbladder (4) and 10x the thin aorta (8); the background is over 10x all organs together.
    counts = sum(np.bincount(generate_case(i)[1].ravel(), minlength=14) for i in SYNAPSE_CASE_IDS)
    assert counts[6] > 20 * counts[4] > 0
    assert counts[6] > 10 * counts[8] > 0
    assert counts[0] > 10 * counts[1:].sum()


def test_organs_differ_in_intensity_from_the_background() -> None:
    image, label = generate_case(21, in_plane=DEFAULT_IN_PLANE, num_slices=DEFAULT_SLICES[1])
    body_background = image[(label == 0) & (image > -500)]
    assert abs(image[label == 6].mean() - body_background.mean()) > 60  # liver vs fat, noise sd 30


def test_generation_is_deterministic() -> None:
    first = generate_case(7, num_slices=8, seed=3)
    second = generate_case(7, num_slices=8, seed=3)
    other = generate_case(7, num_slices=8, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    assert not np.array_equal(first[0], other[0])


def test_generate_case_rejects_tiny_volumes() -> None:
    with pytest.raises(ValueError, match="need in_plane >= 16"):
        generate_case(1, in_plane=8)


def test_layout_is_accepted_by_the_synapse_converter(tmp_path: Path) -> None:
    src = generate_synapse_like(tmp_path / "src", in_plane=24, num_slices=(4, 6))
    img = sorted(p.name for p in (src / "Training" / "img").iterdir())
    lab = sorted(p.name for p in (src / "Training" / "label").iterdir())
    assert img == [f"img{i:04d}.nii.gz" for i in SYNAPSE_CASE_IDS]
    assert lab == [f"label{i:04d}.nii.gz" for i in SYNAPSE_CASE_IDS]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no temporary folder left

    dataset = synapse.convert(src, tmp_path / "raw", dataset_id=990)
    assert dataset == tmp_path / "raw" / "Dataset990_Synapse"
    assert len(list((dataset / "imagesTr").iterdir())) == 18
    assert len(list((dataset / "imagesTs").iterdir())) == len(list((dataset / "labelsTs").iterdir())) == 12
    assert json.loads((dataset / "dataset.json").read_text())["numTraining"] == 18
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(dataset / "labelsTr" / "case0005.nii.gz")))
    assert set(np.unique(label)) <= set(range(9))


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    with pytest.raises(InputError, match=rf"^{tmp_path / 'src'} already exists; pass overwrite=True to replace it$"):
        generate_synapse_like(tmp_path / "src")  # no command has an --overwrite for it
