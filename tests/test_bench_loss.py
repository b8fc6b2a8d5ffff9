"""benchmarks/bench_loss.py measures what a user runs: the trainers' own loss objects, and their fixed cost."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss, DC_and_topk_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

from nnunet_topkdice.losses import CE_and_TopKDice_loss
from nnunet_topkdice.losses.counts import n_excluded_voxels
from nnunet_topkdice.trainers import TopKDiceDeepSupervision

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    sys.path.insert(0, str(BENCHMARKS))  # bench_loss imports cpu_allocator as a sibling, as when run as a script
    try:
        yield importlib.import_module("bench_loss")
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_with_deep_supervision_each_loss_is_wrapped_as_its_trainer_wraps_it(bench: ModuleType) -> None:
    built = bench.trainer_losses((2, 3, 32, 32), True, torch.device("cpu"))
    losses = built.losses
    assert list(losses) == [bench.BASE, bench.TOPK, bench.OURS, bench.BY_HAND]
    assert type(losses[bench.BASE]) is DeepSupervisionWrapper and type(losses[bench.BASE].loss) is DC_and_CE_loss
    assert type(losses[bench.TOPK]) is DeepSupervisionWrapper and type(losses[bench.TOPK].loss) is DC_and_topk_loss
    assert type(losses[bench.OURS]) is TopKDiceDeepSupervision and losses[bench.OURS].loss.dc.k == 50
    assert type(losses[bench.BY_HAND]) is DeepSupervisionWrapper
    assert type(losses[bench.BY_HAND].loss) is CE_and_TopKDice_loss
    # nnU-Net's weights, the same for every loss: 32x32 patches, stages 32, 16, 8 and 4 -> 3 outputs (1, 1/2, 0)
    expected = [1 / 1.5, 0.5 / 1.5, 0.0]
    for loss in losses.values():
        assert list(loss.weight_factors) == pytest.approx(expected, abs=1e-12)
    assert built.scales == [[1.0, 1.0], [0.5, 0.5], [0.25, 0.25]]
    logits, labels = bench.make_inputs((2, 3, 32, 32), built.scales, torch.device("cpu"))
    assert [tuple(x.shape) for x in logits] == [(2, 3, 32, 32), (2, 3, 16, 16), (2, 3, 8, 8)]
    assert [tuple(x.shape) for x in labels] == [(2, 1, 32, 32), (2, 1, 16, 16), (2, 1, 8, 8)]
    assert all(x.dtype == torch.int16 and int(x.max()) <= 2 for x in labels)
    for loss in losses.values():  # every loss takes the trainer's lists
        bench._step(loss, logits, labels, True)


def test_without_deep_supervision_each_trainer_loss_takes_one_output(bench: ModuleType) -> None:
    built = bench.trainer_losses((2, 4, 16, 16, 16), False, torch.device("cpu"))
    assert built.scales is None
    assert [type(loss) for loss in built.losses.values()] == [DC_and_CE_loss, DC_and_topk_loss, CE_and_TopKDice_loss]
    logits, labels = bench.make_inputs((2, 4, 16, 16, 16), None, torch.device("cpu"))
    assert [tuple(x.shape) for x in logits] == [(2, 4, 16, 16, 16)]
    bench._step(built.losses[bench.OURS], logits, labels, False)


def test_op_profile_counts_the_operations_of_a_call_not_those_nested_inside(bench: ModuleType) -> None:
    def call() -> None:
        # aten::ones runs aten::empty and aten::fill_ inside it: three operations, one dispatched
        torch.ones(3).add(1).mul_(2)

    n_ops, milliseconds, names = bench.op_profile(call, calls=4)
    assert n_ops == 3
    assert names == {"ones": 1, "add": 1, "mul_": 1}
    assert milliseconds > 0


def test_op_sources_name_the_function_that_dispatched_each_operation(bench: ModuleType) -> None:
    counts, other = torch.tensor([10, 3]), torch.ones(3)
    # eq. 3's count: one multiplication and one floor division, no dtype conversion of int64 counts
    assert bench.op_sources(lambda: n_excluded_voxels(counts, 50.0)) == {"counts.py:n_excluded_voxels": 2}
    assert bench.op_sources(lambda: other.add(1)) == {"elsewhere": 1}


def test_scaling_goals_name_the_rows_that_miss_them(bench: ModuleType) -> None:
    def row(voxels: int, ratio: float, deep_supervision: str = "no") -> dict:
        shape = f"({voxels} voxels)"
        return {
            "device": "cpu",
            "shape": shape,
            "deep supervision": deep_supervision,
            "voxels": voxels,
            "time ratio": ratio,
        }

    # 1.2x allowed below 0.13M voxels, 1.0x from there up
    met = [row(8192, 1.2), row(131072, 1.0, "yes")]
    assert bench.scaling_goals(met).endswith("met on every row")
    missed = bench.scaling_goals([row(8192, 1.21), row(131072, 1.01, "yes"), row(524288, 0.9)])
    assert "cpu (8192 voxels) DS no x1.21 (goal 1.2)" in missed
    assert "cpu (131072 voxels) DS yes x1.01 (goal 1.0)" in missed
    assert "524288" not in missed


def test_time_interleaved_adds_rounds_until_the_minimum_time_is_filled(bench: ModuleType) -> None:
    calls = {"a": 0, "b": 0}

    def call(name: str) -> None:
        calls[name] += 1

    fns = {name: (lambda name=name: call(name)) for name in calls}
    ticks = iter(range(10**6))  # a clock that advances one second per reading: every call takes 1 s
    times = bench.time_interleaved(fns, 3, torch.device("cpu"), clock=lambda: next(ticks), min_seconds=0.0)
    assert times == {"a": 1, "b": 1} and calls == {"a": 4, "b": 4}  # one warm-up call, then 3 rounds
    calls.update(a=0, b=0)
    bench.time_interleaved(fns, 3, torch.device("cpu"), min_seconds=1e9)  # far more than the cap allows
    assert calls == {"a": bench.MAX_ROUNDS + 1, "b": bench.MAX_ROUNDS + 1}
