"""``topkdice demo``: the reproduce pipeline on a built-in synthetic dataset, in minutes on a CPU.

It generates the synthetic Synapse-like dataset (:mod:`.synthetic`), then runs exactly the steps of
``topkdice reproduce --dataset synapse`` (conversion, nnU-Net planning and preprocessing, training,
prediction, evaluation) with the short demo schedule (:class:`~nnunet_topkdice.trainers.DemoSchedule`).
Without nnU-Net's folder variables it keeps everything inside the work directory.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from nnunet_topkdice.pipeline.reproduce import (
    NnunetFolders,
    PipelineConfig,
    PipelineResult,
    paper_trainers,
    run_pipeline,
)

#: Dataset id of the synthetic dataset: not the paper's 201, so that a demo run never touches a real
#: Synapse conversion when nnUNet_raw is set.
DEMO_DATASET_ID = 990
#: The rows the demo compares by default: nnU-Net's default loss and the paper's loss.
DEMO_ROWS: tuple[str, ...] = ("CE + Dice", "CE + topK-Dice")
#: Environment of the demo's training commands where the user has not set the variable: on a small CPU,
#: data augmentation in the training process is faster than worker processes competing with the network
#: for the cores (measured). nnU-Net's planning breaks with it, so it is given to training only.
DEMO_TRAIN_ENV: dict[str, str] = {"nnUNet_n_proc_DA": "0"}


def _unset_only(defaults: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    return {key: value for key, value in defaults.items() if key not in environ}


def demo_config(
    workdir: Path,
    *,
    device: str,
    all_rows: bool = False,
    num_processes: int = 2,
    environ: Mapping[str, str] | None = None,
) -> PipelineConfig:
    """The pipeline configuration of the demo (pure: reads only ``environ``, default ``os.environ``).

    Synapse's protocol (fold ``all``) on :data:`DEMO_DATASET_ID` with the demo-schedule trainers of
    :data:`DEMO_ROWS` (every row of the paper's table with ``all_rows``), no ``--paper`` comparison
    (the paper's numbers are not about this data), and two environment defaults the user may override:
    ``nnUNet_def_n_proc`` (nnU-Net's default of 8 export workers only adds start-up time on a small
    CPU) and :data:`DEMO_TRAIN_ENV` for training.
    """
    environ = os.environ if environ is None else environ
    workdir = Path(workdir).resolve()
    return PipelineConfig(
        dataset="synapse",
        dataset_id=DEMO_DATASET_ID,
        trainers=paper_trainers("synapse", "demo", None if all_rows else DEMO_ROWS),
        fold="all",
        device=device,
        workdir=workdir,
        folders=NnunetFolders.resolve(workdir, environ),
        source=workdir / "synthetic_synapse",
        num_processes=num_processes,
        extra_env=_unset_only({"nnUNet_def_n_proc": str(num_processes)}, environ),
        train_env=_unset_only(DEMO_TRAIN_ENV, environ),
    )


def run_demo(
    workdir: Path, *, device: str, all_rows: bool = False, num_processes: int = 2
) -> tuple[PipelineResult, PipelineConfig]:
    """Generate the synthetic dataset (once) and run the pipeline on it with the demo schedule.

    Args:
        workdir: holds the synthetic source data, the predictions and the evaluation, and nnU-Net's
            folders when ``nnUNet_raw``/``nnUNet_preprocessed``/``nnUNet_results`` are unset.
        device: ``cpu``, ``cuda`` or ``mps``.
        all_rows: compare every row of the paper's table instead of CE + Dice vs CE + topK-Dice.
        num_processes: worker processes of preprocessing, prediction and evaluation.

    Returns:
        The pipeline's result and the configuration it ran with (:func:`demo_config`).

    Raises:
        subprocess.CalledProcessError: an nnU-Net command failed.
    """
    from nnunet_topkdice.pipeline.synthetic import generate_synapse_like

    config = demo_config(workdir, device=device, all_rows=all_rows, num_processes=num_processes)
    print("\n[1/6] Generating the synthetic Synapse-like dataset", file=sys.stderr, flush=True)
    if config.source.is_dir():  # written atomically: a folder that exists is complete
        print(f"skipped: already generated: {config.source}", file=sys.stderr)
    else:
        generate_synapse_like(config.source)
        print(f"wrote {config.source}", file=sys.stderr)
    return run_pipeline(config, first_step=2, total_steps=6), config
