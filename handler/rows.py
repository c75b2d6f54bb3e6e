"""Request bodies in, a matrix of feature rows and per-row errors out.

This is the only place that decides what a good row is, and the handler's containment
boundary: whatever a body holds, decoding it either gives Rows (one per record, each good or
with its own error) or raises BadRequest for that body alone. The online handler, the batch
scorer and every other engine call it, so they cannot disagree. Rows are numbered from 1 in
messages ("row 1" is the first data row of the body, after any header), offset by `first_row`
when a caller scores a slice of a larger file.

Two kinds of failure:
- a row that is wrong gets its own message and the other rows are still predicted;
- a body that cannot be read at all, or that is over a limit, raises BadRequest (the server
  answers HTTP 400, or 413 for a body with too many rows).

Limits (model-config.yaml, `handler:` section; see Limits) keep one body from exhausting a
worker: JSON nesting depth, the length of one CSV field, rows per request. Messages quote at
most PREVIEW characters of what arrived, so an answer's size is bounded by its row count.
"""

from __future__ import annotations

import csv
import io
import json
import operator
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from itertools import repeat
from typing import Any, Union

import numpy as np

from .columns import Encoder, category_text

JSON_TYPES = ("application/json",)
CSV_TYPES = ("text/csv", "application/csv", "text/plain")
FORM_TYPE = "application/x-www-form-urlencoded"
# The batch scorer sends a file in chunks; this request header numbers a chunk's first row so
# that error messages name the row of the file, not of the chunk.
FIRST_ROW_HEADER = "X-Tabserve-First-Row"
# The batch scorer sends the input's header line first in every chunk and says so with this
# request header ("present"): the first line is then always read as the header, so a header
# that names none of the model's features is refused (400) instead of read as a data row.
CSV_HEADER_HEADER = "X-Tabserve-Csv-Header"
# Characters of a bad value quoted in a message; longer values are cut with "...".
PREVIEW = 40
# The largest magnitude float32 holds: a scaled feature beyond it would be infinite in the model.
FLOAT32_MAX = float(np.finfo(np.float32).max)


class BadRequest(ValueError):
    """The body as a whole cannot be read; answered with HTTP 400 (or `status`)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """What one request may hold. Defaults keep the largest answer (every row an error, each
    message at most about 200 bytes) near 20 MB, well under TorchServe's 64 MiB
    max_response_size, whose excess kills the worker instead of failing the request."""

    max_rows: int = 100_000  # rows per request; more is refused with 413 before any work
    max_depth: int = 8  # JSON nesting (tabserve's forms need 3: {"instances": [[...]]})
    max_field_bytes: int = 131_072  # one CSV field (the csv module's own default limit)
    max_answer_bytes: int = 60 * 1024 * 1024  # a last guard on the encoded answer (413)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None) -> Limits:
        """The `handler:` section of model-config.yaml; unknown keys are ignored."""
        settings = settings or {}
        values = {}
        for f in fields(cls):
            if f.name in settings:
                value = int(settings[f.name])
                if value < 1:
                    raise ValueError(f"handler setting {f.name} must be at least 1, got {value}")
                values[f.name] = value
        return cls(**values)


DEFAULT_LIMITS = Limits()


@dataclass
class Rows:
    """Decoded rows: `values[i]` holds row i's network inputs (unscaled; see
    columns.Encoder), unless `errors[i]`."""

    values: np.ndarray  # float64, shape (n, encoder width); zeros where errors[i] is set
    errors: list[str | None]
    # Per categorical column, how many values were categories not seen in training (they are
    # predicted with the OTHER input); batch jobs report these.
    unseen: dict[str, int] = field(default_factory=dict)
    # (n, features) masks of the values that were missing and of the categories never seen in
    # training; None when there is none (the common case costs nothing). handler/profile.py
    # counts them for drift reports and the online counters.
    missing: np.ndarray | None = None
    new: np.ndarray | None = None
    # Per categorical column with unseen categories: [(row, the category's text)].
    new_values: dict[int, list[tuple[int, str]]] | None = None

    def __len__(self) -> int:
        return len(self.errors)

    @property
    def ok(self) -> np.ndarray:
        """Boolean mask of the rows that can be predicted."""
        n = len(self.errors)
        if self.errors.count(None) == n:  # the common case, counted in C
            return np.ones(n, dtype=bool)
        return np.fromiter(map(operator.is_, self.errors, repeat(None)), dtype=bool, count=n)


# Union, not `|`: an alias is evaluated when the module loads, and the artifact of `tabserve
# export oci-artifact` runs in OCI's Python 3.9 conda environment.
Spec = Union[Encoder, Sequence[str]]  # noqa: UP007


def encoder_of(spec: Spec) -> Encoder:
    """An Encoder as is; a plain list of feature names as numbers only, all required."""
    return spec if isinstance(spec, Encoder) else Encoder.numeric(spec)


def expected_forms(spec: Spec) -> str:
    enc = encoder_of(spec)
    features = enc.features
    names = ", ".join(features)
    if not enc.plain or enc.impute:
        return (
            f"expected JSON (one row of {len(features)} values, an object keyed by column names, "
            f'a list of rows, or {{"instances": [...]}}) or CSV rows of {len(features)} values, '
            f"with or without a header line; columns: {names}"
        )
    return (
        f"expected JSON (one row of {len(features)} numbers, an object keyed by feature names, "
        f'a list of rows, or {{"instances": [...]}}) or CSV rows of {len(features)} numbers, '
        f"with or without a header line; features: {names}"
    )


def preview(value: Any, csv_field: bool = False) -> str:
    """A short, printable picture of a bad value for a message: never long, never raises.
    A JSON value is shown as JSON, a CSV field as a Python string literal."""
    if (isinstance(value, str) and csv_field) or type(value) is float:
        text = repr(value)
    elif isinstance(value, (list, dict)):
        text = "a list" if isinstance(value, list) else "an object"
        return f"{text} of {len(value)} item{'s' if len(value) != 1 else ''}"
    elif isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    else:
        try:
            text = json.dumps(value)
        except (TypeError, ValueError):
            text = type(value).__name__
    return text if len(text) <= PREVIEW else text[: PREVIEW - 3] + "..."


def decode(
    body: Any,
    content_type: str | None,
    features: Spec,
    first_row: int = 1,
    limits: Limits = DEFAULT_LIMITS,
    header: bool | None = None,
) -> Rows:
    """Decode one request body of any accepted form into Rows.

    `body` is what TorchServe hands over: bytes, a str (text/* bodies), or an already parsed
    JSON value (application/json bodies). `header=True` says the first CSV line is a header.
    """
    ctype = (content_type or "").split(";")[0].strip().lower()
    if isinstance(body, (bytes, bytearray, memoryview)):
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequest(
                f"body is not UTF-8 text (bad byte at offset {exc.start}); {expected_forms(features)}"
            ) from exc
    if isinstance(body, str):
        text = body.lstrip("\ufeff")
        if not text.strip():
            raise BadRequest(f"empty body; {expected_forms(features)}")
        if ctype in JSON_TYPES or (ctype not in CSV_TYPES and text.lstrip()[:1] in ("[", "{")):
            body = parse_json(text, features, limits)
        else:
            return from_csv(text, features, first_row=first_row, header=header, limits=limits)
    return from_json(body, features, first_row=first_row, limits=limits)


def parse_json(text: str, features: Spec, limits: Limits = DEFAULT_LIMITS) -> Any:
    """json.loads with every way it can fail (syntax, nesting beyond the recursion limit,
    integers of more than 4,300 digits) turned into BadRequest."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise BadRequest(
            f"JSON nesting deeper than {limits.max_depth} levels; {expected_forms(features)}"
        ) from None
    except ValueError as exc:  # JSONDecodeError, and int() of a number over 4,300 digits
        what = "number too long" if "digits" in str(exc) else "not valid JSON"
        raise BadRequest(f"body is {what} ({_cut(str(exc))}); {expected_forms(features)}") from exc
    return value  # from_json checks the nesting limit, once, for parsed and pre-parsed bodies


def check_depth(value: Any, features: Spec, limits: Limits = DEFAULT_LIMITS) -> None:
    """BadRequest when a parsed JSON value nests deeper than the limit (iteratively: a value
    nested 100,000 levels deep must not exhaust the stack here either)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            if depth > limits.max_depth:
                raise BadRequest(
                    f"JSON nesting deeper than {limits.max_depth} levels; {expected_forms(features)}"
                )
            children = item.values() if isinstance(item, dict) else item
            stack.extend((c, depth + 1) for c in children if isinstance(c, (list, dict)))


def _cut(text: str, n: int = 120) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


# --- JSON -------------------------------------------------------------------------------------


def from_json(obj: Any, spec: Spec, first_row: int = 1, limits: Limits = DEFAULT_LIMITS) -> Rows:
    """Rows from a parsed JSON value: a row, a list of rows, or {"instances": [...]}."""
    enc = encoder_of(spec)
    features = enc.features
    check_depth(obj, enc, limits)
    if isinstance(obj, dict):
        if "instances" in obj:
            rows = obj["instances"]
            if not isinstance(rows, list) or not rows:
                raise BadRequest(f'"instances" must be a non-empty list of rows; {expected_forms(enc)}')
        elif any(f in obj for f in features):
            rows = [obj]
        else:
            raise BadRequest(f"object has none of the model's features; {expected_forms(enc)}")
    elif isinstance(obj, list):
        if not obj:
            raise BadRequest(f"empty list; {expected_forms(enc)}")
        # A flat list of scalars is one row; anything else is a list of rows.
        rows = [obj] if not any(isinstance(v, (list, dict)) for v in obj) else obj
    else:
        raise BadRequest(f"got a JSON {_json_type(obj)}; {expected_forms(enc)}")
    _check_rows(len(rows), limits)

    n = len(features)
    values = np.zeros((len(rows), enc.width), dtype=np.float64)
    errors: list[str | None] = [None] * len(rows)
    unseen = [0] * n
    gaps_at: list[tuple[int, int]] = []
    new_at: list[tuple[int, int]] = []
    new_values: dict[int, list[tuple[int, str]]] = {}
    absent = object()
    what = "numbers" if enc.plain and not enc.impute else "values"
    for i, row in enumerate(rows):
        if isinstance(row, list):
            if len(row) != n:
                errors[i] = f"row {first_row + i}: expected {n} features, got {len(row)}"
                continue
            items = row
        elif isinstance(row, dict):
            if not enc.impute:
                missing = [f for f in features if f not in row]
                if missing:
                    errors[i] = f"row {first_row + i}: missing feature {', '.join(map(repr, missing))}"
                    continue
            elif not any(f in row for f in features):
                names = _names(features)
                errors[i] = f"row {first_row + i}: the object has none of the model's columns ({names})"
                continue
            items = [row.get(f, absent) for f in features]
        else:
            errors[i] = (
                f"row {first_row + i}: expected a list of {n} {what} or an object keyed by "
                f"feature names, got {preview(row)}"
            )
            continue
        new, gaps = [], 0
        for j, v in enumerate(items):
            if v is absent or enc.json_missing(j, v):
                problem, is_new = enc.put_missing(values, i, j), False
                gaps += 1
                gaps_at.append((i, j))
            else:
                problem, is_new = enc.put_json(values, i, j, v)
            if problem:
                errors[i] = f"row {first_row + i}: feature {features[j]!r} {problem}" + (
                    f": {preview(v)}" if problem != "is missing" else ""
                )
                values[i] = 0.0
                new = []
                break
            if is_new:
                new.append(j)
        if enc.impute and gaps == n:
            errors[i] = f"row {first_row + i}: {ALL_MISSING}"
            values[i] = 0.0
            continue
        for j in new:
            unseen[j] += 1
            new_at.append((i, j))
            new_values.setdefault(j, []).append((i, category_text(items[j]) or ""))
    return Rows(
        values,
        errors,
        _unseen(features, unseen),
        _mask(len(rows), n, gaps_at),
        _mask(len(rows), n, new_at),
        new_values or None,
    )


ALL_MISSING = "every value is missing: nothing to predict from"


def _names(features: Sequence[str], shown: int = 5) -> str:
    more = f", ... ({len(features)} in all)" if len(features) > shown else ""
    return ", ".join(features[:shown]) + more


def _mask(n: int, width: int, cells: Sequence[tuple[int, int]]) -> np.ndarray | None:
    """An (n, width) boolean mask true at `cells` (row, column); None when there are none."""
    if not cells:
        return None
    mask = np.zeros((n, width), dtype=bool)
    at = np.asarray(cells, dtype=np.int64)
    mask[at[:, 0], at[:, 1]] = True
    return mask


def _columns_mask(n: int, found: Sequence[Sequence[int] | None]) -> np.ndarray | None:
    """An (n, len(found)) boolean mask: column j true at the rows found[j]; None when empty."""
    if not any(found):
        return None
    mask = np.zeros((n, len(found)), dtype=bool)
    for j, rows in enumerate(found):
        if rows:
            mask[np.asarray(rows, dtype=np.int64), j] = True
    return mask


def _unseen(features: Sequence[str], counts: Sequence[int]) -> dict[str, int]:
    return {f: c for f, c in zip(features, counts) if c}


def _json_type(obj: Any) -> str:
    return {str: "string", bool: "boolean", type(None): "null"}.get(type(obj), "number")


def _check_rows(n: int, limits: Limits) -> None:
    if n > limits.max_rows:
        raise BadRequest(
            f"request has {n:,} rows, more than the limit of {limits.max_rows:,} per request "
            "(max_rows): send fewer rows per request",
            status=413,
        )


# --- CSV --------------------------------------------------------------------------------------


def _is_header(record: list[str], features: Sequence[str]) -> bool:
    names = {f.strip() for f in record}
    return any(f in names for f in features)


def from_csv(
    text: str,
    spec: Spec,
    first_row: int = 1,
    header: bool | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Rows:
    """Rows from CSV text. With a header line (detected when it names any feature, or forced
    with `header=True`), columns are matched by name in any order and extra columns ignored;
    without one, each line must hold exactly the features in schema order.

    Every record gives one row, blank lines included (they get an error), so a caller that
    sends N records gets N results back. Records are split as Python's csv module splits
    them (a quoted field may span lines; a quote left open runs to the end of the body).
    """
    enc = encoder_of(spec)
    features = enc.features
    if enc.plain and '"' not in text and "\r" not in text:
        fast = _from_plain_csv(text, enc, header, limits)
        if fast is not None:
            return fast
    records, problems = parse_records(text, limits)
    if header is None:
        header = bool(records) and problems[0] is None and _is_header(records[0], features)
    if header:
        if not records:
            raise BadRequest(f"missing CSV header; {expected_forms(enc)}")
        if problems[0] is not None:
            raise BadRequest(f"the CSV header cannot be read: {problems[0]}")
        names = [f.strip() for f in records[0]]
        missing = [f for f in features if f not in names]
        if missing:
            raise BadRequest(
                f"CSV header lacks feature column(s) {', '.join(map(repr, missing))}; "
                f"header was {_cut(','.join(records[0]))!r}"
            )
        check_header_names(names, features)
        index = [names.index(f) for f in features]
        width = len(names)
        # A header and no rows is a valid request for zero predictions (the batch scorer
        # sends one to check a file's columns before it sends any data).
        records, problems = records[1:], problems[1:]
    else:
        index = list(range(len(features)))
        width = len(features)
    _check_rows(len(records), limits)
    if any(p is not None for p in problems):
        # A record that cannot be read is not encoded (nor its categories counted).
        records = [[] if p is not None else r for r, p in zip(records, problems)]
    rows = from_records(records, enc, index, width, first_row)
    for i, problem in enumerate(problems):
        if problem is not None:
            rows.errors[i] = f"row {first_row + i}: {problem}"
            rows.values[i] = 0.0
    return rows


def check_header_names(names: Sequence[str], features: Sequence[str]) -> None:
    """BadRequest when a feature's column is in the header more than once: which one holds
    the feature would be a guess."""
    twice = [f for f in features if names.count(f) > 1]
    if twice:
        raise BadRequest(f"CSV header has feature column(s) {', '.join(map(repr, twice))} more than once")


def parse_records(text: str, limits: Limits = DEFAULT_LIMITS) -> tuple[list[list[str]], list[str | None]]:
    """CSV text as records, and for each the reason it cannot be read (None when it can).

    The whole text goes through the csv module in one C call; only when that fails (a field
    over the csv module's limit, a bare CR inside a field) is it split into records here and
    each parsed on its own, so that a bad record is that record's problem only. Linear time
    either way: no record is read twice.
    """
    try:
        records = list(csv.reader(io.StringIO(text)))
    except csv.Error:
        records = None
    if records is not None:
        problems: list[str | None] = [None] * len(records)
        if limits.max_field_bytes < csv.field_size_limit():
            for i, rec in enumerate(records):
                problems[i] = _field_problem(rec, limits)
        return records, problems
    records, problems = [], []
    for raw in split_records(text):
        try:
            rec = next(csv.reader([raw]), [])
            problem = _field_problem(rec, limits)
        except csv.Error as exc:
            rec = [raw]
            msg = str(exc)
            if "field limit" in msg:
                limit = min(limits.max_field_bytes, csv.field_size_limit())
                problem = f"a field is longer than {limit:,} bytes"
            elif "new-line" in msg:
                problem = "a carriage return inside an unquoted field"
            else:
                problem = f"cannot be read as CSV ({_cut(msg, 80)})"
        records.append(rec)
        problems.append(problem)
    return records, problems


def _field_problem(record: list[str], limits: Limits) -> str | None:
    """A field over the limit in UTF-8 bytes (counted only where characters could reach it)."""
    limit = limits.max_field_bytes
    if any(len(f) * 4 > limit and len(f.encode("utf-8", "surrogatepass")) > limit for f in record):
        return f"a field is longer than {limit:,} bytes"
    return None


def split_records(text: str) -> Iterator[str]:
    """The records of CSV text, each with its own text, split by the csv module's rules: a
    quote opens a quoted field only at the start of a field, a doubled quote inside one is a
    literal quote, and a line that ends inside quotes goes on with the next line."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    pending: list[str] = []
    in_quotes = False
    for line in lines:
        if not pending and '"' not in line:
            yield line[:-1] if line.endswith("\r") else line
            continue
        pending.append(line)
        in_quotes = ends_in_quotes(line, in_quotes)
        if not in_quotes:
            joined = "\n".join(pending)
            yield joined[:-1] if joined.endswith("\r") else joined
            pending = []
    if pending:  # a quote left open: the rest of the text is its record
        yield "\n".join(pending)


def ends_in_quotes(line: str, in_quotes: bool = False) -> bool:
    """Whether `line` ends inside a quoted field, given whether it starts inside one (the
    csv module's rules, in its default non-strict dialect)."""
    at_start = not in_quotes
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if in_quotes:
            if c == '"':
                if i + 1 < n and line[i + 1] == '"':
                    i += 1
                else:
                    in_quotes = False
        elif c == '"' and at_start:
            in_quotes = True
        at_start = c == "," and not in_quotes
        i += 1
    return in_quotes


def _from_plain_csv(
    text: str, spec: Spec, header: bool | None, limits: Limits = DEFAULT_LIMITS
) -> Rows | None:
    """The common case in C for a numbers-only model: no quotes, every line with the same
    number of fields, every feature a finite number (none missing). Returns None when any
    of that is not so, and the careful path below names what is wrong with which row, or
    fills what is missing."""
    features = encoder_of(spec).features
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
        if any(f not in names for f in features) or len(set(names)) < len(names):
            return None
        index = [names.index(f) for f in features]
        lines = lines[1:]
    else:
        index = list(range(len(features)))
    width = len(first) if header else len(features)
    commas = width - 1
    if not lines:
        return Rows(np.zeros((0, len(features))), [])
    if len(lines) > limits.max_rows:
        return None
    if any(n != commas for n in set(map(str.count, lines, repeat(",")))):  # counted in C
        return None
    if max(map(len, lines)) > limits.max_field_bytes:
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
    spec: Spec,
    index: Sequence[int],
    width: int,
    first_row: int = 1,
) -> Rows:
    """Validate and encode parsed CSV records: `index[j]` is the field holding column j,
    `width` the number of fields every record must have.

    Column by column, vectorised for the common case (every field of a column a plain
    value): one numpy conversion or one dictionary pass per column; only a column where that
    fails is walked field by field to fill what is missing and name the bad rows.
    """
    enc = encoder_of(spec)
    features = enc.features
    n = len(records)
    values = np.zeros((n, enc.width), dtype=np.float64)
    errors: list[str | None] = [None] * n
    good = []
    for i, rec in enumerate(records):
        if len(rec) == width:
            good.append(i)
        elif len(rec) == 0 or (len(rec) == 1 and not rec[0].strip()):
            errors[i] = f"row {first_row + i}: empty line"
        else:
            spans = any("\n" in f for f in rec)
            hint = " (a quoted field spans lines: is a quote left open?)" if spans else ""
            errors[i] = f"row {first_row + i}: expected {width} fields, got {len(rec)}{hint}"
    if not good:
        return Rows(values, errors)
    rows = np.asarray(good, dtype=np.int64)
    unseen: list[list[int]] = [[] for _ in features]
    missing: list[list[int] | None] = [None] * len(features)
    # Columns of the good records, transposed in C when every record is good (the common case).
    columns = list(zip(*records)) if len(good) == n else None
    for j, k in enumerate(index):
        fields = list(columns[k]) if columns is not None else [records[i][k] for i in good]
        unseen[j], missing[j] = enc.put_fields(values, rows, j, fields, errors, first_row)
    if enc.impute and all(m is not None for m in missing):
        # A row whose every value is missing, as in from_json.
        empty = set(missing[0]).intersection(*missing[1:])
        for r in sorted(empty):
            if errors[r] is None:
                errors[r] = f"row {first_row + r}: {ALL_MISSING}"
    # Unseen categories are counted in rows that are predicted, as from_json counts them.
    counts = [sum(errors[r] is None for r in found) for found in unseen]
    failed = [i for i in good if errors[i] is not None]
    if failed:
        values[failed] = 0.0
    new_values = {j: [(r, records[r][index[j]]) for r in found] for j, found in enumerate(unseen) if found}
    return Rows(
        values,
        errors,
        _unseen(features, counts),
        _columns_mask(n, missing),
        _columns_mask(n, unseen),
        new_values or None,
    )
