"""Request decoding and per-row validation (handler/rows.py), called directly."""

from __future__ import annotations

import numpy as np
import pytest

from tabserve.handler.rows import BadRequest, decode, from_csv, from_json

F = ("a", "b", "c")


def test_single_json_row_and_list_of_rows_and_instances_agree():
    one = from_json([1, 2, 3], F)
    many = from_json([[1, 2, 3], [4, 5, 6]], F)
    inst = from_json({"instances": [{"c": 3, "a": 1, "b": 2}, [4, 5, 6]]}, F)
    assert one.values.tolist() == [[1, 2, 3]]
    assert many.values.tolist() == inst.values.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert one.errors == [None]
    assert many.errors == inst.errors == [None, None]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ([1, 2], "row 2: expected 3 features, got 2"),
        ({"a": 1, "b": 2}, "row 2: missing feature 'c'"),
        ([1, "x", 3], "row 2: feature 'b' is not a number: \"x\""),
        ([1, None, 3], "row 2: feature 'b' is not a number: null"),
        ([1, True, 3], "row 2: feature 'b' is not a number: true"),
        ([1, float("nan"), 3], "row 2: feature 'b' is not finite: nan"),
        ([1, 2, float("inf")], "row 2: feature 'c' is not finite: inf"),
        (7, "row 2: expected a list of 3 numbers or an object keyed by feature names, got 7"),
    ],
)
def test_bad_json_row_gets_its_own_error_and_neighbours_are_kept(row, message):
    rows = from_json([[1, 2, 3], row, [4, 5, 6]], F)
    assert rows.errors == [None, message, None]
    assert rows.ok.tolist() == [True, False, True]
    assert rows.values[2].tolist() == [4, 5, 6]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ([], "empty list"),
        ({}, "none of the model's features"),
        ({"instances": []}, '"instances" must be a non-empty list'),
        ({"instances": 5}, '"instances" must be a non-empty list'),
        ("5", "got a JSON number"),
    ],
)
def test_unreadable_bodies_raise_bad_request_saying_what_was_expected(body, expected):
    with pytest.raises(BadRequest, match="expected JSON") as info:
        decode(body, "application/json", F)
    assert expected in str(info.value)


def test_text_that_is_not_json_is_read_as_csv_rows_with_row_errors():
    assert decode("not json {", "text/csv", F).errors == ["row 1: expected 3 fields, got 1"]


def test_invalid_json_text_and_empty_body_are_bad_requests():
    with pytest.raises(BadRequest, match="not valid JSON"):
        decode(b"[1, 2,", "application/json", F)
    with pytest.raises(BadRequest, match="empty body"):
        decode(b"  \n", "text/csv", F)
    with pytest.raises(BadRequest, match="not UTF-8"):
        decode(b"\xff\xfe", "text/csv", F)


def test_csv_header_matches_columns_by_name_in_any_order_ignoring_extras():
    rows = from_csv("id,c,a,extra,b\n7,3,1,zz,2\n8,6,4,yy,5\n", F)
    assert rows.values.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert rows.errors == [None, None]


def test_csv_without_header_is_positional():
    rows = from_csv("1,2,3\n4,5,6\n", F)
    assert rows.values.tolist() == [[1, 2, 3], [4, 5, 6]]


def test_csv_header_missing_a_feature_is_a_bad_request():
    with pytest.raises(BadRequest, match="lacks feature column\\(s\\) 'c'"):
        from_csv("a,b\n1,2\n", F)


def test_csv_malformed_rows_are_named_and_counted_one_per_record():
    text = "a,b,c\n1,2,3\n1,2\n\n1,,3\n1,x,3\n1,2,nan\n1,2,-inf\n4,5,6\n"
    rows = from_csv(text, F)
    assert rows.errors == [
        None,
        "row 2: expected 3 fields, got 2",
        "row 3: empty line",
        "row 4: feature 'b' is empty",
        "row 5: feature 'b' is not a number: 'x'",
        "row 6: feature 'c' is not finite: 'nan'",
        "row 7: feature 'c' is not finite: '-inf'",
        None,
    ]
    assert rows.values[0].tolist() == [1, 2, 3] and rows.values[7].tolist() == [4, 5, 6]
    assert np.all(rows.values[1:7] == 0)


def test_first_row_offsets_the_numbers_in_messages():
    rows = from_csv("1,2\n", F, first_row=1001)
    assert rows.errors == ["row 1001: expected 3 fields, got 2"]


def test_plain_csv_fast_path_agrees_with_the_careful_path_and_declines_bad_input():
    import csv
    import io

    from tabserve.handler.rows import _from_plain_csv, from_records

    text = "id,c,a,b\n1,3.5,1e-3, 2\n2,-0.0,4,5.25\n"
    fast = _from_plain_csv(text, F, None)
    records = list(csv.reader(io.StringIO(text)))
    careful = from_records(records[1:], F, [2, 3, 1], 4)
    assert fast is not None and fast.errors == careful.errors == [None, None]
    assert fast.values.tolist() == careful.values.tolist()
    for bad in ["1,2,3,x\n", "1,2,3\n", "1,2,,4\n", "1,nan,3,4\n", "\n", "1,2,3,4,5\n"]:
        assert _from_plain_csv(text + bad, F, None) is None, bad
