"""A small synthetic abdomen dataset in the Synapse (BTCV) raw layout, for the demo and the tests.

It mimics what makes Synapse hard for a segmentation loss, at a size a laptop CPU trains in
minutes: 30 volumes with the real case ids, the 13 original BTCV labels (so the converter's
relabelling to 8 organs is exercised: the 5 organs it drops become background and act as
look-alike distractors), organs whose sizes differ by two orders of magnitude (a large liver, a
thin aorta, a long thin pancreas, tiny adrenals), organs that appear in only part of the slices,
and intensities that overlap between organs under noise, so position and shape have to be learnt
as well as brightness.

Layout written (the layout :func:`dataset_conversion.synapse.convert` reads)::

    <out_dir>/Training/img/img0001.nii.gz     int16 CT-like volume (Hounsfield-like units)
    <out_dir>/Training/label/label0001.nii.gz uint8 labels 0..13 (original BTCV numbering)
    ... for the 30 ids 0001-0010 and 0021-0040
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_topkdice.errors import InputError, OverwriteRefused

#: The 30 case ids of the Synapse (BTCV) training set: 0001-0010 and 0021-0040.
SYNAPSE_CASE_IDS: tuple[int, ...] = tuple(range(1, 11)) + tuple(range(21, 41))

#: Default size, chosen for the demo's time on a 2-core CPU (several seeds of two trainings): 40x40
#: slices keep nnU-Net's 2d U-Net at 4 stages (64x64 gives 5 stages with a 512-channel bottleneck,
#: over 10x slower per training step), and 4-6 slices per case make nnU-Net's batch size 4 (it caps a
#: batch at 5% of the dataset's voxels); together about half the CPU time per training step of the
#: earlier 48x48 slices and 8-12 slices per case (batch size 9).
DEFAULT_IN_PLANE = 40
DEFAULT_SLICES: tuple[int, int] = (4, 6)

#: Voxel spacing (x, y, z) in mm, SimpleITK order; identical for every case so that nnU-Net's
#: 2d preprocessing does not resample (keeps preprocessing fast and the volumes exact).
SPACING_XYZ: tuple[float, float, float] = (3.0, 3.0, 5.0)


@dataclass(frozen=True)
class Organ:
    """One labelled structure, an ellipsoid in normalised coordinates.

    Coordinates are (z, y, x) in [-1, 1] over the volume; y grows towards the back of the body
    (posterior), x towards the patient's left (image right, radiological view).
    """

    label: int  # original BTCV label
    name: str
    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    intensity: float  # mean value in Hounsfield-like units


# Painted in this order, so later (smaller) organs overwrite earlier ones where they touch.
# Intensities overlap on purpose (liver/spleen/pancreas/adrenals, stomach/gallbladder/esophagus;
# aorta/IVC/portal vein) so that a model also needs position and shape.
ORGANS: tuple[Organ, ...] = (
    Organ(6, "liver", (-0.25, -0.05, -0.45), (0.65, 0.42, 0.32), 60.0),
    Organ(7, "stomach", (-0.35, -0.25, 0.30), (0.45, 0.22, 0.22), 15.0),
    Organ(1, "spleen", (-0.30, 0.30, 0.58), (0.40, 0.20, 0.16), 75.0),
    Organ(2, "right_kidney", (0.25, 0.40, -0.40), (0.40, 0.15, 0.12), 160.0),
    Organ(3, "left_kidney", (0.20, 0.40, 0.40), (0.40, 0.15, 0.12), 160.0),
    Organ(11, "pancreas", (0.05, 0.08, 0.12), (0.25, 0.075, 0.32), 45.0),
    Organ(4, "gallbladder", (0.15, -0.15, -0.30), (0.28, 0.11, 0.10), 5.0),
    Organ(8, "aorta", (0.0, 0.30, 0.06), (1.5, 0.065, 0.065), 200.0),
    Organ(9, "inferior_vena_cava", (0.0, 0.28, -0.14), (1.5, 0.07, 0.06), 140.0),
    Organ(10, "portal_splenic_vein", (-0.05, 0.12, -0.12), (0.15, 0.05, 0.10), 170.0),
    Organ(5, "esophagus", (-0.7, 0.22, 0.10), (0.35, 0.06, 0.06), 25.0),
    Organ(12, "right_adrenal_gland", (-0.15, 0.32, -0.30), (0.15, 0.05, 0.05), 50.0),
    Organ(13, "left_adrenal_gland", (-0.15, 0.32, 0.30), (0.15, 0.05, 0.05), 50.0),
)

_BODY_RADII_YX = (0.78, 0.92)
_BODY_HU = -80.0  # fat-like soft tissue: the background inside the body
_AIR_HU = -1000.0
_SPINE = ((0.52, 0.0), (0.14, 0.14), 500.0)  # bone behind the aorta, unlabelled: a bright distractor


def _ellipsoid(grid: tuple[np.ndarray, np.ndarray, np.ndarray], center: np.ndarray, radii: np.ndarray) -> np.ndarray:
    z, y, x = grid
    return ((z - center[0]) / radii[0]) ** 2 + ((y - center[1]) / radii[1]) ** 2 + (
        (x - center[2]) / radii[2]
    ) ** 2 <= 1.0


def generate_case(
    case_id: int, *, in_plane: int = DEFAULT_IN_PLANE, num_slices: int = DEFAULT_SLICES[1], seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic volume and its labels, deterministically from (seed, case_id).

    Each case jitters every organ's position (about 5 % of the field of view) and size (+-15 %),
    varies the overall brightness, and adds Gaussian noise and a smooth bias field.

    Returns:
        image: (num_slices, in_plane, in_plane) int16, Hounsfield-like values.
        label: (num_slices, in_plane, in_plane) uint8, values in 0..13 (original BTCV labels).

    Raises:
        ValueError: in_plane < 16 or num_slices < 4 (the organs would vanish).
    """
    if in_plane < 16 or num_slices < 4:
        raise ValueError(f"need in_plane >= 16 and num_slices >= 4, got {in_plane!r} and {num_slices!r}")
    rng = np.random.default_rng([seed, case_id])
    grid = np.meshgrid(
        np.linspace(-1, 1, num_slices),
        np.linspace(-1, 1, in_plane),
        np.linspace(-1, 1, in_plane),
        indexing="ij",
    )
    _, y, x = grid
    label = np.zeros((num_slices, in_plane, in_plane), dtype=np.uint8)
    mean = np.full(label.shape, _AIR_HU, dtype=np.float32)

    body_scale = rng.uniform(0.93, 1.03)
    body = (y / (_BODY_RADII_YX[0] * body_scale)) ** 2 + (x / (_BODY_RADII_YX[1] * body_scale)) ** 2 <= 1.0
    mean[body] = _BODY_HU
    (spine_y, spine_x), (spine_ry, spine_rx), spine_hu = _SPINE
    mean[((y - spine_y) / spine_ry) ** 2 + ((x - spine_x) / spine_rx) ** 2 <= 1.0] = spine_hu

    shift = rng.normal(0.0, 0.04, size=3)  # the whole abdomen moves a little
    for organ in ORGANS:
        center = np.asarray(organ.center) + shift + rng.normal(0.0, 0.03, size=3)
        radii = np.asarray(organ.radii) * body_scale * rng.uniform(0.85, 1.15, size=3)
        mask = _ellipsoid(grid, center, radii) & body
        label[mask] = organ.label
        mean[mask] = organ.intensity + rng.normal(0.0, 8.0)

    # A smooth bias field and a global offset (scanner and contrast-phase differences), then noise.
    bias = 20.0 * np.sin(np.pi * (x * rng.uniform(0.3, 0.8) + rng.uniform(0, 2)))
    image = mean + np.where(body, bias + rng.normal(0.0, 10.0), 0.0)
    image += rng.normal(0.0, 30.0, size=image.shape)
    return np.clip(np.round(image), -1024, 3071).astype(np.int16), label


def _write_nifti(array_zyx: np.ndarray, path: Path) -> None:
    import SimpleITK as sitk

    itk_image = sitk.GetImageFromArray(array_zyx)
    itk_image.SetSpacing(SPACING_XYZ)
    itk_image.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(itk_image, str(path), useCompression=True)


def generate_synapse_like(
    out_dir: Path,
    *,
    in_plane: int = DEFAULT_IN_PLANE,
    num_slices: tuple[int, int] = DEFAULT_SLICES,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write the 30-case synthetic dataset in Synapse's raw layout (see the module docstring).

    The slice count of each case is drawn in ``num_slices`` (inclusive), like the varying scan
    lengths of the real data. Files are written into a temporary folder next to ``out_dir`` that
    is renamed into place at the end, so an interrupted run leaves nothing half-written.

    Args:
        out_dir: the folder that receives ``Training/img`` and ``Training/label``.
        in_plane: in-plane size in voxels (square slices).
        num_slices: (min, max) number of slices per case.
        seed: the dataset is a pure function of the seed and the sizes.
        overwrite: replace an existing ``out_dir``.
        progress: show a progress bar on stderr.

    Returns:
        ``out_dir``.

    Raises:
        InputError: ``out_dir`` exists and ``overwrite`` is False, or the sizes are too small.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise OverwriteRefused(f"{out_dir} already exists")
    low, high = num_slices
    if not 4 <= low <= high or in_plane < 16:
        raise InputError(f"need 4 <= min <= max slices and in_plane >= 16, got {num_slices!r} and {in_plane!r}")
    slice_rng = np.random.default_rng(seed)
    slices_per_case = slice_rng.integers(low, high + 1, size=len(SYNAPSE_CASE_IDS))

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (tmp_dir / "Training" / "img").mkdir(parents=True)
        (tmp_dir / "Training" / "label").mkdir(parents=True)
        cases = list(zip(SYNAPSE_CASE_IDS, slices_per_case, strict=True))
        for case_id, n_slices in tqdm(cases, desc="Generating synthetic cases", unit="case", disable=not progress):
            image, label = generate_case(case_id, in_plane=in_plane, num_slices=int(n_slices), seed=seed)
            _write_nifti(image, tmp_dir / "Training" / "img" / f"img{case_id:04d}.nii.gz")
            _write_nifti(label, tmp_dir / "Training" / "label" / f"label{case_id:04d}.nii.gz")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp_dir.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return out_dir
