"""The Spark engine: the archive's handler on Spark executors (tabserve/spark_job.py), which
read and write the files themselves; OUTPUT is a folder of part files."""

from __future__ import annotations

import os
import time
from pathlib import Path
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
    # A session this process already runs (a notebook's, a test's) is used as it is, and left
    # running; otherwise the job starts its own with --master and stops it at the end.
    spark = SparkSession.getActiveSession()
    own = spark is None
    archive = ClassArchive.for_this_jvm() if own else None
    if own:
        builder = SparkSession.builder.master(config.master).appName("tabserve-score")
        builder = builder.config("spark.ui.showConsoleProgress", progress)
        if config.master.startswith("local"):
            # The driver JVM is the executor too, and a job's start is most of a small job:
            # classes mapped from an archive (ClassArchive), and C1 only, which compiles the
            # hot paths sooner (bench/spark.py: 10-row and 1M-row jobs, in bench/out/spark.md).
            options = ["-XX:TieredStopAtLevel=1"] + ([archive.java_options()] if archive else [])
            builder = builder.config("spark.driver.extraJavaOptions", " ".join(options))
            # The workers run this Python, with tabserve: torch imported once, in the daemon.
            builder = builder.config("spark.python.daemon.module", "tabserve.batch.spark_daemon")
        else:
            archive = None  # a cluster's driver JVM: Spark's defaults
        spark = builder.getOrCreate()
    try:
        job = spark_job.run(
            spark,
            mar,
            config.input,
            config.output,
            config.partitions,
            config.chunk_rows,
            config.input_format,
            config.output_format,
            config.multiline,
            config.report,
        )
    except spark_job.SparkJobError as exc:
        raise ConfigError(str(exc)) from exc
    except Py4JJavaError as exc:
        first = str(exc.java_exception).splitlines()[0][:500]
        raise JobFailed(f"the Spark job failed: {first}; Spark's log above says more") from exc
    finally:
        if own:
            spark.stop()
            if archive is not None:
                archive.keep_after(stop_gateway())
    return ScoreResult(
        job.rows,
        job.errors,
        0,
        time.monotonic() - t0,
        config.output,
        unseen=job.unseen,
        report=job.report,
        report_paths=job.report_paths,
        fail_on_drift=config.fail_on_drift,
        report_problem=job.report_problem,
    )


# --- the driver JVM's start: class data sharing ------------------------------------------------


class ClassArchive:
    """A class data sharing archive (JDK 13+) of the classes a scoring job loads: Spark's driver
    JVM loads and verifies some 15,000 classes from 280 jars at every start; mapped from an
    archive they load without verification (bench/spark.py: the 10-row job's time with and
    without it). The first job writes it at its JVM's exit (-XX:ArchiveClassesAtExit, to a
    private name, kept only if the JVM ended normally); later jobs map it. The JVM checks that
    its class path and version match the archive's, and runs without it where they do not.
    Kept in ~/.cache/tabserve/spark-cds (about 100-150 MB); TABSERVE_SPARK_CDS=0 turns it off."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writing: Path | None = None

    @classmethod
    def for_this_jvm(cls) -> ClassArchive | None:
        import hashlib
        import shutil

        import pyspark

        if os.environ.get("TABSERVE_SPARK_CDS", "1").lower() in ("0", "false", "no", "off"):
            return None
        java_home = os.environ.get("JAVA_HOME")
        java = Path(java_home) / "bin" / "java" if java_home else shutil.which("java")
        if not java:
            return None
        jars = Path(pyspark.__file__).parent / "jars"
        listing = sorted(p.name for p in jars.glob("*.jar")) if jars.is_dir() else []
        key = "|".join([str(Path(java).resolve()), pyspark.__version__, str(jars), *listing])
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tabserve" / "spark-cds"
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError:
            return None
        return cls(cache / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.jsa")

    def java_options(self) -> str:
        # -Xlog:cds=off: a mismatched archive is skipped without a warning on the console.
        quiet = "-Xlog:cds=off -Xlog:cds+dynamic=off"
        if self.path.is_file():
            return f"-XX:SharedArchiveFile={self.path} {quiet}"
        self.writing = self.path.with_name(f"{self.path.stem}.{os.getpid()}.writing")
        return f"-XX:ArchiveClassesAtExit={self.writing} {quiet}"

    def keep_after(self, jvm_ended: bool) -> None:
        """Put the archive the JVM wrote in place, if it ended normally; else drop it."""
        if self.writing is None:
            return
        try:
            if jvm_ended and self.writing.is_file() and self.writing.stat().st_size > 0:
                os.replace(self.writing, self.path)
            else:
                self.writing.unlink(missing_ok=True)
        except OSError:
            pass


def stop_gateway(timeout: float = 60.0) -> bool:
    """End the driver JVM this process started (pyspark's gateway) and wait for it: it exits
    when its standard input closes. True when it ended by itself within `timeout`."""
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    proc = getattr(gateway, "proc", None)
    if gateway is None or proc is None:
        return False
    try:
        gateway.shutdown()
    except Exception:  # already gone
        pass
    SparkContext._gateway = None
    SparkContext._jvm = None
    try:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=timeout)
    except Exception:  # a JVM that does not end: not ours to wait for longer
        proc.kill()
        return False
    return proc.returncode == 0
