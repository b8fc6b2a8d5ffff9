"""nnU-Net's folder variables and dataset names as the ``topkdice`` commands read them.

nnU-Net raises a RuntimeError on an unset folder variable and a ValueError on a dataset that is neither an
id nor a ``DatasetXXX_Name``; here both are :class:`~nnunet_topkdice.errors.InputError` (exit code 2) that
name the variable or the argument, for ``topkdice train`` and ``topkdice predict`` alike.
"""

from __future__ import annotations

import os
from pathlib import Path

from nnunet_topkdice.errors import InputError

__all__ = ["dataset_name", "required_folder"]


def required_folder(variable: str, needed_by: str) -> Path:
    """The folder that nnU-Net's environment variable ``variable`` names (``nnUNet_results``, ...).

    Args:
        needed_by: what needs it, for the message (``"seeded training"``, ``"topkdice predict"``).
    Raises:
        InputError: the variable is not set, or empty.
    """
    value = os.environ.get(variable)
    if not value:
        raise InputError(f"{variable} is not set: {needed_by} needs nnU-Net's {variable} folder")
    return Path(value)


def dataset_name(dataset_name_or_id: int | str, argument: str = "DATASET") -> str:
    """The ``DatasetXXX_Name`` of a dataset id or name, as nnU-Net's ``maybe_convert_to_dataset_name`` finds it
    (an id is looked up in the folders of ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results``).

    Args:
        argument: how the command spells the argument, for the message (``"DATASET"``, ``"-d"``).
    Raises:
        InputError: neither an integer id nor a name starting with ``Dataset``; no dataset, or several, of
            that id.
    """
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    if isinstance(dataset_name_or_id, str) and not dataset_name_or_id.startswith("Dataset"):
        try:
            dataset_name_or_id = int(dataset_name_or_id)
        except ValueError:
            raise InputError(
                f"{argument} must be an integer id or a name like Dataset123_Name, got {dataset_name_or_id!r}"
            ) from None
    try:
        return maybe_convert_to_dataset_name(dataset_name_or_id)
    except RuntimeError as e:
        raise InputError(str(e)) from None
