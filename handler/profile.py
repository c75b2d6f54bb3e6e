"""What a batch of rows looked like, counted against the training data: the numbers a drift
report needs, small, plain JSON, and added up across batches.

The baseline is what `tabserve train` stored in schema.json (per numeric feature the decile
bins of its training values, per categorical feature its counts, per feature its missing
values, and the model's predictions on its training split), laid out here as bins. The
handler counts the rows it scores into the same bins (Profiler.profile), so a batch job's
report is the sum of its answers' profiles, whichever engine asked for them: the handler
decides what a value is, as it decides what a bad row is.

A profile (one per answer; `merge` adds two):
    {"rows": rows scored,
     "features": {name: numeric {"present", "missing", "below", "above", "bins", "mean", "m2",
                                 "min", "max"}
                        or categorical {"present", "missing", "unseen", "slots"}},
     "predictions": {"counts"} (per class) or {"present", "below", "above", "bins", "mean",
                    "m2", "min", "max"} (regression)}
Only the rows that were predicted are counted (a row with an error is counted by its error).
`mean` and `m2` (the sum of squared differences from the mean) of the present values add up
by Chan, Golub and LeVeque's formula, exact enough whatever the values' magnitude. `bins` holds
the values per baseline bin
(bin k: edges[k-1] <= v < edges[k]); `slots` the values per category slot, OTHER first (rare
and unseen categories; see columns.py). `below`/`above`: under the training minimum, over
its maximum.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .columns import NUMERIC, OTHER
from .schema import REGRESSION, Schema

# Request header of a batch answer (response.BATCH_TYPE): "rows" puts the answer's profile in
# its trailer, "baseline" the baseline too (the batch engines ask for it once, with the header
# line). Without it the handler counts nothing beyond the online counters.
PROFILE_HEADER = "X-Tabserve-Profile"
PROFILE_VERSION = 2  # 2: mean and m2 (1: sums)
# Unseen categories are listed with their counts up to this many distinct texts per feature
# (each cut to CATEGORY_CHARS); past it the list is null ("too many to list"), in every
# answer and in every sum of them alike, so the list never depends on how rows were batched.
MAX_UNSEEN_VALUES = 100
CATEGORY_CHARS = 40


class Profiler:
    """A schema's baseline, and the counting of rows into it."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.encoder = schema.encoder()
        self.regression = schema.task == REGRESSION
        self.lacks: list[str] = []
        self._numeric: list[tuple[int, str, int, np.ndarray | None, float, float]] = []
        self._categorical: list[tuple[int, str, int, int]] = []
        self.features: dict[str, dict[str, Any]] = {}
        no_bins = []
        for j, c in enumerate(self.encoder.columns):
            stats = schema.feature_stats.get(c.name) or {}
            o = self.encoder.offsets[j]
            if c.role == NUMERIC:
                edges = _edges(stats.get("bins"))
                if edges is None:
                    no_bins.append(c.name)
                lo, hi = _number(stats.get("min"), -math.inf), _number(stats.get("max"), math.inf)
                self._numeric.append((j, c.name, o, edges, lo, hi))
                train: dict[str, Any] = {
                    k: stats[k] for k in ("min", "max", "mean", "std") if _is_number(stats.get(k))
                }
                if edges is not None:
                    train["bins"] = [int(n) for n in stats["bins"]["counts"]]
                train["missing"] = _count(stats.get("missing"))
                self.features[c.name] = {
                    "role": NUMERIC,
                    "edges": None if edges is None else edges.tolist(),
                    "train": train,
                }
            else:
                width = 1 + len(c.categories)
                self._categorical.append((j, c.name, o, width))
                slots = [0] * width
                counts = stats.get("counts")
                if isinstance(counts, dict):
                    for text, n in counts.items():
                        slots[self.encoder.category_slot(j, str(text))] += _count(n)
                else:
                    no_bins.append(c.name)
                known = isinstance(counts, dict)
                singles = sum(1 for n in counts.values() if _count(n) == 1) if known else 0
                self.features[c.name] = {
                    "role": "categorical",
                    "slots": [OTHER, *c.categories],
                    "train": {
                        "slots": slots if known else None,
                        "missing": _count(stats.get("missing")),
                        # categories seen once in training: how often a new one turns up in
                        # data like the training data (Good and Turing's estimate)
                        "singletons": singles,
                    },
                }
        if no_bins:
            self.lacks.append(
                "training distributions of "
                + ", ".join(no_bins)
                + " (schema.json from before tabserve stored them: train again for drift scores)"
            )
        pred = schema.prediction_stats or {}
        if self.regression:
            edges = _edges(pred.get("bins"))
            self._pred = (edges, _number(pred.get("min"), -math.inf), _number(pred.get("max"), math.inf))
            train = {k: pred[k] for k in ("rows", "min", "max", "mean", "std") if _is_number(pred.get(k))}
            if edges is not None:
                train["bins"] = [int(n) for n in pred["bins"]["counts"]]
            self.predictions: dict[str, Any] = {
                "kind": "values",
                "edges": None if edges is None else edges.tolist(),
                "train": train,
            }
        else:
            counts = pred.get("counts")
            train_counts = (
                [_count(counts.get(c)) for c in schema.classes] if isinstance(counts, dict) else None
            )
            self.predictions = {
                "kind": "classes",
                "classes": list(schema.classes),
                "train": {"counts": train_counts},
            }
            edges = None
        if not pred or (self.regression and edges is None):
            self.lacks.append("the training predictions (schema.json from before tabserve stored them)")

    def baseline(self) -> dict[str, Any]:
        """The baseline as JSON: what a report compares a job's profile with, and `empty`, the
        profile of no rows in this handler's own layout, which a job's counts start from."""
        width = self.encoder.width
        outputs = 1 if self.regression else len(self.schema.classes)
        return {
            "version": PROFILE_VERSION,
            "model": self.schema.name,
            "weights_sha256": self.schema.weights_sha256,
            "empty": self.profile(np.zeros((0, width)), [], np.zeros((0, outputs))),
            "task": self.schema.task,
            "missing": self.schema.missing,
            "features": self.features,
            "predictions": self.predictions,
            "lacks": list(self.lacks),
        }

    def profile(
        self,
        values: np.ndarray,
        errors: list[str | None],
        probs: np.ndarray,
        missing: np.ndarray | None = None,
        new: np.ndarray | None = None,
        new_values: dict[int, list[tuple[int, str]]] | None = None,
    ) -> dict[str, Any]:
        """The profile of the rows predicted (errors[i] is None) of one answer: `values` the
        encoded rows (unscaled), `probs` the answer's probabilities or predictions, `missing`,
        `new` and `new_values` what the Rows say of missing values and unseen categories."""
        n = len(errors)
        ok = (
            np.ones(n, dtype=bool)
            if errors.count(None) == n
            else np.array([e is None for e in errors], dtype=bool)
        )
        features: dict[str, Any] = {}
        every = bool(ok.all())
        for j, name, o, edges, lo, hi in self._numeric:
            if missing is not None:
                gone = int((ok & missing[:, j]).sum())
                x = values[ok & ~missing[:, j], o]
            else:  # the common case: a column of the rows as they are, when all were predicted
                gone, x = 0, values[:, o] if every else values[ok, o]
            features[name] = _numbers(x, edges, lo, hi, gone)
        for j, name, o, width in self._categorical:
            if missing is not None:
                gone = ok & missing[:, j]
                present = ok & ~missing[:, j]
            else:
                gone, present = None, ok
            slots = values[present, o : o + width].sum(axis=0)
            unseen = int((present & new[:, j]).sum()) if new is not None else 0
            features[name] = {
                "present": int(present.sum()),
                "missing": 0 if gone is None else int(gone.sum()),
                "unseen": unseen,
                "slots": [int(round(v)) for v in slots.tolist()],
                "values": _texts((new_values or {}).get(j, ()), ok),
            }
        scored = probs[ok]
        if self.regression:
            edges, lo, hi = self._pred
            predictions = _numbers(scored[:, 0] if len(scored) else np.zeros(0), edges, lo, hi, None)
        else:
            k = len(self.schema.classes)
            labels = scored.argmax(axis=1) if len(scored) else np.zeros(0, dtype=np.int64)
            predictions = {"counts": np.bincount(labels, minlength=k).tolist()}
        return {
            "version": PROFILE_VERSION,
            "rows": int(ok.sum()),
            "features": features,
            "predictions": predictions,
        }

    def counts(
        self, values: np.ndarray, errors: list[str | None], missing: np.ndarray | None, new: np.ndarray | None
    ) -> dict[str, tuple[int, int, int]]:
        """Per feature (missing, out of the training range, unseen) in the rows predicted: the
        online counters. Only features with a count are named."""
        n = len(errors)
        ok = (
            np.ones(n, dtype=bool)
            if errors.count(None) == n
            else np.array([e is None for e in errors], dtype=bool)
        )
        out: dict[str, tuple[int, int, int]] = {}
        for j, name, o, _edges, lo, hi in self._numeric:
            present = ok & ~missing[:, j] if missing is not None else ok
            x = values[present, o]
            outside = int(((x < lo) | (x > hi)).sum())
            gone = int((ok & missing[:, j]).sum()) if missing is not None else 0
            if outside or gone:
                out[name] = (gone, outside, 0)
        if missing is None and new is None:
            return out
        for j, name, _o, _width in self._categorical:
            gone = int((ok & missing[:, j]).sum()) if missing is not None else 0
            unseen = int((ok & new[:, j]).sum()) if new is not None else 0
            if gone or unseen:
                out[name] = (gone, 0, unseen)
        return out


def _texts(found: Any, ok: np.ndarray) -> dict[str, int] | None:
    """{text: count} of the unseen categories of the rows predicted; None past MAX_UNSEEN_VALUES."""
    out: dict[str, int] = {}
    for r, text in found:
        if ok[r]:
            key = text.strip()[:CATEGORY_CHARS]
            out[key] = out.get(key, 0) + 1
            if len(out) > MAX_UNSEEN_VALUES:
                return None
    return dict(sorted(out.items()))


def _numbers(
    x: np.ndarray, edges: np.ndarray | None, lo: float, hi: float, missing: int | None
) -> dict[str, Any]:
    x = np.asarray(x, dtype=np.float64)
    out: dict[str, Any] = {"present": int(len(x))}
    if missing is not None:
        out["missing"] = missing
    mean = float(x.mean()) if len(x) else 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        m2 = float(((x - mean) ** 2).sum()) if len(x) else 0.0
    out.update(
        below=int((x < lo).sum()),
        above=int((x > hi).sum()),
        mean=mean,
        m2=m2,
        min=float(x.min()) if len(x) else None,
        max=float(x.max()) if len(x) else None,
    )
    if edges is not None:
        out["bins"] = np.bincount(np.searchsorted(edges, x, side="right"), minlength=len(edges) + 1).tolist()
    return out


def _edges(bins: Any) -> np.ndarray | None:
    """The interior edges of stored bins, when they and their counts are well formed."""
    if not isinstance(bins, dict):
        return None
    edges, counts = bins.get("edges"), bins.get("counts")
    if not isinstance(edges, list) or not isinstance(counts, list) or len(counts) != len(edges) + 1:
        return None
    if not all(_is_number(e) for e in edges) or not all(type(c) is int and c >= 0 for c in counts):
        return None
    e = np.asarray(edges, dtype=np.float64)
    return e if np.all(np.isfinite(e)) and np.all(np.diff(e) > 0) else None


def _is_number(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def _number(v: Any, default: float) -> float:
    return float(v) if _is_number(v) else default


def _count(v: Any) -> int:
    return v if type(v) is int and v >= 0 else 0
