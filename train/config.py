"""How to train: the settings and their defaults (no torch import, so the CLI starts fast)."""

from __future__ import annotations

from dataclasses import dataclass

# Defaults, each with its reason. The tutorial's 100 full-batch epochs at lr 0.001 are only
# 100 optimiser steps: Iris test accuracy 0.80-1.0 depending on the split. Mini-batches of 16
# give several steps per epoch on small tables; large tables get larger batches (about 100
# steps per epoch, see fit.auto_batch_size) so that an epoch stays cheap. At most 200 epochs,
# stopped after PATIENCE epochs without a better validation loss, the best epoch's weights
# kept. bench/accuracy.py measures these defaults on every table it knows.
HIDDEN = (50, 50)  # the card's MLP
EPOCHS = 200
LR = 0.001
BATCH_SIZE = None  # auto: 16 rows, or 1% of the training rows (at most 512) for large tables
SEED = 0
TEST_SIZE = 0.2  # the card's 80/20 split
VALIDATION_SIZE = 0.15  # of the training split, for early stopping
PATIENCE = 20
OTHER_RATE = 0.02  # share of rows per epoch whose categories are trained as OTHER
CLASS_WEIGHTS = ("none", "balanced")


@dataclass(frozen=True)
class FitConfig:
    """How to train; the same config and data give the same weights."""

    hidden: tuple[int, ...] = HIDDEN
    epochs: int = EPOCHS
    lr: float = LR
    batch_size: int | None = BATCH_SIZE
    seed: int = SEED
    test_size: float = TEST_SIZE
    validation_size: float = VALIDATION_SIZE
    patience: int = PATIENCE
    class_weight: str = "none"
    other_rate: float = OTHER_RATE

    def __post_init__(self) -> None:
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden layer sizes must be positive, got {self.hidden}")
        if self.epochs < 1 or (self.batch_size is not None and self.batch_size < 1) or not self.lr > 0:
            raise ValueError("epochs, batch size and learning rate must be positive")
        if not 0 < self.test_size < 1:
            raise ValueError(f"test size must be between 0 and 1, got {self.test_size}")
        if not 0 < self.validation_size < 1:
            raise ValueError(f"validation size must be between 0 and 1, got {self.validation_size}")
        if self.patience < 1:
            raise ValueError(f"patience must be at least 1 epoch, got {self.patience}")
        if self.class_weight not in CLASS_WEIGHTS:
            raise ValueError(
                f"class weight must be one of {', '.join(CLASS_WEIGHTS)}, got {self.class_weight!r}"
            )
        if not 0 <= self.other_rate < 1:
            raise ValueError(f"other rate must be in [0, 1), got {self.other_rate}")
