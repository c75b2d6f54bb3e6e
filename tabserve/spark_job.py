"""Batch scoring on Spark: the archive's own handler on the executors.

Run by `tabserve score ... --engine spark`, or submitted directly (the driver needs no
tabserve installation, only this file, pyspark and the .mar):

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
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

from pyspark.accumulators import AccumulatorParam

_models: dict[str, object] = {}


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


def _model(mar_name: str):
    """The archive's handler, unpacked once per Python worker. (tabserve.engines has the same
    loader; this module must run where tabserve is not installed, so it keeps its own.)"""
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
        response = importlib.import_module(f"{name}.response")
        _models[mar_name] = (local.LocalModel(into), response)
    return _models[mar_name]


def _answer(model: Any, body: str, first: int) -> tuple[int, str, dict[str, int]]:
    """(status, answer, unseen categories) of the archive's handler for one text/csv body."""
    respond = getattr(model, "respond_csv", None)
    if respond is None:  # an archive from before the handler reported unseen categories
        return (*model.call_csv(body, first), {})
    answer = respond(body, first)
    return answer.status, answer.body, answer.unseen


def _score_partition(
    mar_name: str,
    header: str,
    width: int,
    chunk_rows: int,
    columns: str,
    counted_rows,
    counted_errors,
    counted_unseen,
):
    def run(index: int, rows):
        model, response = _model(mar_name)
        if index == 0:
            yield header + "," + columns
        batch: list[tuple[str, int]] = []
        unseen: dict[str, int] = {}

        def score(lines, first: int, depth: int) -> list[str]:
            status, out, counts = _answer(model, header + "\n" + "\n".join(lines) + "\n", first)
            if status != 200:
                raise ValueError(json.loads(out)["message"])
            # Each record here is one physical line: a line with an unbalanced quote makes
            # the handler's csv reading join lines, and so answer fewer rows; splitting the
            # chunk then leaves that line alone with its error.
            results = response.result_lines(out, len(lines))
            # Counted only for an answer whose lines are kept (contained_results keeps every
            # list returned and splits only on raising), so a split chunk counts each row once.
            _add_counts(unseen, counts)
            return results

        def flush():
            lines = [line for line, _ in batch]
            first = batch[0][1] + 1
            results = response.contained_results(score, lines, first, columns.count(",") - 1)
            block, failed = response.merge_rows(lines, results, width)
            # Accumulators updated in a transformation count again if Spark runs the task again
            # (a lost executor, speculation); the rows and errors have the same caveat.
            counted_rows.add(len(lines))
            counted_errors.add(failed)
            if unseen:
                counted_unseen.add(dict(unseen))
                unseen.clear()
            return block.split("\n")[:-1]

        for line, row_index in rows:
            batch.append((line, row_index))
            if len(batch) == chunk_rows:
                yield from flush()
                batch = []
        if batch:
            yield from flush()

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


def _quote(field: str) -> str:
    if any(c in field for c in ',"'):
        return '"' + field.replace('"', '""') + '"'
    return field


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
    columns = ",".join(_quote(c) for c in out_columns)  # class labels are any text but a line break
    sc = spark.sparkContext
    sc.addFile(str(mar))
    if partitions:
        # Split the input into about N partitions without a shuffle, which keeps the order.
        jvm = sc._jvm
        hpath = jvm.org.apache.hadoop.fs.Path(input_path)
        size = hpath.getFileSystem(sc._jsc.hadoopConfiguration()).getContentSummary(hpath).getLength()
        spark.conf.set("spark.sql.files.maxPartitionBytes", str(max(size // partitions + 1, 1 << 16)))
    lines = spark.read.text(input_path).rdd.map(lambda r: r[0].rstrip("\r"))
    data = lines.filter(lambda line: line.strip() != "" and line.lstrip("\ufeff") != header)
    indexed = data.zipWithIndex()  # global data-row numbers, as the other engines count them
    rows, errors, unseen = sc.accumulator(0), sc.accumulator(0), sc.accumulator({}, CountsParam())
    out = indexed.mapPartitionsWithIndex(
        _score_partition(mar.name, header, len(names), chunk_rows, columns, rows, errors, unseen)
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
