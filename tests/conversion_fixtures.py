"""Tiny synthetic datasets in the exact raw layouts of Synapse, ACDC and MSSEG-2016.

The real case ids and file names are used, volumes are tiny, and every case has its own spacing,
origin and (non-identity) direction so that the tests can tell whether geometry is preserved. Label
volumes contain every original label value so that remapping can be checked voxel by voxel.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dataset_conversion import acdc, msseg, synapse

SHAPE = (8, 16, 16)  # numpy order (z, y, x)

# MSSEG-2016's real patient codes (first two digits = centre).
MSSEG_CODES = (
    "01016SACH", "01038PAGU", "01039VITE", "01040VANE", "01042GULE",
    "07001MOEL", "07003SATH", "07010NABO", "07040DORE", "07043SEME",
    "08002CHJE", "08027SYBR", "08029IVDI", "08031SEVE", "08037ROGU",
)  # fmt: skip

# Distinct constant intensity per modality, so that channel order can be read back from the output.
MSSEG_CONSTANTS = {"FLAIR": 10.0, "T1": 20.0, "T2": 30.0, "DP": 40.0, "GADO": 50.0}


def geometry(index: int) -> dict:
    """Per-case spacing, origin and a rotated, flipped direction (x, y, z order, as SimpleITK)."""
    angle = 0.1 + 0.05 * index
    c, s = np.cos(angle), np.sin(angle)
    direction = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, -1.0)
    return {
        "spacing": (0.7 + 0.01 * index, 0.8 + 0.02 * index, 2.5 + 0.1 * index),
        "origin": (-100.0 + index, 50.5 - 2 * index, 12.25 + 3 * index),
        "direction": direction,
    }


def write_image(path: Path, array: np.ndarray, geom: dict) -> Path:
    """Write ``array`` (numpy z, y, x order) with the given geometry as NIfTI (a new file, see :func:`linked_copy`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(geom["spacing"])
    image.SetOrigin(geom["origin"])
    image.SetDirection(geom["direction"])
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


def cycling_labels(index: int, n_values: int, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """Every value 0..n_values-1 present, in a case-dependent pattern (uint8)."""
    return ((np.arange(np.prod(shape)) + 7 * index) % n_values).reshape(shape).astype(np.uint8)


def intensity(index: int, shape: tuple[int, ...] = SHAPE, dtype: type = np.int16) -> np.ndarray:
    rng = np.random.default_rng(index)
    return rng.integers(-100, 300, size=shape).astype(dtype)


def make_synapse(root: Path, shape: tuple[int, ...] = SHAPE) -> Path:
    """``root/Training/{img,label}`` for the 30 cases; labels hold all of 0..13. Returns ``root``."""
    for case_id in (*synapse.TRAIN_CASES, *synapse.TEST_CASES):
        number = int(synapse.case_number(case_id))
        geom = geometry(number)
        write_image(root / "Training" / "img" / f"img{number:04d}.nii.gz", intensity(number, shape), geom)
        labels = cycling_labels(number, 14, shape)
        write_image(root / "Training" / "label" / f"label{number:04d}.nii.gz", labels, geom)
    return root


def acdc_frames(patient_number: int) -> tuple[int, int]:
    """(ED, ES) used by the fixture: ED 1, ES between 8 and 17 (both one and two digits appear)."""
    return 1, 8 + patient_number % 10


def make_acdc(root: Path, shape: tuple[int, ...] = (4, 12, 12)) -> Path:
    """``root/training/patientXXX`` for the 100 training patients. Returns ``root``.

    Each folder has a realistic Info.cfg, the ED and ES frames with ground truth (labels 0..3), and one
    unreferenced frame (which the converter must ignore).
    """
    for number in range(1, 101):
        patient = f"patient{number:03d}"
        folder = root / "training" / patient
        folder.mkdir(parents=True, exist_ok=True)
        ed, es = acdc_frames(number)
        (folder / "Info.cfg").write_text(
            f"ED: {ed}\nES: {es}\nGroup: DCM\nHeight: 184.0\nNbFrame: 30\nWeight: 95.0\n"
        )
        geom = geometry(number % 20)
        for frame in (ed, es):
            stem = f"{patient}_frame{frame:02d}"
            write_image(folder / f"{stem}.nii.gz", intensity(number * 100 + frame, shape, np.float32), geom)
            write_image(folder / f"{stem}_gt.nii.gz", cycling_labels(number + frame, 4, shape), geom)
        write_image(folder / f"{patient}_frame05.nii.gz", intensity(number, shape, np.float32), geom)
    return root


MSSEG_PATIENT_FOLDERS = ("01", "02", "03", "04", "05")  # Training/Center_XX/Patient_<name>, as published


def msseg_cases(layout: str, patient_names: tuple[str, ...] = MSSEG_PATIENT_FOLDERS) -> dict[str, str]:
    """The fixture's case ids -> centre for a layout (``"Pre-processed"`` or ``"Training"``).

    ``patient_names``: the five ``Patient_<name>`` folders of each centre in the ``Training`` layout.
    """
    if layout == msseg.LAYOUT_PREPROCESSED:
        return {code: code[:2] for code in MSSEG_CODES}
    return {f"center{c}_patient{name}": c for c in msseg.EXPECTED_CENTRES for name in patient_names}


def msseg_consensus(index: int, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """Consensus in {0, 1} as float32, like the real masks."""
    return (cycling_labels(index, 5, shape) == 0).astype(np.float32)


def make_msseg(
    root: Path,
    layout: str,
    shape: tuple[int, ...] = SHAPE,
    patient_names: tuple[str, ...] = MSSEG_PATIENT_FOLDERS,
) -> dict[str, tuple[Path, ...]]:
    """MSSEG-2016 in one layout under ``root``; returns case id -> (5 modality files, consensus)."""
    files = {}
    for index, (case_id, centre) in enumerate(msseg_cases(layout, patient_names).items()):
        geom = geometry(index)
        if layout == msseg.LAYOUT_PREPROCESSED:
            image_dir = root / "Pre-processed" / case_id
            consensus = root / "ManualSegmentation" / case_id / "Consensus.nii.gz"
        else:
            patient_dir = root / "Training" / f"Center_{centre}" / f"Patient_{case_id.split('_patient', 1)[1]}"
            image_dir = patient_dir / "Preprocessed_Data"
            consensus = patient_dir / "Masks" / "Consensus.nii.gz"
        images = tuple(
            write_image(
                image_dir / f"{m}_preprocessed.nii.gz", np.full(shape, MSSEG_CONSTANTS[m], np.float32), geom
            )
            for m in msseg.MODALITIES
        )
        write_image(consensus, msseg_consensus(index, shape), geom)
        files[case_id] = (*images, consensus)
    return files


def linked_copy(src: Path, dst: Path) -> Path:
    """A copy of the tree ``src`` at ``dst`` whose files are hard links: fast, and safe for a test that
    replaces or deletes files (:func:`write_image`, :func:`truncate`, ``unlink``) but never writes into one."""
    return Path(shutil.copytree(src, dst, copy_function=os.link))


def truncate(path: Path, n_bytes: int) -> None:
    """Replace ``path`` by its first ``n_bytes`` bytes (a broken download)."""
    data = path.read_bytes()[:n_bytes]
    path.unlink()
    path.write_bytes(data)


def stems(folder: Path, suffix: str) -> list[str]:
    """The sorted names of the files in ``folder`` up to ``suffix`` (each name once)."""
    return sorted({p.name.split(suffix)[0] for p in folder.iterdir()})


def read_geometry(path: Path) -> tuple:
    image = sitk.ReadImage(str(path))
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def read_array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def acdc_case_ids(patients: tuple[str, ...]) -> list[str]:
    """The fixture's case ids (both frames) of ``patients``, sorted."""
    return sorted(
        acdc.frame_case_id(p, frame)
        for p in patients
        for frame in acdc_frames(int(p.removeprefix("patient")))
    )


def assert_geometry_close(label: Path, image: Path) -> None:
    """Geometry of a re-written file (a label) equals the image's up to NIfTI's float32 header precision.

    SimpleITK writes the image's geometry; a rotated direction read back from a NIfTI quaternion can move
    by ~1e-8, which nnU-Net (np.allclose) treats as equal.
    """
    (label_size, *label_geometry), (image_size, *image_geometry) = read_geometry(label), read_geometry(image)
    assert label_size == image_size
    for a, b in zip(label_geometry, image_geometry, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
