"""--engine spark in local mode: the archive's handler on Spark executors writes the bytes
--engine local writes (the same batch function, containment and text), and bad input fails
before any Spark job."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tabserve.archive import ArchiveConfig, archive
from tabserve.cli import main

from .tables import write_penguins, write_price
from .test_score import MALFORMED, write_csv

pytestmark = pytest.mark.integration


def read_parts(folder: Path) -> list[list[str]]:
    rows: list[list[str]] = []
    for part in sorted(folder.glob("part-*")):
        with open(part, newline="") as f:
            rows += list(csv.reader(f))
    return rows


def spark_bytes(folder: Path) -> bytes:
    """Spark's part files in name order: the same bytes as one output file."""
    assert (folder / "_SUCCESS").exists()
    return b"".join(p.read_bytes() for p in sorted(folder.glob("part-*")))


def spark_table(folder: Path):
    """A Parquet output folder's part files in name order, as one table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    assert (folder / "_SUCCESS").exists()
    return pa.concat_tables([pq.read_table(p) for p in sorted(folder.glob("part-*.parquet"))])


@pytest.fixture(scope="module")
def spark():
    """One local[2] session for the module's jobs: `--engine spark` uses the session this
    process runs (and leaves it running), so each job does not start its own."""
    import os

    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    session = (
        SparkSession.builder.master("local[2]")
        .appName("tabserve-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    yield session
    session.stop()


def jobs_run(spark) -> int:
    return len(spark.sparkContext.statusTracker().getJobIdsForGroup(None))


@pytest.fixture(scope="module")
def penguins_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The models of tests/tables.py, archived: penguins (text categories, missing values;
    classification) and price (regression)."""
    root = tmp_path_factory.mktemp("spark_tables")
    write_penguins(root / "penguins")
    write_price(root / "price")
    for name in ("penguins", "price"):
        archive(ArchiveConfig(artifacts=root / name, model_store=root / "store", workers=1))
    return root / "store"


PENGUIN_HEADER = "id,island,bill_length,sex,flipper,note"
# Data row number -> a bad or unusual record, and the error it must get ("" for none).
PENGUIN_ODD_ROWS = {
    3: ('3,Atlantis,41.1,male,190,"note, 3"', ""),  # a category never seen in training
    5: ("5,Dream,41", "row 5: expected 6 fields, got 3"),
    8: ('8,Biscoe,abc,female,190,"note, 8"', "row 8: feature 'bill_length' is not a number: 'abc'"),
    11: ('11,,NA,,,"note, 11"', "row 11: every value is missing: nothing to predict from"),
    12: ('12,,NA,female,,"all but sex missing"', ""),  # imputed
    13: ('13,"Dream, North",41,female', "row 13: expected 6 fields, got 4"),  # quoted, padded
    17: ('17,Mars,39.5,X,200,"unseen, twice"', ""),
    20: ('20,Torgersen,inf,male,181,"note, 20"', "row 20: feature 'bill_length' is not finite: 'inf'"),
    21: ("21,Biscoe,40.2,female,190,x,y", "row 21: expected 6 fields, got 7"),
    22: ('22,Biscoe,1e400,female,190,"note, 22"', "row 22: feature 'bill_length' is not finite: '1e400'"),
}


def penguin_lines(n: int = 40) -> list[str]:
    islands, sexes = ("Biscoe", "Dream", "Torgersen"), ("female", "male")
    lines = [PENGUIN_HEADER]
    for i in range(1, n + 1):
        odd = PENGUIN_ODD_ROWS.get(i)
        if odd:
            lines.append(odd[0])
        else:
            bill = f"{35 + i % 20 + 0.1 * (i % 10):.1f}"
            lines.append(f'{i},{islands[i % 3]},{bill},{sexes[i % 2]},{180 + i % 40},"note, {i}"')
    return lines


def test_spark_output_equals_the_local_engine_row_for_row(tmp_path, model_store, spark):
    inp = tmp_path / "in.csv"
    write_csv(inp, 30_000)  # IDs, shuffled feature columns, a comment column, malformed lines
    spark_out, local_out = tmp_path / "spark_out", tmp_path / "local.csv"
    argv = ["score", str(inp), "--model-store", str(model_store), "--chunk-rows", "1000"]
    assert (
        main([*argv, "-o", str(spark_out), "--engine", "spark", "--master", "local[2]", "--partitions", "3"])
        == 2
    )
    assert main([*argv, "-o", str(local_out), "--engine", "local"]) == 2
    assert (spark_out / "_SUCCESS").exists() and len(list(spark_out.glob("part-*"))) == 3
    spark_rows = read_parts(spark_out)
    # The part files in name order are the input in order: every id once, ascending.
    ids = [int(r[0]) for r in spark_rows[1:] if not r[0].startswith("bad")]
    assert ids == list(range(30_000))
    with open(local_out, newline="") as f:
        local_rows = list(csv.reader(f))
    assert len(spark_rows) == len(local_rows) == 30_000 + len(MALFORMED) + 1
    # Everything but the probabilities is identical; the probabilities agree within 1e-6
    # (other chunk boundaries can change a float32 matmul's last bits).
    assert [r[:6] + [r[6], r[-1]] for r in spark_rows] == [r[:6] + [r[6], r[-1]] for r in local_rows]
    p_spark = np.array([[float(v or "nan") for v in r[7:10]] for r in spark_rows[1:]])
    p_local = np.array([[float(v or "nan") for v in r[7:10]] for r in local_rows[1:]])
    np.testing.assert_allclose(p_spark, p_local, rtol=0, atol=1e-6)
    assert sum(1 for r in spark_rows[1:] if r[-1]) == len(MALFORMED)


def test_spark_writes_the_bytes_of_the_local_engine_for_bad_rows_and_unseen_categories(
    tmp_path, penguins_store, capsys, spark
):
    """Wrong widths (one quoted, padded), text in a number, missing values, non-finite
    numbers and unseen categories: one partition in chunks of 8 rows, so Spark's chunks are
    the local engine's, and the output is the same file, header line included."""
    lines = penguin_lines()
    inp = tmp_path / "in.csv"
    inp.write_text("\n".join(lines) + "\n")
    store = ["--model-store", str(penguins_store), "--model", "penguins"]
    argv = ["score", str(inp), *store, "--chunk-rows", "8"]
    summaries = {}
    for engine, options in {"spark": ["--master", "local[1]"], "local": ["--concurrency", "2"]}.items():
        assert main([*argv, "-o", str(tmp_path / f"{engine}.out"), "--engine", engine, *options]) == 2
        summaries[engine] = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("scored "))
    data = spark_bytes(tmp_path / "spark.out")
    assert data == (tmp_path / "local.out").read_bytes()

    rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    assert rows[0] == [*PENGUIN_HEADER.split(","), "label", "p_Adelie", "p_Chinstrap", "p_Gentoo", "error"]
    assert len(rows) == len(lines)
    expected = {i: error for i, (_, error) in PENGUIN_ODD_ROWS.items() if error}
    assert {i: r[-1] for i, r in enumerate(rows[1:], start=1) if r[-1]} == expected
    assert rows[13][:10] == ['13,"Dream, North",41,female', *[""] * 9]  # its text, then padding
    assert all(r[6] and not r[-1] for i, r in enumerate(rows[1:], start=1) if i not in expected)
    n, bad = len(lines) - 1, len(expected)
    for engine, summary in summaries.items():
        assert summary.startswith(
            f"scored {n} rows: {n - bad} ok, {bad} errors; unseen categories: island 2, sex 1; "
        ), (engine, summary)
    # The drift reports hold the same numbers, the rows errors by kind among them.
    reports = [json.loads(Path(f"{tmp_path / f'{e}.out'}.report.json").read_text()) for e in summaries]
    for r in reports:
        for key in ("input", "output", "engine", "finished", "blank_lines"):
            r["job"].pop(key)
    assert reports[0] == reports[1]
    assert sum(reports[0]["errors"]["kinds"].values()) == bad
    assert reports[0]["features"]["island"]["unseen"] == 2


class _Poisoned:
    """The archive's LocalModel, but a body holding `refuse` is answered 413 and one holding
    `boom` makes it raise: whole-chunk failures that only splitting can pin on their rows."""

    def __init__(self, model) -> None:
        self.model = model

    def respond(self, body: bytes, first_row: int, accept: str):
        import types

        if b"refuse" in body:
            message = '{"code": 413, "type": "PayloadTooLarge", "message": "too big"}'
            return types.SimpleNamespace(status=413, body=message, headers={})
        if b"boom" in body:
            raise RuntimeError("boom")
        return self.model.respond(body, first_row, accept=accept)


def test_a_chunk_refused_or_failed_is_split_on_spark_as_the_pipeline_splits_it(tmp_path, model_store):
    """The executors' batch function (spark_tasks.score_batch), run in-process with a
    handler that refuses or fails whole chunks: the same rows get the same "chunk refused"
    errors, and the file the same bytes, as tabserve.batch.pipeline.score_contained and the
    CSV writer give."""
    import pyarrow as pa

    from tabserve.batch import spark_tasks
    from tabserve.batch.engines.local import LocalEngine
    from tabserve.batch.pipeline import score_contained
    from tabserve.batch.readers import Batch
    from tabserve.batch.writers import CsvWriter

    header = "id,sepal_length_cm,sepal_width_cm,petal_length_cm,petal_width_cm"
    lines = [f"{i},5.1,3.5,1.4,0.2" for i in range(12)]
    lines[3] = "refuse,5.1,3.5,1.4,0.2"
    lines[7] = "boom,5.1,3.5"  # another width too: its text is quoted into the first column
    columns = ["label", "p_setosa", "p_versicolor", "p_virginica", "error"]
    engine = LocalEngine(model_store / "iris.mar")
    key = f"poisoned-{tmp_path.name}.mar"
    try:
        engine.model = _Poisoned(engine.model)
        spark_tasks._models[key] = engine.model
        task = spark_tasks.Task(
            key, "text", header.encode(), header.encode(), header.split(","), columns, "csv"
        )
        records = [line.encode() for line in lines]
        rb = pa.RecordBatch.from_arrays([pa.array(records, pa.binary())], ["value"])
        out = spark_tasks.score_batch(task, rb, 1)
        spark = header.encode() + b"," + b",".join(c.encode() for c in columns) + b"\n"
        spark += b"".join(line + b"\n" for line in out.column(0).to_pylist())

        batch = Batch(0, 1, len(lines), {}, records=records, header=header.encode())
        results = score_contained(engine, batch, 0, batch.n, 3, True)
        writer = CsvWriter(str(tmp_path / "local.csv"))
        writer.start(header.split(","), header.encode(), columns, None)
        writer.write(writer.render(batch, results))
        writer.commit()
    finally:
        spark_tasks._models.pop(key, None)
        engine.close()
    assert results.errors == {
        3: "row 4: chunk refused: too big",
        7: "row 8: chunk refused: the model's handler failed on the batch starting at row 8: "
        "RuntimeError: boom",
    }
    assert spark == (tmp_path / "local.csv").read_bytes()


def test_bad_input_or_output_fails_before_any_spark_job(tmp_path, model_store, spark):
    """A missing feature column (in a CSV header or a Parquet schema), a folder whose files
    disagree on the header, an output that exists: refused on the driver, no job run."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tabserve import spark_job

    mar = model_store / "iris.mar"
    inp = tmp_path / "in.csv"
    inp.write_text("id,sepal_length_cm,petal_length_cm\n1,5.1,1.4\n")
    pq.write_table(pa.table({"sepal_length_cm": [5.1], "x": [1]}), tmp_path / "in.parquet")
    folder = tmp_path / "parts"
    folder.mkdir()
    header = "id,sepal_length_cm,sepal_width_cm,petal_length_cm,petal_width_cm"
    (folder / "a.csv").write_text(header + "\n1,5.1,3.5,1.4,0.2\n")
    (folder / "b.csv").write_text(header.replace("id,", "key,") + "\n2,5.1,3.5,1.4,0.2\n")
    (tmp_path / "exists").mkdir()
    before = jobs_run(spark)
    cases = {
        str(inp): "CSV header lacks feature column\\(s\\) 'sepal_width_cm', 'petal_width_cm'",
        str(tmp_path / "in.parquet"): "the Parquet input lacks feature column\\(s\\) 'sepal_width_cm'",
        str(folder): "b.csv has header 'key,sepal_length_cm,.*', not that of .*a.csv",
    }
    for path, message in cases.items():
        with pytest.raises(spark_job.SparkJobError, match=message):
            spark_job.run(spark, mar, path, str(tmp_path / "out"))
    with pytest.raises(spark_job.SparkJobError, match="exists already|already exists"):
        spark_job.run(spark, mar, str(folder / "a.csv"), str(tmp_path / "exists"))
    assert jobs_run(spark) == before
    assert not (tmp_path / "out").exists()


def test_spark_job_module_runs_as_a_script_where_tabserve_is_not_installed(tmp_path, model_store):
    """What spark-submit runs: the module file with its own options, on a driver and
    executors where `import tabserve` fails (a stub on PYTHONPATH hides the installed one): the
    driver ships tabserve/batch/results.py from beside the file, and the output is still the
    local engine's, byte for byte."""
    import os
    import subprocess

    inp = tmp_path / "in.csv"
    write_csv(inp, 500)
    stub = tmp_path / "stub" / "tabserve"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text('raise ImportError("tabserve is not installed here")\n')
    out = tmp_path / "out"
    script = Path(__file__).resolve().parent.parent / "tabserve" / "spark_job.py"
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYTHONPATH": str(stub.parent)}
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            str(inp),
            str(out),
            "--archive",
            str(model_store / "iris.mar"),
            "--master",
            "local[1]",
            "--chunk-rows",
            "100",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "scored 505 rows: 500 ok, 5 errors" in proc.stdout
    local = tmp_path / "local.csv"
    argv = ["score", str(inp), "-o", str(local), "--model-store", str(model_store), "--engine", "local"]
    assert main([*argv, "--chunk-rows", "100"]) == 2
    assert spark_bytes(out) == local.read_bytes()


def test_poison_lines_on_spark_get_their_own_errors_and_every_row_is_kept(tmp_path, model_store, spark):
    """Spark reads physical lines: an unbalanced quote, a 200 KB field (quoted or not), 1e39
    and non-ASCII text each get a row error and the job keeps every row."""
    header = "id,sepal_length_cm,sepal_width_cm,petal_length_cm,petal_width_cm"
    good = [f"{i},5.1,3.5,1.4,0.2" for i in range(40)]
    poison = {
        5: 'q,"5.1,3.5,1.4,0.2',
        12: "big," + "7" * 200_000 + ",1,1,1",
        20: "huge,1e39,3.5,1.4,0.2",
        25: 'quoted,"' + "7" * 200_000 + '",1,1,1',  # over the csv module's default field limit
        31: "café,x,3.5,1.4,0.2",
    }
    lines = [header]
    for i, line in enumerate(good):
        lines.append(line)
        if i in poison:
            lines.append(poison[i])
    inp, out = tmp_path / "in.csv", tmp_path / "out"
    inp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    argv = ["score", str(inp), "-o", str(out), "--model-store", str(model_store), "--engine", "spark"]
    assert main([*argv, "--master", "local[1]", "--chunk-rows", "16"]) == 2
    limit = csv.field_size_limit(1 << 20)  # the output keeps the 200 KB field
    try:
        rows = read_parts(out)
    finally:
        csv.field_size_limit(limit)
    assert len(rows) == len(lines)
    errors = {r[0]: r[-1] for r in rows[1:] if r[-1]}
    assert set(errors) == {'q,"5.1,3.5,1.4,0.2', "big", "quoted", "huge", "café"}, errors
    assert "out of float32 range" in errors["huge"] and "'x'" in errors["café"]
    assert all(r[5] == "setosa" for r in rows[1:] if not r[-1])


def _price_lines(n: int) -> list[str]:
    """Regression input: numbers, a category, missing values, and bad rows spread through."""
    colours = ("red", "blue", "", "purple")
    lines = ["id,age,colour,size"]
    odd = {7: "7,3", 500: "500,abc,red,2.5", 1200: "1200,inf,blue,1.5", 2999: "2999,1,red,2,9"}
    for i in range(1, n + 1):
        lines.append(odd.get(i, f"{i},{i % 11},{colours[i % 4]},{1 + (i % 7) * 0.5}"))
    return lines


def _as_parquet(lines: list[str], path: Path, row_group: int = 500) -> Path:
    """The rows of a CSV text as Parquet with typed columns where every value is a number
    (id int64, others double), text elsewhere; malformed records left out (Parquet has none)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = lines[0].split(",")
    rows = [r for r in csv.reader(lines[1:]) if len(r) == len(names)]
    cols = {}
    for j, name in enumerate(names):
        values = [r[j] for r in rows]
        try:
            cols[name] = (
                pa.array([int(v) for v in values]) if j == 0 else pa.array([float(v) for v in values])
            )
        except ValueError:
            cols[name] = pa.array([v or None for v in values], pa.string())
    pq.write_table(pa.table(cols), path, row_group_size=row_group)
    return path


def _rows_of(path: Path, fmt: str) -> list[list]:
    """An output (a file, or Spark's folder) as rows of values."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        table = spark_table(path) if path.is_dir() else pq.read_table(path)
        return [list(r.values()) for r in table.to_pylist()]
    if path.is_dir():
        return read_parts(path)
    with open(path, newline="") as f:
        return list(csv.reader(f))


@pytest.mark.parametrize(
    ("model", "input_format", "output_format"),
    [
        ("penguins", "csv", "parquet"),
        ("penguins", "parquet", "csv"),
        ("price", "csv", "csv"),
        ("price", "parquet", "parquet"),
    ],
)
def test_spark_equals_the_local_engine_on_csv_and_parquet_with_several_partitions(
    tmp_path, penguins_store, spark, model, input_format, output_format
):
    """Classification and regression; CSV and Parquet in and out; bad rows; three
    partitions: the same rows in the same order as --engine local, the same labels, errors
    and columns, the numbers within float32 noise (other batch boundaries)."""
    lines = penguin_lines(6000) if model == "penguins" else _price_lines(6000)
    inp = tmp_path / f"in.{input_format}"
    if input_format == "csv":
        inp.write_text("\n".join(lines) + "\n")
    else:
        _as_parquet(lines, inp)
    outs = {e: tmp_path / f"{e}.{output_format}" for e in ("spark", "local")}
    argv = ["score", str(inp), "--model-store", str(penguins_store), "--model", model, "--chunk-rows", "700"]
    for engine, out in outs.items():
        extra = ["--partitions", "3"] if engine == "spark" else []
        assert main([*argv, "-o", str(out), "--engine", engine, *extra]) == 2
    assert len(list(outs["spark"].glob("part-*"))) == 3
    spark_rows, local_rows = (_rows_of(outs[e], output_format) for e in ("spark", "local"))
    assert (
        len(spark_rows)
        == len(local_rows)
        == len(lines)
        - (1 if output_format == "parquet" else 0)
        - (
            sum(1 for r in csv.reader(lines[1:]) if len(r) != len(lines[0].split(",")))
            if input_format == "parquet"
            else 0
        )
    )
    width = len(lines[0].split(","))
    numbers = slice(width + 1, -1) if model == "penguins" else slice(width, width + 1)

    def fixed(rows):  # everything but the numbers
        return [r[: numbers.start] + r[numbers.stop :] for r in rows]

    def values(rows):
        start = 1 if output_format == "csv" else 0
        return np.array(
            [[float(v) if v not in ("", None) else np.nan for v in r[numbers]] for r in rows[start:]]
        )

    assert fixed(spark_rows) == fixed(local_rows)
    np.testing.assert_allclose(values(spark_rows), values(local_rows), rtol=1e-6, atol=1e-6)
    errors = [r[-1] for r in spark_rows[1 if output_format == "csv" else 0 :] if r[-1]]
    assert len(errors) >= 2 and all(e.startswith("row ") for e in errors)
    if output_format == "parquet":
        import pyarrow.parquet as pq

        spark_schema = spark_table(outs["spark"]).schema
        local_schema = pq.read_schema(outs["local"])
        assert [(f.name, f.type) for f in spark_schema] == [(f.name, f.type) for f in local_schema]


def test_a_folder_is_read_in_name_order_and_blank_lines_are_skipped_as_everywhere(
    tmp_path, model_store, spark
):
    """Three CSV files of different sizes (Spark's scan would order them by size), with blank
    lines of every kind the other engines skip (spaces, tabs, no-break and ideographic
    spaces), CRLF line ends, a BOM, and gzip: the output is the files' rows in name order,
    numbered through the folder as if the files were one, as --engine local numbers them."""
    import gzip

    header = "id,sepal_length_cm,sepal_width_cm,petal_length_cm,petal_width_cm"
    folder = tmp_path / "in"
    folder.mkdir()
    blanks = ["", "   ", "\t", "\u00a0", "\u3000 ", "\x1c\u00a0"]
    sizes = {"a.csv": 30, "b.csv.gz": 300, "c.csv": 3}
    whole, start = [header], 0
    for name, n in sizes.items():
        rows = [f"{start + i},5.1,3.5,1.4,0.2" for i in range(n)]
        rows[n // 2] = f"{start + n // 2},5.1,x,1.4,0.2"  # one bad row per file
        body = [header]
        for i, r in enumerate(rows):
            body.append(r)
            body.append(blanks[i % len(blanks)]) if i % 5 == 0 else None
        text = "\r\n".join(body) + "\r\n"
        if name == "a.csv":
            text = "\ufeff" + text
        (folder / name).write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
        whole += body[1:]
        start += n
    ones = tmp_path / "whole.csv"
    ones.write_text("\n".join(whole) + "\n")
    out, local = tmp_path / "out", tmp_path / "local.csv"
    store = ["--model-store", str(model_store)]
    assert main(["score", str(folder), "-o", str(out), *store, "--engine", "spark"]) == 2
    assert main(["score", str(ones), "-o", str(local), *store, "--engine", "local"]) == 2
    spark_rows, local_rows = read_parts(out), _rows_of(local, "csv")
    assert [r[0] for r in spark_rows[1:]] == [str(i) for i in range(sum(sizes.values()))]
    assert [r[:6] + [r[-1]] for r in spark_rows] == [r[:6] + [r[-1]] for r in local_rows]
    assert [r[-1] for r in spark_rows[1:] if r[-1]] == [
        "row 16: feature 'sepal_width_cm' is not a number: 'x'",
        "row 181: feature 'sepal_width_cm' is not a number: 'x'",
        "row 332: feature 'sepal_width_cm' is not a number: 'x'",
    ]


def test_multiline_reads_quoted_line_breaks_with_sparks_csv_reader(tmp_path, model_store, spark):
    """--multiline: Spark's CSV reader, whose quoted fields may span lines; each record is
    handed to the handler as CSV text again, and a malformed one as its own text: the same
    rows, values and errors as --engine local. Without it, each line is a record."""
    header = "id,sepal_length_cm,sepal_width_cm,petal_length_cm,petal_width_cm,note"
    lines = [header]
    for i in range(40):
        note = f'"two\nlines, {i}"' if i % 7 == 0 else f"note {i}"
        lines.append(f"{i},5.1,3.5,1.4,0.2,{note}")
    lines[10] = "9,5.1,3.5"  # too few fields
    lines[20] = '19,5.1,abc,1.4,0.2,"a ""quoted"" note"'
    inp = tmp_path / "in.csv"
    inp.write_text("\n".join(lines) + "\n")
    store = ["--model-store", str(model_store)]
    out, local, parquet = tmp_path / "out", tmp_path / "local.csv", tmp_path / "out.parquet"
    assert main(["score", str(inp), "-o", str(out), *store, "--engine", "spark", "--multiline"]) == 2
    assert main(["score", str(inp), "-o", str(parquet), *store, "--engine", "spark", "--multiline"]) == 2
    assert main(["score", str(inp), "-o", str(local), *store, "--engine", "local"]) == 2
    spark_rows, local_rows = read_parts(out), _rows_of(local, "csv")
    assert len(spark_rows) == 41
    assert [r[:7] + [r[-1]] for r in spark_rows] == [r[:7] + [r[-1]] for r in local_rows]
    assert spark_rows[1][5] == "two\nlines, 0"
    assert {r[-1] for r in spark_rows[1:] if r[-1]} == {
        "row 10: expected 6 fields, got 3",
        "row 20: feature 'sepal_width_cm' is not a number: 'abc'",
    }
    as_text = [["" if v is None else v for v in r[:7]] + [r[-1] or ""] for r in _rows_of(parquet, "parquet")]
    assert as_text == [r[:7] + [r[-1]] for r in local_rows[1:]]
    # Line by line (the default), a quoted line break splits a record: every line is a row.
    out2 = tmp_path / "out2"
    assert main(["score", str(inp), "-o", str(out2), *store, "--engine", "spark"]) == 2
    # Each half has a quote left open: each gets that error, and its text quoted, so the
    # output's next lines stay their own rows.
    rows = read_parts(out2)
    assert len(rows) == len(inp.read_text().splitlines())
    assert (
        rows[1][0] == '0,5.1,3.5,1.4,0.2,"two'
        and "a quote is left open at the end of the line" in rows[1][-1]
    )
    assert rows[2][0] == 'lines, 0"' and rows[2][-1].startswith("row 2: a quote is left open")


def test_the_cli_starts_its_own_session_with_a_class_archive_and_the_torch_daemon(tmp_path, model_store):
    """`tabserve score --engine spark` in a process with no session: it starts one (C1, the
    class archive, the daemon that imports torch once) and stops it. The first run writes the
    archive at its JVM's exit and puts it in place; the second maps it; both write the same
    output as --engine local."""
    import os
    import subprocess

    inp = tmp_path / "in.csv"
    write_csv(inp, 300)
    local = tmp_path / "local.csv"
    argv = ["score", str(inp), "--model-store", str(model_store), "--chunk-rows", "100"]
    assert main([*argv, "-o", str(local), "--engine", "local"]) == 2
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYSPARK_PYTHON": sys.executable}
    env.pop("TABSERVE_SPARK_CDS", None)
    cds = tmp_path / "cache" / "tabserve" / "spark-cds"
    for k in range(2):
        out = tmp_path / f"out{k}"
        cli = [
            sys.executable,
            "-m",
            "tabserve",
            *argv,
            "-o",
            str(out),
            "--engine",
            "spark",
            "--master",
            "local[1]",
        ]
        proc = subprocess.run(cli, capture_output=True, text=True, env=env)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "scored 305 rows: 300 ok, 5 errors" in proc.stdout
        assert spark_bytes(out) == local.read_bytes()
        archives = list(cds.glob("*"))
        assert [p.suffix for p in archives] == [".jsa"] and archives[0].stat().st_size > 10_000_000, archives


def test_the_class_archive_is_kept_only_when_the_jvm_ended_normally(tmp_path, monkeypatch):
    from tabserve.batch.engines.spark import ClassArchive

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    archive = ClassArchive.for_this_jvm()
    assert archive is not None and archive.path.parent == tmp_path / "tabserve" / "spark-cds"
    assert ClassArchive.for_this_jvm().path == archive.path  # one name for one JVM and Spark
    for ended, kept in ((False, False), (True, True)):
        options = archive.java_options()
        assert options.startswith(f"-XX:ArchiveClassesAtExit={archive.writing} ")
        archive.writing.write_bytes(b"an archive")
        archive.keep_after(ended)
        assert archive.path.is_file() == kept and not archive.writing.exists()
    assert archive.java_options().startswith(f"-XX:SharedArchiveFile={archive.path} ")
    monkeypatch.setenv("TABSERVE_SPARK_CDS", "0")
    assert ClassArchive.for_this_jvm() is None


def test_blank_lines_in_the_jvm_are_exactly_the_other_engines_blank_lines(spark):
    """The JVM's filter (spark_job._blank) against tabserve.csvio's definition, on every
    character below U+3001 alone and after a space, lines that start with a space, a tab, a
    NUL or a control character and go on, and random strings of whitespace and other
    characters: one Spark job for them all."""
    import random

    from pyspark.sql.functions import col
    from pyspark.sql.types import StringType, StructField, StructType

    from tabserve.csvio import _is_blank
    from tabserve.spark_job import _blank

    chars = [chr(c) for c in range(0x3001) if not 0xD800 <= c < 0xE000]
    lines = ["", *chars, *(" " + c for c in chars), *(c + "1,5.1" for c in " \t\x00\x1c\x0b\r\u00a0\u3000")]
    spaces = [c for c in chars if c.isspace()] + [" ", "\t"]
    rng = random.Random(0)
    for _ in range(3000):
        pool = spaces if rng.random() < 0.7 else spaces + ["a", "\x1c", "\x00", "é", ","]
        lines.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 6))))
    df = spark.createDataFrame([(line,) for line in lines], StructType([StructField("v", StringType())]))
    got = [r[0] for r in df.select(_blank(col("v"))).collect()]
    want = [_is_blank(line.encode("utf-8")) for line in lines]
    assert sum(want) > 100 and len(got) == len(want)
    assert [line for line, g, w in zip(lines, got, want) if bool(g) != w] == []


def test_hostile_lines_keep_their_rows_and_numbers_as_in_the_local_engine(tmp_path, model_store, spark):
    """Lines that start with a space, a tab, a NUL or a control character; invalid UTF-8 in a
    data row and in the header's name of a column the model does not use; lines of only
    whitespace (skipped, also with --multiline, whose reader would make rows of them): every
    data row once, with the local engine's row numbers, errors and text."""
    data = (
        b"caf\xe9,id,sepal_length_cm,sepal_width_cm,petal_length_cm,petal_width_cm\n"
        b"a, 1,5.1,3.5,1.4,0.2\n"
        b"\tb,2,5.1,3.5,1.4,0.2\n"
        b"\x1c\n"
        b"   \n"
        b"\x00c,4,5.1,3.5,1.4,0.2\n"
        b"\t\n"
        b"d\xff,5,6.1,2.8,4.7,1.2\n"
        b"\xa0\n"
        b"\xc2\xa0\n"
        b"e,6,x,3.3,6.0,2.5\n"
        b"f,7,6.3,3.3,6.0,2.5\n"
    )
    inp = tmp_path / "in.csv"
    inp.write_bytes(data)
    local = tmp_path / "local.csv"
    store = ["--model-store", str(model_store)]
    assert main(["score", str(inp), "-o", str(local), *store, "--engine", "local"]) == 2
    want = local.read_bytes()
    for options in ([], ["--multiline"]):
        out = tmp_path / f"out{len(options)}"
        assert main(["score", str(inp), "-o", str(out), *store, "--engine", "spark", *options]) == 2
        got = spark_bytes(out)
        if not options:
            assert got == want
        else:  # Spark's CSV reader: fields re-quoted where needed; the same rows and errors
            rows = list(csv.reader(io.StringIO(got.decode(), newline="")))
            local_rows = list(csv.reader(io.StringIO(want.decode(), newline="")))
            assert [r[-1] for r in rows] == [r[-1] for r in local_rows]
            assert [r[6] for r in rows] == [r[6] for r in local_rows]
    errors = [r[-1] for r in csv.reader(io.StringIO(want.decode(), newline="")) if r[-1]][1:]
    assert errors == [
        "row 3: empty line",
        "row 6: expected 6 fields, got 1",
        "row 7: feature 'sepal_length_cm' is not a number: 'x'",
    ]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(
        st.one_of(
            st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b"")),
            st.sampled_from(
                [b"1,5.1,3.5,1.4,0.2", b'2,"5.1",3.5,1.4,0.2', b'3,"a,b",1,1,1', b"4,1e39,1,1,1"]
            ),
        ),
        min_size=1,
        max_size=40,
    ),
    first_row=st.integers(1, 10**9),
)
def test_the_executors_batch_function_answers_every_line_of_arbitrary_bytes(lines, first_row, iris_model):
    """spark_tasks.score_batch on lines of arbitrary bytes (as Spark's text reader hands
    them over: no line ends): never raises, one output line per input line, each a CSV row
    of the output's width in UTF-8, an error naming its own row or a label."""
    import pyarrow as pa

    from tabserve.batch import spark_tasks

    header = b"id,sepal_length_cm,sepal_width_cm,petal_length_cm,petal_width_cm"
    columns = ["label", "p_setosa", "p_versicolor", "p_virginica", "error"]
    task = spark_tasks.Task(iris_model, "text", header, header, header.decode().split(","), columns, "csv")
    rb = pa.RecordBatch.from_arrays([pa.array(lines, pa.binary())], ["value"])
    out = spark_tasks.score_batch(task, rb, first_row).column(0).to_pylist()
    assert len(out) == len(lines)
    limit = csv.field_size_limit(1 << 20)
    try:
        for i, line in enumerate(out):
            (row,) = list(csv.reader(io.StringIO(line.decode("utf-8"), newline="")))
            assert len(row) == 10, (lines[i], line)
            if row[-1]:
                assert row[-1].startswith(f"row {first_row + i}: ") and row[5] == ""
            else:
                assert row[5] in ("setosa", "versicolor", "virginica")
    finally:
        csv.field_size_limit(limit)


@pytest.fixture(scope="module")
def iris_model(model_store):
    """The Iris archive's LocalModel in the executors' module cache, under a name of its own."""
    import tempfile

    from tabserve.batch import results, spark_tasks

    into = Path(tempfile.mkdtemp(prefix="tabserve-test-"))
    key = "hypothesis-iris.mar"
    spark_tasks._models[key] = results.load_handler_module(
        model_store / "iris.mar", into, "local"
    ).LocalModel(into)
    yield key
    spark_tasks._models.pop(key, None)
    import shutil

    shutil.rmtree(into, ignore_errors=True)
