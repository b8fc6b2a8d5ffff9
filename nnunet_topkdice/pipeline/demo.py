"""``topkdice demo``: a paired comparison on a built-in synthetic dataset, in minutes on a CPU.

It generates the synthetic Synapse-like dataset (:mod:`.synthetic`), then runs the steps of
``topkdice reproduce --dataset synapse`` on it (conversion, planning and preprocessing, seeded training
of each trainer for each seed, prediction of the test set with each seed's models in one process,
evaluation; on the CPU two trainings or predictions at a time, :data:`DEMO_CPU_JOBS`) with the short
demo schedule (:class:`~nnunet_topkdice.trainers.DemoSchedule`), ends with the verdict of CE + topK-Dice
against CE + Dice over the seeds, and then with the time of each phase.
Without nnU-Net's folder variables it keeps everything in the work directory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from nnunet_topkdice.cpu_threads import cpu_cores
from nnunet_topkdice.pipeline.compare import CompareConfig, unset_only
from nnunet_topkdice.pipeline.reproduce import convert_step, every_row_trainer, paper_trainers, reproduce_config
from nnunet_topkdice.pipeline.state import NnunetFolders
from nnunet_topkdice.pipeline.steps import Step

#: Dataset id of the synthetic dataset: not the paper's 201, so that a demo run never touches a real
#: Synapse conversion when nnUNet_raw is set.
DEMO_DATASET_ID = 990
#: The rows the demo compares by default: nnU-Net's default loss (the baseline) and the paper's loss.
DEMO_ROWS: tuple[str, ...] = ("CE + Dice", "CE + topK-Dice")
#: Seeds of the demo: each trainer is trained once per seed, paired across trainers. Three, the fewest
#: with which the verdict may say better or worse (two seeds leave one degree of freedom for the
#: training's randomness).
DEMO_SEEDS: tuple[int, ...] = (0, 1, 2)
#: Environment of the demo's training commands where the user has not set the variable: no data
#: augmentation worker processes, which makes training on the CPU repeatable (and, on a small CPU,
#: faster than workers competing with the network for the cores), also on a GPU. nnU-Net's planning
#: breaks with it, so it is given to training only.
DEMO_TRAIN_ENV: dict[str, str] = {"nnUNet_n_proc_DA": "0"}
#: Trainings (and predictions) the demo runs at once on the CPU, each with its share of the cores
#: (``--cpu-jobs``): its small network leaves a second thread in one training mostly idle, so two trainings
#: side by side with one thread each finish the pair in 0.6 of the time on a 2-core CPU.
DEMO_CPU_JOBS = 2


def demo_cpu_jobs(cores: int | None = None) -> int:
    """The demo's ``--cpu-jobs`` default: :data:`DEMO_CPU_JOBS`, at most one per core."""
    return min(DEMO_CPU_JOBS, cores or cpu_cores())


def demo_config(
    workdir: Path,
    *,
    device: str,
    all_rows: bool = False,
    seeds: tuple[int, ...] = DEMO_SEEDS,
    num_processes: int = 2,
    environ: Mapping[str, str] | None = None,
) -> CompareConfig:
    """The comparison the demo runs (pure: reads only ``environ``, default ``os.environ``).

    Synapse's protocol (fold ``all``, test set) on :data:`DEMO_DATASET_ID` with the demo-schedule trainers
    of :data:`DEMO_ROWS` (every row of ``PAPER_ROWS`` with ``all_rows``), CE + Dice as the baseline, no
    ``--paper`` rows (the paper's numbers are not about this data), and two environment defaults the user
    may override: ``nnUNet_def_n_proc`` (nnU-Net's default of 8 export workers only adds start-up time on a
    small CPU) and :data:`DEMO_TRAIN_ENV` for training.
    """
    environ = os.environ if environ is None else environ
    workdir = Path(workdir).resolve()
    trainers = every_row_trainer("synapse", "demo") if all_rows else paper_trainers("synapse", "demo", DEMO_ROWS)
    config = reproduce_config(
        "synapse",
        workdir=workdir,
        folders=NnunetFolders.resolve(workdir, environ),
        trainers=trainers,
        dataset_id=DEMO_DATASET_ID,
        seeds=seeds,
        device=device,
        num_processes=num_processes,
        paper=None,
        train_env=unset_only(DEMO_TRAIN_ENV, environ),
        extra_env=unset_only({"nnUNet_def_n_proc": str(num_processes)}, environ),
    )
    return config


def synthetic_source(config: CompareConfig) -> Path:
    return config.workdir / "synthetic_synapse"


def generate_step(config: CompareConfig) -> Step:
    """Write the synthetic dataset in Synapse's raw layout (once: it is written atomically)."""
    source = synthetic_source(config)

    def done() -> str | None:
        return "already generated" if source.is_dir() else None

    def action(log_file: Path) -> None:
        from nnunet_topkdice.pipeline.synthetic import generate_synapse_like

        generate_synapse_like(source, progress=False)
        log_file.write_text(f"wrote {source}\n")

    return Step("generate", "Generating the synthetic Synapse-like dataset", done, action=action)


def demo_steps_before(config: CompareConfig) -> list[Step]:
    """The steps in front of the comparison: generate the dataset, convert it."""
    return [generate_step(config), convert_step("synapse", synthetic_source(config), config)]
