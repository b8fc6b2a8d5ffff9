"""A SLURM job array with one nnU-Net training per array task.

:func:`slurm_script` writes a bash script for ``sbatch``: ``#SBATCH --array=0-(N-1)``, the variables
nnU-Net needs exported, and a ``case "$SLURM_ARRAY_TASK_ID"`` choosing one training. Each task looks at
its fold folder when it starts, like the local runner: finished -> exits 0, interrupted -> ``--c``,
final validation missing -> ``--val``; so a requeued or resubmitted array continues where it stopped.
Running the script by hand with ``SLURM_ARRAY_TASK_ID=i bash FILE`` runs task ``i`` on this machine.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

from nnunet_topkdice.pipeline.compare import TrainingJob


def slurm_script(
    jobs: Sequence[TrainingJob],
    env: Mapping[str, str],
    *,
    topkdice: Sequence[str],
    log_dir: Path,
    collect_command: str,
    gpus_per_task: int = 0,
    job_name: str = "topkdice",
) -> str:
    """The job-array script (pure: returns the text).

    Args:
        jobs: one array task each, in this order (task i runs ``jobs[i]``).
        env: exported at the top (nnU-Net's folders, ``nnUNet_extTrainer``, ...); a job's own
            variables (``job.env``) are exported in its task.
        topkdice: the argv prefix that runs ``topkdice`` in the environment the script must use.
        log_dir: SLURM's output files go here (``slurm_<job>_<task>.log``).
        collect_command: printed in the header: what to run once every task is done.
        gpus_per_task: ``#SBATCH --gres=gpu:N`` (0: no GPU line).

    Raises:
        ValueError: no jobs.
    """
    if not jobs:
        raise ValueError("no training left to run: the job array would be empty")
    q = shlex.quote
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={job_name}",
        f"#SBATCH --array=0-{len(jobs) - 1}",
        f"#SBATCH --output={log_dir}/slurm_%A_%a.log",
    ]
    if gpus_per_task:
        lines.append(f"#SBATCH --gres=gpu:{gpus_per_task}")
    lines += [
        "# Add your cluster's own #SBATCH lines above (partition, time, memory).",
        f"# One nnU-Net training per array task ({len(jobs)} in all). Submit with: sbatch {{this file}}",
        "# Run one task here: SLURM_ARRAY_TASK_ID=0 bash {this file}",
        "# When every task is done, collect the results (it finds the trainings done and only evaluates):",
        f"#   {collect_command}",
        "set -euo pipefail",
        "",
    ]
    lines += [f"export {key}={q(value)}" for key, value in env.items()]
    lines += [f"TOPKDICE=({' '.join(q(part) for part in topkdice)})", ""]
    lines.append('case "${SLURM_ARRAY_TASK_ID:?set SLURM_ARRAY_TASK_ID (sbatch --array does)}" in')
    for index, job in enumerate(jobs):
        exports = "".join(f" export {key}={q(value)};" for key, value in job.env.items())
        args = " ".join(q(part) for part in job.base_argv[1:])  # without the leading "topkdice"
        lines.append(f"  {index})  # {job.name}, seed {job.seed}, fold {job.fold}")
        lines.append(f"    run_dir={q(str(job.run_dir))}; needs_validation={int(job.needs_validation)};{exports}")
        lines.append(f"    args=({args}) ;;")
    lines += [
        f'  *) echo "no task $SLURM_ARRAY_TASK_ID in this array (0-{len(jobs) - 1})" >&2; exit 2 ;;',
        "esac",
        "",
        'if [[ -f "$run_dir/checkpoint_final.pth" ]]; then',
        '  if [[ $needs_validation == 0 || -f "$run_dir/validation/summary.json" ]]; then',
        '    echo "already trained: $run_dir"; exit 0',
        "  fi",
        "  args+=(--val)  # trained; nnU-Net's final validation was interrupted",
        'elif [[ -f "$run_dir/checkpoint_latest.pth" || -f "$run_dir/checkpoint_best.pth" ]]; then',
        "  args+=(--c)  # interrupted: continue",
        "fi",
        'echo "+ topkdice ${args[*]}"',
        'exec "${TOPKDICE[@]}" "${args[@]}"',
        "",
    ]
    return "\n".join(lines)
