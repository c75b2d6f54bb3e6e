"""Predictions out: the JSON answer of the online API, its CSV form, and the binary batch answer
that the batch engines ask for (to_batch).

`classes` names a classifier's classes; no classes means a regression model, whose `probs`
hold one predicted value per row."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

# The batch answer (Accept: BATCH_TYPE), so that no float is formatted or parsed per row:
# an .npy array (numpy's own format, read with allow_pickle=False) of float64, shape (n, k):
# each row's probabilities per class (regression: k = 1, the prediction), NaN where the row
# failed; then, right after it, a UTF-8 JSON object {"columns": [the output columns],
# "errors": [[position of the row in the body (from 0), message], ...]}.
BATCH_TYPE = "application/x-tabserve-npy"

# Response header: {"column": count} of the categories in a request that training never saw
# (set by entry.py, added up by the batch engines).
UNSEEN_HEADER = "X-Tabserve-Unseen"


def unseen_counts(value: str | None) -> dict[str, int]:
    """An UNSEEN_HEADER value as {column: count}; {} when it is absent or not such an object:
    a count is a report, never a reason to fail a chunk."""
    if not value:
        return {}
    try:
        counts = json.loads(value)
    except ValueError:
        return {}
    if not isinstance(counts, dict):
        return {}
    return {str(k): v for k, v in counts.items() if type(v) is int and v > 0}


def output_columns(classes: Sequence[str]) -> list[str]:
    """The columns every engine appends to the input's: label, p_<class>..., error, or for
    regression prediction, error."""
    if not classes:
        return ["prediction", "error"]
    return ["label", *(f"p_{c}" for c in classes), "error"]


def predictions(
    probs: np.ndarray, errors: Sequence[str | None], classes: Sequence[str]
) -> list[dict[str, Any]]:
    """One entry per row, in order: {"label", "probabilities"} (or {"prediction"} for
    regression) or {"error"}."""
    if not classes:
        return [
            {"error": err} if err is not None else {"prediction": p[0]}
            for p, err in zip(probs.tolist(), errors)
        ]
    labels = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=np.int64)
    out: list[dict[str, Any]] = []
    for p, k, err in zip(probs.tolist(), labels.tolist(), errors):
        if err is not None:
            out.append({"error": err})
        else:
            out.append({"label": classes[k], "probabilities": dict(zip(classes, p))})
    return out


def to_json(
    probs: np.ndarray, errors: Sequence[str | None], classes: Sequence[str], model: dict[str, str]
) -> str:
    return json.dumps(
        {"predictions": predictions(probs, errors, classes), "model": model},
        separators=(",", ":"),
        allow_nan=False,  # strict JSON: the predictor never lets NaN or infinity through
    )


def to_csv(
    probs: np.ndarray, errors: Sequence[str | None], classes: Sequence[str], header: bool = True
) -> str:
    """label, p_<class>..., error per row; empty label and probabilities where a row failed.
    For regression: prediction, error."""
    lines = [",".join(map(_quote, output_columns(classes)))] if header else []
    if len(probs) and not classes:
        for p, err in zip(probs[:, 0].tolist(), errors):
            lines.append(f"{p!r}," if err is None else f",{_quote(err)}")
    elif len(probs):
        quoted = [_quote(c) for c in classes]  # class labels are any text but a line break
        labels = [quoted[k] for k in probs.argmax(axis=1).tolist()]
        # repr() of the whole nested list formats every float in C, the same shortest
        # round-trip text as repr(float): one call instead of one per value.
        text = repr(probs.tolist())[2:-2].replace(", ", ",")
        blank = "," * (len(classes) + 1)  # empty label and probabilities
        for label, p, err in zip(labels, text.split("],["), errors):
            lines.append(f"{label},{p}," if err is None else f"{blank}{_quote(err)}")
    return "\n".join(lines) + "\n"


def to_batch(
    probs: np.ndarray,
    errors: Sequence[str | None],
    classes: Sequence[str],
    extra: dict[str, Any] | None = None,
) -> bytes:
    """The batch answer (BATCH_TYPE): see its description above. `extra` adds keys to the
    trailer (the profile and baseline of handler/profile.py, when the request asks)."""
    import io

    values = np.array(probs, dtype=np.float64).reshape(len(errors), len(classes) or 1)
    failed = [] if errors.count(None) == len(errors) else [i for i, e in enumerate(errors) if e is not None]
    if failed:
        values[failed] = np.nan
    out = io.BytesIO()
    np.lib.format.write_array(out, values, allow_pickle=False)
    trailer = {
        "columns": output_columns(classes),
        "errors": [[i, errors[i]] for i in failed],
        **(extra or {}),
    }
    out.write(json.dumps(trailer, separators=(",", ":")).encode("utf-8"))
    return out.getvalue()


def _quote(field: str) -> str:
    if any(c in field for c in ',"\n\r'):
        return '"' + field.replace('"', '""') + '"'
    return field


def error_body(status: int, message: str) -> str:
    return json.dumps({"code": status, "type": _ERROR_TYPES.get(status, "Error"), "message": message})


_ERROR_TYPES = {400: "BadRequest", 413: "PayloadTooLarge", 500: "InternalServerError"}
