"""The softmax loss's values and gradients, pinned bit for bit (issue 23: fewer operations, the same bits).

Work that removes operations from the loss (validation, dtype conversions, allocations, lookups) must not
change a single bit of what it computes. These tests pin, for several inputs that take every code path (the
sort and the histogram selection, 2D and 3D, deep supervision fused and through nnU-Net's wrapper, an
ignore label, class weights, ``k = 100``, Dice only, ``batch_dice`` on and off, float64 and bfloat16
logits), a SHA-256 of the value's and every gradient's bytes, written by this module from the code before
that work:

    PYTHONPATH=. python tests/test_losses_pinned.py --write   # only from a commit whose loss is trusted

Floating-point results depend on the torch version and the CPU's vector instructions, so the pins hold for
the torch version and the CPU capability recorded with them; elsewhere the test is skipped (it says why).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from torch import Tensor, nn

from nnunet_topkdice.losses import CE_and_TopKDice_loss, TopKDiceOptions, topk_dice_loss
from nnunet_topkdice.trainers import TopKDiceDeepSupervision

PINS = Path(__file__).parent / "data" / "loss_pins.json"
DS_WEIGHTS = (1 / 1.75, 0.5 / 1.75, 0.25 / 1.75, 0.0)  # nnU-Net's for 4 outputs, the last one skipped


def _inputs(
    shape: tuple[int, ...], *, pyramid: int = 1, ignore_label: int | None = None, dtype: torch.dtype = torch.float32
) -> tuple[list[Tensor], list[Tensor]]:
    """Logits and int16 label maps (nnU-Net's loader dtype), ``pyramid`` outputs halving the spatial size.

    Shape: one (B, C, *spatial / 2**i) logits and (B, 1, *spatial / 2**i) labels per output.
    """
    generator = torch.Generator().manual_seed(0)
    batch, n_classes, *spatial = shape
    high = n_classes if ignore_label is None else n_classes + 1
    logits, labels = [], []
    for level in range(pyramid):
        size = [max(1, s >> level) for s in spatial]
        logits.append((torch.randn(batch, n_classes, *size, generator=generator) * 3).to(dtype))
        labels.append(torch.randint(0, high, (batch, 1, *size), generator=generator, dtype=torch.int16))
    return logits, labels


def _ce_topk(k: float = 50.0, batch_dice: bool = True, do_bg: bool = False, **kwargs: object) -> CE_and_TopKDice_loss:
    dice = {"k": k, "batch_dice": batch_dice, "do_bg": do_bg, "smooth": 1e-5, "ddp": False}
    ce = {"weight": kwargs.pop("ce_class_weight")} if "ce_class_weight" in kwargs else {}
    return CE_and_TopKDice_loss(dice, ce, **kwargs)


class _DiceOnly(nn.Module):
    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return topk_dice_loss(logits, target, options=TopKDiceOptions(k=30.0, batch_dice=False))


# name: (loss, input shape, outputs, ignore label, logits dtype); more than 4096 voxels per call take the
# histogram selection on the CPU, fewer the sort
CASES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int, int | None, torch.dtype]] = {
    "2d-tiny-sort": (_ce_topk, (2, 4, 8, 8), 1, None, torch.float32),
    "2d-histogram-sample-dice": (lambda: _ce_topk(batch_dice=False), (2, 4, 64, 64), 1, None, torch.float32),
    "3d-histogram-ignore": (lambda: _ce_topk(ignore_label=3), (2, 3, 12, 16, 20), 1, 3, torch.float32),
    "2d-ds-fused": (lambda: TopKDiceDeepSupervision(_ce_topk(), DS_WEIGHTS), (2, 4, 64, 64), 4, None, torch.float32),
    "2d-ds-nnunet-wrapper": (
        lambda: DeepSupervisionWrapper(_ce_topk(), DS_WEIGHTS),
        (2, 4, 64, 64),
        4,
        None,
        torch.float32,
    ),
    "3d-ds-fused-ignore-sample-dice": (
        lambda: TopKDiceDeepSupervision(_ce_topk(batch_dice=False, ignore_label=2), DS_WEIGHTS),
        (2, 2, 16, 16, 24),
        4,
        2,
        torch.float32,
    ),
    "2d-class-weights-do-bg-k10": (
        lambda: _ce_topk(10.0, do_bg=True, ce_class_weight=[0.5, 1.0, 2.0, 1.5, 1.0]),
        (3, 5, 40, 36),
        1,
        None,
        torch.float32,
    ),
    "2d-k100": (lambda: _ce_topk(100.0), (2, 4, 48, 48), 1, None, torch.float32),
    "2d-dice-only-k30": (_DiceOnly, (2, 3, 40, 40), 1, None, torch.float32),
    "2d-weighted-terms": (lambda: _ce_topk(weight_ce=0.5, weight_dice=2.0), (2, 4, 32, 32), 1, None, torch.float32),
    "2d-float64": (_ce_topk, (2, 3, 48, 48), 1, None, torch.float64),
    "2d-bfloat16": (_ce_topk, (2, 3, 48, 48), 1, None, torch.bfloat16),
}


def _digest(tensor: Tensor) -> str:
    return hashlib.sha256(tensor.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def _run(name: str) -> dict[str, object]:
    """The value (its float hex) and the SHA-256 of the value's and each gradient's bytes, for one case."""
    make_loss, shape, pyramid, ignore_label, dtype = CASES[name]
    logits, labels = _inputs(shape, pyramid=pyramid, ignore_label=ignore_label, dtype=dtype)
    leaves = [x.clone().requires_grad_(True) for x in logits]
    loss = make_loss()
    value = loss(leaves, labels) if pyramid > 1 else loss(leaves[0], labels[0])
    value.backward()
    grads = [x.grad for x in leaves]
    return {
        "value": float(value.detach()).hex(),
        "value_sha256": _digest(value),
        "grad_sha256": [None if g is None else _digest(g) for g in grads],
    }


def _environment() -> dict[str, str]:
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # the pins are written with one thread: a reduction split over threads may add in another order
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pins() -> dict:
    pinned = json.loads(PINS.read_text())
    if pinned["environment"] != _environment():
        pytest.skip(f"pins written under {pinned['environment']}, this is {_environment()}")
    return pinned["cases"]


def test_every_case_is_pinned(pins: dict) -> None:
    assert sorted(pins) == sorted(CASES)


@pytest.mark.parametrize("name", list(CASES), ids=list(CASES))
def test_value_and_gradients_are_bit_identical_to_the_pins(name: str, pins: dict) -> None:
    got, want = _run(name), pins[name]
    got_value, pinned_value = float.fromhex(got["value"]), float.fromhex(want["value"])
    assert got_value == pinned_value, f"value {got_value!r}, pinned {pinned_value!r}"
    assert got == want  # the value's bytes (its dtype) and every gradient's


def test_the_digest_sees_a_one_bit_change() -> None:
    # (1,) float32: 1.0 and the next float up differ in the last mantissa bit only
    one = torch.ones(1)
    assert _digest(one) != _digest(torch.nextafter(one, torch.full((1,), 2.0)))
    assert _digest(one) == _digest(one.clone())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the pins of tests/test_losses_pinned.py.")
    parser.add_argument("--write", action="store_true", help=f"write {PINS}")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cases = {name: _run(name) for name in CASES}
    text = json.dumps({"environment": _environment(), "cases": cases}, indent=1) + "\n"
    if args.write:
        PINS.parent.mkdir(exist_ok=True)
        PINS.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
