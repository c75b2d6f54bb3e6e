"""The batch job's containment boundary: poison input becomes those rows' errors and the job
goes on, the same bytes from the TorchServe and local engines; one writer per output; every
failure one `Error:` line."""

from __future__ import annotations

import csv
import errno
import gzip
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tabserve.archive import ArchiveConfig, archive
from tabserve.batch.engines.local import LocalPoolEngine, remove_stale_local_dirs
from tabserve.batch.engines.torchserve import AuthError, csv_columns
from tabserve.batch.results import Results
from tabserve.cli import main
from tabserve.csvio import OutputFile, OutputLock
from tabserve.errors import ChunkRefused, ConfigError, ServerError
from tabserve.handler.rows import Limits
from tabserve.scorer import SPLIT_RETRIES, JobFailed, ScoreConfig, score

from .conftest import start_server

pytestmark = pytest.mark.integration

HEADER = "id,petal_width_cm,sepal_length_cm,sepal_width_cm,petal_length_cm,comment"
OUT_COLUMNS = ["label", "p_setosa", "p_versicolor", "p_virginica", "error"]
MAX_ROWS = 64  # the limited archive's handler refuses larger requests (413)
csv.field_size_limit(1 << 26)  # the tests read back records of several MB


@dataclass
class Record:
    """One input record and what its output row must say."""

    raw: bytes
    error: str | None = None  # None: scored; else a part of its error message
    malformed: bool = False  # kept whole in the first column

    @property
    def text(self) -> str:
        return self.raw.decode("utf-8", errors="replace")


def good(i: int) -> Record:
    return Record(f"{i},0.2,5.1,3.5,1.4,c{i}".encode())


def around(poison: list[Record], n: int = 40, at: int = 10) -> list[Record]:
    return [good(i) for i in range(at)] + poison + [good(i) for i in range(at, n)]


def open_quote(limit: int) -> list[Record]:
    """A quote left open at line 2: the record takes whole lines until it is over `limit`
    bytes, then reading starts again at the next line."""
    rows = [good(i) for i in range(3000)]
    first = b'q,"0.2,5.1,3.5,1.4,open'
    size, n = len(first), 0
    while size <= limit:
        size += 1 + len(rows[n].raw)
        n += 1
    swallowed = Record(b"\n".join([first, *(r.raw for r in rows[:n])]), "record longer than", True)
    return [swallowed, *rows[n:]]


POISON = {
    "200KB_line_without_commas": (around([Record(b"L" * 200_000, "", True)]), []),
    "2MB_line_over_a_small_limit": (
        around([Record(b"m," * 1_000_000, "record longer than 65536 bytes (--max-record-bytes)", True)]),
        ["--max-record-bytes", "65536"],
    ),
    "1.5MB_line_over_the_default_limit": (
        around([Record(b"d;" * 750_000, "record longer than 1048576 bytes (--max-record-bytes)", True)]),
        [],
    ),
    "unbalanced_quote_early": (open_quote(16384), ["--max-record-bytes", "16384"]),
    "non_ascii_and_invalid_utf8": (
        around(
            [
                Record("c1,0.2,5.1,3.5,1.4,café".encode()),
                Record("c2,0.2,café,3.5,1.4,x".encode(), "feature 'sepal_length_cm' is not a number: 'café'"),
                Record("café,1".encode(), "expected 6 fields, got 2", True),
                Record(b"c3,0.2,\xff,3.5,1.4,x", "feature 'sepal_length_cm' is not a number: '\ufffd'"),
                Record(b"c4,0.2,5.1,3.5,1.4,\xfe\xff"),
            ]
        ),
        [],
    ),
    "float32_overflow": (around([Record(b"h1,0.2,1e39,3.5,1.4,x", "'sepal_length_cm'")]), []),
    "chunk_over_the_handlers_row_limit": (
        around(
            [Record(b"b1,0.2,abc,3.5,1.4,x", "feature 'sepal_length_cm' is not a number: 'abc'")], 300, 200
        ),
        ["--chunk-rows", str(3 * MAX_ROWS)],
    ),
}


@pytest.fixture(scope="module")
def limited_store(artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`iris`, whose handler refuses requests of more than MAX_ROWS rows, and a second model."""
    store = tmp_path_factory.mktemp("limited_store")
    archive(
        ArchiveConfig(artifacts=artifacts, model_store=store, workers=1, limits=Limits(max_rows=MAX_ROWS))
    )
    archive(ArchiveConfig(artifacts=artifacts, model_store=store, name="other", workers=1))
    return store


@pytest.fixture(scope="module")
def two_models(limited_store: Path, tmp_path_factory: pytest.TempPathFactory):
    ts = start_server(limited_store, tmp_path_factory.mktemp("two_models_run"))
    yield ts
    ts.stop()


def write_input(path: Path, records: list[Record]) -> None:
    path.write_bytes(HEADER.encode() + b"\n" + b"\n".join(r.raw for r in records) + b"\n")


def check_output(out: Path, records: list[Record]) -> None:
    """Every input record in order: scored rows with their fields, failed rows with their
    error, malformed ones whole in the first column."""
    rows = list(csv.reader(io.StringIO(out.read_bytes().decode("utf-8"), newline="")))
    assert rows[0] == HEADER.split(",") + OUT_COLUMNS
    assert len(rows) - 1 == len(records), "one output row per input record"
    for n, (row, rec) in enumerate(zip(rows[1:], records), start=1):
        assert len(row) == 11, f"row {n} has {len(row)} columns"
        if rec.error is None:
            assert row[:6] == rec.text.split(",") and row[-1] == "", f"row {n}: {row[-1]}"
            assert row[6] in ("setosa", "versicolor", "virginica")
            continue
        assert row[-1].startswith(f"row {n}: ") and rec.error in row[-1], (n, row[-1][:300])
        assert row[6:10] == [""] * 4
        if rec.malformed:
            assert row[0] == rec.text and row[1:6] == [""] * 5
        else:
            assert row[:6] == rec.text.split(",")


@pytest.mark.parametrize("kind", list(POISON))
def test_poison_rows_get_errors_the_job_goes_on_and_both_engines_write_the_same_bytes(
    kind, tmp_path, two_models, limited_store, capsys
):
    records, options = POISON[kind]
    inp = tmp_path / "in.csv"
    write_input(inp, records)
    options = ["--model", "iris", "--chunk-rows", "16", *options]
    remote, local = tmp_path / "remote.csv", tmp_path / "local.csv"
    url = ["--url", two_models.inference_url, "--token-file", str(two_models.key_file)]
    assert main(["score", str(inp), "-o", str(remote), *url, *options]) == 2, capsys.readouterr().err
    engine = ["--engine", "local", "--model-store", str(limited_store), "--concurrency", "1"]
    assert main(["score", str(inp), "-o", str(local), *engine, *options]) == 2, capsys.readouterr().err
    check_output(remote, records)
    assert local.read_bytes() == remote.read_bytes()


# --- splitting a refused or failing chunk ----------------------------------------------------


class RefusingEngine:
    """Answers label `a` (p_a 1.0) for every row, but raises `exc` for any chunk that holds
    the row whose id is `poison` (an engine whose server refuses, or fails on, one row)."""

    def __init__(self, poison: str, exc: Exception, up: bool = True) -> None:
        self.poison, self.exc, self.up = poison, exc, up
        self.calls: list[tuple[int, int, int | None]] = []

    def probe(self, header: bytes) -> list[str]:
        return ["label", "p_a", "error"]

    def alive(self, header: bytes) -> bool:
        return self.up

    def score(self, body: bytes, n: int, first_row: int, retries: int | None = None) -> Results:
        header, *lines = body.decode("utf-8").splitlines()
        assert header == "id,x" and len(lines) == n, "the body is the header line, then n records"
        self.calls.append((first_row, n, retries))
        if any(line.split(",", 1)[0] == self.poison for line in lines):
            raise self.exc
        return Results(np.ones((n, 1)), np.zeros(n, dtype=np.int32))

    def close(self) -> None:
        pass


def numbered_input(path: Path, n: int) -> None:
    path.write_text("id,x\n" + "".join(f"{i},{i}\n" for i in range(1, n + 1)))


@pytest.mark.parametrize(
    "exc", [ChunkRefused("request too large"), ServerError("TorchServe failed 9 times; last error: HTTP 503")]
)
def test_a_refused_or_failing_chunk_is_split_until_only_the_bad_row_has_the_error(tmp_path, exc):
    inp, out = tmp_path / "in.csv", tmp_path / "out.csv"
    numbered_input(inp, 5000)
    engine = RefusingEngine("1234", exc)
    result = score(ScoreConfig(str(inp), str(out)), engine=engine)
    assert (result.rows, result.errors) == (5000, 1)
    rows = list(csv.reader(out.open()))
    assert len(rows) == 5001
    assert rows[1234] == ["1234", "1234", "", "", f"row 1234: chunk refused: {exc}"]
    # p_a is the float 1.0, in pyarrow's shortest text ("1"): compared as the number it reads back as.
    assert all(
        r[:2] == [str(i), str(i)] and r[2] == "a" and float(r[3]) == 1.0 and r[4] == ""
        for i, r in enumerate(rows[1:], 1)
        if i != 1234
    )
    # One try of the whole chunk, then about two per halving (log2 5000 = 13), few retries each.
    assert len(engine.calls) <= 2 * 13 + 3
    assert {retries for _, _, retries in engine.calls[1:]} == {SPLIT_RETRIES}


def test_a_refused_chunk_gives_every_row_the_reason_in_the_output_columns(tmp_path):
    """(Was handler.response.merge_rows/refused_rows, the old scorer's; now Results.refused and
    the CSV writer.) The reason, quoted as CSV needs, in the error column; the input kept."""
    reason = 'request too large, "max" 64 MiB'
    refused = Results.refused(2, 41, f"chunk refused: {reason}", width=3, classifier=True)
    assert np.isnan(refused.values).all() and refused.values.shape == (2, 3)
    assert refused.labels.tolist() == [-1, -1]
    assert refused.errors == {0: f"row 41: chunk refused: {reason}", 1: f"row 42: chunk refused: {reason}"}

    class Refusing(RefusingEngine):
        def probe(self, header):
            return ["label", "p_a", "p_b", "p_c", "error"]

        def score(self, body, n, first_row, retries=None):
            self.calls.append((first_row, n, retries))
            raise ChunkRefused(reason)

    inp, out = tmp_path / "in.csv", tmp_path / "out.csv"
    inp.write_text("a,b,c,d,e\n" + "0,0,0,0,0\n" * 40 + "1,2,3,4,5\n6,7,8,9,10\n")
    result = score(ScoreConfig(str(inp), str(out)), engine=Refusing("", ChunkRefused(reason)))
    assert (result.rows, result.errors) == (42, 42)
    rows = list(csv.reader(io.StringIO(out.read_text(), newline="")))
    assert rows[0] == ["a", "b", "c", "d", "e", "label", "p_a", "p_b", "p_c", "error"]
    assert rows[41:] == [
        ["1", "2", "3", "4", "5", "", "", "", "", f"row 41: chunk refused: {reason}"],
        ["6", "7", "8", "9", "10", "", "", "", "", f"row 42: chunk refused: {reason}"],
    ]
    for i, r in enumerate(rows[1:41], start=1):
        assert r == ["0"] * 5 + [""] * 4 + [f"row {i}: chunk refused: {reason}"]


def test_a_failure_while_the_server_no_longer_answers_ends_the_job_with_the_resume_hint(tmp_path):
    inp, out = tmp_path / "in.csv", tmp_path / "out.csv"
    numbered_input(inp, 1000)
    engine = RefusingEngine("350", ServerError("TorchServe failed 9 times"), up=False)
    with pytest.raises(JobFailed) as failed:
        score(ScoreConfig(str(inp), str(out), chunk_rows=100, concurrency=1), engine=engine)
    message = str(failed.value)
    assert message.startswith("TorchServe failed 9 times\n")
    assert "rows are saved in" in message and "--resume" in message
    assert len([c for c in engine.calls if c[1] < 100]) == 0, "a dead server's chunk is never split"


def test_a_rejected_token_is_never_split(tmp_path):
    inp, out = tmp_path / "in.csv", tmp_path / "out.csv"
    numbered_input(inp, 100)
    engine = RefusingEngine("50", AuthError("rejected the token"))
    with pytest.raises(JobFailed, match="rejected the token"):
        score(ScoreConfig(str(inp), str(out), concurrency=1), engine=engine)
    assert engine.calls == [(1, 100, None)]


# --- the header ------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["torchserve", "local"])
def test_a_header_without_the_models_features_is_refused_before_any_row(
    engine, tmp_path, server, model_store, capsys
):
    inp, out = tmp_path / "in.csv", tmp_path / "out.csv"
    inp.write_text("a,b,c,d\n5.1,3.5,1.4,0.2\n")
    where = (
        ["--url", server.inference_url, "--token-file", str(server.key_file)]
        if engine == "torchserve"
        else ["--engine", "local", "--model-store", str(model_store), "--concurrency", "1"]
    )
    assert main(["score", str(inp), "-o", str(out), *where]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and err.count("\n") == 1
    assert "lacks feature column(s) 'sepal_length_cm', 'sepal_width_cm'" in err
    assert list(tmp_path.iterdir()) == [inp], "no output, no part file, no lock file"


def test_an_old_handler_that_reads_the_header_as_a_row_is_caught_at_the_probe():
    answer = "label,p_a,p_b,error\n,,,row 1: expected 4 fields, got 3\n"
    with pytest.raises(ConfigError, match="names none of the model's features"):
        csv_columns(answer, "a,b,c", "the model")
    assert csv_columns("label,p_a,p_b,error\n", "x", "the model") == ["label", "p_a", "p_b", "error"]


# --- --url without --model, and --url .../predictions/NAME ---------------------------------


def test_url_without_model_scores_with_the_servers_only_model(tmp_path, server):
    inp = tmp_path / "in.csv"
    write_input(inp, around([], 30))
    token = ["--token-file", str(server.key_file)]
    named, bare, path = tmp_path / "named.csv", tmp_path / "bare.csv", tmp_path / "path.csv"
    assert (
        main(["score", str(inp), "-o", str(named), "--url", server.inference_url, "--model", "iris", *token])
        == 0
    )
    assert main(["score", str(inp), "-o", str(bare), "--url", server.inference_url, *token]) == 0
    url = f"{server.inference_url}/predictions/iris/1.0"
    assert main(["score", str(inp), "-o", str(path), "--url", url, *token]) == 0
    assert bare.read_bytes() == named.read_bytes() == path.read_bytes()


def test_url_naming_a_model_conflicts_with_another_model_option(tmp_path, capsys):
    argv = ["score", "in.csv", "-o", str(tmp_path / "o.csv"), "--url", "http://h:1/predictions/iris"]
    assert main([*argv, "--model", "wine"]) == 1
    assert (
        capsys.readouterr().err
        == "Error: --url names model 'iris' but --model says 'wine': give one of them\n"
    )


def test_url_without_model_against_several_models_says_choose_one(tmp_path, two_models, capsys):
    inp = tmp_path / "in.csv"
    write_input(inp, around([], 3))
    url = two_models.inference_url
    argv = [
        "score",
        str(inp),
        "-o",
        str(tmp_path / "o.csv"),
        "--url",
        url,
        "--token-file",
        str(two_models.key_file),
    ]
    assert main(argv) == 1
    assert (
        capsys.readouterr().err
        == f"Error: the server at {url} serves several models: choose one with --model\n"
    )


# --- one writer per output; never the input ------------------------------------------------


def test_a_second_job_on_the_same_output_fails_at_once_and_touches_nothing(tmp_path, capsys):
    inp, out = tmp_path / "in.csv", tmp_path / "out.csv"
    numbered_input(inp, 10)
    part, checkpoint = Path(f"{out}.part"), Path(f"{out}.part.json")
    part.write_bytes(b"the first job's rows")
    checkpoint.write_text("{}")
    first = OutputLock(str(out)).acquire()  # the first job
    try:
        t0 = time.monotonic()
        argv = ["score", str(inp), "-o", str(out), "--engine", "local", "--model-store", "nowhere"]
        assert main([*argv, "--resume"]) == 1
        assert time.monotonic() - t0 < 2
    finally:
        first.release()
    assert capsys.readouterr().err == (
        f"Error: {out} is being written by another tabserve score job (pid {os.getpid()}); "
        "wait for it to end, or choose another -o\n"
    )
    assert part.read_bytes() == b"the first job's rows" and checkpoint.read_text() == "{}"
    assert not out.exists()


def test_the_lock_is_held_for_the_whole_job_and_released_after_it(tmp_path):
    inp, out = tmp_path / "in.csv", tmp_path / "out.csv"
    numbered_input(inp, 1)
    seen = []

    class Probing(RefusingEngine):
        def score(self, body, n, first_row, retries=None):
            try:
                OutputLock(str(out)).acquire().release()
                seen.append("free")
            except Exception as exc:
                seen.append(type(exc).__name__)
            return super().score(body, n, first_row, retries)

    score(ScoreConfig(str(inp), str(out)), engine=Probing("none", ChunkRefused("x")))
    assert seen == ["OutputLocked"]
    OutputLock(str(out)).acquire().release()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "in.csv",
        "out.csv",
        "out.csv.report.html",
        "out.csv.report.json",
    ]


@pytest.mark.parametrize("how", ["same path", "symlink", "hard link"])
def test_an_output_that_is_the_input_is_refused_before_anything_is_written(tmp_path, how, capsys):
    inp = tmp_path / "in.csv"
    numbered_input(inp, 5)
    before = inp.read_bytes()
    out = inp if how == "same path" else tmp_path / "out.csv"
    if how == "symlink":
        out.symlink_to(inp)
    elif how == "hard link":
        os.link(inp, out)
    assert main(["score", str(inp), "-o", str(out), "--engine", "local", "--model-store", "nowhere"]) == 1
    assert capsys.readouterr().err == (
        f"Error: output {out} is the input {inp}: write the scores to another file\n"
    )
    assert inp.read_bytes() == before
    assert not list(tmp_path.glob("*.part*")) and not list(tmp_path.glob("*.lock"))


def test_an_input_that_is_one_of_the_files_written_beside_the_output_is_refused(tmp_path, capsys):
    out = tmp_path / "out.csv"
    inp = tmp_path / "out.csv.part"
    numbered_input(inp, 5)
    before = inp.read_bytes()
    assert main(["score", str(inp), "-o", str(out), "--engine", "local", "--model-store", "nowhere"]) == 1
    assert capsys.readouterr().err == (
        f"Error: {inp}, which tabserve score writes beside the output, is the input {inp}: "
        "choose another -o\n"
    )
    assert inp.read_bytes() == before


# --- every failure one Error: line ----------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("missing input", "Error: input {tmp}/nope.csv not found\n"),
        ("input is a folder", "Error: input {tmp}/folder is a folder: expected a CSV or Parquet file\n"),
        (
            "output is a folder",
            "Error: output {tmp}/folder is a folder: expected a file name such as {tmp}/folder/scored.csv\n",
        ),
        (
            "output folder missing",
            "Error: the output's folder {tmp}/no/such does not exist: create it first\n",
        ),
        ("chunk rows 0", "Error: --chunk-rows must be at least 1, got 0\n"),
        (
            "chunk rows not a number",
            "Error: argument --chunk-rows: invalid int value: 'x' (see tabserve score --help)\n",
        ),
        ("max record bytes 0", "Error: --max-record-bytes must be at least 1, got 0\n"),
        ("negative retries", "Error: --retries must be 0 or more, got -1\n"),
        ("unknown option", "Error: unrecognized arguments: --bogus (see tabserve score --help)\n"),
        (
            "no output option",
            "Error: the following arguments are required: -o/--output (see tabserve score --help)\n",
        ),
    ],
)
def test_bad_paths_and_options_print_one_error_line_and_exit_1(tmp_path, case, error, capsys):
    inp = tmp_path / "in.csv"
    numbered_input(inp, 3)
    (tmp_path / "folder").mkdir()
    args = {
        "missing input": [str(tmp_path / "nope.csv"), "-o", str(tmp_path / "o.csv")],
        "input is a folder": [str(tmp_path / "folder"), "-o", str(tmp_path / "o.csv")],
        "output is a folder": [str(inp), "-o", str(tmp_path / "folder")],
        "output folder missing": [str(inp), "-o", str(tmp_path / "no" / "such" / "o.csv")],
        "chunk rows 0": [str(inp), "-o", str(tmp_path / "o.csv"), "--chunk-rows", "0"],
        "chunk rows not a number": [str(inp), "-o", str(tmp_path / "o.csv"), "--chunk-rows", "x"],
        "max record bytes 0": [str(inp), "-o", str(tmp_path / "o.csv"), "--max-record-bytes", "0"],
        "negative retries": [str(inp), "-o", str(tmp_path / "o.csv"), "--retries", "-1"],
        "unknown option": [str(inp), "-o", str(tmp_path / "o.csv"), "--bogus"],
        "no output option": [str(inp)],
    }[case]
    assert main(["score", *args, "--engine", "local", "--model-store", "nowhere"]) == 1
    assert capsys.readouterr().err == error.format(tmp=tmp_path)
    assert not (tmp_path / "o.csv").exists()


def test_a_truncated_gz_input_is_one_error_line(tmp_path, capsys):
    inp = tmp_path / "in.csv.gz"
    data = gzip.compress(b"id,x\n" + b"1,2\n" * 1000)
    inp.write_bytes(data[: len(data) // 2])
    assert main(["score", str(inp), "-o", str(tmp_path / "o.csv"), "--engine", "local"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: cannot read the input after byte 0: ") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == [inp]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads and writes whatever the permissions say")
def test_permission_denied_is_one_error_line(tmp_path, capsys):
    inp, locked = tmp_path / "in.csv", tmp_path / "locked"
    numbered_input(inp, 3)
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["score", str(inp), "-o", str(locked / "o.csv"), "--engine", "local"]) == 1
    finally:
        locked.chmod(0o700)
    assert capsys.readouterr().err == f"Error: cannot write {locked}/o.csv.lock: Permission denied\n"
    inp.chmod(0)
    assert main(["score", str(inp), "-o", str(tmp_path / "o.csv"), "--engine", "local"]) == 1
    assert capsys.readouterr().err == f"Error: cannot read {inp}: Permission denied\n"


def test_a_full_disk_stops_with_one_error_line_and_resume_writes_the_same_bytes(
    tmp_path, server, capsys, monkeypatch
):
    inp, whole, out = tmp_path / "in.csv", tmp_path / "whole.csv", tmp_path / "out.csv"
    write_input(inp, open_quote(2000) + [Record(b"z" * 3000, "", True)] + around([], 100))
    common = ["--url", server.inference_url, "--token-file", str(server.key_file)]
    common += ["--chunk-rows", "50", "--max-record-bytes", "2000", "--concurrency", "1"]
    assert main(["score", str(inp), "-o", str(whole), *common]) == 2
    capsys.readouterr()
    real, blocks = OutputFile.write_block, []

    class FullDisk:
        """The part file once the disk is full: writes fail with ENOSPC."""

        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

    def full_disk(self, text):
        blocks.append(text)
        if len(blocks) == 5:  # the header and 3 chunks are written, then the disk is full
            self._f = FullDisk(self._f)
        return real(self, text)

    monkeypatch.setattr(OutputFile, "write_block", full_disk)
    assert main(["score", str(inp), "-o", str(out), *common]) == 1
    assert capsys.readouterr().err == (
        f"Error: cannot write {out}.part: No space left on device\n"
        f"150 rows are saved in {out}.part; run the same command with --resume to continue from there\n"
    )
    monkeypatch.setattr(OutputFile, "write_block", real)
    assert main(["score", str(inp), "-o", str(out), *common, "--resume"]) == 2
    assert out.read_bytes() == whole.read_bytes()


def test_a_full_tmpfs_is_one_error_line(tmp_path, server, capsys):
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        inp = tmp_path / "in.csv"
        write_input(inp, around([], 2000))
        argv = ["score", str(inp), "-o", str(small / "out.csv"), "--url", server.inference_url]
        assert main([*argv, "--token-file", str(server.key_file), "--chunk-rows", "100"]) == 1
        err = capsys.readouterr().err.splitlines()
        assert err[0] == f"Error: cannot write {small}/out.csv.part: No space left on device"
        assert len(err) == 1 or "run the same command with --resume" in err[1]
    finally:
        subprocess.run(["umount", str(small)], check=True)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupt_once_the_output_is_complete_does_not_change_the_exit_code(
    tmp_path, server, monkeypatch, sig
):
    inp, out = tmp_path / "in.csv", tmp_path / "out.csv"
    write_input(inp, around([], 20))
    real = OutputFile.commit

    def interrupted_commit(self):
        os.kill(os.getpid(), sig)  # arrives during the final rename
        time.sleep(0.05)
        real(self)

    monkeypatch.setattr(OutputFile, "commit", interrupted_commit)
    argv = [
        "score",
        str(inp),
        "-o",
        str(out),
        "--url",
        server.inference_url,
        "--token-file",
        str(server.key_file),
    ]
    assert main(argv) == 0
    assert out.exists()


# --- --engine local's temporary folders ------------------------------------------------------


def local_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("tabserve-local-*"))


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """A temporary folder of this test's own (TMPDIR, for this process and its workers), so
    that another tabserve job on the machine cannot add folders to what local_dirs() sees."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", None)
    assert Path(tempfile.gettempdir()) == folder
    return folder


def test_the_local_engine_removes_its_temporary_folders(tmp_path, model_store, private_tmp):
    inp = tmp_path / "in.csv"
    write_input(inp, around([], 50))
    before = local_dirs()
    argv = ["score", str(inp), "-o", str(tmp_path / "o.csv"), "--engine", "local", "--concurrency", "2"]
    assert main([*argv, "--model-store", str(model_store)]) == 0
    assert local_dirs() - before == set()


def test_a_killed_local_worker_is_replaced_and_its_folder_removed(model_store, private_tmp):
    before = local_dirs()
    header, body = HEADER.encode(), f"{HEADER}\n1,0.2,5.1,3.5,1.4,x\n".encode()
    engine = LocalPoolEngine(model_store / "iris.mar", 1)
    try:
        columns = engine.probe(header)
        assert columns == OUT_COLUMNS
        (pid,) = engine._pool._processes
        assert any(d.name.startswith(f"tabserve-local-{pid}-") for d in local_dirs())
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        with pytest.raises(ServerError, match="a local worker process died"):
            engine.score(body, 1, 1)
        assert engine.alive(header) and engine.columns == columns
        results = engine.score(body, 1, 1)
        assert results.errors == {} and columns[1 + int(results.labels[0])] == "p_setosa"
        assert not any(d.name.startswith(f"tabserve-local-{pid}-") for d in local_dirs())
    finally:
        engine.close()
    assert local_dirs() - before == set()


def test_stale_local_folders_of_dead_processes_are_removed():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = Path(tempfile.mkdtemp(prefix=f"tabserve-local-{gone.pid}-"))
    mine = Path(tempfile.mkdtemp(prefix=f"tabserve-local-{os.getpid()}-"))
    try:
        assert stale in remove_stale_local_dirs()
        assert not stale.exists() and mine.exists()
    finally:
        mine.rmdir()


def test_a_header_with_a_bare_carriage_return_is_one_error_line(tmp_path, model_store, capsys):
    """A file with CR-only line ends is one long header line with CRs in it."""
    inp = tmp_path / "cr.csv"
    inp.write_bytes(b"sepal_length_cm,sepal_width_cm,petal_length_cm,petal_width_cm\r5.1,3.5,1.4,0.2\r")
    argv = ["score", str(inp), "-o", str(tmp_path / "o.csv"), "--model-store", str(model_store)]
    assert main([*argv, "--engine", "local", "--concurrency", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: the input's header line cannot be read as CSV") and err.count("\n") == 1
    assert "CR-only line ends are not supported" in err
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.parametrize("delay", [0.0, 0.3, 0.9])
def test_ctrl_c_to_the_process_group_stops_a_local_engine_job_and_resume_finishes_it(
    tmp_path, model_store, delay
):
    """Ctrl-C in a terminal reaches every process of the job: the scorer and its local
    workers. The workers ignore it (the scorer stops them), so the job ends at once with its
    resume line, whatever the workers were doing (one interrupted while it sent an answer
    back used to leave the job hung), and --resume completes it."""
    inp, out = tmp_path / "in.csv", tmp_path / "out.csv"
    write_input(inp, [good(i) for i in range(600_000)])
    cmd = [sys.executable, "-m", "tabserve", "score", str(inp), "-o", str(out), "--engine", "local"]
    cmd += ["--model-store", str(model_store), "--chunk-rows", "500", "--concurrency", "2"]
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    while not Path(f"{out}.part.json").exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(delay)
    if job.poll() is None:
        os.killpg(job.pid, signal.SIGINT)
    try:
        printed, err = job.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        job.communicate()
        pytest.fail("the job did not end within 60 s of Ctrl-C")
    text = err.decode()
    if b"scored 600,000 rows" in printed:  # it finished before the signal: nothing to resume
        return
    assert job.returncode == 1 and "Error: interrupted" in text and "--resume" in text, (
        job.returncode,
        text[-2000:],
    )
    assert "Traceback" not in text, text[-3000:]
    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert out.read_bytes().count(b"\n") == 600_001
