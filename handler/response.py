"""Predictions out: the JSON answer of the online API and the CSV columns of the batch job.

`classes` names a classifier's classes; no classes means a regression model, whose `probs`
hold one predicted value per row."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
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


def to_batch(probs: np.ndarray, errors: Sequence[str | None], classes: Sequence[str]) -> bytes:
    """The batch answer (BATCH_TYPE): see its description above."""
    import io

    values = np.array(probs, dtype=np.float64).reshape(len(errors), len(classes) or 1)
    failed = [] if errors.count(None) == len(errors) else [i for i, e in enumerate(errors) if e is not None]
    if failed:
        values[failed] = np.nan
    out = io.BytesIO()
    np.lib.format.write_array(out, values, allow_pickle=False)
    trailer = {"columns": output_columns(classes), "errors": [[i, errors[i]] for i in failed]}
    out.write(json.dumps(trailer, separators=(",", ":")).encode("utf-8"))
    return out.getvalue()


def _quote(field: str) -> str:
    if any(c in field for c in ',"\n\r'):
        return '"' + field.replace('"', '""') + '"'
    return field


def error_body(status: int, message: str) -> str:
    return json.dumps({"code": status, "type": _ERROR_TYPES.get(status, "Error"), "message": message})


_ERROR_TYPES = {400: "BadRequest", 413: "PayloadTooLarge", 500: "InternalServerError"}


def field_count(line: str) -> int:
    """Fields in one CSV record."""
    if '"' not in line:
        return line.count(",") + 1
    import csv

    return len(next(csv.reader([line]), []))


def merge_rows(lines: Sequence[str], results: Sequence[str], width: int) -> tuple[str, int]:
    """The output block of a batch job: each input record's own text, then its result line
    (label, p_<class>..., error). A record with the wrong number of fields keeps its whole
    text, quoted, in the first column, so every row has the header's columns. Returns the
    block and its number of failed rows."""
    out = []
    errors = 0
    pad = "," * (width - 1)
    for line, result in zip(lines, results, strict=True):
        # A failed row's result ends with its error; a scored row's with the empty error.
        if not result.endswith(","):
            errors += 1
            if field_count(line) != width:
                line = _quote(line) + pad
        out.append(line + "," + result + "\n")
    return "".join(out), errors


def refused_rows(first_row: int, count: int, message: str, n_classes: int) -> list[str]:
    """Result lines for records that could not be scored: every row gets the reason, so no
    row is lost and each says why it has no prediction."""
    blank = "," * (n_classes + 1)
    return [blank + _quote(f"row {first_row + i}: chunk refused: {message}") for i in range(count)]


def result_lines(answer: str, count: int) -> list[str]:
    """The `count` result lines of a text/csv answer (its header line dropped); ValueError
    when the answer has another number of rows, so no row is ever paired with another's."""
    lines = answer.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != count + 1:
        raise ValueError(f"the handler answered {len(lines) - 1} rows for {count}")
    return lines[1:]


class Unsplittable(Exception):
    """Raised by a `score` callable of contained_results for a failure that splitting a chunk
    cannot help (a rejected token, a server that no longer answers): it ends the job."""


def contained_results(
    score: Callable[[Sequence[str], int, int], list[str]],
    lines: Sequence[str],
    first_row: int,
    n_classes: int,
    depth: int = 0,
) -> list[str]:
    """The batch job's containment boundary for one chunk: `score(lines, first_row, depth)`
    returns one result line per record or raises; a chunk it fails on, by any exception
    but Unsplittable, is split in halves, recursively, so that only the records that cause the
    failure get its reason as their error and every other record is scored. At most about
    2 * log2(len(lines)) calls per bad record. `depth` tells `score` it is scoring a part of a
    chunk that failed (it may then try fewer times)."""
    try:
        return score(lines, first_row, depth)
    except Unsplittable:
        raise
    except Exception as exc:
        reason = str(exc) or type(exc).__name__
    if len(lines) == 1:
        return refused_rows(first_row, 1, reason, n_classes)
    mid = len(lines) // 2
    head = contained_results(score, lines[:mid], first_row, n_classes, depth + 1)
    return head + contained_results(score, lines[mid:], first_row + mid, n_classes, depth + 1)
