"""Batch scoring on Spark: the archive's own handler on the executors, fed by Spark's readers.

Run by `tabserve score ... --engine spark`, or submitted directly (the driver needs no tabserve
installation, only this file with batch/results.py, spark_tasks.py, report.py and
report_html.py beside it, as in a tabserve source tree, pyspark and the .mar):

    spark-submit --master local[*] tabserve/spark_job.py --archive model_store/iris.mar \\
        INPUT OUTPUT [--partitions N] [--chunk-rows 5000] [--input-format csv|parquet] \\
        [--format csv|parquet] [--multiline] [--no-report] [--fail-on-drift]

INPUT is any path Spark reads (local, oci://bucket@namespace/path, s3a://, hdfs://): a CSV or
Parquet file, or a folder of them with one header (one schema). CSV is read by Spark's CSV
reader with every column as text (so the handler reads what the other engines send it), RFC
4180 quoting ("" inside quotes), and Spark's malformed-record column: a record with another
number of fields reaches the handler as its own text, which names it as the other engines do.
Parquet is read by Spark's Parquet reader, typed.

The rows go to the executors' Python workers as Arrow record batches (mapInArrow, batches of
--chunk-rows); tabserve/batch/spark_tasks.py scores each through the local engine's batch
function and containment rule and answers the output's record batches. OUTPUT is a folder
written by Spark's committer (atomic per job, _SUCCESS at the end): CSV part files (the text the
local engine writes; part-00000 starts with the header) or Parquet part files (typed columns, as
the other engines' Parquet output). Read in name order, the part files are the input rows in
input order: each partition is one input split (no shuffle), the splits of a file are in file
order, and the files of a folder are read in name order (one scan per file, unioned).

Error messages carry each row's number in the whole input. With more than one partition that
takes a count pass first (a Spark job that parses the input and counts each partition's rows in
the JVM, no Python); each task checks its count against it.

The driver ships batch/results.py, spark_tasks.py, report.py and report_html.py to the
executors as one package (addPyFile), so they need no tabserve installation either. The drift
report (batch/report.py): the executors' handler counts each batch into Spark accumulators,
and the driver writes OUTPUT.report.json and OUTPUT.report.html beside OUTPUT after the job.
The executors' Python needs torch, numpy and pyarrow (pyspark's Arrow support needs pyarrow anyway).
"""

from __future__ import annotations

import argparse
import atexit
import csv
import importlib
import json
import shutil
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from pyspark.accumulators import AccumulatorParam

# The package under which the driver ships batch/results.py and batch/spark_tasks.py to the
# executors: a top-level name that no other package is likely to use.
EXECUTOR_PACKAGE = "tabserve_spark_executor"
EXECUTOR_FILES = ("results.py", "spark_tasks.py", "report.py", "report_html.py")
# Spark's CSV reader puts a malformed record's text in this column (columnNameOfCorruptRecord).
RAW_COLUMN = "_tabserve_malformed_record"
PARQUET_SUFFIXES = (".parquet", ".pq")

_shipped: dict[str, Any] = {}  # Spark application id -> the shipped spark_tasks module


class SparkJobError(Exception):
    """The job cannot start: the message says why."""


class SparkResult(NamedTuple):
    """What the job scored: rows, failed rows, {column: count} of unseen categories, and the
    drift report with where it was written (None without one)."""

    rows: int
    errors: int
    unseen: dict[str, int]
    report: dict[str, Any] | None = None
    report_paths: tuple[str, str] | None = None
    report_problem: str | None = None


class CountsParam(AccumulatorParam):
    """An accumulator of {name: count} dictionaries, added key by key."""

    def zero(self, value: dict[str, int]) -> dict[str, int]:
        return {}

    def addInPlace(self, a: dict[str, int], b: dict[str, int]) -> dict[str, int]:  # Spark's name
        for k, v in b.items():
            a[k] = a.get(k, 0) + v
        return a


def executor_sources() -> dict[str, Path]:
    """batch/results.py and batch/spark_tasks.py on the driver: beside this file (the same
    version, installed or in a source tree), else the installed tabserve's."""
    beside = Path(__file__).resolve().parent / "batch"
    if all((beside / f).is_file() for f in EXECUTOR_FILES):
        return {f: beside / f for f in EXECUTOR_FILES}
    try:
        from tabserve import batch
    except ImportError:
        raise SparkJobError(
            f"cannot find {' and '.join(EXECUTOR_FILES)} (not in {beside}, and tabserve is not "
            "installed): the executors score with them; submit this file from a tabserve source "
            "tree, or install tabserve"
        ) from None
    return {f: Path(batch.__file__).parent / f for f in EXECUTOR_FILES}


def ship_executor_code(sc: Any) -> Any:
    """Send EXECUTOR_FILES to the executors as the package EXECUTOR_PACKAGE (a
    zip in a private temporary folder, kept until this process ends: the executors fetch it
    when their tasks start, and Spark refuses a second file of one name from another path, so
    each application gets one), and return its spark_tasks as the driver imports it: its
    functions are then pickled by name, and each Python worker keeps its module (and the
    model loaded in it) from task to task."""
    app = sc.applicationId
    if app not in _shipped:
        folder = Path(tempfile.mkdtemp(prefix="tabserve-spark-driver-"))
        atexit.register(shutil.rmtree, folder, True)
        package = folder / f"{EXECUTOR_PACKAGE}.zip"
        with zipfile.ZipFile(package, "w") as z:
            z.writestr(f"{EXECUTOR_PACKAGE}/__init__.py", "")
            for name, source in executor_sources().items():
                z.write(source, f"{EXECUTOR_PACKAGE}/{name}")
        sc.addPyFile(str(package))
        for name in [m for m in sys.modules if m.split(".")[0] == EXECUTOR_PACKAGE]:
            del sys.modules[name]  # another application's copy
        importlib.invalidate_caches()
        _shipped[app] = importlib.import_module(f"{EXECUTOR_PACKAGE}.spark_tasks")
    return _shipped[app]


class Input(NamedTuple):
    """The input files (in name order) and their format."""

    files: list[str]
    format: str


def list_input(spark: Any, path: str, given: str | None) -> Input:
    """INPUT's files through Hadoop's file system, on the driver (no Spark job): the file, or a
    folder's files (not hidden, not _SUCCESS and the like) in name order."""
    sc = spark.sparkContext
    jvm = sc._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    try:
        fs = hpath.getFileSystem(sc._jsc.hadoopConfiguration())
        status = fs.getFileStatus(hpath)
    except Exception as exc:  # py4j's error for FileNotFoundException, a bad scheme...
        raise SparkJobError(f"cannot read {path}: {_java_message(exc)}") from None
    if status.isDirectory():
        names = sorted(
            (s.getPath().toString() for s in fs.listStatus(hpath) if s.isFile()),
            key=lambda p: p.rsplit("/", 1)[-1],
        )
        files = [p for p in names if not p.rsplit("/", 1)[-1].startswith((".", "_"))]
        if not files:
            raise SparkJobError(f"{path} holds no files")
    else:
        files = [status.getPath().toString()]
    if given:
        if given not in ("csv", "parquet"):
            raise SparkJobError(f"--input-format must be csv or parquet, got {given!r}")
        return Input(files, given)
    parquet = path.lower().endswith(PARQUET_SUFFIXES) or files[0].lower().endswith(PARQUET_SUFFIXES)
    return Input(files, "parquet" if parquet else "csv")


def _java_message(exc: Exception) -> str:
    java = getattr(exc, "java_exception", None)
    text = str(java) if java is not None else str(exc)
    return text.splitlines()[0][:500] if text else type(exc).__name__


def read_first_line(spark: Any, path: str) -> bytes:
    """A file's first line as its bytes (without a BOM or line end), read through Hadoop's file
    system on the driver (decompressed as Spark would, by its name: .gz, .bz2...): no Spark
    job. Read as ISO-8859-1, one character per byte, so that the bytes come back as they are,
    whatever they hold; lines end where Spark's text reader ends them (\\n, \\r\\n or \\r)."""
    sc = spark.sparkContext
    jvm = sc._jvm
    conf = sc._jsc.hadoopConfiguration()
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    stream = hpath.getFileSystem(conf).open(hpath)
    codec = jvm.org.apache.hadoop.io.compress.CompressionCodecFactory(conf).getCodec(hpath)
    if codec is not None:
        stream = codec.createInputStream(stream)
    reader = jvm.java.io.BufferedReader(jvm.java.io.InputStreamReader(stream, "ISO-8859-1"))
    try:
        line = reader.readLine()
    finally:
        reader.close()
    if line is None:
        raise SparkJobError(f"{path} is empty: expected a CSV header line")
    return line.encode("latin-1").removeprefix(b"\xef\xbb\xbf")


def archive_schema(mar: Path) -> tuple[list[str], list[str]]:
    """The archive's features, and the columns the job appends to every row."""
    with zipfile.ZipFile(mar) as z:
        schema = json.loads(z.read("schema.json"))
    return schema["features"], output_columns(schema)


def output_columns(schema: dict[str, Any]) -> list[str]:
    """handler.response.output_columns for a schema.json (this module runs without tabserve):
    label, p_<class>..., error; for a regression model (no classes) prediction, error."""
    classes = [] if schema.get("task") == "regression" else list(schema.get("classes") or [])
    if not classes:
        return ["prediction", "error"]
    return ["label", *(f"p_{c}" for c in classes), "error"]


def check_columns(names: list[str], features: list[str], out_columns: list[str], what: str) -> None:
    """The input's columns against the model's (the checks every engine makes, here before
    any Spark job: this module runs without tabserve)."""
    missing = [f for f in features if f not in names]
    if missing:
        raise SparkJobError(
            f"{what} lacks feature column(s) {', '.join(map(repr, missing))}; "
            f"it has {', '.join(map(repr, names))}"
        )
    clash = [c for c in out_columns if c in names]
    if clash:  # as tabserve.scorer.output_clash
        raise SparkJobError(
            f"the input already has column(s) {', '.join(map(repr, clash))}, which the output adds: "
            "rename or remove them in the input"
        )
    twice = [f for f in features if names.count(f) > 1]
    if twice:  # as handler.rows.check_header_names
        raise SparkJobError(f"{what} has feature column(s) {', '.join(map(repr, twice))} more than once")


def unique_names(names: list[str]) -> list[str]:
    """Column names for Spark, which refuses a name twice: a name seen before gets its
    position appended, as Spark's CSV reader names them (only Spark sees these names; the
    handler gets the header line itself)."""
    lower = [m.lower() for m in names]
    return [n if lower.count(n.lower()) == 1 else f"{n}{i}" for i, n in enumerate(names)]


class Frame(NamedTuple):
    """The input as one DataFrame whose partitions are the input's rows in order."""

    df: Any
    source: str  # "text", "csv" (--multiline) or "parquet": see spark_tasks.Task
    header: bytes  # the header line every body sent to the handler starts with
    names: list[str]  # the input's columns as the handler reads them
    spark_names: list[str]  # ... as Spark names them (unique)
    file_starts: frozenset[int]  # "text": the partitions that start with a file's header line
    raw: str | None  # "csv": the malformed-record column
    first_line: bytes = b""  # "text": each file's first line, as its bytes (its header)


# A blank line is not a data row: empty, or whitespace only as tabserve.csvio reads it (ASCII
# whitespace in an ASCII line; any of str.isspace's characters in a line that is not ASCII).
# Filtered in the JVM, before the count pass and the scoring, so both see the same rows.
_SPACE = "".join(f"\\x{{{c:x}}}" for c in range(0x3001) if chr(c).isspace())
BLANK_LINE = f"\\A(?:[ \\t\\n\\x0b\\x0c\\r]*|(?=[\\s\\S]*[^\\x00-\\x7f])[{_SPACE}]*)\\z"


def _blank(value: Any) -> Any:
    """BLANK_LINE as a Spark expression: the regular expression only for the lines that
    start with whitespace or a character that is not ASCII (or are empty)."""
    from pyspark.sql.functions import ascii as first_code

    code = first_code(value)
    return ((code <= 32) | (code >= 127)) & value.rlike(BLANK_LINE)


def parquet_columns(spark: Any, path: str) -> list[str]:
    """A Parquet file's column names, from its footer through Hadoop's file system on the
    driver (spark.read.parquet would run a job to infer the schema)."""
    sc = spark.sparkContext
    jvm = sc._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    try:
        footer = jvm.org.apache.parquet.hadoop.ParquetFileReader.readFooter(
            sc._jsc.hadoopConfiguration(), hpath
        )
    except Exception as exc:  # py4j's error: not Parquet, truncated, unreadable
        raise SparkJobError(f"cannot read {path} as Parquet: {_java_message(exc)}") from None
    return [f.getName() for f in footer.getFileMetaData().getSchema().getFields()]


def read_input(spark: Any, source: Input, multiline: bool, check: Any = None) -> Frame:
    """The input's files as one DataFrame: a union of one scan per file in name order (a
    union's partitions are its inputs' partitions in order, and a scan's partitions are its
    file's splits in order), with the header line the handler gets and the column names;
    `check` is called with the column names before any scan is planned (a refusal runs no job)."""
    from pyspark.sql.functions import col

    frames: list[Any] = []
    if source.format == "parquet":
        if check is not None:
            check(parquet_columns(spark, source.files[0]))
        schema = None
        for path in source.files:
            df = spark.read.parquet(path)
            if schema is None:
                schema = df.schema
            elif df.schema != schema:
                raise SparkJobError(
                    f"{path} has columns {df.schema.simpleString()}, not those of {source.files[0]}: "
                    f"{schema.simpleString()}"
                )
            frames.append(df)
        names = frames[0].columns
        header = ",".join(map(_quote, names)).encode("utf-8")
        return Frame(_union(frames), "parquet", header, names, names, frozenset(), None)

    first_line = read_first_line(spark, source.files[0])
    for path in source.files[1:]:
        other = read_first_line(spark, path)
        if other != first_line:
            raise SparkJobError(
                f"{path} has header {_text(other)!r}, not that of {source.files[0]}: {_text(first_line)!r}"
            )
    # The header as the other engines read it: UTF-8, a bad byte read as U+FFFD.
    header_text = _text(first_line)
    try:
        names = [n.strip() for n in next(csv.reader([header_text]))]
    except csv.Error as exc:
        raise SparkJobError(f"cannot read the CSV header {header_text!r}: {exc}") from None
    if check is not None:
        check(names)
    spark_names = unique_names(names)
    header = header_text.encode("utf-8")
    if not multiline:
        # Spark's text reader: each line is one record, as its own bytes (splittable; a line
        # ends at \n, \r\n or \r). The first line of each file is its header.
        starts, at = [], 0
        for k, path in enumerate(source.files):
            lines = spark.read.text(path)
            df = lines.where(~_blank(col("value"))).select(col("value").cast("binary"))
            frames.append(df)
            starts.append(at)
            if k + 1 < len(source.files):  # where the next file starts (a plan of this scan)
                at += df._jdf.rdd().getNumPartitions()
        return Frame(_union(frames), "text", header, names, spark_names, frozenset(starts), None, first_line)

    from pyspark.sql.types import StringType, StructField, StructType

    raw = RAW_COLUMN
    while raw in spark_names:
        raw += "_"
    schema = StructType([StructField(n, StringType()) for n in [*spark_names, raw]])
    for path in source.files:
        frames.append(
            spark.read.csv(
                path,
                schema=schema,
                header=True,
                escape='"',
                mode="PERMISSIVE",
                columnNameOfCorruptRecord=raw,
                multiLine=True,
                enforceSchema=True,  # the headers were checked above, against the first's
            )
        )
    # Spark's CSV reader skips empty lines only: a line of whitespace comes as a malformed
    # record; dropped here as the other engines skip it. (The first column is in the condition
    # too: Spark refuses a query whose only column read is the malformed-record one.)
    from pyspark.sql.functions import coalesce, concat, lit

    df = _union(frames)
    text = concat(col(raw), coalesce(col(spark_names[0]), lit("")))
    df = df.where(col(raw).isNull() | ~_blank(text))
    return Frame(df, "csv", header, names, spark_names, frozenset(), raw)


def _text(line: bytes) -> str:
    return line.decode("utf-8", "replace")


def _union(frames: list[Any]) -> Any:
    df = frames[0]
    for more in frames[1:]:
        df = df.union(more)
    return df


def _quote(field: str) -> str:
    if any(c in field for c in ',"\r\n'):
        return '"' + field.replace('"', '""') + '"'
    return field


def row_offsets(frame: Frame) -> tuple[list[int] | None, list[int] | None]:
    """Each partition's count of data rows, and the data rows before it, for row numbers:
    a Spark job in the JVM (no Python). (None, None) with one partition: no count pass."""
    from pyspark.sql.functions import spark_partition_id

    n = frame.df._jdf.rdd().getNumPartitions()
    if n <= 1:
        return None, None
    counts = [0] * n
    for r in frame.df.groupBy(spark_partition_id().alias("p")).count().collect():
        counts[r["p"]] = r["count"] - (1 if r["p"] in frame.file_starts else 0)
    offsets, total = [], 0
    for c in counts:
        offsets.append(total)
        total += c
    return counts, offsets


def output_exists(spark: Any, path: str) -> bool:
    sc = spark.sparkContext
    hpath = sc._jvm.org.apache.hadoop.fs.Path(path)
    return bool(hpath.getFileSystem(sc._jsc.hadoopConfiguration()).exists(hpath))


@contextmanager
def session_settings(spark: Any, settings: dict[str, str]):
    """The session's SQL settings for one job, put back as they were after it (the session
    may be a notebook's, used for other work)."""
    before = {k: spark.conf.get(k, None) for k in settings}
    for k, v in settings.items():
        spark.conf.set(k, v)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                spark.conf.unset(k)
            else:
                spark.conf.set(k, v)


def run(
    spark: Any,
    mar: Path,
    input_path: str,
    output: str,
    partitions: int | None = None,
    chunk_rows: int = 5000,
    input_format: str | None = None,
    output_format: str | None = None,
    multiline: bool = False,
    report: bool = True,
) -> SparkResult:
    """Score INPUT into the OUTPUT folder with the archive's handler on the executors, and
    (`report`) write the drift report beside it: OUTPUT.report.json and OUTPUT.report.html."""
    mar = Path(mar)
    features, out_columns = archive_schema(mar)
    fmt = output_format or ("parquet" if output.rstrip("/").lower().endswith(PARQUET_SUFFIXES) else "csv")
    if fmt not in ("csv", "parquet"):
        raise SparkJobError(f"--format must be csv or parquet, got {fmt!r}")
    if output_exists(spark, output):
        raise SparkJobError(f"{output} already exists: the job writes a new folder; remove it or name one")
    source = list_input(spark, input_path, input_format)
    # Arrow batches of --chunk-rows; --partitions: splits of about 1/N of the input, without a
    # shuffle, which keeps the order.
    settings = {"spark.sql.execution.arrow.maxRecordsPerBatch": str(chunk_rows)}
    if partitions:
        settings["spark.sql.files.maxPartitionBytes"] = str(
            max(input_size(spark, source) // partitions + 1, 1 << 10)
        )
    with session_settings(spark, settings):
        return _run(spark, mar, source, output, fmt, features, out_columns, multiline, chunk_rows, report)


def input_size(spark: Any, source: Input) -> int:
    sc = spark.sparkContext
    conf = sc._jsc.hadoopConfiguration()
    size = 0
    for f in source.files:
        hpath = sc._jvm.org.apache.hadoop.fs.Path(f)
        size += hpath.getFileSystem(conf).getFileStatus(hpath).getLen()
    return size


def _run(
    spark: Any,
    mar: Path,
    source: Input,
    output: str,
    fmt: str,
    features: list[str],
    out_columns: list[str],
    multiline: bool,
    chunk_rows: int,
    report: bool = True,
) -> SparkResult:
    from functools import partial

    from pyspark.sql.functions import col
    from pyspark.sql.types import BinaryType, DoubleType, StringType, StructField, StructType

    sc = spark.sparkContext
    what = "CSV header" if source.format == "csv" else "the Parquet input"
    frame = read_input(
        spark, source, multiline, lambda names: check_columns(names, features, out_columns, what)
    )
    shipped = {u.rsplit("/", 1)[-1] for u in sc.getConf().get("spark.files", "").split(",") if u}
    if mar.name not in shipped:  # spark.files (Data Flow's, spark-submit's --files) has it already
        sc.addFile(str(mar))
    tasks = ship_executor_code(sc)
    counts, offsets = row_offsets(frame)
    baseline = archive_baseline(mar) if report else None
    counters = (
        sc.accumulator(0),
        sc.accumulator(0),
        sc.accumulator({}, CountsParam()),
        sc.accumulator(tasks.ReportParam().zero(None), tasks.ReportParam()),
    )
    task = tasks.Task(
        mar_name=mar.name,
        source=frame.source,
        header=frame.header,
        first_line=frame.first_line,
        names=frame.spark_names,
        columns=out_columns,
        output=fmt,
        raw=frame.raw,
        file_starts=frame.file_starts,
        offsets=offsets,
        counts=counts,
        counters=counters,
        output_header=frame.header + b"," + ",".join(map(_quote, out_columns)).encode("utf-8"),
        chunk_rows=chunk_rows,
        profile=baseline is not None,
        features=tuple(features),
    )
    if fmt == "csv":
        schema = StructType([StructField("value", BinaryType())])
    else:
        if frame.source == "parquet":
            fields = list(frame.df.schema.fields)
        else:
            fields = [StructField(n, StringType()) for n in frame.spark_names]
        if out_columns[0] == "label":
            fields.append(StructField("label", StringType()))
            fields += [StructField(c, DoubleType()) for c in out_columns[1:-1]]
        else:
            fields.append(StructField("prediction", DoubleType()))
        schema = StructType([*fields, StructField("error", StringType())])
    scored = frame.df.mapInArrow(partial(tasks.score_partition, task), schema)
    if fmt == "csv":
        # The lines' bytes as the tasks wrote them (UTF-8).
        scored.select(col("value").cast("string")).write.text(output)
    else:
        scored.write.parquet(output)
    rows, errors, unseen, counts = counters
    if not report:
        return SparkResult(rows.value, errors.value, dict(unseen.value))
    done = write_report(spark, source, output, baseline, rows.value, errors.value, counts.value)
    return SparkResult(rows.value, errors.value, dict(unseen.value), *done)


def archive_baseline(mar: Path) -> dict[str, Any] | None:
    """The drift report's baseline, from the archive's own handler (handler/profile.py, which
    needs numpy only); None for an archive made before the report."""
    into = Path(tempfile.mkdtemp(prefix="tabserve-spark-baseline-"))
    try:
        from tabserve_spark_executor import results  # shipped by ship_executor_code

        profile = results.load_handler_module(mar, into, "profile")
        return profile.Profiler(profile.Schema.load(into)).baseline()
    except (ImportError, OSError, KeyError, ValueError):
        return None
    finally:
        shutil.rmtree(into, ignore_errors=True)


def write_report(
    spark: Any,
    source: Input,
    output: str,
    baseline: dict[str, Any] | None,
    rows: int,
    errors: int,
    counts: Any,
) -> tuple[dict[str, Any] | None, tuple[str, str] | None, str | None]:
    """Build the job's drift report from the executors' counts and write it beside OUTPUT (a
    local path directly, any other through Hadoop's file system), once the output is
    committed. Returns (the report, where it was written, the problem that kept it from being
    built or written): a report's failure is a warning, never the job's."""
    from types import SimpleNamespace

    R = importlib.import_module(f"{EXECUTOR_PACKAGE}.results")
    report_mod = importlib.import_module(f"{EXECUTOR_PACKAGE}.report")
    counts = counts or {"profile": None, "unprofiled": 0, "error_kinds": {}}
    unprofiled = counts["unprofiled"]
    profile = R.start_profile(baseline)
    if profile is None:
        baseline = None
    elif counts["profile"] is not None:
        try:
            profile = R.merge_profile(profile, counts["profile"])
        except ValueError:
            rows_in = counts["profile"].get("rows") if isinstance(counts["profile"], dict) else 0
            unprofiled += rows_in if type(rows_in) is int and rows_in > 0 else 0
    totals = SimpleNamespace(
        rows=rows,
        errors=errors,
        blank_lines=0,
        profile=profile,
        unprofiled=unprofiled,
        error_kinds=counts["error_kinds"],
    )
    inputs = source.files[0] if len(source.files) == 1 else f"{len(source.files)} files"
    job = {"input": inputs, "output": output, "engine": "spark", "finished": report_mod.stamp()}
    try:
        report = report_mod.build(baseline, totals, job)
    except Exception as exc:  # the report's own failure: the output is committed
        return None, None, f"the drift report could not be built: {type(exc).__name__}: {str(exc)[:200]}"
    try:
        return report, _write_beside(spark, report_mod, report, output), None
    except Exception as exc:  # an OSError here, a Py4JJavaError through Hadoop
        reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0][:200]
        return report, None, f"the drift report could not be written beside {output}: {reason}"


def _write_beside(spark: Any, report_mod: Any, report: dict[str, Any], output: str) -> tuple[str, str]:
    """OUTPUT.report.json and .html: a local OUTPUT's with report.write (renamed into place);
    another file system's through Hadoop's (written beside the name, then renamed)."""
    scheme = output.split("://", 1)[0] if "://" in output else ""
    if scheme in ("", "file"):
        return report_mod.write(report, output.removeprefix("file://"))
    sc = spark.sparkContext
    jvm = sc._jvm
    json_path, html_path = report_mod.paths(output)
    texts = {
        json_path: report_mod.to_json(report),
        html_path: importlib.import_module(f"{EXECUTOR_PACKAGE}.report_html").render(report),
    }
    for path, text in texts.items():
        final = jvm.org.apache.hadoop.fs.Path(path)
        tmp = jvm.org.apache.hadoop.fs.Path(path + ".tmp")
        fs = final.getFileSystem(sc._jsc.hadoopConfiguration())
        stream = fs.create(tmp, True)
        try:
            stream.write(bytearray(text.encode("utf-8")))
        finally:
            stream.close()
        fs.delete(final, False)
        if not fs.rename(tmp, final):
            raise SparkJobError(f"cannot write {path}")
    return json_path, html_path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The job's command line (spark-submit's application arguments)."""
    ap = argparse.ArgumentParser(prog="spark_job.py", description="tabserve batch scoring on Spark")
    ap.add_argument("input", help="a CSV or Parquet file, or a folder of them (any path Spark reads)")
    ap.add_argument("output", help="the folder to write (it must not exist)")
    ap.add_argument("--archive", required=True, help="the model's .mar (shipped to the executors)")
    ap.add_argument("--partitions", type=int, default=None, help="split the input into about N partitions")
    ap.add_argument("--chunk-rows", type=int, default=5000, help="rows per Arrow batch and handler call")
    ap.add_argument("--input-format", choices=["csv", "parquet"], default=None, help="default: by name")
    ap.add_argument("--format", choices=["csv", "parquet"], default=None, help="OUTPUT's; default: by name")
    ap.add_argument("--multiline", action="store_true", help="CSV records may span lines (quoted)")
    ap.add_argument("--master", default=None, help="default: what spark-submit or the platform sets")
    ap.add_argument("--no-report", action="store_true", help="write no drift report beside OUTPUT")
    ap.add_argument("--fail-on-drift", action="store_true", help="exit 3 when a feature drifted")
    args = ap.parse_args(argv)
    if args.partitions is not None and args.partitions < 1:
        ap.error(f"--partitions must be at least 1, got {args.partitions}")
    if args.chunk_rows < 1:
        ap.error(f"--chunk-rows must be at least 1, got {args.chunk_rows}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName("tabserve-score")
    if args.master:
        builder = builder.master(args.master)
    spark = builder.getOrCreate()
    try:
        rows, errors, unseen, report, report_paths, report_problem = run(
            spark,
            Path(args.archive),
            args.input,
            args.output,
            args.partitions,
            args.chunk_rows,
            args.input_format,
            args.format,
            args.multiline,
            not args.no_report,
        )
    except SparkJobError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    finally:
        spark.stop()
    counts = ", ".join(f"{name} {n:,}" for name, n in sorted(unseen.items()))
    unseen_text = f"; unseen categories: {counts}" if counts else ""
    print(f"scored {rows:,} rows: {rows - errors:,} ok, {errors:,} errors{unseen_text}; wrote {args.output}")
    if report is not None:
        report_mod = importlib.import_module(f"{EXECUTOR_PACKAGE}.report")
        for line in report_mod.drift_lines(report):
            print(line)
        if report_paths:
            print(f"report: {report_paths[0]} and {report_paths[1]}")
        if args.fail_on_drift and report_mod.drifted(report):
            return report_mod.DRIFT_EXIT
    if report_problem:
        print(f"report: warning: {report_problem}")
    return 0 if errors == 0 else 2


if __name__ == "__main__":
    sys.exit(main())
