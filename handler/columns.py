"""A model's input columns and how their raw values become the network's inputs.

Every engine and the training code encode rows here, so that what was trained is what is
served: the roles, fill values and vocabularies come from `schema.json` (learnt on the training
split by train/), and this module only applies them.

Layout of the network's inputs, column by column in schema order:
- numeric: the value (a missing one replaced by the training median), then, when training had
  missing values in the column, a 0/1 input saying the value was missing;
- categorical: one-hot over [OTHER, *categories] and, when training had missing values in the
  column, a last MISSING slot. OTHER holds the categories too rare in training to have their own
  input and every category never seen in training; training also moves a small share of rows
  there, so it always has learnt weights. A missing value without a MISSING slot is OTHER.

What is *missing*: an empty field, one of MISSING_TOKENS, JSON null, NaN, a key left out of a
JSON object. With `impute=False` (`tabserve train --missing error`, and every archive made
before column roles existed) a missing value is the row's error instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

NUMERIC = "numeric"
CATEGORICAL = "categorical"
ROLES = (NUMERIC, CATEGORICAL)
# The spellings of a missing value in a CSV field or a JSON string (compared after stripping
# spaces): pandas' and R's usual ones, kept short so a real category is never taken for one.
MISSING_TOKENS = frozenset({"", "NA", "N/A", "n/a", "NaN", "nan", "-nan", "null", "NULL", "None", "<NA>"})
OTHER = "<other>"
_NAN = "nan"
MISSING = "<missing>"


def is_missing_text(field: str) -> bool:
    return field in MISSING_TOKENS or field.strip() in MISSING_TOKENS


def parse_number(text: str, nan: bool = False) -> float | None:
    """A CSV field as a number, or None: float()'s syntax, but ASCII only and without digit
    separators ("1_000" and "\u0661\u0662" are text, not 1000 and 12), and NaN only with
    `nan=True` (otherwise NaN is a missing value, spelt as one of MISSING_TOKENS)."""
    if "_" in text or not text.isascii():
        return None
    try:
        x = float(text)
    except ValueError:
        return None
    return x if nan or x == x else None


@dataclass(frozen=True)
class Column:
    """One input column: its role and what training learnt about it."""

    name: str
    role: str = NUMERIC
    fill: float | None = None  # numeric: the training median, used for a missing value
    indicator: bool = False  # numeric: an extra input that is 1 where the value was missing
    categories: tuple[str, ...] = ()  # categorical: the categories with an input of their own
    missing_slot: bool = False  # categorical: a missing value has an input of its own
    # categorical: categories seen in training, too rarely to have an input of their own (they
    # are OTHER, but not "unseen")
    rare: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"column {self.name!r}: unknown role {self.role!r}")
        if self.role == NUMERIC and self.fill is not None and not math.isfinite(self.fill):
            raise ValueError(f"column {self.name!r}: fill value must be finite")
        if len(set(self.categories)) != len(self.categories):
            raise ValueError(f"column {self.name!r}: duplicate categories")

    @property
    def width(self) -> int:
        if self.role == NUMERIC:
            return 1 + int(self.indicator)
        return 1 + len(self.categories) + int(self.missing_slot)

    def input_names(self) -> list[str]:
        if self.role == NUMERIC:
            return [self.name] + ([f"{self.name}{MISSING}"] if self.indicator else [])
        names = [f"{self.name}={v}" for v in (OTHER, *self.categories)]
        return names + ([f"{self.name}={MISSING}"] if self.missing_slot else [])

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "role": self.role}
        if self.role == NUMERIC:
            d.update(fill=self.fill, indicator=self.indicator)
        else:
            d.update(categories=list(self.categories), missing_slot=self.missing_slot, rare=list(self.rare))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Column:
        fill = d.get("fill")
        return cls(
            name=str(d["name"]),
            role=str(d.get("role", NUMERIC)),
            fill=None if fill is None else float(fill),
            indicator=bool(d.get("indicator", False)),
            categories=tuple(str(c) for c in d.get("categories", ())),
            missing_slot=bool(d.get("missing_slot", False)),
            rare=tuple(str(c) for c in d.get("rare", ())),
        )


def category_text(v: Any) -> str | None:
    """A JSON value as the text a CSV field would hold; None when it is no category at all."""
    if isinstance(v, str):
        return v
    if type(v) is bool:
        return "true" if v else "false"
    if type(v) is int:
        return str(v) if v.bit_length() <= 64 else None
    if type(v) is float and math.isfinite(v):
        return str(int(v)) if v.is_integer() and abs(v) < 2**63 else repr(v)
    return None


class Encoder:
    """Applies a schema's columns: raw fields in, rows of network inputs out (unscaled)."""

    def __init__(self, columns: Sequence[Column], impute: bool = True) -> None:
        if not columns:
            raise ValueError("a model needs at least one input column")
        self.columns = tuple(columns)
        self.impute = impute
        self.features = tuple(c.name for c in self.columns)
        offsets, start = [], 0
        for c in self.columns:
            offsets.append(start)
            start += c.width
        self.offsets = tuple(offsets)
        self.width = start
        # Only numbers in, one input per column: the CSV fast path (np.loadtxt) applies.
        self.plain = all(c.role == NUMERIC and not c.indicator for c in self.columns)
        self._owner = [j for j, c in enumerate(self.columns) for _ in range(c.width)]
        self._lookup: list[dict[str, int]] = []
        self._folded: list[dict[str, int]] = []
        # Categories that are numbers, by value: JSON 2, 2.0 and the CSV text "2" find the
        # category trained as "2.0" (-1: two spellings of one number trained; exact text only).
        self._numbers: list[dict[float, int]] = []
        self._rare: list[frozenset[str]] = []
        for c in self.columns:
            self._rare.append(frozenset(v.strip().casefold() for v in c.rare))
            exact = {v: k + 1 for k, v in enumerate(c.categories)}
            folded: dict[str, int] = {}
            for v, k in exact.items():
                key = v.strip().casefold()
                folded[key] = -1 if key in folded else k  # -1: two categories fold alike
            self._lookup.append(exact)
            self._folded.append({k: v for k, v in folded.items() if v > 0})
            numbers: dict[float, int] = {}
            for v, k in exact.items():
                x = _finite_number(v)
                if x is not None:
                    numbers[x] = -1 if x in numbers else k
            self._numbers.append({x: k for x, k in numbers.items() if k > 0})

    @classmethod
    def numeric(cls, features: Iterable[str]) -> Encoder:
        """Numbers only, all required: the contract of archives made before column roles."""
        return cls([Column(str(f)) for f in features], impute=False)

    @property
    def input_names(self) -> list[str]:
        return [n for c in self.columns for n in c.input_names()]

    def column_of_input(self, j: int) -> str:
        """The name of the column that network input `j` comes from."""
        return self.columns[self._owner[j]].name

    # --- categories ---------------------------------------------------------------------------

    def category_slot(self, j: int, text: str) -> int:
        """The one-hot slot of a category's text (0: OTHER), not for a missing value."""
        slot = self._lookup[j].get(text)
        if slot is None:
            key = text.strip()
            slot = self._lookup[j].get(key) or self._folded[j].get(key.casefold(), 0)
            if not slot and self._numbers[j]:
                x = _finite_number(key)
                slot = self._numbers[j].get(x, 0) if x is not None else 0
        return slot

    def is_rare(self, j: int, text: str) -> bool:
        """Whether a category that has no input of its own was seen in training (rarely)."""
        return bool(self._rare[j]) and text.strip().casefold() in self._rare[j]

    def json_missing(self, j: int, v: Any) -> bool:
        """Whether a JSON value is a missing value of column j (see put_json)."""
        if self.columns[j].role == NUMERIC and not self.impute:
            return False
        if isinstance(v, str):
            return is_missing_text(v)
        return v is None or (type(v) is float and math.isnan(v))

    def missing_slot(self, j: int) -> int:
        c = self.columns[j]
        return len(c.categories) + 1 if c.missing_slot else 0

    # --- writing rows -------------------------------------------------------------------------

    def put_missing(self, values: np.ndarray, i: int, j: int) -> str | None:
        """Row i's column j is missing: its inputs, or the problem when missing is an error."""
        if not self.impute:
            return "is missing"
        c, o = self.columns[j], self.offsets[j]
        if c.role == NUMERIC:
            values[i, o] = c.fill if c.fill is not None else 0.0
            if c.indicator:
                values[i, o + 1] = 1.0
        else:
            values[i, o + self.missing_slot(j)] = 1.0
        return None

    def put_json(self, values: np.ndarray, i: int, j: int, v: Any) -> tuple[str | None, bool]:
        """Row i's column j from a JSON value that is not missing (see json_missing): (problem
        or None, whether it was an unseen category)."""
        c, o = self.columns[j], self.offsets[j]
        # Without imputation a numeric column reads as it always has: null, "NA" and NaN are
        # not numbers. (A categorical column's missing value is "missing" either way.)
        if c.role == NUMERIC:
            if type(v) is float:
                if not math.isfinite(v):
                    return "is not finite", False
                values[i, o] = v
                return None, False
            if type(v) is int:
                try:
                    values[i, o] = float(v)
                except OverflowError:
                    return "is a number too large", False
                return None, False
            return "is not a number", False
        text = category_text(v)
        if text is None:
            return "is not a category (text or a number)", False
        slot = self.category_slot(j, text)
        values[i, o + slot] = 1.0
        return None, slot == 0 and not self.is_rare(j, text)

    def put_fields(
        self,
        values: np.ndarray,
        rows: np.ndarray,
        j: int,
        fields: list[str],
        errors: list[str | None],
        first_row: int = 1,
    ) -> tuple[list[int], list[int] | None]:
        """Column j of the rows `rows` (indices into values and errors) from their CSV
        fields, vectorised where every field is a plain value. A bad field sets its row's
        error, when it has none yet ("row N: feature 'x' is not a number: 'abc'"). Returns the
        rows whose category was never seen in training, and the rows whose value is missing
        (None when none is: the common case costs nothing)."""
        c, o = self.columns[j], self.offsets[j]
        if c.role == NUMERIC:
            joined = "".join(fields)
            plain = joined.isascii() and "_" not in joined  # else parse_number decides, below
            try:
                block = np.array(fields, dtype=np.float64) if plain else None
            except (ValueError, OverflowError):
                block = None
                if self.impute and plain:  # most often a missing spelling: read those as NaN, once more
                    try:
                        tokens = MISSING_TOKENS
                        block = np.array([_NAN if f in tokens else f for f in fields], dtype=np.float64)
                    except (ValueError, OverflowError):
                        pass
            if block is not None:
                finite = np.isfinite(block)
                if finite.all():
                    values[rows, o] = block
                    return [], None
                nan = np.isnan(block)
                # NaN only where the field is a missing spelling ("NAN" is not one).
                spelt = all(is_missing_text(fields[k]) for k in np.flatnonzero(nan).tolist())
                if self.impute and spelt and not (~finite & ~nan).any():
                    values[rows, o] = np.where(nan, c.fill if c.fill is not None else 0.0, block)
                    if c.indicator:
                        values[rows[nan], o + 1] = 1.0
                    return [], rows[nan].tolist()
            missing: list[int] = []
            for r, field in zip(rows.tolist(), fields):
                if self.impute and is_missing_text(field):
                    problem = self.put_missing(values, r, j)
                    missing.append(r)
                else:
                    # Without imputation NaN reads as always: a number that is not finite.
                    x = parse_number(field, nan=not self.impute)
                    if x is None:
                        problem = "is not a number"
                    elif not math.isfinite(x):
                        problem = "is not finite"
                    else:
                        values[r, o] = x
                        problem = None
                if problem is not None and errors[r] is None:
                    errors[r] = f"row {first_row + r}: {field_problem(c.name, problem, field)}"
            return [], missing or None
        exact = self._lookup[j]
        slots = [exact.get(f, -1) for f in fields]
        unseen: list[int] = []
        missing = []
        for k, slot in enumerate(slots):
            if slot < 0:
                field = fields[k]
                if is_missing_text(field):
                    r = int(rows[k])
                    problem = self.put_missing(values, r, j)
                    missing.append(r)
                    if problem is not None and errors[r] is None:
                        errors[r] = f"row {first_row + r}: {field_problem(c.name, problem, field)}"
                    continue
                slots[k] = self.category_slot(j, field)
                if slots[k] == 0 and not self.is_rare(j, field):
                    unseen.append(int(rows[k]))
        idx = np.asarray(slots, dtype=np.int64)
        keep = idx >= 0
        values[rows[keep], o + idx[keep]] = 1.0
        return unseen, missing or None


def _finite_number(text: str) -> float | None:
    try:
        x = float(text)
    except (ValueError, OverflowError):
        return None
    return x if math.isfinite(x) else None


def field_problem(name: str, problem: str, field: str) -> str:
    """ "feature 'x' is not a number: 'abc'" (the row prefix is the caller's)."""
    if problem == "is missing":
        return f"feature {name!r} is missing"
    from .rows import preview

    if problem == "is not a number" and not field.strip():
        return f"feature {name!r} is empty"
    return f"feature {name!r} {problem}: {preview(field, True)}"
