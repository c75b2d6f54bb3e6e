"""Real tables: column roles and refusals, categories, missing values and regression, from
training to the handler (called directly here; the engines and TorchServe are in
test_tables_engines.py)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tabserve.cli import main
from tabserve.handler.columns import MISSING_TOKENS, Column, Encoder
from tabserve.handler.predictor import Predictor
from tabserve.handler.rows import decode, from_csv, from_json
from tabserve.handler.schema import Schema
from tabserve.train.config import FitConfig
from tabserve.train.data import DataError, load_csv, table_from_rows
from tabserve.train.export import export
from tabserve.train.fit import fit

PENGUINS = Path(__file__).resolve().parent.parent / "examples" / "penguins.csv"
FAST = FitConfig(epochs=30, patience=5)


def _rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


@pytest.fixture(scope="module")
def penguins(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("penguins")
    table = load_csv(PENGUINS, "species")
    export(table, FAST, fit(table, FAST), out)
    return out


# --- roles ------------------------------------------------------------------------------------


def test_penguins_roles_are_inferred_from_the_raw_file():
    table = load_csv(PENGUINS, "species")
    roles = dict(zip(table.features, table.roles))
    assert roles == {
        "island": "categorical",
        "bill_length_mm": "numeric",
        "bill_depth_mm": "numeric",
        "flipper_length_mm": "numeric",
        "body_mass_g": "numeric",
        "sex": "categorical",
        "year": "numeric",
    }
    assert table.task == "classification" and table.classes == ("Adelie", "Chinstrap", "Gentoo")
    assert len(table.records) == 344  # rows with missing features are kept (and imputed)


def test_every_problem_of_a_table_is_reported_in_one_run():
    base = _rows(PENGUINS.read_text())
    header = base[0] + ["name", "row_id", "code", "weight"]
    rows = [header]
    for i, rec in enumerate(base[1:]):
        rows.append(rec + [f"bird {i}", str(i + 1), f"c{i % 60}", "abc" if i == 7 else str(i * 1.5)])
    rows.append(["Adelie", "Dream"])  # a short line
    with pytest.raises(DataError) as info:
        table_from_rows(rows, "species", source="birds.csv", name="birds", drop=["nonexistent"])
    message = str(info.value)
    assert message.startswith("birds.csv: 6 problems:")
    for part in (
        "--drop nonexistent: no such column",
        "1 line(s) do not have the header's 12 fields: line 346 has 2",
        "column 'name' looks like an identifier (344 distinct values in 344 rows): --drop name",
        "column 'row_id' looks like a row number (1, 2, ... one up in every row): --drop row_id",
        "column 'code' has 60 distinct values, more than --max-categories 50: --drop code, "
        "or --max-categories 60",
        "column 'weight' holds numbers but 1 value(s) are not (line 9: 'abc'): fix them, or "
        "--categorical weight",
    ):
        assert part in message, part


def test_flags_fix_what_they_name():
    base = _rows(PENGUINS.read_text())
    rows = [base[0] + ["name", "code"]]
    rows += [rec + [f"bird {i}", f"c{i % 60}"] for i, rec in enumerate(base[1:])]
    table = table_from_rows(
        rows, "species", source="t", name="t", drop=["name"], max_categories=60, categorical=["year"]
    )
    roles = dict(zip(table.features, table.roles))
    assert "name" not in roles and roles["code"] == "categorical" and roles["year"] == "categorical"


@pytest.mark.parametrize(
    ("values", "task"),
    [
        (["a", "b"] * 10, "classification"),
        ([str(i % 3) for i in range(30)], "classification"),
        ([str(i % 25) for i in range(50)], "regression"),  # more than 20 distinct integers
        ([f"{i / 7:.3f}" for i in range(30)], "regression"),
    ],
)
def test_task_is_classification_for_text_or_few_integers_else_regression(values, task):
    rows = [["x", "y"]] + [[str(i % 5), v] for i, v in enumerate(values)]
    assert table_from_rows(rows, "y", source="t", name="t").task == task


def test_rows_without_a_target_are_left_out_and_said_so():
    rows = [["x", "y"]] + [[str(i % 7), "a" if i % 2 else "b"] for i in range(20)] + [["1", ""], ["2", "NA"]]
    table = table_from_rows(rows, "y", source="t", name="t")
    assert len(table.records) == 20
    assert any("2 row(s) with no 'y' value left out" in n for n in table.notes)


# --- encoding ---------------------------------------------------------------------------------


def test_encoding_is_learnt_on_the_training_split_only(penguins: Path):
    schema = Schema.load(penguins)
    table = load_csv(PENGUINS, "species")
    result = fit(table, FAST)
    j = table.features.index("bill_length_mm")
    train_values = [float(table.records[i][j]) for i in result.train_index if table.records[i][j]]
    col = {c.name: c for c in schema.columns}["bill_length_mm"]
    assert col.fill == pytest.approx(float(np.median(train_values)))
    assert col.indicator  # training had a missing value here
    assert {c.name: c for c in schema.columns}["sex"].missing_slot


def test_every_missing_spelling_is_missing_not_an_error(penguins: Path):
    predictor = Predictor(penguins)
    header = ",".join(predictor.features)
    base = "Biscoe,45.1,14.5,215,5000,female,2007"
    lines = [base]
    for token in sorted(MISSING_TOKENS):
        quoted = f'"{token}"' if token == "" else token
        lines.append(f"Biscoe,{quoted},14.5,215,5000,female,2007")
        lines.append(f"Biscoe,45.1,14.5,215,5000,{quoted},2007")
    rows = from_csv(header + "\n" + "\n".join(lines) + "\n", predictor.encoder)
    assert rows.errors == [None] * len(lines)
    probs, errors = predictor.predict_rows(rows)
    assert errors == [None] * len(lines) and np.isfinite(probs).all()
    # JSON: null, NaN, a missing key and the text spellings are missing too.
    obj = dict(zip(predictor.features, ["Biscoe", 45.1, 14.5, 215, 5000, "female", 2007]))
    variants = [
        {**obj, "bill_length_mm": None},
        {**obj, "bill_length_mm": float("nan")},
        {k: v for k, v in obj.items() if k != "bill_length_mm"},
        {**obj, "bill_length_mm": "NA"},
        {**obj, "sex": None},
        {k: v for k, v in obj.items() if k != "sex"},
    ]
    rows = from_json(variants, predictor.encoder)
    assert rows.errors == [None] * len(variants)
    # A missing numeric value is the training median plus the indicator.
    enc = predictor.encoder
    j = enc.features.index("bill_length_mm")
    col = enc.columns[j]
    assert rows.values[0, enc.offsets[j]] == col.fill and rows.values[0, enc.offsets[j] + 1] == 1.0


def test_text_infinity_and_overflow_stay_row_errors(penguins: Path):
    enc = Predictor(penguins).encoder
    header = ",".join(enc.features)
    text = (
        header
        + "\n"
        + "\n".join(
            [
                "Biscoe,abc,14.5,215,5000,female,2007",
                "Biscoe,inf,14.5,215,5000,female,2007",
                "Biscoe,1e999,14.5,215,5000,female,2007",
                "Biscoe,45.1,14.5,215,5000,female,2007",
            ]
        )
    )
    rows = from_csv(text + "\n", enc)
    assert rows.errors == [
        "row 1: feature 'bill_length_mm' is not a number: 'abc'",
        "row 2: feature 'bill_length_mm' is not finite: 'inf'",
        "row 3: feature 'bill_length_mm' is not finite: '1e999'",
        None,
    ]
    rows = from_json([{"island": "Biscoe", "bill_length_mm": [1]}, {"island": {"a": 1}}], enc)
    assert rows.errors[0] == "row 1: feature 'bill_length_mm' is not a number: a list of 1 item"
    assert (
        rows.errors[1] == "row 2: feature 'island' is not a category (text or a number): an object of 1 item"
    )


def test_unseen_categories_are_predicted_as_other_and_counted(penguins: Path):
    predictor = Predictor(penguins)
    header = ",".join(predictor.features)
    text = header + "\nAtlantis,45.1,14.5,215,5000,female,2007\nBiscoe,45.1,14.5,215,5000,unknown,2007\n"
    text += "biscoe,45.1,14.5,215,5000,FEMALE,2007\n"  # case differs: the same category
    rows = from_csv(text, predictor.encoder)
    assert rows.errors == [None, None, None] and rows.unseen == {"island": 1, "sex": 1}
    enc = predictor.encoder
    j = enc.features.index("island")
    assert rows.values[0, enc.offsets[j]] == 1.0  # OTHER
    assert rows.values[2, enc.offsets[j] + 1] == 1.0  # Biscoe, the first category
    probs, errors = predictor.predict_rows(rows)
    assert errors == [None] * 3 and np.allclose(probs.sum(axis=1), 1.0)
    json_rows = from_json([{"island": "Atlantis", "sex": "male"}, {"island": 3}], enc)
    assert json_rows.errors == [None, None] and json_rows.unseen == {"island": 2}


def test_json_and_csv_encode_a_row_the_same(penguins: Path):
    enc = Predictor(penguins).encoder
    header = ",".join(enc.features)
    csv_rows = from_csv(header + "\nDream,,17.1,NA,3900,male,2008\n", enc)
    obj = {"island": "Dream", "bill_depth_mm": 17.1, "flipper_length_mm": None, "body_mass_g": 3900}
    json_rows = from_json({**obj, "sex": "male", "year": 2008}, enc)
    list_rows = from_json([["Dream", None, 17.1, "NA", 3900, "male", 2008]], enc)
    assert np.array_equal(csv_rows.values, json_rows.values)
    assert np.array_equal(csv_rows.values, list_rows.values)


def test_an_object_with_none_of_the_columns_is_its_row_error(penguins: Path):
    enc = Predictor(penguins).encoder
    rows = from_json([{"island": "Dream"}, {"isle": "Dream"}], enc)
    assert rows.errors[0] is None and "none of the model's columns" in rows.errors[1]


def test_missing_error_makes_missing_values_row_errors(tmp_path: Path):
    clean = [r for r in _rows(PENGUINS.read_text()) if all(v and v != "NA" for v in r)]
    path = tmp_path / "clean.csv"
    path.write_text("\n".join(",".join(r) for r in clean) + "\n")
    table = load_csv(path, "species", missing="error")
    export(table, FAST, fit(table, FAST), tmp_path / "out")
    enc = Predictor(tmp_path / "out").encoder
    rows = decode(
        "island,bill_length_mm,bill_depth_mm,flipper_length_mm,body_mass_g,sex,year\n"
        "Dream,,17.1,190,3900,,2008\n",
        "text/csv",
        enc,
    )
    assert rows.errors == ["row 1: feature 'bill_length_mm' is empty"]
    rows = from_json({"island": "Dream", "sex": None}, enc)
    assert rows.errors == [
        "row 1: missing feature 'bill_length_mm', 'bill_depth_mm', 'flipper_length_mm', 'body_mass_g', 'year'"
    ]
    # And a table with missing values is refused for --missing error, naming the columns.
    with pytest.raises(DataError, match="column 'sex' has 11 missing value"):
        load_csv(PENGUINS, "species", missing="error")


def test_rare_categories_share_other_and_other_has_learnt_weights(tmp_path: Path):
    rng = np.random.default_rng(0)
    rows = [["colour", "x", "y"]]
    for i in range(400):
        colour = ["red", "green", "blue"][i % 3] if i % 50 else f"rare{i}"
        x = rng.normal()
        rows.append([colour, f"{x:.4f}", "yes" if x + (colour == "red") > 0.5 else "no"])
    table = table_from_rows(rows, "y", source="t", name="t")
    result = fit(table, FAST)
    col = result.columns[0]
    assert col.categories == ("blue", "green", "red")  # the rare ones have fewer than 5 rows
    first = result.model[0].weight.detach()
    other = first[:, result.encoder.offsets[0]]
    torch.manual_seed(FAST.seed)
    init = torch.nn.Linear(result.encoder.width, 50).weight.detach()[:, 0]
    assert not torch.equal(other, init)  # trained, not left at its initial values


# --- regression -------------------------------------------------------------------------------


def test_regression_trains_on_a_standardised_target_and_reports_rmse_mae_r2(tmp_path: Path):
    rng = np.random.default_rng(1)
    rows = [["size", "kind", "price"]]
    for _ in range(600):
        size = rng.uniform(1, 10)
        kind = rng.choice(["a", "b", "c"])
        price = 1000 * size + {"a": 0, "b": 3000, "c": 6000}[kind] + rng.normal(0, 200)
        rows.append([f"{size:.3f}", kind if rng.random() > 0.05 else "", f"{price:.2f}"])
    table = table_from_rows(rows, "price", source="t", name="prices")
    assert table.task == "regression" and table.classes == ()
    cfg = FitConfig(epochs=200, patience=20)
    result = fit(table, cfg)
    m = result.metrics
    assert m["test_r2"] > 0.95 and m["test_rmse"] < 1500 and m["test_mae"] < 1200
    y_train = table.y[result.train_index]
    assert result.target_mean == pytest.approx(y_train.mean()) and result.target_scale == pytest.approx(
        y_train.std()
    )
    schema = export(table, cfg, result, tmp_path / "out")
    assert schema.task == "regression" and schema.outputs == ["prediction"]
    # The training baseline: the predicted values' statistics and decile bins, in price units.
    p = schema.prediction_stats
    assert p["rows"] == len(result.train_index) == sum(p["bins"]["counts"])
    assert abs(p["mean"] - y_train.mean()) < 500 and p["min"] < p["bins"]["edges"][0] < p["max"]
    assert sum(schema.feature_stats["size"]["bins"]["counts"]) == len(result.train_index)
    assert "bins" not in schema.feature_stats["kind"]  # categories keep their counts
    predictor = Predictor(tmp_path / "out")
    rows = from_json([{"size": 5.0, "kind": "b"}, {"size": 5.0, "kind": None}], predictor.encoder)
    out, errors = predictor.predict_rows(rows)
    assert errors == [None, None] and out.shape == (2, 1)
    assert abs(out[0, 0] - 8000) < 1500  # in the target's units, not standardised


# --- reproducibility, CLI ---------------------------------------------------------------------


def test_same_seed_same_weights_with_categories_and_missing_values(tmp_path: Path):
    for name in ("a", "b"):
        args = [
            "train",
            "--csv",
            str(PENGUINS),
            "--target",
            "species",
            "--epochs",
            "10",
            "--out",
            str(tmp_path / name),
        ]
        assert main(args) == 0
    assert (tmp_path / "a" / "model.pt").read_bytes() == (tmp_path / "b" / "model.pt").read_bytes()
    a, b = (json.loads((tmp_path / n / "schema.json").read_text()) for n in ("a", "b"))
    assert a["columns"] == b["columns"] and a["scaler"] == b["scaler"]


def test_describe_prints_roles_vocabularies_fills_and_metrics(penguins: Path, capsys):
    assert main(["describe", str(penguins)]) == 0
    out = capsys.readouterr().out
    assert "classification of 'species' into Adelie, Chinstrap, Gentoo" in out
    assert "island" in out and "one-hot: Biscoe, Dream, Torgersen" in out
    fill = {c.name: c for c in Schema.load(penguins).columns}["bill_length_mm"].fill
    assert f"the value, missing -> {fill:g} + missing indicator" in out
    assert "test_accuracy:" in out


def test_train_reports_all_problems_and_exits_1(tmp_path: Path, capsys):
    path = tmp_path / "bad.csv"
    path.write_text("id,name,y\n" + "".join(f"{i},n{i},{'ab'[i % 2]}\n" for i in range(1, 40)))
    assert main(["train", "--csv", str(path), "--target", "y"]) == 1
    err = capsys.readouterr().err
    assert "2 problems" in err and "--drop id" in err and "--drop name" in err


def test_old_numeric_encoder_keeps_the_strict_contract():
    enc = Encoder.numeric(["a", "b"])
    rows = from_csv("1,\n1,NA\n1,2\n", enc)
    assert rows.errors == ["row 1: feature 'b' is empty", "row 2: feature 'b' is not a number: 'NA'", None]
    rows = from_json([[1, None], {"a": 1}], enc)
    assert rows.errors == ["row 1: feature 'b' is not a number: null", "row 2: missing feature 'b'"]
    assert Column("a").width == 1


def test_a_row_with_every_value_missing_is_its_row_error_in_every_form(penguins: Path):
    enc = Predictor(penguins).encoder
    header = ",".join(enc.features)
    rows = from_csv(header + "\n,,,,,,\nNA,NA,,null,,,NaN\nDream,,,,,,\n", enc)
    message = "every value is missing: nothing to predict from"
    assert rows.errors == [f"row 1: {message}", f"row 2: {message}", None]
    rows = from_json([[None] * 7, {"island": None, "sex": "NA"}, {"island": "Dream"}], enc)
    assert rows.errors == [f"row 1: {message}", f"row 2: {message}", None]


def test_rare_training_categories_are_other_but_not_counted_as_unseen(tmp_path: Path):
    rows = [["colour", "x", "y"]]
    for i in range(200):
        colour = "teal" if i in (3, 40) else ["red", "green", "blue"][i % 3]
        rows.append([colour, f"{(i * 7) % 13 / 3:.3f}", "yes" if i % 2 else "no"])
    table = table_from_rows(rows, "y", source="t", name="t")
    export(table, FAST, fit(table, FAST), tmp_path / "out")
    enc = Predictor(tmp_path / "out").encoder
    assert enc.columns[0].categories == ("blue", "green", "red") and enc.columns[0].rare == ("teal",)
    decoded = from_csv("colour,x\nteal,1\nmauve,1\nTEAL,2\n", enc)
    assert decoded.errors == [None, None, None] and decoded.unseen == {"colour": 1}
    assert decoded.values[:, enc.offsets[0]].tolist() == [1.0, 1.0, 1.0]  # all three are OTHER
    assert from_json([{"colour": "teal", "x": 1}, {"colour": "mauve", "x": 1}], enc).unseen == {"colour": 1}


def test_a_row_number_is_found_even_when_bad_lines_are_left_out():
    rows = [["rowid", "x", "y"]] + [[str(i), str(i % 7), "ab"[i % 2]] for i in range(1, 60)]
    rows[10] = rows[10] + ["extra"]  # a line with one field too many
    with pytest.raises(DataError) as info:
        table_from_rows(rows, "y", source="t.csv", name="t")
    assert "line 11 has 4" in str(info.value)
    assert "column 'rowid' looks like a row number" in str(info.value)


def test_a_numeric_target_with_a_typo_is_named_not_read_as_classes():
    rows = [["x", "y"]] + [[str(i % 5), f"{i * 1.5:.1f}"] for i in range(60)]
    rows[6][1] = "2x"
    with pytest.raises(DataError) as info:
        table_from_rows(rows, "y", source="t.csv", name="t")
    message = str(info.value)
    assert "target 'y' holds numbers but 1 value(s) are not (line 7: '2x')" in message
    assert "fewer than 5 rows" not in message  # not read as classes
    with pytest.raises(DataError, match="regression target 'y' is not a finite number in 1 row"):
        table_from_rows(rows, "y", source="t.csv", name="t", task="regression")


def test_duplicate_column_names_are_named_with_their_positions():
    rows = [["a", "b", "a", "y"]] + [["1", "2", "3", "ab"[i % 2]] for i in range(20)]
    with pytest.raises(DataError, match=r"column name 'a' is in the header more than once \(columns 1, 3\)"):
        table_from_rows(rows, "y", source="t.csv", name="t")


def test_an_identifier_with_many_values_names_both_flags_that_keep_it():
    rows = [["name", "x", "y"]] + [[f"n{i}", str(i % 7), "ab"[i % 2]] for i in range(80)]
    with pytest.raises(
        DataError, match=r"--drop name \(or --keep name --max-categories 80 to use it anyway\)"
    ):
        table_from_rows(rows, "y", source="t.csv", name="t")
    table = table_from_rows(rows, "y", source="t.csv", name="t", keep=["name"], max_categories=80)
    assert table.roles == ("categorical", "numeric")


def test_numbers_are_plain_ascii_and_nan_is_missing_only_as_a_missing_spelling(penguins: Path):
    enc = Predictor(penguins).encoder
    header = ",".join(enc.features)
    body = "".join(
        f"Dream,{v},17.1,190,3900,male,2008\n"
        for v in ("1_000", "\u0661\u0662", "NAN", "Nan", "nan", "-nan", "4e1")
    )
    rows = from_csv(header + "\n" + body, enc)
    assert rows.errors == [
        "row 1: feature 'bill_length_mm' is not a number: '1_000'",
        "row 2: feature 'bill_length_mm' is not a number: '\u0661\u0662'",
        "row 3: feature 'bill_length_mm' is not a number: 'NAN'",
        "row 4: feature 'bill_length_mm' is not a number: 'Nan'",
        None,  # missing spellings
        None,
        None,
    ]
    assert rows.values[6, enc.offsets[1]] == 40.0
    # Training reads numbers the same way: "1_000" is a typo there too.
    rows = [["x", "y"]] + [[str(i % 9), "ab"[i % 2]] for i in range(40)] + [["1_000", "a"]]
    with pytest.raises(
        DataError, match=r"column 'x' holds numbers but 1 value\(s\) are not \(line 42: '1_000'\)"
    ):
        table_from_rows(rows, "y", source="t.csv", name="t")


def test_a_field_over_the_limit_is_counted_in_utf8_bytes(penguins: Path):
    from tabserve.handler.rows import Limits

    enc = Predictor(penguins).encoder
    header = ",".join(enc.features)
    limits = Limits(max_field_bytes=1000)
    body = f"{'é' * 600},45.1,14.5,215,5000,female,2007\n{'e' * 600},45.1,14.5,215,5000,female,2007\n"
    rows = from_csv(header + "\n" + body, enc, limits=limits)
    assert rows.errors == ["row 1: a field is longer than 1,000 bytes", None]
    assert rows.unseen == {"island": 1}  # the refused row's category is not counted


def test_a_feature_column_twice_in_a_csv_header_is_refused(penguins: Path):
    from tabserve.handler.rows import BadRequest

    enc = Predictor(penguins).encoder
    header = ",".join(enc.features) + ",island"
    with pytest.raises(BadRequest, match="CSV header has feature column\\(s\\) 'island' more than once"):
        from_csv(header + "\nDream,45.1,14.5,215,5000,female,2007,Biscoe\n", enc)


def test_training_leaves_out_rows_with_every_feature_missing():
    rows = [["x", "c", "y"]] + [[str(i % 9), "pq"[i % 2], "ab"[i % 2]] for i in range(40)] + [["", "NA", "a"]]
    table = table_from_rows(rows, "y", source="t.csv", name="t")
    assert len(table.records) == 40
    assert any("1 row(s) with every feature missing left out" in n for n in table.notes)
