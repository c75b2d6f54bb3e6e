"""--engine spark in local mode: the archive's handler on Spark executors writes the bytes
--engine local writes (the same batch function, containment and text), and bad input fails
before any Spark job."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import numpy as np
import pytest

from tabserve.archive import ArchiveConfig, archive
from tabserve.cli import main

from .tables import write_penguins
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


@pytest.fixture(scope="module")
def penguins_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The penguins model of tests/tables.py (text categories, missing values), archived."""
    root = tmp_path_factory.mktemp("spark_penguins")
    write_penguins(root / "penguins")
    archive(ArchiveConfig(artifacts=root / "penguins", model_store=root / "store", workers=1))
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


def test_spark_output_equals_the_local_engine_row_for_row(tmp_path, model_store):
    inp = tmp_path / "in.csv"
    write_csv(inp, 30_000)  # IDs, shuffled feature columns, a comment column, malformed lines
    spark_out, local_out = tmp_path / "spark_out", tmp_path / "local.csv"
    argv = ["score", str(inp), "--model-store", str(model_store), "--chunk-rows", "1000"]
    assert (
        main([*argv, "-o", str(spark_out), "--engine", "spark", "--master", "local[2]", "--partitions", "3"])
        == 2
    )
    assert main([*argv, "-o", str(local_out), "--engine", "local"]) == 2
    assert (spark_out / "_SUCCESS").exists() and len(list(spark_out.glob("part-*"))) >= 2
    spark_rows = read_parts(spark_out)
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
    tmp_path, penguins_store, capsys
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
        summaries[engine] = capsys.readouterr().out.strip().splitlines()[-1]
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


class _Counter:
    """An accumulator's `add`, in-process."""

    def __init__(self, zero) -> None:
        self.value = zero

    def add(self, more) -> None:
        if isinstance(more, dict):
            self.value = {k: self.value.get(k, 0) + more.get(k, 0) for k in {*self.value, *more}}
        else:
            self.value += more


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
    """The Spark job's partition function, run in-process with a handler that refuses or
    fails whole chunks: the same rows get the same "chunk refused" errors, and the file the
    same bytes, as tabserve.batch.pipeline.score_contained and the CSV writer give."""
    from tabserve import spark_job
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
    try:
        engine.model = _Poisoned(engine.model)
        key = f"poisoned-{tmp_path.name}.mar"
        spark_job._models[key] = engine.model
        rows, errors, unseen = _Counter(0), _Counter(0), _Counter({})
        run = spark_job._score_partition(key, header, 5, 12, columns, rows, errors, unseen)
        spark = "".join(line + "\n" for line in run(0, ((line, i) for i, line in enumerate(lines))))

        records = [line.encode() for line in lines]
        batch = Batch(0, 1, len(lines), {}, records=records, header=header.encode())
        results = score_contained(engine, batch, 0, batch.n, 3, True)
        writer = CsvWriter(str(tmp_path / "local.csv"))
        writer.start(header.split(","), header.encode(), columns, None)
        writer.write(writer.render(batch, results))
        writer.commit()
    finally:
        spark_job._models.pop(key, None)
        engine.close()
    assert results.errors == {
        3: "row 4: chunk refused: too big",
        7: "row 8: chunk refused: the model's handler failed on the batch starting at row 8: "
        "RuntimeError: boom",
    }
    assert spark.encode() == (tmp_path / "local.csv").read_bytes()
    assert (rows.value, errors.value, unseen.value) == (12, 2, {})


def test_missing_feature_column_fails_before_any_spark_job(tmp_path, model_store):
    import os

    from pyspark.sql import SparkSession

    from tabserve import spark_job

    inp = tmp_path / "in.csv"
    inp.write_text("id,sepal_length_cm,petal_length_cm\n1,5.1,1.4\n")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = SparkSession.builder.master("local[1]").appName("tabserve-test").getOrCreate()
    try:
        with pytest.raises(spark_job.SparkJobError, match="lacks feature column\\(s\\) 'sepal_width_cm'"):
            spark_job.run(spark, model_store / "iris.mar", str(inp), str(tmp_path / "out"))
        assert list(spark.sparkContext.statusTracker().getJobIdsForGroup(None)) == []
    finally:
        spark.stop()
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


def test_poison_lines_on_spark_get_their_own_errors_and_every_row_is_kept(tmp_path, model_store):
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
