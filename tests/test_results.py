"""The batch answer (handler.response.to_batch) and how every engine reads it
(tabserve.batch.results): the round trip, the row errors, and any bytes that are not one."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tabserve.batch.results import AnswerError, Results, from_batch, render_rows, result_fields
from tabserve.handler.response import BATCH_TYPE, output_columns, to_batch, to_csv

CLASSES = ("setosa", "vers,icolor", 'vir"ginica')


def _probs(n: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = rng.random((n, k)).astype(np.float32).astype(np.float64)
    return p / p.sum(axis=1, keepdims=True)


def test_the_batch_answer_is_an_npy_array_then_a_json_trailer():
    probs = _probs(3, 3)
    errors = [None, "row 2: feature 'x' is empty", None]
    body = to_batch(probs, errors, CLASSES)
    f = io.BytesIO(body)
    values = np.lib.format.read_array(f, allow_pickle=False)  # numpy reads it, without pickle
    trailer = json.loads(f.read())
    assert values.dtype == np.float64 and values.shape == (3, 3)
    assert np.array_equal(values[[0, 2]], probs[[0, 2]]) and np.isnan(values[1]).all()
    assert trailer == {"columns": output_columns(CLASSES), "errors": [[1, "row 2: feature 'x' is empty"]]}
    assert BATCH_TYPE == "application/x-tabserve-npy"


def test_batch_results_equal_the_csv_answer_field_for_field():
    """The numbers, labels and errors read from the batch answer are the handler's CSV
    answer's, value for value (the label: the first class of highest probability)."""
    probs = _probs(50, 3, seed=1)
    probs[7] = [0.25, 0.5, 0.25]
    probs[8] = [0.5, 0.5, 0.0]  # a tie: the first class, as argmax
    errors = [None] * 50
    errors[3] = 'row 4: a "quoted", bad value'
    results = from_batch(to_batch(probs, errors, CLASSES), 50, {"island": 2})
    rows = list(csv.reader(io.StringIO(to_csv(probs, errors, CLASSES))))[1:]
    columns = output_columns(CLASSES)
    for i, row in enumerate(rows):
        if i == 3:
            assert results.errors == {3: errors[3]} and results.labels[3] == -1
            assert row[-1] == errors[3]
            continue
        assert CLASSES[results.labels[i]] == row[0]
        assert [float(v) for v in row[1:-1]] == results.values[i].tolist()
    assert results.unseen == {"island": 2}
    # And written out again, the same fields parse back to the same values.
    fields = list(csv.reader(io.StringIO(b"\n".join(result_fields(results, columns)).decode())))
    for i, row in enumerate(fields):
        if i == 3:
            assert row == ["", "", "", "", errors[3]]
        else:
            assert row[0] == CLASSES[results.labels[i]]
            assert [float(v) for v in row[1:-1]] == results.values[i].tolist()


def test_regression_and_empty_answers():
    preds = np.array([[21.25], [-3.5e-7], [1e300]])
    results = from_batch(to_batch(preds, [None, None, "row 3: bad"], ()), 3)
    assert results.labels is None and results.errors == {2: "row 3: bad"}
    assert results.values[:2, 0].tolist() == [21.25, -3.5e-7]
    assert render_rows(None, results, ["prediction", "error"]) == b"21.25,\n-3.5e-7,\n,row 3: bad\n"
    empty = from_batch(to_batch(np.zeros((0, 3)), [], CLASSES), 0)
    assert len(empty) == 0 and render_rows([], empty, output_columns(CLASSES)) == b""


def test_an_answer_for_another_number_of_rows_is_refused():
    body = to_batch(_probs(4, 3), [None] * 4, CLASSES)
    with pytest.raises(AnswerError, match="4, 3"):
        from_batch(body, 5)


def test_render_rows_puts_each_row_after_its_input_text():
    probs = _probs(4, 3, seed=2)
    errors = [None, None, "row 3: x", None]
    results = from_batch(to_batch(probs, errors, CLASSES), 4)
    columns = output_columns(CLASSES)
    prefix = [b"a,1", b'"b,c",2', b"d,3", b"e,4"]
    block = render_rows(prefix, results, columns)
    assert block == b"".join(p + b"," + f + b"\n" for p, f in zip(prefix, result_fields(results, columns)))
    lines = list(csv.reader(io.StringIO(block.decode())))
    assert [r[:2] for r in lines] == [["a", "1"], ["b,c", "2"], ["d", "3"], ["e", "4"]]
    assert [r[2] for r in lines] == [CLASSES[k] if k >= 0 else "" for k in results.labels.tolist()]
    assert lines[2][2:] == ["", "", "", "", "row 3: x"]


@given(st.binary(max_size=400))
def test_any_bytes_that_are_not_a_batch_answer_raise_answer_error_only(data):
    try:
        results = from_batch(data, 2)
    except AnswerError:
        return
    assert isinstance(results, Results) and len(results) == 2  # bytes that happen to be one


@given(
    n=st.integers(0, 30),
    classes=st.lists(
        st.text(min_size=1, max_size=8).filter(lambda c: "\n" not in c and "\r" not in c),
        min_size=1,
        max_size=4,
        unique=True,
    ),
    data=st.data(),
)
def test_round_trip_for_any_classes_and_errors(n, classes, data):
    probs = _probs(n, len(classes), seed=n)
    errors = [data.draw(st.one_of(st.none(), st.text(max_size=20))) for _ in range(n)]
    results = from_batch(to_batch(probs, errors, classes), n)
    assert results.errors == {i: e for i, e in enumerate(errors) if e is not None}
    ok = [i for i in range(n) if errors[i] is None]
    assert np.array_equal(results.values[ok], probs[ok])
    assert results.labels[ok].tolist() == probs[ok].argmax(axis=1).tolist()
    text = render_rows(None, results, output_columns(classes)).decode()
    rows = list(csv.reader(io.StringIO(text)))
    assert len(rows) == n
    for i, row in enumerate(rows):
        assert len(row) == len(classes) + 2
        assert row[-1] == (errors[i] or "")


@pytest.mark.parametrize(
    "accept, kind",
    [
        ("application/x-tabserve-npy", "batch"),
        ("application/x-tabserve-npy, */*", "batch"),
        ("text/html, text/csv;q=0.9", "csv"),
        ("*/*", "json"),
        ("", "json"),
        ("application/json, application/x-tabserve-npy", "json"),
        ("image/png", "json"),
    ],
)
def test_the_answer_is_the_first_accepted_type_tabserve_answers_in(accept, kind):
    from tabserve.handler.entry import _answer_kind

    assert _answer_kind(accept) == kind
