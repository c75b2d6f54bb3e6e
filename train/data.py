"""Training data: scikit-learn's bundled data sets or a user's CSV, as float64 features and
integer class indices. Everything wrong with the data is reported here, before training."""

from __future__ import annotations

import csv
import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BUILTIN = ("iris", "wine", "breast_cancer")
# A stratified 80/20 split needs every class in both parts; below this the test part of a
# class is a single row or none and its accuracy means nothing.
MIN_ROWS_PER_CLASS = 5


class DataError(ValueError):
    """The training data cannot be used: named column, row and problem."""


@dataclass(frozen=True)
class Dataset:
    name: str
    features: tuple[str, ...]
    classes: tuple[str, ...]
    x: np.ndarray  # float64, (n, n_features)
    y: np.ndarray  # int64 class indices into `classes`
    source: str

    def sha256(self) -> str:
        """A hash of exactly what the model was trained on: names, values and labels."""
        h = hashlib.sha256()
        h.update("\x1f".join(self.features).encode())
        h.update(b"\x1e" + "\x1f".join(self.classes).encode())
        h.update(np.ascontiguousarray(self.x, dtype="<f8").tobytes())
        h.update(np.ascontiguousarray(self.y, dtype="<i8").tobytes())
        return h.hexdigest()


def column_name(raw: str) -> str:
    """scikit-learn's names ('sepal length (cm)') as CSV- and JSON-friendly ones ('sepal_length_cm')."""
    return re.sub(r"[^0-9a-z]+", "_", raw.lower()).strip("_")


def load_builtin(name: str) -> Dataset:
    from sklearn import datasets

    if name not in BUILTIN:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(BUILTIN)}")
    bunch = getattr(datasets, f"load_{name}")()
    data = Dataset(
        name=name,
        features=tuple(column_name(f) for f in bunch.feature_names),
        classes=tuple(str(c) for c in bunch.target_names),
        x=np.asarray(bunch.data, dtype=np.float64),
        y=np.asarray(bunch.target, dtype=np.int64),
        source=f"sklearn.datasets.load_{name}",
    )
    check_class_sizes(data)
    return data


def load_csv(path: Path, target: str, name: str | None = None) -> Dataset:
    """A CSV with a header: `target` holds class labels, every other column a numeric feature."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path} is empty")
            header = [h.strip() for h in header]
            if target not in header:
                raise DataError(
                    f"{path}: target column {target!r} not found; columns are {', '.join(header)}"
                )
            if len(set(header)) != len(header):
                raise DataError(f"{path}: duplicate column names in header")
            t = header.index(target)
            features = tuple(h for i, h in enumerate(header) if i != t)
            if not features:
                raise DataError(f"{path}: no feature columns beside {target!r}")
            rows: list[list[float]] = []
            labels: list[str] = []
            for line, rec in enumerate(reader, start=2):
                if not rec or (len(rec) == 1 and not rec[0].strip()):
                    continue
                if len(rec) != len(header):
                    raise DataError(f"{path} line {line}: expected {len(header)} fields, got {len(rec)}")
                label = rec[t].strip()
                if not label:
                    raise DataError(f"{path} line {line}: target {target!r} is empty")
                values = []
                for i, field in enumerate(rec):
                    if i == t:
                        continue
                    try:
                        v = float(field)
                    except ValueError:
                        raise DataError(
                            f"{path} line {line}: feature column {header[i]!r} is not numeric: {field!r}"
                        ) from None
                    if not math.isfinite(v):
                        raise DataError(f"{path} line {line}: feature column {header[i]!r} is {field!r}")
                    values.append(v)
                rows.append(values)
                labels.append(label)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from exc
    if not rows:
        raise DataError(f"{path} has a header but no data rows")
    classes = _sorted_labels(set(labels))
    index = {c: k for k, c in enumerate(classes)}
    data = Dataset(
        name=name or column_name(path.stem) or "model",
        features=features,
        classes=classes,
        x=np.asarray(rows, dtype=np.float64),
        y=np.asarray([index[v] for v in labels], dtype=np.int64),
        source=str(path),
    )
    check_class_sizes(data)
    return data


def _sorted_labels(labels: set[str]) -> tuple[str, ...]:
    """Integer labels in numeric order (2 before 10), anything else alphabetically."""
    try:
        return tuple(sorted(labels, key=lambda v: int(v)))
    except ValueError:
        return tuple(sorted(labels))


def check_class_sizes(data: Dataset) -> None:
    if len(data.classes) < 2:
        raise DataError(f"{data.source}: need at least 2 classes, found {len(data.classes)}")
    counts = np.bincount(data.y, minlength=len(data.classes))
    small = [f"{c!r} ({n})" for c, n in zip(data.classes, counts) if n < MIN_ROWS_PER_CLASS]
    if small:
        raise DataError(
            f"{data.source}: class(es) {', '.join(small)} have fewer than "
            f"{MIN_ROWS_PER_CLASS} rows; a stratified 80/20 split needs at least "
            f"{MIN_ROWS_PER_CLASS} per class"
        )
