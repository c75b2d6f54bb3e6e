"""--engine spark in local mode: the archive's handler on Spark executors gives the same rows
as --engine local, and bad input fails before any Spark job."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

from tabserve.cli import main

from .test_score import MALFORMED, write_csv

pytestmark = pytest.mark.integration


def read_parts(folder: Path) -> list[list[str]]:
    rows: list[list[str]] = []
    for part in sorted(folder.glob("part-*")):
        with open(part, newline="") as f:
            rows += list(csv.reader(f))
    return rows


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


def test_spark_job_module_runs_as_a_script_without_the_cli(tmp_path, model_store):
    """What spark-submit runs: the module file with its own options."""
    import subprocess

    inp = tmp_path / "in.csv"
    write_csv(inp, 500)
    out = tmp_path / "out"
    script = Path(__file__).resolve().parent.parent / "tabserve" / "spark_job.py"
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
        ],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "PYSPARK_PYTHON": sys.executable},
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "scored 505 rows: 500 ok, 5 errors" in proc.stdout
    assert len(read_parts(out)) == 506


def test_poison_lines_on_spark_get_their_own_errors_and_every_row_is_kept(tmp_path, model_store):
    """Spark reads physical lines: an unbalanced quote, a 200 KB field, 1e39 and non-ASCII
    text each get a row error and the job keeps every row."""
    header = "id,sepal_length_cm,sepal_width_cm,petal_length_cm,petal_width_cm"
    good = [f"{i},5.1,3.5,1.4,0.2" for i in range(40)]
    poison = {
        5: 'q,"5.1,3.5,1.4,0.2',
        12: "big," + "7" * 200_000 + ",1,1,1",
        20: "huge,1e39,3.5,1.4,0.2",
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
    assert set(errors) == {'q,"5.1,3.5,1.4,0.2', "big", "huge", "café"}, errors
    assert "out of float32 range" in errors["huge"] and "'x'" in errors["café"]
    assert all(r[5] == "setosa" for r in rows[1:] if not r[-1])
