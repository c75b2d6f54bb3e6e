"""Training data: scikit-learn's bundled data sets or a user's CSV, as it comes.

A table is read as text, every column's role is inferred (numeric or categorical, or refused
as an identifier or as too many categories, with the flag that fixes it), and every problem of
the table is reported in one DataError, not one per run. What a column's values mean (fill
values, vocabularies) is learnt later, on the training split only (`learn_columns`), and rows
are encoded by the handler's own code (`encode_rows`), so training sees exactly what serving
will.
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..handler.columns import CATEGORICAL, NUMERIC, Column, Encoder, is_missing_text, parse_number
from ..handler.rows import from_records
from ..handler.schema import CLASSIFICATION, REGRESSION, TASKS

BUILTIN = ("iris", "wine", "breast_cancer")
# A stratified split needs every class in the training, validation and test parts.
MIN_ROWS_PER_CLASS = 5
# More distinct values than this in a text column is more often a name, a code or a date
# than a category, and a one-hot block of that width would outweigh the 50-unit first layer.
# Categories with fewer than MIN_CATEGORY_ROWS training rows share the OTHER input anyway.
MAX_CATEGORIES = 50
MIN_CATEGORY_ROWS = 5
# A target of integers with at most this many distinct values is read as class labels.
MAX_INTEGER_CLASSES = 20
# An identifier: text (or integers counting rows) with a different value in almost every row.
ID_DISTINCT_SHARE = 0.9
ID_MIN_ROWS = 20
# A column whose values are numbers but for at most this share is numeric with typos.
NUMERIC_TYPO_SHARE = 0.05
MISSING_POLICIES = ("impute", "error")
SHOWN = 5  # examples quoted per problem


class DataError(ValueError):
    """The training data cannot be used: every problem, each with its column, line and fix."""


@dataclass(frozen=True)
class Table:
    """A training table: raw text fields per row, the roles of its feature columns, and the
    target as class indices (classification) or values (regression)."""

    name: str
    source: str
    features: tuple[str, ...]
    roles: tuple[str, ...]
    records: list[list[str]]  # one list of raw fields per row, in `features` order
    target: str
    task: str
    classes: tuple[str, ...]  # () for regression
    y: np.ndarray  # int64 class indices into `classes`, or float64 target values
    missing: str = "impute"
    notes: tuple[str, ...] = field(default=())  # what was inferred, for the user to read

    def sha256(self) -> str:
        """A hash of exactly what the model was trained on: names, roles, fields and target."""
        h = hashlib.sha256()
        h.update("\x1f".join(self.features).encode())
        h.update(b"\x1e" + "\x1f".join(self.roles).encode())
        h.update(b"\x1e" + "\x1f".join(self.classes).encode())
        for rec in self.records:
            h.update(b"\x1e" + "\x1f".join(rec).encode())
        dtype = "<i8" if self.task == CLASSIFICATION else "<f8"
        h.update(np.ascontiguousarray(self.y, dtype=dtype).tobytes())
        return h.hexdigest()


def column_name(raw: str) -> str:
    """scikit-learn's names ('sepal length (cm)') as CSV- and JSON-friendly ones ('sepal_length_cm')."""
    return re.sub(r"[^0-9a-z]+", "_", raw.lower()).strip("_")


def load_builtin(name: str) -> Table:
    from sklearn import datasets

    if name not in BUILTIN:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(BUILTIN)}")
    bunch = getattr(datasets, f"load_{name}")()
    features = tuple(column_name(f) for f in bunch.feature_names)
    # repr() round-trips every float, so the text fields are the exact values.
    records = [[repr(float(v)) for v in row] for row in np.asarray(bunch.data, dtype=np.float64)]
    table = Table(
        name=name,
        source=f"sklearn.datasets.load_{name}",
        features=features,
        roles=(NUMERIC,) * len(features),
        records=records,
        target="target",
        task=CLASSIFICATION,
        classes=tuple(str(c) for c in bunch.target_names),
        y=np.asarray(bunch.target, dtype=np.int64),
    )
    problems = class_size_problems(table.classes, table.y)
    if problems:
        raise DataError(f"{table.source}: {'; '.join(problems)}")
    return table


def load_csv(path: Path, target: str, name: str | None = None, **options: Any) -> Table:
    """A CSV with a header: `target` holds the class labels or values to predict; the other
    columns are features whose roles are inferred (see the module docstring). `options` are
    table_from_rows's (task, categorical, drop, keep, max_categories, missing). Raises
    DataError with every problem found."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (bad byte at offset {exc.start})") from exc
    except csv.Error as exc:
        raise DataError(f"{path} cannot be read as CSV: {exc}") from exc
    if not rows:
        raise DataError(f"{path} is empty")
    name = name or column_name(path.stem) or "model"
    return table_from_rows(rows, target, source=str(path), name=name, **options)


def table_from_rows(
    rows: list[list[str]],
    target: str,
    *,
    source: str,
    name: str,
    task: str | None = None,
    categorical: Sequence[str] = (),
    drop: Sequence[str] = (),
    keep: Sequence[str] = (),
    max_categories: int = MAX_CATEGORIES,
    missing: str = "impute",
) -> Table:
    """The table of a header row and its data rows (see load_csv)."""
    problems: list[str] = []
    notes: list[str] = []
    header = [h.strip() for h in rows[0]]
    if task is not None and task not in TASKS:
        raise DataError(f"--task must be one of {', '.join(TASKS)}, got {task!r}")
    if missing not in MISSING_POLICIES:
        raise DataError(f"--missing must be one of {', '.join(MISSING_POLICIES)}, got {missing!r}")
    if max_categories < 2:
        raise DataError(f"--max-categories must be at least 2, got {max_categories}")
    dupes = sorted(n for n, c in Counter(header).items() if c > 1 and n)
    for n in dupes:
        where = ", ".join(str(k + 1) for k, h in enumerate(header) if h == n)
        problems.append(f"column name {n!r} is in the header more than once (columns {where}): rename them")
    if any(not h for h in header):
        problems.append(f"the header has an empty column name (column {header.index('') + 1})")
    if target not in header:
        raise DataError(f"{source}: target column {target!r} not found; columns are {', '.join(header)}")
    for flag, names in (("--categorical", categorical), ("--drop", drop), ("--keep", keep)):
        for n in names:
            if n not in header:
                problems.append(f"{flag} {n}: no such column; columns are {', '.join(header)}")
            elif n == target:
                problems.append(f"{flag} {n}: that is the target column")

    width = len(header)
    body: list[tuple[int, list[str]]] = []  # (line number, record)
    bad_width: list[str] = []
    for line, rec in enumerate(rows[1:], start=2):
        if not rec or (len(rec) == 1 and not rec[0].strip()):
            continue
        if len(rec) != width:
            bad_width.append(f"line {line} has {len(rec)}")
            continue
        body.append((line, rec))
    if bad_width:
        problems.append(
            f"{len(bad_width)} line(s) do not have the header's {width} fields: " + _some(bad_width)
        )
    if not body:
        problems.append("no data rows")
        raise DataError(_report(source, problems))

    t = header.index(target)
    labelled = [(line, rec) for line, rec in body if not is_missing_text(rec[t])]
    if len(labelled) < len(body):
        notes.append(f"{len(body) - len(labelled)} row(s) with no {target!r} value left out of training")
    if not labelled:
        problems.append(f"target column {target!r} is empty in every row")
        raise DataError(_report(source, problems))
    # A row with every feature missing has nothing to learn from (serving refuses it too).
    dropped = set(drop)
    feature_index = [k for k, col in enumerate(header) if k != t and col not in dropped]
    blank = [all(is_missing_text(rec[k]) for k in feature_index) for _, rec in labelled]
    empty = sum(blank)
    if empty and feature_index:
        labelled = [row for row, b in zip(labelled, blank) if not b]
        notes.append(f"{empty} row(s) with every feature missing left out of training")
        if not labelled:
            problems.append("every row has every feature missing")
            raise DataError(_report(source, problems))
    labels = [rec[t].strip() for _, rec in labelled]
    task, classes, y, target_problems, note = _target(labels, [line for line, _ in labelled], target, task)
    problems += target_problems
    notes.append(note)

    features, roles = [], []
    for k, col in enumerate(header):
        if k == t or col in dropped or not col or header.count(col) > 1:
            continue
        values = [rec[k] for _, rec in labelled]
        role, problem = _role(
            col, values, [line for line, _ in labelled], col in categorical, col in keep, max_categories
        )
        if problem:
            problems.append(problem)
            continue
        gaps = [f"line {ln}" for (ln, _), v in zip(labelled, values) if is_missing_text(v)]
        if gaps and missing == "error":
            problems.append(
                f"column {col!r} has {len(gaps)} missing value(s) ({_some(gaps)}) and --missing error "
                "makes them errors: fill them, or train without --missing error (they are then imputed)"
            )
        features.append(col)
        roles.append(role)
    if not features and not problems:
        problems.append(f"no feature columns beside {target!r}")
    if problems:
        raise DataError(_report(source, problems) + "".join(f"\n  ({n})" for n in notes))
    index = [header.index(f) for f in features]
    return Table(
        name=name,
        source=source,
        features=tuple(features),
        roles=tuple(roles),
        records=[[rec[k] for k in index] for _, rec in labelled],
        target=target,
        task=task,
        classes=classes,
        y=y,
        missing=missing,
        notes=tuple(notes),
    )


def _some(items: Sequence[str]) -> str:
    shown = ", ".join(items[:SHOWN])
    return shown + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


def _report(source: str, problems: list[str]) -> str:
    lines = [f"{source}: {len(problems)} problem{'s' if len(problems) != 1 else ''}:"]
    return "\n".join(lines + [f"  - {p}" for p in problems])


def _number(text: str) -> float | None:
    """A number as the handler reads one (handler.columns.parse_number): what training takes
    for a number, serving takes for the same number."""
    return parse_number(text)


def _target(
    labels: list[str], lines: list[int], target: str, task: str | None
) -> tuple[str, tuple[str, ...], np.ndarray, list[str], str]:
    """The task, classes and target array; the problems; a note saying what was chosen."""
    numbers = [_number(v) for v in labels]
    numeric = all(x is not None and math.isfinite(x) for x in numbers)
    distinct = set(labels)
    integer = numeric and all(float(x).is_integer() for x in numbers)
    problems: list[str] = []
    if task is None:
        text = [f"line {ln}: {v!r}" for ln, v, x in zip(lines, labels, numbers) if x is None]
        distinct_numbers = {x for x in numbers if x is not None}
        few = len(text) <= NUMERIC_TYPO_SHARE * len(labels)
        if text and few and len(distinct_numbers) > MAX_INTEGER_CLASSES:
            problems.append(
                f"target {target!r} holds numbers but {len(text)} value(s) are not ({_some(text)}): fix "
                "them (or empty them to leave those rows out), or choose with --task classification "
                "or --task regression"
            )
            return REGRESSION, (), np.zeros(0), problems, f"task: not chosen ({target!r} is mostly numbers)"
        if not numeric:
            task, why = CLASSIFICATION, "it holds text"
        elif integer and len({float(x) for x in numbers}) <= MAX_INTEGER_CLASSES:
            task, why = CLASSIFICATION, f"it holds at most {MAX_INTEGER_CLASSES} distinct integers"
        else:
            task, why = REGRESSION, "it holds numbers"
        note = f"task: {task} ({target!r}: {why}; --task to choose)"
    else:
        note = f"task: {task} (--task)"
    if task == REGRESSION:
        if not numeric:
            bad = [
                f"line {ln}: {v!r}"
                for ln, v, x in zip(lines, labels, numbers)
                if x is None or not math.isfinite(x)
            ]
            problems.append(
                f"regression target {target!r} is not a finite number in {len(bad)} row(s) ({_some(bad)}): "
                "fix them, or empty them to leave those rows out"
            )
            return task, (), np.zeros(0), problems, note
        y = np.asarray(numbers, dtype=np.float64)
        if float(y.std()) == 0.0:
            problems.append(f"regression target {target!r} has the same value in every row")
        return task, (), y, problems, note
    if integer:  # class labels 2 and 2.0 are one class, in numeric order
        labels = [str(int(float(v))) for v in labels]
        distinct = set(labels)
        classes = tuple(sorted(distinct, key=int))
    else:
        classes = tuple(sorted(distinct))
    broken = [repr(c) for c in classes if "\n" in c or "\r" in c]
    if broken:
        problems.append(
            f"class label(s) {_some(broken)} of {target!r} hold a line break, which no CSV answer "
            "can carry in one line: change them in the file"
        )
    index = {c: k for k, c in enumerate(classes)}
    y = np.asarray([index[v] for v in labels], dtype=np.int64)
    problems += class_size_problems(classes, y, target)
    return task, classes, y, problems, note


def class_size_problems(classes: Sequence[str], y: np.ndarray, target: str = "target") -> list[str]:
    if len(classes) < 2:
        only = f" ({classes[0]!r} in every row)" if classes else ""
        return [f"need at least 2 classes, found {len(classes)}{only}: {target!r} has nothing to tell apart"]
    counts = np.bincount(y, minlength=len(classes))
    small = [f"{c!r} has {n}" for c, n in zip(classes, counts) if n < MIN_ROWS_PER_CLASS]
    if small:
        return [
            f"class(es) with fewer than {MIN_ROWS_PER_CLASS} rows ({_some(small)}): a stratified "
            f"split needs at least {MIN_ROWS_PER_CLASS} per class (drop those rows, or use "
            "--task regression for a numeric target)"
        ]
    return []


def _role(
    col: str, values: list[str], lines: list[int], forced: bool, keep: bool, max_categories: int
) -> tuple[str, str | None]:
    """A column's role, or the problem that refuses it (with the flag that fixes it)."""
    present = [(ln, v.strip()) for ln, v in zip(lines, values) if not is_missing_text(v)]
    if not present:
        return NUMERIC, f"column {col!r} is empty in every row: --drop {col}"
    if not forced:
        numbers = [(ln, v, _number(v)) for ln, v in present]
        text = [(ln, v) for ln, v, x in numbers if x is None]
        if not text:
            infinite = [f"line {ln}: {v!r}" for ln, v, x in numbers if not math.isfinite(x)]
            if infinite:
                return NUMERIC, (
                    f"column {col!r} holds infinite or overflowing values ({_some(infinite)}): "
                    f"fix them or --drop {col}"
                )
            xs = [x for _, _, x in numbers]
            rows_lines = [ln for ln, _, _ in numbers]
            if (
                not keep
                and len(xs) >= ID_MIN_ROWS
                and all(x.is_integer() for x in xs)
                # one up per line of the file, whatever lines were left out (bad, no target)
                and len({x - ln for x, ln in zip(xs, rows_lines)}) == 1
            ):
                return NUMERIC, (
                    f"column {col!r} looks like a row number ({xs[0]:g}, {xs[1]:g}, ... one up "
                    f"in every row): --drop {col} (or --keep {col} to use it anyway)"
                )
            return NUMERIC, None
        if len(text) <= NUMERIC_TYPO_SHARE * len(present):
            shown = _some([f"line {ln}: {v!r}" for ln, v in text])
            return NUMERIC, (
                f"column {col!r} holds numbers but {len(text)} value(s) are not ({shown}): "
                f"fix them, or --categorical {col} to read it as categories, or --drop {col}"
            )
    distinct = len({v for _, v in present})
    if not keep and distinct >= ID_MIN_ROWS and distinct >= ID_DISTINCT_SHARE * len(present):
        anyway = f"--keep {col}" + (f" --max-categories {distinct}" if distinct > max_categories else "")
        return CATEGORICAL, (
            f"column {col!r} looks like an identifier ({distinct} distinct values in "
            f"{len(present)} rows): --drop {col} (or {anyway} to use it anyway)"
        )
    if distinct > max_categories:
        return CATEGORICAL, (
            f"column {col!r} has {distinct} distinct values, more than --max-categories "
            f"{max_categories}: --drop {col}, or --max-categories {distinct} to keep them all"
        )
    return CATEGORICAL, None


def learn_columns(table: Table, rows: np.ndarray) -> tuple[Column, ...]:
    """Fill values, missing indicators and vocabularies, from the given (training) rows only."""
    columns = []
    for j, (name, role) in enumerate(zip(table.features, table.roles)):
        values = [table.records[i][j] for i in rows.tolist()]
        missing = [is_missing_text(v) for v in values]
        present = [v.strip() for v, m in zip(values, missing) if not m]
        if role == NUMERIC:
            xs = np.asarray([float(v) for v in present], dtype=np.float64)
            fill = float(np.median(xs)) if len(xs) else 0.0
            columns.append(Column(name, NUMERIC, fill=fill, indicator=any(missing)))
        else:
            counts = Counter(present)
            cats = tuple(sorted(c for c, n in counts.items() if n >= MIN_CATEGORY_ROWS))
            rare = tuple(sorted(c for c, n in counts.items() if n < MIN_CATEGORY_ROWS))
            columns.append(Column(name, CATEGORICAL, categories=cats, missing_slot=any(missing), rare=rare))
    return tuple(columns)


def encoder_for(table: Table, columns: Sequence[Column]) -> Encoder:
    return Encoder(columns, impute=table.missing == "impute")


def encode_rows(table: Table, encoder: Encoder, rows: np.ndarray) -> np.ndarray:
    """The rows as the network sees them before scaling, by the handler's own decoding."""
    records = [table.records[i] for i in np.asarray(rows).tolist()]
    n = len(table.features)
    decoded = from_records(records, encoder, list(range(n)), n)
    bad = [e for e in decoded.errors if e is not None]
    if bad:  # the role checks let nothing through that the handler refuses
        raise DataError(f"{table.source}: {len(bad)} training row(s) cannot be encoded: {_some(bad)}")
    return decoded.values
