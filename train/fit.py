"""The training loop: stratified split, scaler on the training part, MLP on logits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..handler.model import build_mlp
from ..handler.schema import Architecture
from .config import FitConfig
from .data import Dataset

EpochCallback = Callable[[int, int, float], None]


@dataclass
class FitResult:
    model: nn.Sequential
    architecture: Architecture
    scaler_mean: np.ndarray
    scaler_scale: np.ndarray
    train_index: np.ndarray
    test_index: np.ndarray
    metrics: dict = field(default_factory=dict)


def standard_scaler(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and scale as scikit-learn's StandardScaler computes them (population std; 1 for
    a constant column so it does not divide by zero)."""
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    return mean, scale


def _accuracy(model: nn.Module, x: torch.Tensor, y: np.ndarray, n_classes: int) -> tuple[float, list[float]]:
    with torch.inference_mode():
        pred = model(x).argmax(dim=1).numpy()
    per_class = [
        float((pred[y == k] == k).mean()) if (y == k).any() else float("nan") for k in range(n_classes)
    ]
    return float((pred == y).mean()), per_class


def fit(data: Dataset, config: FitConfig, on_epoch: EpochCallback | None = None) -> FitResult:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(data.y))
    train_idx, test_idx = train_test_split(
        idx, test_size=config.test_size, stratify=data.y, random_state=config.seed
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    mean, scale = standard_scaler(data.x[train_idx])

    def tensor(rows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((data.x[rows] - mean) / scale).astype(np.float32))

    x_train, x_test = tensor(train_idx), tensor(test_idx)
    y_train = torch.from_numpy(data.y[train_idx])

    torch.manual_seed(config.seed)
    arch = Architecture(inputs=len(data.features), hidden=tuple(config.hidden), outputs=len(data.classes))
    model = build_mlp(arch)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    # The tutorial put a softmax before CrossEntropyLoss, which applies log-softmax itself:
    # a double softmax that flattens the gradients. Train on logits; softmax only when serving.
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(config.seed)
    n = len(train_idx)
    loss_value = float("nan")
    for epoch in range(1, config.epochs + 1):
        model.train()
        total = 0.0
        for batch in torch.randperm(n, generator=generator).split(config.batch_size):
            optimiser.zero_grad()
            loss = loss_fn(model(x_train[batch]), y_train[batch])
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
        loss_value = total / n
        if on_epoch is not None:
            on_epoch(epoch, config.epochs, loss_value)
    model.eval()

    k = len(data.classes)
    train_acc, train_per_class = _accuracy(model, x_train, data.y[train_idx], k)
    test_acc, test_per_class = _accuracy(model, x_test, data.y[test_idx], k)
    metrics = {
        "train_accuracy": train_acc,
        "test_accuracy": test_acc,
        "train_accuracy_per_class": dict(zip(data.classes, train_per_class)),
        "test_accuracy_per_class": dict(zip(data.classes, test_per_class)),
        "final_train_loss": loss_value,
        "train_rows": int(len(train_idx)),
        "test_rows": int(len(test_idx)),
    }
    return FitResult(model, arch, mean, scale, train_idx, test_idx, metrics)
