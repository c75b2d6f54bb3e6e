"""Streaming CSV in, CSV out, for the batch scorer.

The scorer never holds a file: it reads logical records (a quoted field may span lines) in
chunks, keeping each record's original text so that every input column passes through to the
output unchanged, and it knows the byte offset after every chunk, so a job can resume there.

This is the batch job's containment boundary for the input: a record longer than
`max_record_bytes` (a runaway line, or a quote that is never closed) is cut off at a line
boundary and handed on as one oversized record that no engine sees, so one bad line costs at
most that much memory and time, and every byte is read once.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import gzip
import os
import re
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import BinaryIO

from .errors import ConfigError, InputError, OutputError, OutputLocked

# A record longer than this is malformed (--max-record-bytes): far above any real row of
# numbers, small enough that a runaway line or an unclosed quote cannot exhaust memory.
DEFAULT_MAX_RECORD_BYTES = 1 << 20
# A chunk also ends once its records hold this many bytes, so that chunks of very long records
# keep the scorer's memory bounded and requests well under TorchServe's max_request_size
# (64 MiB in config.properties). Rows of up to 1.6 KB fill 5,000-row chunks before this.
CHUNK_BYTES = 8 << 20


@dataclass
class Chunk:
    """Consecutive data records of the input, in order."""

    index: int  # 0, 1, 2, ...
    first_row: int  # 1-based number of the chunk's first data row in the file
    lines: list[str]  # each record's text, without its line terminator
    end_offset: int  # bytes of (decompressed) input consumed after this chunk
    blank_lines: int  # blank lines skipped inside this chunk (they are not data rows)
    oversized: tuple[int, ...] = ()  # positions in `lines` of malformed records (never scored):
    # over max_record_bytes, or (with its reason in `reasons`) a quote never closed
    reasons: dict[int, str] = field(default_factory=dict)


def open_input(path: str) -> BinaryIO:
    """`-` is stdin; `.gz` is decompressed on the fly."""
    if path == "-":
        return sys.stdin.buffer
    if os.path.isdir(path):
        raise ConfigError(f"input {path} is a folder: expected a CSV file")
    try:
        if path.endswith(".gz"):
            return gzip.open(path, "rb")  # type: ignore[return-value]
        return open(path, "rb")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc


_QUOTE_RUN = re.compile(rb'"+')


def ends_in_quotes(line: bytes, in_quotes: bool = False) -> bool:
    """Whether `line` ends inside a quoted field (csv's rules: a quote opens a quoted field
    only at the start of a field; a doubled quote inside one is a literal quote).

    Jumps from quote to quote with bytes.find, so a long line costs C time, not a Python step
    per character. (Quotes and commas are ASCII, never part of a UTF-8 sequence.)"""
    i = 0
    if not in_quotes and line[:1] == b'"':
        in_quotes, i = True, 1
    while True:
        if in_quotes:
            j = line.find(b'"', i)
            if j < 0:
                return True
            k = _QUOTE_RUN.match(line, j).end()  # type: ignore[union-attr]
            i = k
            if (k - j) % 2:  # pairs are literal quotes; an odd one out closes the field
                in_quotes = False
        else:
            j = line.find(b',"', i)
            if j < 0:
                return False
            in_quotes, i = True, j + 2


def parse_header(line: str) -> list[str]:
    """The input's header fields; ConfigError when the line is not one CSV record (a bare
    carriage return, as in a file with CR-only line ends)."""
    try:
        return next(csv.reader([line]), [])
    except csv.Error as exc:
        hint = ": a bare carriage return (CR-only line ends are not supported)" if "\r" in line else ""
        raise ConfigError(f"the input's header line cannot be read as CSV ({exc}){hint}") from exc


class RecordReader:
    """Logical CSV records with their original text and running byte offsets.

    Reads the input in blocks and splits lines in C; only lines with a quote character go
    through the per-line path that joins a record whose quoted field spans lines, exactly as
    Python's csv module reads it. A line that does not end in a block is kept in pieces and
    joined once when it ends, so a long line is copied once, not once per block.

    A record longer than `max_record_bytes` is oversized: the reader hands it on whole (its
    text goes to the output) and flags it. A quoted record still open when it passes the
    limit ends there, at the end of the line that passed it, and reading goes on unquoted at
    the next line: an unclosed quote swallows at most about `max_record_bytes` of input.

    `offset` is the number of (decompressed) bytes up to the end of the last record taken.
    """

    BLOCK = 1 << 20

    def __init__(
        self, stream: BinaryIO, offset: int = 0, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    ) -> None:
        self.stream = stream
        self.offset = offset
        self.max_record_bytes = max_record_bytes
        self._reset()

    def _reset(self) -> None:
        self._records: list[bytes] = []  # complete records not taken yet
        self._oversized: list[int] = []  # indexes in _records of records over the limit, ascending
        self._pos = 0
        self._partial: list[bytes] = []  # the input's current, unfinished line, in pieces
        self._quoted: list[bytes] = []  # lines of a quoted record that goes on
        self._quoted_bytes = 0
        self._eof = False
        self._unterminated = False  # the input's last record has no newline after it
        self.open_quote_at_end = False  # the input's last record is a quote never closed

    def _fill(self) -> bool:
        """Read one block; False at the end of the input."""
        if self._eof:
            return False
        try:
            block = self.stream.read(self.BLOCK)
        except (OSError, EOFError, zlib.error) as exc:  # EOFError, zlib.error: a broken .gz
            raise InputError(f"cannot read the input after byte {self.offset:,}: {exc}") from exc
        self._records, self._oversized, self._pos = [], [], 0
        if not block:
            self._eof = True
            if not self._partial and not self._quoted:
                return False
            last = b"".join(self._partial)
            self._partial = []
            if self._quoted:
                # A quote still open at the end of the input: the record took every line after
                # it. Never scored (a handler would read it as one row and the rest of the
                # file would be lost in its last field): it is malformed, like an oversized one.
                self._quoted_bytes += 1 + len(last)
                record = b"\n".join([*self._quoted, last])
                self.open_quote_at_end = self._quoted_bytes <= self.max_record_bytes
                self._emit(record, True)
                self._quoted = []
            else:
                self._emit(last, len(last) > self.max_record_bytes)
            self._unterminated = True
            return True
        lines = block.split(b"\n")
        if len(lines) == 1:  # no line ends in this block: keep the piece, join it later
            self._partial.append(block)
            return True
        if self._partial:
            self._partial.append(lines[0])
            lines[0] = b"".join(self._partial)
        last = lines.pop()
        self._partial = [last] if last else []
        if not self._quoted and b'"' not in block and b'"' not in lines[0]:
            self._records = lines
            limit = self.max_record_bytes
            if max(map(len, lines)) > limit:
                self._oversized = [i for i, line in enumerate(lines) if len(line) > limit]
        else:
            self._join_quoted(lines)
        return True

    def _emit(self, record: bytes, oversized: bool) -> None:
        if oversized:
            self._oversized.append(len(self._records))
        self._records.append(record)

    def _join_quoted(self, lines: list[bytes]) -> None:
        limit = self.max_record_bytes
        quoted = self._quoted
        for raw in lines:
            if quoted:
                quoted.append(raw)
                self._quoted_bytes += 1 + len(raw)
                closed = not ends_in_quotes(raw, True)
                if closed or self._quoted_bytes > limit:
                    # Closed, or still open past the limit: the record ends here either way,
                    # and an open one is oversized (malformed); reading goes on unquoted.
                    self._emit(b"\n".join(quoted), self._quoted_bytes > limit)
                    quoted = []
            elif b'"' in raw and len(raw) <= limit and ends_in_quotes(raw):
                quoted = [raw]
                self._quoted_bytes = len(raw)
            else:
                self._emit(raw, len(raw) > limit)
        self._quoted = quoted

    def take(self, n: int, max_bytes: int | None = None) -> tuple[list[bytes], list[int]]:
        """Up to n raw records (fewer only at the end of the input, or once they hold
        `max_bytes`), and the positions among them of oversized records."""
        out: list[bytes] = []
        bad: list[int] = []
        size = 0
        while len(out) < n:
            if self._pos >= len(self._records) and not self._fill():
                break
            start = self._pos
            part = self._records[start : start + n - len(out)]
            if max_bytes is not None:
                total = sum(map(len, part)) + len(part)  # each record and its newline
                if part and size + total >= max_bytes:
                    sizes = list(accumulate(len(r) + 1 for r in part))
                    # End the chunk with the record that reaches the budget.
                    cut = next(i for i, s in enumerate(sizes) if size + s >= max_bytes) + 1
                    part = part[:cut]
                    n = len(out) + cut
                    total = sizes[cut - 1]
                size += total
            self._pos += len(part)
            if self._oversized:
                bad.extend(len(out) + i - start for i in self._oversized if start <= i < self._pos)
            out.extend(part)
        self.offset += sum(map(len, out)) + len(out)  # each record and its newline
        if self._unterminated and out and self._pos >= len(self._records):
            self.offset -= 1
        return out, bad

    @property
    def exhausted(self) -> bool:
        """Every record of the input has been taken."""
        return self._eof and self._pos >= len(self._records)

    def header(self) -> str:
        recs, bad = self.take(1)
        if not recs:
            raise ConfigError("input is empty: expected a CSV header line")
        if bad:
            raise ConfigError(
                f"the input's first line is longer than {self.max_record_bytes:,} bytes "
                "(--max-record-bytes): expected a CSV header line"
            )
        return decode_records(recs)[0].lstrip("\ufeff")

    def seek(self, offset: int, path: str) -> None:
        """Continue at `offset` bytes of (decompressed) input, for --resume."""
        self._reset()
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


def clean_records(records: list[bytes]) -> list[bytes]:
    """Raw records as valid UTF-8 (an invalid byte becomes U+FFFD, as when decoded), a
    trailing CR removed."""
    joined = b"\n".join(records)
    try:
        joined.decode("utf-8")
    except UnicodeDecodeError:
        records = [r.decode("utf-8", errors="replace").encode("utf-8") for r in records]
    if b"\r" in joined:
        records = [r[:-1] if r.endswith(b"\r") else r for r in records]
    return records


def _is_blank(line: str | bytes) -> bool:
    """An empty record, or one of whitespace only (any Unicode whitespace, as str.isspace)."""
    if isinstance(line, bytes):
        if not line or line.isspace():
            return True
        return not line.isascii() and line.decode("utf-8", "replace").isspace()
    return not line or line.isspace()


def _has_blank(lines: list, raw: bool) -> bool:
    """Whether any record is blank (_is_blank); C-level loops for raw ASCII records."""
    if raw and b"".join(lines).isascii():
        return b"" in lines or any(map(bytes.isspace, lines))
    return any(map(_is_blank, lines))


def chunks(
    reader: RecordReader,
    chunk_rows: int,
    first_row: int = 1,
    index: int = 0,
    max_bytes: int | None = CHUNK_BYTES,
    raw: bool = False,
) -> Iterator[Chunk]:
    """Group the reader's remaining records into chunks of `chunk_rows` data rows (fewer
    when they hold `max_bytes`); blank lines are not data rows: they are skipped and
    counted. `raw`: the records as UTF-8 bytes (clean_records), not text."""
    while True:
        records, bad = reader.take(chunk_rows, max_bytes)
        lines = clean_records(records) if raw else decode_records(records)
        if not lines:
            return
        blanks = 0
        if _has_blank(lines, raw):
            keep = [i for i, line in enumerate(lines) if not _is_blank(line)]
            blanks = len(lines) - len(keep)
            if bad:
                where = {i: k for k, i in enumerate(keep)}
                bad = [where[i] for i in bad if i in where]
            lines = [lines[i] for i in keep]
        reasons = {}
        if reader.open_quote_at_end and reader.exhausted and lines:
            last = len(lines) - 1
            newline = b"\n" if raw else "\n"
            n = lines[last].rstrip(newline).count(newline) + 1
            reasons[last] = f"a quote is never closed: its field runs to the end of the input ({n:,} lines)"
        yield Chunk(index, first_row, lines, reader.offset, blanks, tuple(bad), reasons)
        index += 1
        first_row += len(lines)


def quote(field: str) -> str:
    """One CSV field, quoted when it holds a comma, a quote or a line break (the same rule
    as the handler's answers)."""
    if any(c in field for c in ',"\r\n'):
        return '"' + field.replace('"', '""') + '"'
    return field


class OutputLock:
    """One writer per output: an exclusive lock on OUTPUT.lock, held for the whole job.

    Taken before anything is truncated or written; a second job on the same output fails at
    once and touches nothing. flock locks go with the process (and end when it dies, also by
    SIGKILL). The file holds the owner's pid for the message, and is removed on release; a
    job that locked a file that was removed meanwhile tries again with the new one.
    """

    _held: set[int] = set()  # fds of locks this process holds (closed in forked children)
    _fork_hook = False

    def __init__(self, output: str) -> None:
        self.output = output
        self.path = Path(output + ".lock")
        self.fd: int | None = None

    def acquire(self) -> OutputLock:
        for _ in range(100):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise OutputError(f"cannot write {self.path}: {exc.strerror}") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise OutputError(f"cannot lock {self.path}: {exc.strerror}") from exc
                raise OutputLocked(
                    f"{self.output} is being written by another tabserve score "
                    f"job (pid {owner or 'unknown'}); wait for it to end, or choose another -o"
                ) from exc
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:  # its owner removed it as we opened it: lock the new one
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self.fd = fd
            OutputLock._held.add(fd)
            if not OutputLock._fork_hook:
                # A forked worker (--engine local) must not keep the lock after the job.
                os.register_at_fork(after_in_child=OutputLock._close_in_child)
                OutputLock._fork_hook = True
            return self
        raise OutputError(f"cannot lock {self.path}: it keeps being replaced")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still held: see acquire
        except OSError:
            pass
        OutputLock._held.discard(self.fd)
        os.close(self.fd)
        self.fd = None

    @staticmethod
    def _close_in_child() -> None:
        for fd in OutputLock._held:
            try:
                os.close(fd)  # closes the child's copy only: the parent's lock stays
            except OSError:
                pass
        OutputLock._held = set()


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
            raise OutputError(f"cannot write {self.part}: {exc.strerror}") from exc

    def write_block(self, text: str | bytes) -> int:
        """Write one block and flush it to the OS; returns the bytes written so far."""
        data = text.encode("utf-8") if isinstance(text, str) else text
        if self.gz:
            data = gzip.compress(data, compresslevel=6, mtime=0)
        try:
            self._f.write(data)
            self._f.flush()
            return self._f.tell() if self.part else 0
        except OSError as exc:
            raise OutputError(f"cannot write {self.part or 'stdout'}: {exc.strerror or exc}") from exc

    def commit(self) -> None:
        try:
            if self.part is None:
                self._f.flush()
                return
            os.fsync(self._f.fileno())
            self._f.close()
            os.replace(self.part, self.path)
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def abandon(self) -> None:
        """Close without renaming: the part file stays for --resume."""
        if self.part is not None and not self._f.closed:
            try:
                self._f.close()
            except OSError:  # a full disk fails the close's flush too: the checkpoint says how far
                pass
