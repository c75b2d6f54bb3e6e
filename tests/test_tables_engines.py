"""Real tables through every batch engine and the online API: text categories, categories
never seen in training, every spelling of a missing value, regression, and archives written
before column roles existed.

The models are written by tests/tables.py (a schema and seeded random weights, no training),
archived with `tabserve archive`'s code and served by one real TorchServe for the module."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import requests

from tabserve.archive import ArchiveConfig, archive
from tabserve.batch import results as batch_results
from tabserve.batch.engines.local import LocalEngine
from tabserve.batch.engines.torchserve import csv_columns
from tabserve.batch.results import Results
from tabserve.cli import main
from tabserve.errors import ChunkRefused
from tabserve.handler import response
from tabserve.handler.response import UNSEEN_HEADER, output_columns
from tabserve.scorer import Checkpoint, JobFailed, ScoreConfig, ScoreResult, score

from .conftest import start_server
from .tables import (
    OLD_CLASSES,
    PENGUIN_CLASSES,
    forward,
    write_old_format,
    write_penguins,
    write_price,
)

pytestmark = pytest.mark.integration

CHUNK = 64  # the handler gives a request of 64 rows or more a model pass of its own (entry.py)
MISSING_SPELLINGS = ("", "NA", "NaN", "null")


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """artifacts for penguins (classification), price (regression) and oldiris (format 1),
    and their archives in tables/store."""
    root = tmp_path_factory.mktemp("tables")
    write_penguins(root / "penguins")
    write_price(root / "price")
    write_old_format(root / "oldiris")
    # The real penguins file, trained by the CLI as a user would (few epochs: speed, not skill).
    assert main(["train", "--csv", str(PENGUINS_CSV), "--target", "species", "--epochs", "15",
                 "--name", "rawpenguins", "--out", str(root / "rawpenguins")]) == 0  # fmt: skip
    for name in ("penguins", "price", "oldiris", "rawpenguins"):
        archive(ArchiveConfig(artifacts=root / name, model_store=root / "store", workers=1))
    return root


@pytest.fixture(scope="module")
def tables_server(tables: Path, tmp_path_factory: pytest.TempPathFactory):
    ts = start_server(tables / "store", tmp_path_factory.mktemp("tables_run"))
    yield ts
    ts.stop()


PENGUINS_CSV = Path(__file__).resolve().parent.parent / "examples" / "penguins.csv"


# --- inputs ----------------------------------------------------------------------------------


class Table:
    """An input CSV and what its output must say: per data row (1-based) the expected error,
    the groups of rows that must get the same prediction, and the unseen categories."""

    def __init__(self, header: str, rows: dict[int, str]) -> None:
        self.header = header
        self.rows = rows
        self.errors: dict[int, str] = {}
        self.same: list[list[int]] = []
        self.unseen: dict[str, int] = {}

    def write(self, path: Path) -> Path:
        path.write_text(self.header + "\n" + "".join(self.rows[i] + "\n" for i in sorted(self.rows)))
        return path


def penguin_table() -> Table:
    """Four chunks of CHUNK rows: text categories in other spellings, unseen categories in
    several chunks, each missing spelling in each column, and bad rows (with known
    categories only: how a bad row's unseen categories count is the handler's business)."""
    islands, sexes = ("Biscoe", "Dream", "Torgersen"), ("female", "male")

    def row(i: int, like: int | None = None, **fields: str) -> str:
        """Row i, with the values of row `like` (default: its own) but for `fields`."""
        k = i if like is None else like
        v = {
            "island": islands[k % 3],
            "bill": f"{35 + k % 20 + 0.1 * (k % 10):.1f}",
            "sex": sexes[k % 2],
            "flipper": str(180 + k % 40),
            **fields,
        }
        return f'{i},{v["island"]},{v["bill"]},{v["sex"]},{v["flipper"]},"note, {i}"'

    t = Table("id,island,bill_length,sex,flipper,note", {i: row(i) for i in range(1, 4 * CHUNK + 1)})
    # Spellings of known categories: folded to them, never unseen.
    t.rows[3], t.rows[4], t.rows[5] = row(3, island=" biscoe"), row(4, island="DREAM"), row(5, sex="Female ")
    # Each missing spelling, four rows alike but for it: the same prediction.
    start = 10
    for column in ("bill", "flipper", "island", "sex"):
        group = list(range(start, start + len(MISSING_SPELLINGS)))
        for i, spelling in zip(group, MISSING_SPELLINGS):
            t.rows[i] = row(i, like=0, **{column: spelling})
        t.same.append(group)
        start += len(MISSING_SPELLINGS)
    t.rows[26] = row(26, island="", bill="NA", sex="null", flipper="NaN")  # every column missing: an error
    # A flipper missing is its training median (no indicator): the same as giving 200.
    t.rows[27] = row(27, like=0, flipper="200")
    t.same.append([14, 15, 16, 17, 27])
    # Categories never seen in training, spread over the chunks.
    t.rows[70], t.rows[130] = row(70, island="Atlantis"), row(130, island="Mars")
    t.rows[200] = row(200, island="Atlantis")
    t.rows[71], t.rows[250] = row(71, sex="X"), row(250, sex="intersex")
    t.unseen = {"island": 3, "sex": 2}
    # Bad rows.
    t.rows[40] = row(40, flipper="abc")
    t.rows[100] = row(100, bill="inf")
    t.rows[150] = "150,Dream,41"
    t.rows[222] = row(222, bill="-inf", flipper="1e400")
    t.errors = {
        40: "row 40: feature 'flipper' is not a number: 'abc'",
        100: "row 100: feature 'bill_length' is not finite: 'inf'",
        150: "row 150: expected 6 fields, got 3",
        222: "row 222: feature 'bill_length' is not finite: '-inf'",
        26: "row 26: every value is missing: nothing to predict from",
    }
    return t


def price_table() -> Table:
    """Regression: two chunks, the same kinds of rows as penguin_table."""
    colours = ("red", "blue")

    def row(i: int, like: int | None = None, **fields: str) -> str:
        k = i if like is None else like
        v = {"age": str(k % 11), "colour": colours[k % 2], "size": f"{1 + (k % 7) * 0.5}", **fields}
        return f"{i},{v['age']},{v['colour']},{v['size']}"

    t = Table("id,age,colour,size", {i: row(i) for i in range(1, 2 * CHUNK + 1)})
    t.rows[3] = row(3, colour="RED")
    start = 10
    for column in ("age", "colour", "size"):
        group = list(range(start, start + len(MISSING_SPELLINGS)))
        for i, spelling in zip(group, MISSING_SPELLINGS):
            t.rows[i] = row(i, like=0, **{column: spelling})
        t.same.append(group)
        start += len(MISSING_SPELLINGS)
    t.rows[22] = row(22, like=0, age="5")  # age's training median: the same as missing
    t.same[0].append(22)
    t.rows[30], t.rows[90] = row(30, colour="purple"), row(90, colour="purple")
    t.rows[100] = row(100, colour="teal")
    t.unseen = {"colour": 3}
    t.rows[50] = row(50, size="big")
    t.rows[60] = row(60, age="inf")
    t.rows[70] = "70,3"
    t.errors = {
        50: "row 50: feature 'size' is not a number: 'big'",
        60: "row 60: feature 'age' is not finite: 'inf'",
        70: "row 70: expected 4 fields, got 2",
    }
    return t


# --- running the engines ---------------------------------------------------------------------


def read_csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def spark_bytes(folder: Path) -> bytes:
    """Spark's part files in name order: the same bytes as one output file."""
    assert (folder / "_SUCCESS").exists()
    return b"".join(p.read_bytes() for p in sorted(folder.glob("part-*")))


def score_everywhere(
    tmp_path: Path, inp: Path, model: str, tables: Path, server, capsys, chunk: int = CHUNK
) -> dict[str, tuple[bytes, str]]:
    """The output bytes and the summary line of each engine for one input."""
    store = ["--model-store", str(tables / "store"), "--model", model, "--chunk-rows", str(chunk)]
    runs = {
        "torchserve": [
            "--url",
            server.inference_url,
            "--model",
            model,
            "--token-file",
            str(server.key_file),
            "--chunk-rows",
            str(chunk),
            "--concurrency",
            "4",
        ],
        "local": [*store, "--engine", "local", "--concurrency", "2"],
        "spark": [*store, "--engine", "spark", "--master", "local[1]"],
    }
    out: dict[str, tuple[bytes, str]] = {}
    for engine, options in runs.items():
        target = tmp_path / f"{engine}.out"
        code = main(["score", str(inp), "-o", str(target), *options])
        captured = capsys.readouterr()
        summary = next((x for x in captured.out.splitlines() if x.startswith("scored ")), "")
        assert code in (0, 2), f"{engine}: {captured.err[-3000:]}"
        data = spark_bytes(target) if engine == "spark" else target.read_bytes()
        out[engine] = (data, summary)
    # Every engine's drift report holds the same numbers (the handler counted them).
    reports = []
    for engine in runs:
        report = json.loads(Path(f"{tmp_path / f'{engine}.out'}.report.json").read_text())
        for key in ("input", "output", "engine", "finished"):
            report["job"].pop(key)
        reports.append(report)
    assert all(r == reports[0] for r in reports), "the engines' drift reports differ"
    assert reports[0]["job"]["profiled_rows"] == reports[0]["job"]["ok"]
    return out


def check_table_output(rows: list[list[str]], table: Table, columns: list[str]) -> None:
    """Every input row, in order, with its fields; errors exactly where expected; each group
    of rows alike but for a missing spelling predicted alike."""
    header = table.header.split(",")
    assert rows[0] == header + columns
    assert len(rows) - 1 == len(table.rows), "one output row per input row"
    width, n_out = len(header), len(columns)
    for i, r in enumerate(rows[1:], start=1):
        assert r[-1] == table.errors.get(i, ""), f"row {i}: {r}"
        if i in table.errors:
            assert r[width:-1] == [""] * (n_out - 1)
            if len(next(csv.reader([table.rows[i]]))) != width:
                assert r[0] == table.rows[i] and r[1:width] == [""] * (width - 1)
                continue
        assert ",".join(f'"{f}"' if "," in f else f for f in r[:width]) == table.rows[i]
    for group in table.same:
        predictions = {tuple(rows[i][width:]) for i in group}
        assert len(predictions) == 1, f"rows {group} differ: {predictions}"


# --- tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_every_engine_writes_the_same_bytes_for_a_real_table(task, tmp_path, tables, tables_server, capsys):
    table, model = (penguin_table(), "penguins") if task == "classification" else (price_table(), "price")
    inp = table.write(tmp_path / "in.csv")
    outputs = score_everywhere(tmp_path, inp, model, tables, tables_server, capsys)

    reference, _ = outputs["torchserve"]
    for engine, (data, _) in outputs.items():
        assert data == reference, f"{engine} wrote other bytes than torchserve"
    rows = read_csv(reference.decode("utf-8"))
    classes = PENGUIN_CLASSES if task == "classification" else ()
    check_table_output(rows, table, output_columns(classes))
    if task == "classification":
        probs = np.array([[float(v) for v in r[7:10]] for r in rows[1:] if not r[-1]])
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
        assert [r[6] for r in rows[1:] if not r[-1]] == [PENGUIN_CLASSES[k] for k in probs.argmax(1)]
    else:
        assert all(np.isfinite(float(r[4])) for r in rows[1:] if not r[-1])

    counts = ", ".join(f"{k} {v}" for k, v in sorted(table.unseen.items()))
    n, bad = len(table.rows), len(table.errors)
    for engine, (_, summary) in outputs.items():
        assert summary.startswith(
            f"scored {n} rows: {n - bad} ok, {bad} errors; unseen categories: {counts}; "
        )
        assert summary.endswith(f"wrote {tmp_path / f'{engine}.out'}"), summary


def test_the_raw_penguins_file_scores_with_exit_0_and_the_same_bytes_in_every_engine(
    tmp_path, tables, tables_server, capsys
):
    """The issue's "done when": trained on the raw file, the archive scores the raw file, with
    its missing values, in all three engines, every row predicted."""
    outputs = score_everywhere(tmp_path, PENGUINS_CSV, "rawpenguins", tables, tables_server, capsys)
    (data, summary), *others = outputs.values()
    assert all(o == data for o, _ in others)
    assert all("scored 344 rows: 344 ok, 0 errors" in s for _, s in outputs.values()), outputs
    rows = read_csv(data.decode())
    assert len(rows) == 345 and rows[0][-5:] == ["label", "p_Adelie", "p_Chinstrap", "p_Gentoo", "error"]
    missing = [r for r in rows[1:] if "" in r[:8]]
    assert len(missing) == 11 and all(r[8] and not r[-1] for r in missing)  # predicted, no error


def test_regression_online_answers_a_prediction_per_row_in_json_and_csv(tables, tables_server):
    rows = [
        {"size": 3.2, "colour": "red", "age": 4},
        {"colour": "blue", "age": None},  # size left out, age null: both missing
        {"size": "NA", "colour": "purple", "age": 1},  # a category never seen in training
        {"size": 2, "colour": None, "age": 7.5},
        {"size": 1.5, "colour": " BLUE", "age": "NaN"},
        {"size": "big", "colour": "red", "age": 1},
    ]
    # The same rows encoded by hand: size, size<missing>, colour=<other>/red/blue/<missing>, age.
    inputs = [
        [3.2, 0, 0, 1, 0, 0, 4],
        [3.0, 1, 0, 0, 1, 0, 5.0],
        [3.0, 1, 1, 0, 0, 0, 1],
        [2, 0, 0, 0, 0, 1, 7.5],
        [1.5, 0, 0, 0, 1, 0, 5.0],
    ]
    url = f"{tables_server.inference_url}/predictions/price"
    headers = {**tables_server.headers(), "Content-Type": "application/json"}
    r = requests.post(url, data=json.dumps(rows), headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["model"]["name"] == "price"
    predictions = answer["predictions"]
    assert [set(p) for p in predictions] == [{"prediction"}] * 5 + [{"error"}]
    assert predictions[5]["error"].startswith("row 6: feature 'size' is not a number")
    values = [p["prediction"] for p in predictions[:5]]
    assert all(type(v) is float for v in values)
    np.testing.assert_allclose(values, forward(tables / "price", inputs)[:, 0], rtol=0, atol=1e-5)
    assert json.loads(r.headers[UNSEEN_HEADER]) == {"colour": 1}

    r = requests.post(url, data=json.dumps(rows), headers={**headers, "Accept": "text/csv"}, timeout=30)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/csv")
    lines = r.content.decode("utf-8").splitlines()
    assert lines[0] == "prediction,error"
    assert lines[1:6] == [f"{v!r}," for v in values]
    assert read_csv(lines[6]) == [["", predictions[5]["error"]]]


OLD_HEADER = "id,petal_width_cm,sepal_length_cm,sepal_width_cm,petal_length_cm,comment"
# What the handler answered for these rows before column roles existed (the messages of the
# format 1 contract: no value may be missing, NaN and infinity are not finite).
OLD_BAD = {
    20: ("20,,5.1,3.5,1.4,empty", "row 20: feature 'petal_width_cm' is empty"),
    40: ("40,NA,5.1,3.5,1.4,na", "row 40: feature 'petal_width_cm' is not a number: 'NA'"),
    60: ("60,0.2,NaN,3.5,1.4,nan", "row 60: feature 'sepal_length_cm' is not finite: 'NaN'"),
    80: ("80,0.2,5.1,null,1.4,null", "row 80: feature 'sepal_width_cm' is not a number: 'null'"),
    100: ("100,0.2,5.1,3.5,abc,abc", "row 100: feature 'petal_length_cm' is not a number: 'abc'"),
    110: ("110,1,2", "row 110: expected 6 fields, got 3"),
    120: ("120,inf,5.1,3.5,1.4,inf", "row 120: feature 'petal_width_cm' is not finite: 'inf'"),
}


def test_an_archive_of_schema_format_1_is_served_and_scored_as_before(
    tmp_path, tables, tables_server, capsys
):
    rng = np.random.default_rng(7)
    x = (rng.normal(size=(2 * CHUNK, 4)) * [0.8, 0.4, 1.7, 0.7] + [5.8, 3.0, 3.7, 1.2]).round(2)
    rows = {i: f'{i},{r[3]},{r[0]},{r[1]},{r[2]},"note, {i}"' for i, r in enumerate(x, start=1)}
    for i, (line, _) in OLD_BAD.items():
        rows[i] = line
    table = Table(OLD_HEADER, rows)
    table.errors = {i: e for i, (_, e) in OLD_BAD.items()}
    inp = table.write(tmp_path / "in.csv")
    outputs = score_everywhere(tmp_path, inp, "oldiris", tables, tables_server, capsys)
    reference, _ = outputs["torchserve"]
    assert all(data == reference for data, _ in outputs.values())
    out = read_csv(reference.decode("utf-8"))
    check_table_output(out, table, output_columns(OLD_CLASSES))
    good = [i for i in range(1, len(x) + 1) if i not in OLD_BAD]
    probs = np.array([[float(v) for v in out[i][7:10]] for i in good])
    np.testing.assert_allclose(probs, forward(tables / "oldiris", x[np.array(good) - 1]), rtol=0, atol=1e-6)
    assert [out[i][6] for i in good] == [OLD_CLASSES[k] for k in probs.argmax(1)]
    for _, summary in outputs.values():
        assert summary.startswith(
            f"scored {len(x)} rows: {len(x) - len(OLD_BAD)} ok, {len(OLD_BAD)} errors; "
        )
        assert "unseen" not in summary

    # Online: numbers in, nothing imputed; the messages as before.
    url = f"{tables_server.inference_url}/predictions/oldiris"
    headers = {**tables_server.headers(), "Content-Type": "application/json"}
    r = requests.post(url, data=json.dumps(x[:2].tolist()), headers=headers, timeout=30)
    assert r.status_code == 200 and UNSEEN_HEADER not in r.headers
    got = r.json()["predictions"]
    expected = forward(tables / "oldiris", x[:2])
    np.testing.assert_allclose(
        [[p["probabilities"][c] for c in OLD_CLASSES] for p in got], expected, atol=1e-6
    )
    assert [p["label"] for p in got] == [OLD_CLASSES[k] for k in expected.argmax(1)]
    for body, error in [
        (
            {"sepal_length_cm": None, "sepal_width_cm": 3.5, "petal_length_cm": 1.4, "petal_width_cm": 0.2},
            "row 1: feature 'sepal_length_cm' is not a number: null",
        ),
        (
            [{"sepal_length_cm": 5.1, "sepal_width_cm": 3.5, "petal_length_cm": 1.4}],
            "row 1: missing feature 'petal_width_cm'",
        ),
        ([["5.1", "NA", 1, 2]], "row 1: feature 'sepal_length_cm' is not a number: \"5.1\""),
    ]:
        r = requests.post(url, data=json.dumps(body), headers=headers, timeout=30)
        assert r.status_code == 200 and r.json()["predictions"] == [{"error": error}]


def test_a_chunk_split_after_a_failure_counts_each_unseen_category_once_on_spark(tmp_path, tables, capsys):
    """Spark reads physical lines: an unbalanced quote makes the handler join the lines after
    it, answer fewer rows, and so fail the chunk, which is split. The answers thrown away
    held unseen categories too (row 2's, several times); only the kept ones count."""
    full = penguin_table()
    rows = {i: full.rows[i] for i in range(1, 49)}  # three chunks of 16; row 40 is bad
    rows[5] = '5,"Biscoe,41,female,190,open quote'
    rows[2] = rows[2].replace(",Torgersen,", ",Atlantis,")
    rows[9] = rows[9].replace(",Biscoe,", ",Mars,")
    rows[30] = rows[30].replace(",Biscoe,", ",Atlantis,")
    inp = Table(full.header, rows).write(tmp_path / "in.csv")
    out = tmp_path / "out"
    argv = ["score", str(inp), "-o", str(out), "--model-store", str(tables / "store"), "--model", "penguins"]
    assert main([*argv, "--engine", "spark", "--master", "local[1]", "--chunk-rows", "16"]) == 2
    summary = capsys.readouterr().out
    result = read_csv(spark_bytes(out).decode("utf-8"))
    assert len(result) == 49 and result[5][0] == rows[5] and result[5][-1].startswith("row 5: ")
    assert [i for i, r in enumerate(result[1:], start=1) if r[-1]] == [5, 26, 40]  # 26: every value missing
    assert "scored 48 rows: 45 ok, 3 errors; unseen categories: island 3; " in summary, summary


def same_results(a: Results, b: Results) -> bool:
    """The same numbers (to the bit), labels and errors."""
    return (
        np.array_equal(a.values, b.values, equal_nan=True)
        and (a.labels is None) == (b.labels is None)
        and (a.labels is None or np.array_equal(a.labels, b.labels))
        and a.errors == b.errors
    )


def test_local_engine_scores_an_archive_whose_handler_reports_no_unseen_categories(tables):
    """Archives whose LocalModel predates the batch answer (respond_csv only: read from its
    text/csv answer, unseen categories counted) or predates respond_csv (call_csv only:
    nothing counted): scored as before, to the same results."""
    body = b"id,age,colour,size\n1,3,red,1.5\n2,NA,purple,2\n3,4,,x\n"
    engine = LocalEngine(tables / "store" / "price.mar")
    try:
        assert engine.probe(b"id,age,colour,size") == ["prediction", "error"]
        new = engine.score(body, 3, 1)
        model = engine.model

        class CsvModel:
            def __init__(self, model) -> None:
                self.respond_csv = model.respond_csv  # an archive from before the batch answer

        class OldModel:
            def __init__(self, model) -> None:
                self.call_csv = model.call_csv  # all that an older archive's LocalModel has

        engine.model = CsvModel(model)
        assert engine.probe(b"id,age,colour,size") == ["prediction", "error"]
        csv_answered = engine.score(body, 3, 1)
        engine.model = OldModel(model)
        assert engine.probe(b"id,age,colour,size") == ["prediction", "error"]
        old = engine.score(body, 3, 1)
    finally:
        engine.close()
    assert isinstance(new, Results) and new.unseen == {"colour": 1}
    assert new.labels is None and new.values.shape == (3, 1)
    assert np.isfinite(new.values[:2]).all() and np.isnan(new.values[2]).all()
    assert new.errors == {2: "row 3: feature 'size' is not a number: 'x'"}
    assert same_results(csv_answered, new) and csv_answered.unseen == {"colour": 1}
    assert same_results(old, new) and old.unseen == {}


class CountingEngine:
    """Answers every record, reporting one unseen category per record it answers, but
    refuses any chunk that holds the record whose id is `poison`."""

    def __init__(self, poison: str) -> None:
        self.poison = poison

    def probe(self, header: bytes) -> list[str]:
        return ["label", "p_a", "error"]

    def alive(self, header: bytes) -> bool:
        return True

    def score(self, body: bytes, n: int, first_row: int, retries: int | None = None) -> Results:
        lines = body.decode("utf-8").splitlines()[1:]
        assert len(lines) == n
        if any(line.split(",", 1)[0] == self.poison for line in lines):
            raise ChunkRefused("refused")
        return Results(np.ones((n, 1)), np.zeros(n, dtype=np.int32), unseen={"c": n})

    def close(self) -> None:
        pass


def test_the_scorer_counts_each_answered_row_once_across_threads_splits_and_long_records(tmp_path):
    inp, out = tmp_path / "in.csv", tmp_path / "out.csv"
    lines = [f"{i},{i}" for i in range(1, 5001)]
    lines[2999] = "3000," + "9" * 200  # over --max-record-bytes: never sent to the engine
    inp.write_text("id,x\n" + "\n".join(lines) + "\n")
    config = ScoreConfig(str(inp), str(out), chunk_rows=100, concurrency=4, max_record_bytes=100)
    result = score(config, engine=CountingEngine("1234"))
    assert (result.rows, result.errors) == (5000, 2)
    assert result.unseen == {"c": 4998}  # every row but the refused one and the long one


def test_the_answer_columns_and_the_unseen_header_are_read_as_the_handler_writes_them():
    from tabserve import spark_job

    assert csv_columns("prediction,error\n", "a,b", "x") == ["prediction", "error"]
    assert csv_columns("label,p_a,p_b,error\n", "a,b", "x") == ["label", "p_a", "p_b", "error"]
    for bad in ("prediction,p_a,error\n", "value,error\n", "label\n"):
        with pytest.raises(Exception, match="is not a tabserve model"):
            csv_columns(bad, "a,b", "x")
    with pytest.raises(Exception, match=r"not a header the model can read \(row 1: bad\)"):
        csv_columns("prediction,error\n,row 1: bad\n", "a,b", "x")
    for schema in (
        {"task": "regression", "classes": []},
        {"classes": []},
        {"task": "classification", "classes": ["a", "b"]},
        {"format_version": 1, "classes": ["x", "y", "z"]},
    ):
        classes = [] if schema.get("task") == "regression" else schema["classes"]
        assert spark_job.output_columns(schema) == output_columns(classes)
    # The batch engines read the header with batch.results (it runs on Spark executors
    # without tabserve); the handler's module has its own copy: both read it alike.
    assert UNSEEN_HEADER.lower() == batch_results.UNSEEN_HEADER
    for unseen_counts in (batch_results.unseen_counts, response.unseen_counts):
        assert unseen_counts('{"island": 3, "sex": 1}') == {"island": 3, "sex": 1}
        assert unseen_counts(None) == unseen_counts("not json") == unseen_counts("[1]") == {}
        assert unseen_counts('{"a": "3", "b": -1, "c": 2}') == {"c": 2}


def test_the_summary_and_the_checkpoint_carry_the_unseen_counts(tmp_path):
    result = ScoreResult(10, 1, 0, 1.0, "out.csv", unseen={"sex": 1, "island": 1_234})
    assert "10 rows: 9 ok, 1 errors; unseen categories: island 1,234, sex 1; " in result.summary()
    assert "unseen" not in ScoreResult(10, 0, 0, 1.0, "out.csv").summary()
    out = str(tmp_path / "o.csv")
    fingerprint = {"input": "in.csv", "size": 1, "mtime_ns": 2, "header": "h"}
    saved = Checkpoint(
        fingerprint, {"offset": 3, "row": 4, "index": 5}, {"bytes": 6}, 7, 8, 9, unseen={"island": 2}
    )
    saved.save(out)
    assert Checkpoint.load(out) == saved and Checkpoint.load(out).unseen == {"island": 2}
    # A checkpoint written without the counts still resumes.
    data = json.loads(Checkpoint.path_for(out).read_text())
    del data["unseen"]
    Checkpoint.path_for(out).write_text(json.dumps(data))
    assert Checkpoint.load(out).unseen == {}


def test_a_resumed_job_reports_the_unseen_categories_of_the_whole_file(tmp_path, tables):
    """The counts of the rows written before a stop come from the checkpoint; the rows
    scored but not yet written when it stopped are counted once, by the resumed run."""
    table = penguin_table()
    inp = table.write(tmp_path / "in.csv")
    out = tmp_path / "out.csv"
    common = {"model": "penguins", "model_store": tables / "store", "engine": "local", "chunk_rows": CHUNK}
    whole = score(ScoreConfig(str(inp), str(out), concurrency=1, **common))
    assert whole.unseen == table.unseen
    expected = out.read_bytes()
    out.unlink()

    # --max-errors 3 stops once rows 26, 40 and 100 are written: after the chunk of rows
    # 65-128, which holds rows 70 (island) and 71 (sex); the next chunk may be scored already.
    with pytest.raises(JobFailed, match="--max-errors 3"):
        score(ScoreConfig(str(inp), str(out), concurrency=1, max_errors=3, **common))
    saved = Checkpoint.load(str(out))
    assert saved is not None and saved.rows == 2 * CHUNK and saved.unseen == {"island": 1, "sex": 1}
    resumed = score(ScoreConfig(str(inp), str(out), concurrency=1, resume=True, **common))
    assert resumed.unseen == table.unseen and resumed.resumed_rows == 2 * CHUNK
    assert out.read_bytes() == expected


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (
            "id,island,bill_length,sex,flipper,note,label",
            "the input already has column(s) 'label', which the output adds",
        ),
        (
            "id,island,bill_length,sex,flipper,island",
            "CSV header has feature column(s) 'island' more than once",
        ),
    ],
)
def test_an_ambiguous_input_header_fails_the_job_before_any_row(tmp_path, tables, capsys, header, message):
    inp = tmp_path / "in.csv"
    inp.write_text(
        header
        + "\n"
        + ",".join(["1", "Dream", "40.1", "male", "190", "x", "y"][: header.count(",") + 1])
        + "\n"
    )
    out = tmp_path / "out.csv"
    argv = ["score", str(inp), "-o", str(out), "--model-store", str(tables / "store"), "--model", "penguins"]
    assert main([*argv, "--engine", "local"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and message in err and not out.exists()
