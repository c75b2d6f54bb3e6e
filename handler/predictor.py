"""The model ready to predict: schema + weights from one directory, encoder, scaler, and
softmax (classification) or the target's scale undone (regression)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .model import load_model
from .rows import FLOAT32_MAX, Rows
from .schema import REGRESSION, Schema


def pick_device(gpu_id: int | None) -> torch.device:
    """`cuda:<gpu_id>` when TorchServe assigned a GPU and CUDA is there, else the CPU."""
    if gpu_id is not None and torch.cuda.is_available():
        return torch.device(f"cuda:{int(gpu_id)}")
    return torch.device("cpu")


class Predictor:
    """Scales encoded rows and returns, per row, class probabilities (softmax of the logits)
    or, for regression, the one predicted value (shape (n, 1))."""

    def __init__(self, directory: Path, device: torch.device | None = None) -> None:
        self.directory = Path(directory)
        self.schema = Schema.load(self.directory)
        self.device = device or torch.device("cpu")
        self.model = load_model(self.directory, self.schema, self.device)
        self.encoder = self.schema.encoder()
        self.regression = self.schema.task == REGRESSION
        self._mean = np.asarray(self.schema.scaler_mean, dtype=np.float64)
        self._scale = np.asarray(self.schema.scaler_scale, dtype=np.float64)

    @property
    def features(self) -> tuple[str, ...]:
        return self.schema.features

    @property
    def classes(self) -> tuple[str, ...]:
        return self.schema.classes

    @property
    def n_outputs(self) -> int:
        return 1 if self.regression else len(self.classes)

    def scale(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self._mean) / self._scale

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """For encoded (unscaled) rows of shape (n, inputs): probabilities, shape
        (n, n_classes), or for regression the predictions, shape (n, 1)."""
        if len(x) == 0:
            return np.zeros((0, self.n_outputs), dtype=np.float64)
        batch = torch.from_numpy(self.scale(x).astype(np.float32)).to(self.device)
        with torch.inference_mode():
            out = self.model(batch)
            if not self.regression:
                out = torch.softmax(out, dim=1)
        out = out.cpu().numpy().astype(np.float64)
        if self.regression:
            out = out * self.schema.target_scale + self.schema.target_mean
        return out

    def screen(self, rows: Rows, first_row: int = 1) -> Rows:
        """The rows with an error added where a feature is finite but too large for float32
        once scaled (it would reach the model as infinity). `first_row` numbers the rows in
        messages, as in decoding."""
        ok = rows.ok
        with np.errstate(over="ignore", invalid="ignore"):
            fits = np.abs(self.scale(rows.values)) <= FLOAT32_MAX
        bad = ok & ~fits.all(axis=1)
        if not bad.any():
            return rows
        errors = list(rows.errors)
        values = rows.values.copy()
        for i in np.flatnonzero(bad):
            j = int(np.flatnonzero(~fits[i])[0])
            errors[i] = (
                f"row {first_row + i}: feature {self.encoder.column_of_input(j)!r} is too large: "
                f"{float(rows.values[i, j])!r} is out of float32 range once scaled"
            )
            values[i] = 0.0
        return Rows(values, errors, rows.unseen, rows.missing, rows.new, rows.new_values)

    def place(self, rows: Rows, probs: np.ndarray, first_row: int = 1) -> tuple[np.ndarray, list[str | None]]:
        """Every row's probabilities (zeros where it has an error) and errors, from the
        probabilities of its good rows; a row whose probabilities are not finite gets an
        error too, so no NaN or infinity ever leaves the handler."""
        errors = list(rows.errors)
        out = np.zeros((len(rows), self.n_outputs), dtype=np.float64)
        ok = np.flatnonzero(rows.ok)
        finite = np.isfinite(probs).all(axis=1)
        out[ok[finite]] = probs[finite]
        for i in ok[~finite]:
            errors[i] = f"row {first_row + i}: the model's output is not finite for these feature values"
        return out, errors

    def predict_rows(self, rows: Rows, first_row: int = 1) -> tuple[np.ndarray, list[str | None]]:
        """Probabilities (zeros for failed rows) and errors for every row."""
        rows = self.screen(rows, first_row)
        return self.place(rows, self.predict_proba(rows.values[rows.ok]), first_row)
