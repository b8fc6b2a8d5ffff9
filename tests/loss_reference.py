"""The tests' reference is the package's definition of the loss, :mod:`nnunet_topkdice.losses.reference`.

Kept as a re-export for the test modules that still import ``loss_reference``.
"""

from nnunet_topkdice.losses.reference import (  # noqa: F401
    kept_dice_loss,
    reference_channel_exclusion,
    reference_exclusion,
    reference_topk_dice,
)
