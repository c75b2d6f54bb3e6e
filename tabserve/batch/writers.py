"""Writers: every input row, in order, with its results, as CSV or Parquet.

Text and Parquet are produced here, once, by pyarrow's C++ (numbers formatted, columns
encoded); Python only joins each row's pieces. Both write to a part file beside the output,
renamed into place when the job completes, and can say where they stand for a checkpoint:

- CSV (`.csv`, `.gz`, `-` for stdout): input records keep their own text; a row that failed
  because its record has the wrong number of fields keeps that text, quoted, in the first
  column. A checkpoint is a byte offset: --resume truncates OUTPUT.part there.
- Parquet (`.parquet`, or `--format parquet`, also to stdout): every input column keeps its
  type (a CSV input's columns are text, as read), then `label` (string), `p_<class>`
  (float64) or `prediction` (float64), and `error` (string, null when the row scored). The part
  is a folder of complete Parquet files (segments, each closed with its footer at a
  checkpoint); --resume keeps the segments the checkpoint counts, and the job ends by copying
  the segments' row groups into OUTPUT.

Adding a writer: a class with `start`, `write`, `position`, `commit`, `abandon`, and an entry
in WRITERS.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from ..csvio import OutputFile
from ..errors import ConfigError, OutputError
from .readers import Batch
from .results import (
    Results,
    csv_columns,
    csv_prefix,
    output_arrays,
    output_fields,
    quote,
    render_rows,
    table_lines,
)

# Rows per Parquet row group (a batch's rows are gathered up to this many before one is
# written): big enough for columnar reads to pay off, small enough to bound memory.
ROW_GROUP_ROWS = 128 * 1024


class CsvWriter:
    """CSV out: each input row's text, then its result fields."""

    kind = "csv"
    checkpoint_seconds = 1.0

    def __init__(self, path: str) -> None:
        self.path = path
        self.out: OutputFile | None = None
        self.written = 0
        self.width = 0
        self.columns: list[str] = []
        self.input_names: list[str] = []

    def start(
        self,
        input_names: list[str],
        header: bytes,
        columns: list[str],
        resume: dict | None,
        input_schema: Any = None,
    ) -> None:
        """Open the part file (or truncate it to the checkpoint's bytes) and write the header."""
        self.width = len(input_names)
        self.columns = columns
        self.input_names = input_names
        self.out = OutputFile(self.path, None if resume is None else resume["bytes"])
        if resume is None:
            self.written = self.out.write_block(
                header + b"," + ",".join(map(quote, columns)).encode() + b"\n"
            )
        else:
            self.written = resume["bytes"]

    def render(self, batch: Batch, results: Results) -> bytes:
        """A batch's output lines (any thread: the pipeline renders batches side by side)."""
        if batch.records is not None:
            rows: Any = csv_prefix(batch.records, results.errors, self.width, batch.oversized)
        else:
            rows = table_lines(batch.table)
        return render_rows(rows, results, self.columns)

    def write(self, block: bytes) -> None:
        """Append a rendered batch (in input order)."""
        assert self.out is not None
        if block:
            self.written = self.out.write_block(block)

    def position(self) -> dict[str, int]:
        return {"bytes": self.written}

    def ready(self) -> bool:
        """Whether a checkpoint now would be a true one (always, for CSV)."""
        return True

    def commit(self) -> None:
        assert self.out is not None
        self.out.commit()

    def abandon(self) -> None:
        if self.out is not None:
            self.out.abandon()

    def discard(self) -> None:
        """Remove the partial output (a job that wrote no batch leaves none)."""
        if self.out is not None and self.out.part is not None:
            self.out.abandon()
            self.out.part.unlink(missing_ok=True)


class ParquetWriter:
    """Parquet out, typed columns, resumable by segment (see the module's description)."""

    kind = "parquet"
    # Each checkpoint closes a segment, and a job of several segments ends by copying them into
    # one file (one more pass over the output): a job shorter than this has one segment, renamed
    # into place.
    checkpoint_seconds = 60.0

    def __init__(self, path: str) -> None:
        self.path = path
        self.stdout = path == "-"
        self.part = None if self.stdout else Path(path + ".part")
        self.segment = 0  # segments closed so far
        self.writer: Any = None
        self.input_schema: Any = None  # a Parquet input's schema (a CSV input's columns are text)
        self.pending: list[Any] = []
        self.pending_rows = 0
        self.columns: list[str] = []
        self.input_names: list[str] = []

    def start(
        self,
        input_names: list[str],
        header: bytes,
        columns: list[str],
        resume: dict | None,
        input_schema: Any = None,
    ) -> None:
        """Make the part folder (or keep the checkpoint's segments and remove the rest)."""
        self.columns = columns
        self.input_names = input_names
        self.input_schema = input_schema
        if self.part is None:
            return
        if resume is None:
            if self.part.is_file() or self.part.is_symlink():
                self.part.unlink()
            shutil.rmtree(self.part, ignore_errors=True)
            try:
                self.part.mkdir()
            except OSError as exc:
                raise OutputError(f"cannot write {self.part}: {exc.strerror}") from exc
            return
        self.segment = resume["segments"]
        if not self.part.is_dir():
            raise ConfigError(f"cannot resume: {self.part} is missing")
        for f in self.part.iterdir():
            # Written after the checkpoint: a segment it does not count (perhaps without its
            # footer, from a killed job), or the merged file of a job killed as it ended.
            counted = f.suffix == ".parquet" and f.stem.isdigit() and int(f.stem) < self.segment
            if not counted:
                f.unlink()
        for k in range(self.segment):
            if not self._segment(k).is_file():
                raise ConfigError(f"cannot resume: {self._segment(k)} is missing")

    def _segment(self, k: int) -> Path:
        assert self.part is not None
        return self.part / f"{k:06d}.parquet"

    def _schema(self, batch: Batch) -> Any:
        import pyarrow as pa

        if batch.table is not None:
            fields = list(batch.table.schema)
        else:
            fields = [pa.field(n, pa.string()) for n in self.input_names]
        return pa.schema(fields + output_fields(self.columns))

    def _table(self, batch: Batch, results: Results) -> Any:
        import pyarrow as pa

        if batch.table is not None:
            inputs = list(batch.table.columns)
        else:
            inputs = csv_columns(batch.records or [], len(self.input_names), batch.oversized)
        out = list(inputs) + output_arrays(results, self.columns)
        return pa.Table.from_arrays(out, schema=self._schema(batch))

    def render(self, batch: Batch, results: Results) -> Any:
        """A batch's output table (any thread: the pipeline renders batches side by side)."""
        return self._table(batch, results)

    def write(self, table: Any) -> None:
        """Append a rendered batch (in input order)."""
        self.pending.append(table)
        self.pending_rows += table.num_rows
        if self.pending_rows >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.pending:
            return
        table = pa.concat_tables(self.pending)
        self.pending, self.pending_rows = [], 0
        try:
            if self.writer is None:
                sink = sys.stdout.buffer if self.stdout else str(self._segment(self.segment))
                self.writer = pq.ParquetWriter(sink, table.schema)
            self.writer.write_table(table, row_group_size=max(len(table), 1))
        except OSError as exc:
            raise OutputError(f"cannot write {self.part or 'stdout'}: {exc}") from exc

    def _close_segment(self) -> None:
        self._flush()
        if self.writer is not None:
            try:
                self.writer.close()
            except OSError as exc:
                raise OutputError(f"cannot write {self.part or 'stdout'}: {exc}") from exc
            self.writer = None
            self.segment += 1

    def ready(self) -> bool:
        """Close the current segment so that a checkpoint now is a true one."""
        if self.stdout:
            return True
        self._close_segment()
        return True

    def position(self) -> dict[str, int]:
        return {"segments": self.segment}

    def commit(self) -> None:
        import pyarrow.parquet as pq

        if self.stdout:
            if self.writer is None and not self.pending:
                self._empty(None)
                return
            self._close_segment()
            sys.stdout.buffer.flush()
            return
        self._close_segment()
        assert self.part is not None
        segments = [self._segment(k) for k in range(self.segment)]
        try:
            if not segments:  # no rows: a file with the columns and no row group
                self._empty(self.part / "empty.parquet")
                segments = [self.part / "empty.parquet"]
            if len(segments) == 1:
                os.replace(segments[0], self.path)
            else:
                merged = self.part / "merged.parquet"
                first = pq.ParquetFile(segments[0])
                with pq.ParquetWriter(str(merged), first.schema_arrow) as w:
                    for seg in segments:
                        f = pq.ParquetFile(seg)
                        for g in range(f.num_row_groups):
                            w.write_table(f.read_row_group(g), row_group_size=ROW_GROUP_ROWS)
                        f.close()
                os.replace(merged, self.path)
            shutil.rmtree(self.part, ignore_errors=True)
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc}") from exc

    def _empty(self, where: Path | None) -> None:
        """A Parquet file with the output's columns and no rows (None: to stdout)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        fields = [pa.field(n, pa.string()) for n in self.input_names]
        if self.input_schema is not None:
            fields = list(self.input_schema)
        fields += output_fields(self.columns or ["prediction", "error"])
        sink = sys.stdout.buffer if where is None else str(where)
        pq.write_table(pa.schema(fields).empty_table(), sink)

    def abandon(self) -> None:
        """Close the open segment: its rows stay on disk, though the checkpoint may not count
        them (then --resume removes it)."""
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:
                pass
            self.writer = None

    def discard(self) -> None:
        self.abandon()
        if self.part is not None:
            shutil.rmtree(self.part, ignore_errors=True)


WRITERS = {"csv": CsvWriter, "parquet": ParquetWriter}


def output_format(path: str, given: str | None = None) -> str:
    """The output's format: --format, else the file's extension, else CSV."""
    if given:
        if given not in WRITERS:
            raise ConfigError(f"--format must be one of {', '.join(WRITERS)}, got {given!r}")
        return given
    return "parquet" if path.lower().endswith((".parquet", ".pq")) else "csv"
