"""Segmentation metrics per case and class, and the paper's way of averaging them (pure numpy/scipy).

Conventions (also in docs/evaluation.md and in ``results.json["conventions"]``), for one case and class with
``tp``/``fp``/``fn`` voxel counts of the binary masks:

* ``Dice = 2 tp / (2 tp + fp + fn)``, ``IoU = tp / (tp + fp + fn)``, ``Precision = tp / (tp + fp)``,
  ``Recall = tp / (tp + fn)``: fractions in [0, 1]; a metric whose denominator is 0 is NaN (undefined).
* Class absent from both reference and prediction: every metric is NaN, so the case is left out of
  that class's means (nnU-Net's convention).
* Class only in the reference (nothing predicted): Dice 0, IoU 0, Recall 0, Precision NaN, HD95 NaN.
* Class only in the prediction (nothing to find): Dice 0, IoU 0, Precision 0, Recall NaN, HD95 NaN.
* ``HD95`` (mm): the larger of the two directed 95th-percentile distances between the surface voxels of
  the reference and of the prediction (as MONAI's ``compute_hausdorff_distance(percentile=95)``).
  Surface voxels are the mask voxels with a 6-neighbour (4 in 2D) outside the mask or outside the image.
  A surface distance needs two surfaces, so :func:`hausdorff_95` is NaN when either mask is empty;
  :func:`case_metrics` then applies the ``hd95_missing`` policy: ``"diagonal"`` (default) scores a class
  found in only one of reference and prediction with the image diagonal in mm (the largest error
  possible, so a missed organ never improves mHD95), ``"exclude"`` leaves it NaN (out of the means).
* ``NSD`` (normalised surface Dice, Nikolov et al. 2021, tolerance ``tau`` mm, default
  :data:`NSD_TOLERANCE_MM`): on the same surface voxels and distances as HD95, the fraction of the surface
  voxels of both masks whose nearest voxel on the other surface lies within ``tau``,
  ``(|{p in S_pred: d(p, S_ref) <= tau}| + |{r in S_ref: d(r, S_pred) <= tau}|) / (|S_pred| + |S_ref|)``.
  A distance equal to ``tau`` counts (up to floating-point rounding, :data:`NSD_ROUNDING_SLACK`).
  A fraction in [0, 1]; like Dice it is NaN when both masks are empty and 0 when only one is (no
  ``hd95_missing`` policy needed). Equal to MONAI's ``compute_surface_dice(use_subvoxels=False)`` with
  the spacing given; MONAI's ``use_subvoxels=True`` (DeepMind's ``surface-distance``) weights each surface
  element by its area instead of counting voxels, which gives different (in the tests' examples higher)
  values: a ball shifted by one 2 mm voxel scores 0.839 here and 0.941 there at 1 mm.

Means (paper section 3.2): each class over the test cases where its value is defined, then the class
means over the classes that have one (``mDice``, ``mIoU``, ``mPrec.``, ``mRec.``, ``mHD95``, ``mNSD``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Real

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

__all__ = [
    "HD95_MISSING_POLICIES",
    "METRICS",
    "NSD_TOLERANCE_MM",
    "OVERLAP_METRICS",
    "case_metrics",
    "check_nsd_tolerance",
    "class_metrics",
    "hausdorff_95",
    "image_diagonal",
    "normalised_surface_dice",
    "overlap_metrics",
    "paper_means",
    "surface_distances",
    "surface_voxels",
]

OVERLAP_METRICS = ("Dice", "IoU", "Precision", "Recall")
METRICS = (*OVERLAP_METRICS, "HD95", "NSD")
# NSD's default tolerance in mm (the value several challenges use, e.g. the Medical Segmentation Decathlon's
# follow-ups and FLARE); ``topkdice evaluate --nsd-tolerance`` changes it.
NSD_TOLERANCE_MM = 1.0
# relative slack of the NSD comparison ``distance <= tolerance``, far below any gap between grid distances
NSD_ROUNDING_SLACK = 1e-9
# What HD95 is where exactly one of reference and prediction contains the class (see the module docstring).
HD95_MISSING_POLICIES = ("diagonal", "exclude")

ClassValue = int | tuple[int, ...]


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator > 0 else math.nan


def overlap_metrics(tp: int, fp: int, fn: int) -> dict[str, float]:
    """Dice, IoU, precision and recall from voxel counts; NaN where a denominator is 0.

    Returns:
        ``{"Dice", "IoU", "Precision", "Recall"}`` -> float in [0, 1] or NaN.
    Raises:
        ValueError: a count is negative.
    """
    if min(tp, fp, fn) < 0:
        raise ValueError(f"voxel counts must be >= 0, got tp={tp}, fp={fp}, fn={fn}")
    return {
        "Dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "IoU": _ratio(tp, tp + fp + fn),
        "Precision": _ratio(tp, tp + fp),
        "Recall": _ratio(tp, tp + fn),
    }


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face neighbour outside the mask; the image border counts as outside.

    Shape:
        mask: (*spatial) bool, any number of dimensions.  returns: same shape, bool.
    """
    mask = np.asarray(mask, dtype=bool)
    # border_value=0: a mask touching the image border has a surface there (as MONAI and MedPy do)
    eroded = ndimage.binary_erosion(
        mask, structure=ndimage.generate_binary_structure(mask.ndim, 1), border_value=0
    )
    return mask & ~eroded


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    coords = np.nonzero(mask)
    return tuple(slice(int(c.min()), int(c.max()) + 1) for c in coords)


def _spacing_array(spacing: Sequence[float] | None, ndim: int) -> np.ndarray:
    spacing_arr = np.ones(ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    if spacing_arr.shape != (ndim,) or not np.all(spacing_arr > 0):
        raise ValueError(f"spacing must hold {ndim} positive values, got {spacing!r}")
    return spacing_arr


def surface_distances(
    reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """Distances in mm from every surface voxel of each mask to the nearest surface voxel of the other.

    Surface voxels as :func:`surface_voxels`; Euclidean distances between voxel centres scaled by
    ``spacing``. HD95 and NSD are both computed from these.

    Shape:
        reference, prediction: (*spatial) bool, same shape.  spacing: one value per array axis (array
        order, e.g. z, y, x), default 1.  returns: ``(prediction_to_reference, reference_to_prediction)``,
        float64 arrays of shape (n prediction surface voxels,) and (n reference surface voxels,); None if
        either mask is empty.
    Raises:
        ValueError: shapes differ, ``spacing`` has the wrong length or a non-positive value.
    """
    reference = np.asarray(reference, dtype=bool)
    prediction = np.asarray(prediction, dtype=bool)
    if reference.shape != prediction.shape:
        raise ValueError(f"reference {reference.shape} and prediction {prediction.shape} differ in shape")
    spacing_arr = _spacing_array(spacing, reference.ndim)
    if not reference.any() or not prediction.any():
        return None
    # Crop to the union's bounding box: beyond it both masks are empty, which is what erosion assumes
    # outside the array (border_value=0), so the surfaces are unchanged.
    box = _bounding_box(reference | prediction)
    ref_points = np.argwhere(surface_voxels(reference[box])) * spacing_arr
    pred_points = np.argwhere(surface_voxels(prediction[box])) * spacing_arr
    # Exact nearest-surface distances through k-d trees: cost grows with the surface, not the volume.
    pred_to_ref = cKDTree(ref_points).query(pred_points, k=1)[0]
    ref_to_pred = cKDTree(pred_points).query(ref_points, k=1)[0]
    return pred_to_ref, ref_to_pred


def _hd_from_distances(distances: tuple[np.ndarray, np.ndarray] | None, percentile: float) -> float:
    if distances is None:
        return math.nan
    pred_to_ref, ref_to_pred = distances
    return float(max(np.percentile(pred_to_ref, percentile), np.percentile(ref_to_pred, percentile)))


def _nsd_from_distances(
    distances: tuple[np.ndarray, np.ndarray] | None, n_reference: int, n_prediction: int, tolerance: float
) -> float:
    if distances is None:  # an empty mask: NaN when both are empty, else 0 (as Dice)
        return math.nan if n_reference == 0 and n_prediction == 0 else 0.0
    pred_to_ref, ref_to_pred = distances
    # a distance equal to the tolerance counts; the slack absorbs rounding of spacing products
    # (0.6 * 5 = 3.0000000000000004), which MONAI's float32 distances absorb too
    limit = tolerance + NSD_ROUNDING_SLACK * max(tolerance, 1.0)
    within = np.count_nonzero(pred_to_ref <= limit) + np.count_nonzero(ref_to_pred <= limit)
    return float(within) / float(pred_to_ref.size + ref_to_pred.size)


def check_nsd_tolerance(tolerance: float) -> float:
    """``tolerance`` as a float.

    Raises:
        ValueError: not a finite number >= 0 (mm).
    """
    if isinstance(tolerance, bool) or not isinstance(tolerance, Real) or not 0 <= tolerance < math.inf:
        raise ValueError(f"nsd_tolerance must be a finite number of mm >= 0, got {tolerance!r}")
    return float(tolerance)


def hausdorff_95(
    reference: np.ndarray,
    prediction: np.ndarray,
    spacing: Sequence[float] | None = None,
    percentile: float = 95.0,
) -> float:
    """Symmetric percentile Hausdorff distance between the surfaces of two binary masks, in mm.

    ``max(P95(d(pred surface -> ref surface)), P95(d(ref surface -> pred surface)))`` with Euclidean
    distances scaled by ``spacing`` and linear interpolation between ranks (``numpy.percentile``).

    Shape:
        reference, prediction: (*spatial) bool, same shape.  spacing: one value per array axis
        (array order, e.g. z, y, x), default 1.  returns: float >= 0, NaN if either mask is empty.
    Raises:
        ValueError: shapes differ, ``spacing`` has the wrong length or a non-positive value,
        ``percentile`` not in [0, 100].
    """
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile!r}")
    return _hd_from_distances(surface_distances(reference, prediction, spacing), percentile)


def normalised_surface_dice(
    reference: np.ndarray,
    prediction: np.ndarray,
    spacing: Sequence[float] | None = None,
    tolerance: float = NSD_TOLERANCE_MM,
) -> float:
    """Normalised surface Dice of two binary masks: the fraction of both surfaces within ``tolerance`` mm
    of the other surface (see the module docstring; the surfaces and distances of :func:`hausdorff_95`).

    Shape:
        reference, prediction: (*spatial) bool, same shape.  spacing: one value per array axis (array
        order), default 1.  tolerance: mm, >= 0.  returns: float in [0, 1]; NaN if both masks are empty,
        0 if exactly one is.
    Raises:
        ValueError: shapes differ, bad ``spacing``, ``tolerance`` negative or not finite.
    Example:
        >>> square = np.zeros((6, 6), bool); square[1:4, 1:4] = True
        >>> normalised_surface_dice(square, np.roll(square, 1, axis=0), tolerance=0.0)  # 4 of 8 + 4 of 8 coincide
        0.5
    """
    check_nsd_tolerance(tolerance)
    reference = np.asarray(reference, dtype=bool)
    prediction = np.asarray(prediction, dtype=bool)
    distances = surface_distances(reference, prediction, spacing)
    return _nsd_from_distances(distances, int(reference.any()), int(prediction.any()), tolerance)


def image_diagonal(shape: Sequence[int], spacing: Sequence[float] | None = None) -> float:
    """Length in mm of the image's diagonal, ``sqrt(sum((shape * spacing) ** 2))`` (the extent of the grid).

    Shape:
        shape: the array shape.  spacing: voxel size per array axis (default 1).  returns: float > 0.
    Raises:
        ValueError: ``spacing`` has the wrong length.
    """
    extent = np.asarray(shape, dtype=np.float64)
    if spacing is not None:
        if len(spacing) != len(shape):
            raise ValueError(f"spacing must hold {len(shape)} values, got {spacing!r}")
        extent = extent * np.asarray(spacing, dtype=np.float64)
    return float(np.sqrt(np.sum(extent**2)))


def class_metrics(
    reference: np.ndarray,
    prediction: np.ndarray,
    spacing: Sequence[float] | None = None,
    valid: np.ndarray | None = None,
    nsd_tolerance: float = NSD_TOLERANCE_MM,
) -> dict[str, float | int]:
    """All metrics of one class in one case, plus the voxel counts they come from.

    Shape:
        reference, prediction: (*spatial) bool masks of the class.  valid: optional (*spatial) bool,
        False for voxels left out of the evaluation (nnU-Net's ignore label).  nsd_tolerance: NSD's
        tolerance in mm.
        returns: ``METRICS`` -> float (NaN when undefined, see the module docstring) and
        ``n_reference``, ``n_prediction``, ``n_overlap`` -> int voxel counts.
    Raises:
        ValueError: shapes differ; bad ``nsd_tolerance``.
    """
    check_nsd_tolerance(nsd_tolerance)
    reference = np.asarray(reference, dtype=bool)
    prediction = np.asarray(prediction, dtype=bool)
    if reference.shape != prediction.shape or (valid is not None and valid.shape != reference.shape):
        raise ValueError(f"masks differ in shape: reference {reference.shape}, prediction {prediction.shape}")
    if valid is not None:
        reference = reference & valid
        prediction = prediction & valid
    n_reference = int(np.count_nonzero(reference))
    n_prediction = int(np.count_nonzero(prediction))
    n_overlap = int(np.count_nonzero(reference & prediction))
    result: dict[str, float | int] = dict(
        overlap_metrics(n_overlap, n_prediction - n_overlap, n_reference - n_overlap)
    )
    distances = surface_distances(reference, prediction, spacing)  # HD95 and NSD share the surfaces
    result["HD95"] = _hd_from_distances(distances, 95.0)
    result["NSD"] = _nsd_from_distances(distances, n_reference, n_prediction, nsd_tolerance)
    result.update(n_reference=n_reference, n_prediction=n_prediction, n_overlap=n_overlap)
    return result


def _class_mask(segmentation: np.ndarray, value: ClassValue) -> np.ndarray:
    if isinstance(value, tuple):  # a region (nnU-Net region-based training): the union of its labels
        return np.isin(segmentation, value)
    return segmentation == value


def case_metrics(
    reference: np.ndarray,
    prediction: np.ndarray,
    classes: Mapping[str, ClassValue],
    spacing: Sequence[float] | None = None,
    ignore_label: int | None = None,
    hd95_missing: str = "diagonal",
    nsd_tolerance: float = NSD_TOLERANCE_MM,
) -> dict[str, dict[str, float | int]]:
    """Metrics of every class of one case.

    Shape:
        reference, prediction: (*spatial) integer label maps of the same shape.
        classes: class name -> label value (or tuple of label values for a region).
        spacing: voxel size per array axis in mm.  ignore_label: reference voxels with this value are
        left out of every metric.  hd95_missing: ``"diagonal"`` or ``"exclude"``, HD95 of a class that
        only one of reference and prediction contains (the image diagonal in mm, or NaN).
        returns: class name -> :func:`class_metrics` result.
    Raises:
        ValueError: shapes differ; unknown ``hd95_missing``.
    """
    if reference.shape != prediction.shape:
        raise ValueError(f"reference {reference.shape} and prediction {prediction.shape} differ in shape")
    if hd95_missing not in HD95_MISSING_POLICIES:
        raise ValueError(f"hd95_missing must be one of {HD95_MISSING_POLICIES}, got {hd95_missing!r}")
    valid = None if ignore_label is None else reference != ignore_label
    diagonal = image_diagonal(reference.shape, spacing)
    result = {}
    for name, value in classes.items():
        metrics = class_metrics(
            _class_mask(reference, value), _class_mask(prediction, value), spacing, valid, nsd_tolerance
        )
        if hd95_missing == "diagonal" and (metrics["n_reference"] == 0) != (metrics["n_prediction"] == 0):
            metrics["HD95"] = diagonal
        result[name] = metrics
    return result


def _nanmean(values: Sequence[float]) -> tuple[float, int]:
    finite = [float(v) for v in values if v is not None and not math.isnan(v)]
    return (math.fsum(finite) / len(finite) if finite else math.nan), len(finite)


def paper_means(
    per_case: Mapping[str, Mapping[str, Mapping[str, float]]],
    class_names: Sequence[str],
    metrics: Sequence[str] = METRICS,
) -> tuple[dict[str, dict[str, float]], dict[str, float], dict[str, dict[str, int]]]:
    """The paper's averaging: each class over the cases (NaN left out), then over the classes.

    Args:
        per_case: case -> class -> metric -> value (NaN or None = undefined).
        class_names: the classes to average, in order.
        metrics: the metric names to average.
    Returns:
        ``(per_class, overall, n_cases)``: class -> metric -> mean over cases; metric -> mean of the class
        means that are defined; class -> metric -> number of cases that entered the class mean.
        A mean over nothing is NaN.
    """
    per_class: dict[str, dict[str, float]] = {}
    n_cases: dict[str, dict[str, int]] = {}
    for name in class_names:
        per_class[name], n_cases[name] = {}, {}
        for metric in metrics:
            values = [case[name][metric] for case in per_case.values() if name in case]
            per_class[name][metric], n_cases[name][metric] = _nanmean(values)
    overall = {metric: _nanmean([per_class[name][metric] for name in class_names])[0] for metric in metrics}
    return per_class, overall, n_cases
