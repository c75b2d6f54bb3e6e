"""Batch scoring on Spark: the archive's own handler on the executors.

Run by `tabserve score ... --engine spark`, or submitted directly (the driver needs no
tabserve installation, only this file with batch/results.py beside it, as in a tabserve source
tree, pyspark and the .mar):

    spark-submit --master local[*] tabserve/spark_job.py --archive model_store/iris.mar \\
        INPUT OUTPUT [--partitions N] [--chunk-rows 5000]

INPUT is any path Spark reads (a file or a folder of CSV files with the same header; local,
oci://bucket@namespace/path, s3a://, hdfs://). OUTPUT is a folder of part files written by
Spark's committer (atomic per job): read in name order they are the input rows in input order,
each followed by label, p_<class>... and error (a regression model: prediction and error), and
part-00000 starts with the header.

Each record is one physical line (Spark's text reader splits at every newline: quoted fields
with newlines are not supported here; the local and TorchServe engines support them). Lines
equal to the header are headers (as Spark's CSV reader treats them); blank lines are skipped.

Each partition is scored in chunks of --chunk-rows through tabserve.batch.results.score_body
(the archive's handler, as --engine local calls it) and written with its render_rows, inside
the same containment rule as tabserve.batch.pipeline.score_contained: a chunk that fails is
split in halves until the rows that cause it are found. So a part file holds the bytes
--engine local writes for the same rows (the probabilities' last bits can differ where the
chunks do: a float32 matmul's last bits depend on the batch).

The driver ships tabserve/batch/results.py to the executors (addPyFile, as the module
`tabserve_batch_results`), so they need no tabserve installation either (where tabserve is
installed on them, they import its tabserve.batch.results instead).
The executors' Python needs torch, numpy and pyarrow (pyarrow formats the numbers; pyspark's
Arrow support needs it anyway).
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

from pyspark.accumulators import AccumulatorParam

# The name under which the driver ships tabserve/batch/results.py to the executors: a
# top-level module name that no other package is likely to use.
RESULTS_MODULE = "tabserve_batch_results"

_models: dict[str, Any] = {}
_shipped: dict[str, Path] = {}  # Spark application id -> the copy of results.py it was given


class SparkJobError(Exception):
    """The job cannot start: the message says why."""


class SparkResult(NamedTuple):
    """What the job scored: rows, failed rows, and {column: count} of unseen categories."""

    rows: int
    errors: int
    unseen: dict[str, int]


class CountsParam(AccumulatorParam):
    """An accumulator of {name: count} dictionaries, added key by key."""

    def zero(self, value: dict[str, int]) -> dict[str, int]:
        return {}

    def addInPlace(self, a: dict[str, int], b: dict[str, int]) -> dict[str, int]:  # Spark's name
        return _add_counts(a, b)


def _add_counts(total: dict[str, int], more: dict[str, int]) -> dict[str, int]:
    for k, v in more.items():
        total[k] = total.get(k, 0) + v
    return total


def _model(mar_name: str) -> Any:
    """The archive's LocalModel, unpacked once per Python worker. (tabserve.batch.engines.local
    has the same loader; this module must run where tabserve is not installed, so it keeps its
    own.)"""
    if mar_name not in _models:
        import importlib
        import importlib.util

        from pyspark import SparkFiles

        into = Path(tempfile.mkdtemp(prefix="tabserve-spark-"))
        with zipfile.ZipFile(SparkFiles.get(mar_name)) as z:
            z.extractall(into)
        pkg = into / "tabserve_handler"
        name = f"tabserve_handler_{abs(hash(str(into)))}"
        spec = importlib.util.spec_from_file_location(
            name, pkg / "__init__.py", submodule_search_locations=[str(pkg)]
        )
        package = importlib.util.module_from_spec(spec)
        sys.modules[name] = package
        spec.loader.exec_module(package)
        local = importlib.import_module(f"{name}.local")
        _models[mar_name] = local.LocalModel(into)
    return _models[mar_name]


def _results() -> Any:
    """tabserve.batch.results on an executor: the copy the driver shipped (ship_results: the
    driver's own version), else an installed tabserve's (when run without ship_results)."""
    import importlib

    try:
        return importlib.import_module(RESULTS_MODULE)
    except ImportError:
        from tabserve.batch import results

        return results


def results_source() -> Path:
    """tabserve/batch/results.py on the driver: the one beside this file (the same version,
    installed or in a source tree), else the installed tabserve's."""
    beside = Path(__file__).resolve().parent / "batch" / "results.py"
    if beside.is_file():
        return beside
    try:
        from tabserve.batch import results
    except ImportError:
        raise SparkJobError(
            f"cannot find tabserve/batch/results.py (not at {beside}, and tabserve is not "
            "installed): the executors score with it; submit this file from a tabserve source "
            "tree, or install tabserve"
        ) from None
    return Path(results.__file__)


def ship_results(sc: Any) -> None:
    """Send results.py to the executors as RESULTS_MODULE (a copy in a private temporary
    folder, kept until this process ends: the executors fetch it when their tasks start, and
    Spark refuses a second file of one name from another path, so each application gets one)."""
    app = sc.applicationId
    if app in _shipped:
        return
    source = results_source()
    folder = Path(tempfile.mkdtemp(prefix="tabserve-spark-driver-"))
    atexit.register(shutil.rmtree, folder, True)
    copy = folder / f"{RESULTS_MODULE}.py"
    shutil.copyfile(source, copy)
    sc.addPyFile(str(copy))
    _shipped[app] = copy


class _Refused(Exception):
    """The handler refused a chunk as a whole (its message)."""


def _field_count(record: str) -> int:
    """Fields in one CSV record (as tabserve.batch.writers counts them), whatever their
    length: the csv module's field limit is raised for the count only (the handler in this
    worker reads its own limit from it)."""
    if '"' not in record:
        return record.count(",") + 1
    import csv

    limit = csv.field_size_limit(max(csv.field_size_limit(), len(record) + 1))
    try:
        return len(next(csv.reader([record]), []))
    finally:
        csv.field_size_limit(limit)


def _score_partition(
    mar_name: str,
    header: str,
    width: int,
    chunk_rows: int,
    columns: list[str],
    counted_rows,
    counted_errors,
    counted_unseen,
):
    classifier = columns[0] == "label"
    n_values = len(columns) - 2 if classifier else 1
    header_bytes = header.encode("utf-8")

    def run(index: int, rows):
        results = _results()
        model = _model(mar_name)
        if index == 0:
            yield header + "," + ",".join(map(results.quote, columns))

        def call(lines: list[str], first: int) -> Any:
            """Results for these records, or an exception, with --engine local's messages
            (results.call_handler words a handler's failure for both)."""
            body = b"\n".join([header_bytes, *(line.encode("utf-8") for line in lines)]) + b"\n"
            status, out = results.call_handler(model, body, len(lines), first)
            if status != 200:
                raise _Refused(str(out))
            return out

        def contained(lines: list[str], first: int) -> Any:
            """tabserve.batch.pipeline.score_contained's rule: a chunk that fails in any way
            is split in halves, recursively, and a single row that still fails gets the
            reason as its error. Only the answers kept count their unseen categories. Each
            record here is one physical line: a line with an unbalanced quote makes the
            handler's CSV reading join lines, and so answer fewer rows; splitting then
            leaves that line alone with its error."""
            try:
                return call(lines, first)
            except Exception as exc:  # the boundary: any failure is these rows' own
                if len(lines) == 1:
                    reason = f"chunk refused: {exc}" if str(exc) else f"chunk refused: {type(exc).__name__}"
                    return results.Results.refused(1, first, reason, n_values, classifier)
                mid = len(lines) // 2
                return results.Results.concat(
                    [contained(lines[:mid], first), contained(lines[mid:], first + mid)]
                )

        def flush(batch: list[tuple[str, int]]) -> str:
            lines = [line for line, _ in batch]
            scored = contained(lines, batch[0][1] + 1)
            records = [line.encode("utf-8") for line in lines]
            if scored.errors:  # a failed record with another number of fields: as CsvWriter
                pad = b"," * (width - 1)
                for i in scored.errors:
                    if _field_count(lines[i]) != width:
                        records[i] = results.quote(lines[i]).encode("utf-8") + pad
            # The lines tabserve.batch.writers.CsvWriter writes, by the same function.
            block = results.render_rows(records, scored, columns).decode("utf-8")
            # Accumulators updated in a transformation count again if Spark runs the task again
            # (a lost executor, speculation); the rows and errors have the same caveat.
            counted_rows.add(len(lines))
            counted_errors.add(len(scored.errors))
            if scored.unseen:
                counted_unseen.add(dict(scored.unseen))
            return block[:-1]  # one element per chunk: saveAsTextFile ends it with a line end

        batch: list[tuple[str, int]] = []
        for line, row_index in rows:
            batch.append((line, row_index))
            if len(batch) == chunk_rows:
                yield flush(batch)
                batch = []
        if batch:
            yield flush(batch)

    return run


def read_first_line(spark, path: str) -> str:
    """The header, read through Hadoop's file system on the driver: no Spark job."""
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    fs = hpath.getFileSystem(conf)
    if fs.getFileStatus(hpath).isDirectory():
        files = sorted(
            (
                s.getPath()
                for s in fs.listStatus(hpath)
                if s.isFile() and not s.getPath().getName().startswith((".", "_"))
            ),
            key=lambda p: p.getName(),
        )
        if not files:
            raise SparkJobError(f"{path} holds no files")
        hpath = files[0]
    reader = jvm.java.io.BufferedReader(jvm.java.io.InputStreamReader(fs.open(hpath), "UTF-8"))
    try:
        line = reader.readLine()
    finally:
        reader.close()
    if line is None:
        raise SparkJobError(f"{path} is empty: expected a CSV header line")
    return line.rstrip("\r").lstrip("\ufeff")


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


def run(
    spark, mar: Path, input_path: str, output: str, partitions: int | None = None, chunk_rows: int = 5000
) -> SparkResult:
    """Score INPUT into the OUTPUT folder with the archive's handler on the executors."""
    import csv

    mar = Path(mar)
    features, out_columns = archive_schema(mar)
    header = read_first_line(spark, input_path)
    names = [n.strip() for n in next(csv.reader([header]))]
    missing = [f for f in features if f not in names]
    if missing:
        raise SparkJobError(
            f"CSV header lacks feature column(s) {', '.join(map(repr, missing))}; header was {header!r}"
        )
    clash = [c for c in out_columns if c in names]
    if clash:  # as tabserve.scorer.output_clash (this module runs without tabserve)
        raise SparkJobError(
            f"the input already has column(s) {', '.join(map(repr, clash))}, which the output adds: "
            "rename or remove them in the input"
        )
    twice = [f for f in features if names.count(f) > 1]
    if twice:  # as handler.rows.check_header_names
        raise SparkJobError(f"CSV header has feature column(s) {', '.join(map(repr, twice))} more than once")
    sc = spark.sparkContext
    sc.addFile(str(mar))
    ship_results(sc)
    if partitions:
        # Split the input into about N partitions without a shuffle, which keeps the order.
        jvm = sc._jvm
        hpath = jvm.org.apache.hadoop.fs.Path(input_path)
        size = hpath.getFileSystem(sc._jsc.hadoopConfiguration()).getContentSummary(hpath).getLength()
        spark.conf.set("spark.sql.files.maxPartitionBytes", str(max(size // partitions + 1, 1 << 16)))
    lines = spark.read.text(input_path).rdd.map(lambda r: r[0].rstrip("\r"))
    # Blank lines as the other engines read them (empty, or whitespace only), and repeated headers.
    data = lines.filter(lambda line: line != "" and not line.isspace() and line.lstrip("\ufeff") != header)
    indexed = data.zipWithIndex()  # global data-row numbers, as the other engines count them
    rows, errors, unseen = sc.accumulator(0), sc.accumulator(0), sc.accumulator({}, CountsParam())
    out = indexed.mapPartitionsWithIndex(
        _score_partition(mar.name, header, len(names), chunk_rows, out_columns, rows, errors, unseen)
    )
    out.saveAsTextFile(output)
    return SparkResult(rows.value, errors.value, dict(unseen.value))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="tabserve batch scoring on Spark")
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--archive", required=True, help="the model's .mar (shipped to the executors)")
    ap.add_argument("--partitions", type=int, default=None)
    ap.add_argument("--chunk-rows", type=int, default=5000)
    ap.add_argument("--master", default=None, help="default: what spark-submit or the platform sets")
    args = ap.parse_args(argv)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName("tabserve-score")
    if args.master:
        builder = builder.master(args.master)
    spark = builder.getOrCreate()
    try:
        rows, errors, unseen = run(
            spark, Path(args.archive), args.input, args.output, args.partitions, args.chunk_rows
        )
    except SparkJobError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    finally:
        spark.stop()
    counts = ", ".join(f"{name} {n:,}" for name, n in sorted(unseen.items()))
    unseen_text = f"; unseen categories: {counts}" if counts else ""
    print(f"scored {rows:,} rows: {rows - errors:,} ok, {errors:,} errors{unseen_text}; wrote {args.output}")
    return 0 if errors == 0 else 2


if __name__ == "__main__":
    sys.exit(main())
