"""Spark benchmark: rows/s of `tabserve score --engine spark` with local[2] against
`--engine local` on the same file in the same run, and the time to start the Spark session.
One machine shows Spark's overhead, not its scale-out.

    .venv/bin/python bench/spark.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

from common import OUT, ensure_model, iris_like_csv, markdown_table, run_measured


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    store = ensure_model()
    data = iris_like_csv(OUT / f"iris_{args.rows}.csv", args.rows)

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    t0 = time.perf_counter()
    spark = SparkSession.builder.master("local[2]").appName("tabserve-bench").getOrCreate()
    start_s = time.perf_counter() - t0
    spark.stop()

    base = [sys.executable, "-m", "tabserve", "score", str(data), "--model-store", str(store)]
    local = run_measured([*base, "-o", str(OUT / "local.csv"), "--engine", "local"])
    shutil.rmtree(OUT / "spark_out", ignore_errors=True)
    spark_run = run_measured(
        [
            *base,
            "-o",
            str(OUT / "spark_out"),
            "--engine",
            "spark",
            "--master",
            "local[2]",
            "--partitions",
            "2",
        ]
    )
    for run in (local, spark_run):
        if run.returncode != 0:
            sys.exit(f"tabserve score failed ({run.returncode}):\n{run.stdout[-3000:]}")
    rows = [
        [
            "tabserve score --engine local",
            f"{args.rows:,}",
            f"{local.seconds:.1f}",
            f"{args.rows / local.seconds:,.0f}",
            "1.00",
        ],
        [
            "tabserve score --engine spark --master local[2]",
            f"{args.rows:,}",
            f"{spark_run.seconds:.1f}",
            f"{args.rows / spark_run.seconds:,.0f}",
            f"{local.seconds / spark_run.seconds:.2f}",
        ],
    ]
    md = markdown_table(["job", "rows", "seconds (process start to exit)", "rows/s", "vs local"], rows)
    md += f"\nSpark session start (local[2]): {start_s:.1f} s\n"
    print(md)
    (OUT / "spark.md").write_text(md)


if __name__ == "__main__":
    main()
