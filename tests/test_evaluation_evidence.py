"""Where a method wins and loses: per_case.csv against results.json, the case pictures (--images) and
their input checks, and the figure's classes ordered by size."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from nnunet_topkdice.cli import main
from nnunet_topkdice.errors import InputError
from nnunet_topkdice.evaluation import evaluate as evaluate_module
from nnunet_topkdice.evaluation import evaluate_runs
from nnunet_topkdice.evaluation.case_pictures import picture_stems, select_cases
from nnunet_topkdice.evaluation.plots import classes_by_size
from nnunet_topkdice.evaluation.tables import PER_CASE_COLUMNS

SPACING_XYZ = (0.8, 0.8, 2.0)
SHAPE = (4, 12, 12)  # (z, y, x)
DATASET = {"labels": {"background": 0, "organ": 1}, "file_ending": ".nii.gz", "name": "Cases"}
# The reference of every case: an 8 x 8 square on the slices z = 0..3 (256 voxels).
N_REFERENCE = 256
# Voxels that each method misses (false negatives), baseline on slice z = 1, method on slice z = 2. Cases are
# listed in a shuffled order so that the choice cannot follow the file order.
MISSED = {  # case: (baseline, method)
    "c3": (4, 3),  # small gain: not among the three largest
    "c7": (4, 8),  # largest loss
    "c0": (4, 0),  # largest gain
    "c5": (4, 5),  # third loss
    "c1": (4, 1),  # second gain
    "c6": (4, 7),  # second loss
    "c2": (4, 2),  # third gain
    "c4": (4, 4),  # no difference: never drawn
}


def _dice(missed: int) -> float:
    # tp = 256 - missed, fn = missed, fp = 0
    return 2 * (N_REFERENCE - missed) / (2 * N_REFERENCE - missed)


def _write(path: Path, array: np.ndarray, spacing=SPACING_XYZ) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def _reference() -> np.ndarray:
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[:, 2:10, 2:10] = 1
    return label


def _missing(count: int, z: int) -> np.ndarray:
    label = _reference()
    rows, cols = np.nonzero(label[z])
    label[z, rows[:count], cols[:count]] = 0
    return label


@pytest.fixture
def cases(tmp_path: Path) -> dict:
    """labelsTs, imagesTs (channel 0), and the folders of baseline A, method B and B's second repeat B2."""
    root = tmp_path
    dataset_json = root / "Dataset990_Cases" / "dataset.json"
    dataset_json.parent.mkdir()
    dataset_json.write_text(json.dumps(DATASET))
    folders = {name: root / name for name in ("labelsTs", "imagesTs", "A", "B", "B2")}
    for folder in folders.values():
        folder.mkdir()
    rng = np.random.default_rng(0)
    for case, (missed_a, missed_b) in MISSED.items():
        _write(folders["labelsTs"] / f"{case}.nii.gz", _reference())
        image = rng.normal(100, 10, SHAPE).astype(np.float32) + 50 * _reference()
        _write(folders["imagesTs"] / f"{case}_0000.nii.gz", image)
        _write(folders["A"] / f"{case}.nii.gz", _missing(missed_a, z=1))
        _write(folders["B"] / f"{case}.nii.gz", _missing(missed_b, z=2))
        _write(folders["B2"] / f"{case}.nii.gz", _missing(missed_b + 2, z=2))  # B's second repeat misses 2 more
    return {"root": root, "dataset_json": dataset_json, **folders}


def _evaluate(cases: dict, out: Path, **kwargs) -> dict:
    runs = [("A", cases["A"]), ("B", cases["B"])]
    return evaluate_runs(cases["labelsTs"], runs, cases["dataset_json"], out, **kwargs)


# --- per_case.csv ----------------------------------------------------------------------------------------


@pytest.fixture
def two_class_results(tmp_path: Path) -> tuple[dict, Path]:
    """Two classes, four cases, a baseline with two repeats and a method with three; some classes missing
    from some cases or predictions, so that NaN, the diagonal HD95 and the NSD conventions all appear."""
    dataset = {"labels": {"background": 0, "big": 1, "small": 2}, "file_ending": ".nii.gz"}
    rng = np.random.default_rng(3)
    labels = tmp_path / "labels"
    labels.mkdir()
    references = {}
    for i in range(4):
        reference = np.zeros((3, 10, 10), dtype=np.uint8)
        reference[:, 1:8, 1:8] = 1
        if i != 3:  # case 3 has no small structure
            reference[1, 4 + (i % 2) : 6 + (i % 2), 4:6] = 2
        references[f"case_{i}"] = reference
        _write(labels / f"case_{i}.nii.gz", reference)
    runs = []
    for name, n_repeats in (("base", 2), ("topk", 3)):
        for r in range(n_repeats):
            folder = tmp_path / f"{name}{r}"
            folder.mkdir()
            runs.append((name, folder))
            for case, reference in references.items():
                flip = rng.random(reference.shape) < 0.08
                prediction = np.where(flip, rng.integers(0, 3, reference.shape), reference).astype(np.uint8)
                if case == "case_2" and name == "base":
                    prediction[prediction == 2] = 0  # a missed class: Dice 0, NSD 0, HD95 the diagonal
                _write(folder / f"{case}.nii.gz", prediction)
    out = tmp_path / "out"
    results = evaluate_runs(labels, runs, dataset, out, nsd_tolerance=1.5)
    return results, out


def test_per_case_csv_round_trip(two_class_results: tuple[dict, Path]) -> None:
    results, out = two_class_results
    table = pd.read_csv(out / "per_case.csv")
    assert tuple(table.columns) == PER_CASE_COLUMNS == ("method", "repeat", "case", "class", "metric", "value")
    metrics = ["Dice", "IoU", "Precision", "Recall", "HD95", "NSD"]
    assert results["metrics"] == metrics
    # one row per method, repeat, case, class and metric
    assert len(table) == (2 + 3) * 4 * 2 * len(metrics)
    assert table["value"].isna().any() and table["value"].dtype == np.float64
    for method, run in results["runs"].items():
        rows = table[table["method"] == method]
        assert sorted(rows["repeat"].unique()) == list(range(run["n_repeats"]))
        # each repeat: the class means over the cases, then their mean over the classes
        class_means = rows.groupby(["repeat", "metric", "class"])["value"].mean()
        repeat_means = class_means.groupby(["repeat", "metric"]).mean()
        for r, repeat in enumerate(run["repeats"]):
            for metric in metrics:
                assert repeat["mean"][metric] == pytest.approx(repeat_means[(r, metric)], rel=1e-12)
                for name in ("big", "small"):
                    assert repeat["per_class"][name][metric] == pytest.approx(class_means[(r, metric, name)])
                    for case in results["cases"]:
                        value = rows[(rows["repeat"] == r) & (rows["case"] == case) & (rows["class"] == name)
                                     & (rows["metric"] == metric)]["value"].item()  # fmt: skip
                        stored = repeat["per_case"][case][name][metric]
                        assert (np.isnan(value) and stored is None) or value == stored
        # the method: mean and sample sd of the repeats' means; the repeat-averaged per_case
        for metric in metrics:
            per_repeat = repeat_means.xs(metric, level="metric")
            assert run["mean"][metric] == pytest.approx(per_repeat.mean(), rel=1e-12)
            assert run["sd"][metric] == pytest.approx(per_repeat.std(ddof=1), rel=1e-9)
        averaged = rows.groupby(["case", "class", "metric"])["value"].mean()
        for (case, name, metric), value in averaged.items():
            stored = run["per_case"][case][name][metric]
            assert (np.isnan(value) and stored is None) or stored == pytest.approx(value, rel=1e-12)
    # the comparison's mean difference (SPEC 6.2): the case score per repeat (mean Dice over classes), repeat
    # i paired with repeat i (the first 2: base has 2), a case undefined in a paired repeat dropped
    dice = table[table["metric"] == "Dice"]
    scores = dice.groupby(["method", "repeat", "case"])["value"].mean().unstack("case")
    difference = (scores.loc["topk"].iloc[:2] - scores.loc["base"].iloc[:2]).dropna(axis=1)
    assert results["comparisons"][0]["mean_difference"] == pytest.approx(difference.to_numpy().mean(), rel=1e-12)
    # the conventions: a missed class scores Dice 0, NSD 0 and the image diagonal as HD95
    missed = table[(table["method"] == "base") & (table["case"] == "case_2") & (table["class"] == "small")]
    assert (missed.set_index(["repeat", "metric"])["value"].xs("NSD", level="metric") == 0).all()


def test_per_case_csv_leaves_undefined_values_empty(two_class_results: tuple[dict, Path]) -> None:
    _, out = two_class_results
    lines = (out / "per_case.csv").read_text().splitlines()
    # case 3 has no small structure; where the prediction has none either, every metric is undefined
    assert lines[0] == "method,repeat,case,class,metric,value"
    empty = [line for line in lines if line.endswith(",")]
    assert empty and all(line.split(",")[3] == "small" or line.split(",")[4] in ("Precision", "Recall")
                         for line in empty)  # fmt: skip


# --- classes by size in the figure -----------------------------------------------------------------------


def test_figure_orders_classes_by_median_reference_size(
    two_class_results: tuple[dict, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from nnunet_topkdice.evaluation import plots

    results, out = two_class_results
    # big (147 voxels per case) is listed first in dataset.json; small (2 voxels, 0 in case 3) comes first
    assert [c["name"] for c in results["classes"]] == ["big", "small"]
    assert [c["name"] for c in classes_by_size(results)] == ["small", "big"]
    drawn = []
    original = plots._class_axis
    monkeypatch.setattr(plots, "_class_axis", lambda ax, classes, extra=(): (drawn.append([c["name"] for c in
                        classes]), original(ax, classes, extra)))  # fmt: skip
    plots.plot_results(results, out / "again.png")
    assert drawn == [["small", "big"], ["small", "big"]]  # the Dice panel and the differences panel


def test_figure_titles_fit_the_figure(two_class_results: tuple[dict, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """At the narrowest figure (9 inches, two classes) the differences panel's title was cut at both edges."""
    from nnunet_topkdice.evaluation import plots

    results, out = two_class_results
    assert results["comparisons"]  # the panels with the long titles are drawn
    figures = []
    monkeypatch.setattr(plots.plt, "close", figures.append)
    plots.plot_results(results, out / "titles.png")
    (figure,) = figures
    renderer = figure.canvas.get_renderer()
    titles = [ax.title for ax in figure.axes if ax.get_title()]
    assert len(titles) == 4
    for title in titles:
        box = title.get_window_extent(renderer)
        assert figure.bbox.x0 <= box.x0 and box.x1 <= figure.bbox.x1, title.get_text()


def test_classes_by_size_keeps_the_order_of_equal_sizes_and_without_counts() -> None:
    classes = [{"name": "a"}, {"name": "b"}, {"name": "c"}]
    counts = {"a": 5, "b": 2, "c": 5}
    per_case = {"x": {n: {"n_reference": v} for n, v in counts.items()}}
    assert [c["name"] for c in classes_by_size({"classes": classes, "runs": {"m": {"per_case": per_case}}})] == [
        "b", "a", "c"
    ]
    no_counts = {"x": {n: {"Dice": 1.0} for n in counts}}
    assert classes_by_size({"classes": classes, "runs": {"m": {"per_case": no_counts}}}) == classes


# --- case pictures -------------------------------------------------------------------------------------


def test_select_cases_by_hand() -> None:
    differences = np.array([0.1, -0.3, np.nan, 0.0, 0.4, -0.1, 0.1, 0.2, -0.2])
    assert select_cases(differences, 3) == ([4, 7, 0], [1, 8, 5])  # ties keep the case order (0 before 6)
    assert select_cases(np.array([0.0, np.nan]), 3) == ([], [])
    with pytest.raises(ValueError, match="n_each must be >= 1"):
        select_cases(differences, 0)


def test_picture_stems_are_file_safe_and_unique() -> None:
    stems = picture_stems(["CE + Dice", "a/b", "a b", "a_b"], "CE + Dice")
    assert stems == {"a/b": "a_b_vs_CE_+_Dice", "a b": "a_b_vs_CE_+_Dice_2", "a_b": "a_b_vs_CE_+_Dice_3"}


def test_case_picture_picks_the_largest_gains_and_losses(cases: dict) -> None:
    out = cases["root"] / "out"
    results = _evaluate(cases, out, images_dir=cases["imagesTs"])
    png = out / "cases" / "B_vs_A.png"
    assert png.is_file() and png.stat().st_size > 10_000
    assert results["case_pictures"]["files"] == {"B": "cases/B_vs_A.png"}
    shown = json.loads((out / "cases" / "B_vs_A.json").read_text())
    assert shown["axes_shape"] == [6, 4] and shown["png"] == "B_vs_A.png"
    assert shown["columns"] == ["image", "reference", "baseline: A", "method: B"]
    assert [(row["case"], row["kind"]) for row in shown["rows"]] == [
        ("c0", "gain"), ("c1", "gain"), ("c2", "gain"), ("c7", "loss"), ("c6", "loss"), ("c5", "loss"),
    ]  # fmt: skip
    for row in shown["rows"]:
        missed_a, missed_b = MISSED[row["case"]]
        assert row["baseline_dice"] == pytest.approx(_dice(missed_a))
        assert row["method_dice"] == pytest.approx(_dice(missed_b))
        assert row["difference"] == pytest.approx(_dice(missed_b) - _dice(missed_a))
        # the predictions differ on z = 1 (A's misses) and z = 2 (B's): the slice with more of them
        assert row["slice"] == (1 if missed_a >= missed_b else 2)
    # nothing else in the output folder
    assert sorted(p.name for p in out.iterdir()) == [
        "cases", "figure.png", "per_case.csv", "results.json", "table.csv", "table.md"
    ]  # fmt: skip
    assert sorted(p.name for p in (out / "cases").iterdir()) == ["B_vs_A.json", "B_vs_A.png"]


def test_case_picture_with_repeats_and_no_difference(cases: dict) -> None:
    out = cases["root"] / "out"
    runs = [("A", cases["A"]), ("B", cases["B"]), ("B", cases["B2"]), ("same", cases["A"])]
    evaluate_runs(cases["labelsTs"], runs, cases["dataset_json"], out, images_dir=cases["imagesTs"])
    shown = json.loads((out / "cases" / "B_vs_A.json").read_text())
    assert shown["n_repeats"] == {"A": 1, "B": 2}
    first = shown["rows"][0]
    assert first["case"] == "c0" and first["method_dice"] == pytest.approx((_dice(0) + _dice(2)) / 2)
    assert first["method_dice_drawn"] == pytest.approx(_dice(0))  # the first repeat is drawn
    # its title names it as per_case.csv numbers it: repeat 0
    from nnunet_topkdice.evaluation.case_pictures import _title

    assert "drawn: repeat 0 (Dice" in _title(first, "A", "B", repeated=True)
    same = json.loads((out / "cases" / "same_vs_A.json").read_text())
    assert same["rows"] == [] and same["axes_shape"] == [0, 0]
    assert (out / "cases" / "same_vs_A.png").is_file()


def _no_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("the evaluation started before --images was checked")

    monkeypatch.setattr(evaluate_module, "run_case_jobs", fail)


def _remove_folder(cases: dict) -> None:
    shutil.rmtree(cases["imagesTs"])


def _remove_case(cases: dict) -> None:
    (cases["imagesTs"] / "c5_0000.nii.gz").unlink()


def _other_spacing(cases: dict) -> None:
    _write(cases["imagesTs"] / "c6_0000.nii.gz", np.zeros(SHAPE, np.float32), spacing=(0.8, 0.8, 3.0))


def _other_shape(cases: dict) -> None:
    _write(cases["imagesTs"] / "c6_0000.nii.gz", np.zeros((4, 12, 11), np.float32))


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (_remove_folder, r"images folder \(--images\) not found: .*imagesTs"),
        (_remove_case, r"no image for case 'c5' in the images folder \(--images\): .*c5_0000\.nii\.gz is missing"),
        (_other_spacing, r"image .*c6_0000\.nii\.gz of case 'c6' is not on the voxel grid of its reference "
                         r".*labelsTs/c6\.nii\.gz: spacing \(z, y, x\) \(3, 0\.8, 0\.8\) vs \(2, 0\.8, 0\.8\)"),
        (_other_shape, r"c6_0000\.nii\.gz of case 'c6' is not on the voxel grid .*: shape \(4, 12, 11\) vs "
                       r"\(4, 12, 12\)"),
    ],
    ids=["missing-folder", "missing-case", "spacing", "shape"],
)
def test_bad_images_are_refused_before_any_work(
    cases: dict, monkeypatch: pytest.MonkeyPatch, break_it, message: str
) -> None:
    break_it(cases)
    _no_evaluation(monkeypatch)
    out = cases["root"] / "out"
    with pytest.raises(InputError, match=message):
        _evaluate(cases, out, images_dir=cases["imagesTs"])
    assert not out.exists()


def test_bad_images_keep_the_previous_outputs(cases: dict) -> None:
    out = cases["root"] / "out"
    _evaluate(cases, out, images_dir=cases["imagesTs"])
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    _remove_case(cases)
    with pytest.raises(InputError, match="no image for case 'c5'"):
        _evaluate(cases, out, images_dir=cases["imagesTs"], nsd_tolerance=2.0)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_failing_picture_leaves_the_previous_outputs(cases: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from nnunet_topkdice.evaluation import case_pictures

    out = cases["root"] / "out"
    _evaluate(cases, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(*args, **kwargs):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(case_pictures, "draw_case_picture", broken)
    with pytest.raises(RuntimeError, match="drawing failed"):
        _evaluate(cases, out, images_dir=cases["imagesTs"], nsd_tolerance=2.0)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no cases/, no partial files


def test_cli_images_and_nsd_tolerance(cases: dict, capsys: pytest.CaptureFixture) -> None:
    out = cases["root"] / "out"
    argv = ["evaluate", "-r", str(cases["labelsTs"]), "-pred", f"A={cases['A']}", f"B={cases['B']}",
            "-d", str(cases["dataset_json"]), "-o", str(out), "--images", str(cases["imagesTs"]),
            "--nsd-tolerance", "0.5"]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert f"case pictures: {out / 'cases' / 'B_vs_A.png'}" in captured.err
    assert "mNSD: normalised surface Dice at 0.5 mm" in captured.out
    assert json.loads((out / "results.json").read_text())["nsd_tolerance_mm"] == 0.5


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--nsd-tolerance", "-1"], "expected a finite number of mm >= 0, got '-1'"),
        (["--nsd-tolerance", "x"], "expected a number of mm >= 0, got 'x'"),
    ],
    ids=["negative", "not-a-number"],
)
def test_cli_rejects_bad_nsd_tolerance(cases: dict, capsys: pytest.CaptureFixture, extra: list, message: str) -> None:
    argv = ["evaluate", "-r", str(cases["labelsTs"]), "-pred", f"A={cases['A']}", "-d", "1", "-o", "o", *extra]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_cli_missing_image_exits_2_and_writes_nothing(cases: dict, capsys: pytest.CaptureFixture) -> None:
    _remove_case(cases)
    out = cases["root"] / "out"
    argv = ["evaluate", "-r", str(cases["labelsTs"]), "-pred", f"A={cases['A']}", f"B={cases['B']}",
            "-d", str(cases["dataset_json"]), "-o", str(out), "--images", str(cases["imagesTs"])]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "topkdice evaluate: error: no image for case 'c5' in the images folder (--images): " in err
    assert str(cases["imagesTs"] / "c5_0000.nii.gz") in err
    assert not out.exists()


def test_evaluate_rejects_bad_nsd_tolerance(cases: dict) -> None:
    with pytest.raises(InputError, match="nsd_tolerance must be a finite number of mm >= 0, got -1"):
        _evaluate(cases, cases["root"] / "out", nsd_tolerance=-1)


def test_cli_default_tolerance_is_the_metrics_default() -> None:
    from nnunet_topkdice.evaluation.cli import NSD_TOLERANCE_DEFAULT
    from nnunet_topkdice.evaluation.metrics import NSD_TOLERANCE_MM

    assert NSD_TOLERANCE_DEFAULT == NSD_TOLERANCE_MM == 1.0


def test_read_image_shows_a_colour_picture_in_grey(tmp_path: Path) -> None:
    from nnunet_topkdice.evaluation.label_io import read_image

    rgb = np.zeros((2, 3, 3), dtype=np.float32)  # (y, x, channel)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 3.0, 6.0, 9.0
    path = tmp_path / "c_0000.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(path))
    image = read_image(path)
    assert image.array.shape == (2, 3) and np.all(image.array == 6.0)
