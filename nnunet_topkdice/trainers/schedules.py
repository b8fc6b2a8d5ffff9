"""Training schedules as mixins: the paper's (section 3.2) and a short one for demos and tests.

A mixin goes first in the bases (``class X(PaperSchedule, nnUNetTrainerTopKDice)``) and changes only the
optimisation; the loss comes from the trainer it is mixed into. Both keep nnU-Net's constructor signature
(nnU-Net re-creates trainers from it when resuming and predicting) and only set attributes after it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

# nnUNetTrainer's constructor default, kept so that the signature stays nnU-Net's exactly.
_DEFAULT_DEVICE = torch.device("cuda")


class _Schedule:
    """Keeps nnU-Net's constructor signature and applies a schedule's attributes after it."""

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = _DEFAULT_DEVICE,
    ) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)  # type: ignore[call-arg]
        self._apply_schedule()

    def _apply_schedule(self) -> None:
        raise NotImplementedError


class PaperSchedule(_Schedule):
    """The paper's optimisation: Adam, lr 5e-4, weight decay 1e-4, poly decay (power 0.9), 300 epochs.

    Adam is ``torch.optim.Adam`` (L2 weight decay, as "Adam with weight decay" reads). The decay is
    nnU-Net's ``PolyLRScheduler``, stepped once per epoch as nnU-Net does, where the paper writes it per
    iteration. Iterations per epoch, batch size, patch size and data augmentation stay nnU-Net's.
    """

    paper_initial_lr: float = 5e-4
    paper_weight_decay: float = 1e-4
    paper_num_epochs: int = 300
    paper_poly_exponent: float = 0.9

    def _apply_schedule(self) -> None:
        self.initial_lr = self.paper_initial_lr
        self.weight_decay = self.paper_weight_decay
        self.num_epochs = self.paper_num_epochs

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer, PolyLRScheduler]:
        optimizer = torch.optim.Adam(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay)
        lr_scheduler = PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs, exponent=self.paper_poly_exponent)
        return optimizer, lr_scheduler


class DemoSchedule(_Schedule):
    """A short nnU-Net schedule for demos and end-to-end tests (not a real training; under a minute on a 2-core CPU
    at the demo dataset's 40x40 patches and batch 4, longer at the patches and batches planned for larger data).

    Only the length changes (nnU-Net's SGD, learning rate and poly decay are kept); a checkpoint is
    written every ``demo_save_every`` epochs so that an interrupted demo resumes with ``--c``. Tune the
    class attributes, not the constructor. Two pieces of nnU-Net's bookkeeping that cost as much as a
    third of such a short training are left out, neither of which changes the trained weights:

    - ``progress.png`` is drawn once, when training ends, instead of after every epoch (about 0.5 s of
      CPU per drawing, as long as six of the demo's training iterations);
    - with fold ``all``, nnU-Net's final validation is skipped: fold ``all`` trains on every case, so
      that validation only predicts the training cases again (``validation/`` stays empty); a test-set
      comparison predicts ``imagesTs`` instead. Numbered folds are validated as usual.
    """

    demo_num_epochs: int = 12
    demo_num_iterations_per_epoch: int = 30
    demo_num_val_iterations_per_epoch: int = 2
    demo_save_every: int = 1

    def _apply_schedule(self) -> None:
        self.num_epochs = self.demo_num_epochs
        self.num_iterations_per_epoch = self.demo_num_iterations_per_epoch
        self.num_val_iterations_per_epoch = self.demo_num_val_iterations_per_epoch
        self.save_every = self.demo_save_every

    def on_epoch_end(self) -> None:
        with _progress_plot_deferred(self.logger):
            super().on_epoch_end()  # type: ignore[misc]

    def on_train_end(self) -> None:
        if self.local_rank == 0:  # type: ignore[attr-defined]
            self.logger.plot_progress_png(self.output_folder)  # type: ignore[attr-defined]
        super().on_train_end()  # type: ignore[misc]

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        if self.fold == "all":  # type: ignore[attr-defined]
            self.print_to_log_file(  # type: ignore[attr-defined]
                "DemoSchedule: fold all has no held-out cases; nnU-Net's final validation (a second prediction "
                "of the training cases) is skipped"
            )
            return
        super().perform_actual_validation(save_probabilities)  # type: ignore[misc]


@contextlib.contextmanager
def _progress_plot_deferred(logger: object) -> Iterator[None]:
    """Within the block, ``logger.plot_progress_png`` does nothing (nnU-Net's per-epoch drawing)."""
    logger.plot_progress_png = lambda output_folder: None  # type: ignore[attr-defined]  # shadows the method
    try:
        yield
    finally:
        del logger.plot_progress_png  # type: ignore[attr-defined]  # the class's method again
