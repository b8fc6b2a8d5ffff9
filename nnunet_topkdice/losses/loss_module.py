"""What the softmax and sigmoid TopK-Dice modules share: a validated :class:`TopKDiceOptions` and a thin
``forward`` over the functional loss (STYLE rule 1: functional core, thin module)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from torch import Tensor, nn

from nnunet_topkdice.losses.options import TopKDiceOptions

__all__ = ["TopKDiceModule"]


class TopKDiceModule(nn.Module):
    """A loss module holding its options; ``forward`` calls ``loss_function(logits, target, loss_mask=...,
    options=self.options)``.

    A subclass sets ``loss_function`` (a ``staticmethod``) and builds the options from its public
    signature. ``options`` is frozen: a changed option is a new module. Every option is also a read-only
    attribute (``loss.k``, ``loss.batch_dice``, ...), as nnU-Net's Dice losses have them.
    """

    loss_function: Callable[..., Tensor]

    def __init__(self, options: TopKDiceOptions) -> None:
        super().__init__()
        self.options = options

    def forward(self, logits: Tensor, target: Tensor, loss_mask: Tensor | None = None) -> Tensor:
        return self.loss_function(logits, target, loss_mask=loss_mask, options=self.options)

    def extra_repr(self) -> str:
        return self.options.describe()


def _option_attribute(name: str) -> property:
    return property(lambda self: getattr(self.options, name), doc=f"``self.options.{name}`` (read-only).")


for _field in dataclasses.fields(TopKDiceOptions):
    setattr(TopKDiceModule, _field.name, _option_attribute(_field.name))
