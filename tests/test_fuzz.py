"""Property-based tests of the handler's containment boundary: whatever one request holds
(arbitrary bytes, any JSON value, CSV text with quotes, CRs and NULs, any content type), it
gets an answer of its own, the requests beside it in the same TorchServe batch are answered
exactly as if it were not there, and no answer holds NaN or infinity. First for the Iris
model (numbers only), then for real tables (categories, missing values, regression), where
CSV and JSON must also encode the same row alike.

Examples per property: the "ci" profile in conftest.py (HYPOTHESIS_PROFILE=deep for more).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, event, example, given
from hypothesis import strategies as st

from tabserve.handler.columns import MISSING_TOKENS, Encoder, is_missing_text
from tabserve.handler.entry import TabularHandler
from tabserve.handler.response import output_columns
from tabserve.handler.rows import FIRST_ROW_HEADER, from_csv, from_json, split_records
from tabserve.train.config import FitConfig
from tabserve.train.data import DataError, load_csv, table_from_rows
from tabserve.train.export import export
from tabserve.train.fit import fit

from .conftest import IRIS_ROWS
from .test_handler import make_context

FEATURES = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]
CONTENT_TYPES = [
    "application/json",
    "text/csv",
    "text/csv; charset=utf-8",
    "text/plain",
    "application/x-www-form-urlencoded",
    "application/octet-stream",
    "",
]
GOOD = [
    ({"body": IRIS_ROWS[:2]}, {"Content-Type": "application/json"}),
    ({"body": b"5.9,3.0,5.1,1.8\n6.3,3.3,6.0,2.5\n"}, {"Content-Type": "text/csv", "Accept": "text/csv"}),
]


@pytest.fixture(scope="module")
def handler(artifacts: Path) -> TabularHandler:
    h = TabularHandler()
    h.initialize(make_context(artifacts, []))
    return h


def _strict_json(text: str):
    def refuse(name: str):
        raise AssertionError(f"answer holds {name}, which is not JSON")

    return json.loads(text, parse_constant=refuse)


def check_answer(answer: object, status: int, content_type: str) -> None:
    """A well-formed answer: strict JSON or CSV, finite probabilities, an error per bad row."""
    assert isinstance(answer, str)
    assert status in (200, 400, 413), (status, answer[:300])
    if status != 200:
        body = _strict_json(answer)
        assert body["code"] == status and body["message"]
        return
    if content_type.startswith("text/csv"):
        lines = list(csv.reader(io.StringIO(answer)))
        assert lines[0] == ["label", "p_setosa", "p_versicolor", "p_virginica", "error"]
        for label, *p, err in lines[1:]:
            if err:
                assert label == "" and p == ["", "", ""]
            else:
                values = [float(v) for v in p]
                assert all(math.isfinite(v) for v in values) and label
        return
    for pred in _strict_json(answer)["predictions"]:
        if "error" in pred:
            assert pred["error"].startswith("row ")
        else:
            assert all(math.isfinite(v) for v in pred["probabilities"].values())


def run_batch(handler, artifacts, requests):
    ctx = make_context(artifacts, [h for _, h in requests])
    answers = handler.handle([r for r, _ in requests], ctx)
    assert len(answers) == len(requests)
    out = []
    for i, answer in enumerate(answers):
        status = ctx.get_response_status(i)[0]
        ctype = ctx.get_response_content_type(i) or ""
        check_answer(answer, status, ctype)
        out.append((status, answer))
    return out


def predicted_rows(status: int, answer: str) -> int:
    if status != 200:
        return 0
    if answer.startswith("label,"):
        return sum(1 for line in list(csv.reader(io.StringIO(answer)))[1:] if not line[-1])
    return sum("label" in p for p in json.loads(answer)["predictions"])


def assert_neighbours_untouched(handler, artifacts, poison, headers) -> None:
    """The good requests beside the poison get exactly the answer they get without it
    (bit for bit when the poison adds no rows to the model pass; a poison request that also
    holds good rows is a neighbour like any other, and a neighbour changes the last float32
    bits of a pooled pass, so then within 1e-6)."""
    alone = run_batch(handler, artifacts, GOOD)
    mixed = run_batch(handler, artifacts, [GOOD[0], (poison, headers), GOOD[1]])
    poison_rows = predicted_rows(*mixed[1])
    for (s0, a0), (s1, a1) in zip(alone, [mixed[0], mixed[2]]):
        assert s0 == s1 == 200
        if poison_rows == 0:
            assert a0 == a1
        else:
            np.testing.assert_allclose(_numbers(a0), _numbers(a1), atol=1e-6)


def _numbers(answer: str) -> list[float]:
    if answer.startswith("label,"):
        return [float(v) for line in list(csv.reader(io.StringIO(answer)))[1:] for v in line[1:-1]]
    return [v for p in json.loads(answer)["predictions"] for v in p["probabilities"].values()]


@given(body=st.binary(max_size=3000), ctype=st.sampled_from(CONTENT_TYPES), csv_answer=st.booleans())
@example(body=b"[" * 20_000 + b"]" * 20_000, ctype="application/json", csv_answer=False)
@example(body=b"[1" + b"0" * 400 + b", 3.5, 1.4, 0.2]", ctype="application/json", csv_answer=False)
@example(body=b"[" + b"9" * 5000 + b", 3.5, 1.4, 0.2]", ctype="application/json", csv_answer=True)
@example(body=b'5.1,"3.5\n1,2,3,4\n', ctype="text/csv", csv_answer=True)
@example(body=b"\xff\xfe[[1,2,3,4]]", ctype="", csv_answer=False)
def test_any_bytes_get_their_own_answer_and_leave_neighbours_untouched(
    handler, artifacts, body, ctype, csv_answer
):
    headers = {"Content-Type": ctype, **({"Accept": "text/csv"} if csv_answer else {})}
    assert_neighbours_untouched(handler, artifacts, {"body": body}, headers)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=6)
        | st.dictionaries(st.sampled_from([*FEATURES, "instances", "x"]), children, max_size=5)
    ),
    max_leaves=40,
)


@given(value=json_values, csv_answer=st.booleans())
@example(value=[1e39, 3.5, 1.4, 0.2], csv_answer=False)
@example(value=[[1e308, -1e308, 1e300, 1e-300]], csv_answer=True)
@example(value={"instances": [[10**400, 1, 1, 1], [5.1, 3.5, 1.4, 0.2]]}, csv_answer=False)
def test_any_json_value_gets_its_own_answer(handler, artifacts, value, csv_answer):
    """TorchServe hands application/json bodies over already parsed: any JSON value."""
    headers = {"Content-Type": "application/json", **({"Accept": "text/csv"} if csv_answer else {})}
    assert_neighbours_untouched(handler, artifacts, {"body": value}, headers)


csv_text = st.lists(
    st.text(alphabet=st.sampled_from(list(',"\r\n \x00.-+eEinaf0123456789é')), max_size=40),
    max_size=25,
).map("\n".join)


@given(
    text=csv_text,
    with_header=st.booleans(),
    forced=st.booleans(),
    first_row=st.sampled_from(["1", "1000001", "-3", "x", "9" * 30]),
)
@example(text='1,2,3,4\n"unbalanced,1,2,3\n5,6,7,8', with_header=True, forced=True, first_row="1")
@example(text="1,2,3,4\n" + "7" * 200_000 + "\n5,6,7,8", with_header=False, forced=False, first_row="1")
@example(text="1,2\r3,4\n5,6,7,8", with_header=False, forced=False, first_row="1")
def test_any_csv_text_gets_one_answer_per_record_or_a_400(
    handler, artifacts, text, with_header, forced, first_row
):
    body = (",".join(FEATURES) + "\n" + text) if with_header else text
    headers = {"Content-Type": "text/csv", "Accept": "text/csv", FIRST_ROW_HEADER: first_row}
    if forced:
        headers["X-Tabserve-Csv-Header"] = "present"
    assert_neighbours_untouched(handler, artifacts, {"body": body.encode("utf-8")}, headers)
    [(status, answer)] = run_batch(handler, artifacts, [({"body": body.encode("utf-8")}, headers)])
    if status == 200:
        records = list(split_records(body.lstrip("\ufeff")))
        header_lines = 1 if (forced or (records and _names_a_feature(records[0]))) else 0
        assert len(list(csv.reader(io.StringIO(answer)))) - 1 == len(records) - header_lines


def _names_a_feature(line: str) -> bool:
    try:
        return any(f.strip() in FEATURES for f in next(csv.reader([line]), []))
    except csv.Error:
        return False


@given(fields=st.dictionaries(st.text(max_size=30), st.binary(max_size=30), max_size=4))
def test_any_form_fields_get_their_own_answer(handler, artifacts, fields):
    """`curl -d` without a Content-Type: TorchServe hands over form fields, not a body."""
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    assert_neighbours_untouched(handler, artifacts, fields, headers)


# --- real tables: text columns, missing values, regression -----------------------------------
#
# Two models trained here in seconds: penguins (classification; categorical island and sex,
# numeric columns with missing values, `year` imputed without an indicator) and a synthetic
# regression table (numeric size and age with missing values, categorical kind with empty
# fields, and grade: numbers read as categories, spelled "1", "2.0" and "2.5").

PENGUINS = Path(__file__).resolve().parent.parent / "examples" / "penguins.csv"
TINY = FitConfig(epochs=5, patience=5)


@dataclass(eq=False, repr=False)
class Served:
    """A trained model behind its own handler, requests it answers without an error, and
    their answers when they are a batch of their own."""

    name: str
    model_dir: Path
    handler: TabularHandler
    good: list[tuple[dict, dict[str, str]]]
    alone: list[tuple[int, str, int]] = field(default_factory=list)

    def __repr__(self) -> str:  # how a failing example names its model
        return f"<{self.name} model>"

    @property
    def encoder(self) -> Encoder:
        return self.handler.predictor.encoder

    @property
    def classes(self) -> tuple[str, ...]:
        return self.handler.predictor.classes


def _prices_rows() -> list[list[str]]:
    rng = np.random.default_rng(7)
    rows = [["size", "kind", "grade", "age", "price"]]
    for i in range(240):
        size, age = rng.uniform(1, 10), int(rng.integers(0, 40))
        kind, grade = ("a", "b", "c")[i % 3], ("1", "2.0", "2.5")[i % 5 % 3]
        price = 10 * size + {"a": 0, "b": 30, "c": 60}[kind] + 4 * float(grade) - age / 2 + rng.normal()
        rows.append(
            [
                "" if i % 17 == 0 else f"{size:.3f}",
                "" if i % 13 == 0 else ("NA" if i % 29 == 0 else kind),
                grade,
                "NA" if i % 11 == 0 else str(age),
                f"{price:.3f}",
            ]
        )
    return rows


def _serve(model_dir: Path, good: list[tuple[dict, dict[str, str]]]) -> Served:
    h = TabularHandler()
    h.initialize(make_context(model_dir, []))
    s = Served(model_dir.name, model_dir, h, good)
    s.alone = run_table_batch(s, good)
    assert [(status, n) for status, _, n in s.alone] == [(200, 2), (200, 2)]
    assert all(_predicted(answer) == 2 for _, answer, _ in s.alone)
    return s


@pytest.fixture(scope="module")
def penguins(tmp_path_factory: pytest.TempPathFactory) -> Served:
    out = tmp_path_factory.mktemp("fuzz") / "penguins"
    table = load_csv(PENGUINS, "species")
    export(table, TINY, fit(table, TINY), out)
    row = {"island": "Biscoe", "bill_length_mm": 45.1, "bill_depth_mm": 14.5, "flipper_length_mm": 215.0}
    json_rows = [{**row, "body_mass_g": 5000.0, "sex": "female", "year": 2008}, {**row, "sex": None}]
    csv_body = (
        "species,sex,island,bill_length_mm,bill_depth_mm,flipper_length_mm,body_mass_g,year\n"
        "?,male,Dream,39.5,17.4,186.0,3800.0,2007\n"
        "?,,Torgersen,NA,,,,2009\n"
    )
    return _serve(
        out,
        [
            ({"body": json_rows}, {"Content-Type": "application/json"}),
            ({"body": csv_body.encode()}, {"Content-Type": "text/csv", "Accept": "text/csv"}),
        ],
    )


@pytest.fixture(scope="module")
def prices(tmp_path_factory: pytest.TempPathFactory) -> Served:
    out = tmp_path_factory.mktemp("fuzz") / "prices"
    table = table_from_rows(
        _prices_rows(), "price", source="prices.csv", name="prices", categorical=["grade"]
    )
    assert table.task == "regression" and table.roles == ("numeric", "categorical", "categorical", "numeric")
    export(table, TINY, fit(table, TINY), out)
    json_rows = [{"size": 3.5, "kind": "b", "grade": "2.5", "age": 12}, {"size": None, "kind": "zz"}]
    csv_body = "age,grade,kind,size\n3,1,a,7.25\nNA,,,4\n"
    return _serve(
        out,
        [
            ({"body": json_rows}, {"Content-Type": "application/json"}),
            ({"body": csv_body.encode()}, {"Content-Type": "text/csv", "Accept": "text/csv"}),
        ],
    )


@pytest.fixture(scope="module", params=["penguins", "prices"])
def served(request: pytest.FixtureRequest) -> Served:
    return request.getfixturevalue(request.param)


def check_table_answer(answer: object, status: int, content_type: str, classes: tuple[str, ...]) -> int:
    """A well-formed answer of a model with or without classes: strict JSON or CSV, finite
    numbers, a prediction or a row error per row. Returns the number of rows answered."""
    assert isinstance(answer, str)
    assert status in (200, 400, 413), (status, answer[:300])
    if status != 200:
        body = _strict_json(answer)
        assert body["code"] == status and body["message"]
        return 0
    if content_type.startswith("text/csv"):
        lines = list(csv.reader(io.StringIO(answer)))
        assert lines[0] == output_columns(classes)
        for *values, err in lines[1:]:
            if err:
                assert err.startswith("row ") and values == [""] * len(values)
            elif classes:
                assert values[0] in classes
                assert all(math.isfinite(float(v)) for v in values[1:])
            else:
                assert math.isfinite(float(values[0]))
        return len(lines) - 1
    assert content_type == "application/json"
    predictions = _strict_json(answer)["predictions"]
    for pred in predictions:
        if "error" in pred:
            assert pred["error"].startswith("row ") and len(pred) == 1
        elif classes:
            assert pred["label"] in classes and list(pred["probabilities"]) == list(classes)
            assert all(math.isfinite(v) for v in pred["probabilities"].values())
        else:
            assert list(pred) == ["prediction"] and math.isfinite(pred["prediction"])
    return len(predictions)


def run_table_batch(s: Served, requests) -> list[tuple[int, str, int]]:
    ctx = make_context(s.model_dir, [h for _, h in requests])
    answers = s.handler.handle([r for r, _ in requests], ctx)
    assert len(answers) == len(requests)
    out = []
    for i, answer in enumerate(answers):
        status = ctx.get_response_status(i)[0]
        ctype = ctx.get_response_content_type(i) or ""
        out.append((status, answer, check_table_answer(answer, status, ctype, s.classes)))
    return out


def _table_parts(answer: str) -> tuple[list, list[float]]:
    """An answer as its text parts (labels, errors) and its numbers, in order."""
    if answer.startswith(("label,", "prediction,")):
        text, numbers = [], []
        for line in list(csv.reader(io.StringIO(answer)))[1:]:
            for v in line:
                try:
                    numbers.append(float(v))
                except ValueError:
                    text.append(v)
        return text, numbers
    preds = json.loads(answer)["predictions"]
    text = [p.get("label", p.get("error")) for p in preds]
    numbers = [v for p in preds for v in (p.get("probabilities") or {}).values()]
    return text, numbers + [p["prediction"] for p in preds if "prediction" in p]


def _predicted(answer: str) -> int:
    if answer.startswith(("label,", "prediction,")):
        return sum(1 for line in list(csv.reader(io.StringIO(answer)))[1:] if not line[-1])
    return sum("error" not in p for p in json.loads(answer)["predictions"])


def assert_table_neighbours_untouched(s: Served, poison, headers) -> tuple[int, str, int]:
    """The good requests beside the poison get exactly their answer alone (bit for bit when
    the poison adds no row to the pooled model pass, else the same labels and errors and
    numbers within float32 rounding: a regression prediction is in the target's units)."""
    mixed = run_table_batch(s, [s.good[0], (poison, headers), s.good[1]])
    poison_rows = _predicted(mixed[1][1]) if mixed[1][0] == 200 else 0
    event(f"poison answered {mixed[1][0]}" + (", rows predicted" if poison_rows else ""))
    for (s0, a0, n0), (s1, a1, n1) in zip(s.alone, [mixed[0], mixed[2]]):
        assert s0 == s1 == 200 and n0 == n1 == 2
        if poison_rows == 0:
            assert a0 == a1
        else:
            (t0, x0), (t1, x1) = _table_parts(a0), _table_parts(a1)
            assert t0 == t1
            np.testing.assert_allclose(x0, x1, rtol=1e-5, atol=1e-6)
    return mixed[1]


def _column_names(s: Served) -> list[str]:
    return list(s.encoder.features)


def _known_text(s: Served) -> list[str]:
    """Every category of the model, the missing spellings, and a few spellings close to both."""
    cats = [v for c in s.encoder.columns for v in c.categories]
    near = [*(c.upper() for c in cats), *(f" {c} " for c in cats), " NA", "NAN", "nan ", "inf"]
    return sorted({*cats, *near, *MISSING_TOKENS})


_STRATEGIES: dict[tuple[str, str], st.SearchStrategy] = {}


def _cached(kind: str, s: Served, build) -> st.SearchStrategy:
    """Strategies are built once per model (building them per example is most of the time)."""
    key = (kind, s.name)
    if key not in _STRATEGIES:
        _STRATEGIES[key] = build()
    return _STRATEGIES[key]


def table_json_leaves(s: Served) -> st.SearchStrategy:
    return _cached(
        "leaves",
        s,
        lambda: st.one_of(
            st.none(),
            st.booleans(),
            st.floats(allow_nan=True, allow_infinity=True),
            st.integers(min_value=-(10**400), max_value=10**400),
            st.integers(min_value=-(2**70), max_value=2**70),
            st.text(max_size=12),
            st.sampled_from(_known_text(s)),
        ),
    )


def table_json_values(s: Served) -> st.SearchStrategy:
    def build():
        keys = st.sampled_from([*_column_names(s), "instances", "x", ""])
        return st.recursive(
            table_json_leaves(s),
            lambda children: st.lists(children, max_size=5) | st.dictionaries(keys, children, max_size=5),
            max_leaves=16,
        )

    return _cached("json", s, build)


def table_objects(s: Served) -> st.SearchStrategy:
    """Objects keyed by the model's columns (any subset) with any JSON values, alone, in a
    list, or under "instances"."""

    def build():
        names = _column_names(s)
        leaf = table_json_leaves(s)
        value = st.one_of(leaf, leaf, leaf, leaf, table_json_values(s))  # mostly one value each
        row = st.dictionaries(st.sampled_from(names), value, min_size=1, max_size=len(names))
        rows = st.lists(row, min_size=1, max_size=4)
        return rows.map(lambda r: r[0]) | rows | rows.map(lambda r: {"instances": r})

    return _cached("objects", s, build)


FIELD_CHARS = st.text(alphabet=st.sampled_from(list(',"\r\n \x00.-+eEinaf0123456789éNAB')), max_size=8)


def _cells(s: Served) -> st.SearchStrategy:
    return _cached("cells", s, lambda: st.sampled_from(_known_text(s)) | st.text(max_size=10) | FIELD_CHARS)


@st.composite
def table_csv_text(draw, s: Served) -> str:
    """CSV text under a header of the model's columns (any order, maybe one extra column),
    rows of any field text and about the header's width, as the csv module writes them with
    LF or CRLF line ends (with LF it leaves a field's bare CR unquoted)."""
    names = draw(st.permutations(_column_names(s)))
    if draw(st.booleans()):
        names = [*names, "extra"]
    rows = draw(st.lists(st.lists(_cells(s), min_size=len(names) - 1, max_size=len(names) + 1), max_size=6))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
    writer.writerow(names)
    writer.writerows(rows)
    return out.getvalue()


def table_bodies(s: Served) -> st.SearchStrategy:
    def build():
        encode = lambda text: text.encode("utf-8", "surrogatepass")  # noqa: E731
        return st.one_of(
            st.binary(max_size=600),
            st.text(max_size=200).map(encode),
            (table_objects(s) | table_json_values(s)).map(lambda v: json.dumps(v).encode()),
            table_csv_text(s).map(encode),
        )

    return _cached("bodies", s, build)


@given(data=st.data(), ctype=st.sampled_from(CONTENT_TYPES), csv_answer=st.booleans())
def test_real_tables_any_body_gets_its_own_answer(served, data, ctype, csv_answer):
    """Any bytes, text, serialised JSON (objects keyed by the real columns included; NaN and
    Infinity as Python writes them) or CSV under the real header, in any content type: a
    well-formed answer of its own, finite numbers only, and the good requests beside it
    answered as if it were not there."""
    body = data.draw(table_bodies(served), label="body")
    headers = {"Content-Type": ctype, **({"Accept": "text/csv"} if csv_answer else {})}
    assert_table_neighbours_untouched(served, {"body": body}, headers)


@given(data=st.data(), csv_answer=st.booleans())
def test_real_tables_any_json_value_gets_its_own_answer(served, data, csv_answer):
    """application/json bodies arrive already parsed: objects keyed by the real columns with
    any JSON values (NaN, infinities, huge integers, nested lists, category spellings), and
    lists of any values."""
    value = data.draw(table_objects(served) | table_json_values(served), label="value")
    headers = {"Content-Type": "application/json", **({"Accept": "text/csv"} if csv_answer else {})}
    status, answer, n = assert_table_neighbours_untouched(served, {"body": value}, headers)
    expected = _json_row_count(value, served.encoder.features)
    assert status == 400 if expected is None else (status == 400 or n == expected), (status, answer[:300])


def _json_row_count(value, features) -> int | None:
    """How many rows a JSON body holds (a 200 answers each), None for no rows at all (400)."""
    if isinstance(value, dict):
        if "instances" in value:
            rows = value["instances"]
            return len(rows) if isinstance(rows, list) and rows else None
        return 1 if any(f in value for f in features) else None
    if isinstance(value, list) and value:
        return len(value) if any(isinstance(v, (list, dict)) for v in value) else 1
    return None


# CSV and JSON agree. A value drawn for one column is sent as a JSON value and as the text of
# a CSV field (ABSENT: a key left out of the object, an empty field in CSV).
ABSENT = object()


def _csv_text(v) -> str:
    if v is None or v is ABSENT:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return v if isinstance(v, str) else json.dumps(v)  # a number as the JSON body spells it


def _parses_as_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def agreeing_rows(s: Served) -> st.SearchStrategy:
    """1 to 4 rows of values from {known categories (as trained, upper case), unseen text,
    missing tokens (bare or padded), finite floats, integers, booleans, JSON null, a
    left-out key}, with the restrictions that make the CSV and JSON spellings mean the same
    (see the test)."""

    def build():
        cats = sorted({v for c in s.encoder.columns for v in c.categories})
        tokens = sorted(MISSING_TOKENS)
        padded = st.tuples(st.sampled_from(tokens), st.sampled_from([" ", "\t", "  "]))
        missing = st.sampled_from(tokens) | padded.map(lambda t: t[1] + t[0] + t[1])

        def words(cats: list[str]) -> st.SearchStrategy:
            return st.sampled_from(cats) | st.sampled_from(cats).map(str.upper) | st.text(max_size=8)

        finite = st.floats(allow_nan=False, allow_infinity=False)
        # Non-integral floats: every float beyond 2**52 is integral.
        fractional = st.floats(min_value=-(2.0**52), max_value=2.0**52).map(
            lambda x: x + 0.5 if x.is_integer() else x
        )
        ints = st.integers(-(2**63), 2**63)
        absent = st.none() | st.just(ABSENT)
        per_column = {}
        for c in s.encoder.columns:
            if c.role == "numeric":
                # JSON text in a numeric column is an error unless a missing spelling, a CSV
                # field is read with float(): only text float() refuses means the same.
                text = words([v for v in cats if not _parses_as_float(v)])
                text = text.filter(lambda t: is_missing_text(t) or not _parses_as_float(t))
                # Mostly values that are no error, so that many rows are good in every column.
                per_column[c.name] = st.one_of(
                    finite, finite, ints, absent, missing, missing, text, st.booleans()
                )
            else:
                per_column[c.name] = st.one_of(words(cats), missing, fractional, ints, absent, st.booleans())
        return st.lists(st.fixed_dictionaries(per_column), min_size=1, max_size=4)

    return _cached("agreeing", s, build)


@given(data=st.data())
def test_real_tables_csv_and_json_encode_a_row_alike(served, data):
    """The same row sent as a CSV line (under a header, columns in any order), as a JSON
    object and as a JSON list gives the same network inputs, the same error-or-not (naming
    the same column) and the same unseen-category counts, whatever rows are beside it.

    Restrictions, where the two spellings do not mean the same by design: in a numeric
    column, no text that float() reads (JSON "1.5" is text, an error; CSV "1.5" a number; so
    are "NAN", "inf" and "1_0"); in a categorical column, no integral float (JSON 2.0 is the
    category "2", the CSV text "2.0" the category "2.0"), no integer beyond 64 bits and no
    infinity (JSON refuses them as categories, CSV reads their text as an unseen category);
    and every JSON object keeps at least one of the model's columns (an object with none of
    them is an error, while an all-empty CSV line is a row of missing values). Numbers are
    spelled in CSV as JSON spells them, booleans as true/false, null and a left-out key as
    an empty field."""
    enc = served.encoder
    rows = data.draw(agreeing_rows(served), label="rows")
    objects = [{k: v for k, v in r.items() if v is not ABSENT} for r in rows]
    assume(all(objects))
    order = data.draw(st.permutations(list(enc.features)), label="header order")
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(order)
    for r in rows:
        writer.writerow([_csv_text(r[f]) for f in order])
    text = out.getvalue()
    from_text, from_objects = from_csv(text, enc), from_json(objects, enc)
    event(f"{sum(e is None for e in from_text.errors)} of {len(rows)} rows good")
    assert [e is None for e in from_text.errors] == [e is None for e in from_objects.errors], (
        from_text.errors,
        from_objects.errors,
    )
    assert [_failing_column(e) for e in from_text.errors] == [_failing_column(e) for e in from_objects.errors]
    np.testing.assert_array_equal(from_text.values, from_objects.values)
    assert from_text.unseen == from_objects.unseen  # only the rows predicted with OTHER
    positional = from_json([[None if r[f] is ABSENT else r[f] for f in enc.features] for r in rows], enc)
    assert positional.errors == from_objects.errors
    np.testing.assert_array_equal(positional.values, from_objects.values)
    for i, r in enumerate(rows):  # each row alone: the same as beside the others
        alone = io.StringIO()
        csv.writer(alone).writerows([order, [_csv_text(r[f]) for f in order]])
        one = from_csv(alone.getvalue(), enc)
        assert (one.errors[0] is None) == (from_text.errors[i] is None)
        np.testing.assert_array_equal(one.values[0], from_text.values[i])


def _failing_column(error: str | None) -> str | None:
    if error is None:
        return None
    return error.split("feature ", 1)[1].split(" ", 1)[0] if "feature " in error else error


@given(data=st.data(), csv_answer=st.booleans(), first_row=st.sampled_from([None, 1, 41, 10**15]))
def test_real_tables_every_csv_record_gets_one_result(served, data, csv_answer, first_row):
    """Rows of any field text (quotes, commas, CR, LF, NUL, category and missing spellings),
    any number of fields, written by the csv module under a header of the columns in any
    order: one result per record, in order (a row error names its own row, counted from
    X-Tabserve-First-Row), and a good row placed among them gets the answer it gets alone."""
    names = data.draw(st.permutations(list(served.encoder.features)), label="header")
    request, _ = served.good[0]
    good = [_csv_text(request["body"][0].get(f)) for f in names]
    junk = _cached("junk rows", served, lambda: st.lists(_cells(served), max_size=len(names) + 2))
    rows = data.draw(st.lists(junk | st.just(good), max_size=8), label="rows")
    out = io.StringIO()
    csv.writer(out).writerows([names, *rows])
    headers = {"Content-Type": "text/csv", **({"Accept": "text/csv"} if csv_answer else {})}
    if first_row is not None:
        headers[FIRST_ROW_HEADER] = str(first_row)
    [(status, answer, n)] = run_table_batch(served, [({"body": out.getvalue().encode()}, headers)])
    assert status == 200, answer
    assert n == len(rows)
    expected = _good_row_alone(served, csv_answer)
    for i, (r, result) in enumerate(zip(rows, _results(answer))):
        error = result.get("error") if isinstance(result, dict) else result[-1]
        if error:
            assert error.startswith(f"row {(first_row or 1) + i}: "), (i, error)
        if r is good:
            _assert_same_result(result, expected)


_GOOD_ALONE: dict[tuple[str, bool], object] = {}


def _good_row_alone(s: Served, csv_answer: bool):
    """The result of the first good JSON row sent alone, as CSV, answered in CSV or JSON."""
    key = (s.name, csv_answer)
    if key not in _GOOD_ALONE:
        request, _ = s.good[0]
        names = list(s.encoder.features)
        out = io.StringIO()
        csv.writer(out).writerows([names, [_csv_text(request["body"][0].get(f)) for f in names]])
        headers = {"Content-Type": "text/csv", **({"Accept": "text/csv"} if csv_answer else {})}
        [(status, answer, _)] = run_table_batch(s, [({"body": out.getvalue().encode()}, headers)])
        assert status == 200 and _predicted(answer) == 1
        [_GOOD_ALONE[key]] = _results(answer)
    return _GOOD_ALONE[key]


def _results(answer: str) -> list:
    if answer.startswith(("label,", "prediction,")):
        return list(csv.reader(io.StringIO(answer)))[1:]
    return json.loads(answer)["predictions"]


def _assert_same_result(got, expected) -> None:
    """The same prediction, within float32 rounding (the row's pass held other rows)."""
    if isinstance(got, dict):
        got, expected = _result_cells(got), _result_cells(expected)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        try:
            x, y = float(a), float(b)
        except (TypeError, ValueError):
            assert a == b
        else:
            assert x == pytest.approx(y, rel=1e-5, abs=1e-6)


def _result_cells(pred: dict) -> list:
    if "error" in pred:
        return [pred["error"]]
    if "prediction" in pred:
        return [pred["prediction"]]
    return [pred["label"], *pred["probabilities"].values()]


def test_a_json_number_finds_a_category_spelled_with_a_decimal_point(prices):
    """grade was trained on the texts "1", "2.0" and "2.5"; JSON 2.0 and 2 mean the category
    "2.0" as surely as the CSV field 2.0 does."""
    enc = prices.encoder
    csv_rows = from_csv("size,kind,grade,age\n5,a,2.0,3\n", enc)
    for number in (2.0, 2):
        json_rows = from_json([{"size": 5, "kind": "a", "grade": number, "age": 3}], enc)
        np.testing.assert_array_equal(json_rows.values, csv_rows.values)


def test_a_failed_csv_row_counts_no_unseen_category(prices):
    """X-Tabserve-Unseen counts the values predicted with the OTHER input, as from_json does:
    a row that fails on another column is not predicted, so its category is not counted."""
    enc = prices.encoder
    as_json = from_json([{"size": "abc", "kind": "zz", "grade": "1", "age": 3}], enc)
    as_csv = from_csv("size,kind,grade,age\nabc,zz,1,3\n", enc)
    assert as_json.errors[0] and as_csv.errors[0] and as_json.unseen == {}
    assert as_csv.unseen == as_json.unseen


def test_csv_answer_keeps_its_columns_when_class_labels_hold_commas_and_quotes(tmp_path):
    """Class labels are any text of the target column but a line break (refused in training,
    below); the CSV answer must still read back as the header's columns."""
    labels = ["Adelie, Pygoscelis", 'say "hi"', "plain"]
    rng = np.random.default_rng(0)
    rows = [["x", "colour", "species"]]
    rows += [[f"{rng.normal() + i % 3:.3f}", ("red", "blue")[i % 2], labels[i % 3]] for i in range(60)]
    table = table_from_rows(rows, "species", source="odd.csv", name="odd")
    export(table, TINY, fit(table, TINY), tmp_path)
    s = _serve_plain(tmp_path)
    headers = {"Content-Type": "text/csv", "Accept": "text/csv"}
    [(status, answer, _)] = run_table_batch(s, [({"body": b"x,colour\n0.5,red\n1.5,blue\n"}, headers)])
    assert status == 200
    records = list(csv.reader(io.StringIO(answer)))
    assert records[0] == output_columns(s.classes) and len(records) == 3
    assert all(len(r) == len(records[0]) and r[0] in s.classes for r in records[1:])
    rows[1][2] = rows[4][2] = rows[7][2] = rows[10][2] = rows[13][2] = "two\nlines"
    with pytest.raises(DataError, match="class label\\(s\\) 'two\\\\nlines' of 'species' hold a line break"):
        table_from_rows(rows, "species", source="odd.csv", name="odd")


def _serve_plain(model_dir: Path) -> Served:
    h = TabularHandler()
    h.initialize(make_context(model_dir, []))
    return Served(model_dir.name, model_dir, h, [])
