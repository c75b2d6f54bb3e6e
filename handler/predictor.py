"""The model ready to predict: schema + weights from one directory, scaler, softmax."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .model import load_model
from .rows import Rows
from .schema import Schema


def pick_device(gpu_id: int | None) -> torch.device:
    """`cuda:<gpu_id>` when TorchServe assigned a GPU and CUDA is there, else the CPU."""
    if gpu_id is not None and torch.cuda.is_available():
        return torch.device(f"cuda:{int(gpu_id)}")
    return torch.device("cpu")


class Predictor:
    """Scales raw feature rows and returns class probabilities (softmax of the logits)."""

    def __init__(self, directory: Path, device: torch.device | None = None) -> None:
        self.directory = Path(directory)
        self.schema = Schema.load(self.directory)
        self.device = device or torch.device("cpu")
        self.model = load_model(self.directory, self.schema, self.device)
        self._mean = np.asarray(self.schema.scaler_mean, dtype=np.float64)
        self._scale = np.asarray(self.schema.scaler_scale, dtype=np.float64)

    @property
    def features(self) -> tuple[str, ...]:
        return self.schema.features

    @property
    def classes(self) -> tuple[str, ...]:
        return self.schema.classes

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Probabilities, shape (n, n_classes), for raw (unscaled) rows of shape (n, n_features)."""
        if len(x) == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float64)
        scaled = (np.asarray(x, dtype=np.float64) - self._mean) / self._scale
        batch = torch.from_numpy(scaled.astype(np.float32)).to(self.device)
        with torch.inference_mode():
            probs = torch.softmax(self.model(batch), dim=1)
        return probs.cpu().numpy().astype(np.float64)

    def predict_rows(self, rows: Rows) -> np.ndarray:
        """Probabilities for every row; rows with errors get NaN."""
        out = np.full((len(rows), len(self.classes)), np.nan, dtype=np.float64)
        ok = rows.ok
        if ok.any():
            out[ok] = self.predict_proba(rows.values[ok])
        return out
