"""Paper-style evaluation: metrics per case and class, the paper's averaging, comparison tables,
figures, and the TopK-Dice ignore-map pictures.

``evaluate_runs``, ``comparison_sentences`` and ``show_ignore_map`` are imported lazily so that
``topkdice --help`` does not load numpy, SimpleITK or matplotlib.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nnunet_topkdice.evaluation.evaluate import evaluate_runs
    from nnunet_topkdice.evaluation.ignore_map import show_ignore_map
    from nnunet_topkdice.evaluation.tables import comparison_sentences

__all__ = ["comparison_sentences", "evaluate_runs", "show_ignore_map"]


def __getattr__(name: str) -> Any:
    if name == "comparison_sentences":
        from nnunet_topkdice.evaluation.tables import comparison_sentences

        return comparison_sentences
    if name == "evaluate_runs":
        from nnunet_topkdice.evaluation.evaluate import evaluate_runs

        return evaluate_runs
    if name == "show_ignore_map":
        from nnunet_topkdice.evaluation.ignore_map import show_ignore_map

        return show_ignore_map
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
