"""The model's self-description: what goes in, what comes out, how to rebuild it.

`schema.json` travels beside the weights, inside the `.mar`, so the handler can rebuild and
check the model from the archive alone. It is plain JSON: nothing is unpickled.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .columns import Column, Encoder

SCHEMA_FILE = "schema.json"
WEIGHTS_FILE = "model.pt"
# 2: column roles, missing values, regression. Format 1 (numbers only, all required,
# classification) is still read, and served exactly as before.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
CLASSIFICATION = "classification"
REGRESSION = "regression"
TASKS = (CLASSIFICATION, REGRESSION)


class SchemaError(ValueError):
    """schema.json is missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class Architecture:
    """An MLP: inputs -> hidden layers with ReLU -> outputs (logits)."""

    inputs: int
    hidden: tuple[int, ...]
    outputs: int
    activation: str = "relu"
    type: str = "mlp"


@dataclass(frozen=True)
class Schema:
    """Everything needed to rebuild, feed and check the model.

    `features` are the input columns a row holds (in order); `columns` say how each becomes
    network inputs (empty: numbers only, one input each, all required, as in format 1). The
    scaler has one mean and scale per network input. Classification has `classes` and one
    output per class; regression has no classes, one output, and `target_mean` and
    `target_scale` to undo the standardisation it was trained on."""

    name: str
    features: tuple[str, ...]
    classes: tuple[str, ...]
    architecture: Architecture
    scaler_mean: tuple[float, ...]
    scaler_scale: tuple[float, ...]
    weights_file: str = WEIGHTS_FILE
    weights_sha256: str = ""
    task: str = CLASSIFICATION
    columns: tuple[Column, ...] = ()
    missing: str = "error"  # "impute" or "error" (see handler/columns.py)
    target: str = ""
    target_mean: float = 0.0
    target_scale: float = 1.0
    # Descriptive fields: training statistics, metrics, provenance. The handler does not need
    # them to predict, but they answer "what is this model?" from the archive alone.
    feature_stats: dict[str, dict[str, float]] = field(default_factory=dict)
    # What the model predicted on its training split: the baseline a batch's predictions are
    # compared with (class counts, or the predicted values' statistics and bins).
    prediction_stats: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.features)
        if n == 0:
            raise SchemaError("schema has no features")
        if len(set(self.features)) != n:
            raise SchemaError("schema has duplicate feature names")
        if self.columns and tuple(c.name for c in self.columns) != self.features:
            raise SchemaError("schema columns do not match its features")
        if self.task not in TASKS:
            raise SchemaError(f"schema task {self.task!r} is not one of {', '.join(TASKS)}")
        if self.missing not in ("impute", "error"):
            raise SchemaError(f"schema missing {self.missing!r} is not 'impute' or 'error'")
        if self.task == CLASSIFICATION:
            if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
                raise SchemaError(f"schema needs at least 2 distinct classes, got {self.classes!r}")
            outputs = len(self.classes)
        else:
            if self.classes:
                raise SchemaError("a regression schema has no classes")
            finite = math.isfinite(self.target_mean) and math.isfinite(self.target_scale)
            if not (finite and self.target_scale > 0):
                raise SchemaError("regression target mean and scale must be finite, the scale positive")
            outputs = 1
        width = self.encoder().width
        if self.architecture.inputs != width:
            raise SchemaError(
                f"architecture has {self.architecture.inputs} inputs but the columns make {width}"
            )
        if self.architecture.outputs != outputs:
            raise SchemaError(
                f"architecture has {self.architecture.outputs} outputs; {self.task} needs {outputs}"
            )
        if len(self.scaler_mean) != width or len(self.scaler_scale) != width:
            raise SchemaError(f"scaler must have {width} means and {width} scales")
        if any(not math.isfinite(s) or s <= 0 for s in self.scaler_scale):
            raise SchemaError("scaler scales must be finite and positive")

    def encoder(self) -> Encoder:
        """How rows become network inputs (numbers only, all required, without columns)."""
        if not self.columns:
            return Encoder.numeric(self.features)
        try:
            return Encoder(self.columns, impute=self.missing == "impute")
        except ValueError as exc:
            raise SchemaError(str(exc)) from exc

    @property
    def outputs(self) -> list[str]:
        """The prediction columns of a batch output, before `error`."""
        if self.task == REGRESSION:
            return ["prediction"]
        return ["label", *(f"p_{c}" for c in self.classes)]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {
            "format_version": FORMAT_VERSION,
            "name": d["name"],
            "task": self.task,
            "target": {"name": self.target, "mean": self.target_mean, "scale": self.target_scale},
            "features": list(self.features),
            "columns": [c.to_dict() for c in self.columns],
            "missing": self.missing,
            "classes": list(self.classes),
            "architecture": {**d["architecture"], "hidden": list(self.architecture.hidden)},
            "scaler": {
                "type": "standard",
                "mean": list(self.scaler_mean),
                "scale": list(self.scaler_scale),
            },
            "weights": {"file": self.weights_file, "sha256": self.weights_sha256},
            "feature_stats": d["feature_stats"],
            "prediction_stats": d["prediction_stats"],
            "metrics": d["metrics"],
            "training": d["training"],
            "versions": d["versions"],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Schema:
        try:
            version = d.get("format_version")
            if version not in READABLE_VERSIONS:
                raise SchemaError(
                    f"schema format_version {version!r} is not supported "
                    f"(this tabserve reads {', '.join(map(str, READABLE_VERSIONS))})"
                )
            arch = d["architecture"]
            target = d.get("target") or {}
            return cls(
                name=str(d["name"]),
                features=tuple(str(f) for f in d["features"]),
                classes=tuple(str(c) for c in d["classes"]),
                architecture=Architecture(
                    inputs=int(arch["inputs"]),
                    hidden=tuple(int(h) for h in arch["hidden"]),
                    outputs=int(arch["outputs"]),
                    activation=str(arch.get("activation", "relu")),
                    type=str(arch.get("type", "mlp")),
                ),
                scaler_mean=tuple(float(x) for x in d["scaler"]["mean"]),
                scaler_scale=tuple(float(x) for x in d["scaler"]["scale"]),
                weights_file=str(d["weights"]["file"]),
                weights_sha256=str(d["weights"].get("sha256", "")),
                feature_stats=dict(d.get("feature_stats", {})),
                prediction_stats=dict(d.get("prediction_stats", {})),
                metrics=dict(d.get("metrics", {})),
                training=dict(d.get("training", {})),
                versions=dict(d.get("versions", {})),
                task=str(d.get("task", CLASSIFICATION)),
                columns=tuple(Column.from_dict(c) for c in d.get("columns", ())),
                missing=str(d.get("missing", "error")),
                target=str(target.get("name", "")),
                target_mean=float(target.get("mean", 0.0)),
                target_scale=float(target.get("scale", 1.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, SchemaError):
                raise
            raise SchemaError(f"schema.json is malformed: {exc!r}") from exc

    def save(self, directory: Path) -> Path:
        path = Path(directory) / SCHEMA_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: Path) -> Schema:
        path = Path(directory) / SCHEMA_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise SchemaError(f"{path} not found") from exc
        except json.JSONDecodeError as exc:
            raise SchemaError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(data)
