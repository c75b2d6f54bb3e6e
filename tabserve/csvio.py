"""Streaming CSV in, CSV out, for the batch scorer.

The scorer never holds a file: it reads logical records (a quoted field may span lines) in
chunks, keeping each record's original text so that every input column passes through to the
output unchanged, and it knows the byte offset after every chunk, so a job can resume there.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import ConfigError


@dataclass
class Chunk:
    """Consecutive data records of the input, in order."""

    index: int  # 0, 1, 2, ...
    first_row: int  # 1-based number of the chunk's first data row in the file
    lines: list[str]  # each record's text, without its line terminator
    end_offset: int  # bytes of (decompressed) input consumed after this chunk
    blank_lines: int  # blank lines skipped inside this chunk (they are not data rows)


def open_input(path: str) -> BinaryIO:
    """`-` is stdin; `.gz` is decompressed on the fly."""
    if path == "-":
        return sys.stdin.buffer
    try:
        if path.endswith(".gz"):
            return gzip.open(path, "rb")  # type: ignore[return-value]
        return open(path, "rb")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc


def field_count(line: str) -> int:
    if '"' not in line:
        return line.count(",") + 1
    return len(next(csv.reader([line]), []))


def ends_in_quotes(line: str, in_quotes: bool = False) -> bool:
    """Whether `line` ends inside a quoted field (csv's rules: a quote opens a quoted field
    only at the start of a field; a doubled quote inside one is a literal quote)."""
    at_start = not in_quotes
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if in_quotes:
            if c == '"':
                if i + 1 < n and line[i + 1] == '"':
                    i += 1
                else:
                    in_quotes = False
        elif c == '"' and at_start:
            in_quotes = True
        at_start = c == "," and not in_quotes
        i += 1
    return in_quotes


def parse_header(line: str) -> list[str]:
    return next(csv.reader([line]), [])


class RecordReader:
    """Logical CSV records with their original text and running byte offsets."""

    def __init__(self, stream: BinaryIO, offset: int = 0) -> None:
        self.stream = stream
        self.offset = offset  # bytes consumed so far

    def records(self) -> Iterator[str]:
        """Yield records; a record whose line ends inside a quoted field continues on the
        next line, exactly as Python's csv module reads it."""
        pending: list[str] = []
        in_quotes = False
        for raw in self.stream:
            self.offset += len(raw)
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if not pending and '"' not in line:
                yield line
                continue
            in_quotes = ends_in_quotes(line, in_quotes)
            pending.append(line)
            if not in_quotes:
                yield "\n".join(pending)
                pending = []
        if pending:
            yield "\n".join(pending)

    def header(self) -> str:
        for rec in self.records():
            return rec.lstrip("\ufeff")
        raise ConfigError("input is empty: expected a CSV header line")


def chunks(reader: RecordReader, chunk_rows: int, first_row: int = 1, index: int = 0) -> Iterator[Chunk]:
    """Group the reader's remaining records into chunks of `chunk_rows` data rows."""
    lines: list[str] = []
    blanks = 0
    for rec in reader.records():
        if not rec.strip():
            blanks += 1
            continue
        lines.append(rec)
        if len(lines) == chunk_rows:
            yield Chunk(index, first_row, lines, reader.offset, blanks)
            index += 1
            first_row += len(lines)
            lines, blanks = [], 0
    if lines or blanks:
        yield Chunk(index, first_row, lines, reader.offset, blanks)


def quote(field: str) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow([field])
    return buf.getvalue()


class OutputFile:
    """The output as a temporary file beside OUTPUT (OUTPUT.part), renamed into place on
    success; `-` writes straight to stdout (no temporary file, no resume).

    Output is written in blocks (one per chunk). A `.gz` output is a multi-member gzip file,
    one member per block, each a complete gzip stream: truncating the part file after any
    block leaves a valid file, which is what --resume relies on, and with mtime 0 in every
    member header a resumed file is byte-identical to an uninterrupted one.
    """

    def __init__(self, path: str, resume_bytes: int | None = None) -> None:
        self.path = path
        self.gz = path.endswith(".gz")
        self.part: Path | None = None
        if path == "-":
            self._f: BinaryIO = sys.stdout.buffer
            return
        target = Path(path)
        self.part = target.with_name(target.name + ".part")
        try:
            if resume_bytes is None:
                self._f = open(self.part, "wb")  # noqa: SIM115 (held until commit or abandon)
            else:
                self._f = open(self.part, "r+b")  # noqa: SIM115 (held until commit or abandon)
                self._f.truncate(resume_bytes)
                self._f.seek(resume_bytes)
        except OSError as exc:
            raise ConfigError(f"cannot write {self.part}: {exc.strerror}") from exc

    def write_block(self, text: str) -> int:
        """Write one block and flush it to the OS; returns the bytes written so far."""
        data = text.encode("utf-8")
        if self.gz:
            data = gzip.compress(data, compresslevel=6, mtime=0)
        self._f.write(data)
        self._f.flush()
        return self._f.tell() if self.part else 0

    def commit(self) -> None:
        if self.part is None:
            self._f.flush()
            return
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self.part, self.path)

    def abandon(self) -> None:
        """Close without renaming: the part file stays for --resume."""
        if self.part is not None and not self._f.closed:
            self._f.close()
