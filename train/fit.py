"""The training loop: split, columns learnt on the training split, scaler, MLP on logits (or on
a standardised target for regression), early stopping on a validation part.

Splits: test_size of the rows are held out for the metrics; validation_size of the rest is
carved out for early stopping; both stratified for classification. The encoding (fill values,
vocabularies) and the scaler are learnt on the training split, validation part included, and
never see the test rows. The weights kept are those of the epoch with the lowest validation
loss; training stops after `patience` epochs without a better one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..handler.columns import CATEGORICAL, NUMERIC, Column, Encoder
from ..handler.model import build_mlp
from ..handler.schema import CLASSIFICATION, Architecture
from .config import FitConfig
from .data import Table, encode_rows, encoder_for, learn_columns

EpochCallback = Callable[[int, int, float], None]


@dataclass
class FitResult:
    model: nn.Sequential
    architecture: Architecture
    columns: tuple[Column, ...]
    encoder: Encoder
    scaler_mean: np.ndarray
    scaler_scale: np.ndarray
    train_index: np.ndarray  # the training split, validation part included
    valid_index: np.ndarray
    test_index: np.ndarray
    target_mean: float = 0.0
    target_scale: float = 1.0
    metrics: dict = field(default_factory=dict)
    # The model's predictions on the training split (validation part included, as
    # feature_stats): class indices, or values in the target's units.
    train_predictions: np.ndarray | None = None


def standard_scaler(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and scale as scikit-learn's StandardScaler computes them (population std; 1 for
    a constant column so it does not divide by zero)."""
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    return mean, scale


def input_scaler(encoder: Encoder, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Numeric values standardised; one-hot and missing-indicator inputs left as 0/1."""
    mean, scale = standard_scaler(x)
    for c, o in zip(encoder.columns, encoder.offsets):
        if c.role == NUMERIC:
            mean[o + 1 : o + c.width], scale[o + 1 : o + c.width] = 0.0, 1.0
        else:
            mean[o : o + c.width], scale[o : o + c.width] = 0.0, 1.0
    return mean, scale


def split(table: Table, config: FitConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(training split, its validation part, test split): sorted row indices."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(table.y))
    stratify = table.y if table.task == CLASSIFICATION else None
    train_idx, test_idx = train_test_split(
        idx, test_size=config.test_size, stratify=stratify, random_state=config.seed
    )
    stratify = table.y[train_idx] if table.task == CLASSIFICATION else None
    _, valid_idx = train_test_split(
        train_idx, test_size=config.validation_size, stratify=stratify, random_state=config.seed
    )
    return np.sort(train_idx), np.sort(valid_idx), np.sort(test_idx)


def auto_batch_size(n: int) -> int:
    """16 rows for small tables (the Iris defaults); about 100 steps per epoch for large ones."""
    return int(min(512, max(16, n // 100)))


def _category_blocks(encoder: Encoder) -> list[tuple[int, int]]:
    """(first input, width) of every categorical column's one-hot block (OTHER is first)."""
    return [(o, c.width) for c, o in zip(encoder.columns, encoder.offsets) if c.role == CATEGORICAL]


def fit(table: Table, config: FitConfig, on_epoch: EpochCallback | None = None) -> FitResult:
    # One thread: the network is small, and more threads only contend (26 s instead of 0.7 s
    # for breast_cancer on 2 busy cores). Restored afterwards for the caller.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit(table, config, on_epoch)
    finally:
        torch.set_num_threads(threads)


def _fit(table: Table, config: FitConfig, on_epoch: EpochCallback | None) -> FitResult:
    train_idx, valid_idx, test_idx = split(table, config)
    fit_idx = np.setdiff1d(train_idx, valid_idx)
    columns = learn_columns(table, train_idx)
    encoder = encoder_for(table, columns)
    x_all = encode_rows(table, encoder, np.arange(len(table.y)))
    mean, scale = input_scaler(encoder, x_all[train_idx])

    def tensor(rows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((x_all[rows] - mean) / scale).astype(np.float32))

    classification = table.task == CLASSIFICATION
    if classification:
        y_all = torch.from_numpy(table.y.astype(np.int64))
        target_mean, target_scale = 0.0, 1.0
        outputs = len(table.classes)
        weight = None
        if config.class_weight == "balanced":
            counts = np.bincount(table.y[fit_idx], minlength=outputs).astype(np.float64)
            weight = torch.from_numpy((len(fit_idx) / (outputs * np.maximum(counts, 1))).astype(np.float32))
        # The tutorial put a softmax before CrossEntropyLoss, which applies log-softmax itself:
        # a double softmax that flattens the gradients. Train on logits; softmax only when serving.
        loss_fn: nn.Module = nn.CrossEntropyLoss(weight=weight)
    else:
        y_fit = table.y[train_idx]
        target_mean, target_scale = float(y_fit.mean()), float(y_fit.std()) or 1.0
        y_all = torch.from_numpy(((table.y - target_mean) / target_scale).astype(np.float32)).unsqueeze(1)
        outputs = 1
        loss_fn = nn.MSELoss()

    x_fit, x_valid = tensor(fit_idx), tensor(valid_idx)
    y_fit_t, y_valid = y_all[fit_idx], y_all[valid_idx]
    torch.manual_seed(config.seed)
    arch = Architecture(inputs=encoder.width, hidden=tuple(config.hidden), outputs=outputs)
    model = build_mlp(arch)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    n = len(fit_idx)
    batch_size = config.batch_size or auto_batch_size(n)
    blocks = _category_blocks(encoder)
    best = (float("inf"), 0, copy.deepcopy(model.state_dict()))
    loss_value = float("nan")
    epoch = 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        x_epoch = x_fit
        if blocks and config.other_rate > 0:
            # A few rows per epoch see each category column as OTHER, so OTHER (rare and
            # unseen categories) always has learnt weights, even where training had none.
            x_epoch = x_fit.clone()
            for start, width in blocks:
                hit = torch.rand(n, generator=generator) < config.other_rate
                x_epoch[hit, start : start + width] = 0.0
                x_epoch[hit, start] = 1.0
        total = 0.0
        for batch in torch.randperm(n, generator=generator).split(batch_size):
            optimiser.zero_grad()
            loss = loss_fn(model(x_epoch[batch]), y_fit_t[batch])
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
        loss_value = total / n
        model.eval()
        with torch.inference_mode():
            valid_loss = float(loss_fn(model(x_valid), y_valid))
        if valid_loss < best[0]:
            best = (valid_loss, epoch, copy.deepcopy(model.state_dict()))
        if on_epoch is not None:
            on_epoch(epoch, config.epochs, loss_value)
        if epoch - best[1] >= config.patience:
            break
    model.load_state_dict(best[2])
    model.eval()

    metrics = {
        "best_epoch": best[1],
        "epochs_run": epoch,
        "best_valid_loss": best[0],
        "final_train_loss": loss_value,
        "batch_size": batch_size,
        "train_rows": int(len(fit_idx)),
        "valid_rows": int(len(valid_idx)),
        "test_rows": int(len(test_idx)),
    }
    parts = {"train": fit_idx, "test": test_idx}
    with torch.inference_mode():
        out = {k: model(tensor(rows)).numpy() for k, rows in parts.items()}
    # On the whole training split (validation part included), the rows feature_stats describe.
    with torch.inference_mode():
        on_train = model(tensor(train_idx)).numpy()
    if classification:
        train_predictions = on_train.argmax(axis=1)
    else:
        train_predictions = on_train[:, 0].astype(np.float64) * target_scale + target_mean
    if classification:
        k = len(table.classes)
        for part, rows in parts.items():
            acc, per_class = _accuracy(out[part].argmax(axis=1), table.y[rows], k)
            metrics[f"{part}_accuracy"] = acc
            metrics[f"{part}_accuracy_per_class"] = dict(zip(table.classes, per_class))
    else:
        for part, rows in parts.items():
            pred = out[part][:, 0].astype(np.float64) * target_scale + target_mean
            metrics.update({f"{part}_{m}": v for m, v in regression_metrics(table.y[rows], pred).items()})
    return FitResult(
        model, arch, columns, encoder, mean, scale, train_idx, valid_idx, test_idx,
        target_mean, target_scale, metrics, train_predictions,
    )  # fmt: skip


def _accuracy(pred: np.ndarray, y: np.ndarray, n_classes: int) -> tuple[float, list[float]]:
    per_class = [
        float((pred[y == k] == k).mean()) if (y == k).any() else float("nan") for k in range(n_classes)
    ]
    return float((pred == y).mean()), per_class


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    err = pred - y
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return {
        "rmse": float(np.sqrt((err**2).mean())),
        "mae": float(np.abs(err).mean()),
        "r2": 1.0 - float((err**2).sum()) / ss_tot if ss_tot > 0 else float("nan"),
    }
