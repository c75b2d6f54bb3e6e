"""What Spark's executors run for `tabserve score --engine spark` (tabserve/spark_job.py).

Each Python worker gets Arrow record batches of the input (Spark's CSV or Parquet reader, through
`mapInArrow`) and scores them with the archive's own handler, through the batch function of the
local engine (results.call_handler), inside the same containment rule as the pipeline's
score_contained: a batch that fails in any way is split in halves until the rows that cause it
are found, and those get the reason as their error. It answers record batches of the output:
CSV lines (the text the local engine's CSV writer writes) or typed columns (its Parquet
writer's).

The driver ships this file and results.py to the executors as one package (addPyFile), so they
need no tabserve installation: it imports results relatively, numpy, pyarrow and the standard
library, and pyspark's TaskContext and SparkFiles.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import results as R

_models: dict[str, Any] = {}  # archive file name -> its LocalModel, once per Python worker


@dataclass
class Task:
    """What every task of one job needs (pickled with the function)."""

    mar_name: str  # the archive, as SparkContext.addFile shipped it
    source: str  # "text": CSV records as lines; "csv": Spark's CSV reader; "parquet"
    header: bytes  # the input's header line: every body the handler gets starts with it
    first_line: bytes  # "text": each file's first line as its bytes (the header, checked)
    names: list[str]  # the input's column names, as Spark has them
    columns: list[str]  # the output columns the results add (label, p_<class>..., error)
    output: str  # "csv": one text line per row; "parquet": typed columns
    raw: str | None = None  # "csv": the column where Spark puts a malformed record's text
    file_starts: frozenset[int] = frozenset()  # "text": partitions that start with a header line
    offsets: list[int] | None = None  # data rows before each partition (None: one partition)
    counts: list[int] | None = None  # data rows in each partition, as the count pass saw them
    counters: Any = None  # (rows, errors, unseen, report) accumulators
    output_header: bytes = b""  # the CSV output's header line (partition 0 writes it first)
    chunk_rows: int = 5000  # rows per handler call (Spark's Arrow batches are cut to match)
    profile: bool = False  # ask the handler for the drift report's counts (ReportParam)
    features: tuple[str, ...] = ()  # the model's features, for the kinds of row errors


def model(mar_name: str) -> Any:
    """The archive's LocalModel, unpacked once per Python worker (Spark reuses workers, and
    this module stays imported in them), into a folder removed when the worker ends."""
    if mar_name not in _models:
        import atexit

        from pyspark import SparkFiles

        into = Path(tempfile.mkdtemp(prefix="tabserve-spark-"))
        atexit.register(shutil.rmtree, into, True)
        local = R.load_handler_module(SparkFiles.get(mar_name), into, "local")
        _models[mar_name] = local.LocalModel(into)
    return _models[mar_name]


class _Refused(Exception):
    """The handler refused a body as a whole (its message)."""


def score_partition(task: Task, batches: Iterator[Any]) -> Iterator[Any]:
    """mapInArrow's function: the partition's record batches in, the output's out, in order."""
    import pyarrow as pa
    from pyspark import TaskContext

    part = TaskContext.get().partitionId()
    row = task.offsets[part] if task.offsets else 0  # data rows before this batch
    seen = 0
    if task.output == "csv" and part == 0:
        yield pa.RecordBatch.from_arrays([pa.array([task.output_header], pa.binary())], ["value"])
    if part in task.file_starts:
        batches = _without_header(batches, task.first_line, part)
    for rb in _chunks(batches, task.chunk_rows):
        yield score_batch(task, rb, row + 1)
        row += rb.num_rows
        seen += rb.num_rows
    if task.counts is not None and seen != task.counts[part]:
        # The count pass read this partition otherwise: the row numbers in its errors would be
        # wrong. Fail the task (and so the job) rather than write them.
        raise RuntimeError(
            f"partition {part} has {seen:,} rows, but the count pass read {task.counts[part]:,}: "
            "did the input change during the job?"
        )


def _without_header(batches: Iterator[Any], header: bytes, part: int) -> Iterator[Any]:
    """A partition that starts a file, without the file's first line (its header)."""
    for rb in batches:
        if rb.num_rows:
            first = rb.column(0)[0].as_py()
            if first.removeprefix(b"\xef\xbb\xbf") != header:
                raise RuntimeError(f"partition {part} starts a file but not with its header: {first[:200]!r}")
            yield rb.slice(1)
            break
    yield from batches


def _chunks(batches: Iterator[Any], rows: int) -> Iterator[Any]:
    """Record batches of exactly `rows` rows (the last one fewer), so that a partition's
    handler calls cover the rows the local engine's chunks cover (a header dropped, or Spark
    cutting batches elsewhere, would otherwise move every boundary)."""
    import pyarrow as pa

    pending: list[Any] = []
    have = 0
    for rb in batches:
        while rb.num_rows:
            take = min(rows - have, rb.num_rows)
            pending.append(rb.slice(0, take))
            have += take
            rb = rb.slice(take)
            if have == rows:
                yield pending[0] if len(pending) == 1 else pa.concat_batches(pending)
                pending, have = [], 0
    if have:
        yield pending[0] if len(pending) == 1 else pa.concat_batches(pending)


def score_batch(task: Task, rb: Any, first_row: int) -> Any:
    """One record batch of the input (data rows first_row...) -> its output record batch."""
    import pyarrow as pa

    open_quote: list[int] = []
    if task.source == "text":  # each row is one record's own text
        records = _utf8(rb.column(0))
        open_quote = _open_quotes(records)
    elif task.source == "csv":  # Spark's fields, written back as CSV; a malformed record's text
        records = _csv_records(rb, task.raw)
    else:  # Parquet: typed columns, as CSV text
        records = R.table_lines(rb)
    scored = _score_runs(task, records, first_row, open_quote)
    _count(task, scored)
    if task.output == "csv":
        if task.source == "parquet":
            prefix: Any = records
        else:  # as the CSV writer: a failed record of another width keeps its text, quoted
            listed = records.to_pylist() if scored.errors else records
            prefix = R.csv_prefix(listed, scored.errors, len(task.names), open_quote)
        out = R.render_lines(prefix, scored, task.columns)
        return pa.RecordBatch.from_arrays([out], ["value"])
    if task.source == "parquet":
        inputs = list(rb.columns)
        fields = list(rb.schema)
    else:  # as the Parquet writer: text columns; a record of another width in the first
        inputs = R.csv_columns(records.to_pylist(), len(task.names), open_quote)
        fields = [pa.field(n, pa.string()) for n in task.names]
    schema = pa.schema(fields + R.output_fields(task.columns))
    return pa.RecordBatch.from_arrays(inputs + R.output_arrays(scored, task.columns), schema=schema)


def _utf8(records: Any) -> Any:
    """The records as UTF-8, a bad byte read as U+FFFD (as tabserve.csvio reads a CSV file
    for the other engines, which then write the record so)."""
    import pyarrow as pa

    try:
        records.cast(pa.string())  # validates
        return records
    except pa.ArrowInvalid:
        fixed = [
            None if r is None else r.decode("utf-8", "replace").encode("utf-8") for r in records.to_pylist()
        ]
        return pa.array(fixed, pa.binary())


OPEN_QUOTE = (
    "a quote is left open at the end of the line: --engine spark reads a line per record "
    "(a quoted field that spans lines needs --multiline)"
)


def _open_quotes(records: Any) -> list[int]:
    """The records (lines) with an odd number of quotes: a quoted field left open at the end
    of its line. Never sent to the handler, whose CSV reading would join the next lines to it;
    never written as they are, which would do the same to the output's next lines."""
    import numpy as np
    import pyarrow.compute as pc

    counts = pc.count_substring(records, '"').to_numpy(zero_copy_only=False)
    return np.flatnonzero(counts % 2 == 1).tolist()


def _score_runs(task: Task, records: Any, first_row: int, flagged: list[int]) -> R.Results:
    """Results for every record: a flagged one gets OPEN_QUOTE as its error, without the
    handler; the runs of records between them go to _contained (as the pipeline's
    score_batch treats records over --max-record-bytes)."""
    if not flagged:
        return _contained(task, records, first_row)
    classifier = task.columns[0] == "label"
    width = len(task.columns) - 2 if classifier else 1
    parts: list[R.Results] = []
    start = 0
    for i in [*flagged, len(records)]:
        if i > start:
            parts.append(_contained(task, records.slice(start, i - start), first_row + start))
        if i < len(records):
            parts.append(R.Results.refused(1, first_row + i, OPEN_QUOTE, width, classifier))
        start = i + 1
    return R.Results.concat(parts)


def _csv_records(rb: Any, raw: str | None) -> Any:
    """Spark's CSV fields of each row as one CSV record; a malformed record's own text."""
    import pyarrow as pa
    import pyarrow.compute as pc

    records = R.table_lines(rb.select([n for n in rb.schema.names if n != raw]))
    if raw is not None:
        text = rb.column(raw)
        if text.null_count < len(text):
            records = pc.if_else(pc.is_valid(text), pc.cast(text, pa.binary()), records)
    return records


def _contained(task: Task, lines: Any, first_row: int) -> R.Results:
    """tabserve.batch.pipeline.score_contained's rule: rows that fail as a whole in any way
    are split in halves, recursively, and a single row that still fails gets the reason as
    its error. Only the answers kept count their unseen categories."""
    import pyarrow as pa
    import pyarrow.compute as pc

    handler = model(task.mar_name)
    classifier = task.columns[0] == "label"
    width = len(task.columns) - 2 if classifier else 1

    def call(lo: int, hi: int) -> R.Results:
        part = lines.slice(lo, hi - lo)
        text = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, hi - lo], pa.int32()), part), b"\n")
        body = task.header + b"\n" + text[0].as_py() + b"\n"
        status, out = R.call_handler(handler, body, hi - lo, first_row + lo, task.profile)
        if status != 200:
            raise _Refused(str(out))
        return out

    def attempt(lo: int, hi: int) -> R.Results:
        try:
            return call(lo, hi)
        except Exception as exc:  # the boundary: any failure is these rows' own
            if hi - lo == 1:
                reason = f"chunk refused: {exc}" if str(exc) else f"chunk refused: {type(exc).__name__}"
                return R.Results.refused(1, first_row + lo, reason, width, classifier)
            mid = (lo + hi) // 2
            return R.Results.concat([attempt(lo, mid), attempt(mid, hi)])

    return attempt(0, len(lines))


def _count(task: Task, scored: R.Results) -> None:
    """Add the batch to the job's counters. (An accumulator updated in a task counts again
    when Spark runs the task again: a lost executor, speculation.)"""
    if task.counters is None:
        return
    rows, errors, unseen, report = task.counters
    rows.add(len(scored))
    errors.add(len(scored.errors))
    if scored.unseen:
        unseen.add(dict(scored.unseen))
    if task.profile:
        ok = len(scored) - len(scored.errors)
        report.add(
            {
                "profile": scored.profile,
                "unprofiled": ok if scored.profile is None else 0,
                "error_kinds": R.count_kinds({}, scored.errors.values(), task.features),
            }
        )


class ReportParam:
    """Spark's AccumulatorParam for the drift report's counts: {"profile": the handler's
    profiles added up (results.merge_profile), "unprofiled": rows scored without one,
    "error_kinds": rows failed per kind}. A profile that does not add up with the others
    (another layout) counts its rows as unprofiled."""

    def zero(self, value: Any) -> dict[str, Any]:
        return {"profile": None, "unprofiled": 0, "error_kinds": {}}

    def addInPlace(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:  # Spark's name
        a["unprofiled"] += b["unprofiled"]
        for k, v in b["error_kinds"].items():
            R.add_kind(a["error_kinds"], k, v)
        more = b["profile"]
        if more is None:
            return a
        if a["profile"] is None:
            a["profile"] = more
            return a
        try:
            a["profile"] = R.merge_profile(a["profile"], more)
        except ValueError:
            rows = more.get("rows") if isinstance(more, dict) else 0
            a["unprofiled"] += rows if type(rows) is int and rows > 0 else 0
        return a
