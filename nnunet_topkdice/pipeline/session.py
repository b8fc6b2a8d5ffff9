"""One invocation of ``compare``, ``reproduce`` or ``demo``: list, emit a SLURM array, or run, then report.

The three commands differ only in the steps they put in front of the comparison (generating or
converting a dataset) and in their presets; they all end here.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nnunet_topkdice.cpu_threads import CPU_THREADS_VARIABLE, threads_per_job
from nnunet_topkdice.pipeline import state, warm
from nnunet_topkdice.pipeline.compare import (
    CompareConfig,
    ComparePlan,
    child_environment,
    compare_steps,
    exported_variables,
    resolve_plan,
    schedule_warnings,
    training_jobs,
)
from nnunet_topkdice.pipeline.prechecks import check_before_running
from nnunet_topkdice.pipeline.runner import describe_steps, run_steps
from nnunet_topkdice.pipeline.steps import Step, format_phase_times, resolve_executable


@dataclass(frozen=True)
class Invocation:
    """How to run a comparison: list it, write a SLURM array, or run it here."""

    dry_run: bool = False
    emit_slurm: Path | None = None
    verbose: bool = False
    gpu_slots: tuple[str, ...] = ()  # CUDA_VISIBLE_DEVICES of each concurrent training
    cpu_jobs: int = 1  # --cpu-jobs: CPU trainings (and predictions) at once, each with its share of the cores
    collect_command: str = ""  # the command line that finishes a SLURM sweep (the same call)
    slurm_header: tuple[str, ...] = ()  # the user's lines for the SLURM script (--slurm-header)
    n_proc_da: int | None = None  # --n-proc-da: data-augmentation workers per GPU, if given


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_session(
    config: CompareConfig, invocation: Invocation, before: Sequence[Step] = (), *, show_times: bool = False
) -> int:
    """List, emit or run the comparison (``before`` first), then print the summary; returns the exit code.

    The comparison is resolved against the disk (:func:`resolve_plan`) once its dataset is there: at the
    start, or after the ``before`` steps that write it (a conversion). A dry run does not run them, so
    it lists the comparison as resolved from what is on disk now. ``show_times`` ends a run with one
    line on stderr: the wall-clock time of each phase and the total.

    Raises:
        subprocess.CalledProcessError: a command failed.
        InputError: bad input found by a step.
    """
    env = child_environment(config)
    for line in unset_notes(config):
        _err(line)
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in exported_variables(config, env).items())
    _err(f"To run a command by hand, first: export {exports}")

    plan = resolve_plan(config)
    # The step count of a plan resolved before the dataset exists is the final one: the presets that
    # write their dataset first (reproduce, demo) evaluate a test set with explicit folds.
    steps = compare_steps(plan)
    if invocation.dry_run:
        same_in_every_slot = next(iter(cpu_slots(invocation.cpu_jobs)), None)
        for line in describe_steps([*before, *steps], same_in_every_slot):
            print(line)
        return 0

    emit = invocation.emit_slurm is not None
    # on the CPU, the commands fork from a process that imported torch once (pipeline/warm.py); started
    # now, its imports overlap the checks below, which import nnU-Net's trainers here. Not when every step
    # is done: its imports would outlive this process by seconds and hold its output open (a pipe, `| tee`).
    warm_start = (
        config.device == "cpu" and not emit and warm.warm_start_allowed(env)
        and any(step.done() is None for step in [*before, *steps])
    )  # fmt: skip
    if warm_start:
        warm.prestart()
    # before anything runs: a misspelt trainer or an unwritable folder must not fail hours later
    to_train = sorted({job.trainer for job in training_jobs(plan) if job.remaining() is not None})
    check_before_running(config, env, emit_slurm=invocation.emit_slurm, writes_raw=bool(before), to_train=to_train)
    # a SLURM sweep prepares the data here (every task then finds it) and stops before the trainings
    total = len(before) + (_first_training(steps) if emit else len(steps))
    if not emit:
        _err(f"Logs: {config.log_dir}/<step>.log")
    started = time.monotonic()
    report = run_steps(before, env, log_dir=config.log_dir, verbose=invocation.verbose, total=total,
                       warm_start=warm_start)  # fmt: skip
    if before:
        plan = resolve_plan(config)
        steps = compare_steps(plan)
    if emit:
        return _emit_slurm(plan, invocation, steps, env, first=len(before) + 1)

    slots = [{"CUDA_VISIBLE_DEVICES": ids} for ids in invocation.gpu_slots] or cpu_slots(invocation.cpu_jobs)
    report += run_steps(steps, env, log_dir=config.log_dir, verbose=invocation.verbose, slots=slots,
                        first=len(before) + 1, total=total, warm_start=warm_start)  # fmt: skip
    elapsed = time.monotonic() - started
    print_summary(plan)
    for line in schedule_warnings(plan):
        _err(line)
    if not report.ran:
        _err("Nothing left to do: every step had already been done.")
    elif show_times:
        sys.stdout.flush()  # the summary first, then the times, also when both go to one terminal
        _err(format_phase_times(report.spans, elapsed))
    return 0


def cpu_slots(jobs: int, cores: int | None = None) -> list[dict[str, str]]:
    """The runner's slots for ``jobs`` concurrent CPU commands: each gives torch its share of the cores
    (:mod:`nnunet_topkdice.cpu_threads`). One job: no slot, so torch gets every core, as in nnU-Net."""
    if jobs == 1:
        return []
    return [{CPU_THREADS_VARIABLE: str(threads_per_job(jobs, cores))} for _ in range(jobs)]


def unset_notes(config: CompareConfig) -> list[str]:
    """Where the commands find nnU-Net's folders whose variable is unset (one line each kind)."""
    unset = [v for v in state.NNUNET_FOLDER_VARIABLES if v not in config.folders.from_environment]
    notes = []
    if "nnUNet_raw" in unset:
        found = (config.raw_dataset / "dataset.json").is_file()
        where = "where the dataset is" if found else f"{config.raw_dataset.name} goes there"
        notes.append(f"nnUNet_raw not set: using {config.folders.raw} ({where})")
    others = [v for v in unset if v != "nnUNet_raw"]
    if others:
        notes.append(f"{', '.join(others)} not set: using folders in {config.workdir}")
    return notes


def _first_training(steps: Sequence[Step]) -> int:
    return next(i for i, step in enumerate(steps) if step.parallel == "train")


def _emit_slurm(
    plan: ComparePlan, invocation: Invocation, steps: Sequence[Step], env: Mapping[str, str], *, first: int = 1
) -> int:
    from nnunet_topkdice.pipeline.slurm import slurm_resources, slurm_script, task_summary

    config = plan.config
    jobs = training_jobs(plan)
    preparation = steps[:_first_training(steps)]
    # Data preparation runs here, so that every task finds the preprocessed data and the split.
    run_steps(preparation, env, log_dir=config.log_dir, verbose=invocation.verbose, first=first,
              total=first - 1 + len(preparation))  # fmt: skip
    left = [job for job in jobs if job.remaining() is not None]
    if not left:
        _err(f"Every training is done; nothing to submit. Collect the results with:\n  {invocation.collect_command}")
        return 0
    resources = slurm_resources(config.device, config.num_gpus, n_proc_da=invocation.n_proc_da,
                                header=invocation.slurm_header)  # fmt: skip
    text = slurm_script(
        left, exported_variables(config, env), topkdice=resolve_executable("topkdice"), log_dir=config.log_dir,
        collect_command=invocation.collect_command, resources=resources, job_name=f"topkdice_{config.name}",
    )  # fmt: skip
    path = invocation.emit_slurm
    path.parent.mkdir(parents=True, exist_ok=True)
    config.log_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    done = len(jobs) - len(left)
    print(f"Wrote {path}: {len(left)} array task(s), one training each ({done} already done).")
    print(task_summary(config.device, resources))  # what the script asks for, the header's lines included
    print(f"Submit it:   sbatch {shlex.quote(str(path))}")
    print(f"Then collect: {invocation.collect_command}")
    return 0


def comparison_sentences(results: dict) -> list[str]:
    """The verdict lines of ``topkdice evaluate`` (one per trainer compared with the baseline)."""
    from nnunet_topkdice.evaluation.tables import comparison_sentences as sentences

    return list(sentences(results))


def split_table(table_md: str, sentences: Sequence[str]) -> tuple[list[str], list[str]]:
    """``table.md`` as (the table and its notes, the paired comparison: its heading and sentences).

    The comparison is what ``topkdice evaluate`` writes after the table: a line starting with "Paired
    comparison", then one sentence per trainer. Without that heading, only the sentences are moved."""
    lines = table_md.rstrip().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("Paired comparison")), None)
    if start is None:
        table = [line for line in lines if line not in sentences]
        verdict = list(sentences)
    else:
        table, verdict = lines[:start], [line for line in lines[start:] if line.strip()]
    while table and not table[-1].strip():
        table.pop()
    return table, verdict


def print_summary(plan: ComparePlan) -> None:
    """The table (once), where the files are, and the verdict last, on stdout."""
    config = plan.config
    out = plan.evaluation_dir
    results = json.loads((out / "results.json").read_text())
    table, verdict = split_table((out / "table.md").read_text(), comparison_sentences(results))
    print("\n".join(table))
    print()
    print(f"Figure:      {out / 'figure.png'}")
    print(f"Tables:      {out / 'table.md'}, {out / 'table.csv'}, {out / 'per_case.csv'}, {out / 'results.json'}")
    for picture in (results.get("case_pictures") or {}).get("files", {}).values():
        print(f"Cases:       {out / picture}")
    if config.test_set:
        print(f"Predictions: {config.workdir}/predictions/fold_{plan.fold_tag}/<trainer>/seed_<S>")
    else:
        print(f"Predictions: {config.workdir}/crossval/<trainer>/seed_<S> (nnU-Net's validation predictions)")
    print(f"Models:      {config.folders.results}/seed_<S>/{config.name}/"
          f"<trainer>__{config.plans}__{config.configuration}")  # fmt: skip
    print(f"Logs:        {config.log_dir}")
    if verdict:
        print()
        print("\n".join(verdict))
