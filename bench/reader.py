"""The batch reader on hostile input: an unbalanced quote at line 2, then N MB of good rows,
and one long line without a newline. Prints seconds per case and the ratio to the 3 MB case
(linear reading: about 2x and 4x for 6 and 12 MB).

    .venv/bin/python bench/reader.py
"""

from __future__ import annotations

import io
import time

from tabserve.csvio import RecordReader, chunks

ROW = b"5.1,3.5,1.4,0.2\n"


def seconds(data: bytes) -> float:
    t0 = time.perf_counter()
    reader = RecordReader(io.BytesIO(data))
    reader.header()
    for _ in chunks(reader, 5000, raw=True):  # as the batch job reads (batch.readers.CsvReader)
        pass
    return time.perf_counter() - t0


def main() -> None:
    header = b"sepal_length_cm,sepal_width_cm,petal_length_cm,petal_width_cm\n"
    base = None
    for mb in (3, 6, 12):
        s = seconds(header + b'"5.1,3.5,1.4,0.2\n' + ROW * (mb * (1 << 20) // len(ROW)))
        base = base or s
        print(f"open quote + {mb:>2} MB: {s:.3f} s ({s / base:.1f}x the 3 MB case)")
    for mb in (50, 100):
        print(f"{mb} MB line, no newline: {seconds(header + b'7' * (mb << 20)):.3f} s")


if __name__ == "__main__":
    main()
