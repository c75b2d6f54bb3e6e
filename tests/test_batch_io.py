"""Every reader and writer against real engines: CSV, gzip CSV, Parquet and stdin/stdout in
and out, through the local engine and a real TorchServe, give the same rows; Parquet keeps
its types; bad values, nested and binary columns and nulls are row matters; Parquet inputs
in several row groups and Parquet outputs resume to the rows of one run.

One TorchServe serves the module (iris and the penguins model of tests/tables.py); the
local engine's worker pools are shared by the jobs that run through `score()`, and the CLI
tests start their own, as a user's job does."""

from __future__ import annotations

import csv
import datetime
import decimal
import gzip
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tabserve.archive import ArchiveConfig, archive
from tabserve.batch.engines.local import LocalPoolEngine
from tabserve.batch.writers import ParquetWriter
from tabserve.cli import main
from tabserve.errors import ConfigError
from tabserve.scorer import JobFailed, ScoreConfig, ScoreResult, score

from .conftest import start_server
from .tables import PENGUIN_CLASSES, forward, write_penguins

pytestmark = pytest.mark.integration

CHUNK = 16  # rows per batch: every job here has several
N = 200  # iris rows
FEATURES = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]
HEADER = ["id", "petal_width_cm", "sepal_length_cm", "note", "sepal_width_cm", "petal_length_cm"]
IRIS_OUT = ["label", "p_setosa", "p_versicolor", "p_virginica", "error"]
ENGINES = ("local", "torchserve")

# The rows with an error, in the CSV input and in the same rows as Parquet text columns
# (a Parquet file has no line of the wrong width: row 150 holds a bad number there).
CSV_ERRORS = {
    17: "row 17: feature 'sepal_width_cm' is not a number: 'abc'",
    90: "row 90: feature 'sepal_length_cm' is not finite: 'inf'",
    130: "row 130: every value is missing: nothing to predict from",
    150: "row 150: expected 6 fields, got 3",
}
TEXT_ERRORS = {**CSV_ERRORS, 150: "row 150: feature 'sepal_length_cm' is not a number: 'x'"}
WRONG_WIDTH = "150,1.0,2.0"


# --- data ------------------------------------------------------------------------------------


@dataclass
class Iris:
    """The iris input: each data row's fields (in HEADER order) and its features (schema
    order, NaN where missing or not a number)."""

    fields: list[list[str]]
    x: np.ndarray
    typed: pa.Table = field(repr=False)  # the same rows as typed Parquet columns


def iris_data() -> Iris:
    rng = np.random.default_rng(7)
    values = (rng.normal(size=(N, 4)) * [0.8, 0.4, 1.7, 0.7] + [5.8, 3.0, 3.7, 1.2]).round(2)
    values = np.abs(values) + 0.1
    rows: list[list[str]] = []
    x = values.copy()
    for i in range(1, N + 1):
        v = dict(zip(FEATURES, (repr(float(f)) for f in values[i - 1])))
        note = {7: 'note, "seven"', 8: "café ☕", 9: "two\nlines", 10: ""}.get(i, f"n{i}")
        rows.append(
            [
                str(i),
                v["petal_width_cm"],
                v["sepal_length_cm"],
                note,
                v["sepal_width_cm"],
                v["petal_length_cm"],
            ]
        )
    # Missing values (filled by the model), then the bad ones.
    rows[40 - 1][5], rows[41 - 1][5] = "", "NA"
    x[40 - 1, 2] = x[41 - 1, 2] = np.nan
    rows[17 - 1][4] = "abc"
    x[17 - 1, 1] = np.nan
    rows[90 - 1][2] = "inf"
    x[90 - 1, 0] = np.inf
    for k in (1, 2, 4, 5):
        rows[130 - 1][k] = ""
    x[130 - 1] = np.nan
    rows[150 - 1][2] = "x"
    x[150 - 1, 0] = np.nan

    ids = list(range(1, N + 1))
    typed = pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "petal_width_cm": pa.array(numbers(rows, 1), pa.float64()),
            "sepal_length_cm": pa.array(numbers(rows, 2), pa.float64()),
            "note": pa.array([r[3] for r in rows], pa.string()).dictionary_encode(),
            "sepal_width_cm": pa.array(numbers(rows, 4), pa.float32()),
            "petal_length_cm": pa.array(numbers(rows, 5), pa.float64()),
            "count": pa.array([i % 7 for i in ids], pa.int32()),
            "flag": pa.array([i % 3 == 0 for i in ids]),
            "when": pa.array(
                [datetime.datetime(2024, 1, 1) + datetime.timedelta(hours=i) for i in ids], pa.timestamp("ms")
            ),
            "tags": pa.array([["a", f"t{i}"] if i % 4 else None for i in ids], pa.list_(pa.string())),
            'odd "name", too': pa.array([f"v{i}" if i % 5 else None for i in ids], pa.large_string()),
        }
    )
    return Iris(rows, x, typed)


def numbers(rows: list[list[str]], col: int) -> list[float | None]:
    """A column of the iris fields as typed values: null where missing or not a number."""
    return [None if r[col] in ("", "NA", "abc", "x") else float(r[col]) for r in rows]


def csv_line(fields: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(fields)
    return out.getvalue()


def write_iris_csv(path: Path, iris: Iris) -> None:
    lines = [csv_line(HEADER)]
    for i, r in enumerate(iris.fields, start=1):
        lines.append(WRONG_WIDTH + "\n" if i == 150 else csv_line(r))
    text = "".join(lines).encode("utf-8")
    path.write_bytes(gzip.compress(text, mtime=0) if path.name.endswith(".gz") else text)


def write_iris_text_parquet(path: Path, iris: Iris, row_group_size: int = 64) -> None:
    columns = {name: pa.array([r[k] for r in iris.fields], pa.string()) for k, name in enumerate(HEADER)}
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)


@pytest.fixture(scope="module")
def iris() -> Iris:
    return iris_data()


@pytest.fixture(scope="module")
def files(iris: Iris, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The iris input as CSV, gzip CSV, Parquet text columns and typed Parquet columns (in
    row groups of 50: batches of CHUNK rows straddle them)."""
    root = tmp_path_factory.mktemp("io_inputs")
    out = {"csv": root / "iris.csv", "csv.gz": root / "iris.csv.gz", "parquet": root / "iris.parquet"}
    write_iris_csv(out["csv"], iris)
    write_iris_csv(out["csv.gz"], iris)
    write_iris_text_parquet(out["parquet"], iris)
    out["typed"] = root / "typed.parquet"
    pq.write_table(iris.typed, out["typed"], row_group_size=50)
    assert pq.ParquetFile(out["typed"]).metadata.num_row_groups == 4
    return out


# --- models, server, engines ---------------------------------------------------------------


@pytest.fixture(scope="module")
def store(artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """iris (trained by conftest) and penguins (tests/tables.py: text categories, missing
    values) in one model store."""
    root = tmp_path_factory.mktemp("io_models")
    write_penguins(root / "penguins")
    for directory in (artifacts, root / "penguins"):
        archive(ArchiveConfig(artifacts=directory, model_store=root / "store", workers=1))
    return root / "store"


@pytest.fixture(scope="module")
def io_server(store: Path, tmp_path_factory: pytest.TempPathFactory):
    ts = start_server(store, tmp_path_factory.mktemp("io_run"))
    yield ts
    ts.stop()


@pytest.fixture(scope="module")
def pools(store: Path) -> Iterator[dict[str, LocalPoolEngine]]:
    """The local engine's worker pools, one per model, shared by the jobs run with score()."""
    engines = {name: LocalPoolEngine(store / f"{name}.mar", 2) for name in ("iris", "penguins")}
    yield engines
    for engine in engines.values():
        engine.close()


@pytest.fixture(scope="module")
def run(io_server, pools):
    """run(engine, input, output, model="iris", **ScoreConfig options) -> ScoreResult: one job
    through the real reader, pipeline and writer, with the local engine or the module's
    TorchServe."""

    def job(engine: str, inp: Path, out: Path, model: str = "iris", **options) -> ScoreResult:
        options = {"chunk_rows": CHUNK, "concurrency": 3, **options}
        if engine == "local":
            return score(ScoreConfig(str(inp), str(out), model=model, **options), engine=pools[model])
        config = ScoreConfig(
            str(inp),
            str(out),
            url=io_server.inference_url,
            model=model,
            token_file=io_server.key_file,
            **options,
        )
        return score(config)

    return job


def url_options(server, model: str = "iris") -> list[str]:
    return ["--url", server.inference_url, "--model", model, "--token-file", str(server.key_file)]


# --- reading outputs back ------------------------------------------------------------------


def csv_rows(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


def read_csv_output(path: Path) -> list[list[str]]:
    data = path.read_bytes()
    return csv_rows(gzip.decompress(data) if path.name.endswith(".gz") else data)


Answer = tuple[str, tuple[float | None, ...], str]


def answers_of_csv(rows: list[list[str]], width: int = 3) -> list[Answer]:
    """Each data row's (label, probabilities, error) from CSV output rows (header first)."""
    out = []
    for r in rows[1:]:
        tail = r[-(width + 2) :]
        out.append((tail[0], tuple(float(v) if v else None for v in tail[1:-1]), tail[-1]))
    return out


def answers_of_table(table: pa.Table, classes: tuple[str, ...]) -> list[Answer]:
    cols = {name: table.column(name).to_pylist() for name in ["label", *(f"p_{c}" for c in classes), "error"]}
    return [
        (
            cols["label"][i] or "",
            tuple(cols[f"p_{c}"][i] for c in classes),
            cols["error"][i] or "",
        )
        for i in range(table.num_rows)
    ]


def check_iris_answers(answers: list[Answer], errors: dict[int, str], iris: Iris, predictor) -> None:
    """Every row: its error, or the model's probabilities for its features (missing ones
    filled with the training median) and the label they name."""
    assert len(answers) == N
    fills = np.array([c.fill for c in predictor.schema.columns])
    x = np.where(np.isnan(iris.x), fills, iris.x)
    ok = [i for i in range(1, N + 1) if i not in errors]
    expected = predictor.predict_proba(x[[i - 1 for i in ok]])
    for i, p in zip(ok, expected):
        label, probs, error = answers[i - 1]
        assert error == "", (i, error)
        np.testing.assert_allclose(probs, p, rtol=0, atol=1e-6, err_msg=f"row {i}")
        assert label == predictor.classes[int(np.argmax(probs))]
    for i, message in errors.items():
        assert answers[i - 1] == ("", (None, None, None), message)


def output_schema(inputs: list[pa.Field], classes: tuple[str, ...]) -> pa.Schema:
    return pa.schema(
        [
            *inputs,
            pa.field("label", pa.string()),
            *(pa.field(f"p_{c}", pa.float64()) for c in classes),
            pa.field("error", pa.string()),
        ]
    )


CLASSES = ("setosa", "versicolor", "virginica")


# --- every pair, both engines -------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(files, run, tmp_path_factory) -> list[list[str]]:
    """CSV in, CSV out, local engine: the rows every other pair is compared with."""
    out = tmp_path_factory.mktemp("io_reference") / "reference.csv"
    result = run("local", files["csv"], out)
    assert (result.rows, result.errors) == (N, len(CSV_ERRORS))
    return read_csv_output(out)


def test_csv_to_csv_keeps_every_row_and_column_with_the_models_answers(reference, iris, predictor):
    assert reference[0] == HEADER + IRIS_OUT
    assert len(reference) == N + 1
    for i, (row, fields) in enumerate(zip(reference[1:], iris.fields), start=1):
        if i == 150:
            assert row[:6] == [WRONG_WIDTH, "", "", "", "", ""]  # the line whole, in the first column
        else:
            assert row[:6] == fields, i
    check_iris_answers(answers_of_csv(reference), CSV_ERRORS, iris, predictor)


@pytest.mark.parametrize("source", ["csv", "csv.gz", "parquet"])
def test_every_reader_writer_pair_gives_the_same_rows_on_both_engines(
    source, files, run, reference, iris, tmp_path
):
    """Each input format to CSV, gzip CSV and Parquet, through the local engine and
    TorchServe: the engines agree to the byte (CSV) or value (Parquet), the gzip output is
    the CSV output compressed, and every pair gives the reference's answers."""
    errors = CSV_ERRORS if source != "parquet" else TEXT_ERRORS
    outputs: dict[tuple[str, str], Path] = {}
    for engine in ENGINES:
        for sink in ("csv", "csv.gz", "parquet"):
            out = tmp_path / f"{engine}.{sink}"
            result = run(engine, files[source], out)
            assert (result.rows, result.errors) == (N, len(errors)), (engine, sink)
            outputs[engine, sink] = out
            assert not Path(f"{out}.part").exists() and not Path(f"{out}.part.json").exists()
    for sink in ("csv", "csv.gz"):
        assert outputs["local", sink].read_bytes() == outputs["torchserve", sink].read_bytes(), sink
    assert gzip.decompress(outputs["local", "csv.gz"].read_bytes()) == outputs["local", "csv"].read_bytes()
    local, remote = (
        pq.read_table(outputs["local", "parquet"]),
        pq.read_table(outputs["torchserve", "parquet"]),
    )
    assert local.equals(remote)

    rows = read_csv_output(outputs["local", "csv"])
    if source != "parquet":
        assert rows == reference
    else:
        # The same fields and answers as the CSV input but for row 150 (no line of the
        # wrong width in Parquet: a bad number there), whose batch has the same model pass.
        assert rows[0] == reference[0]
        assert [r for i, r in enumerate(rows) if i != 150] == [r for i, r in enumerate(reference) if i != 150]
        assert rows[150][:6] == iris.fields[149] and rows[150][-1] == errors[150]

    # Parquet out: the input's columns as they came (text from a CSV input), then the typed
    # answers; the answers are the CSV output's, value for value.
    assert local.schema == output_schema([pa.field(n, pa.string()) for n in HEADER], CLASSES)
    assert answers_of_table(local, CLASSES) == answers_of_csv(rows)
    first = local.column("id").to_pylist()
    assert first[149] == (WRONG_WIDTH if source != "parquet" else "150")
    inputs = local.select(HEADER).to_pylist()
    for i, (row, fields) in enumerate(zip(inputs, iris.fields), start=1):
        if i == 150 and source != "parquet":
            assert list(row.values()) == [WRONG_WIDTH, None, None, None, None, None]
        else:
            assert list(row.values()) == fields, i
    for i in range(1, N + 1):
        assert (local.column("error")[i - 1].as_py() is None) == (i not in errors)


def test_typed_parquet_keeps_each_columns_type_and_scores_nulls_as_missing(
    files, run, iris, predictor, tmp_path
):
    """A Parquet input of many types, nulls in features, in 4 row groups: the output has
    every input column with its own type and values, then label, p_<class> float64 and
    error (null when ok); both engines agree; CSV output gives the same answers."""
    errors = {
        90: "row 90: feature 'sepal_length_cm' is not finite: 'inf'",
        130: "row 130: every value is missing: nothing to predict from",
    }
    tables, texts = {}, {}
    for engine in ENGINES:
        out = tmp_path / f"{engine}.parquet"
        result = run(engine, files["typed"], out)
        assert (result.rows, result.errors) == (N, 2)
        tables[engine] = pq.read_table(out)
        out = tmp_path / f"{engine}.csv"
        run(engine, files["typed"], out)
        texts[engine] = out.read_bytes()
    assert tables["local"].equals(tables["torchserve"])
    assert texts["local"] == texts["torchserve"]

    table = tables["local"]
    typed = iris.typed
    assert table.schema == output_schema(list(typed.schema), CLASSES)
    assert table.select(typed.column_names).equals(typed)
    assert table.column("error").null_count == N - 2
    # Rows 17 and 150 (not numbers in the CSV) and 40-41 (missing) hold nulls: filled, scored.
    check_iris_answers(answers_of_table(table, CLASSES), errors, iris, predictor)

    rows = csv_rows(texts["local"])
    assert rows[0] == typed.column_names + IRIS_OUT
    assert answers_of_csv(rows) == answers_of_table(table, CLASSES)
    assert [r[0] for r in rows[1:]] == [str(i) for i in range(1, N + 1)]
    assert rows[3][7:11] == ["true", "2024-01-01 03:00:00.000", '["a", "t3"]', "v3"]
    assert rows[4][9] == "" and rows[5][10] == ""  # nulls are empty fields
    assert rows[7][3] == 'note, "seven"' and rows[9][3] == "two\nlines" and rows[8][3] == "café ☕"
    assert rows[90][2] == "inf" and rows[17][4] == ""


def test_cli_csv_gz_and_renamed_formats_on_both_engines(files, io_server, store, tmp_path, capsys):
    """The command line as a user runs it: gzip in and out, --input-format and --format for
    files whose names do not say, --engine local and --engine torchserve --url."""
    renamed = tmp_path / "iris.data"
    renamed.write_bytes(files["typed"].read_bytes())
    outs = {}
    for engine, where in (
        (
            "local",
            ["--engine", "local", "--model-store", str(store), "--model", "iris", "--concurrency", "2"],
        ),
        ("torchserve", url_options(io_server)),
    ):
        gz = tmp_path / f"{engine}.csv.gz"
        argv = ["score", str(files["csv.gz"]), "-o", str(gz), "--chunk-rows", str(CHUNK), *where]
        assert main(argv) == 2, capsys.readouterr().err
        pqo = tmp_path / f"{engine}.out"
        argv = ["score", str(renamed), "--input-format", "parquet", "-o", str(pqo), "--format", "parquet"]
        assert main([*argv, "--chunk-rows", str(CHUNK), *where]) == 2, capsys.readouterr().err
        outs[engine] = (gz.read_bytes(), pq.read_table(pqo))
    out = capsys.readouterr().out
    assert f"scored {N} rows: {N - 4} ok, 4 errors" in out and f"scored {N} rows: {N - 2} ok, 2 errors" in out
    assert outs["local"][0] == outs["torchserve"][0]
    assert outs["local"][1].equals(outs["torchserve"][1])
    assert outs["local"][1].num_rows == N


# --- stdin and stdout ---------------------------------------------------------------------


class Stdio:
    """sys.stdin / sys.stdout for a test: bytes in, bytes out."""

    def __init__(self, data: bytes = b"") -> None:
        self.stdin = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")
        self.out = io.BytesIO()
        self.stdout = io.TextIOWrapper(self.out, encoding="utf-8")


@pytest.mark.parametrize("engine", ENGINES)
def test_stdin_to_stdout_writes_the_bytes_of_a_file_job(
    engine, files, io_server, store, reference, tmp_path, monkeypatch, capsys
):
    where = (
        ["--engine", "local", "--model-store", str(store), "--model", "iris", "--concurrency", "2"]
        if engine == "local"
        else url_options(io_server)
    )
    stdio = Stdio(files["csv"].read_bytes())
    monkeypatch.setattr(sys, "stdin", stdio.stdin)
    monkeypatch.setattr(sys, "stdout", stdio.stdout)
    assert main(["score", "-", "-o", "-", "--chunk-rows", str(CHUNK), *where]) == 2
    stdio.stdout.flush()
    assert csv_rows(stdio.out.getvalue()) == reference
    err = capsys.readouterr().err
    assert f"scored {N} rows: {N - 4} ok, 4 errors" in err  # the summary goes to stderr
    assert list(tmp_path.iterdir()) == [], "nothing written beside"

    # Parquet to stdout: the same table as a Parquet file output.
    stdio = Stdio(files["csv"].read_bytes())
    monkeypatch.setattr(sys, "stdin", stdio.stdin)
    monkeypatch.setattr(sys, "stdout", stdio.stdout)
    assert main(["score", "-", "-o", "-", "--format", "parquet", "--chunk-rows", str(CHUNK), *where]) == 2
    stdio.stdout.flush()
    table = pq.read_table(pa.BufferReader(stdio.out.getvalue()))
    assert answers_of_table(table, CLASSES) == answers_of_csv(reference)
    assert table.schema == output_schema([pa.field(n, pa.string()) for n in HEADER], CLASSES)

    # A file in, stdout out, and stdin in, a file out: the same bytes again.
    stdio = Stdio()
    monkeypatch.setattr(sys, "stdout", stdio.stdout)
    assert main(["score", str(files["csv.gz"]), "-o", "-", "--chunk-rows", str(CHUNK), *where]) == 2
    stdio.stdout.flush()
    assert csv_rows(stdio.out.getvalue()) == reference
    stdio = Stdio(files["csv"].read_bytes())
    monkeypatch.setattr(sys, "stdin", stdio.stdin)
    out = tmp_path / "from_stdin.csv.gz"
    assert main(["score", "-", "-o", str(out), "--chunk-rows", str(CHUNK), *where]) == 2
    assert read_csv_output(out) == reference


def test_parquet_from_stdin_is_refused_with_one_error_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", Stdio(b"PAR1").stdin)
    argv = ["score", "-", "--input-format", "parquet", "-o", str(tmp_path / "o.csv"), "--engine", "local"]
    assert main([*argv, "--model-store", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and err.count("\n") == 1
    assert "Parquet input must be a file" in err
    assert list(tmp_path.iterdir()) == []


# --- columns Parquet has and CSV has not ------------------------------------------------------


def test_nested_and_binary_parquet_features_are_row_errors_not_a_crash(run, predictor, tmp_path):
    """A feature column of lists, or of binary values: each value is read as its text (a
    list's JSON, the bytes as UTF-8): not a number is that row's error, null is missing,
    bytes that spell a number are that number. Nested and binary columns that are not
    features pass through, with their types in a Parquet output."""
    n = 40
    width = {1: b"\xff\xfe", 3: b"2,5", 5: None}  # by i % 10; else b"3.1" or b"3.3"
    petal = {0: [1.0], 2: [1.0, 2.0], 4: [], 6: None}  # by i % 10; else null
    widths = [width.get(i % 10, b"3.1" if i % 2 else b"3.3") for i in range(n)]
    petals = [petal.get(i % 10) for i in range(n)]
    table = pa.table(
        {
            "id": pa.array(range(1, n + 1), pa.int64()),
            "sepal_length_cm": pa.array([5.0 + i / 100 for i in range(n)]),
            "sepal_width_cm": pa.array(widths, pa.binary()),
            "petal_length_cm": pa.array([1.4] * n),
            "petal_width_cm": pa.array(petals, pa.list_(pa.float64())),
            "meta": pa.array([{"k": i, "s": f"a,{i}"} for i in range(n)]),
            "blob": pa.array([bytes([i, 255]) for i in range(n)], pa.binary()),
        }
    )
    inp = tmp_path / "nested.parquet"
    pq.write_table(table, inp, row_group_size=12)
    expected: dict[int, str] = {}
    for i in range(n):
        if widths[i] == b"\xff\xfe":
            expected[i + 1] = f"row {i + 1}: feature 'sepal_width_cm' is not a number: '\ufffd\ufffd'"
        elif widths[i] == b"2,5":
            expected[i + 1] = f"row {i + 1}: feature 'sepal_width_cm' is not a number: '2,5'"
        elif petals[i] is not None:
            expected[i + 1] = (
                f"row {i + 1}: feature 'petal_width_cm' is not a number: {json.dumps(petals[i])!r}"
            )
    outs = {}
    for engine in ENGINES:
        out = tmp_path / f"{engine}.parquet"
        result = run(engine, inp, out)
        assert (result.rows, result.errors) == (n, len(expected)), engine
        outs[engine] = pq.read_table(out)
        run(engine, inp, tmp_path / f"{engine}.csv")
    assert outs["local"].equals(outs["torchserve"])
    assert (tmp_path / "local.csv").read_bytes() == (tmp_path / "torchserve.csv").read_bytes()
    out = outs["local"]
    assert out.schema == output_schema(list(table.schema), CLASSES)
    assert out.select(table.column_names).equals(table)
    fills = {c.name: c.fill for c in predictor.schema.columns}
    for i, (label, probs, error) in enumerate(answers_of_table(out, CLASSES), start=1):
        if i in expected:
            assert (label, probs, error) == ("", (None, None, None), expected[i])
            continue
        assert error == "", (i, error)
        w = widths[i - 1]
        x = [
            5.0 + (i - 1) / 100,
            fills["sepal_width_cm"] if w is None else float(w),
            1.4,
            fills["petal_width_cm"],
        ]
        np.testing.assert_allclose(probs, predictor.predict_proba(np.array([x]))[0], rtol=0, atol=1e-6)
    assert answers_of_csv(read_csv_output(tmp_path / "local.csv")) == answers_of_table(out, CLASSES)


N_OTHER = 20
# A feature column of another Parquet type: (column, values, the value it must be read as, or
# "missing", or the text that the row's error quotes).
OTHER_TYPES = {
    "decimal": ("sepal_length_cm", pa.array([decimal.Decimal("5.10")] * N_OTHER, pa.decimal128(5, 2)), 5.1),
    "float16": ("sepal_width_cm", pa.array(np.full(N_OTHER, 3.5, np.float16), pa.float16()), 3.5),
    "uint64": ("petal_length_cm", pa.array([1] * N_OTHER, pa.uint64()), 1.0),
    "int8": ("petal_length_cm", pa.array([2] * N_OTHER, pa.int8()), 2.0),
    "dictionary_of_ints": ("petal_length_cm", pa.array([3] * N_OTHER).dictionary_encode(), 3.0),
    "large_binary": ("petal_width_cm", pa.array([b"0.2"] * N_OTHER, pa.large_binary()), 0.2),
    "fixed_size_binary": ("petal_width_cm", pa.array([b"0.3"] * N_OTHER, pa.binary(3)), 0.3),
    "null_type": ("petal_width_cm", pa.nulls(N_OTHER), "missing"),
    "date": ("petal_width_cm", pa.array([datetime.date(2024, 1, 2)] * N_OTHER), "'2024-01-02'"),
    "bool": ("petal_length_cm", pa.array([True] * N_OTHER), "'true'"),
    "struct": ("petal_width_cm", pa.array([{"a": 1}] * N_OTHER), """'{"a": 1}'"""),
    "map": (
        "petal_width_cm",
        pa.array([[("a", 1)]] * N_OTHER, pa.map_(pa.string(), pa.int64())),
        """'[["a", 1]]'""",
    ),
    "fixed_size_list": (
        "petal_width_cm",
        pa.array([[1.0, 2.0]] * N_OTHER, pa.list_(pa.float64(), 2)),
        "'[1.0, 2.0]'",
    ),
}


@pytest.mark.parametrize("case", list(OTHER_TYPES))
def test_a_parquet_feature_of_any_type_is_read_as_its_text(case, run, predictor, tmp_path):
    """Numbers of any width, decimals and bytes that spell a number are that number; a null
    column is missing; dates, booleans and nested values are not numbers: row errors. The
    other columns (a duration, a timestamp with a time zone) pass through with their types."""
    column, values, expected = OTHER_TYPES[case]
    base = {
        "sepal_length_cm": pa.array([5.0 + i / 10 for i in range(N_OTHER)]),
        "sepal_width_cm": pa.array([3.0] * N_OTHER),
        "petal_length_cm": pa.array([1.5] * N_OTHER),
        "petal_width_cm": pa.array([0.25] * N_OTHER),
        "took": pa.array([datetime.timedelta(seconds=i) for i in range(N_OTHER)]),
        "at": pa.array(
            [datetime.datetime(2024, 1, 1, i) for i in range(N_OTHER)], pa.timestamp("us", tz="Europe/Paris")
        ),
    }
    base[column] = values
    inp = tmp_path / "in.parquet"
    pq.write_table(pa.table(base), inp)
    table = pq.read_table(inp)  # the input as Parquet gives it (a dictionary of ints: ints)
    outs = {}
    for engine in ENGINES:
        out = tmp_path / f"{engine}.parquet"
        result = run(engine, inp, out)
        assert result.rows == N_OTHER
        outs[engine] = pq.read_table(out)
    assert outs["local"].equals(outs["torchserve"])
    out = outs["local"]
    assert out.schema == output_schema(list(table.schema), CLASSES)
    assert out.select(table.column_names).equals(table)
    answers = answers_of_table(out, CLASSES)
    if isinstance(expected, str) and expected != "missing":
        assert answers == [
            ("", (None, None, None), f"row {i}: feature {column!r} is not a number: {expected}")
            for i in range(1, N_OTHER + 1)
        ]
        return
    x = np.array([[5.0 + i / 10, 3.0, 1.5, 0.25] for i in range(N_OTHER)])
    k = FEATURES.index(column)
    fill = predictor.schema.columns[k].fill
    x[:, k] = fill if expected == "missing" else expected
    probs = np.array([p for _, p, _ in answers])
    assert [e for _, _, e in answers] == [""] * N_OTHER
    np.testing.assert_allclose(probs, predictor.predict_proba(x), rtol=0, atol=1e-6)


def test_a_parquet_input_with_a_column_the_output_adds_fails_before_any_row(store, tmp_path, capsys):
    inp, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pq.write_table(pa.table({**{f: [1.0] for f in FEATURES}, "error": ["x"]}), inp)
    argv = ["score", str(inp), "-o", str(out), "--engine", "local", "--model-store", str(store)]
    assert main([*argv, "--model", "iris", "--concurrency", "1"]) == 1
    assert capsys.readouterr().err == (
        "Error: the input already has column(s) 'error', which the output adds: "
        "rename or remove them in the input\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet"]


def penguin_inputs() -> tuple[pa.Table, list[list[float]], dict[int, str], dict[str, int]]:
    """The penguins model's columns as typed Parquet with nulls in every column, spellings of
    known categories, unseen ones, and the network inputs each row must reach (by hand: see
    tests/tables.py for the encoding)."""
    islands = ["Biscoe", "Dream", "Torgersen", None, "Atlantis", " dream"]
    sexes = ["female", "male", None, "MALE", "X"]
    n = 90
    bill = [None if i % 7 == 3 else 35.0 + (i % 20) + 0.5 for i in range(n)]
    flipper = [None if i % 9 == 4 else 180 + i % 40 for i in range(n)]
    island = [islands[i % 6] for i in range(n)]
    sex = [sexes[i % 5] for i in range(n)]
    bill[50] = flipper[50] = island[50] = sex[50] = None  # every feature missing: an error
    table = pa.table(
        {
            "id": pa.array([f"p{i}" for i in range(n)]),
            "island": pa.array(island, pa.string()).dictionary_encode(),
            "bill_length": pa.array(bill, pa.float64()),
            "sex": pa.array(sex, pa.string()),
            "flipper": pa.array(flipper, pa.int64()),
        }
    )
    inputs = []
    for i in range(n):
        b, f, isl, s = bill[i], flipper[i], island[i], sex[i]
        row = [44.0 if b is None else b, 1.0 if b is None else 0.0, 200.0 if f is None else float(f)]
        slots = {"Biscoe": 1, "Dream": 2, " dream": 2, "Torgersen": 3, None: 4}
        one = [0.0] * 5
        one[slots.get(isl, 0)] = 1.0  # unseen: <other>
        row += one
        one = [0.0] * 3
        one[{"female": 1, "male": 2, "MALE": 2}.get(s, 0)] = 1.0  # missing or unseen: <other>
        inputs.append(row + one)
    errors = {51: "row 51: every value is missing: nothing to predict from"}
    unseen = {"island": sum(1 for v in island if v == "Atlantis"), "sex": sum(1 for v in sex if v == "X")}
    return table, inputs, errors, unseen


def test_parquet_with_nulls_and_text_categories_scores_as_the_model_says(run, store, tmp_path):
    """Penguins: null numbers get the fill value (and the missing indicator where the model
    has one), a null category its <missing> input or <other>, unseen categories <other> and
    are counted; the CSV of the same rows (nulls as empty fields) gives the same answers."""
    table, inputs, errors, unseen = penguin_inputs()
    inp, as_csv = tmp_path / "penguins.parquet", tmp_path / "penguins.csv"
    pq.write_table(table, inp, row_group_size=25)
    text = ["id,island,bill_length,sex,flipper"]
    for r in table.to_pylist():
        text.append(",".join("" if v is None else str(v) for v in r.values()))
    as_csv.write_text("\n".join(text) + "\n")
    artifacts = store.parent / "penguins"
    expected = forward(artifacts, inputs)
    classes = PENGUIN_CLASSES
    results = {}
    for engine in ENGINES:
        for name, source in (("parquet", inp), ("csv", as_csv)):
            out = tmp_path / f"{engine}-{name}.parquet"
            result = run(engine, source, out, model="penguins")
            assert (result.rows, result.errors) == (table.num_rows, 1), (engine, name)
            assert result.unseen == unseen
            results[engine, name] = pq.read_table(out)
    assert results["local", "parquet"].equals(results["torchserve", "parquet"])
    assert results["local", "csv"].equals(results["torchserve", "csv"])
    answers = answers_of_table(results["local", "parquet"], classes)
    assert answers == answers_of_table(results["local", "csv"], classes)
    for i, (label, probs, error) in enumerate(answers, start=1):
        if i in errors:
            assert (label, probs, error) == ("", (None, None, None), errors[i])
            continue
        assert error == "", (i, error)
        np.testing.assert_allclose(probs, expected[i - 1], rtol=0, atol=1e-6, err_msg=f"row {i}")
        assert label == classes[int(np.argmax(probs))]
    out = results["local", "parquet"]
    assert out.schema == output_schema(list(table.schema), classes)
    assert out.select(table.column_names).equals(table)
    csv_out = results["local", "csv"]
    assert csv_out.schema == output_schema([pa.field(n, pa.string()) for n in table.column_names], classes)


@pytest.mark.parametrize("engine", ENGINES)
def test_an_input_without_rows_gives_an_output_with_the_columns_and_no_rows(engine, iris, run, tmp_path):
    """An empty typed Parquet input keeps its column types in a Parquet output; a CSV with
    only its header gives text columns; both give a CSV output of just the header."""
    empty = tmp_path / "empty.parquet"
    pq.write_table(iris.typed.schema.empty_table(), empty)
    header_only = tmp_path / "header.csv"
    header_only.write_text(",".join(HEADER) + "\n")
    for source, inputs in (
        (empty, list(iris.typed.schema)),
        (header_only, [pa.field(n, pa.string()) for n in HEADER]),
    ):
        out = tmp_path / f"{source.stem}-out.parquet"
        result = run(engine, source, out)
        assert (result.rows, result.errors) == (0, 0)
        table = pq.read_table(out)
        assert table.num_rows == 0
        assert table.schema == output_schema(inputs, CLASSES), source.name
        out = tmp_path / f"{source.stem}-out.csv"
        run(engine, source, out)
        assert csv_rows(out.read_bytes()) == [[f.name for f in inputs] + IRIS_OUT]


# --- resume ------------------------------------------------------------------------------------


class StopAfter:
    """A real engine, interrupted like Ctrl-C (or a server that stops answering) once the
    rows before `row` are sent: what a job sees when it is stopped part way."""

    def __init__(self, engine, row: int, how: str = "ctrl_c") -> None:
        self.engine, self.row, self.how = engine, row, how
        self.columns: list[str] = []

    def probe(self, header: bytes) -> list[str]:
        self.columns = self.engine.probe(header)
        return self.columns

    @property
    def profile(self) -> bool:  # the drift report's counts: the real engine's
        return self.engine.profile

    @profile.setter
    def profile(self, value: bool) -> None:
        self.engine.profile = value

    @property
    def baseline(self):
        return self.engine.baseline

    def alive(self, header: bytes) -> bool:
        return False

    def score(self, body: bytes, n: int, first_row: int, retries: int | None = None):
        if first_row >= self.row:
            if self.how == "ctrl_c":
                raise KeyboardInterrupt
            from tabserve.errors import ServerError

            raise ServerError("the server stopped answering")
        return self.engine.score(body, n, first_row, retries)

    def close(self) -> None:
        pass


def open_engine(kind: str, io_server, pools):
    if kind == "local":
        return pools["iris"]
    from tabserve.batch.engines.torchserve import TokenSource, TorchServeEngine

    return TorchServeEngine(io_server.inference_url, "iris", TokenSource(token_file=io_server.key_file))


def same_output(a: Path, b: Path) -> None:
    if a.suffix == ".parquet":
        ta, tb = pq.read_table(a), pq.read_table(b)
        assert ta.schema == tb.schema
        assert ta.equals(tb)
    else:
        assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("sink", ["csv", "parquet"])
def test_a_parquet_input_stopped_by_max_errors_resumes_to_the_rows_of_one_run(
    sink, files, store, tmp_path, capsys
):
    """The command line: a typed Parquet input in 4 row groups, stopped by --max-errors in
    the batch of its second bad row, then --resume: the output of one uninterrupted run."""
    whole, out = tmp_path / f"whole.{sink}", tmp_path / f"out.{sink}"
    common = ["--engine", "local", "--model-store", str(store), "--model", "iris"]
    common += ["--chunk-rows", str(CHUNK), "--concurrency", "2"]
    assert main(["score", str(files["typed"]), "-o", str(whole), *common]) == 2
    argv = ["score", str(files["typed"]), "-o", str(out), *common]
    assert main([*argv, "--max-errors", "2"]) == 1
    err = capsys.readouterr().err
    # Row 130 (the second error) is in rows 129-144.
    assert "stopped after 144 rows: 2 rows failed (--max-errors 2)" in err
    assert json.loads(Path(f"{out}.part.json").read_text())["reader"]["row"] == 145
    assert main([*argv, "--resume"]) == 2
    assert "(144 of them by the interrupted run)" in capsys.readouterr().out
    same_output(out, whole)
    assert not Path(f"{out}.part").exists() and not Path(f"{out}.part.json").exists()


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("source, sink", [("typed", "parquet"), ("typed", "csv"), ("csv", "parquet")])
def test_an_interrupted_job_resumes_to_the_output_of_one_run(
    engine, source, sink, files, io_server, pools, run, tmp_path
):
    whole, out = tmp_path / f"whole.{sink}", tmp_path / f"out.{sink}"
    run(engine, files[source], whole)
    real = open_engine(engine, io_server, pools)
    stop_at = 3 * CHUNK + 1 if engine == "local" else 5 * CHUNK + 1
    how = "ctrl_c" if engine == "local" else "server_gone"
    config = ScoreConfig(str(files[source]), str(out), chunk_rows=CHUNK, concurrency=3)
    with pytest.raises(JobFailed, match="--resume"):
        score(config, engine=StopAfter(real, stop_at, how))
    cp = json.loads(Path(f"{out}.part.json").read_text())
    assert cp["rows"] == stop_at - 1
    resumed = run(engine, files[source], out, resume=True)
    assert resumed.rows == N and resumed.resumed_rows == stop_at - 1
    same_output(out, whole)
    # The drift report covers the whole job, as one run's does (its counts went on from the
    # checkpoint), and counted every scored row.
    assert resumed.report["job"]["profiled_rows"] == resumed.rows - resumed.errors > 0
    assert report_of(out) == report_of(whole)


def report_of(output: Path) -> dict:
    """OUTPUT.report.json without what names the run (its output and time)."""
    report = json.loads(Path(f"{output}.report.json").read_text())
    del report["job"]["output"], report["job"]["finished"]
    return report


@pytest.mark.parametrize("left_behind", ["segments_after_the_checkpoint", "a_merge_cut_short"])
def test_a_killed_parquet_job_resumes_past_what_it_left_unfinished(
    left_behind, files, pools, run, tmp_path, monkeypatch
):
    """A job killed (SIGKILL) after its checkpoint leaves in OUTPUT.part/ segments the
    checkpoint does not count: a complete one and one cut off before its footer, or a
    merged file cut short while the job was ending. --resume goes on from the checkpoint
    and writes the rows of one run."""
    whole, out = tmp_path / "whole.parquet", tmp_path / "out.parquet"
    run("local", files["typed"], whole)
    # A checkpoint (and a closed segment) after every batch.
    monkeypatch.setattr(ParquetWriter, "checkpoint_seconds", 0.0)
    config = ScoreConfig(str(files["typed"]), str(out), chunk_rows=CHUNK, concurrency=1)
    with pytest.raises(JobFailed):
        score(config, engine=StopAfter(pools["iris"], 6 * CHUNK + 1))
    part = Path(f"{out}.part")
    cp = json.loads(Path(f"{out}.part.json").read_text())
    segments = cp["writer"]["segments"]
    assert cp["rows"] == 6 * CHUNK and segments == 6
    assert sorted(p.name for p in part.iterdir()) == [f"{k:06d}.parquet" for k in range(segments)]
    seg = (part / "000000.parquet").read_bytes()
    # What the killed process had written after its last checkpoint.
    (part / f"{segments:06d}.parquet").write_bytes(seg)  # complete, but not counted
    (part / f"{segments + 1:06d}.parquet").write_bytes(seg[: len(seg) // 2])  # no footer
    if left_behind == "a_merge_cut_short":
        (part / "merged.parquet").write_bytes(seg[: len(seg) - 9])
    resumed = run("local", files["typed"], out, resume=True)
    assert resumed.rows == N and resumed.resumed_rows == 6 * CHUNK
    same_output(out, whole)
    assert not part.exists()


# --- found by a first user and an adversarial run ------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_a_quote_open_at_the_end_of_the_input_is_that_rows_error_not_a_scored_row(engine, run, tmp_path):
    """A quote never closed takes every line after it into its record: read as one row, the
    rest of the file would vanish into its last field, scored, exit 0. It is malformed: kept
    whole in the first column with its error, never scored; the rows before it are scored."""
    inp, out = tmp_path / "open.csv", tmp_path / "open.csv.out"
    good = ["1,0.2,5.1,x,3.5,1.4", "2,2.3,6.7,y,3.0,5.2"]
    swallowed = ['3,0.2,5.1,"open quote,3.5,1.4', "4,2.3,6.7,after,3.0,5.2", "5,2.3,6.7,z,3.0,5.2"]
    inp.write_text("\n".join([",".join(HEADER), *good, *swallowed]) + "\n")
    result = run(engine, inp, out)
    assert (result.rows, result.errors) == (3, 1)
    rows = read_csv_output(out)[1:]  # after the header
    assert [r[0] for r in rows[:2]] == ["1", "2"] and all(r[-1] == "" for r in rows[:2])
    assert rows[2][0] == "\n".join(swallowed) + "\n"
    assert rows[2][-1] == "row 3: a quote is never closed: its field runs to the end of the input (3 lines)"


def test_resume_refuses_another_chunk_size(files, run, tmp_path):
    """A float32 result's last digits depend on the rows of its batch: a resumed job must cut
    its batches as the first one did, or its output would match neither run."""
    out = tmp_path / "out.csv"
    with pytest.raises(JobFailed):
        run("local", files["csv"], out, max_errors=1)
    with pytest.raises(ConfigError, match=f"started with --chunk-rows {CHUNK}, not 7"):
        run("local", files["csv"], out, resume=True, chunk_rows=7, max_errors=None)
    assert run("local", files["csv"], out, resume=True, max_errors=None).rows == N


def test_a_parquet_file_without_its_extension_is_named_as_parquet(files, tmp_path, capsys):
    renamed = tmp_path / "data.bin"
    renamed.write_bytes(files["typed"].read_bytes())
    assert main(["score", str(renamed), "-o", str(tmp_path / "o.csv"), "--engine", "local"]) == 1
    assert "is a Parquet file, not CSV: name it .parquet or .pq, or give --input-format parquet" in (
        capsys.readouterr().err
    )


def test_resuming_a_parquet_input_with_row_groups_of_different_sizes(iris, pools, run, tmp_path):
    """A checkpoint inside a row group, and smaller groups after it: --resume reads on from
    the right row (it once re-read part of a group and dropped the last one)."""
    inp = tmp_path / "uneven.parquet"
    with pq.ParquetWriter(inp, iris.typed.schema) as w:
        for start, size in ((0, 70), (70, 10), (80, 10), (90, 110)):  # groups of 70, 10, 10, 110
            w.write_table(iris.typed.slice(start, size))
    assert [pq.ParquetFile(inp).metadata.row_group(g).num_rows for g in range(4)] == [70, 10, 10, 110]
    whole, out = tmp_path / "whole.csv", tmp_path / "out.csv"
    run("local", inp, whole)
    config = ScoreConfig(str(inp), str(out), chunk_rows=CHUNK, concurrency=1)
    with pytest.raises(JobFailed):
        score(config, engine=StopAfter(pools["iris"], 3 * CHUNK + 1))  # row 48, inside group 1
    assert run("local", inp, out, resume=True).rows == N
    assert out.read_bytes() == whole.read_bytes()


def test_hostile_parquet_text_columns_are_read_as_csv_fields_would_be(iris, run, tmp_path):
    """A large_string column holding commas and quotes, and a string column with invalid
    UTF-8 (U+FFFD, as in a CSV field), are passed through and the rows scored."""
    t = iris.typed.slice(0, 4)
    plain = tmp_path / "plain.parquet"
    pq.write_table(t, plain)
    expected = run("local", plain, tmp_path / "plain.csv")
    ids = pa.array(["a,b", 'say "hi"', "multi\nline", "ok"], pa.large_string())
    bad = pa.array([b"fine", b"\xffbad", None, b"x"], pa.binary()).view(pa.string())
    t = t.set_column(t.schema.get_field_index("id"), "id", ids).append_column("raw", bad)
    inp = tmp_path / "hostile.parquet"
    pq.write_table(t, inp)
    for out in (tmp_path / "o.csv", tmp_path / "o.parquet"):
        result = run("local", inp, out)
        assert (result.rows, result.errors) == (4, expected.errors)
    rows = read_csv_output(tmp_path / "o.csv")
    assert [r[0] for r in rows[1:]] == ["a,b", 'say "hi"', "multi\nline", "ok"]
    assert rows[2][-len(IRIS_OUT) - 1] == "\ufffdbad"


def test_a_bare_carriage_return_in_a_csv_field_is_that_rows_error_in_every_output(run, tmp_path):
    inp = tmp_path / "cr.csv"
    inp.write_bytes(
        (
            ",".join(HEADER) + '\n1,0.2,5.1,a\rb,3.5,1.4\n2,0.2,5.1,"q\r",3.5,1.4\n3,0.2,5.1,c,3.5,1.4\n'
        ).encode()
    )
    for out in (tmp_path / "cr.csv.out", tmp_path / "cr.parquet"):
        result = run("local", inp, out)
        assert (result.rows, result.errors) == (3, 1)
    table = pq.read_table(tmp_path / "cr.parquet")
    assert table.column("id").to_pylist() == ["1,0.2,5.1,a\rb,3.5,1.4", "2", "3"]
    assert "carriage return" in table.column("error").to_pylist()[0]
