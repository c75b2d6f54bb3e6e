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
    """Logical CSV records with their original text and running byte offsets.

    Reads the input in blocks and splits lines in C; only a block with a quote character goes
    through the careful per-line path that joins a record whose quoted field spans lines,
    exactly as Python's csv module reads it. `offset` is the number of (decompressed) bytes
    up to the end of the last record taken.
    """

    BLOCK = 1 << 20

    def __init__(self, stream: BinaryIO, offset: int = 0) -> None:
        self.stream = stream
        self.offset = offset
        self._records: list[bytes] = []  # complete records not taken yet
        self._pos = 0
        self._tail = b""  # an incomplete last line (or quoted record) of the last block
        self._in_quotes = False
        self._eof = False
        self._unterminated = False  # the input's last record has no newline after it

    def _fill(self) -> bool:
        """Read one block; False at the end of the input."""
        if self._eof:
            return False
        block = self.stream.read(self.BLOCK)
        if not block:
            self._eof = True
            if self._tail:
                self._records = [self._tail]
                self._pos, self._tail = 0, b""
                self._unterminated = True
                return True
            return False
        buf = self._tail + block
        lines = buf.split(b"\n")
        self._tail = lines.pop()
        if b'"' in buf:
            lines = self._join_quoted(lines)
        self._records, self._pos = lines, 0
        return True

    def _join_quoted(self, lines: list[bytes]) -> list[bytes]:
        out: list[bytes] = []
        pending: list[bytes] = []
        for raw in lines:
            if not pending and b'"' not in raw:
                out.append(raw)
                continue
            pending.append(raw)
            self._in_quotes = ends_in_quotes(raw.decode("utf-8", errors="replace"), self._in_quotes)
            if not self._in_quotes:
                out.append(b"\n".join(pending))
                pending = []
        if pending:  # the record goes on in the next block: read it again from its start
            self._tail = b"\n".join([*pending, self._tail])
        self._in_quotes = False
        return out

    def take(self, n: int) -> list[bytes]:
        """Up to n raw records (fewer only at the end of the input)."""
        out: list[bytes] = []
        while len(out) < n:
            if self._pos >= len(self._records) and not self._fill():
                break
            part = self._records[self._pos : self._pos + n - len(out)]
            self._pos += len(part)
            out.extend(part)
        self.offset += sum(map(len, out)) + len(out)  # each record and its newline
        if self._unterminated and out and self._pos >= len(self._records):
            self.offset -= 1
        return out

    def header(self) -> str:
        recs = self.take(1)
        if not recs:
            raise ConfigError("input is empty: expected a CSV header line")
        return decode_records(recs)[0].lstrip("\ufeff")

    def seek(self, offset: int, path: str) -> None:
        """Continue at `offset` bytes of (decompressed) input, for --resume."""
        self._records, self._pos, self._tail = [], 0, b""
        self._in_quotes = self._eof = self._unterminated = False
        if not path.endswith(".gz"):
            self.stream.seek(offset)
        else:
            self.stream.seek(0)
            left = offset
            while left > 0:
                block = self.stream.read(min(left, self.BLOCK))
                if not block:
                    break
                left -= len(block)
        self.offset = offset


def decode_records(records: list[bytes]) -> list[str]:
    """Raw records as text, line terminators and a trailing CR removed."""
    joined = b"\n".join(records).decode("utf-8", errors="replace")
    lines = joined.split("\n")
    if len(lines) != len(records):  # a quoted field holds a newline: decode one by one
        lines = [r.decode("utf-8", errors="replace") for r in records]
    if "\r" in joined:
        lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    return lines


def chunks(reader: RecordReader, chunk_rows: int, first_row: int = 1, index: int = 0) -> Iterator[Chunk]:
    """Group the reader's remaining records into chunks of `chunk_rows` data rows; blank
    lines are not data rows: they are skipped and counted."""
    while True:
        lines = decode_records(reader.take(chunk_rows))
        if not lines:
            return
        blanks = 0
        if any(not line or line.isspace() for line in lines):
            kept = [line for line in lines if line and not line.isspace()]
            blanks = len(lines) - len(kept)
            lines = kept
        yield Chunk(index, first_row, lines, reader.offset, blanks)
        index += 1
        first_row += len(lines)


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
