"""Property-based tests of the handler's containment boundary: whatever one request holds
(arbitrary bytes, any JSON value, CSV text with quotes, CRs and NULs, any content type), it
gets an answer of its own, the requests beside it in the same TorchServe batch are answered
exactly as if it were not there, and no answer holds NaN or infinity.

Examples per property: the "ci" profile in conftest.py (HYPOTHESIS_PROFILE=deep for more).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tabserve.handler.entry import TabularHandler
from tabserve.handler.rows import FIRST_ROW_HEADER, split_records

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
