"""The scorer's streaming reader: records as Python's csv module reads them, whatever the
block boundaries, with exact byte offsets for --resume."""

from __future__ import annotations

import csv
import io

import pytest

from tabserve.csvio import RecordReader, chunks

TEXTS = [
    'a,b\n1,"x\ny",3\n4,5"6,7\n\n8,"q""r",9\n"unterminated\nmore\n',
    'a\n""\n"a""\n"\nz',
    "h1,h2\r\n1,2\r\n\r\n3,4",
    'a,b\n"1\n\n2",3\n4,5\n',
]


@pytest.mark.parametrize("block", [3, 7, 64, 1 << 20])
@pytest.mark.parametrize("text", TEXTS)
def test_records_match_the_csv_module_across_block_boundaries(monkeypatch, text, block):
    monkeypatch.setattr(RecordReader, "BLOCK", block)
    reader = RecordReader(io.BytesIO(text.encode()))
    header = reader.header()
    got = list(chunks(reader, 2))
    records = [line for c in got for line in c.lines]
    expected = list(csv.reader(io.StringIO(text)))
    parsed = [next(csv.reader(io.StringIO(r.replace("\r", "")))) for r in records]
    assert [next(csv.reader([header]))] + parsed == [r for r in expected if r]
    assert sum(c.blank_lines for c in got) == sum(1 for r in expected if not r)
    assert got[-1].end_offset == len(text.encode())


def test_resume_offsets_continue_exactly_where_a_chunk_ended(monkeypatch):
    monkeypatch.setattr(RecordReader, "BLOCK", 16)
    text = "id,x\n" + "".join(f'{i},"v\n{i}"\n' if i % 3 == 0 else f"{i},{i}\n" for i in range(50))
    whole = [line for c in chunks(_reader(text), 4) for line in c.lines]
    first = _reader(text)
    it = chunks(first, 4)
    done = [next(it) for _ in range(5)]
    resumed = _reader(text)
    resumed.seek(done[-1].end_offset, "in.csv")
    rest = [line for c in chunks(resumed, 4) for line in c.lines]
    assert [line for c in done for line in c.lines] + rest == whole


def _reader(text: str) -> RecordReader:
    r = RecordReader(io.BytesIO(text.encode()))
    r.header()
    return r
