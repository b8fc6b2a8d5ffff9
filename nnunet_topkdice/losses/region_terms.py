"""Pixel-wise sigmoid terms of the region-based baselines: focal BCE and top-k BCE (pure PyTorch).

The sigmoid counterparts of the paper's "focal + Dice" and "topK + Dice" cross-entropy terms, for nnU-Net's
region datasets (one sigmoid output per region, binary cross entropy per voxel and region). Both take the
loss mask the way nnU-Net's ``DC_and_BCE_loss`` does, so that the region baselines differ from nnU-Net's
default region loss (BCE + soft Dice) only in what their names say.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nnunet_topkdice.losses.arguments import check_k, check_non_negative

__all__ = ["SigmoidFocalLoss", "TopKBCELoss"]


def _check(logits: Tensor, target: Tensor, mask: Tensor | None) -> None:
    """Metadata-only checks."""
    if logits.ndim < 3 or not logits.is_floating_point():
        raise ValueError(
            f"logits must be a float tensor (B, R, *spatial), got shape {tuple(logits.shape)} and dtype {logits.dtype}"
        )
    if target.shape != logits.shape:
        raise ValueError(f"target must have the shape of logits {tuple(logits.shape)}, got {tuple(target.shape)}")
    if mask is not None and (mask.ndim != logits.ndim or mask.shape[1] != 1 or mask.shape[2:] != logits.shape[2:]):
        raise ValueError(
            f"mask must have shape (B, 1, *spatial) for logits {tuple(logits.shape)}, got {tuple(mask.shape)}"
        )


def _bce(logits: Tensor, target: Tensor) -> Tensor:
    """Per voxel and region BCE with logits in float32 (float64 for float64 logits)."""
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return F.binary_cross_entropy_with_logits(logits.to(dtype), target.to(dtype), reduction="none")


class SigmoidFocalLoss(nn.Module):
    """Binary focal loss per voxel and region (Lin et al. 2017): ``-(1 - p_t)^gamma log p_t``, no alpha.

    Reduction as nnU-Net's ``DC_and_BCE_loss`` reduces its BCE: the mean over voxels and regions without a
    mask; with a mask, the sum over regions and non-masked voxels divided by the number of non-masked voxels.
    With ``gamma=0`` it is that BCE.

    Shape:
        logits (B, R, *spatial) float; target (B, R, *spatial) 0/1; mask optional (B, 1, *spatial), True =
        counted.  returns: scalar float32 (float64 for float64 logits).
    Raises:
        ValueError: ``gamma`` negative (in ``__init__``); shapes wrong (metadata only).

    Example:
        >>> x, y = torch.randn(2, 3, 4, 4), torch.rand(2, 3, 4, 4) > 0.5
        >>> bool(torch.isclose(SigmoidFocalLoss(gamma=0.0)(x, y), F.binary_cross_entropy_with_logits(x, y.float())))
        True
    """

    def __init__(self, gamma: float = 2.0) -> None:
        super().__init__()
        self.gamma = check_non_negative("gamma", gamma)

    def forward(self, logits: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        _check(logits, target, mask)
        bce = _bce(logits, target)  # -log p_t
        # 1 - p_t as -expm1(log p_t): no cancellation for confident voxels
        loss = bce * (-torch.expm1(-bce)).clamp_min(0).pow(self.gamma) if self.gamma != 0 else bce
        if mask is None:
            return loss.mean()
        return (loss * mask).sum() / mask.sum(dtype=loss.dtype).clamp_min(1e-8)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}"


class TopKBCELoss(nn.Module):
    """The mean of the ``k`` percent highest BCE values over all voxels and regions of the batch.

    nnU-Net's ``TopKLoss`` for sigmoid outputs: ``int(n * k / 100)`` of the ``n = B * R * voxels`` values
    (at least one), masked values set to 0 and still counted in ``n``, as ``TopKLoss`` counts the voxels of
    its ignore label. ``k=100`` is the plain BCE mean.

    Shape:
        logits (B, R, *spatial) float; target (B, R, *spatial) 0/1; mask optional (B, 1, *spatial), True =
        counted.  returns: scalar float32 (float64 for float64 logits).
    Raises:
        ValueError: ``k`` not in (0, 100] (in ``__init__``); shapes wrong (metadata only).
    """

    def __init__(self, k: float = 10.0) -> None:
        super().__init__()
        self.k = check_k(k, "the highest BCE values")

    def forward(self, logits: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        _check(logits, target, mask)
        bce = _bce(logits, target)
        if mask is not None:
            bce = bce * mask
        n_kept = max(1, int(bce.numel() * self.k / 100))  # from the shape: no host synchronisation
        return torch.topk(bce.reshape(-1), n_kept, sorted=False).values.mean()

    def extra_repr(self) -> str:
        return f"k={self.k}"
