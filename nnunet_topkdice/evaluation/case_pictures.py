"""Pictures of the cases that decide a comparison (``topkdice evaluate --images``).

For every method compared with the baseline, the cases with the largest gains and the largest losses of
the case score (:func:`~nnunet_topkdice.evaluation.statistics.case_scores`: the mean Dice over the
foreground classes, averaged over the repeats) are drawn in one PNG, ``cases/<method>_vs_<baseline>.png``:
a row per case (gains first, largest first; then losses, largest first), columns image / reference /
baseline / method on the slice (array axis 0) where the two predictions disagree most. Labels are coloured
with nnU-Net's overlay colours (:mod:`nnunetv2.utilities.overlay_plots`); in the prediction columns the
errors against the reference are outlined (false positives red, false negatives yellow). A JSON sidecar
with the same stem lists the chosen cases. With several repeats the predictions of the first repeat are
drawn; the title gives both the repeat-averaged and the drawn repeat's Dice.

The images (channel 0, ``<case>_0000<file_ending>``) are checked by :func:`find_case_images` before any
evaluation work starts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from nnunet_topkdice.errors import InputError  # noqa: E402
from nnunet_topkdice.evaluation.label_io import (  # noqa: E402
    SIMPLEITK_READER,
    geometry_differences,
    read_geometry,
    read_image,
    read_label_image,
)
from nnunet_topkdice.evaluation.results import dice_array, nan_to_none  # noqa: E402
from nnunet_topkdice.evaluation.statistics import case_scores  # noqa: E402

__all__ = [
    "CASE_PICTURE_DIR",
    "COLUMNS",
    "N_CASES_EACH",
    "case_image_path",
    "draw_case_picture",
    "find_case_images",
    "picture_stems",
    "select_cases",
    "write_case_pictures",
]

CASE_PICTURE_DIR = "cases"  # beside results.json
N_CASES_EACH = 3  # gains and losses drawn per comparison
COLUMNS = ("image", "reference", "baseline", "method")
FALSE_POSITIVE_COLOUR = "red"
FALSE_NEGATIVE_COLOUR = "yellow"
IMAGE_CHANNEL = "_0000"


def case_image_path(images_dir: Path, case: str, file_ending: str) -> Path:
    """The channel-0 image of a case: ``<images_dir>/<case>_0000<file_ending>``."""
    return Path(images_dir) / f"{case}{IMAGE_CHANNEL}{file_ending}"


def find_case_images(
    images_dir: Path, reference_cases: Mapping[str, Path], file_ending: str, reader_writer: str = SIMPLEITK_READER
) -> dict[str, Path]:
    """Case -> channel-0 image for every reference case, each checked to lie on its reference's voxel grid
    (size, spacing, origin, direction) as nnU-Net's reader sees both (headers only for SimpleITK's formats).

    Args:
        images_dir: the dataset's ``imagesTs`` or ``imagesTr``; images of other cases are ignored.
        reference_cases: case -> reference label file (the evaluated cases).
        file_ending: the dataset's file ending, e.g. ``.nii.gz``.
        reader_writer: nnU-Net's reader for the dataset (a ``.tif`` file's spacing is its ``<case>.json``'s).
    Raises:
        InputError: the folder does not exist; a case has no image (naming the expected file); an image
        cannot be read or is not on its reference's grid (naming both files and what differs).
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise InputError(f"images folder (--images) not found: {images_dir}")
    images = {}
    for case, reference_path in reference_cases.items():
        path = case_image_path(images_dir, case, file_ending)
        if not path.is_file():
            raise InputError(f"no image for case {case!r} in the images folder (--images): {path} is missing")
        image = read_geometry(path, reader_writer, labels=False)
        reference = read_geometry(reference_path, reader_writer)
        problems = geometry_differences(reference, image)
        if image.shape != reference.shape:
            problems.insert(0, f"shape {image.shape} vs {reference.shape}")
        if problems:
            raise InputError(
                f"image {path} of case {case!r} is not on the voxel grid of its reference {reference_path}: "
                + "; ".join(problems)
                + " (image first; pass the images folder of the evaluated cases)"
            )
        images[case] = path
    return images


def _file_safe(text: str) -> str:
    """The same rule as the pipeline's step names: ``"CE + Dice"`` -> ``"CE_+_Dice"``."""
    return "".join(c if c.isalnum() or c in "+-._" else "_" for c in text.strip())


def picture_stems(methods: Sequence[str], baseline: str) -> dict[str, str]:
    """Method -> file stem ``<method>_vs_<baseline>`` (characters other than letters, digits and ``+-._``
    become ``_``) for every method other than ``baseline``; a stem that two names share gets ``_2``, ``_3``."""
    stems: dict[str, str] = {}
    for method in methods:
        if method == baseline:
            continue
        stem = f"{_file_safe(method)}_vs_{_file_safe(baseline)}"
        candidate, n = stem, 1
        while candidate in stems.values():
            n += 1
            candidate = f"{stem}_{n}"
        stems[method] = candidate
    return stems


def select_cases(differences: np.ndarray, n_each: int = N_CASES_EACH) -> tuple[list[int], list[int]]:
    """Indices of the largest gains and the largest losses.

    Shape:
        differences: (n_cases,) float, method - baseline case score, NaN where unpaired.
        returns: ``(gains, losses)``: up to ``n_each`` indices of positive differences, largest first, and
        up to ``n_each`` of negative ones, most negative first; ties keep the case order. Zero and NaN
        differences are never chosen.
    Raises:
        ValueError: ``n_each`` < 1 or ``differences`` not 1-D.
    """
    differences = np.asarray(differences, dtype=np.float64)
    if differences.ndim != 1:
        raise ValueError(f"differences must be 1-D, got shape {differences.shape}")
    if n_each < 1:
        raise ValueError(f"n_each must be >= 1, got {n_each!r}")
    order = np.argsort(-np.nan_to_num(differences, nan=0.0), kind="stable")
    gains = [int(i) for i in order if differences[i] > 0][:n_each]
    order = np.argsort(np.nan_to_num(differences, nan=0.0), kind="stable")
    losses = [int(i) for i in order if differences[i] < 0][:n_each]
    return gains, losses


def _label_values(classes: Sequence[Mapping[str, Any]]) -> list[int]:
    values: set[int] = set()
    for c in classes:
        label = c["label"]
        values.update(label if isinstance(label, (list, tuple)) else [label])
    return sorted(v for v in values if v != 0)


def _overlay(image: np.ndarray, labels: np.ndarray, colours: Mapping[int, np.ndarray], alpha: float = 0.45):
    """RGB in [0, 1]: the grey image with each label value blended in its colour."""
    rgb = np.repeat(image[..., None], 3, axis=-1)
    for value, colour in colours.items():
        mask = labels == value
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * colour
    return rgb


def _window(image: np.ndarray) -> np.ndarray:
    """The slice scaled to [0, 1] between its 0.5th and 99.5th intensity percentiles."""
    low, high = np.percentile(image, [0.5, 99.5])
    if high <= low:
        return np.zeros_like(image, dtype=np.float64)
    return np.clip((image - low) / (high - low), 0.0, 1.0)


def _outline(ax, mask: np.ndarray, colour: str) -> None:
    if mask.any():
        ax.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linewidths=1.0)


def _slice_with_most_disagreement(baseline: np.ndarray, method: np.ndarray, reference: np.ndarray) -> int:
    """The axis-0 slice where the two predictions differ in the most voxels (nnU-Net's
    ``select_slice_to_plot`` on the disagreement); without any, the slice with the most reference
    foreground."""
    from nnunetv2.utilities.overlay_plots import select_slice_to_plot

    disagreement = baseline != method
    if disagreement.any():
        return select_slice_to_plot(None, disagreement)
    return select_slice_to_plot(None, reference)


def _as_volume(array: np.ndarray) -> np.ndarray:
    return array[None] if array.ndim == 2 else array


def _pick_rows(results: Mapping[str, Any], method: str, n_each: int) -> list[dict[str, Any]]:
    """The chosen cases with their case scores: repeat-averaged, and of the first repeat (the one drawn)."""
    cases, class_names = results["cases"], [c["name"] for c in results["classes"]]
    baseline = results["baseline"]
    method_dice = dice_array(results["runs"][method], cases, class_names)
    baseline_dice = dice_array(results["runs"][baseline], cases, class_names)
    method_scores, baseline_scores = case_scores(method_dice), case_scores(baseline_dice)
    method_drawn, baseline_drawn = case_scores(method_dice[:1]), case_scores(baseline_dice[:1])
    differences = method_scores - baseline_scores
    gains, losses = select_cases(differences, n_each)
    return [
        {
            "case": cases[i],
            "kind": kind,
            "difference": float(differences[i]),
            "baseline_dice": float(baseline_scores[i]),
            "method_dice": float(method_scores[i]),
            "baseline_dice_drawn": float(baseline_drawn[i]),
            "method_dice_drawn": float(method_drawn[i]),
        }
        for kind, indices in (("gain", gains), ("loss", losses))
        for i in indices
    ]


def _title(row: Mapping[str, Any], baseline: str, method: str, repeated: bool) -> str:
    head = (
        f"{row['case']} ({row['kind']} {100 * row['difference']:+.2f} points): "
        f"{baseline} Dice {row['baseline_dice']:.3f}, {method} Dice {row['method_dice']:.3f}"
    )
    if repeated:
        head += (
            f"\nmean over the repeats; drawn: repeat 0 (Dice {row['baseline_dice_drawn']:.3f} vs "
            f"{row['method_dice_drawn']:.3f}), slice {row['slice']}"
        )
    else:
        head += f", slice {row['slice']}"
    return head


def _draw_row(axes, row: dict[str, Any], images: Mapping[str, Path], results: Mapping[str, Any], method: str,
              colours: Mapping[int, np.ndarray]) -> None:  # fmt: skip
    """Read the case's files, choose the slice and draw the four panels of one row (adds ``slice`` to
    ``row``)."""
    baseline = results["baseline"]
    ending = results["dataset"]["file_ending"]
    reader = results["dataset"].get("reader_writer") or SIMPLEITK_READER  # the reader the metrics used
    case = row["case"]
    reference_image = read_label_image(Path(results["reference_dir"]) / f"{case}{ending}", reader)
    reference = _as_volume(reference_image.array)
    predictions = [
        _as_volume(read_label_image(Path(results["runs"][name]["prediction_dirs"][0]) / f"{case}{ending}",
                                    reader).array)
        for name in (baseline, method)
    ]  # fmt: skip
    image = _as_volume(read_image(images[case], reader).array)
    index = _slice_with_most_disagreement(*predictions, reference)
    row["slice"] = int(index)

    spacing = reference_image.spacing[-2:]
    aspect = spacing[0] / spacing[1]
    grey = _window(image[index])
    ref_slice = reference[index]
    ignore_label = results["dataset"].get("ignore_label")
    valid = np.ones_like(ref_slice, dtype=bool) if ignore_label is None else ref_slice != ignore_label
    panels = [grey, _overlay(grey, ref_slice, colours)]
    panels += [_overlay(grey, p[index], colours) for p in predictions]
    for column, (ax, panel) in enumerate(zip(axes, panels, strict=True)):
        ax.imshow(panel, cmap="gray" if panel.ndim == 2 else None, vmin=0, vmax=1, aspect=aspect,
                  interpolation="nearest")  # fmt: skip
        ax.set_xticks([])
        ax.set_yticks([])
        if column >= 2:
            prediction = predictions[column - 2][index]
            wrong = (prediction != ref_slice) & valid
            _outline(ax, wrong & (prediction != 0), FALSE_POSITIVE_COLOUR)
            _outline(ax, wrong & (ref_slice != 0), FALSE_NEGATIVE_COLOUR)
    axes[0].set_ylabel(case)


def _legend_handles(classes: Sequence[Mapping[str, Any]], colours: Mapping[int, np.ndarray]) -> list:
    handles = []
    for c in classes:
        label = c["label"]
        if isinstance(label, (list, tuple)):  # a region: its labels keep their own colours
            continue
        if label in colours:
            handles.append(Patch(facecolor=colours[label], label=c.get("column", c["name"])))  # as in the table
    handles.append(Patch(facecolor="none", edgecolor=FALSE_POSITIVE_COLOUR, label="false positive"))
    handles.append(Patch(facecolor="none", edgecolor=FALSE_NEGATIVE_COLOUR, label="false negative"))
    return handles


def draw_case_picture(
    results: Mapping[str, Any],
    method: str,
    images: Mapping[str, Path],
    out_png: Path,
    n_each: int = N_CASES_EACH,
) -> dict[str, Any]:
    """Draw one comparison's picture (see the module docstring) and return what it shows.

    Args:
        results: the dict of ``evaluate_runs`` (``runs``, ``cases``, ``classes``, ``baseline``,
            ``reference_dir``, ``dataset.file_ending``).
        method: a method of ``results["runs"]`` other than the baseline.
        images: case -> channel-0 image (:func:`find_case_images`).
        out_png: the PNG to write.
        n_each: gains and losses drawn (at most; fewer where fewer cases differ).
    Returns:
        ``method``, ``baseline``, ``columns`` (the four column titles), ``axes_shape`` ``[rows, 4]`` of the
        drawn grid (``[0, 0]`` when no case differs), ``n_repeats`` (baseline and method -> count) and
        ``rows``: one dict per drawn case, in order: ``case``, ``kind`` (``gain``/``loss``), ``difference``,
        ``baseline_dice``, ``method_dice`` (repeat-averaged case scores), ``baseline_dice_drawn``,
        ``method_dice_drawn`` (the drawn first repeat's case scores) and ``slice`` (axis-0 index).
    Raises:
        InputError: a file cannot be read.
    """
    from nnunetv2.utilities.overlay_plots import color_cycle, hex_to_rgb

    baseline = results["baseline"]
    rows = _pick_rows(results, method, n_each)
    values = _label_values(results["classes"])
    # nnU-Net's colour cycle without its first entry (black, the background)
    colours = {v: np.array(hex_to_rgb(color_cycle[1 + i % (len(color_cycle) - 1)])) / 255 for i, v in enumerate(values)}
    n_repeats = {name: results["runs"][name]["n_repeats"] for name in (baseline, method)}
    columns = ["image", "reference", f"baseline: {baseline}", f"method: {method}"]
    if not rows:
        fig, ax = plt.subplots(figsize=(8, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, f"no case scores differently for {method} and {baseline}", ha="center", va="center")
        axes_shape = [0, 0]
    else:
        fig = plt.figure(figsize=(13, 3.6 * len(rows) + 1.0), layout="constrained")
        grid = []
        for subfigure, row in zip(np.atleast_1d(fig.subfigures(len(rows), 1)), rows, strict=True):
            axes = subfigure.subplots(1, len(columns))
            for ax, title in zip(axes, columns, strict=True):
                ax.set_title(title, fontsize=9)
            _draw_row(axes, row, images, results, method, colours)
            subfigure.suptitle(_title(row, baseline, method, max(n_repeats.values()) > 1), fontsize=10)
            grid.append(len(axes))
        axes_shape = [len(grid), max(grid)]
        fig.legend(handles=_legend_handles(results["classes"], colours), loc="outside lower center",
                   ncol=min(6, len(values) + 2), frameon=False)  # fmt: skip
    fig.suptitle(f"{method} vs {baseline}: the largest gains and losses of the case Dice")
    fig.savefig(Path(out_png), dpi=100)
    plt.close(fig)
    return {
        "method": method,
        "baseline": baseline,
        "columns": columns,
        "axes_shape": axes_shape,
        "n_repeats": n_repeats,
        "rows": nan_to_none(rows),
    }


def write_case_pictures(
    results: Mapping[str, Any], images: Mapping[str, Path], out_dir: Path, n_each: int = N_CASES_EACH
) -> list[Path]:
    """For every method other than the baseline, ``<stem>.png`` and ``<stem>.json`` (the dict of
    :func:`draw_case_picture`) in ``out_dir`` (created), stems from :func:`picture_stems`.

    Returns:
        The PNG paths, in the methods' order.
    Raises:
        InputError: a file cannot be read.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for method, stem in picture_stems(list(results["runs"]), results["baseline"]).items():
        png = out_dir / f"{stem}.png"
        shown = draw_case_picture(results, method, images, png, n_each)
        (out_dir / f"{stem}.json").write_text(json.dumps({**shown, "png": png.name}, indent=2, allow_nan=False))
        written.append(png)
    return written
