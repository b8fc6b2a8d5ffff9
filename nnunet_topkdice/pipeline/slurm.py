"""A SLURM job array with one nnU-Net training per array task.

:func:`slurm_script` writes a bash script for ``sbatch``: ``#SBATCH --array=0-(N-1)``, the variables
nnU-Net needs exported, and a ``case "$SLURM_ARRAY_TASK_ID"`` choosing one training. Each task looks at
its fold folder when it starts, like the local runner: finished -> exits 0, interrupted -> ``--c``,
final validation missing -> ``--val``; so a requeued or resubmitted array continues where it stopped.
Running the script by hand with ``SLURM_ARRAY_TASK_ID=i bash FILE`` runs task ``i`` on this machine.

The resources a task asks for (:class:`SlurmResources`) follow the device the script trains on, never the
machine that writes it (a login node has no GPU): on ``cuda`` one ``--gres=gpu:N`` per training (``N`` =
``--num-gpus``), ``nnUNet_n_proc_DA`` data-augmentation workers per GPU (nnU-Net's default 12) and
``--cpus-per-task`` = ``N x (workers + 1)`` (one main process per GPU, as nnU-Net counts). The user's own
lines (partition, time, memory, modules) come from ``--slurm-header FILE``; a ``--cpus-per-task`` there
replaces the script's and sets the workers, a ``--gres`` (or ``--gpus``, ``-G``, ``--gpus-per-task``,
``--gpus-per-node``) there replaces the script's ``--gres`` and changes only what SLURM allocates (nnU-Net's
``-num_gpus`` stays ``--num-gpus``).
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nnunet_topkdice.errors import InputError
from nnunet_topkdice.pipeline.commands import NNUNET_DEFAULT_NUM_PROCESSES
from nnunet_topkdice.pipeline.compare import TrainingJob

#: nnU-Net's number of data-augmentation workers per GPU on a machine it does not know (the ``else`` of
#: ``nnunetv2.utilities.default_n_proc_DA.get_allowed_n_proc_DA``), where ``nnUNet_n_proc_DA`` is unset.
NNUNET_DEFAULT_N_PROC_DA = 12
#: On the CPU, nnU-Net's final validation and its evaluation start ``nnUNet_def_n_proc`` worker processes
#: (8 where it is unset), each importing torch: in a task given one core and a few GB, 8 of them can exceed
#: its memory limit. Unless the variable is set: the task's cores (``nproc`` counts its CPU affinity; without
#: the OpenMP variables, which it would also obey), at most nnU-Net's default.
CPU_VALIDATION_WORKERS = (
    f"# nnU-Net's final validation starts nnUNet_def_n_proc workers ({NNUNET_DEFAULT_NUM_PROCESSES} if unset): "
    "no more than the task's cores",
    'if [[ -z "${nnUNet_def_n_proc:-}" ]]; then',
    "  cores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || getconf _NPROCESSORS_ONLN)",
    f"  export nnUNet_def_n_proc=$(( cores < {NNUNET_DEFAULT_NUM_PROCESSES} ? cores "
    f": {NNUNET_DEFAULT_NUM_PROCESSES} ))",
    "fi",
)
#: ``#SBATCH`` options that the script must set itself (the array's task ids pick the trainings).
_OWN_ONLY = ("--array",)
#: ``#SBATCH`` options that the script sets unless the user's header sets them.
_DEFAULTED = ("--job-name", "--output", "--gres", "--cpus-per-task")
#: ``#SBATCH`` options that ask for GPUs: one of them in the user's header replaces the script's ``--gres``
#: (SLURM would otherwise be asked for GPUs twice).
_GPU_OPTIONS = ("--gres", "--gpus", "--gpus-per-task", "--gpus-per-node")
_OPTION = re.compile(r"^#SBATCH\s+(--[a-z-]+|-[a-zA-Z])")
_SHORT = {"-J": "--job-name", "-o": "--output", "-c": "--cpus-per-task", "-a": "--array", "-G": "--gpus"}


@dataclass(frozen=True)
class SlurmResources:
    """What each array task asks SLURM for, and the user's own lines.

    Attributes:
        gpus_per_task: ``#SBATCH --gres=gpu:N`` (0: no GPU line, training on the CPU).
        n_proc_da: ``nnUNet_n_proc_DA`` exported for the tasks (None: not exported).
        cpus_per_task: ``#SBATCH --cpus-per-task`` (None: no line).
        header: the user's lines (``--slurm-header``): ``#SBATCH`` lines go with the script's directives,
            the others (``module load ...``) run before the task starts.
    """

    gpus_per_task: int = 0
    n_proc_da: int | None = None
    cpus_per_task: int | None = None
    header: tuple[str, ...] = ()


def _sbatch_option(line: str) -> str | None:
    match = _OPTION.match(line.strip())
    return _SHORT.get(match.group(1), match.group(1)) if match else None


def _sbatch_value(line: str) -> str | None:
    """The value of an ``#SBATCH`` line's option as sbatch reads it (None: the line has none).

    ``-c4``, ``-c 4``, ``--cpus-per-task=4`` and ``--cpus-per-task 4`` all give ``"4"``; a ``# comment``
    after the value is not part of it."""
    rest = line.strip().removeprefix("#SBATCH")
    try:
        words = shlex.split(rest, comments=True)
    except ValueError:  # an unbalanced quote: the words as they stand
        words = rest.split()
    if not words:
        return None
    option, following = words[0], words[1] if len(words) > 1 else None
    if option.startswith("--"):
        return option.partition("=")[2] if "=" in option else following
    # a short option takes its value glued on (getopt's -c4) or as the next word
    return option[2:] if len(option) > 2 else following


def _header_directive(header: Sequence[str], option: str) -> tuple[str, str | None] | None:
    """``(line, value)`` of the header's last ``#SBATCH`` line setting ``option`` (sbatch keeps the last)."""
    found = None
    for line in header:
        if _sbatch_option(line) == option:
            found = (line.strip(), _sbatch_value(line))
    return found


def read_slurm_header(path: Path) -> tuple[str, ...]:
    """The lines of a ``--slurm-header`` file, without a ``#!`` line and trailing blank lines.

    Raises:
        InputError: the file cannot be read, it sets ``--array`` (the script's own), or its ``--cpus-per-task``
            is not a whole number.
    """
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise InputError(f"--slurm-header {path}: cannot read it ({e.strerror})") from None
    lines = [line.rstrip() for line in lines if not line.startswith("#!")]
    for line in lines:
        if _sbatch_option(line) in _OWN_ONLY:
            raise InputError(f"--slurm-header {path}: {line.strip()!r}: the script sets --array itself "
                             "(one task per training)")  # fmt: skip
    _header_cpus(lines, where=f"--slurm-header {path}")  # here, before the preprocessing runs
    while lines and not lines[-1].strip():
        lines.pop()
    return tuple(lines)


def slurm_resources(
    device: str,
    num_gpus: int,
    *,
    n_proc_da: int | None = None,
    header: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> SlurmResources:
    """The resources of one task training on ``device`` (decided by the caller, never by this machine).

    Args:
        device: ``cuda``, ``cpu`` or ``mps``.
        num_gpus: GPUs per training (nnU-Net's ``-num_gpus``).
        n_proc_da: data-augmentation workers per GPU (``--n-proc-da``); default: the user's
            ``nnUNet_n_proc_DA``, else ``--cpus-per-task`` of the header divided among the GPUs (one core
            each for the main process), else :data:`NNUNET_DEFAULT_N_PROC_DA`.
        header: the user's lines; a ``--cpus-per-task`` there is kept and the workers follow it.
        environ: where the user's ``nnUNet_n_proc_DA`` is looked up (default ``os.environ``).
    Returns:
        On ``cuda``: ``--gres=gpu:num_gpus``, the workers, ``--cpus-per-task = num_gpus x (workers + 1)``.
        Elsewhere: no GPU, no workers exported here (the trainings' own ``nnUNet_n_proc_DA``, 0 on the CPU,
        stays) and no ``--cpus-per-task`` (CPU training uses every core the task gets); the script then
        limits nnU-Net's validation workers to the task's cores (:data:`CPU_VALIDATION_WORKERS`).
    Raises:
        InputError: a header's ``--cpus-per-task`` not a whole number, or (on ``cuda``) too small for one main
            process per GPU.
    """
    environ = os.environ if environ is None else environ
    header = tuple(header)
    user_cpus = _header_cpus(header)  # checked on every device: the script leaves its own line out for it
    if device != "cuda":
        return SlurmResources(0, None, None, header)
    if n_proc_da is None and environ.get("nnUNet_n_proc_DA", "").isdigit():
        n_proc_da = int(environ["nnUNet_n_proc_DA"])
    if n_proc_da is None and user_cpus is not None:
        if user_cpus < num_gpus:
            raise InputError(f"--slurm-header asks for --cpus-per-task={user_cpus}, fewer than the "
                             f"{num_gpus} training process(es) of --num-gpus {num_gpus}")  # fmt: skip
        n_proc_da = user_cpus // num_gpus - 1
    if n_proc_da is None:
        n_proc_da = NNUNET_DEFAULT_N_PROC_DA
    return SlurmResources(num_gpus, n_proc_da, num_gpus * (n_proc_da + 1), header)


def _header_cpus(header: Sequence[str], where: str = "--slurm-header") -> int | None:
    """The header's ``--cpus-per-task`` (``-c``), or None where it sets none.

    Raises:
        InputError: its value is not a whole number (the script leaves out its own line for it).
    """
    directive = _header_directive(header, "--cpus-per-task")
    if directive is None:
        return None
    line, value = directive
    if value is None or not value.isdigit():
        raise InputError(f"{where}: {line!r}: --cpus-per-task needs a whole number of cores, got {value!r}")
    return int(value)


def _gres_gpus(gres: str) -> int | None:
    """The GPUs a ``--gres`` value asks for: ``gpu:2`` -> 2, ``gpu:a100:1`` -> 1, ``gpu`` or ``gpu:a100`` -> 1
    (SLURM's default count), other resources 0; None where a count cannot be read."""
    total = 0
    for resource in gres.split(","):
        name, *rest = resource.split(":")
        if name != "gpu":
            continue
        if rest and rest[-1].isdigit():
            total += int(rest[-1])
        elif len(rest) <= 1:  # no count, or a type without one
            total += 1
        else:
            return None
    return total


def task_summary(device: str, resources: SlurmResources) -> str:
    """The line printed once the script is written: how each task trains and what it asks SLURM for, as the
    script has it (a header's ``--gres`` or ``--cpus-per-task`` where it replaces the script's own line).

    For example ``Each task trains with -device cuda (--gres=gpu:1, --cpus-per-task=13, nnUNet_n_proc_DA=12);
    change it with ...``. A header's ``--gres`` changes what SLURM allocates, not nnU-Net's ``-num_gpus``
    (``--num-gpus``): the line then names ``-num_gpus``, and says so where the two GPU counts differ.
    """
    trains = f"-device {device}"
    asks: list[str] = []
    notes: list[str] = []
    gpus = [(option, found) for option in _GPU_OPTIONS if (found := _header_directive(resources.header, option))]
    for option, (line, value) in gpus:
        asks.append(f"{option}={value} from --slurm-header" if value else f"{line!r} from --slurm-header")
    if gpus and device == "cuda":
        trains += f" -num_gpus {resources.gpus_per_task}"
        option, (_, value) = gpus[0]
        # --gres=gpu[:type]:N, --gpus[-per-*]=[type:]N
        allocated = None if not value else _gres_gpus(value if option == "--gres" else f"gpu:{value}")
        if len(gpus) == 1 and option != "--gpus-per-node" and allocated not in (None, resources.gpus_per_task):
            notes.append(f"--slurm-header asks for {allocated} GPU(s) per task, but each training uses "
                         f"{resources.gpus_per_task} (nnU-Net's -num_gpus comes from --num-gpus, not from "
                         f"{option}).")  # fmt: skip
    if not gpus and resources.gpus_per_task:
        asks.append(f"--gres=gpu:{resources.gpus_per_task}")
    cpus = _header_directive(resources.header, "--cpus-per-task")
    if cpus is not None:
        asks.append(f"--cpus-per-task={cpus[1]} from --slurm-header")
        if resources.cpus_per_task is not None and int(cpus[1]) < resources.cpus_per_task:
            # --n-proc-da or nnUNet_n_proc_DA given with the header's cores: the workers share them
            notes.append(f"{resources.cpus_per_task} processes per task (nnUNet_n_proc_DA={resources.n_proc_da} "
                         f"workers and one main process per GPU) share the header's {cpus[1]} cores.")  # fmt: skip
    elif resources.cpus_per_task:
        asks.append(f"--cpus-per-task={resources.cpus_per_task}")
    if resources.n_proc_da is not None:
        asks.append(f"nnUNet_n_proc_DA={resources.n_proc_da}")
    text = f"Each task trains with {trains}" + (f" ({', '.join(asks)})" if asks else "")
    text += "; change it with --device, --num-gpus, --n-proc-da or --slurm-header."
    return " ".join([text, *notes])


def slurm_script(
    jobs: Sequence[TrainingJob],
    env: Mapping[str, str],
    *,
    topkdice: Sequence[str],
    log_dir: Path,
    collect_command: str,
    resources: SlurmResources = SlurmResources(),
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
        resources: GPUs, data-augmentation workers, cores and the user's lines (:func:`slurm_resources`).

    Raises:
        ValueError: no jobs.
    """
    if not jobs:
        raise ValueError("no training left to run: the job array would be empty")
    q = shlex.quote
    own = {
        "--job-name": f"#SBATCH --job-name={job_name}",
        "--output": f"#SBATCH --output={log_dir}/slurm_%A_%a.log",
        "--gres": f"#SBATCH --gres=gpu:{resources.gpus_per_task}" if resources.gpus_per_task else None,
        "--cpus-per-task": f"#SBATCH --cpus-per-task={resources.cpus_per_task}" if resources.cpus_per_task else None,
    }
    user_directives = [line for line in resources.header if _sbatch_option(line)]
    user_lines = [line for line in resources.header if not _sbatch_option(line)]
    users = {_sbatch_option(line) for line in user_directives}
    if users & set(_GPU_OPTIONS):  # the header's own way of asking for GPUs replaces the script's --gres
        users.add("--gres")
    lines = ["#!/bin/bash", f"#SBATCH --array=0-{len(jobs) - 1}"]
    lines += [line for option, line in own.items() if line and option not in users]
    if user_directives:
        lines += ["# from --slurm-header:", *user_directives]
    else:
        lines.append("# Add your cluster's #SBATCH lines here (partition, time, memory), or pass --slurm-header FILE.")
    if resources.cpus_per_task is None and not resources.gpus_per_task:
        lines.append("# Training on the CPU uses every core the task gets: ask for them with #SBATCH --cpus-per-task.")
    lines += [
        f"# One nnU-Net training per array task ({len(jobs)} in all). Submit with: sbatch {{this file}}",
        "# Run one task here: SLURM_ARRAY_TASK_ID=0 bash {this file}",
        "# When every task is done, collect the results (it finds the trainings done and only evaluates):",
        f"#   {collect_command}",
    ]
    lines += user_lines
    lines += ["set -euo pipefail", ""]
    lines += [f"export {key}={q(value)}" for key, value in env.items()]
    if resources.n_proc_da is not None:
        lines.append(f"export nnUNet_n_proc_DA={resources.n_proc_da}  # data-augmentation workers per GPU")
    if not resources.gpus_per_task:
        lines += CPU_VALIDATION_WORKERS
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
