"""Warm starts (``pipeline/warm.py``): a forked child behaves like the command started as a new interpreter.

The batches and weights of a warm-started ``topkdice train`` are compared with the same run trained in the
test process in ``tests/test_seeded_training.py``; here: environment, directory, arguments, output, exit codes,
termination, and the runner's choice between the two ways of starting a command.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nnunet_topkdice.cli import main
from nnunet_topkdice.pipeline import runner, session, warm
from nnunet_topkdice.pipeline.runner import RunReport
from nnunet_topkdice.pipeline.steps import Command, Step

pytestmark = pytest.mark.skipif(not warm.warm_start_allowed({}), reason="no forkserver on this platform")


def test_the_child_gets_the_commands_environment_directory_and_arguments(tmp_path: Path) -> None:
    env = {"ONLY_THIS": "value", "PATH": os.environ["PATH"]}
    process = warm.start(["some-script", "3", "x y"], env, cwd=str(tmp_path), target="warm_targets:report")
    output = process.stdout.read().decode()
    assert process.wait(timeout=60) == 3 and process.poll() == 3
    first, second = output.splitlines()
    seen = json.loads(first)
    assert seen["argv"] == ["some-script", "3", "x y"] and seen["cwd"] == str(tmp_path)
    assert seen["env"] == env  # the whole environment, as subprocess.Popen(env=...) gives it
    fresh = subprocess.run([sys.executable, "-c", "import multiprocessing as m; print(m.get_start_method())"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    assert seen["start_method"] == fresh.stdout.strip()  # a new interpreter's default, not "forkserver"
    assert second == "a line on stderr"  # stderr comes through the same pipe, in order


def test_nnunet_reads_the_commands_own_variables_at_import() -> None:
    assert not any(name.split(".")[0] in ("nnunetv2", "nnunet_topkdice") for name in warm.PRELOAD)
    env = {**os.environ, "nnUNet_def_n_proc": "3", "nnUNet_n_proc_DA": "1"}
    process = warm.start(["configuration"], env, target="warm_targets:nnunet_configuration")
    output = process.stdout.read().decode()
    assert process.wait(timeout=60) == 0, output
    assert json.loads(output) == [3, 1]  # (the workers are capped at the number of CPUs)


def test_the_console_scripts_entry_point_runs(tmp_path: Path) -> None:
    assert warm.entry_point("topkdice") == "nnunet_topkdice.cli:main"
    assert warm.entry_point("no-such-script-anywhere") is None
    with pytest.raises(ValueError, match="'no-such-script-anywhere' is not an installed console script"):
        warm.start(["no-such-script-anywhere"], {})
    done = warm.start(["topkdice", "trainer-dir"], dict(os.environ))
    assert done.stdout.read().decode().strip().endswith(str(Path("nnunet_topkdice") / "ext"))
    assert done.wait(timeout=60) == 0
    bad = warm.start(["topkdice", "evaluate", "--no-such-flag"], dict(os.environ))
    assert "error: the following arguments are required: -r/--reference" in bad.stdout.read().decode()
    assert bad.wait(timeout=60) == 2  # argparse's usage error, as from the executable


def test_terminate_and_wait_behave_like_popen() -> None:
    process = warm.start(["waiting"], dict(os.environ), target="warm_targets:wait")
    assert process.stdout.readline() == b"ready\n"
    with pytest.raises(subprocess.TimeoutExpired):
        process.wait(timeout=0.1)
    assert process.poll() is None and process.pid is not None
    process.terminate()
    assert process.wait(timeout=60) == -signal.SIGTERM
    assert process.stdout.read() == b""  # EOF once the child is gone


def _step(name: str, argv: tuple[str, ...]) -> Step:
    return Step(name, name, lambda: None, lambda: Command(argv))


def test_the_runner_starts_only_topkdice_warm_and_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[tuple[str, str]] = []  # (how, the last argument)
    real_start, real_popen = warm.start, subprocess.Popen

    def record_warm(argv, env, **kwargs):
        started.append(("warm", argv[-1]))
        return real_start(argv, env, **kwargs)

    def record_popen(argv, **kwargs):
        started.append(("new", argv[-1]))
        return real_popen(argv, **kwargs)

    monkeypatch.setattr(warm, "start", record_warm)
    monkeypatch.setattr(runner.subprocess, "Popen", record_popen)
    topkdice = ("topkdice", "trainer-dir")
    other = (sys.executable, "-c", "print('other')")
    env = dict(os.environ)
    runner.run_steps([_step("a", topkdice), _step("b", other)], env, log_dir=tmp_path, stream=io.StringIO(),
                     warm_start=True)  # fmt: skip
    runner.run_steps([_step("c", topkdice)], env, log_dir=tmp_path, stream=io.StringIO())
    runner.run_steps([_step("d", topkdice)], {**env, warm.WARM_START_VARIABLE: "0"}, log_dir=tmp_path,
                     stream=io.StringIO(), warm_start=True)  # fmt: skip
    new_interpreter = [("new", "trainer-dir")] * 2  # warm_start not asked for, then refused by the variable
    assert started == [("warm", "trainer-dir"), ("new", "print('other')"), *new_interpreter]
    logs = [(tmp_path / f"{name}.log").read_text() for name in "abcd"]
    assert all(log.rstrip().endswith(str(Path("nnunet_topkdice") / "ext")) for log in (logs[0], logs[2], logs[3]))
    assert logs[1].rstrip().endswith("other")


def test_a_failing_warm_command_fails_the_step_with_its_exit_code(tmp_path: Path) -> None:
    stream = io.StringIO()
    with pytest.raises(subprocess.CalledProcessError, match="returned non-zero exit status 2"):
        runner.run_steps([_step("bad", ("topkdice", "evaluate", "--no-such-flag"))], dict(os.environ),
                         log_dir=tmp_path, stream=stream, warm_start=True)  # fmt: skip
    assert "FAILED (exit code 2): bad" in stream.getvalue() and "arguments are required" in stream.getvalue()


PRESTART_AND_LIST_CHILDREN = """
import os, sys
from nnunet_topkdice.pipeline import warm
warm.prestart()
print("out after", flush=True)
print("err after", file=sys.stderr, flush=True)
for pid in open(f"/proc/self/task/{os.getpid()}/children").read().split():
    print(pid, os.readlink(f"/proc/{pid}/fd/1"), os.readlink(f"/proc/{pid}/fd/2"), flush=True)
"""


@pytest.mark.skipif(not Path(f"/proc/self/task/{os.getpid()}/children").exists(), reason="Linux's /proc only")
def test_the_forkserver_holds_no_output_of_the_caller() -> None:
    """The server (and multiprocessing's resource tracker) write to /dev/null, so that a command ending while
    the server still imports does not keep its caller's pipe open; the caller's own streams are back."""
    proc = subprocess.run([sys.executable, "-c", PRESTART_AND_LIST_CHILDREN], capture_output=True, text=True,
                          timeout=120, check=True)  # fmt: skip
    lines = proc.stdout.splitlines()
    assert lines[0] == "out after" and proc.stderr.strip().splitlines()[-1] == "err after"
    children = [line.split() for line in lines[1:]]
    assert children and all(out == err == os.devnull for _, out, err in children), children


def test_warm_start_is_refused_by_the_variable() -> None:
    assert warm.warm_start_allowed({warm.WARM_START_VARIABLE: "1"})
    assert not warm.warm_start_allowed({warm.WARM_START_VARIABLE: "0"})


@pytest.mark.slow
def test_warm_preprocessing_writes_the_same_files(tiny_dataset, tmp_path: Path) -> None:
    """nnU-Net's planning and preprocessing forked warm: byte for byte the files of a new interpreter's run."""
    env = tiny_dataset.environment(tmp_path / "unused_results")
    env["nnUNet_preprocessed"] = str(tmp_path / "preprocessed")
    argv = ["nnUNetv2_plan_and_preprocess", "-d", str(tiny_dataset.dataset_id), "-c", "2d", "-np", "1", "-npfp", "1"]
    process = warm.start(argv, env)
    output = process.stdout.read().decode()
    assert process.wait(timeout=600) == 0, output
    cold, hot = tiny_dataset.preprocessed, tmp_path / "preprocessed"
    files = sorted(path.relative_to(cold) for path in cold.rglob("*") if path.is_file())
    assert files and files == sorted(path.relative_to(hot) for path in hot.rglob("*") if path.is_file())
    assert all((cold / name).read_bytes() == (hot / name).read_bytes() for name in files)


class _StopBeforeRunning(Exception):
    pass


@pytest.mark.parametrize(
    ("device", "variable", "expected"),
    [("cpu", None, True), ("cuda", None, False), ("cpu", "0", False)],
    ids=["cpu", "cuda", "cpu-refused"],
)
@pytest.mark.usefixtures("a_dataset")
def test_compare_starts_warm_on_the_cpu_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, device: str, variable: str | None, expected: bool
) -> None:
    if variable is None:
        monkeypatch.delenv(warm.WARM_START_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(warm.WARM_START_VARIABLE, variable)
    calls: list[object] = []
    monkeypatch.setattr(warm, "prestart", lambda: calls.append("prestart"))
    monkeypatch.setattr(session, "check_before_running", lambda *args, **kwargs: calls.append("checks"))

    def first_step(*args, warm_start: bool = False, **kwargs):
        calls.append(warm_start)
        raise _StopBeforeRunning

    monkeypatch.setattr(session, "run_steps", first_step)
    argv = ["compare", "-d", "4", "-c", "2d", "--trainers", "nnUNetTrainer", "--device", device, "-w", str(tmp_path)]
    with pytest.raises(_StopBeforeRunning):
        main(argv)
    # the forkserver starts before the checks (its imports overlap them), and only where commands start warm
    assert calls == (["prestart", "checks", True] if expected else ["checks", False])


@pytest.mark.parametrize("trainings_left", [False, True], ids=["all-done", "trainings-left"])
@pytest.mark.usefixtures("a_dataset")
def test_compare_with_nothing_left_to_do_starts_no_forkserver(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trainings_left: bool
) -> None:
    # a forkserver started for nothing outlived compare by its imports (seconds), holding its stdout open:
    # `compare ... | tee` and subprocess.run(capture_output=True) waited 4 s longer for a run that did nothing
    monkeypatch.delenv(warm.WARM_START_VARIABLE, raising=False)
    calls: list[object] = []
    monkeypatch.setattr(warm, "prestart", lambda: calls.append("prestart"))
    monkeypatch.setattr(session, "check_before_running", lambda *args, **kwargs: None)
    monkeypatch.setattr(session, "print_summary", lambda plan: None)

    def left(step: Step) -> str | None:
        return None if trainings_left and step.parallel == "train" else "already done"

    real_compare_steps = session.compare_steps
    monkeypatch.setattr(session, "compare_steps", lambda plan: [
        dataclasses.replace(step, done=functools.partial(left, step)) for step in real_compare_steps(plan)
    ])  # fmt: skip

    def runner(steps, env, *, warm_start: bool = False, **kwargs):
        calls.append(warm_start)
        return RunReport(ran=[step.name for step in steps if step.done() is None])

    monkeypatch.setattr(session, "run_steps", runner)
    argv = ["compare", "-d", "4", "-c", "2d", "--trainers", "nnUNetTrainer", "--device", "cpu", "-w", str(tmp_path)]
    assert main(argv) == 0
    # run_steps is called for the steps before the comparison (none here), then for its steps
    assert calls == (["prestart", True, True] if trainings_left else [False, False])
