"""The scorer's streaming reader: records as Python's csv module reads them, whatever the
block boundaries, with exact byte offsets for --resume; as text, and as the UTF-8 bytes the
batch job reads them in (chunks(raw=True), batch.readers.CsvReader)."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import pytest

from tabserve.csvio import OutputLock, RecordReader, chunks
from tabserve.errors import ConfigError, OutputLocked

RAW = pytest.mark.parametrize("raw", [False, True], ids=["text", "bytes"])


def _text(line: str | bytes) -> str:
    """A chunk's line as text (raw chunks hold UTF-8 bytes)."""
    return line.decode("utf-8") if isinstance(line, bytes) else line


TEXTS = [
    'a,b\n1,"x\ny",3\n4,5"6,7\n\n8,"q""r",9\n"unterminated\nmore\n',
    'a\n""\n"a""\n"\nz',
    "h1,h2\r\n1,2\r\n\r\n3,4",
    'a,b\n"1\n\n2",3\n4,5\n',
]


@RAW
@pytest.mark.parametrize("block", [3, 7, 64, 1 << 20])
@pytest.mark.parametrize("text", TEXTS)
def test_records_match_the_csv_module_across_block_boundaries(monkeypatch, text, block, raw):
    monkeypatch.setattr(RecordReader, "BLOCK", block)
    reader = RecordReader(io.BytesIO(text.encode()))
    header = reader.header()
    got = list(chunks(reader, 2, raw=raw))
    records = [_text(line) for c in got for line in c.lines]
    expected = list(csv.reader(io.StringIO(text)))
    parsed = [next(csv.reader(io.StringIO(r.replace("\r", "")))) for r in records]
    assert [next(csv.reader([header]))] + parsed == [r for r in expected if r]
    assert sum(c.blank_lines for c in got) == sum(1 for r in expected if not r)
    assert got[-1].end_offset == len(text.encode())


@RAW
def test_resume_offsets_continue_exactly_where_a_chunk_ended(monkeypatch, raw):
    monkeypatch.setattr(RecordReader, "BLOCK", 16)
    text = "id,x\n" + "".join(f'{i},"v\n{i}"\n' if i % 3 == 0 else f"{i},{i}\n" for i in range(50))
    whole = [line for c in chunks(_reader(text), 4, raw=raw) for line in c.lines]
    first = _reader(text)
    it = chunks(first, 4, raw=raw)
    done = [next(it) for _ in range(5)]
    resumed = _reader(text)
    resumed.seek(done[-1].end_offset, "in.csv")
    rest = [line for c in chunks(resumed, 4, raw=raw) for line in c.lines]
    assert [line for c in done for line in c.lines] + rest == whole


def _reader(text: str) -> RecordReader:
    r = RecordReader(io.BytesIO(text.encode()))
    r.header()
    return r


def _records(
    text: bytes, limit: int, block: int, monkeypatch, chunk_rows: int = 3, raw: bool = False
) -> list:
    monkeypatch.setattr(RecordReader, "BLOCK", block)
    reader = RecordReader(io.BytesIO(text), max_record_bytes=limit)
    reader.header()
    return list(chunks(reader, chunk_rows, raw=raw))


@RAW
@pytest.mark.parametrize("block", [5, 64, 1 << 20])
def test_a_record_over_the_limit_is_flagged_kept_whole_and_reading_goes_on(monkeypatch, block, raw):
    long_line = "x" * 300
    text = f"a,b\n1,2\n{long_line}\n3,4\n".encode()
    got = _records(text, 100, block, monkeypatch, raw=raw)
    lines = [_text(line) for c in got for line in c.lines]
    assert lines == ["1,2", long_line, "3,4"]
    flagged = [_text(c.lines[i]) for c in got for i in c.oversized]
    assert flagged == [long_line]
    assert got[-1].end_offset == len(text)


@RAW
@pytest.mark.parametrize("block", [7, 64, 1 << 20])
def test_an_unclosed_quote_takes_at_most_the_limit_then_reading_restarts_at_the_next_line(
    monkeypatch, block, raw
):
    rows = [f"{i},{i}" for i in range(100)]
    text = ("a,b\n" + '"open,1\n' + "\n".join(rows) + "\n").encode()
    got = _records(text, 50, block, monkeypatch, raw=raw)
    lines = [_text(line) for c in got for line in c.lines]
    # The open record takes whole lines until it is over 50 bytes: '"open,1' and then rows
    # 0..n, each with its newline; the next line is read as a record of its own again.
    size, n = len('"open,1'), 0
    while size <= 50:
        size += 1 + len(rows[n])
        n += 1
    assert lines[0] == "\n".join(['"open,1', *rows[:n]])
    assert lines[1:] == rows[n:]
    assert [_text(c.lines[i]) for c in got for i in c.oversized] == [lines[0]]
    assert got[-1].end_offset == len(text)


@RAW
def test_a_quoted_record_over_the_limit_that_closes_is_oversized_too(monkeypatch, raw):
    # 44 bytes while open, then the closing line takes it to 66: over 50, closed or not.
    text = ('a,b\n1,"y' + "\ny" * 20 + '\n,"' + "z" * 19 + "\n2,3\n").encode()
    got = _records(text, 50, 16, monkeypatch, raw=raw)
    lines = [_text(line) for c in got for line in c.lines]
    assert len(lines) == 2 and lines[1] == "2,3"
    assert [i for c in got for i in c.oversized] == [0]


@RAW
def test_an_unclosed_quote_at_the_end_of_the_input_is_one_record(monkeypatch, raw):
    text = b'a,b\n1,2\n3,"open\nmore'
    got = _records(text, 1000, 4, monkeypatch, raw=raw)
    assert [_text(line) for c in got for line in c.lines] == ["1,2", '3,"open\nmore']
    assert got[-1].end_offset == len(text)


@RAW
def test_resume_offsets_stay_exact_around_oversized_records(monkeypatch, raw):
    monkeypatch.setattr(RecordReader, "BLOCK", 16)
    text = "id,x\n" + "".join(
        f'{i},"open\n' if i == 7 else ("z" * 90 + "\n" if i % 11 == 0 else f"{i},{i}\n") for i in range(80)
    )

    def reader() -> RecordReader:
        r = RecordReader(io.BytesIO(text.encode()), max_record_bytes=60)
        r.header()
        return r

    whole = list(chunks(reader(), 4, raw=raw))
    assert any(c.oversized for c in whole)
    for k in range(len(whole)):
        resumed = reader()
        resumed.seek(whole[k].end_offset, "in.csv")
        rest = list(chunks(resumed, 4, whole[k].first_row + len(whole[k].lines), k + 1, raw=raw))
        assert [(c.lines, c.oversized, c.end_offset) for c in rest] == [
            (c.lines, c.oversized, c.end_offset) for c in whole[k + 1 :]
        ]


def test_a_long_line_and_an_open_quote_are_scanned_once_not_once_per_block(monkeypatch):
    """Linear time: each byte goes through the quote scanner at most once, whatever the
    block size (the old reader re-joined and re-scanned a growing tail every block)."""
    from tabserve import csvio

    scanned = []
    real = csvio.ends_in_quotes
    monkeypatch.setattr(
        csvio, "ends_in_quotes", lambda line, q=False: scanned.append(len(line)) or real(line, q)
    )
    text = b'a,b\n"' + b"x" * 200_000 + b"\n" + b'1,"open\n' + b"2,2\n" * 50_000
    got = _records(text, 100_000, 4096, monkeypatch, chunk_rows=5000)
    assert sum(scanned) <= len(text)
    assert sum(len(c.lines) for c in got) < 50_000  # the open quote took ~100 KB of rows
    assert got[-1].end_offset == len(text)


def test_chunks_end_early_once_they_hold_max_bytes(monkeypatch):
    text = ("a\n" + "".join(f"{i:09d}\n" for i in range(100))).encode()
    got = _records(text, 1000, 64, monkeypatch, chunk_rows=50)
    monkeypatch.setattr(RecordReader, "BLOCK", 64)
    reader = RecordReader(io.BytesIO(text))
    reader.header()
    small = list(chunks(reader, 50, max_bytes=95))  # 10 bytes per record: 10 records reach 95+
    assert [len(c.lines) for c in got] == [50, 50]
    assert [len(c.lines) for c in small] == [10] * 10
    assert small[-1].end_offset == len(text)


@RAW
@pytest.mark.parametrize("seed", range(3))
def test_records_match_the_csv_module_for_random_quoting(monkeypatch, seed, raw):
    import random

    rnd = random.Random(seed)
    alphabet = ["a", "1", ",", '"', '""', ',"', "\n", "é"]
    for _ in range(150):
        body = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 40)))
        text = "h1,h2\n" + body + "\n"
        got = _records(text.encode(), 10_000, rnd.choice([1, 3, 8, 64]), monkeypatch, chunk_rows=2, raw=raw)
        parsed = [next(csv.reader(io.StringIO(_text(line)))) for c in got for line in c.lines]
        expected = [r for r in csv.reader(io.StringIO(text)) if r][1:]
        assert parsed == expected, text


def test_a_header_over_the_limit_is_refused():
    reader = RecordReader(io.BytesIO(b"x" * 500 + b"\n1\n"), max_record_bytes=100)
    with pytest.raises(ConfigError, match=r"first line is longer than 100 bytes \(--max-record-bytes\)"):
        reader.header()


def test_a_second_lock_on_an_output_fails_at_once_naming_the_owner(tmp_path):
    out = str(tmp_path / "out.csv")
    first = OutputLock(out).acquire()
    try:
        with pytest.raises(
            OutputLocked, match=rf"out.csv is being written by another .* \(pid {os.getpid()}\)"
        ):
            OutputLock(out).acquire()
    finally:
        first.release()
    assert not Path(out + ".lock").exists()
    OutputLock(out).acquire().release()  # free again
