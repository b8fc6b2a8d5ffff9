"""DDP batch Dice: two gloo processes on the CPU give the single-process result on the concatenated batch.

Softmax losses take the (B, 1, *spatial) label map, the region (sigmoid) losses overlapping region maps.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from nnunet_topkdice.losses import BCE_and_TopKDice_loss, CE_and_TopKDice_loss, SigmoidTopKDiceLoss, TopKDiceLoss
from nnunet_topkdice.trainers import TopKDiceDeepSupervision

WORLD_SIZE = 2


def _inputs():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(4, 2, 12, 12, generator=generator)
    target = torch.randint(0, 3, (4, 1, 12, 12), generator=generator)
    target[2:, 0, :3] = 2  # different class mixes on the two ranks
    # nested regions (labels >= 1, labels == 2) and one overlapping both, absent from the second rank
    regions = torch.cat([target >= 1, target == 2, (target == 1) & (torch.arange(4) < 2).view(4, 1, 1, 1)], 1)
    return images, {"labels": target, "regions": regions}


def _model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Conv2d(2, 3, 3, padding=1)


class _TwoOutputs(nn.Module):
    """Deep supervision over the output and its 2x average-pooled copy, the labels subsampled alike."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss([output, nn.functional.avg_pool2d(output, 2)], [target, target[..., ::2, ::2]])


def _losses(ddp: bool) -> dict[str, tuple[nn.Module, str]]:
    """name -> (loss, the target it takes: "labels" or "regions")."""
    return {
        "topk_dice": (TopKDiceLoss(k=50, batch_dice=True, ddp=ddp), "labels"),
        "ce_topk_dice": (CE_and_TopKDice_loss({"k": 30, "batch_dice": True, "ddp": ddp}, {}), "labels"),
        "ce_topk_dice_deep_supervision": (
            _TwoOutputs(
                TopKDiceDeepSupervision(CE_and_TopKDice_loss({"k": 30, "batch_dice": True, "ddp": ddp}, {}), (0.6, 0.4))
            ),
            "labels",
        ),
        "sigmoid_topk_dice": (SigmoidTopKDiceLoss(k=50, batch_dice=True, ddp=ddp), "regions"),
        "bce_topk_dice": (BCE_and_TopKDice_loss({"k": 30, "batch_dice": True, "ddp": ddp}, {}), "regions"),
    }


def _worker(rank: int, port: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        images, target = _inputs()
        part = slice(rank * 2, rank * 2 + 2)
        for name, (loss_fn, target_kind) in _losses(ddp=True).items():
            model = nn.parallel.DistributedDataParallel(_model())
            loss = loss_fn(model(images[part]), target[target_kind][part])
            loss.backward()
            results[(name, rank)] = (loss.item(), [p.grad.clone() for p in model.parameters()])
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_batch_dice_equals_single_process_on_concatenated_batch():
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    images, target = _inputs()
    expected = {}
    for name, (loss_fn, target_kind) in _losses(ddp=False).items():
        model = _model()
        # DDP averages gradients over ranks; (B)CE is a mean over each rank's half, so compare with the same
        loss = loss_fn(model(images), target[target_kind])
        loss.backward()
        expected[name] = (loss.item(), [p.grad.clone() for p in model.parameters()])

    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(_free_port(), results), nprocs=WORLD_SIZE, join=True)
    for name, (loss_value, grads) in expected.items():
        for rank in range(WORLD_SIZE):
            got_loss, got_grads = results[(name, rank)]
            # the Dice term is global: every rank sees the whole batch's loss
            if name in ("topk_dice", "sigmoid_topk_dice"):
                assert got_loss == pytest.approx(loss_value, abs=1e-6)
            for got, want in zip(got_grads, grads, strict=True):
                torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
