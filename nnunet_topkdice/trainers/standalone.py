"""Trainers without a preprocessed dataset: hand-made plans, set-up and batches for tests and benchmarks.

nnU-Net's ``initialize()`` needs the preprocessed dataset on disk. :func:`setup_trainer` does the same
set-up steps that matter for a training step (batch size, network, optimizer, loss) from plans alone, so
a trainer's real ``train_step`` can run on a synthetic batch from :func:`synthetic_batch`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from batchgeneratorsv2.transforms.utils.seg_to_regions import ConvertSegmentationToRegionsTransform
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

from nnunet_topkdice.environment import environment

SYNTHETIC_DATASET_NAME = "Dataset999_TopKDiceSynthetic"


def _pool_strides(patch_size: Sequence[int], min_feature_map: int, max_stages: int) -> list[list[int]]:
    """Per-stage strides: halve every axis while it stays >= ``min_feature_map`` (nnU-Net's rule of thumb)."""
    sizes = list(patch_size)
    strides = [[1] * len(sizes)]
    while len(strides) < max_stages:
        stride = [2 if s // 2 >= min_feature_map and s % 2 == 0 else 1 for s in sizes]
        if not any(s == 2 for s in stride):
            break
        strides.append(stride)
        sizes = [s // st for s, st in zip(sizes, stride, strict=True)]
    return strides


def synthetic_plans(
    patch_size: Sequence[int],
    *,
    batch_size: int = 2,
    batch_dice: bool = True,
    base_features: int = 32,
    max_features: int | None = None,
    min_feature_map: int = 4,
    max_stages: int = 6,
) -> tuple[dict[str, Any], str]:
    """nnU-Net plans with one configuration (a ``PlainConvUNet``) for ``patch_size``.

    Shaped like the plans ``nnUNetv2_plan_and_preprocess`` writes (default planner), with the network
    sizes chosen here: features ``base_features * 2**stage`` capped at ``max_features`` (nnU-Net's 512
    in 2D, 320 in 3D when None), two convolutions per stage, 3x3(x3) kernels.

    Returns:
        (plans, configuration name): ``"2d"`` for two axes, ``"3d_fullres"`` for three.
    Raises:
        ValueError: ``patch_size`` does not have 2 or 3 axes.
    """
    dim = len(patch_size)
    if dim not in (2, 3):
        raise ValueError(f"patch_size must have 2 or 3 axes, got {tuple(patch_size)!r}")
    configuration = "2d" if dim == 2 else "3d_fullres"
    cap = max_features if max_features is not None else (512 if dim == 2 else 320)
    strides = _pool_strides(patch_size, min_feature_map, max_stages)
    n_stages = len(strides)
    conv = "Conv2d" if dim == 2 else "Conv3d"
    norm = "InstanceNorm2d" if dim == 2 else "InstanceNorm3d"
    config = {
        "data_identifier": f"nnUNetPlans_{configuration}",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": batch_size,
        "patch_size": list(patch_size),
        "median_image_size_in_voxels": [float(s) for s in patch_size],
        "spacing": [1.0] * dim,
        "normalization_schemes": ["ZScoreNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {
            "is_seg": False,
            "order": 1,
            "order_z": 0,
            "force_separate_z": None,
        },
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": n_stages,
                "features_per_stage": [min(base_features * 2**i, cap) for i in range(n_stages)],
                "conv_op": f"torch.nn.modules.conv.{conv}",
                "kernel_sizes": [[3] * dim for _ in range(n_stages)],
                "strides": strides,
                "n_conv_per_stage": [2] * n_stages,
                "n_conv_per_stage_decoder": [2] * (n_stages - 1),
                "conv_bias": True,
                "norm_op": f"torch.nn.modules.instancenorm.{norm}",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                "dropout_op": None,
                "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU",
                "nonlin_kwargs": {"inplace": True},
            },
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        },
        "batch_dice": batch_dice,
    }
    plans = {
        "dataset_name": SYNTHETIC_DATASET_NAME,
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0] * 3,
        "original_median_shape_after_transp": [1, *patch_size] if dim == 2 else list(patch_size),
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {configuration: config},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {
                "max": 1.0,
                "mean": 0.0,
                "median": 0.0,
                "min": -1.0,
                "percentile_00_5": -1.0,
                "percentile_99_5": 1.0,
                "std": 1.0,
            }
        },
    }
    return plans, configuration


def synthetic_dataset_json(n_classes: int, *, ignore_label: bool = False, regions: bool = False) -> dict[str, Any]:
    """A ``dataset.json`` with one channel and labels ``background, c1 .. c{n_classes-1}``.

    ``ignore_label`` adds ``"ignore": n_classes``; ``regions`` turns the labels into nested regions
    (``region_i = labels i..n-1``), which makes nnU-Net train with sigmoids.
    """
    labels: dict[str, Any] = {"background": 0}
    for c in range(1, n_classes):
        labels[f"c{c}"] = list(range(c, n_classes)) if regions else c
    dataset_json: dict[str, Any] = {
        "channel_names": {"0": "synthetic"},
        "labels": labels,
        "numTraining": 0,
        "file_ending": ".nii.gz",
    }
    if regions:
        dataset_json["regions_class_order"] = list(range(1, n_classes))
    if ignore_label:
        labels["ignore"] = n_classes
    return dataset_json


def setup_trainer(
    trainer_class: type[nnUNetTrainer],
    plans: dict[str, Any],
    configuration: str,
    dataset_json: dict[str, Any],
    results_dir: str | os.PathLike[str],
    device: torch.device | str = "cpu",
) -> nnUNetTrainer:
    """Construct ``trainer_class`` and set up what ``initialize()`` sets up, without any dataset on disk.

    nnU-Net's constructor writes its log under ``$nnUNet_results``; that variable is pointed at
    ``results_dir`` for the constructor only. Then, as ``initialize()`` does: batch size, input
    channels, ``build_network_architecture`` (deep supervision on), torch.compile of the network when
    ``trainer._do_i_compile()`` (CUDA unless ``nnUNet_compile`` is false), ``configure_optimizers`` and
    ``_build_loss``. Not done: DDP wrapping (single process only).

    Raises:
        whatever the trainer raises (for example nnU-Net's CE trainer's ``AssertionError`` on regions).
    """
    plans = {**plans, "continue_training": False}  # nnUNetTrainer.__init__ pops this key
    with environment({"nnUNet_results": str(Path(results_dir))}):
        trainer = trainer_class(plans, configuration, 0, dataset_json, device=torch.device(device))
    trainer._set_batch_size_and_oversample()
    trainer.num_input_channels = determine_num_input_channels(
        trainer.plans_manager, trainer.configuration_manager, dataset_json
    )
    trainer.network = trainer.build_network_architecture(
        trainer.plans_manager,
        trainer.configuration_manager,
        trainer.num_input_channels,
        trainer.label_manager.num_segmentation_heads,
        trainer.enable_deep_supervision,
    ).to(trainer.device)
    if trainer._do_i_compile():
        trainer.network = torch.compile(trainer.network)
    trainer.optimizer, trainer.lr_scheduler = trainer.configure_optimizers()
    trainer.loss = trainer._build_loss()
    trainer.was_initialized = True
    return trainer


def synthetic_batch(
    trainer: nnUNetTrainer,
    *,
    seed: int = 0,
    ignore_fraction: float = 0.0,
    block: int = 4,
) -> dict[str, Any]:
    """A batch shaped like nnU-Net's data loader output for ``trainer``'s plans.

    Labels are blocks of ``block`` voxels per axis drawn uniformly from the foreground and background
    labels; ``ignore_fraction`` of the leading rows (first spatial axis) get the ignore label. The image
    is the label plus noise, so a network can learn it. For a region-based dataset the labels become
    region maps with nnU-Net's own ``ConvertSegmentationToRegionsTransform`` (the ignore label, if any, as
    the last channel), as its training pipeline does. Targets are downsampled with nnU-Net's own
    ``DownsampleSegForDSTransform`` when deep supervision is on.

    Shape:
        returns {"data": (B, C_in, *patch) float32, "target": list of (B, 1, *patch_scaled) int16 or one
        (B, 1, *patch) tensor without deep supervision}, on the CPU like the loader's output. With regions
        the targets are (B, R [+ 1], ...) bool instead.
    """
    generator = torch.Generator().manual_seed(seed)
    patch = list(trainer.configuration_manager.patch_size)
    n_labels = len(trainer.label_manager.all_labels)
    coarse = [max(1, -(-p // block)) for p in patch]
    labels = torch.randint(0, n_labels, (trainer.batch_size, 1, *coarse), generator=generator)
    for axis in range(len(patch)):
        labels = labels.repeat_interleave(block, dim=2 + axis)
    labels = labels[(slice(None), slice(None), *(slice(0, p) for p in patch))].contiguous()
    data = labels.float().repeat(1, trainer.num_input_channels, *[1] * len(patch))
    data = data + 0.5 * torch.randn(data.shape, generator=generator)
    if ignore_fraction > 0:
        if trainer.label_manager.ignore_label is None:
            raise ValueError("ignore_fraction > 0 needs a dataset with an ignore label")
        n_rows = max(1, round(ignore_fraction * patch[0]))
        labels[:, :, :n_rows] = trainer.label_manager.ignore_label
    labels = labels.to(torch.int16)
    label_manager = trainer.label_manager
    if label_manager.has_regions:
        regions = list(label_manager.foreground_regions)
        if label_manager.ignore_label is not None:
            regions.append(label_manager.ignore_label)
        to_regions = ConvertSegmentationToRegionsTransform(regions)
        labels = torch.stack([to_regions._apply_to_segmentation(seg) for seg in labels])
    if not trainer.enable_deep_supervision:
        return {"data": data, "target": labels}
    downsample = DownsampleSegForDSTransform(trainer._get_deep_supervision_scales())
    per_sample = [downsample._apply_to_segmentation(seg) for seg in labels]
    target = [torch.stack(scale) for scale in zip(*per_sample, strict=True)]
    return {"data": data, "target": target}
