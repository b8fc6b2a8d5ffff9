"""Bad input to the converters (issue 24): NaN and infinity, output folders that cannot be written,
``nnUNet_preprocessed`` that is not a folder, and interrupts at any moment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import nibabel
import numpy as np
import pytest
from conversion_fixtures import make_acdc, make_synapse, write_image

from dataset_conversion import acdc, common
from nnunet_topkdice.errors import InputError
from nnunet_topkdice.input_checks import count_non_finite

SHAPE = (4, 5, 6)  # (z, y, x)


def _with_non_finite(dtype: type = np.float32) -> np.ndarray:
    """(4, 5, 6) ones with 2 NaN and 3 infinite voxels (+inf twice, -inf once)."""
    values = np.ones(SHAPE, dtype)
    values[0, 0, :2] = np.nan
    values[1, 1, :2] = np.inf
    values[2, 2, 0] = -np.inf
    return values


def _write_nibabel(path: Path, values: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(nibabel.Nifti1Image(values.transpose(2, 1, 0), np.diag([0.7, 0.8, 2.5, 1.0])), str(path))
    return path


def _write_simpleitk(path: Path, values: np.ndarray) -> Path:
    geom = {"spacing": (0.7, 0.8, 2.5), "origin": (0.0, 0.0, 0.0), "direction": (1, 0, 0, 0, 1, 0, 0, 0, 1)}
    return write_image(path, values, geom)


WRITERS = {"nibabel": _write_nibabel, "simpleitk": _write_simpleitk}


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".nrrd"])
@pytest.mark.parametrize("writer", list(WRITERS))
def test_count_non_finite_sees_what_simpleitk_reads_as_zero(tmp_path: Path, writer: str, ending: str) -> None:
    if writer == "nibabel" and ending == ".nrrd":
        pytest.skip("nibabel writes no NRRD")
    path = WRITERS[writer](tmp_path / f"image{ending}", _with_non_finite())
    assert count_non_finite(path) == (2, 3)
    clean = WRITERS[writer](tmp_path / f"clean{ending}", np.ones(SHAPE, np.float32))
    assert count_non_finite(clean) == (0, 0)


def _job(tmp_path: Path, writer: str, broken: str) -> common.CaseJob:
    """A one-channel case whose image or label (``broken``) has 2 NaN and 3 infinite voxels."""
    image = np.ones(SHAPE, np.float32)
    labels = np.ones(SHAPE, np.float32)
    write = WRITERS[writer]
    image_path = write(tmp_path / "in" / "img.nii.gz", _with_non_finite() if broken == "image" else image)
    label_path = write(tmp_path / "in" / "lab.nii.gz", _with_non_finite() if broken == "label" else labels)
    return common.CaseJob("c1", (image_path,), label_path, "train", common.binarize_labels)


@pytest.mark.parametrize("broken", ["image", "label"])
@pytest.mark.parametrize("writer", list(WRITERS))
def test_converters_refuse_nan_and_infinity(tmp_path: Path, writer: str, broken: str) -> None:
    job = _job(tmp_path, writer, broken)
    out = tmp_path / "raw"
    description = common.DatasetDescription("X", {0: "CT"}, {"background": 0, "fg": 1}, "", "")
    bad = job.images[0] if broken == "image" else job.label
    with pytest.raises(InputError, match=rf"case c1: .*{bad} contains 2 NaN and 3 infinite voxel"):
        common.build_dataset([job], out, 1, description, summary="", overwrite=False, num_processes=1)
    assert not out.exists()


def test_clean_float_case_still_converts(tmp_path: Path) -> None:
    job = _job(tmp_path, "nibabel", broken="none")
    description = common.DatasetDescription("X", {0: "CT"}, {"background": 0, "fg": 1}, "", "")
    folder = common.build_dataset([job], tmp_path / "raw", 1, description, summary="", overwrite=False,
                                  num_processes=1)  # fmt: skip
    assert (folder / "imagesTr" / "c1_0000.nii.gz").is_file() and (folder / "labelsTr" / "c1.nii.gz").is_file()


# ---- output folders ------------------------------------------------------------------------------------


def _convert(argv: list[str], env: dict[str, str], bin_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(bin_dir / "topkdice"), "convert", *argv], env=env, capture_output=True, text=True)


def test_output_below_a_file_is_an_error(tmp_path: Path, bin_dir: Path, nnunet_env: dict[str, str]) -> None:
    # today: NotADirectoryError traceback from mkdir
    make_acdc(tmp_path / "acdc")
    (tmp_path / "file").write_text("")
    done = _convert(["acdc", "-i", str(tmp_path / "acdc"), "-o", str(tmp_path / "file" / "sub")], nnunet_env, bin_dir)
    assert done.returncode == 2, done.stderr
    assert f"the nnU-Net raw folder {tmp_path / 'file' / 'sub'} cannot be created: {tmp_path / 'file'} is a file" in (
        done.stderr
    )
    assert "Traceback" not in done.stderr


def test_preprocessed_that_is_a_file_fails_before_anything_is_written(
    tmp_path: Path, bin_dir: Path, nnunet_env: dict[str, str]
) -> None:
    # today: Dataset202_ACDC is published into nnUNet_raw, then writing splits_final.json fails with a traceback
    make_acdc(tmp_path / "acdc")
    Path(nnunet_env["nnUNet_preprocessed"]).write_text("not a folder")
    done = _convert(["acdc", "-i", str(tmp_path / "acdc")], nnunet_env, bin_dir)
    assert done.returncode == 2, done.stderr
    assert (
        f"the nnU-Net preprocessed folder (nnUNet_preprocessed) {nnunet_env['nnUNet_preprocessed']} is a file"
        in done.stderr
    )
    assert not Path(nnunet_env["nnUNet_raw"]).exists()


def test_splits_are_published_with_the_dataset_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure after the conversion (here: the dataset's publish) leaves neither the dataset nor the
    preprocessed splits, nor the preprocessed folders it created."""
    src = make_acdc(tmp_path / "acdc")
    raw, preprocessed = tmp_path / "raw", tmp_path / "pre"

    def fail(*args, **kwargs) -> None:
        raise InputError("publish failed")

    monkeypatch.setattr(common, "_publish", fail)
    with pytest.raises(InputError, match="publish failed"):
        acdc.convert(src, raw, preprocessed_root=preprocessed)
    assert not raw.exists() and not preprocessed.exists()
    monkeypatch.undo()
    folder = acdc.convert(src, raw, preprocessed_root=preprocessed)
    published = json.loads((preprocessed / folder.name / acdc.SPLITS_FILE).read_text())
    assert published == json.loads((folder / acdc.SPLITS_FILE).read_text())
    assert sorted(p.name for p in (preprocessed / folder.name).iterdir()) == [acdc.SPLITS_FILE]  # no temporary


# ---- interrupts ----------------------------------------------------------------------------------------

# (seconds after the start, signal, to the whole process group like a terminal's Ctrl-C, or to the command
# only like `kill PID`). A full conversion of the fixture with 2 workers takes about 5 s on a 2-core CPU:
# the moments cover start-up, starting the workers, converting and publishing.
# (moment as a fraction of an uninterrupted conversion's time, signal, to the whole process group): the
# moments follow the machine's speed, so that most signals land while the conversion works, on a fast or a
# busy machine alike; start-up, the workers' imports, conversion and publishing are each hit.
INTERRUPTS = [
    (0.06, signal.SIGINT, True),
    (0.18, signal.SIGINT, True),
    (0.3, signal.SIGTERM, False),
    (0.42, signal.SIGINT, True),
    (0.54, signal.SIGINT, False),
    (0.64, signal.SIGTERM, True),
    (0.74, signal.SIGINT, True),
    (0.84, signal.SIGINT, True),
    (0.95, signal.SIGTERM, False),
]


def _group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.usefixtures("sigint_default")
def test_interrupts_at_any_moment_exit_quickly_and_leave_nothing(
    tmp_path: Path, bin_dir: Path, nnunet_env: dict[str, str]
) -> None:
    """The probe of issue 24: Ctrl-C during ``convert -np 2`` sometimes never exited (a worker blocked on a
    semaphore, another on a pipe). Each run must end within seconds with 130 (SIGINT) or 143 (SIGTERM), its
    workers gone and no dataset or temporary folder left, or finish normally when the signal came late."""
    src = make_synapse(tmp_path / "synapse")

    def argv(raw: Path) -> list[str]:
        return [str(bin_dir / "topkdice"), "convert", "synapse", "-i", str(src), "-o", str(raw), "-np", "2"]

    started = time.monotonic()
    subprocess.run(argv(tmp_path / "raw_whole"), env=nnunet_env, check=True, capture_output=True)
    whole = time.monotonic() - started
    outcomes = []
    for fraction, signum, to_group in INTERRUPTS:
        delay = round(fraction * whole, 2)
        raw = tmp_path / f"raw_{fraction}"
        process = subprocess.Popen(argv(raw), env=nnunet_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   start_new_session=True)  # fmt: skip
        time.sleep(delay)
        if to_group:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
        sent = time.monotonic()
        try:
            stdout, stderr = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"no exit 20 s after {signum.name} at {delay} s: the conversion hangs")
        exit_seconds = time.monotonic() - sent
        assert _group_gone(process.pid, 10), f"worker processes left after {signum.name} at {delay} s"
        left = sorted(p.name for p in raw.iterdir()) if raw.exists() else []
        expected = 130 if signum == signal.SIGINT else 143
        # -signum: the signal came while Python was starting or exiting, outside topkdice's code, and
        # Python itself exited by it (the shell shows 130 or 143 as well)
        assert process.returncode in (0, expected, -signum), stderr.decode()[-2000:]
        if process.returncode == -signum:  # before main() started converting, or after it returned
            assert (not raw.exists() and b"converting" not in stderr) or stdout.strip().endswith(b"Synapse")
        if process.returncode == expected:
            assert b"interrupted" in stderr and b"Traceback" not in stderr, stderr.decode()[-2000:]
            assert exit_seconds < 10
        if left:  # published: completely (the signal came late, or while the publish held it back)
            assert left == ["Dataset201_Synapse"], f"left behind after {signum.name} at {delay} s: {left}"
            assert len(list((raw / "Dataset201_Synapse" / "imagesTr").iterdir())) == 18
            assert (raw / "Dataset201_Synapse" / "dataset.json").is_file()
        else:
            assert process.returncode != 0
        outcomes.append(bool(left))
    # most runs were stopped before the end (an uninterrupted conversion took `whole` seconds)
    assert outcomes.count(False) >= len(INTERRUPTS) // 2, (whole, outcomes)
