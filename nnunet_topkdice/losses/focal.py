"""Multi-class softmax focal loss (Lin et al. 2017), the paper's "focal + Dice" baseline term."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FocalLoss", "focal_loss"]


def _check_focal_inputs(logits: Tensor, target: Tensor) -> Tensor:
    """Metadata checks; returns the target as (B, *spatial) int64."""
    if logits.ndim < 2 or not logits.is_floating_point():
        raise ValueError(
            f"logits must be a float tensor (B, C, *spatial), got shape {tuple(logits.shape)} and dtype {logits.dtype}"
        )
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer labels, got dtype {target.dtype}")
    if target.ndim == logits.ndim:
        if target.shape[1] != 1:
            raise ValueError(f"target must be (B, 1, *spatial) or (B, *spatial), got shape {tuple(target.shape)}")
        target = target[:, 0]
    if target.shape[0] != logits.shape[0] or target.shape[1:] != logits.shape[2:]:
        raise ValueError(
            f"target {tuple(target.shape)} and logits {tuple(logits.shape)} differ in batch or spatial size"
        )
    return target.long()


def focal_loss(
    logits: Tensor,
    target: Tensor,
    gamma: float = 2.0,
    alpha: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    """Softmax focal loss ``-alpha_t (1 - p_t)^gamma log p_t``, computed in float32.

    Shape:
        logits: (B, C, *spatial) float, unnormalised.  target: (B, 1, *spatial) or (B, *spatial) integer.
        alpha: optional (C,) per-class weights.
        returns: scalar float32 for ``reduction`` "mean" (over non-ignored voxels, not over classes; 0 if
        every voxel is ignored) or "sum"; (B, *spatial) for "none" (0 at ignored voxels).
    Raises:
        ValueError: shapes or dtypes wrong, unknown ``reduction``.

    With ``gamma=0`` and no ``alpha`` this is cross entropy:

        >>> x, y = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
        >>> bool(torch.isclose(focal_loss(x, y, gamma=0.0), F.cross_entropy(x, y)))
        True
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    target = _check_focal_inputs(logits, target)
    valid = target != ignore_index
    safe_target = torch.where(valid, target, 0).unsqueeze(1)
    log_prob_true = F.log_softmax(logits.float(), 1).gather(1, safe_target).squeeze(1)
    loss = -log_prob_true
    if gamma != 0:
        # 1 - p_t as -expm1(log p_t): no cancellation for confident voxels; clamped for fractional gamma
        loss = loss * (-torch.expm1(log_prob_true)).clamp_min(0).pow(gamma)
    if alpha is not None:
        loss = loss * alpha.to(device=logits.device, dtype=torch.float32)[safe_target.squeeze(1)]
    loss = loss * valid
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / valid.sum().clamp_min(1)


class FocalLoss(nn.Module):
    """Softmax focal loss module; see :func:`focal_loss`.

    Args:
        gamma: focusing parameter, ``>= 0`` (2 in the paper's baseline).
        alpha: optional per-class weights (length C, each ``>= 0``); None means 1 for every class.
        ignore_index: label value whose voxels contribute nothing (nnU-Net's ignore label).
        reduction: "mean", "sum" or "none".
    Raises:
        ValueError: ``gamma`` negative, ``alpha`` negative or not 1-D, unknown ``reduction``.

    Example:
        >>> loss = FocalLoss(gamma=2.0)
        >>> round(float(loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 1, 4, 4, dtype=torch.long))), 6)  # p_t = 0.5
        0.173287
    """

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: Sequence[float] | Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if not gamma >= 0:
            raise ValueError(f"gamma must be >= 0, got {gamma!r}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        alpha_t = None
        if alpha is not None:
            alpha_t = torch.as_tensor(alpha, dtype=torch.float32)
            if alpha_t.ndim != 1 or bool((alpha_t < 0).any()):
                raise ValueError(f"alpha must be a 1-D sequence of per-class weights >= 0, got {alpha!r}")
        self.gamma = float(gamma)
        self.ignore_index = int(ignore_index)
        self.reduction = reduction
        self.register_buffer("alpha", alpha_t, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return focal_loss(logits, target, self.gamma, self.alpha, self.ignore_index, self.reduction)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, ignore_index={self.ignore_index}, reduction={self.reduction!r}"
