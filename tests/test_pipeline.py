"""The batch pipeline (reader -> pipeline -> writer) with a fake engine: order kept whatever
order the engine answers in, every row exactly once, containment by splitting, the failures
that end a job, --max-errors, checkpoints and --resume.

The fake engine reads the CSV body it gets as an engine must (the header line, then n
records) and turns each row's id into a known probability, so every test can check that each
body held the right rows and that every output row carries its own row's answer."""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import random
import threading
import time
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from tabserve.batch import checkpoint as checkpoint_module
from tabserve.batch.checkpoint import Checkpoint
from tabserve.batch.engines.torchserve import AuthError
from tabserve.batch.pipeline import SPLIT_RETRIES, JobFailed
from tabserve.batch.results import Results
from tabserve.batch.writers import CsvWriter, ParquetWriter
from tabserve.errors import ChunkRefused, ServerError
from tabserve.scorer import ScoreConfig, score

HEADER = "id,x,note"
FIELDS = HEADER.split(",")
COLUMNS = ["label", "p_a", "p_b", "error"]


def prob(row_id: int) -> float:
    """The fake model's p_a for a row id (never 0.5, so the label is never a tie)."""
    return (row_id % 100 + 1) / 101


def record(i: int) -> str:
    """Data row i (its id is i): some notes need quoting, one holds a line break."""
    if i % 7 == 0:
        return f'{i},{i / 2},"note, ""{i}"""'
    if i % 50 == 0:
        return f'{i},{i / 2},"two\nlines"'
    return f"{i},{i / 2},n{i}"


def fields(i: int) -> list[str]:
    return next(csv.reader(io.StringIO(record(i), newline="")))


def write_input(path: Path, n: int, replace: dict[int, str] | None = None, blank_after: int = 0) -> None:
    """n data rows with ids 1..n (row i is data row i), and a blank line (not a data row)
    after data row `blank_after` if not 0; `replace` swaps in other records."""
    replace = replace or {}
    lines = [HEADER]
    for i in range(1, n + 1):
        lines.append(replace.get(i, record(i)))
        if i == blank_after:
            lines.append("")
    path.write_text("\n".join(lines) + "\n")


@dataclass
class Call:
    first_row: int
    n: int
    retries: int | None
    ids: list[str]


class FakeEngine:
    """A batch engine that reads its body as CSV and answers p_a = prob(id) per row; a row
    whose id is not a number, or with another number of fields, is that row's error; each id
    divisible by 10 counts as an unseen category of column `note`.

    `trouble(engine, call)` runs before the answer and may raise (a refusal, a failure, an
    interrupt). `pairs` (the job's chunk_rows, for a job of an even number of whole batches):
    batch 2k does not answer before batch 2k+1 has, so the answers come back out of order
    whatever the timing."""

    def __init__(self, trouble=None, up: bool = True, pairs: int = 0, seed: int = 0) -> None:
        self.trouble = trouble
        self.up = up
        self.pairs = pairs
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.calls: list[Call] = []
        self.finished: list[int] = []  # first_row of each answered call, in answer order
        self.done: dict[int, threading.Event] = {}
        self.mismatches: list[str] = []
        self.alive_calls = 0

    def probe(self, header: bytes) -> list[str]:
        assert header == HEADER.encode()
        return list(COLUMNS)

    def alive(self, header: bytes) -> bool:
        with self.lock:
            self.alive_calls += 1
        return self.up

    def _event(self, first_row: int) -> threading.Event:
        with self.lock:
            return self.done.setdefault(first_row, threading.Event())

    def score(self, body: bytes, n: int, first_row: int, retries: int | None = None) -> Results:
        rows = list(csv.reader(io.StringIO(body.decode("utf-8"), newline="")))
        call = Call(first_row, n, retries, [r[0] if r else "" for r in rows[1:]])
        with self.lock:
            self.calls.append(call)
            if rows[0] != FIELDS:
                self.mismatches.append(f"row {first_row}: body header {rows[0]}")
            if len(rows) - 1 != n:
                self.mismatches.append(f"row {first_row}: {len(rows) - 1} records for n={n}")
            for k, r in enumerate(rows[1:]):
                if r and r[0].isdigit() and int(r[0]) != first_row + k:
                    self.mismatches.append(f"row {first_row + k} holds id {r[0]}")
        if self.trouble is not None:
            self.trouble(self, call)
        if self.pairs:
            time.sleep(self.rng.random() * 0.003)
            even = (first_row - 1) // self.pairs % 2 == 0
            if even and not self._event(first_row + self.pairs).wait(60):
                with self.lock:
                    self.mismatches.append(f"row {first_row}: the next batch never came")
        values = np.full((n, 2), np.nan)
        labels = np.full(n, -1, dtype=np.int32)
        errors: dict[int, str] = {}
        for k, r in enumerate(rows[1:]):
            if len(r) != len(FIELDS):
                errors[k] = f"row {first_row + k}: expected {len(FIELDS)} fields, got {len(r)}"
            elif not r[0].isdigit():
                errors[k] = f"row {first_row + k}: id {r[0]!r} is not a number"
            else:
                p = prob(int(r[0]))
                values[k] = [p, 1 - p]
                labels[k] = 0 if p > 0.5 else 1
        # A note the model never saw in training, as a handler would report it: every tenth id.
        unseen = sum(1 for r in rows[1:] if r and r[0].isdigit() and int(r[0]) % 10 == 0)
        with self.lock:
            self.finished.append(first_row)
        self._event(first_row).set()
        return Results(values, labels, errors, {"note": unseen} if unseen else {})

    def close(self) -> None:
        pass

    def calls_with(self, row_id: int) -> list[Call]:
        return [c for c in self.calls if str(row_id) in c.ids]


def read_csv_rows(path: Path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_bytes().decode("utf-8"), newline="")))


def check_scored(rows: list[list[str]], n: int, errors: dict[int, str] | None = None) -> None:
    """Output rows (header first) hold data rows 1..n, each once and in order, each with its
    own answer; `errors` {data row: its error}."""
    errors = errors or {}
    assert rows[0] == FIELDS + COLUMNS
    assert len(rows) - 1 == n, "one output row per input data row"
    for i, row in enumerate(rows[1:], start=1):
        if i in errors:
            assert row[3:] == ["", "", "", errors[i]], (i, row)
            continue
        assert row[:3] == fields(i), (i, row)
        p = prob(i)
        assert row[3:] == ["a" if p > 0.5 else "b", row[4], row[5], ""], (i, row)
        assert (float(row[4]), float(row[5])) == (p, 1 - p), (i, row)


def part_rows(out: Path) -> int:
    """Data rows in a CSV OUTPUT.part."""
    return len(read_csv_rows(Path(f"{out}.part"))) - 1


def checkpoint_of(out: Path) -> dict:
    return json.loads(Path(f"{out}.part.json").read_text())


# --- order and completeness ------------------------------------------------------------------


def test_rows_are_written_in_input_order_when_the_engine_answers_out_of_order(tmp_path):
    inp, out = tmp_path / "in.csv", tmp_path / "out.csv"
    write_input(inp, 500)
    engine = FakeEngine(pairs=10)
    result = score(ScoreConfig(str(inp), str(out), chunk_rows=10, concurrency=4), engine=engine)
    assert (result.rows, result.errors, result.unseen) == (500, 0, {"note": 50})
    assert engine.finished != sorted(engine.finished), "the engine answered in input order"
    assert engine.mismatches == []
    check_scored(read_csv_rows(out), 500)
    assert sorted(c.first_row for c in engine.calls) == list(range(1, 501, 10)), "each batch sent once"
    assert not Path(f"{out}.part").exists() and not Path(f"{out}.part.json").exists()


@pytest.mark.parametrize("concurrency", [1, 3, 8])
def test_every_input_row_appears_exactly_once_whatever_the_timing(tmp_path, concurrency):
    inp, out = tmp_path / "in.csv", tmp_path / "out.csv"
    write_input(inp, 333, blank_after=100)
    rng = random.Random(concurrency)
    delays = [rng.random() * 0.004 for _ in range(100)]

    def jitter(engine: FakeEngine, call: Call) -> None:
        time.sleep(delays[(call.first_row // 7) % 100])

    engine = FakeEngine(jitter)
    result = score(ScoreConfig(str(inp), str(out), chunk_rows=7, concurrency=concurrency), engine=engine)
    assert (result.rows, result.errors, result.blank_lines) == (333, 0, 1)
    rows = read_csv_rows(out)
    assert [r[0] for r in rows[1:]] == [str(i) for i in range(1, 334)]
    check_scored(rows, 333)
    sent = sorted(int(i) for c in engine.calls for i in c.ids)
    assert sent == list(range(1, 334)), "each row sent once"
    assert engine.mismatches == []


def test_parquet_output_of_a_csv_input_holds_text_columns_and_typed_results(tmp_path):
    inp, out = tmp_path / "in.csv", tmp_path / "out.parquet"
    write_input(inp, 60, replace={9: "x9,1,bad"})
    engine = FakeEngine()
    result = score(ScoreConfig(str(inp), str(out), chunk_rows=8, concurrency=3), engine=engine)
    assert (result.rows, result.errors) == (60, 1)
    table = pq.read_table(out)
    assert table.schema == pa.schema(
        [(name, pa.string()) for name in FIELDS]
        + [("label", pa.string()), ("p_a", pa.float64()), ("p_b", pa.float64()), ("error", pa.string())]
    )
    rows = table.to_pylist()
    assert len(rows) == 60
    for i, row in enumerate(rows, start=1):
        if i == 9:
            assert row == {
                "id": "x9",
                "x": "1",
                "note": "bad",
                "label": None,
                "p_a": None,
                "p_b": None,
                "error": "row 9: id 'x9' is not a number",
            }
            continue
        p = prob(i)
        assert [row[c] for c in FIELDS] == fields(i)
        assert (row["label"], row["p_a"], row["p_b"], row["error"]) == (
            "a" if p > 0.5 else "b",
            p,
            1 - p,
            None,
        )


# --- containment: a refused or failing batch is split -----------------------------------------


def halvings(n: int, at: int) -> list[int]:
    """The sizes of the parts that hold position `at` as a batch of n is halved."""
    lo, hi, sizes = 0, n, [n]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if at < mid else (mid, hi)
        sizes.append(hi - lo)
    return sizes


@pytest.mark.parametrize(
    "exc, reason",
    [
        (ChunkRefused("the body holds a poison row"), "chunk refused: the body holds a poison row"),
        (ServerError("HTTP 500 after 9 tries"), "chunk refused: HTTP 500 after 9 tries"),
        (RuntimeError("the engine fell over"), "chunk refused: the engine fell over"),
        (ZeroDivisionError(), "chunk refused: ZeroDivisionError"),
    ],
    ids=["refused", "server_error", "runtime_error", "no_message"],
)
def test_a_batch_failing_on_one_row_is_split_until_only_that_row_has_the_error(tmp_path, exc, reason):
    inp, out = tmp_path / "in.csv", tmp_path / "out.csv"
    write_input(inp, 200)
    poison = 77

    def refuse(engine: FakeEngine, call: Call) -> None:
        if str(poison) in call.ids:
            raise exc

    engine = FakeEngine(refuse)
    result = score(ScoreConfig(str(inp), str(out), chunk_rows=50, concurrency=2), engine=engine)
    assert (result.rows, result.errors) == (200, 1)
    assert result.unseen == {"note": 20}, "the failed attempts count no unseen category"
    check_scored(read_csv_rows(out), 200, {poison: f"row {poison}: {reason}"})
    assert engine.mismatches == []
    tried = engine.calls_with(poison)
    # The whole batch once, then the half that holds the row, and so on down to the row alone.
    assert [c.n for c in tried] == halvings(50, poison - 51) == [50, 25, 12, 6, 3, 2, 1]
    assert tried[0].retries is None and {c.retries for c in tried[1:]} == {SPLIT_RETRIES}
    # Every other row was answered exactly once, by a call without the poison row.
    answered = sorted(int(i) for c in engine.calls if str(poison) not in c.ids for i in c.ids)
    assert answered == [i for i in range(1, 201) if i != poison]
    assert len(engine.calls) <= 4 + 2 * math.ceil(math.log2(50))
    if isinstance(exc, (ChunkRefused, ServerError)):
        assert engine.alive_calls == len(tried), "after each failure: does the engine still answer?"
    else:
        assert engine.alive_calls == 0


def test_several_poison_rows_in_one_batch_each_get_their_own_error(tmp_path):
    inp, out = tmp_path / "in.csv", tmp_path / "out.csv"
    write_input(inp, 64)
    poison = {5, 6, 40}

    def refuse(engine: FakeEngine, call: Call) -> None:
        if poison & {int(i) for i in call.ids}:
            raise ChunkRefused("413 request entity too large")

    engine = FakeEngine(refuse)
    result = score(ScoreConfig(str(inp), str(out), chunk_rows=64), engine=engine)
    assert result.errors == 3
    check_scored(
        read_csv_rows(out), 64, {i: f"row {i}: chunk refused: 413 request entity too large" for i in poison}
    )


def test_an_oversized_record_never_reaches_the_engine_and_gets_its_error(tmp_path):
    inp, out = tmp_path / "in.csv", tmp_path / "out.csv"
    long_note = "L" * 100
    write_input(inp, 40, replace={12: f"12,6.0,{long_note}", 13: f'13,6.5,"{long_note}, quoted"'})
    engine = FakeEngine()
    result = score(
        ScoreConfig(str(inp), str(out), chunk_rows=5, concurrency=2, max_record_bytes=60), engine=engine
    )
    assert (result.rows, result.errors) == (40, 2)
    assert engine.calls_with(12) == [] and engine.calls_with(13) == []
    rows = read_csv_rows(out)
    message = "record longer than 60 bytes (--max-record-bytes)"
    check_scored(rows, 40, {12: f"row 12: {message}", 13: f"row 13: {message}"})
    # Never parsed: its whole text is kept in the first column (README, "Poison input").
    assert rows[12][:3] == [f"12,6.0,{long_note}", "", ""]
    assert rows[13][:3] == [f'13,6.5,"{long_note}, quoted"', "", ""]
    assert engine.mismatches == []

    # The same in a Parquet output: the text in the first column, the others null.
    out = tmp_path / "out.parquet"
    score(ScoreConfig(str(inp), str(out), chunk_rows=5, max_record_bytes=60), engine=FakeEngine())
    table = pq.read_table(out).to_pylist()
    assert [r["id"] for r in table[:11]] == [str(i) for i in range(1, 12)]
    assert table[11] == {
        "id": f"12,6.0,{long_note}",
        "x": None,
        "note": None,
        "label": None,
        "p_a": None,
        "p_b": None,
        "error": f"row 12: {message}",
    }
    assert table[12]["id"] == f'13,6.5,"{long_note}, quoted"' and table[12]["note"] is None


def test_a_poison_row_beside_an_oversized_record_is_found_with_its_own_row_number(tmp_path):
    inp, out = tmp_path / "in.csv", tmp_path / "out.csv"
    write_input(inp, 48, replace={18: "18,9.0," + "L" * 80})
    poison = {17, 21, 30}

    def refuse(engine: FakeEngine, call: Call) -> None:
        if poison & {int(i) for i in call.ids}:
            raise ChunkRefused("no")

    engine = FakeEngine(refuse)
    result = score(ScoreConfig(str(inp), str(out), chunk_rows=16, max_record_bytes=50), engine=engine)
    assert result.errors == 4
    errors = {i: f"row {i}: chunk refused: no" for i in poison}
    errors[18] = "row 18: record longer than 50 bytes (--max-record-bytes)"
    check_scored(read_csv_rows(out), 48, errors)
    assert engine.mismatches == [] and engine.calls_with(18) == []


def test_a_wrong_width_record_keeps_its_text_in_the_first_column(tmp_path):
    inp, out = tmp_path / "in.csv", tmp_path / "out.csv"
    write_input(inp, 30, replace={4: "4,2.0", 20: "20,1,2,3,4"})
    engine = FakeEngine()
    result = score(ScoreConfig(str(inp), str(out), chunk_rows=6), engine=engine)
    assert result.errors == 2
    rows = read_csv_rows(out)
    check_scored(
        rows,
        30,
        {4: "row 4: expected 3 fields, got 2", 20: "row 20: expected 3 fields, got 5"},
    )
    assert rows[4][:3] == ["4,2.0", "", ""] and rows[20][:3] == ["20,1,2,3,4", "", ""]


# --- failures that end the job ------------------------------------------------------------


def test_a_dead_engine_ends_the_job_keeping_the_partial_output_and_its_checkpoint(tmp_path):
    inp, out, whole = tmp_path / "in.csv", tmp_path / "out.csv", tmp_path / "whole.csv"
    # Batches of 10 records: rows 1-10, ..., 41-50, then a blank line and rows 51-59, 60-69, ...
    write_input(inp, 300, blank_after=50)
    score(ScoreConfig(str(inp), str(whole), chunk_rows=10), engine=FakeEngine())

    def die(engine: FakeEngine, call: Call) -> None:
        if call.first_row > 115:
            raise ServerError("TorchServe at http://x failed 9 times; last error: ConnectionError")

    engine = FakeEngine(die, up=False)
    with pytest.raises(JobFailed) as failed:
        score(ScoreConfig(str(inp), str(out), chunk_rows=10, concurrency=3), engine=engine)
    message = str(failed.value)
    assert message.startswith("TorchServe at http://x failed 9 times; last error: ConnectionError\n")
    assert "rows are saved in" in message and "run the same command with --resume" in message
    assert not out.exists()
    cp = checkpoint_of(out)
    assert (cp["rows"], cp["blank_lines"]) == (119, 1), "every batch before the failure is kept"
    assert cp["rows"] == part_rows(out)
    assert f"{cp['rows']:,} rows are saved in {out}.part" in message
    assert Path(f"{out}.part").read_bytes() == whole.read_bytes()[: cp["writer"]["bytes"]]
    failed_calls = [c.first_row for c in engine.calls if c.first_row > 115]
    assert failed_calls and all(r % 10 == 0 for r in failed_calls), "a dead engine's batch is never split"
    assert len(set(failed_calls)) == len(failed_calls)
    assert engine.alive_calls >= 1

    resumed = score(ScoreConfig(str(inp), str(out), chunk_rows=10, resume=True), engine=FakeEngine())
    assert (resumed.resumed_rows, resumed.rows, resumed.blank_lines) == (119, 300, 1)
    assert out.read_bytes() == whole.read_bytes()
    assert not Path(f"{out}.part").exists() and not Path(f"{out}.part.json").exists()


def test_a_rejected_token_ends_the_job_without_splitting(tmp_path):
    inp, out = tmp_path / "in.csv", tmp_path / "out.csv"
    write_input(inp, 100)

    def reject(engine: FakeEngine, call: Call) -> None:
        if call.first_row > 40:
            raise AuthError("TorchServe at http://x rejected the token (401)")

    engine = FakeEngine(reject)
    with pytest.raises(JobFailed, match=r"rejected the token \(401\)"):
        score(ScoreConfig(str(inp), str(out), chunk_rows=20, concurrency=1), engine=engine)
    assert [c for c in engine.calls if c.n < 20] == [], "a rejected token is never split"
    assert engine.alive_calls == 0
    assert checkpoint_of(out)["rows"] == 40 == part_rows(out)


def test_max_errors_stops_the_job_after_the_batch_that_reaches_it(tmp_path):
    inp, out, whole = tmp_path / "in.csv", tmp_path / "out.csv", tmp_path / "whole.csv"
    bad = {i: f"x{i},0,bad" for i in range(15, 200, 10)}  # rows 15, 25, 35, ...
    write_input(inp, 200, replace=bad)
    score(ScoreConfig(str(inp), str(whole), chunk_rows=10), engine=FakeEngine())
    config = ScoreConfig(str(inp), str(out), chunk_rows=10, concurrency=4, max_errors=5)
    with pytest.raises(JobFailed) as failed:
        score(config, engine=FakeEngine())
    assert str(failed.value) == (
        f"stopped after 60 rows: 5 rows failed (--max-errors 5); the 60 rows so far are in {out}.part: "
        "--resume continues with the errors counted so far (give a larger --max-errors, or none, to go on)"
    )
    cp = checkpoint_of(out)
    assert (cp["rows"], cp["errors"]) == (60, 5)
    assert part_rows(out) == 60
    assert not out.exists()

    resumed = score(ScoreConfig(str(inp), str(out), chunk_rows=10, resume=True), engine=FakeEngine())
    assert (resumed.rows, resumed.errors, resumed.resumed_rows) == (200, len(bad), 60)
    assert out.read_bytes() == whole.read_bytes()


# --- interrupted and resumed --------------------------------------------------------------


def interrupt_after(rows: int, how: str):
    def trouble(engine: FakeEngine, call: Call) -> None:
        if call.first_row > rows:
            if how == "ctrl_c":
                raise KeyboardInterrupt
            raise ServerError("TorchServe stopped answering")

    return trouble


@pytest.mark.parametrize("how", ["ctrl_c", "server_gone"])
@pytest.mark.parametrize("concurrency", [1, 4])
def test_an_interrupted_csv_job_resumes_to_byte_identical_output(tmp_path, how, concurrency):
    inp, out, whole = tmp_path / "in.csv", tmp_path / "out.csv", tmp_path / "whole.csv"
    write_input(inp, 250, replace={33: "x33,1,bad", 200: "200,1"}, blank_after=150)
    config = ScoreConfig(str(inp), str(whole), chunk_rows=9, concurrency=concurrency)
    expected = score(config, engine=FakeEngine())
    assert (expected.rows, expected.errors) == (250, 2)

    engine = FakeEngine(interrupt_after(90, how), up=False)
    config = ScoreConfig(str(inp), str(out), chunk_rows=9, concurrency=concurrency)
    with pytest.raises(JobFailed) as failed:
        score(config, engine=engine)
    assert ("interrupted\n" if how == "ctrl_c" else "TorchServe stopped answering\n") in str(failed.value)
    assert "--resume" in str(failed.value)
    cp = checkpoint_of(out)
    assert cp["rows"] == 90 == part_rows(out)
    assert cp["errors"] == 1

    resumed = score(
        ScoreConfig(str(inp), str(out), chunk_rows=9, concurrency=concurrency, resume=True),
        engine=FakeEngine(),
    )
    assert (resumed.rows, resumed.errors, resumed.blank_lines) == (250, 2, 1)
    assert resumed.resumed_rows == 90
    assert resumed.unseen == expected.unseen == {"note": 25}
    assert out.read_bytes() == whole.read_bytes()
    assert not Path(f"{out}.part").exists() and not Path(f"{out}.part.json").exists()


def test_a_job_interrupted_twice_still_resumes_to_the_same_bytes(tmp_path):
    inp, out, whole = tmp_path / "in.csv.gz", tmp_path / "out.csv.gz", tmp_path / "whole.csv.gz"
    plain = tmp_path / "plain.csv"
    write_input(plain, 180)
    inp.write_bytes(gzip.compress(plain.read_bytes()))
    score(ScoreConfig(str(inp), str(whole), chunk_rows=11), engine=FakeEngine())
    for stop in (40, 100):
        with pytest.raises(JobFailed):
            score(
                ScoreConfig(str(inp), str(out), chunk_rows=11, resume=stop == 100),
                engine=FakeEngine(interrupt_after(stop, "ctrl_c")),
            )
    score(ScoreConfig(str(inp), str(out), chunk_rows=11, resume=True), engine=FakeEngine())
    assert out.read_bytes() == whole.read_bytes()
    text = gzip.decompress(out.read_bytes()).decode("utf-8")
    check_scored(list(csv.reader(io.StringIO(text, newline=""))), 180)


@pytest.mark.parametrize("how", ["ctrl_c", "server_gone"])
def test_an_interrupted_parquet_job_resumes_to_the_same_rows_and_values(tmp_path, how):
    inp, out, whole = tmp_path / "in.csv", tmp_path / "out.parquet", tmp_path / "whole.parquet"
    write_input(inp, 250, replace={33: "x33,1,bad"})
    score(ScoreConfig(str(inp), str(whole), chunk_rows=9, concurrency=3), engine=FakeEngine())

    with pytest.raises(JobFailed):
        score(
            ScoreConfig(str(inp), str(out), chunk_rows=9, concurrency=3),
            engine=FakeEngine(interrupt_after(90, how), up=False),
        )
    cp = checkpoint_of(out)
    assert cp["rows"] == 90
    segments = sorted(Path(f"{out}.part").glob("*.parquet"))
    assert len(segments) == cp["writer"]["segments"] >= 1
    assert sum(pq.read_metadata(s).num_rows for s in segments) == 90

    resumed = score(ScoreConfig(str(inp), str(out), chunk_rows=9, resume=True), engine=FakeEngine())
    assert resumed.rows == 250 and resumed.resumed_rows == 90
    a, b = pq.read_table(out), pq.read_table(whole)
    assert a.schema == b.schema
    assert a.equals(b)
    assert not Path(f"{out}.part").exists() and not Path(f"{out}.part.json").exists()


def test_an_interrupted_job_on_a_parquet_input_resumes_to_the_same_output(tmp_path):
    src = tmp_path / "src.csv"
    write_input(src, 150, blank_after=0)
    table = pacsv.read_csv(src, parse_options=pacsv.ParseOptions(newlines_in_values=True))
    assert table.schema.field("id").type == pa.int64()
    inp = tmp_path / "in.parquet"
    pq.write_table(table, inp, row_group_size=40)
    whole, out = tmp_path / "whole.csv", tmp_path / "out.csv"
    header_engine = FakeEngine()
    score(ScoreConfig(str(inp), str(whole), chunk_rows=16), engine=header_engine)
    assert header_engine.mismatches == []
    with pytest.raises(JobFailed):
        score(
            ScoreConfig(str(inp), str(out), chunk_rows=16),
            engine=FakeEngine(interrupt_after(64, "ctrl_c")),
        )
    assert checkpoint_of(out)["reader"]["row"] == 65
    score(ScoreConfig(str(inp), str(out), chunk_rows=16, resume=True), engine=FakeEngine())
    assert out.read_bytes() == whole.read_bytes()


# --- checkpoints ------------------------------------------------------------------------------


class Clock:
    """checkpoint.time for a test: each monotonic() call is `step` seconds after the last."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def monotonic(self) -> float:
        self.now += self.step
        return self.now


@pytest.mark.parametrize(
    "fmt, interval", [("csv", CsvWriter.checkpoint_seconds), ("parquet", ParquetWriter.checkpoint_seconds)]
)
def test_a_checkpoint_is_written_each_time_the_writers_interval_has_passed(
    tmp_path, monkeypatch, fmt, interval
):
    inp, out = tmp_path / "in.csv", tmp_path / f"out.{fmt}"
    write_input(inp, 100)
    # The Checkpointer reads its clock once when it starts and once per written batch: with
    # a quarter of the interval per batch, every fourth batch is past the interval.
    monkeypatch.setattr(checkpoint_module, "time", Clock(interval / 4))
    saved: list[tuple[int, dict]] = []
    real_save = Checkpoint.save

    def save(self: Checkpoint, output: str) -> None:
        real_save(self, output)
        on_disk = json.loads(Checkpoint.path_for(output).read_text())
        saved.append((on_disk["rows"], on_disk["writer"]))
        if fmt == "parquet":  # the checkpoint counts only closed segments, each with its footer
            closed = sorted(Path(f"{output}.part").glob("*.parquet"))
            assert len(closed) == on_disk["writer"]["segments"]
            assert sum(pq.read_metadata(s).num_rows for s in closed) == on_disk["rows"]
        else:
            assert Path(f"{output}.part").stat().st_size == on_disk["writer"]["bytes"]

    monkeypatch.setattr(Checkpoint, "save", save)
    result = score(ScoreConfig(str(inp), str(out), chunk_rows=10, concurrency=3), engine=FakeEngine())
    assert result.rows == 100
    assert [rows for rows, _ in saved] == [40, 80]
    if fmt == "parquet":
        assert [w["segments"] for _, w in saved] == [1, 2]
    assert not Checkpoint.path_for(str(out)).exists(), "the checkpoint goes once the output is whole"


def test_no_checkpoint_is_written_before_the_interval_and_one_when_the_job_stops(tmp_path, monkeypatch):
    inp, out = tmp_path / "in.csv", tmp_path / "out.csv"
    write_input(inp, 100)
    monkeypatch.setattr(checkpoint_module, "time", types.SimpleNamespace(monotonic=lambda: 0.0))
    seen: list[bool] = []

    def look(engine: FakeEngine, call: Call) -> None:
        if call.first_row <= 50:
            seen.append(Checkpoint.path_for(str(out)).exists())
        else:
            raise KeyboardInterrupt

    with pytest.raises(JobFailed, match="interrupted"):
        score(ScoreConfig(str(inp), str(out), chunk_rows=10, concurrency=1), engine=FakeEngine(look))
    assert not any(seen), "no checkpoint before the interval"
    assert checkpoint_of(out)["rows"] == 50 == part_rows(out)


def test_resume_refuses_an_input_that_changed_since_the_checkpoint(tmp_path):
    inp, out = tmp_path / "in.csv", tmp_path / "out.csv"
    write_input(inp, 100)
    with pytest.raises(JobFailed):
        score(
            ScoreConfig(str(inp), str(out), chunk_rows=10), engine=FakeEngine(interrupt_after(30, "ctrl_c"))
        )
    write_input(inp, 101)
    with pytest.raises(Exception, match="changed since the checkpoint"):
        score(ScoreConfig(str(inp), str(out), chunk_rows=10, resume=True), engine=FakeEngine())
    assert checkpoint_of(out)["rows"] == 30 == part_rows(out), "the partial output is left as it was"


def test_a_job_stopped_before_its_first_batch_leaves_no_partial_output(tmp_path):
    inp, out = tmp_path / "in.csv", tmp_path / "out.csv"
    write_input(inp, 30)

    def stop(engine: FakeEngine, call: Call) -> None:
        raise KeyboardInterrupt

    with pytest.raises(JobFailed, match="interrupted"):
        score(ScoreConfig(str(inp), str(out), chunk_rows=10), engine=FakeEngine(stop))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]
