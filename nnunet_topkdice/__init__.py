"""TopK-Dice loss and the paper's baselines as an nnU-Net v2 plugin."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("nnunet-topkdice")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
