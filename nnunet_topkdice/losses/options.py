"""The options of the TopK-Dice losses: one frozen, keyword-only dataclass, validated once.

Every TopK-Dice entry point reads its hyper-parameters from a :class:`TopKDiceOptions`: the functionals
(``topk_dice_loss``, ``ce_and_topk_dice_loss``, ``deep_supervised_ce_and_topk_dice_loss``,
``sigmoid_topk_dice_loss``, the exclusion masks), the modules (``TopKDiceLoss``, ``SigmoidTopKDiceLoss``),
the compound losses (built from their ``topk_dice_kwargs``), the autograd node of ``fused``, the
definition in ``reference`` and the MONAI drop-in's ``k``. Adding an option means adding a field here
(with its check in ``__post_init__``) and reading it where it is used.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from nnunet_topkdice.losses.arguments import check_flag, check_k, check_non_negative, check_seed
from nnunet_topkdice.losses.tie_break import DEFAULT_TIE_BREAK_SCALE, DEFAULT_TIE_BREAK_SEED

__all__ = ["TopKDiceOptions"]


@dataclass(frozen=True, kw_only=True)
class TopKDiceOptions:
    """The hyper-parameters of a TopK-Dice loss, checked and normalised once, when the object is made.

    Args:
        k: percent of each class's (or region's) foreground voxels that are KEPT, the hardest,
            ``0 < k <= 100``. Python, NumPy and 0-d tensor numbers are accepted and stored as a float.
        do_bg: include the background class (softmax) or the first region (sigmoid) in the mean.
        batch_dice: add the Dice sums over the batch before dividing (the selection stays per image).
        smooth: added to the numerator and the denominator of each Dice, ``>= 0``.
        ddp: with ``batch_dice``, add the Dice sums over all DDP ranks.
        tie_break_seed, tie_break_scale: the fixed perturbation map ``eps`` of eq. 2 (seed of its
            generator, and its range ``[0, scale)``, ``scale >= 0``); left out of ``repr``.
        validate: also check the label values of a target on an accelerator (one device-to-host
            synchronisation per call); on the CPU they are always checked, for free. Not under
            ``torch.compile``. Left out of ``repr``; it never changes a value.
    Raises:
        ValueError: ``k`` not a number in (0, 100] (bool and NaN refused); ``smooth`` or ``tie_break_scale``
            not a number ``>= 0``; a flag not a bool; ``tie_break_seed`` not an integer. The message
            quotes the value received.

    Example:
        >>> TopKDiceOptions(k=30, batch_dice=True)
        TopKDiceOptions(k=30.0, do_bg=False, batch_dice=True, smooth=1e-05, ddp=False)
        >>> TopKDiceOptions(k=0)
        Traceback (most recent call last):
        ValueError: k must be a number in (0, 100] (percent of foreground voxels kept), got 0
    """

    k: float = 50.0
    do_bg: bool = False
    batch_dice: bool = False
    smooth: float = 1e-5
    ddp: bool = False
    tie_break_seed: int = dataclasses.field(default=DEFAULT_TIE_BREAK_SEED, repr=False)
    tie_break_scale: float = dataclasses.field(default=DEFAULT_TIE_BREAK_SCALE, repr=False)
    validate: bool = dataclasses.field(default=False, repr=False)

    def __post_init__(self) -> None:
        normalised = {
            "k": check_k(self.k),
            "do_bg": check_flag("do_bg", self.do_bg),
            "batch_dice": check_flag("batch_dice", self.batch_dice),
            "smooth": check_non_negative("smooth", self.smooth),
            "ddp": check_flag("ddp", self.ddp),
            "tie_break_seed": check_seed("tie_break_seed", self.tie_break_seed),
            "tie_break_scale": check_non_negative("tie_break_scale", self.tie_break_scale),
            "validate": check_flag("validate", self.validate),
        }
        for name, value in normalised.items():
            object.__setattr__(self, name, value)  # frozen: the one place the fields are set

    def describe(self) -> str:
        """The fields shown by ``repr`` as ``name=value`` pairs (a module's ``extra_repr``)."""
        return ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self) if f.repr)
