"""Spark benchmark: `tabserve score --engine spark --master local[2]` against `--engine local` on
the same files in the same run, CSV and Parquet, each as a process from command to exit.

The issue's measure: the fixed cost taken out, i.e. the 1M-row job's seconds minus a 10-row
job's, per engine; Spark's marginal rows/s over local's. Also: the 10-row job with and without
the driver's class archive (TABSERVE_SPARK_CDS=0), and the count pass that gives row numbers
with more than one partition (cold: the first query of a fresh session; warm: the second).
One machine shows Spark's overhead, not its scale-out.

    .venv/bin/python bench/spark.py [--rows 1000000] [--repeat 1]
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from common import OUT, ensure_model, iris_like_csv, iris_like_parquet, markdown_table, run_measured

MASTER = "local[2]"


def score(data: Path, out: Path, engine: str, env: dict[str, str] | None = None) -> float:
    """Seconds from command to exit of one `tabserve score`."""
    store = ensure_model()
    if out.is_dir():
        shutil.rmtree(out)
    argv = [sys.executable, "-m", "tabserve", "score", str(data), "-o", str(out), "--model-store", str(store)]
    argv += ["--engine", engine] + (["--master", MASTER] if engine == "spark" else [])
    run = run_measured(argv, env)
    if run.returncode != 0:
        sys.exit(f"tabserve score failed ({run.returncode}):\n{run.stdout[-3000:]}")
    return run.seconds


def count_pass(data: Path) -> tuple[float, float, int]:
    """The count pass on `data` in a session set up as the CLI sets up its own: (cold s, warm
    s, partitions)."""
    from pyspark.sql import SparkSession

    from tabserve import spark_job
    from tabserve.batch.engines.spark import ClassArchive

    archive = ClassArchive.for_this_jvm()
    options = ["-XX:TieredStopAtLevel=1"] + ([archive.java_options()] if archive else [])
    builder = SparkSession.builder.master(MASTER).appName("tabserve-bench")
    spark = builder.config("spark.driver.extraJavaOptions", " ".join(options)).getOrCreate()
    try:
        source = spark_job.list_input(spark, str(data), None)
        times = []
        for _ in range(2):
            frame = spark_job.read_input(spark, source, False)
            t0 = time.perf_counter()
            counts, _ = spark_job.row_offsets(frame)
            times.append(time.perf_counter() - t0)
    finally:
        spark.stop()
    return times[0], times[1], len(counts or [0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=1, help="runs of each job (the median is shown)")
    args = ap.parse_args()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    big = iris_like_csv(OUT / f"iris_{args.rows}.csv", args.rows)
    small = OUT / "iris_10.csv"
    with big.open() as f:
        small.write_text("".join(itertools.islice(f, 11)))
    inputs = {"csv": (small, big), "parquet": (iris_like_parquet(small, 10), iris_like_parquet(big))}

    # The first Spark job on a machine writes the driver's class archive (once).
    from tabserve.batch.engines.spark import ClassArchive

    archive = ClassArchive.for_this_jvm()
    had_archive = archive is not None and archive.path.is_file()
    first = score(small, OUT / "spark_first", "spark")
    no_archive = statistics.median(
        score(small, OUT / "spark_nocds", "spark", {"TABSERVE_SPARK_CDS": "0"}) for _ in range(args.repeat)
    )

    rows, figures = [], {}
    for fmt, (few, many) in inputs.items():
        for engine in ("local", "spark"):
            suffix = ".parquet" if fmt == "parquet" else (".csv" if engine == "local" else "")
            runs = range(args.repeat)
            t10 = statistics.median(score(few, OUT / f"{engine}_10{suffix}", engine) for _ in runs)
            tbig = statistics.median(score(many, OUT / f"{engine}_big{suffix}", engine) for _ in runs)
            figures[fmt, engine] = (t10, tbig)
        local_marginal = figures[fmt, "local"][1] - figures[fmt, "local"][0]
        for engine in ("local", "spark"):
            t10, tbig = figures[fmt, engine]
            marginal = tbig - t10
            rows.append(
                [
                    f"{fmt} in and out, --engine {engine}" + (f" {MASTER}" if engine == "spark" else ""),
                    f"{t10:.1f}",
                    f"{tbig:.1f}",
                    f"{marginal:.1f}",
                    f"{args.rows / marginal:,.0f}",
                    f"{local_marginal / marginal:.2f}",
                ]
            )
    cold, warm, parts = count_pass(big)
    md = markdown_table(
        [
            "job",
            "10 rows: s",
            f"{args.rows:,} rows: s",
            "marginal s (big - 10)",
            "marginal rows/s",
            "vs local (marginal)",
        ],
        rows,
    )
    md += (
        f"\nThe 10-row CSV job with Spark: {figures['csv', 'spark'][0]:.1f} s; without the class archive "
        f"(TABSERVE_SPARK_CDS=0) {no_archive:.1f} s; "
        + (f"the first run on this machine, writing it, {first:.1f} s.\n" if not had_archive else "\n")
        + f"Count pass for row numbers ({args.rows:,} CSV rows, {parts} partitions): {cold:.2f} s as the "
        f"first query of a session, {warm:.2f} s as the second.\n"
    )
    print(md)
    (OUT / "spark.md").write_text(md)


if __name__ == "__main__":
    main()
