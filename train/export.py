"""Artifacts: weights as a state_dict plus schema.json, written so a reader never sees half."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..handler.columns import NUMERIC, is_missing_text
from ..handler.schema import SCHEMA_FILE, WEIGHTS_FILE, Schema
from .config import FitConfig
from .data import Table
from .fit import FitResult


def feature_stats(table: Table, rows: np.ndarray) -> dict[str, dict]:
    """Per column, on the training split: numeric min, max, mean, std of the present values;
    categorical counts per value; both with the number of missing values."""
    stats: dict[str, dict] = {}
    for j, (name, role) in enumerate(zip(table.features, table.roles)):
        values = [table.records[i][j] for i in rows.tolist()]
        present = [v.strip() for v in values if not is_missing_text(v)]
        missing = len(values) - len(present)
        if role == NUMERIC:
            x = np.asarray([float(v) for v in present], dtype=np.float64)
            if len(x):
                stats[name] = {
                    "min": float(x.min()),
                    "max": float(x.max()),
                    "mean": float(x.mean()),
                    "std": float(x.std()),
                    "missing": missing,
                    "bins": bins(x),
                }
            else:
                stats[name] = {"missing": missing}
        else:
            counts: dict[str, int] = {}
            for v in present:
                counts[v] = counts.get(v, 0) + 1
            stats[name] = {"counts": dict(sorted(counts.items())), "missing": missing}
    return stats


# Interior edges of the baseline bins: the training deciles, so each bin holds about a tenth of
# the training values (fewer bins where values repeat). A batch's values counted in the same
# bins give its distribution against training's.
BIN_QUANTILES = tuple(k / 10 for k in range(1, 10))


def bins(x: np.ndarray) -> dict[str, list]:
    """{"edges": interior edges, "counts": values per bin}: bin k holds edges[k-1] <= v <
    edges[k] (the first from minus infinity, the last to plus infinity)."""
    edges = np.unique(np.quantile(x, BIN_QUANTILES))
    counts = np.bincount(np.searchsorted(edges, x, side="right"), minlength=len(edges) + 1)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def prediction_stats(data: Table, result: FitResult) -> dict:
    """What the model predicted on its training rows: per class the count, or for regression
    the predicted values' min, max, mean, std and bins."""
    pred = result.train_predictions
    if pred is None or not len(pred):
        return {}
    if data.task == "classification":
        counts = np.bincount(pred.astype(np.int64), minlength=len(data.classes))
        return {"rows": int(len(pred)), "counts": {c: int(n) for c, n in zip(data.classes, counts)}}
    x = pred.astype(np.float64)
    return {
        "rows": int(len(x)),
        "min": float(x.min()),
        "max": float(x.max()),
        "mean": float(x.mean()),
        "std": float(x.std()),
        "bins": bins(x),
    }


def _tabserve_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tabserve")
    except PackageNotFoundError:
        return "unknown"


def build_schema(data: Table, config: FitConfig, result: FitResult, weights_sha256: str) -> Schema:
    import sklearn

    return Schema(
        name=data.name,
        features=data.features,
        classes=data.classes,
        task=data.task,
        columns=result.columns,
        missing=data.missing,
        target=data.target,
        target_mean=result.target_mean,
        target_scale=result.target_scale,
        architecture=result.architecture,
        scaler_mean=tuple(float(v) for v in result.scaler_mean),
        scaler_scale=tuple(float(v) for v in result.scaler_scale),
        weights_file=WEIGHTS_FILE,
        weights_sha256=weights_sha256,
        feature_stats=feature_stats(data, result.train_index),
        prediction_stats=prediction_stats(data, result),
        metrics=result.metrics,
        training={
            "source": data.source,
            "rows": int(len(data.y)),
            "data_sha256": data.sha256(),
            "seed": config.seed,
            "epochs": config.epochs,
            "lr": config.lr,
            "batch_size": result.metrics.get("batch_size", config.batch_size),
            "test_size": config.test_size,
            "validation_size": config.validation_size,
            "patience": config.patience,
            "class_weight": config.class_weight,
            "other_rate": config.other_rate,
            "optimizer": "adam",
            "loss": "cross_entropy_on_logits"
            if data.task == "classification"
            else "mse_on_standardised_target",
            "notes": list(data.notes),
        },
        versions={
            "tabserve": _tabserve_version(),
            "torch": torch.__version__,
            "scikit_learn": sklearn.__version__,
            "numpy": np.__version__,
        },
    )


def weights_bytes(model: torch.nn.Module) -> bytes:
    """The model's state_dict in torch.save's zip format, the same bytes for the same weights.

    torch.save names the records inside the zip after the file it writes to, so saving to a
    randomly named temporary file would put that name into the weights and their SHA-256.
    Saved to memory the records are always called `archive/...`."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def export(data: Table, config: FitConfig, result: FitResult, out: Path) -> Schema:
    """Write OUT/model.pt and OUT/schema.json. Each file is written beside its final name and
    renamed into place, the schema last, so a crash never leaves a schema pointing at
    weights it does not describe. The same data, settings and seed give byte-identical
    weights (and so the same weights_sha256)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = weights_bytes(result.model)
    schema = build_schema(data, config, result, hashlib.sha256(weights).hexdigest())
    fd, tmp = tempfile.mkstemp(prefix=".model-", suffix=".pt", dir=out)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(weights)
        os.replace(tmp, out / WEIGHTS_FILE)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    tmp_dir = Path(tempfile.mkdtemp(prefix=".schema-", dir=out))
    try:
        schema.save(tmp_dir)
        os.replace(tmp_dir / SCHEMA_FILE, out / SCHEMA_FILE)
    finally:
        for p in tmp_dir.glob("*"):
            p.unlink()
        tmp_dir.rmdir()
    return schema
