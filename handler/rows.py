"""Request bodies in, a matrix of feature rows and per-row errors out.

This is the only place that decides what a good row is. The online handler, the batch scorer
and every other engine call it, so they cannot disagree. Rows are numbered from 1 in messages
("row 1" is the first data row of the body, after any header), offset by `first_row` when a
caller scores a slice of a larger file.

Two kinds of failure:
- a row that is wrong gets its own message and the other rows are still predicted;
- a body that cannot be read at all raises BadRequest (the server answers HTTP 400).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

JSON_TYPES = ("application/json",)
CSV_TYPES = ("text/csv", "application/csv", "text/plain")
# The batch scorer sends a file in chunks; this request header numbers a chunk's first row so
# that error messages name the row of the file, not of the chunk.
FIRST_ROW_HEADER = "X-Tabserve-First-Row"


class BadRequest(ValueError):
    """The body as a whole cannot be read; answered with HTTP 400."""


@dataclass
class Rows:
    """Decoded rows: `values[i]` holds row i's features in schema order, unless `errors[i]`."""

    values: np.ndarray  # float64, shape (n, n_features); zeros where errors[i] is set
    errors: list[str | None]

    def __len__(self) -> int:
        return len(self.errors)

    @property
    def ok(self) -> np.ndarray:
        """Boolean mask of the rows that can be predicted."""
        return np.fromiter((e is None for e in self.errors), dtype=bool, count=len(self.errors))


def expected_forms(features: Sequence[str]) -> str:
    names = ", ".join(features)
    return (
        f"expected JSON (one row of {len(features)} numbers, an object keyed by feature names, "
        f'a list of rows, or {{"instances": [...]}}) or CSV rows of {len(features)} numbers, '
        f"with or without a header line; features: {names}"
    )


def decode(body: Any, content_type: str | None, features: Sequence[str], first_row: int = 1) -> Rows:
    """Decode one request body of any accepted form into Rows.

    `body` is what TorchServe hands over: bytes, a str (text/* bodies), or an already parsed
    JSON value (application/json bodies).
    """
    ctype = (content_type or "").split(";")[0].strip().lower()
    if isinstance(body, (bytes, bytearray)):
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequest(f"body is not UTF-8 text; {expected_forms(features)}") from exc
    if isinstance(body, str):
        text = body.lstrip("\ufeff")
        if not text.strip():
            raise BadRequest(f"empty body; {expected_forms(features)}")
        if ctype in JSON_TYPES or (ctype not in CSV_TYPES and text.lstrip()[:1] in ("[", "{")):
            try:
                body = json.loads(text)
            except json.JSONDecodeError as exc:
                raise BadRequest(f"body is not valid JSON ({exc}); {expected_forms(features)}") from exc
        else:
            return from_csv(text, features, first_row=first_row)
    return from_json(body, features, first_row=first_row)


# --- JSON -------------------------------------------------------------------------------------


def _is_number(v: Any) -> bool:
    return (type(v) is float or type(v) is int) and v is not True and v is not False


def from_json(obj: Any, features: Sequence[str], first_row: int = 1) -> Rows:
    """Rows from a parsed JSON value: a row, a list of rows, or {"instances": [...]}."""
    if isinstance(obj, dict):
        if "instances" in obj:
            rows = obj["instances"]
            if not isinstance(rows, list) or not rows:
                raise BadRequest(f'"instances" must be a non-empty list of rows; {expected_forms(features)}')
        elif any(f in obj for f in features):
            rows = [obj]
        else:
            raise BadRequest(f"object has none of the model's features; {expected_forms(features)}")
    elif isinstance(obj, list):
        if not obj:
            raise BadRequest(f"empty list; {expected_forms(features)}")
        # A flat list of scalars is one row; anything else is a list of rows.
        rows = [obj] if not any(isinstance(v, (list, dict)) for v in obj) else obj
    else:
        raise BadRequest(f"got a JSON {type(obj).__name__}; {expected_forms(features)}")

    n = len(features)
    values = np.zeros((len(rows), n), dtype=np.float64)
    errors: list[str | None] = [None] * len(rows)
    for i, row in enumerate(rows):
        if isinstance(row, list):
            if len(row) != n:
                errors[i] = f"row {first_row + i}: expected {n} features, got {len(row)}"
                continue
            pairs = zip(features, row)
        elif isinstance(row, dict):
            missing = [f for f in features if f not in row]
            if missing:
                errors[i] = f"row {first_row + i}: missing feature {', '.join(map(repr, missing))}"
                continue
            pairs = ((f, row[f]) for f in features)
        else:
            errors[i] = (
                f"row {first_row + i}: expected a list of {n} numbers or an object keyed by "
                f"feature names, got {json.dumps(row)}"
            )
            continue
        for j, (name, v) in enumerate(pairs):
            if not _is_number(v):
                errors[i] = f"row {first_row + i}: feature {name!r} is not a number: {json.dumps(v)}"
                break
            if not math.isfinite(v):
                errors[i] = f"row {first_row + i}: feature {name!r} is not finite: {v}"
                break
            values[i, j] = v
        if errors[i] is not None:
            values[i] = 0.0
    return Rows(values, errors)


# --- CSV --------------------------------------------------------------------------------------


def _is_header(record: list[str], features: Sequence[str]) -> bool:
    names = {f.strip() for f in record}
    return any(f in names for f in features)


def from_csv(text: str, features: Sequence[str], first_row: int = 1, header: bool | None = None) -> Rows:
    """Rows from CSV text. With a header line (detected when it names any feature, or forced
    with `header=True`), columns are matched by name in any order and extra columns ignored;
    without one, each line must hold exactly the features in schema order.

    Every record gives one row, blank lines included (they get an error), so a caller that
    sends N records gets N results back.
    """
    if '"' not in text and "\r" not in text:
        fast = _from_plain_csv(text, features, header)
        if fast is not None:
            return fast
    records = list(csv.reader(io.StringIO(text)))
    if header is None:
        header = bool(records) and _is_header(records[0], features)
    if header:
        if not records:
            raise BadRequest(f"missing CSV header; {expected_forms(features)}")
        names = [f.strip() for f in records[0]]
        missing = [f for f in features if f not in names]
        if missing:
            raise BadRequest(
                f"CSV header lacks feature column(s) {', '.join(map(repr, missing))}; "
                f"header was {','.join(records[0])!r}"
            )
        index = [names.index(f) for f in features]
        width = len(names)
        # A header and no rows is a valid request for zero predictions (the batch scorer
        # sends one to check a file's columns before it sends any data).
        records = records[1:]
    else:
        index = list(range(len(features)))
        width = len(features)
    return from_records(records, features, index, width, first_row)


def _from_plain_csv(text: str, features: Sequence[str], header: bool | None) -> Rows | None:
    """The common case in C: no quotes, every line with the same number of fields, every
    feature a finite number. Returns None when any of that is not so, and the careful
    path below names what is wrong with which row."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    if not lines:
        return None
    first = lines[0].split(",")
    if header is None:
        header = _is_header(first, features)
    if header:
        names = [f.strip() for f in first]
        if any(f not in names for f in features):
            return None
        index = [names.index(f) for f in features]
        lines = lines[1:]
    else:
        index = list(range(len(features)))
    width = len(first) if header else len(features)
    commas = width - 1
    if not lines:
        return Rows(np.zeros((0, len(features))), [])
    if any(line.count(",") != commas for line in lines):
        return None
    try:
        values = np.loadtxt(lines, delimiter=",", usecols=index, dtype=np.float64, ndmin=2, comments=None)
    except ValueError:
        return None
    if len(values) != len(lines) or not np.isfinite(values).all():
        return None
    return Rows(values, [None] * len(lines))


def from_records(
    records: Sequence[Sequence[str]],
    features: Sequence[str],
    index: Sequence[int],
    width: int,
    first_row: int = 1,
) -> Rows:
    """Validate parsed CSV records: `index[j]` is the field holding feature j, `width` the
    number of fields every record must have.

    Vectorised for the common case (every field parses): one numpy conversion for the whole
    batch; only when that fails does it walk the rows to name the bad ones.
    """
    n = len(records)
    values = np.zeros((n, len(features)), dtype=np.float64)
    errors: list[str | None] = [None] * n
    good = []
    for i, rec in enumerate(records):
        if len(rec) == width:
            good.append(i)
        elif len(rec) == 0 or (len(rec) == 1 and not rec[0].strip()):
            errors[i] = f"row {first_row + i}: empty line"
        else:
            errors[i] = f"row {first_row + i}: expected {width} fields, got {len(rec)}"
    if not good:
        return Rows(values, errors)
    flat = [records[i][k] for i in good for k in index]
    try:
        block = np.array(flat, dtype=np.float64).reshape(len(good), len(index))
    except ValueError:
        block = np.zeros((len(good), len(index)), dtype=np.float64)
        for r, i in enumerate(good):
            for j, k in enumerate(index):
                field = records[i][k]
                try:
                    block[r, j] = float(field)
                except ValueError:
                    what = "is empty" if not field.strip() else f"is not a number: {field!r}"
                    errors[i] = f"row {first_row + i}: feature {features[j]!r} {what}"
                    block[r] = 0.0
                    break
    finite = np.isfinite(block)
    if not finite.all():
        for r in np.flatnonzero(~finite.all(axis=1)):
            i = good[r]
            if errors[i] is None:
                j = int(np.flatnonzero(~finite[r])[0])
                errors[i] = (
                    f"row {first_row + i}: feature {features[j]!r} is not finite: {records[i][index[j]]!r}"
                )
            block[r] = 0.0
    values[good] = block
    return Rows(values, errors)
