"""The Spark engine: the archive's handler on Spark executors (tabserve/spark_job.py), which
read and write the files themselves; OUTPUT is a folder of part files."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from ...errors import ConfigError
from . import archive_path

if TYPE_CHECKING:
    from ...scorer import ScoreConfig, ScoreResult


def run_job(config: ScoreConfig) -> ScoreResult:
    """--engine spark: the archive's handler on Spark executors; OUTPUT is a folder."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise ConfigError(
            "--engine spark needs pyspark: pip install 'tabserve[spark]' (and Java 17+)"
        ) from None
    from ... import spark_job
    from ...scorer import JobFailed, ScoreResult

    if "-" in (config.input, config.output):
        raise ConfigError("--engine spark reads and writes paths, not - (stdin/stdout)")
    mar = archive_path(config)
    import sys

    from py4j.protocol import Py4JJavaError

    t0 = time.monotonic()
    # The executors' Python workers run this interpreter (the one with torch), unless the
    # cluster says otherwise (PYSPARK_PYTHON).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # Spark's console progress bar only on a terminal (piped, it runs into the summary line).
    progress = "true" if sys.stderr.isatty() else "false"
    builder = SparkSession.builder.master(config.master).appName("tabserve-score")
    spark = builder.config("spark.ui.showConsoleProgress", progress).getOrCreate()
    try:
        job = spark_job.run(spark, mar, config.input, config.output, config.partitions, config.chunk_rows)
    except spark_job.SparkJobError as exc:
        raise ConfigError(str(exc)) from exc
    except Py4JJavaError as exc:
        first = str(exc.java_exception).splitlines()[0][:500]
        raise JobFailed(f"the Spark job failed: {first}; Spark's log above says more") from exc
    finally:
        spark.stop()
    return ScoreResult(job.rows, job.errors, 0, time.monotonic() - t0, config.output, unseen=job.unseen)
