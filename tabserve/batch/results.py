"""A batch's results as arrays, and the one function that turns a handler's answer into them.

Every engine ends here: the TorchServe engine with an HTTP answer, the local engine and the
Spark job with the archive's handler called in-process (`score_body`). The handler answers a
batch client in its binary form (handler.response.BATCH_TYPE: an .npy array of the numbers,
then a JSON trailer with the columns and the sparse row errors), so no float is formatted or
parsed per row on the way; an archive whose handler predates it answers text/csv, read here
the old way.

Also what the writers and the Spark tasks share: a batch's CSV text for the handler
(table_lines), a CSV input's records in the output (csv_prefix, csv_columns), the output's text
(render_lines, render_rows) and typed columns (output_fields, output_arrays), and the loader of
an archive's handler (load_handler_module).

Runs where tabserve may not be installed (Spark executors get this file beside spark_tasks.py,
as one package): it imports numpy and the standard library only (pyarrow inside the functions
that need it).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

BATCH_TYPE = "application/x-tabserve-npy"  # handler.response.BATCH_TYPE
UNSEEN_HEADER = "x-tabserve-unseen"  # handler.response.UNSEEN_HEADER, in lower case
PROFILE_HEADER = "X-Tabserve-Profile"  # handler.profile.PROFILE_HEADER


class AnswerError(ValueError):
    """An answer that is not what a tabserve handler sends for this batch."""


@dataclass
class Results:
    """One row of results per record of a batch, in order.

    `values` (n, k): probabilities per class, or the prediction (k = 1, regression); NaN where
    the row failed. `labels` (n,): the class index, -1 where the row failed; None for a
    regression model. `errors`: {position in the batch: message}. `unseen`: {column: count}
    of categories training never saw, in the rows scored. `profile`: the handler's counts of
    the rows scored for the drift report (handler/profile.py), None when it sent none."""

    values: np.ndarray
    labels: np.ndarray | None
    errors: dict[int, str] = field(default_factory=dict)
    unseen: dict[str, int] = field(default_factory=dict)
    profile: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.values)

    def failed(self) -> np.ndarray:
        """A mask of the rows that failed (those with an error)."""
        mask = np.zeros(len(self), dtype=bool)
        if self.errors:
            mask[list(self.errors)] = True
        return mask

    @classmethod
    def refused(cls, n: int, first_row: int, message: str, width: int, classifier: bool) -> Results:
        """Every row of a part that could not be scored gets the reason as its error."""
        values = np.full((n, width), np.nan)
        labels = np.full(n, -1, dtype=np.int32) if classifier else None
        return cls(values, labels, {i: f"row {first_row + i}: {message}" for i in range(n)})

    @classmethod
    def concat(cls, parts: Sequence[Results]) -> Results:
        """The results of consecutive parts of one batch, as one."""
        if len(parts) == 1:
            return parts[0]
        values = np.concatenate([p.values for p in parts])
        labels = None if parts[0].labels is None else np.concatenate([p.labels for p in parts])
        errors: dict[int, str] = {}
        unseen: dict[str, int] = {}
        profiles = []
        start = 0
        for p in parts:
            errors.update({start + i: e for i, e in p.errors.items()})
            add_counts(unseen, p.unseen)
            profiles.append(p.profile)
            start += len(p)
        return cls(values, labels, errors, unseen, merge_parts(profiles, parts))


def merge_parts(profiles: Sequence[dict[str, Any] | None], parts: Sequence[Results]) -> dict[str, Any] | None:
    """The profile of consecutive parts: the sum of theirs; None when a part that scored a
    row has none (its rows would be missing from the counts)."""
    total = None
    for profile, part in zip(profiles, parts):
        if profile is None:
            if len(part.errors) < len(part):
                return None
            continue
        try:
            total = profile if total is None else merge_profile(total, profile)
        except ValueError:
            return None
    return total


# --- the drift report's counts (handler/profile.py makes them; here they are added up) --------


def merge_profile(total: Any, more: Any, key: str = "") -> Any:
    """`total` + `more`, two profiles (or parts of them) of one layout: counts add (lists
    element by element), `min` and `max` keep the extreme, `mean` and `m2` combine (Chan,
    Golub and LeVeque), `version` must be equal, `values` (unseen categories' texts) add up
    to their limit. Raises ValueError when the layouts differ or a value is not what a
    handler sends (a count that is negative or over 2**53, a min or max that is not a finite
    number): a profile that is not what the baseline describes is not counted."""
    if key == "values":
        return merge_texts(total, more)
    if isinstance(total, dict) and isinstance(more, dict):
        if total.keys() != more.keys():
            raise ValueError(f"profile keys differ: {sorted(total)[:5]} and {sorted(more)[:5]}")
        out = {k: merge_profile(total[k], more[k], k) for k in total if k not in ("mean", "m2")}
        if "mean" in total:
            out.update(_moments(total, more))
        return {k: out[k] for k in total}
    if isinstance(total, list) and isinstance(more, list):
        if len(total) != len(more):
            raise ValueError(f"profile {key!r} has {len(more)} entries, not {len(total)}")
        return [merge_profile(a, b, key) for a, b in zip(total, more)]
    if key in ("min", "max"):
        for v in (total, more):
            if v is not None and not (type(v) is float and math.isfinite(v)):
                raise ValueError(f"profile {key!r} is not a finite number")
        if total is None or more is None:
            return more if total is None else total
        return min(total, more) if key == "min" else max(total, more)
    if key == "version":
        if total != more:
            raise ValueError(f"profile version {more!r}, not {total!r}")
        return total
    if type(total) is int and type(more) is int and 0 <= more <= MAX_COUNT:
        return total + more
    raise ValueError(f"profile {key!r}: {type(more).__name__} where {type(total).__name__} was expected")


MAX_COUNT = 2**53  # rows beyond any job's: a larger count is not a handler's


def _moments(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    """The mean and m2 of two groups of present values, from each group's."""
    for side in (a, b):
        if not (type(side.get("mean")) is float and type(side.get("m2")) is float):
            raise ValueError("profile 'mean' and 'm2' are not numbers")
        if type(side.get("present")) is not int:
            raise ValueError("profile 'present' is not a count")
    na, nb = a["present"], b["present"]
    if nb == 0:
        return {"mean": a["mean"], "m2": a["m2"]}
    if na == 0:
        return {"mean": b["mean"], "m2": b["m2"]}
    n = na + nb
    delta = b["mean"] - a["mean"]
    return {"mean": a["mean"] + delta * nb / n, "m2": a["m2"] + b["m2"] + delta * delta * na * nb / n}


MAX_UNSEEN_VALUES = 100  # handler.profile.MAX_UNSEEN_VALUES


def merge_texts(total: Any, more: Any) -> dict[str, int] | None:
    """Two {text: count} lists of unseen categories added; None (too many to list) when
    either is None or the sum has more than MAX_UNSEEN_VALUES texts."""
    for side in (total, more):
        if side is not None and not (
            isinstance(side, dict)
            and all(isinstance(k, str) and type(v) is int and 0 < v <= MAX_COUNT for k, v in side.items())
        ):
            raise ValueError("profile 'values' is not a list of texts with counts")
    if total is None or more is None:
        return None
    out = dict(total)
    for k, v in more.items():
        out[k] = out.get(k, 0) + v
    return dict(sorted(out.items())) if len(out) <= MAX_UNSEEN_VALUES else None


def start_profile(baseline: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a job's counts start from: the baseline's `empty` profile (the handler's own
    layout), checked as any answer's profile is; None when there is none to be had."""
    if not isinstance(baseline, dict) or not isinstance(baseline.get("empty"), dict):
        return None
    empty = baseline["empty"]
    try:
        return merge_profile(empty, empty)
    except (ValueError, TypeError, RecursionError):
        return None


# Error kinds kept per job (the report shows the most frequent); past this many the rest are
# counted together, so a job's counts stay small whatever the input holds.
MAX_ERROR_KINDS = 1000
OTHER_KINDS = "(other kinds)"


def error_kind(message: str, features: Sequence[str] = ()) -> str:
    """What kind of error a row's message is, without the row and the value:
    "row 7: feature 'x' is not a number: 'abc'" is "feature 'x' is not a number",
    "row 9: chunk refused: ..." is "chunk refused"."""
    text = message
    if text.startswith("row "):
        head, sep, rest = text.partition(": ")
        if sep and head[4:].replace(",", "").isdigit():
            text = rest
    for f in features:
        lead = f"feature {f!r} "
        if text.startswith(lead):
            return lead + text[len(lead) :].split(": ", 1)[0][:80]
    # "expected 6 fields, got 3 (a quoted field ...": one kind whatever the count
    kind = text.split(": ", 1)[0].split(" (", 1)[0]
    return _GOT.sub("", kind)[:80]


_GOT = re.compile(r", got \d[\d,]*$")


def count_kinds(total: dict[str, int], errors: Any, features: Sequence[str] = ()) -> dict[str, int]:
    """Add the kinds of `errors` (messages) into `total` (add_kind)."""
    for message in errors:
        add_kind(total, error_kind(message, features), 1)
    return total


def add_kind(total: dict[str, int], kind: str, n: int) -> None:
    """Add n rows of a kind into `total`: at most MAX_ERROR_KINDS kinds, the rest OTHER_KINDS."""
    if kind not in total and len(total) >= MAX_ERROR_KINDS:
        kind = OTHER_KINDS
    total[kind] = total.get(kind, 0) + n


def add_counts(total: dict[str, int], more: dict[str, int]) -> dict[str, int]:
    """Add `more` into `total` (in place); returns `total`."""
    for k, v in more.items():
        total[k] = total.get(k, 0) + v
    return total


def unseen_counts(value: str | None) -> dict[str, int]:
    """An UNSEEN_HEADER value as {column: count}; {} when absent or malformed: a count is a
    report, never a reason to fail a batch. (handler.response has the same function: this
    file runs on Spark executors on its own, where neither tabserve nor the handler can be
    imported by name.)"""
    if not value:
        return {}
    try:
        counts = json.loads(value)
    except ValueError:
        return {}
    if not isinstance(counts, dict):
        return {}
    return {str(k): v for k, v in counts.items() if type(v) is int and v > 0}


@dataclass
class BatchAnswer:
    """A batch answer, read: the numbers, the output columns, the row errors, and the drift
    report's counts and baseline when the request asked for them (PROFILE_HEADER)."""

    values: np.ndarray
    columns: list[str]
    errors: dict[int, str]
    profile: dict[str, Any] | None = None
    baseline: dict[str, Any] | None = None


def read_batch(data: bytes) -> BatchAnswer:
    """A batch answer (BATCH_TYPE); AnswerError when it is not one."""
    f = io.BytesIO(data)
    try:
        values = np.lib.format.read_array(f, allow_pickle=False)
        trailer = json.loads(f.read().decode("utf-8"))
        columns = [str(c) for c in trailer["columns"]]
        errors = {int(i): str(e) for i, e in trailer["errors"]}
    except Exception as exc:  # any failure to read it: the answer is not a batch answer
        raise AnswerError(f"the answer is not a batch answer: {type(exc).__name__}: {exc}") from exc
    if values.ndim != 2 or values.dtype != np.float64 or len(columns) < 2:
        raise AnswerError(f"the answer is not a batch answer: values {values.dtype} {values.shape}")
    # Counts for a report, never a reason to refuse the answer: what is not an object is none.
    profile, baseline = trailer.get("profile"), trailer.get("baseline")
    return BatchAnswer(
        values,
        columns,
        errors,
        profile if isinstance(profile, dict) else None,
        baseline if isinstance(baseline, dict) else None,
    )


def from_batch(data: bytes, n: int, unseen: dict[str, int] | None = None) -> Results:
    """The results of a batch answer for `n` records; AnswerError when it holds another
    number of rows (no row is ever paired with another's result). A classifier's label is
    the class of highest probability (the first of equals), as in the handler's answers."""
    answer = read_batch(data)
    values = answer.values
    classifier = answer.columns[0] == "label"
    if len(values) != n or values.shape[1] != (len(answer.columns) - 2 if classifier else 1):
        raise AnswerError(f"the handler answered {values.shape} values for {n} rows")
    if any(not 0 <= i < n for i in answer.errors):
        raise AnswerError("the handler's row errors do not match its rows")
    labels = None
    if classifier:
        labels = (
            np.argmax(np.nan_to_num(values, nan=-1.0), axis=1).astype(np.int32)
            if n
            else np.zeros(0, np.int32)
        )
        if answer.errors:
            labels[list(answer.errors)] = -1
    return Results(values, labels, answer.errors, dict(unseen or {}), answer.profile)


def from_csv_answer(
    text: str, n: int, columns: Sequence[str], unseen: dict[str, int] | None = None
) -> Results:
    """The results of a text/csv answer (an archive from before the batch answer): per-row
    Python, as such archives were always read."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != n + 1:
        raise AnswerError(f"the handler answered {len(lines) - 1} rows for {n}")
    classifier = columns[0] == "label"
    classes = [c[2:] for c in columns[1:-1]] if classifier else []
    width = len(classes) if classifier else 1
    values = np.full((n, width), np.nan)
    labels = np.full(n, -1, dtype=np.int32) if classifier else None
    errors: dict[int, str] = {}
    index = {c: k for k, c in enumerate(classes)}
    for i, rec in enumerate(csv.reader(lines[1:])):
        if len(rec) != len(columns):
            raise AnswerError(f"the handler's row {i + 1} has {len(rec)} fields for {len(columns)}")
        if rec[-1]:
            errors[i] = rec[-1]
            continue
        values[i] = [float(v) for v in rec[1 if classifier else 0 : -1]]
        if labels is not None:
            labels[i] = index[rec[0]]
    return Results(values, labels, errors, dict(unseen or {}))


def score_body(
    model: Any, body: bytes, n: int, first_row: int, profile: bool = False
) -> tuple[int, Results | str]:
    """The batch function of the in-process engines (local, Spark): one CSV body (the input's
    header line, then `n` records) through the archive's own handler, as TorchServe would call
    it, `profile` asking for the drift report's counts. Returns (200, Results) or (status, the
    handler's message) when it refused the body."""
    respond = getattr(model, "respond", None)
    if respond is None:  # an archive from before the batch answer: text/csv
        answer = csv_answer(model, body.decode("utf-8", "replace"), first_row)
        accept_csv = True
    elif profile and takes_profile(model):
        answer = respond(body, first_row, accept=BATCH_TYPE, profile="rows")
        accept_csv = False
    else:
        answer = respond(body, first_row, accept=BATCH_TYPE)
        accept_csv = False
    if answer.status != 200:
        return answer.status, message_of(answer.body)
    unseen = unseen_counts(_header(answer.headers, UNSEEN_HEADER))
    if accept_csv or _header(answer.headers, "content-type").startswith("text/csv"):
        text = answer.body if isinstance(answer.body, str) else answer.body.decode("utf-8")
        columns = next(csv.reader([text.split("\n", 1)[0]]))
        return 200, from_csv_answer(text, n, columns, unseen)
    return 200, from_batch(answer.body, n, unseen)


def takes_profile(model: Any) -> bool:
    """Whether an archive's LocalModel.respond takes `profile` (archives from before the drift
    report do not: their jobs' reports say they lack the counts)."""
    import inspect

    try:
        return "profile" in inspect.signature(model.respond).parameters
    except (TypeError, ValueError, AttributeError):
        return False


class HandlerFailed(Exception):
    """The archive's handler raised on a body, or answered what is not a batch answer for it:
    the batch's failure (the engines split it to find the rows that cause it)."""


def call_handler(
    model: Any, body: bytes, n: int, first_row: int, profile: bool = False
) -> tuple[int, Results | str]:
    """score_body, with any failure of the handler as HandlerFailed, worded the same for every
    in-process engine (the local engine and Spark write the same error text)."""
    try:
        return score_body(model, body, n, first_row, profile)
    except AnswerError as exc:
        raise HandlerFailed(f"the archive's handler, batch starting at row {first_row}: {exc}") from exc
    except Exception as exc:  # the handler failed on this body: the batch's failure
        raise HandlerFailed(
            f"the model's handler failed on the batch starting at row {first_row}: "
            f"{type(exc).__name__}: {str(exc)[:300]}"
        ) from exc


@dataclass
class _Answer:
    status: int
    body: str
    headers: dict[str, str]


def csv_answer(model: Any, body: str, first_row: int) -> Any:
    """The text/csv answer of an archive's LocalModel from before the batch answer (one
    with respond_csv, or older still, call_csv and no response headers)."""
    respond_csv = getattr(model, "respond_csv", None)
    if respond_csv is not None:
        return respond_csv(body, first_row)
    status, text = model.call_csv(body, first_row)
    return _Answer(status, text, {})


def message_of(body: str | bytes) -> str:
    """The message of a handler's error answer ({"code", "type", "message"})."""
    text = body.decode("utf-8", "replace") if isinstance(body, (bytes, bytearray)) else body
    try:
        return str(json.loads(text)["message"])
    except (ValueError, KeyError, TypeError):
        return text.strip()[:300]


def _header(headers: dict[str, str], name: str) -> str:
    for k, v in headers.items():
        if k.lower() == name:
            return v
    return ""


# --- text, produced once (pyarrow's C++ formats the numbers) ----------------------------------


def quote(field: str) -> str:
    """One CSV field, quoted when it holds a comma, a quote or a line break."""
    if any(c in field for c in ',"\r\n'):
        return '"' + field.replace('"', '""') + '"'
    return field


def _field_columns(results: Results, columns: Sequence[str]) -> list[Any]:
    """The output fields as pyarrow binary columns: label (quoted as needed), each number
    (pyarrow's shortest text that reads back as the same float64), error (quoted as needed);
    empty where a row failed. Built column by column in pyarrow's C++ (no per-row Python)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(results)
    failed = results.failed()
    out = []
    if results.labels is not None:
        classes = [quote(c[2:]).encode("utf-8") for c in columns[1:-1]] + [b""]
        labels = np.where(results.labels < 0, len(classes) - 1, results.labels)
        out.append(pc.take(pa.array(classes, pa.binary()), pa.array(labels)))
    for k in range(results.values.shape[1]):
        values = np.ascontiguousarray(results.values[:, k])
        numbers = pa.array(values, mask=failed) if results.errors else pa.array(values)
        out.append(pc.fill_null(pc.cast(pc.cast(numbers, pa.string()), pa.binary()), b""))
    if results.errors:
        errors = [b""] * n
        for i, e in results.errors.items():
            errors[i] = quote(e).encode("utf-8")
        out.append(pa.array(errors, pa.binary()))
    else:
        out.append(pa.repeat(pa.scalar(b"", pa.binary()), n))
    return out


def render_lines(prefix: Any, results: Results, columns: Sequence[str]) -> Any:
    """Each row's CSV line without its line end, as a pyarrow binary array: its `prefix` (its
    input fields as CSV text: a list of bytes or a pyarrow binary array), a comma and its
    output fields; only the output fields when `prefix` is None. Joined in pyarrow's C++."""
    import pyarrow as pa
    import pyarrow.compute as pc

    parts = _field_columns(results, columns)
    if prefix is not None:
        parts.insert(0, prefix if isinstance(prefix, pa.Array) else pa.array(prefix, pa.binary()))
    return parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, b",")


def render_rows(prefix: Any, results: Results, columns: Sequence[str]) -> bytes:
    """render_lines as one text, each line ending in a line end. The text is joined in
    pyarrow's C++, which lets other threads run meanwhile."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(results)
    if n == 0:
        return b""
    joined = render_lines(prefix, results, columns)
    whole = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, n], pa.int32()), joined), b"\n")
    return whole[0].as_py() + b"\n"


def result_fields(results: Results, columns: Sequence[str]) -> list[bytes]:
    """Each row's output fields as CSV text (`label,p_a,p_b,error` or `prediction,error`),
    without a line end: the same text as render_rows writes."""
    import pyarrow.compute as pc

    if len(results) == 0:
        return []
    return pc.binary_join_element_wise(*_field_columns(results, columns), b",").to_pylist()


def output_fields(columns: Sequence[str]) -> list[Any]:
    """The typed output columns (Parquet, Spark): `label` (string) and `p_<class>` (float64),
    or `prediction` (float64); then `error` (string, null where the row scored)."""
    import pyarrow as pa

    if columns[0] == "label":
        fields = [pa.field("label", pa.string())] + [pa.field(c, pa.float64()) for c in columns[1:-1]]
    else:
        fields = [pa.field("prediction", pa.float64())]
    return [*fields, pa.field("error", pa.string())]


def output_arrays(results: Results, columns: Sequence[str]) -> list[Any]:
    """The results as the arrays of output_fields: nulls where a row failed."""
    import pyarrow as pa

    n = len(results)
    failed = results.failed()
    out = []
    if results.labels is not None:
        classes = np.asarray([c[2:] for c in columns[1:-1]] + [None], dtype=object)
        out.append(pa.array(classes[results.labels], type=pa.string()))
    out += [pa.array(results.values[:, k], mask=failed) for k in range(results.values.shape[1])]
    errors = np.full(n, None, dtype=object)
    for i, e in results.errors.items():
        errors[i] = e
    out.append(pa.array(errors, type=pa.string()))
    return out


# --- the input, as the handler reads it --------------------------------------------------------


def table_lines(table: Any) -> Any:
    """Each row of a RecordBatch as one CSV record (no line end), as a pyarrow binary array,
    as a handler reads it: numbers in pyarrow's shortest exact text, nulls empty, text quoted
    only where it must be. Done column by column in pyarrow's C++ (no Python object per row).
    A column pyarrow cannot turn into text (lists, structs, maps) or that may hold invalid
    UTF-8 (binary) gives each value's JSON text, which the handler names as that row's bad
    value."""
    import pyarrow as pa
    import pyarrow.compute as pc

    texts = []
    for col in table.columns:
        t = col.type
        if _python_text(t):
            col = pa.array([_text(v) for v in col.to_pylist()], type=pa.string())
        elif pa.types.is_dictionary(t):
            col = col.cast(t.value_type)
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            try:
                col = pc.cast(col, pa.string())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                col = pa.array([_text(v) for v in col.to_pylist()], type=pa.string())
        elif table.num_rows:
            if pa.types.is_large_string(col.type):
                col = col.cast(pa.string())
            try:
                col.validate(full=True)
            except pa.ArrowInvalid:  # invalid UTF-8: read as a CSV field would be, U+FFFD
                col = pa.array(
                    [
                        None if v is None else v.decode("utf-8", "replace")
                        for v in col.cast(pa.binary()).to_pylist()
                    ],
                    pa.string(),
                )
            special = pc.match_substring_regex(col, '[",\r\n]')
            if pc.any(special).as_py():
                quoted = pc.binary_join_element_wise('"', pc.replace_substring(col, '"', '""'), '"', "")
                col = pc.if_else(special, quoted, col)
        texts.append(pc.cast(pc.fill_null(col, ""), pa.binary()))
    if not texts:
        return pa.array([b""] * table.num_rows, pa.binary())
    return texts[0] if len(texts) == 1 else pc.binary_join_element_wise(*texts, b",")


def _python_text(t: Any) -> bool:
    """Whether pyarrow cannot cast a column of type `t` to text (lists, structs, maps) or its
    text could be invalid UTF-8 (binary): such values are turned into text one by one."""
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        t = t.value_type
    return (
        pa.types.is_nested(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_fixed_size_binary(t)
    )


def _text(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return json.dumps(v, default=str)


# --- a CSV input's records in the output ---------------------------------------------------------


def field_count(record: bytes) -> int:
    """Fields in one record, as the csv module reads it, whatever their length; -1 when it
    cannot read it (a bare carriage return inside an unquoted field)."""
    if b'"' not in record:
        return record.count(b",") + 1
    limit = csv.field_size_limit(max(csv.field_size_limit(), len(record) + 1))
    try:
        return len(next(csv.reader([record.decode("utf-8", "replace")]), []))
    except csv.Error:
        return -1
    finally:
        csv.field_size_limit(limit)


def csv_prefix(
    records: Sequence[bytes], errors: dict[int, str], width: int, oversized: Sequence[int] = ()
) -> Sequence[bytes]:
    """Each record's text as its row's first fields in a CSV output: a failed record with
    another number of fields (or one never parsed: `oversized`) keeps its whole text, quoted,
    in the first column, and the other input columns are empty."""
    if not errors:
        return records
    rows = list(records)
    pad = b"," * (width - 1)
    never = set(oversized)
    for i in errors:
        if i in never or field_count(rows[i]) != width:
            rows[i] = quote(rows[i].decode("utf-8", "replace")).encode("utf-8") + pad
    return rows


def csv_columns(records: Sequence[bytes], width: int, oversized: Sequence[int] = ()) -> list[Any]:
    """A CSV input's records as `width` string columns (the csv module's reading, as the
    handler's); a record with another number of fields, or over --max-record-bytes (never
    parsed), keeps its text in the first column."""
    import pyarrow as pa

    text = b"\n".join(records).decode("utf-8", "replace")
    rows = None
    if '"' not in text and "\r" not in text and not oversized:
        rows = list(csv.reader(text.split("\n")))
    if rows is None or len(rows) != len(records):
        skip = set(oversized)
        rows = [[] if i in skip else _fields(r) for i, r in enumerate(records)]
    cols: list[list[str | None]] = [[] for _ in range(width)]
    for rec, row in zip(records, rows):
        if len(row) != width:
            row = [rec.decode("utf-8", "replace")] + [None] * (width - 1)
        for j in range(width):
            cols[j].append(row[j])
    return [pa.array(c, type=pa.string()) for c in cols]


def _fields(record: bytes) -> list[str]:
    """One record's fields, or none when the csv module cannot read it (it is malformed)."""
    limit = csv.field_size_limit(max(csv.field_size_limit(), len(record) + 1))
    try:
        return next(csv.reader([record.decode("utf-8", "replace")]), [])
    except csv.Error:
        return []
    finally:
        csv.field_size_limit(limit)


# --- the archive's handler, in this process -----------------------------------------------------


def load_handler_module(mar: Any, into: Any, module: str) -> Any:
    """Unpack the archive `mar` into the folder `into` and import `module` of its handler
    package under a package name of its own, so two archives in one process never share
    modules. Raises OSError, KeyError, zipfile.BadZipFile or ImportError."""
    import importlib
    import importlib.util
    import sys
    import zipfile
    from pathlib import Path

    with zipfile.ZipFile(mar) as z:
        z.extractall(into)
    pkg_dir = Path(into) / "tabserve_handler"
    name = f"tabserve_handler_{abs(hash(str(into)))}"
    spec = importlib.util.spec_from_file_location(
        name, pkg_dir / "__init__.py", submodule_search_locations=[str(pkg_dir)]
    )
    if spec is None or spec.loader is None:
        raise ImportError("no tabserve_handler package")
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    spec.loader.exec_module(package)
    return importlib.import_module(f"{name}.{module}")
