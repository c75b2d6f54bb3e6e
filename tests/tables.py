"""Model artifacts for the table tests, written without the training code: a schema and
random weights (seeded), so each test knows exactly which columns, categories and missing
values the model has, and can compute what it must predict by hand."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from tabserve.handler.columns import CATEGORICAL, Column
from tabserve.handler.model import build_mlp
from tabserve.handler.schema import REGRESSION, WEIGHTS_FILE, Architecture, Schema
from tabserve.train.export import weights_bytes

# Classification: every kind of column. Network inputs (width 11):
# bill_length, bill_length<missing>, flipper, island=<other>, =Biscoe, =Dream, =Torgersen,
# island=<missing>, sex=<other>, =female, =male.
PENGUIN_COLUMNS = (
    Column("bill_length", fill=44.0, indicator=True),  # numeric with a missing indicator
    Column("flipper", fill=200.0),  # numeric without
    Column("island", CATEGORICAL, categories=("Biscoe", "Dream", "Torgersen"), missing_slot=True),
    Column("sex", CATEGORICAL, categories=("female", "male")),  # a missing value is OTHER
)
PENGUIN_CLASSES = ("Adelie", "Chinstrap", "Gentoo")

# Regression: size, size<missing>, colour=<other>, =red, =blue, colour=<missing>, age.
PRICE_COLUMNS = (
    Column("size", fill=3.0, indicator=True),
    Column("colour", CATEGORICAL, categories=("red", "blue"), missing_slot=True),
    Column("age", fill=5.0),
)
PRICE_TARGET = ("price", 21.0, 4.0)  # name, mean, scale

# Format 1 (numbers only, all required): how archives were written before column roles.
OLD_FEATURES = ("sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm")
OLD_CLASSES = ("setosa", "versicolor", "virginica")


def _weights(out: Path, arch: Architecture, seed: int) -> tuple[torch.nn.Module, str]:
    torch.manual_seed(seed)
    model = build_mlp(arch)
    data = weights_bytes(model)
    out.mkdir(parents=True, exist_ok=True)
    (out / WEIGHTS_FILE).write_bytes(data)
    return model.eval(), hashlib.sha256(data).hexdigest()


def _scaler(columns: tuple[Column, ...], centres: dict[str, tuple[float, float]]) -> tuple[list, list]:
    """Mean and scale per network input: the given ones for a numeric value, 0 and 1 for
    indicators and one-hot inputs."""
    mean: list[float] = []
    scale: list[float] = []
    for c in columns:
        m, s = centres.get(c.name, (0.0, 1.0))
        mean += [m] + [0.0] * (c.width - 1)
        scale += [s] + [1.0] * (c.width - 1)
    return mean, scale


def write_penguins(out: Path, seed: int = 0) -> Schema:
    width = sum(c.width for c in PENGUIN_COLUMNS)
    arch = Architecture(inputs=width, hidden=(16,), outputs=len(PENGUIN_CLASSES))
    _, sha = _weights(out, arch, seed)
    mean, scale = _scaler(PENGUIN_COLUMNS, {"bill_length": (44.0, 5.0), "flipper": (200.0, 14.0)})
    schema = Schema(
        name="penguins",
        features=tuple(c.name for c in PENGUIN_COLUMNS),
        classes=PENGUIN_CLASSES,
        architecture=arch,
        scaler_mean=tuple(mean),
        scaler_scale=tuple(scale),
        weights_sha256=sha,
        columns=PENGUIN_COLUMNS,
        missing="impute",
        target="species",
    )
    schema.save(out)
    return schema


def write_price(out: Path, seed: int = 1) -> Schema:
    width = sum(c.width for c in PRICE_COLUMNS)
    arch = Architecture(inputs=width, hidden=(8,), outputs=1)
    _, sha = _weights(out, arch, seed)
    mean, scale = _scaler(PRICE_COLUMNS, {"size": (3.0, 1.5), "age": (5.0, 3.0)})
    name, target_mean, target_scale = PRICE_TARGET
    schema = Schema(
        name="price",
        features=tuple(c.name for c in PRICE_COLUMNS),
        classes=(),
        architecture=arch,
        scaler_mean=tuple(mean),
        scaler_scale=tuple(scale),
        weights_sha256=sha,
        task=REGRESSION,
        columns=PRICE_COLUMNS,
        missing="impute",
        target=name,
        target_mean=target_mean,
        target_scale=target_scale,
    )
    schema.save(out)
    return schema


def write_old_format(out: Path, seed: int = 2) -> dict:
    """A format 1 schema.json as tabserve wrote it before column roles existed."""
    arch = Architecture(inputs=len(OLD_FEATURES), hidden=(8,), outputs=len(OLD_CLASSES))
    _, sha = _weights(out, arch, seed)
    schema = {
        "format_version": 1,
        "name": "oldiris",
        "features": list(OLD_FEATURES),
        "classes": list(OLD_CLASSES),
        "architecture": {"inputs": 4, "hidden": [8], "outputs": 3, "activation": "relu", "type": "mlp"},
        "scaler": {"type": "standard", "mean": [5.8, 3.0, 3.7, 1.2], "scale": [0.8, 0.4, 1.7, 0.7]},
        "weights": {"file": WEIGHTS_FILE, "sha256": sha},
        "feature_stats": {},
        "metrics": {},
        "training": {},
        "versions": {},
    }
    (out / "schema.json").write_text(json.dumps(schema, indent=2) + "\n")
    return schema


def forward(directory: Path, inputs: list[list[float]]) -> np.ndarray:
    """The network of `directory` on hand-encoded (unscaled) inputs, outside the handler:
    softmax probabilities, or for regression the predictions in the target's units."""
    raw = json.loads((directory / "schema.json").read_text())
    arch = raw["architecture"]
    model = build_mlp(Architecture(arch["inputs"], tuple(arch["hidden"]), arch["outputs"]))
    model.load_state_dict(torch.load(directory / WEIGHTS_FILE, weights_only=True))
    mean = np.asarray(raw["scaler"]["mean"], dtype=np.float64)
    scale = np.asarray(raw["scaler"]["scale"], dtype=np.float64)
    x = torch.from_numpy(((np.asarray(inputs, dtype=np.float64) - mean) / scale).astype(np.float32))
    with torch.inference_mode():
        out = model.eval()(x)
    if raw.get("task") == REGRESSION:
        target = raw["target"]
        return out.numpy().astype(np.float64) * target["scale"] + target["mean"]
    return torch.softmax(out, dim=1).numpy().astype(np.float64)
