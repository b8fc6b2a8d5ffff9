"""TopK-Dice with MONAI's interface: a drop-in for ``monai.losses.DiceLoss`` and ``DiceCELoss``.

Argument names, their meaning, the input checks, the warnings and the ``reduction`` shapes are MONAI's.
The one difference is ``k``: per image and per channel that takes part (background too when
``include_background=True``), the ``floor((100 - k) / 100 * n)`` easiest voxels of the target (the ``n``
voxels with ``target > 0``; the easiest are those with the highest activated prediction, exact ties
ordered by the package's fixed tie-break map and then by voxel index) are removed from that channel's
target and prediction, as in the paper's eqs. 5-6. Then MONAI's squared Dice (``squared_pred=True``):
``1 - (2 sum(pred * target) + smooth_nr) / (sum(pred^2) + sum(target^2) + smooth_dr)`` per image and
channel, or per channel over the batch with ``batch=True``.

At ``k=100`` nothing is removed and the loss equals ``monai.losses.DiceLoss(squared_pred=True)`` with the
same arguments, absent classes included: MONAI averages every channel, present or not, where
:class:`nnunet_topkdice.losses.TopKDiceLoss` (the paper's eq. 1) averages only the classes present.

MONAI is an optional dependency (the ``monai`` extra): ``pip install 'monai>=1.3'``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from nnunet_topkdice.losses import TopKDiceOptions, channel_exclusion_mask
from nnunet_topkdice.losses.arguments import as_real, check_non_negative
from nnunet_topkdice.losses.tie_break import DEFAULT_TIE_BREAK_SCALE, DEFAULT_TIE_BREAK_SEED

_INSTALL_HINT = (
    "nnunet_topkdice.monai needs MONAI (>= 1.3), the package's 'monai' extra: pip install '.[monai]' from a clone "
    "of nnunet-topkdice, or pip install 'monai>=1.3'"
)

try:
    from monai.networks import one_hot
except ImportError as error:  # MONAI is an optional extra
    raise ImportError(_INSTALL_HINT, name="monai") from error

__all__ = ["TopKDiceCELoss", "TopKDiceLoss", "topk_dice_loss"]

_REDUCTIONS = ("none", "mean", "sum")


class _DiceConfig(NamedTuple):
    """Validated arguments of the Dice term (see :func:`_check_arguments`); ``selection`` holds ``k`` and the
    tie-break map, validated by the package's one rule (:class:`~nnunet_topkdice.losses.TopKDiceOptions`)."""

    selection: TopKDiceOptions
    include_background: bool
    to_onehot_y: bool
    sigmoid: bool
    softmax: bool
    other_act: Callable[[Tensor], Tensor] | None
    batch: bool
    smooth_nr: float
    smooth_dr: float
    reduction: str


def _is_number(value: object) -> bool:
    """A real number (NumPy scalars and 0-d tensors included), not a bool: the losses' rule."""
    return as_real(value) is not None


def _check_arguments(
    k: float,
    include_background: bool,
    to_onehot_y: bool,
    sigmoid: bool,
    softmax: bool,
    other_act: Callable[[Tensor], Tensor] | None,
    batch: bool,
    smooth_nr: float,
    smooth_dr: float,
    weight: Sequence[float] | float | Tensor | None,
    reduction: str,
    tie_break_seed: int,
    tie_break_scale: float,
) -> tuple[_DiceConfig, Tensor | None]:
    """Validate once (no tensor on an accelerator is read) and normalise the arguments.

    returns: the configuration and the class weights as a float32 CPU tensor (or None).

    Raises:
        ValueError: ``k`` not in (0, 100] (the rule of :class:`~nnunet_topkdice.losses.TopKDiceOptions`: Python,
            NumPy or 0-d tensor numbers); more than one of ``sigmoid``, ``softmax``, ``other_act``;
            ``reduction`` not "none", "mean" or "sum"; ``smooth_nr``/``smooth_dr``/``tie_break_scale`` negative or
            not finite; ``weight`` negative or not a scalar/1-D sequence.
        TypeError: ``other_act`` not callable (as MONAI).
    """
    selection = TopKDiceOptions(k=k, tie_break_seed=tie_break_seed, tie_break_scale=tie_break_scale)
    if other_act is not None and not callable(other_act):
        raise TypeError(f"other_act must be None or callable, got {type(other_act).__name__}")
    if int(bool(sigmoid)) + int(bool(softmax)) + int(other_act is not None) > 1:
        raise ValueError(
            "sigmoid, softmax and other_act are incompatible: set at most one of them, "
            f"got sigmoid={sigmoid!r}, softmax={softmax!r}, other_act={other_act!r}"
        )
    reduction_value = getattr(reduction, "value", reduction)  # accepts monai.utils.LossReduction members
    if reduction_value not in _REDUCTIONS:
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    smooth_nr, smooth_dr = check_non_negative("smooth_nr", smooth_nr), check_non_negative("smooth_dr", smooth_dr)
    weight_tensor = None
    if weight is not None:
        # host-side once, in __init__; MONAI checks the sign in every forward (a GPU sync each step)
        weight_tensor = torch.as_tensor(weight).detach().to(device="cpu", dtype=torch.float32)
        if weight_tensor.ndim > 1 or not bool(torch.isfinite(weight_tensor).all()) or bool((weight_tensor < 0).any()):
            raise ValueError(f"weight must be a number or a 1-D sequence of finite numbers >= 0, got {weight!r}")
    config = _DiceConfig(
        selection=selection,
        include_background=bool(include_background),
        to_onehot_y=bool(to_onehot_y),
        sigmoid=bool(sigmoid),
        softmax=bool(softmax),
        other_act=other_act,
        batch=bool(batch),
        smooth_nr=smooth_nr,
        smooth_dr=smooth_dr,
        reduction=str(reduction_value),
    )
    return config, weight_tensor


def _prepare(input: Tensor, target: Tensor, config: _DiceConfig) -> tuple[Tensor, Tensor]:
    """MONAI's preprocessing: activation, one-hot target, background removal, shape check.

    Shape: input (B, N, *spatial) float; target (B, N or 1, *spatial).
    returns: the activated prediction and the (one-hot) target of the channels that take part, both
    (B, N', *spatial).
    Raises:
        ValueError: ``input`` not a float tensor with at least one spatial dimension, or empty.
        AssertionError: target and input shapes differ after the one-hot conversion (as MONAI).
    """
    if input.ndim < 3 or not input.is_floating_point():
        raise ValueError(
            f"input must be a float tensor BNH[WD], got shape {tuple(input.shape)} and dtype {input.dtype}"
        )
    if input.numel() == 0:
        raise ValueError(f"input must hold at least one image, channel and voxel, got shape {tuple(input.shape)}")
    n_pred_channels = input.shape[1]
    if config.sigmoid:
        input = torch.sigmoid(input)
    if config.softmax:
        if n_pred_channels == 1:
            warnings.warn("single channel prediction: softmax=True is ignored", UserWarning, stacklevel=3)
        else:
            input = torch.softmax(input, 1)
    if config.other_act is not None:
        input = config.other_act(input)
    if config.to_onehot_y:
        if n_pred_channels == 1:
            warnings.warn("single channel prediction: to_onehot_y=True is ignored", UserWarning, stacklevel=3)
        else:
            target = one_hot(target, num_classes=n_pred_channels)
    if not config.include_background:
        if n_pred_channels == 1:
            warnings.warn("single channel prediction: include_background=False is ignored", UserWarning, stacklevel=3)
        else:
            input, target = input[:, 1:], target[:, 1:]
    if target.shape != input.shape:
        raise AssertionError(
            f"target has shape {tuple(target.shape)}, input {tuple(input.shape)} (after to_onehot_y and "
            "include_background); they must be equal"
        )
    return input, target


def _ranking(prediction: Tensor, non_negative: bool) -> Tensor:
    """What orders the voxels of each (image, channel): the activated prediction, made non-negative.

    The selection orders non-negative values. Unless the activation guarantees them (``non_negative``),
    rows with negative values are shifted up by their minimum (the order is kept; rows already >= 0 are
    left untouched).

    Shape: prediction (B, N, *spatial) float.  returns: same shape, float32, detached.
    """
    ranking = prediction.detach().float()
    if non_negative:
        return ranking
    row_min = ranking.flatten(2).amin(-1).clamp_max(0)
    return ranking - row_min.view(*row_min.shape, *[1] * (ranking.ndim - 2))


def _topk_dice(input: Tensor, target: Tensor, config: _DiceConfig, weight: Tensor | None) -> Tensor:
    """The loss from validated arguments; see :func:`topk_dice_loss`."""
    # sigmoid and softmax outputs need no shift before the selection
    non_negative = config.sigmoid or (config.softmax and input.ndim > 1 and input.shape[1] > 1)
    prediction, target = _prepare(input, target, config)
    compute_dtype = torch.float64 if prediction.dtype == torch.float64 else torch.float32
    prediction = prediction.to(compute_dtype)
    target = target.to(compute_dtype)
    if config.selection.k < 100:
        # the target voxels of each (image, channel); a soft target's support is where it is > 0
        excluded = channel_exclusion_mask(_ranking(prediction, non_negative), target > 0, options=config.selection)
        # eqs. 5-6: the easy voxels leave both the target and the prediction of their channel
        prediction = prediction.masked_fill(excluded, 0)
        target = target.masked_fill(excluded, 0)
    reduce_dims = list(range(2, prediction.ndim))
    if config.batch:
        reduce_dims = [0, *reduce_dims]
    intersection = (prediction * target).sum(reduce_dims)
    denominator = prediction.square().sum(reduce_dims) + target.square().sum(reduce_dims) + config.smooth_dr
    # only smooth_dr = 0 with an empty channel reaches the clamp (MONAI would return NaN there)
    loss = 1 - (2 * intersection + config.smooth_nr) / denominator.clamp_min(torch.finfo(compute_dtype).tiny)
    n_channels = target.shape[1]
    if weight is not None and n_channels != 1:
        if weight.ndim == 1 and weight.shape[0] != n_channels:
            raise ValueError(
                f"weight has {weight.shape[0]} entries for {n_channels} channels; it needs one per channel "
                "taking part (without the background when include_background=False)"
            )
        loss = loss * weight.to(device=loss.device, dtype=loss.dtype)  # a no-op once the module is moved
    if config.reduction == "mean":
        return loss.mean()
    if config.reduction == "sum":
        return loss.sum()
    # "none": MONAI's broadcastable shape, (B, N', 1, ...) or, with batch=True, (N', 1, ...)
    return loss.view(*loss.shape[:2], *[1] * (prediction.ndim - 2))


def topk_dice_loss(
    input: Tensor,
    target: Tensor,
    k: float = 50.0,
    *,
    include_background: bool = True,
    to_onehot_y: bool = False,
    sigmoid: bool = False,
    softmax: bool = False,
    other_act: Callable[[Tensor], Tensor] | None = None,
    batch: bool = False,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    weight: Sequence[float] | float | Tensor | None = None,
    reduction: str = "mean",
    tie_break_seed: int = DEFAULT_TIE_BREAK_SEED,
    tie_break_scale: float = DEFAULT_TIE_BREAK_SCALE,
) -> Tensor:
    """TopK-Dice with MONAI's ``DiceLoss`` arguments (``squared_pred=True``); see :class:`TopKDiceLoss`.

    The arguments are validated at every call; the module validates them once.
    """
    config, weight_tensor = _check_arguments(
        k,
        include_background,
        to_onehot_y,
        sigmoid,
        softmax,
        other_act,
        batch,
        smooth_nr,
        smooth_dr,
        weight,
        reduction,
        tie_break_seed,
        tie_break_scale,
    )
    return _topk_dice(input, target, config, weight_tensor)


class TopKDiceLoss(nn.Module):
    """TopK-Dice loss with the arguments of ``monai.losses.DiceLoss``; at ``k=100`` it equals
    ``DiceLoss(squared_pred=True)`` with the same arguments.

    Args (all but ``k`` keyword-only: MONAI's positional order has no ``k`` and differs from this one):
        k: percent of each channel's target voxels that are KEPT (the hardest), ``0 < k <= 100``.
        include_background: if False, channel 0 takes no part (ignored, with a warning, for one channel).
        to_onehot_y: convert a label map ``target`` (B1H[WD]) to one-hot with ``input.shape[1]`` classes.
        sigmoid, softmax: activation applied to ``input`` (softmax over channels; ignored, with a warning,
            for one channel). other_act: any other activation callable. At most one of the three.
        batch: add the sums over the batch before dividing (the selection stays per image).
        smooth_nr, smooth_dr: added to the numerator and to the denominator.
        weight: per-channel factors of the loss (one per channel taking part, or one number), as MONAI's.
        reduction: ``"mean"`` or ``"sum"`` over images and channels, or ``"none"``.
        tie_break_seed, tie_break_scale: the package's fixed tie-break map ``eps`` (see
            :func:`nnunet_topkdice.losses.tie_break_map`); it orders voxels and never enters the value.

    Not offered: ``squared_pred`` (always True, the paper's squared Dice), ``jaccard``, ``soft_label``
    (MONAI's squared formula is the same either way) and ``ignore_index``.

    Shape:
        input: BNH[WD] float (logits, or probabilities without an activation).
        target: BNH[WD] (one-hot, binary or soft in [0, 1]) or B1H[WD] labels with ``to_onehot_y=True``.
        returns: scalar for ``"mean"``/``"sum"``; ``"none"``: (B, N', 1, ...) with N' the channels taking
        part, or (N', 1, ...) with ``batch=True`` (MONAI's shapes). float32 (float64 for float64 input).
    Raises:
        ValueError: (in ``__init__``) ``k`` not in (0, 100]; more than one activation; an unknown
            ``reduction``; negative ``smooth_nr``/``smooth_dr``/``weight``. (In ``forward``) ``input`` not
            float with a spatial dimension; ``weight`` length differs from the channels taking part.
        TypeError: ``other_act`` not callable.
        AssertionError: ``target`` and ``input`` shapes differ after ``to_onehot_y`` (MONAI raises the same).

    Soft targets (MONAI allows them): ``n`` counts a channel's voxels with ``target > 0``; among them the
    ``floor((100 - k) / 100 * n)`` with the highest activated prediction are removed, their whole target
    value and their prediction. For one-hot or binary targets this is exactly the paper's selection.

    Example:
        >>> import torch
        >>> from nnunet_topkdice.monai import TopKDiceLoss
        >>> loss = TopKDiceLoss(k=50, to_onehot_y=True, softmax=True)
        >>> logits = torch.randn(2, 3, 16, 16, requires_grad=True)
        >>> labels = torch.randint(0, 3, (2, 1, 16, 16))
        >>> value = loss(logits, labels)
        >>> value.backward()
        >>> value.shape, TopKDiceLoss(reduction="none", softmax=True)(logits, torch.ones(2, 3, 16, 16)).shape
        (torch.Size([]), torch.Size([2, 3, 1, 1]))
    """

    def __init__(
        self,
        k: float = 50.0,
        *,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        batch: bool = False,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        reduction: str = "mean",
        other_act: Callable[[Tensor], Tensor] | None = None,
        weight: Sequence[float] | float | Tensor | None = None,
        tie_break_seed: int = DEFAULT_TIE_BREAK_SEED,
        tie_break_scale: float = DEFAULT_TIE_BREAK_SCALE,
    ) -> None:
        super().__init__()
        self.config, class_weight = _check_arguments(
            k,
            include_background,
            to_onehot_y,
            sigmoid,
            softmax,
            other_act,
            batch,
            smooth_nr,
            smooth_dr,
            weight,
            reduction,
            tie_break_seed,
            tie_break_scale,
        )
        # a buffer (as MONAI's ``class_weight``), so that ``.to(device)`` moves it once
        self.class_weight: Tensor | None
        self.register_buffer("class_weight", class_weight)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return _topk_dice(input, target, self.config, self.class_weight)

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"k={c.selection.k}, include_background={c.include_background}, to_onehot_y={c.to_onehot_y}, "
            f"sigmoid={c.sigmoid}, softmax={c.softmax}, batch={c.batch}, smooth_nr={c.smooth_nr}, "
            f"smooth_dr={c.smooth_dr}, reduction={c.reduction!r}"
        )


class TopKDiceCELoss(nn.Module):
    """``lambda_dice * TopKDiceLoss + lambda_ce * cross entropy`` with ``monai.losses.DiceCELoss``'s arguments.

    At ``k=100`` it equals ``DiceCELoss(squared_pred=True)`` with the same arguments. The cross-entropy term
    is MONAI's: computed from the raw ``input`` (the activation flags apply to the Dice term only);
    ``torch.nn.CrossEntropyLoss`` on the labels (B1H[WD] target) or on the one-hot/soft target (BNH[WD]),
    ``torch.nn.BCEWithLogitsLoss`` (``pos_weight=weight``) for a single-channel input.

    Args:
        k, include_background, to_onehot_y, sigmoid, softmax, other_act, batch, smooth_nr, smooth_dr,
            tie_break_seed, tie_break_scale: the Dice term's, as :class:`TopKDiceLoss`.
        reduction: ``"mean"`` or ``"sum"``, for both terms (MONAI offers no ``"none"`` here).
        weight: per-class weights (C,) of the cross entropy; the Dice term gets them too (without the
            background entry when ``include_background=False``), as MONAI does.
        lambda_dice, lambda_ce: the weights of the two terms, ``>= 0``.
        label_smoothing: of the cross entropy, in [0, 1].

    Shape:
        input: BNH[WD] float logits.  target: B1H[WD] labels or BNH[WD] one-hot/soft.  returns: scalar.
    Raises:
        ValueError: (in ``__init__``) as :class:`TopKDiceLoss`, ``reduction="none"``, negative
            ``lambda_dice``/``lambda_ce``, ``label_smoothing`` outside [0, 1]. (In ``forward``) ``input`` and
            ``target`` differ in their number of dimensions, or target has neither 1 nor N channels.

    Example:
        >>> import torch
        >>> from nnunet_topkdice.monai import TopKDiceCELoss
        >>> loss = TopKDiceCELoss(k=50, to_onehot_y=True, softmax=True, lambda_ce=0.5)
        >>> value = loss(torch.randn(2, 3, 16, 16), torch.randint(0, 3, (2, 1, 16, 16)))
        >>> value.shape
        torch.Size([])
    """

    def __init__(
        self,
        k: float = 50.0,
        *,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        batch: bool = False,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        reduction: str = "mean",
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        other_act: Callable[[Tensor], Tensor] | None = None,
        weight: Tensor | None = None,
        label_smoothing: float = 0.0,
        tie_break_seed: int = DEFAULT_TIE_BREAK_SEED,
        tie_break_scale: float = DEFAULT_TIE_BREAK_SCALE,
    ) -> None:
        super().__init__()
        reduction = getattr(reduction, "value", reduction)  # accepts monai.utils.DiceCEReduction members
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum' (MONAI's DiceCELoss has no 'none'), got {reduction!r}")
        lambda_dice = check_non_negative("lambda_dice", lambda_dice)
        lambda_ce = check_non_negative("lambda_ce", lambda_ce)
        if not _is_number(label_smoothing) or not 0 <= label_smoothing <= 1:
            raise ValueError(f"label_smoothing must be a number in [0, 1], got {label_smoothing!r}")
        # a float tensor keeps its dtype, as MONAI's DiceCELoss keeps it (float64 input needs float64 weights)
        ce_weight = None if weight is None else torch.as_tensor(weight).detach().cpu()
        if ce_weight is not None and not ce_weight.is_floating_point():
            ce_weight = ce_weight.float()
        if ce_weight is not None and (not bool(torch.isfinite(ce_weight).all()) or bool((ce_weight < 0).any())):
            raise ValueError(f"weight must hold finite numbers >= 0, got {weight!r}")
        dice_weight = ce_weight
        if ce_weight is not None and ce_weight.ndim == 1 and not include_background:
            dice_weight = ce_weight[1:]  # the Dice term has no background channel then
        self.dice = TopKDiceLoss(
            k,
            include_background=include_background,
            to_onehot_y=to_onehot_y,
            sigmoid=sigmoid,
            softmax=softmax,
            batch=batch,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            reduction=reduction,
            other_act=other_act,
            weight=dice_weight,
            tie_break_seed=tie_break_seed,
            tie_break_scale=tie_break_scale,
        )
        self.cross_entropy = nn.CrossEntropyLoss(weight=ce_weight, reduction=reduction, label_smoothing=label_smoothing)
        self.binary_cross_entropy = nn.BCEWithLogitsLoss(pos_weight=ce_weight, reduction=reduction)
        self.lambda_dice = float(lambda_dice)
        self.lambda_ce = float(lambda_ce)

    def ce(self, input: Tensor, target: Tensor) -> Tensor:
        """MONAI's cross-entropy term: labels for a B1H[WD] target, class probabilities otherwise."""
        if input.shape[1] == 1:
            return self.binary_cross_entropy(input, target.to(input.dtype))
        if target.shape[1] == 1:
            return self.cross_entropy(input, target.squeeze(1).long())
        return self.cross_entropy(input, target if target.is_floating_point() else target.to(input.dtype))

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if input.ndim != target.ndim:
            raise ValueError(
                f"input {tuple(input.shape)} and target {tuple(target.shape)} must have the same number of "
                "dimensions; a label map needs its channel axis: B1H[WD]"
            )
        if target.shape[1] not in (1, input.shape[1]):
            raise ValueError(
                f"target must have 1 channel (labels) or as many as input ({input.shape[1]}), "
                f"got shape {tuple(target.shape)}"
            )
        terms = []
        if self.lambda_dice != 0:
            terms.append(self.lambda_dice * self.dice(input, target))
        if self.lambda_ce != 0:
            terms.append(self.lambda_ce * self.ce(input, target))
        if not terms:  # both weights 0: a zero still connected to the graph, as MONAI's
            return input.float().sum() * 0.0
        return terms[0] if len(terms) == 1 else terms[0] + terms[1]
