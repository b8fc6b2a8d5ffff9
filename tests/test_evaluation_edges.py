"""``topkdice evaluate`` with nnU-Net's habits: ``-pred`` (``-p`` deprecated), ``-d`` from the prediction
folder's dataset.json, folder names holding ``=``, and every format through nnU-Net's reader-writer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_topkdice.cli import build_parser, main
from nnunet_topkdice.errors import InputError
from nnunet_topkdice.evaluation.cli import P_REMOVED_IN, _run_spec
from nnunet_topkdice.evaluation.dataset import dataset_info_from_json
from nnunet_topkdice.evaluation.label_io import read_image, read_label_image, reader_writer_name

DATASET_JSON = {"labels": {"background": 0, "spot": 1}, "numTraining": 1, "channel_names": {"0": "x"}}


def _nifti_folder(folder: Path, label: np.ndarray, with_dataset_json: bool = False) -> Path:
    folder.mkdir(parents=True)
    image = sitk.GetImageFromArray(label)
    image.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(image, str(folder / "c0.nii.gz"))
    if with_dataset_json:  # as nnUNetv2_predict writes it
        (folder / "dataset.json").write_text(json.dumps({**DATASET_JSON, "file_ending": ".nii.gz"}))
    return folder


@pytest.fixture
def nifti_runs(tmp_path: Path) -> dict[str, Path]:
    """A reference and a perfect prediction in a folder whose name holds ``=``; shape (3, 4, 4)."""
    label = np.zeros((3, 4, 4), np.uint8)
    label[1, 1:3, 1:3] = 1
    return {
        "labels": _nifti_folder(tmp_path / "labelsTs", label),
        "pred": _nifti_folder(tmp_path / "lr=0.01" / "preds", label, with_dataset_json=True),
    }


# --- flags ---------------------------------------------------------------------------------------------


def test_pred_is_the_predictions_flag(capsys: pytest.CaptureFixture) -> None:
    parse = build_parser().parse_args
    new = parse(["evaluate", "-r", "r", "-pred", "A=a", "-pred", "B=b", "-o", "o"])
    long = parse(["evaluate", "-r", "r", "--predictions", "A=a", "B=b", "-o", "o"])
    assert new.predictions == long.predictions == [("A", Path("a")), ("B", Path("b"))]
    assert new.dataset is None and capsys.readouterr().err == ""


def test_p_still_works_with_a_deprecation_warning(capsys: pytest.CaptureFixture) -> None:
    args = build_parser().parse_args(["evaluate", "-r", "r", "-p", "A=a", "-o", "o", "-d", "1"])
    assert args.predictions == [("A", Path("a"))]
    err = capsys.readouterr().err
    assert err == (f"topkdice evaluate: warning: -p for predictions is deprecated (in nnU-Net -p means plans) "
                   f"and will be removed in {P_REMOVED_IN}: use -pred\n")  # fmt: skip


@pytest.mark.parametrize("flag", ["--disable_tta", "--disable-tta"], ids=["nnunet", "old"])
def test_disable_tta_both_spellings(flag: str) -> None:
    argv = ["show-ignore-map", "-i", "i", "-l", "l", "-m", "m", "-o", "o.png"]
    assert build_parser().parse_args([*argv, flag]).disable_tta is True
    assert build_parser().parse_args(argv).disable_tta is False


def test_name_dir_keeps_an_equals_sign_in_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "lr=0.01" / "preds"
    folder.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert _run_spec(f"A={folder}") == ("A", folder)
    assert _run_spec("A=lr=0.01/preds") == ("A", Path("lr=0.01/preds"))  # the last '=' leaves no folder
    assert _run_spec("A:lr=0.01/preds") == ("A", Path("lr=0.01/preds"))
    assert _run_spec("lr=0.01/preds") == ("preds", Path("lr=0.01/preds"))  # a folder, named after itself
    assert _run_spec("A=missing") == ("A", Path("missing"))  # no folder: the first '=' (reported later)
    (tmp_path / "x=y").mkdir()
    (tmp_path / "y").mkdir()
    assert _run_spec("x=y") == ("x", Path("y"))  # the last '=' that leaves an existing folder wins


def test_evaluate_without_d_reads_the_prediction_folders_dataset_json(
    nifti_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    assert main(["evaluate", "-r", str(nifti_runs["labels"]), "-pred", f"A={nifti_runs['pred']}", "-o", str(out)]) == 0
    assert f"dataset: {nifti_runs['pred'] / 'dataset.json'} (no -d given)" in capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["runs"]["A"]["repeats"][0]["prediction_dir"] == str(nifti_runs["pred"].resolve())
    assert results["dataset"]["reader_writer"] == "SimpleITKIO"


def test_evaluate_without_d_and_without_dataset_json_exits_2(
    nifti_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (nifti_runs["pred"] / "dataset.json").unlink()
    assert main(["evaluate", "-r", str(nifti_runs["labels"]), "-pred", str(nifti_runs["pred"]), "-o", "o"]) == 2
    assert "-d is needed: none of the prediction folders holds the dataset.json" in capsys.readouterr().err


# --- formats ---------------------------------------------------------------------------------------------


def test_reader_writer_is_nnunets(tmp_path: Path) -> None:
    import tifffile

    volume, picture = tmp_path / "volume.tif", tmp_path / "picture.tif"
    tifffile.imwrite(volume, np.zeros((6, 5, 5), np.uint8))
    tifffile.imwrite(picture, np.zeros((5, 5), np.uint8))
    assert reader_writer_name(".nii.gz") == "SimpleITKIO"
    assert reader_writer_name(".png") == "NaturalImage2DIO"
    assert reader_writer_name(".tif", example_file=volume) == "Tiff3DIO"  # nnU-Net tries the file
    assert reader_writer_name(".tif", example_file=picture) == "NaturalImage2DIO"
    assert reader_writer_name(".nii.gz", "NibabelIOWithReorient") == "NibabelIOWithReorient"
    assert reader_writer_name(".nii.gz", "NoSuchIO") == "SimpleITKIO"  # nnU-Net falls back to the ending
    info = dataset_info_from_json({**DATASET_JSON, "overwrite_image_reader_writer": "Tiff3DIO"})
    assert info.reader_writer == "Tiff3DIO" and dataset_info_from_json(DATASET_JSON).reader_writer is None


def test_reader_writer_refuses_an_unknown_ending() -> None:
    with pytest.raises(InputError, match=r"my.json: nnU-Net has no reader for file_ending '\.xyz'"):
        reader_writer_name(".xyz", source="my.json")


def _tif_case(folder: Path, label: np.ndarray, spacing: tuple[float, float, float]) -> None:
    from nnunetv2.imageio.tif_reader_writer import Tiff3DIO

    folder.mkdir(parents=True, exist_ok=True)
    Tiff3DIO().write_seg(label, str(folder / "c0.tif"), {"spacing": spacing})  # c0.tif and c0.json


def test_tif_dataset_hd95_in_mm(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # shape (6, 5, 5): one voxel in the reference at z=1, in the prediction at z=3: 2 slices of 3 mm apart
    reference, prediction = np.zeros((6, 5, 5), np.uint8), np.zeros((6, 5, 5), np.uint8)
    reference[1, 2, 2] = prediction[3, 2, 2] = 1
    spacing = (3.0, 0.5, 0.5)
    _tif_case(tmp_path / "labelsTs", reference, spacing)
    _tif_case(tmp_path / "pred", prediction, spacing)
    (tmp_path / "pred" / "dataset.json").write_text(json.dumps({**DATASET_JSON, "file_ending": ".tif"}))
    image = read_label_image(tmp_path / "labelsTs" / "c0.tif", "Tiff3DIO")
    assert image.spacing == spacing and image.array.dtype == np.int64 and image.array.sum() == 1
    out = tmp_path / "out"
    assert main(["evaluate", "-r", str(tmp_path / "labelsTs"), "-pred", f"A={tmp_path / 'pred'}", "-o", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"]["reader_writer"] == "Tiff3DIO" and results["dataset"]["spacing_note"] is None
    assert results["runs"]["A"]["repeats"][0]["per_case"]["c0"]["spot"]["HD95"] == pytest.approx(6.0)  # 2 x 3 mm


def test_tif_prediction_with_another_spacing_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    label = np.zeros((2, 5, 5), np.uint8)
    label[0, 1, 1] = 1
    _tif_case(tmp_path / "labelsTs", label, (3.0, 0.5, 0.5))
    _tif_case(tmp_path / "pred", label, (1.0, 0.5, 0.5))
    (tmp_path / "d.json").write_text(json.dumps({**DATASET_JSON, "file_ending": ".tif"}))
    argv = ["evaluate", "-r", str(tmp_path / "labelsTs"), "-pred", str(tmp_path / "pred"),
            "-d", str(tmp_path / "d.json"), "-o", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "geometry mismatch for case 'c0'" in err and "spacing (z, y, x) (1, 0.5, 0.5) vs (3, 0.5, 0.5)" in err


@pytest.mark.parametrize("image_spacing", [(3.0, 0.5, 0.8), (1.0, 1.0, 1.0)], ids=["same-grid", "other-spacing"])
def test_tif_images_for_the_pictures_are_read_as_nnunet_reads_them(
    tmp_path: Path, capsys: pytest.CaptureFixture, image_spacing: tuple[float, float, float]
) -> None:
    """--images on a .tif dataset: the images' grid came from SimpleITK's TIFF header (a 4-slice volume
    read as one RGBA picture, spacing 1), not from the <case>.json that nnU-Net and the metrics use."""
    import tifffile

    label = np.zeros((4, 5, 6), np.uint8)  # 4 slices: what SimpleITK took for one RGBA picture
    label[1:3, 1:4, 2:5] = 1
    spacing = (3.0, 0.5, 0.8)
    for folder in ("labelsTs", "A", "B"):
        _tif_case(tmp_path / folder, label if folder != "B" else np.zeros_like(label), spacing)
    (tmp_path / "imagesTs").mkdir()
    intensities = np.linspace(0, 1, label.size, dtype=np.float32).reshape(label.shape)
    tifffile.imwrite(tmp_path / "imagesTs" / "c0_0000.tif", intensities)
    (tmp_path / "imagesTs" / "c0.json").write_text(json.dumps({"spacing": list(image_spacing)}))  # nnU-Net's name
    # as nnU-Net needs it too: its first reader for .tif (2D pictures) would take 4 pages for one RGBA picture
    dataset = {**DATASET_JSON, "file_ending": ".tif", "overwrite_image_reader_writer": "Tiff3DIO"}
    (tmp_path / "d.json").write_text(json.dumps(dataset))
    image = read_image(tmp_path / "imagesTs" / "c0_0000.tif", "Tiff3DIO")
    assert image.array.shape == (4, 5, 6) and image.spacing == image_spacing
    argv = ["evaluate", "-r", str(tmp_path / "labelsTs"), "-pred", f"A={tmp_path / 'A'}", f"B={tmp_path / 'B'}",
            "-d", str(tmp_path / "d.json"), "-o", str(tmp_path / "out"),
            "--images", str(tmp_path / "imagesTs")]  # fmt: skip
    if image_spacing == spacing:
        assert main(argv) == 0
        assert json.loads((tmp_path / "out" / "results.json").read_text())["dataset"]["reader_writer"] == "Tiff3DIO"
        assert (tmp_path / "out" / "cases" / "B_vs_A.png").is_file()
    else:
        assert main(argv) == 2
        assert "spacing (z, y, x) (1, 1, 1) vs (3, 0.5, 0.8)" in capsys.readouterr().err


def test_png_dataset_keeps_spacing_1_and_says_so(tmp_path: Path) -> None:
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO

    label = np.zeros((1, 1, 5, 6), np.uint8)  # nnU-Net's (channel, dummy z, y, x)
    label[0, 0, 1:3, 2:5] = 1
    for folder in ("labelsTs", "pred"):
        (tmp_path / folder).mkdir()
        NaturalImage2DIO().write_seg(label[0], str(tmp_path / folder / "c0.png"), {"spacing": (999, 1, 1)})
    (tmp_path / "pred" / "dataset.json").write_text(json.dumps({**DATASET_JSON, "file_ending": ".png"}))
    image = read_label_image(tmp_path / "labelsTs" / "c0.png", "NaturalImage2DIO")
    assert image.array.shape == (5, 6) and image.spacing == (1.0, 1.0) and image.array.sum() == 6
    out = tmp_path / "out"
    assert main(["evaluate", "-r", str(tmp_path / "labelsTs"), "-pred", f"A={tmp_path / 'pred'}", "-o", str(out)]) == 0
    note = "2D natural images have no spacing: 1 per pixel, so HD95 and NSD are in pixels, not mm"
    table = (out / "table.md").read_text()
    assert note in table
    # the headings and the legend say pixels too (they said mm next to the note)
    assert "| mHD95 (px) |" in table and "mHD95 in px; mNSD: normalised surface Dice at 1 px." in table
    assert "(mm)" not in table and "mHD95 (px)" in (out / "table.csv").read_text().splitlines()[0]
