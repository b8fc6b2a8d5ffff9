"""Environment variables set for the duration of a block: nnU-Net reads its folders and
``nnUNet_extTrainer`` from ``os.environ`` when it looks them up, not only at import."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping

__all__ = ["environment"]


@contextlib.contextmanager
def environment(updates: Mapping[str, str]) -> Iterator[None]:
    """Set ``updates`` in ``os.environ`` inside the block; afterwards each variable has its previous value
    again, or is unset where it was not set."""
    saved = {key: os.environ.get(key) for key in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
