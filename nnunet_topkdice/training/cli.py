"""``topkdice train``: ``nnUNetv2_train`` with ``--seed`` (same arguments, same option names)."""

from __future__ import annotations

import argparse

from nnunet_topkdice.argtypes import non_negative_int, positive_int

DEVICE_CHOICES = ("cuda", "cpu", "mps")


def _train_command(args: argparse.Namespace) -> int:
    from nnunet_topkdice.training.seeded import torch_device, train_seeded

    fold_dir = train_seeded(
        args.dataset_name_or_id,
        args.configuration,
        args.fold,
        seed=args.seed,
        trainer_name=args.tr,
        plans_identifier=args.p,
        pretrained_weights=args.pretrained_weights,
        num_gpus=args.num_gpus,
        export_validation_probabilities=args.npz,
        continue_training=args.c,
        only_run_validation=args.val,
        disable_checkpointing=args.disable_checkpointing,
        val_with_best=args.val_best,
        device=torch_device(args.device),
        deterministic=args.deterministic,
    )
    print(fold_dir)
    return 0


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="nnUNetv2_train with --seed: paired, repeatable training of any trainer",
        description="Train like nnUNetv2_train (same arguments and options) with a seed: the same seed gives the "
        "same initial weights and the same sequence of training batches (patches and augmentations) to every "
        "trainer, so two losses trained with it differ only in the loss. The run goes to "
        "$nnUNet_results/seed_<SEED>/ (an ordinary nnU-Net results folder: set nnUNet_results to it for "
        "nnUNetv2_predict) and the seed is written to seed.json in the fold folder. Trainers are found like "
        "nnUNetv2_train finds them, with this package's trainers added to nnUNet_extTrainer. Prints the fold folder.",
    )
    p.add_argument("dataset_name_or_id", metavar="DATASET", help="dataset name or id to train with")
    p.add_argument("configuration", metavar="CONFIGURATION", help="configuration to train (2d, 3d_fullres, ...)")
    p.add_argument("fold", metavar="FOLD", help="fold of the 5-fold cross-validation (0-4) or 'all'")
    p.add_argument("--seed", type=non_negative_int, required=True, help="seed of weights and batches (integer >= 0)")
    p.add_argument("-tr", default="nnUNetTrainer", metavar="TRAINER", help="trainer class (default: nnUNetTrainer)")
    p.add_argument("-p", default="nnUNetPlans", metavar="PLANS", help="plans identifier (default: nnUNetPlans)")
    p.add_argument("-pretrained_weights", default=None, metavar="FILE", help="nnU-Net checkpoint to start from")
    p.add_argument("-num_gpus", type=positive_int, default=1, metavar="N", help="GPUs (DDP if > 1; default: 1)")
    p.add_argument("--npz", action="store_true", help="also save softmax outputs of the final validation")
    p.add_argument("--c", action="store_true", help="continue the seeded run from its latest checkpoint")
    p.add_argument("--val", action="store_true", help="only run the final validation (training must be done)")
    p.add_argument("--val_best", action="store_true", help="validate with checkpoint_best instead of checkpoint_final")
    p.add_argument("--disable_checkpointing", action="store_true", help="write no checkpoints")
    p.add_argument("-device", choices=DEVICE_CHOICES, default="cuda",
                   help="device to train on (default: cuda); on the CPU torch gets one thread per core this "
                   "process may run on, or TOPKDICE_CPU_THREADS threads")  # fmt: skip
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="CUDA: cuDNN's deterministic kernels instead of benchmarked ones, and "
        "torch.use_deterministic_algorithms (warn only); slower",
    )
    p.set_defaults(func=_train_command)
