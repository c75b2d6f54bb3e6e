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

SCHEMA_FILE = "schema.json"
WEIGHTS_FILE = "model.pt"
FORMAT_VERSION = 1


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
    """Everything needed to rebuild, feed and check the model."""

    name: str
    features: tuple[str, ...]
    classes: tuple[str, ...]
    architecture: Architecture
    scaler_mean: tuple[float, ...]
    scaler_scale: tuple[float, ...]
    weights_file: str = WEIGHTS_FILE
    weights_sha256: str = ""
    # Descriptive fields: training statistics, metrics, provenance. The handler does not need
    # them to predict, but they answer "what is this model?" from the archive alone.
    feature_stats: dict[str, dict[str, float]] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.features)
        if n == 0:
            raise SchemaError("schema has no features")
        if len(set(self.features)) != n:
            raise SchemaError("schema has duplicate feature names")
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise SchemaError(f"schema needs at least 2 distinct classes, got {self.classes!r}")
        if self.architecture.inputs != n:
            raise SchemaError(f"architecture has {self.architecture.inputs} inputs but {n} features")
        if self.architecture.outputs != len(self.classes):
            raise SchemaError(
                f"architecture has {self.architecture.outputs} outputs but {len(self.classes)} classes"
            )
        if len(self.scaler_mean) != n or len(self.scaler_scale) != n:
            raise SchemaError(f"scaler must have {n} means and {n} scales")
        if any(not math.isfinite(s) or s <= 0 for s in self.scaler_scale):
            raise SchemaError("scaler scales must be finite and positive")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {
            "format_version": FORMAT_VERSION,
            "name": d["name"],
            "features": list(self.features),
            "classes": list(self.classes),
            "architecture": {**d["architecture"], "hidden": list(self.architecture.hidden)},
            "scaler": {
                "type": "standard",
                "mean": list(self.scaler_mean),
                "scale": list(self.scaler_scale),
            },
            "weights": {"file": self.weights_file, "sha256": self.weights_sha256},
            "feature_stats": d["feature_stats"],
            "metrics": d["metrics"],
            "training": d["training"],
            "versions": d["versions"],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Schema:
        try:
            if d.get("format_version") != FORMAT_VERSION:
                raise SchemaError(
                    f"schema format_version {d.get('format_version')!r} is not supported "
                    f"(expected {FORMAT_VERSION})"
                )
            arch = d["architecture"]
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
                metrics=dict(d.get("metrics", {})),
                training=dict(d.get("training", {})),
                versions=dict(d.get("versions", {})),
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
