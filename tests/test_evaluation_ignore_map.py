"""The ignore map (paper Figure 1) from the loss library's selection, its pictures and errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from nnunet_topkdice.errors import InputError
from nnunet_topkdice.evaluation.ignore_map import (
    check_request,
    compute_ignore_map,
    compute_ignore_maps,
    pick_slice,
    show_ignore_map,
    topk_dice_loss_value,
)
from nnunet_topkdice.evaluation.ignore_map_io import load_probabilities

# (2, 4) image, 3 classes. Row 0: class 1 with true-class probabilities 0.9 0.6 0.8 0.7;
# row 1: class 2 with 0.5 0.95 0.7, then one background voxel (never excluded).
LABEL = np.array([[1, 1, 1, 1], [2, 2, 2, 0]])
TRUE_PROB = np.array([[0.9, 0.6, 0.8, 0.7], [0.5, 0.95, 0.7, 0.99]])

Probabilities = Callable[..., np.ndarray]


@pytest.mark.parametrize(
    ("k", "expected"),
    [
        # class 1: D = floor(0.5 * 4) = 2 -> 0.9 and 0.8; class 2: D = floor(0.5 * 3) = 1 -> 0.95
        (50, [[1, 0, 1, 0], [0, 1, 0, 0]]),
        # class 1: D = floor(0.9 * 4) = 3 keeps only 0.6; class 2: D = floor(0.9 * 3) = 2 keeps only 0.5
        (10, [[1, 0, 1, 1], [0, 1, 1, 0]]),
        (100, [[0, 0, 0, 0], [0, 0, 0, 0]]),
    ],
    ids=["k50", "k10", "k100"],
)
def test_ignore_map_hand_computed(k: float, expected: list, true_class_probabilities: Probabilities) -> None:
    excluded = compute_ignore_map(true_class_probabilities(LABEL, TRUE_PROB), LABEL, k)
    assert excluded.dtype == bool
    np.testing.assert_array_equal(excluded, np.array(expected, dtype=bool))


def test_ignore_map_leaves_out_the_ignore_label(true_class_probabilities: Probabilities) -> None:
    label = np.array([[1, 1, 1, 9, 9]])  # 9: ignore label, outside the 2 probability channels
    true_prob = np.array([[0.6, 0.9, 0.7, 0.99, 0.99]])
    probs = true_class_probabilities(np.where(label == 9, 1, label), true_prob, n_classes=2)
    # 3 valid voxels of class 1: D = floor(0.5 * 3) = 1 -> the 0.9 voxel; the ignored voxels never count
    excluded = compute_ignore_map(probs, label, 50, ignore_label=9)
    np.testing.assert_array_equal(excluded, [[False, True, False, False, False]])


def test_ignore_map_rejects_bad_k(true_class_probabilities: Probabilities) -> None:
    with pytest.raises(ValueError, match="k must be a number in"):
        compute_ignore_map(true_class_probabilities(LABEL, TRUE_PROB), LABEL, 0)


@pytest.mark.parametrize("k", [100, 50, 10], ids=["k100", "k50", "k10"])
def test_loss_value_matches_the_loss_library(k: float) -> None:
    from nnunet_topkdice.losses import TopKDiceLoss

    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 4, 12, 10, generator=generator)
    target = torch.randint(0, 4, (1, 1, 12, 10), generator=generator)
    probs = torch.softmax(logits, 1)[0].numpy()
    label = target[0, 0].numpy()
    excluded = compute_ignore_map(probs, label, k)
    expected = TopKDiceLoss(k=k, do_bg=False, batch_dice=False, smooth=1e-5, ddp=False)(logits, target).item()
    assert topk_dice_loss_value(probs, label, excluded) == pytest.approx(expected, abs=1e-5)


def test_loss_value_at_k100_is_squared_soft_dice_by_hand() -> None:
    # one class, (1, 2): Y = (1, 0), P_1 = (0.8, 0.4): Dice = 2*0.8 / (1 + 0.64 + 0.16) = 1.6 / 1.8
    label = np.array([[1, 0]])
    probs = np.array([[[0.2, 0.6]], [[0.8, 0.4]]], dtype=np.float32)
    value = topk_dice_loss_value(probs, label, np.zeros_like(label, dtype=bool), smooth=0.0)
    assert value == pytest.approx(1 - 1.6 / 1.8, abs=1e-6)


# (2, 1, 4) volume, all class 1; true-class probabilities 0.9 0.8 0.7 0.6 in slice 0, 0.5 0.4 0.3 0.2 in slice 1.
VOLUME_LABEL = np.ones((2, 1, 4), dtype=np.uint8)
VOLUME_TRUE_PROB = np.array([[[0.9, 0.8, 0.7, 0.6]], [[0.5, 0.4, 0.3, 0.2]]])


@pytest.mark.parametrize(
    ("scope", "slice_index", "expected_map", "n_foreground", "n_excluded"),
    [
        # per slice: D = floor(0.5 * 4) = 2, the two most confident voxels of the slice
        ("slice", None, [[1, 1, 0, 0]], 4, 2),  # default: slices tie, the first is shown
        ("slice", 1, [[1, 1, 0, 0]], 4, 2),
        # whole volume: D = floor(0.5 * 8) = 4, all of them in slice 0
        ("volume", 0, [[1, 1, 1, 1]], 8, 4),
        ("volume", 1, [[0, 0, 0, 0]], 8, 4),
    ],
    ids=["slice-default", "slice-1", "volume-slice-0", "volume-slice-1"],
)
def test_compute_ignore_maps_by_scope(
    true_class_probabilities: Probabilities,
    scope: str,
    slice_index: int | None,
    expected_map: list,
    n_foreground: int,
    n_excluded: int,
) -> None:
    probs = true_class_probabilities(VOLUME_LABEL, VOLUME_TRUE_PROB, n_classes=2)
    result = compute_ignore_maps(
        probs, VOLUME_LABEL, [50.0], ["background", "organ"], slice_index=slice_index, scope=scope
    )
    assert result.slice_index == (slice_index or 0)
    np.testing.assert_array_equal(result.maps[50.0], np.array(expected_map, dtype=bool))
    assert result.summary[50.0]["n_foreground"] == {"organ": n_foreground}
    assert result.summary[50.0]["n_excluded"] == {"organ": n_excluded}


def test_compute_ignore_maps_loss_of_the_slice_by_hand(true_class_probabilities: Probabilities) -> None:
    probs = true_class_probabilities(VOLUME_LABEL, VOLUME_TRUE_PROB, n_classes=2)
    result = compute_ignore_maps(probs, VOLUME_LABEL, [50.0], ["background", "organ"], slice_index=0)
    # kept: 0.7 and 0.6; Dice = 2 * 1.3 / (2 + 0.49 + 0.36) (excluded voxels gone from Y and P)
    assert result.summary[50.0]["loss"] == pytest.approx(1 - 2.6 / 2.85, abs=1e-5)


def test_compute_ignore_maps_rejects_a_slice_outside(true_class_probabilities: Probabilities) -> None:
    probs = true_class_probabilities(VOLUME_LABEL, VOLUME_TRUE_PROB, n_classes=2)
    with pytest.raises(InputError, match=r"slice 2 is outside 0\.\.0 along axis 1"):
        compute_ignore_maps(probs, VOLUME_LABEL, [50.0], ["background", "organ"], axis=1, slice_index=2)


def test_check_request_keeps_distinct_k_in_order() -> None:
    ks = check_request([50, 30, 50.0, 90], [Path("a_0000.nii.gz")], channel=0, axis=0, scope="slice", n_sources=1)
    assert ks == [50.0, 30.0, 90.0]


def test_pick_slice_takes_the_most_foreground() -> None:
    label = np.zeros((3, 4, 4), dtype=np.uint8)
    label[0, 0, :2] = 1
    label[2, :2, :3] = 2
    assert pick_slice(label, 0) == 2
    assert pick_slice(label, 2) == 0  # columns 0 and 1 tie; the first wins
    assert pick_slice(np.zeros((5, 2, 2)), 0) == 2  # empty: the middle


def test_show_ignore_map_one_k(ignore_map_case: dict) -> None:
    out = ignore_map_case["root"] / "fig1.png"
    summary = show_ignore_map(
        [ignore_map_case["image"]], ignore_map_case["label"], out, ks=[50], probabilities_file=ignore_map_case["npz"]
    )
    assert summary["slice"] == 1  # the slice with the most foreground
    assert summary["classes"] == ["background", "organ", "tumour"]  # from the dataset.json beside the npz
    assert summary["k"][50.0]["n_foreground"] == {"organ": 20, "tumour": 10}
    assert summary["k"][50.0]["n_excluded"] == {"organ": 10, "tumour": 5}
    assert 0 < summary["k"][50.0]["loss"] < 1
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_show_ignore_map_several_k_side_by_side(ignore_map_case: dict) -> None:
    import matplotlib.image

    one = ignore_map_case["root"] / "one.png"
    several = ignore_map_case["root"] / "several.png"
    show_ignore_map(
        [ignore_map_case["image"]], ignore_map_case["label"], one, ks=[50], probabilities_file=ignore_map_case["npz"]
    )
    summary = show_ignore_map(
        [ignore_map_case["image"]],
        ignore_map_case["label"],
        several,
        ks=[90, 50, 30, 10],
        probabilities_file=ignore_map_case["npz"],
    )
    # D = floor((100 - k) / 100 * 20) excluded organ voxels: 2, 10, 14, 18
    assert [v["n_excluded"]["organ"] for v in summary["k"].values()] == [2, 10, 14, 18]
    losses = [v["loss"] for v in summary["k"].values()]
    assert losses == sorted(losses)  # the paper's Figure 2: the loss grows as k shrinks
    assert matplotlib.image.imread(several).shape[0] > matplotlib.image.imread(one).shape[0]  # two rows


def test_show_ignore_map_volume_scope_counts_the_whole_case(ignore_map_case: dict) -> None:
    summary = show_ignore_map(
        [ignore_map_case["image"]],
        ignore_map_case["label"],
        ignore_map_case["root"] / "v.png",
        ks=[50],
        probabilities_file=ignore_map_case["npz"],
        scope="volume",
        slice_index=0,
    )
    assert summary["slice"] == 0
    assert summary["k"][50.0]["n_foreground"] == {"organ": 24, "tumour": 10}
    assert summary["k"][50.0]["n_excluded"] == {"organ": 12, "tumour": 5}

    # the picture's titles count the slice shown but give the whole case's loss: they say so
    from nnunet_topkdice.evaluation.ignore_map_plot import _Slice

    label = np.array([[1, 1], [0, 2]])
    panels = _Slice(np.zeros((2, 2)), label, {50.0: label == 2}, None, 1.0, {50.0: 0.25}, "volume")
    assert panels.k_title(50.0, "ignore map") == "ignore map, k = 50%\nkept 2 of 3 fg px, volume loss 0.250"


def test_load_probabilities_needs_the_key(tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", softmax=np.zeros((2, 1, 2, 2)))
    with pytest.raises(InputError, match=r"has no 'probabilities' array \(keys: \['softmax'\]\)"):
        load_probabilities(tmp_path / "x.npz")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"probabilities_file": None}, "exactly one source of probabilities"),
        ({"model_dir": Path("/m")}, "exactly one source of probabilities"),
        ({"ks": [0]}, r"k must be in \(0, 100\]"),
        ({"ks": []}, "at least one k"),
        ({"slice_index": 5}, r"slice 5 is outside 0\.\.1 along axis 0"),
        ({"axis": 3}, "axis must be 0, 1 or 2"),
        ({"scope": "batch"}, "scope must be one of"),
        ({"channel": 1}, "channel 1 does not exist"),
        ({"probabilities_file": Path("/nonexistent.npz")}, "probability file not found"),
    ],
    ids=["no-source", "two-sources", "k-zero", "no-k", "slice", "axis", "scope", "channel", "missing-npz"],
)
def test_show_ignore_map_argument_errors(ignore_map_case: dict, change: dict, message: str) -> None:
    kwargs = {"ks": [50], "probabilities_file": ignore_map_case["npz"], **change}
    with pytest.raises(InputError, match=message):
        show_ignore_map(
            [ignore_map_case["image"]], ignore_map_case["label"], ignore_map_case["root"] / "x.png", **kwargs
        )


def test_show_ignore_map_shape_and_label_errors(ignore_map_case: dict, write_image: Callable[..., Path]) -> None:
    root = ignore_map_case["root"]
    np.savez(root / "small.npz", probabilities=np.zeros((3, 2, 4, 4), dtype=np.float32))
    with pytest.raises(InputError, match=r"probabilities have spatial shape \(2, 4, 4\)"):
        show_ignore_map(
            [ignore_map_case["image"]], ignore_map_case["label"], root / "x.png", probabilities_file=root / "small.npz"
        )
    np.savez(root / "two.npz", probabilities=np.zeros((2, 2, 8, 8), dtype=np.float32))
    with pytest.raises(InputError, match=r"label value\(s\) \[2\] outside the 2 probability channels"):
        show_ignore_map(
            [ignore_map_case["image"]], ignore_map_case["label"], root / "x.png", probabilities_file=root / "two.npz"
        )
    small_image = write_image(root / "small_0000.nii.gz", np.zeros((2, 4, 4), dtype=np.float32))
    with pytest.raises(InputError, match=r"image .*small_0000\.nii\.gz has shape \(2, 4, 4\)"):
        show_ignore_map(
            [small_image], ignore_map_case["label"], root / "x.png", probabilities_file=ignore_map_case["npz"]
        )


def test_show_ignore_map_refuses_a_region_models_probabilities(ignore_map_case: dict) -> None:
    """nnUNetv2_predict --save_probabilities of a region (sigmoid) model: one channel per region, not per class.

    On a case without the innermost region (labels 0-2, 3 region channels) the map used to be drawn as if the
    regions were softmax classes (exit 0)."""
    root, label = ignore_map_case["root"], ignore_map_case["label"]
    rng = np.random.default_rng(1)
    sigmoids = rng.uniform(0.05, 0.95, (3, 2, 8, 8)).astype(np.float32)  # whole, core, enhancing
    region_folder = root / "regions"
    region_folder.mkdir()
    np.savez(region_folder / "case.npz", probabilities=sigmoids)
    region_json = {"labels": {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": 3},
                   "regions_class_order": [1, 2, 3]}  # fmt: skip
    (region_folder / "dataset.json").write_text(json.dumps(region_json))
    args = ([ignore_map_case["image"]], label, root / "x.png")
    message = r"regions/case.npz: its dataset.json defines regions: probabilities of a region-based"
    with pytest.raises(InputError, match=message):
        show_ignore_map(*args, probabilities_file=region_folder / "case.npz")
    # the dataset named with -d says so too, whatever lies beside the file
    with pytest.raises(InputError, match="defines regions"):
        show_ignore_map(*args, probabilities_file=ignore_map_case["npz"], dataset=region_json)
    # without a dataset.json: the channels of a voxel do not sum to 1
    (region_folder / "dataset.json").unlink()
    with pytest.raises(InputError, match=r"sum to 0\.\d+ to [12]\.\d+ over their 3 channels, not to 1"):
        show_ignore_map(*args, probabilities_file=region_folder / "case.npz")
    # float16 softmax probabilities (off 1 by rounding) are still accepted
    softmax16 = np.load(ignore_map_case["npz"])["probabilities"].astype(np.float16)
    np.savez(region_folder / "case.npz", probabilities=softmax16)
    assert show_ignore_map(*args, ks=[50], probabilities_file=region_folder / "case.npz")["k"][50.0]["n_excluded"]


def _tiny_model(folder: Path) -> Path:
    """A trained-model folder as nnU-Net writes it: a tiny 2d PlainConvUNet with random weights."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    resampling = {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None}
    plans = {
        "dataset_name": "Dataset998_Tiny",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [2.0, 1.0, 1.0],
        "original_median_shape_after_transp": [2, 8, 8],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {
                "max": 1,
                "mean": 0,
                "median": 0,
                "min": -1,
                "percentile_00_5": -1,
                "percentile_99_5": 1,
                "std": 1,
            }
        },
        "configurations": {
            "2d": {
                "data_identifier": "nnUNetPlans_2d",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": [8, 8],
                "median_image_size_in_voxels": [8, 8],
                "spacing": [1.0, 1.0],
                "normalization_schemes": ["ZScoreNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": {**resampling, "order": 3},
                "resampling_fn_seg_kwargs": {**resampling, "is_seg": True},
                "resampling_fn_probabilities_kwargs": resampling,
                "architecture": {
                    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                    "arch_kwargs": {
                        "n_stages": 2,
                        "features_per_stage": [4, 8],
                        "conv_op": "torch.nn.modules.conv.Conv2d",
                        "kernel_sizes": [[3, 3], [3, 3]],
                        "strides": [[1, 1], [2, 2]],
                        "n_conv_per_stage": [1, 1],
                        "n_conv_per_stage_decoder": [1],
                        "conv_bias": True,
                        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
                        "norm_op_kwargs": {"eps": 1e-5, "affine": True},
                        "dropout_op": None,
                        "dropout_op_kwargs": None,
                        "nonlin": "torch.nn.LeakyReLU",
                        "nonlin_kwargs": {"inplace": True},
                    },
                    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
                },
                "batch_dice": True,
            }
        },
    }
    dataset_json = {
        "channel_names": {"0": "MRI"},
        "labels": {"background": 0, "organ": 1, "tumour": 2},
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    manager = PlansManager(plans)
    torch.manual_seed(0)
    network = nnUNetTrainer.build_network_architecture(
        manager, manager.get_configuration("2d"), 1, 3, enable_deep_supervision=False
    )
    checkpoint = {
        "network_weights": network.state_dict(),
        "trainer_name": "nnUNetTrainer",
        "init_args": {"configuration": "2d"},
        "inference_allowed_mirroring_axes": (0, 1),
    }
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    return folder


def test_show_ignore_map_from_a_model_folder(ignore_map_case: dict, capsys: pytest.CaptureFixture) -> None:
    model = _tiny_model(ignore_map_case["root"] / "model")
    out = ignore_map_case["root"] / "model.png"
    summary = show_ignore_map(
        [ignore_map_case["image"]], ignore_map_case["label"], out, ks=[50, 30], model_dir=model, folds=["0"]
    )
    assert summary["classes"] == ["background", "organ", "tumour"]  # from the model's dataset.json
    assert summary["k"][30.0]["n_excluded"] == {"organ": 14, "tumour": 7}
    assert out.stat().st_size > 10_000
    assert capsys.readouterr().out == ""  # nnU-Net's chatter goes to stderr


def test_model_folder_errors(ignore_map_case: dict) -> None:
    empty = ignore_map_case["root"] / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="not an nnU-Net model folder: dataset.json is missing"):
        show_ignore_map(
            [ignore_map_case["image"]], ignore_map_case["label"], ignore_map_case["root"] / "x.png", model_dir=empty
        )
    model = _tiny_model(ignore_map_case["root"] / "model")
    with pytest.raises(InputError, match=r"checkpoint not found: .*fold_3/checkpoint_final\.pth"):
        show_ignore_map(
            [ignore_map_case["image"]],
            ignore_map_case["label"],
            ignore_map_case["root"] / "x.png",
            model_dir=model,
            folds=["3"],
        )
    with pytest.raises(InputError, match="the model expects 1 input channel file"):
        show_ignore_map(
            [ignore_map_case["image"], ignore_map_case["image"]],
            ignore_map_case["label"],
            ignore_map_case["root"] / "x.png",
            model_dir=model,
        )
