"""`tabserve score`: a CSV file in, the same rows with predictions out.

Streaming (chunks in flight are bounded, memory does not grow with the file), concurrent
(chunks go to the engine side by side, the output keeps the input's order), resumable (a
checkpoint at most once a second while it runs, and one when it stops early), and nothing
lost: one output row per input data row.

Containment: a record over --max-record-bytes never reaches an engine (csvio flags it), and a
chunk the engine refuses or fails on is split until the rows that cause it are found
(score_contained): bad input becomes those rows' errors, and the job goes on.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .csvio import (
    DEFAULT_MAX_RECORD_BYTES,
    Chunk,
    OutputFile,
    OutputLock,
    RecordReader,
    chunks,
    open_input,
    parse_header,
    quote,
)
from .engines import (
    AuthError,
    Engine,
    LocalPoolEngine,
    Results,
    TokenSource,
    TorchServeEngine,
    add_counts,
    split_url,
)
from .errors import ChunkRefused, ConfigError, OutputError, ServerError, TabserveError
from .handler.response import Unsplittable, contained_results, merge_rows
from .progress import Progress
from .server import DEFAULT_CONFIG, start_on_free_ports

CHECKPOINT_VERSION = 1
ENGINES = ("torchserve", "local", "spark")
# A checkpoint (a small file renamed into place) costs a few ms on some file systems: write
# one at most this often. --resume truncates the output to the last one and reads on from
# there, so a resumed file is the same whichever chunk the checkpoint followed.
CHECKPOINT_SECONDS = 1.0
# The embedded server is private (loopback, its own key file, gone when the job ends), so its
# keys may outlive any job instead of TorchServe's 60 minutes.
EMBEDDED_TOKEN_MINUTES = 60 * 24 * 365
# Tries per sub-chunk while a failed chunk is split to find its bad rows: a 5,000-row chunk
# with one bad row takes about 13 splits, each at most this many tries plus a liveness probe.
SPLIT_RETRIES = 1


class JobFailed(TabserveError):
    """The job stopped before the end; its partial output is kept for --resume."""


@dataclass(frozen=True)
class ScoreConfig:
    """One batch job."""

    input: str
    output: str
    url: str | None = None  # None: start an embedded TorchServe from model_store
    model: str | None = None
    token: str | None = None
    token_file: Path | None = None
    model_store: Path = Path("model_store")
    chunk_rows: int = 5000  # bench/batch.py: 5,000 was the fastest of 250 to 10,000
    concurrency: int | None = None  # None: 2 per CPU core
    resume: bool = False
    max_errors: int | None = None
    config_file: Path = DEFAULT_CONFIG
    engine: str = "torchserve"  # "local": the archive's handler in worker processes; "spark"
    master: str = "local[*]"  # --engine spark
    partitions: int | None = None  # --engine spark: about this many input splits
    timeout: float = 300.0
    retries: int = 8
    progress: bool | None = None  # None: on a terminal only
    # A longer record (a physical line, or a quoted record over several) is malformed: kept
    # in the output with an error, never sent to an engine (csvio.DEFAULT_MAX_RECORD_BYTES).
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES

    def __post_init__(self) -> None:
        if self.chunk_rows < 1:
            raise ConfigError(f"--chunk-rows must be at least 1, got {self.chunk_rows}")
        if self.max_record_bytes < 1:
            raise ConfigError(f"--max-record-bytes must be at least 1, got {self.max_record_bytes}")
        if self.retries < 0:
            raise ConfigError(f"--retries must be 0 or more, got {self.retries}")
        if self.partitions is not None and self.partitions < 1:
            raise ConfigError(f"--partitions must be at least 1, got {self.partitions}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError(f"--concurrency must be at least 1, got {self.concurrency}")
        if self.max_errors is not None and self.max_errors < 1:
            raise ConfigError(f"--max-errors must be at least 1, got {self.max_errors}")
        if self.resume and "-" in (self.input, self.output):
            raise ConfigError("--resume needs a file for both input and output, not - (stdin/stdout)")
        if self.token and self.token_file:
            raise ConfigError("give --token or --token-file, not both")
        if self.engine not in ENGINES:
            raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.engine != "torchserve" and self.url:
            raise ConfigError(f"--url applies to --engine torchserve, not {self.engine}")
        if self.url:
            split_url(self.url, self.model)  # a malformed URL, or one that names another model

    @property
    def workers(self) -> int:
        return self.concurrency or 2 * (os.cpu_count() or 1)


@dataclass
class ScoreResult:
    rows: int
    errors: int
    blank_lines: int
    seconds: float
    output: str
    resumed_rows: int = 0  # rows an earlier, interrupted run had already written
    # {column: count} of the categories in the rows never seen in training (scored with the
    # model's OTHER input), as the handler reported them for the answers written.
    unseen: dict[str, int] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 0 if self.errors == 0 else 2

    def summary(self) -> str:
        rate = (self.rows - self.resumed_rows) / self.seconds if self.seconds > 0 else 0.0
        blank = f", {self.blank_lines:,} blank lines skipped" if self.blank_lines else ""
        resumed = f" ({self.resumed_rows:,} of them from the resumed run)" if self.resumed_rows else ""
        return (
            f"scored {self.rows:,} rows{resumed}: {self.rows - self.errors:,} ok, {self.errors:,} errors"
            f"{blank}{unseen_summary(self.unseen)}; {rate:,.0f} rows/s, {self.seconds:.1f} s; "
            f"wrote {self.output}"
        )


def unseen_summary(unseen: dict[str, int]) -> str:
    """The summary's "; unseen categories: island 3, sex 1" (columns by name), or "" if none."""
    counts = [f"{name} {n:,}" for name, n in sorted(unseen.items()) if n]
    return f"; unseen categories: {', '.join(counts)}" if counts else ""


@dataclass
class Checkpoint:
    """Where a job stands after its last written chunk; OUTPUT.part.json beside OUTPUT.part."""

    input: str
    input_size: int
    input_mtime_ns: int
    header: str
    next_index: int
    next_row: int
    input_offset: int
    output_bytes: int
    rows: int
    errors: int
    blank_lines: int
    version: int = CHECKPOINT_VERSION
    # Unseen categories so far, per column (a checkpoint written before they were counted
    # has none: a resumed job then reports those of the rows it scored itself).
    unseen: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def path_for(output: str) -> Path:
        return Path(output + ".part.json")

    def save(self, output: str) -> None:
        path = self.path_for(output)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, path)

    @classmethod
    def load(cls, output: str) -> Checkpoint | None:
        path = cls.path_for(output)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            if data.get("version") != CHECKPOINT_VERSION:
                return None
            return cls(**data)
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
        except (ValueError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{path} is not a tabserve checkpoint: {exc}") from exc


def _fingerprint(path: str) -> tuple[int, int]:
    if path == "-":
        return (0, 0)
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _embedded_model(config: ScoreConfig) -> str:
    store = Path(config.model_store)
    if config.model:
        return config.model
    names = sorted(p.stem for p in store.glob("*.mar")) if store.is_dir() else []
    if len(names) == 1:
        return names[0]
    if not names:
        raise ConfigError(f"no .mar archives in {store}; run tabserve archive first, or give --url")
    raise ConfigError(f"{store} holds several models ({', '.join(names)}): choose one with --model")


def start_embedded(config: ScoreConfig, model: str, stack: ExitStack) -> tuple[str, TokenSource]:
    """A private TorchServe on free loopback ports, stopped when `stack` closes."""
    run_dir = Path(tempfile.mkdtemp(prefix="tabserve-score-"))
    stack.callback(shutil.rmtree, run_dir, True)
    server = start_on_free_ports(
        Path(config.model_store),
        run_dir,
        models=(model,),
        auth=True,
        config_file=config.config_file,
        extra_properties={"token_expiration_min": str(EMBEDDED_TOKEN_MINUTES)},
        tied_to_owner=True,
        # The scorer's requests are whole chunks already, so server-side batching has
        # nothing to gain (bench/batch.py: within a few percent either way at 5,000-row
        # chunks) and would only add its delay and tie several chunks to one worker.
        batch_size=1,
    )
    stack.callback(server.stop)
    return server.inference_url, TokenSource(token_file=server.key_file)


def check_paths(config: ScoreConfig) -> None:
    """Refuse, before anything is written, what would fail part way or destroy the input."""
    if config.input != "-":
        if os.path.isdir(config.input):
            raise ConfigError(f"input {config.input} is a folder: expected a CSV file")
        if not os.path.exists(config.input):
            raise ConfigError(f"input {config.input} not found")
    if config.output == "-":
        return
    out = Path(config.output)
    if out.is_dir():
        raise ConfigError(
            f"output {config.output} is a folder: expected a file name such as {out / 'scored.csv'}"
        )
    if not out.parent.is_dir():
        raise ConfigError(f"the output's folder {out.parent} does not exist: create it first")
    if config.input == "-":
        return
    if out.exists() and os.path.samefile(config.input, out):
        raise ConfigError(
            f"output {config.output} is the input {config.input}: write the scores to another file"
        )
    for side in (f"{out}.part", f"{out}.part.json", f"{out}.lock"):
        if os.path.exists(side) and os.path.samefile(config.input, side):
            raise ConfigError(
                f"{side}, which tabserve score writes beside the output, is the input "
                f"{config.input}: choose another -o"
            )


def score(
    config: ScoreConfig, engine: Engine | None = None, on_commit: Callable[[], None] | None = None
) -> ScoreResult:
    """Run the job. Raises JobFailed (partial output kept) or another TabserveError.

    `on_commit` is called once every row is written, just before the output is renamed into
    place: from then on the job has succeeded (the CLI ignores Ctrl-C and SIGTERM)."""
    if config.engine == "spark":
        return score_on_spark(config)
    t0 = time.monotonic()
    check_paths(config)
    # Records up to --max-record-bytes are read whole by the csv module here (the header, the
    # output's field counts); a longer one never reaches it.
    csv.field_size_limit(max(csv.field_size_limit(), config.max_record_bytes))
    with ExitStack() as stack:
        if config.output != "-":
            # Before anything is truncated or written, and held until the job ends.
            stack.callback(OutputLock(config.output).acquire().release)
        try:
            return _run(config, engine, on_commit, stack, t0)
        except KeyboardInterrupt:
            raise JobFailed("interrupted before any row was written") from None


def _run(
    config: ScoreConfig,
    engine: Engine | None,
    on_commit: Callable[[], None] | None,
    stack: ExitStack,
    t0: float,
) -> ScoreResult:
    checkpoint = Checkpoint.load(config.output) if config.resume else None
    size, mtime = _fingerprint(config.input)
    stream = open_input(config.input)
    if config.input != "-":
        stack.callback(stream.close)
    reader = RecordReader(stream, max_record_bytes=config.max_record_bytes)
    header = reader.header()
    width = len(parse_header(header))

    if engine is None:
        if config.engine == "local":
            local = LocalPoolEngine(_archive(config), config.concurrency or os.cpu_count() or 1)
            stack.callback(local.close)
            engine = local
        elif config.url:
            base, model, version = split_url(config.url, config.model)
            tokens = TokenSource(config.token, config.token_file)
            engine = TorchServeEngine(base, model, tokens, config.timeout, config.retries, version=version)
        else:
            model = _embedded_model(config)
            url, tokens = start_embedded(config, model, stack)
            engine = TorchServeEngine(url, model, tokens, config.timeout, config.retries)
        stop = getattr(engine, "stop", None)
        if stop is not None:  # runs first as the job ends: before the embedded server stops
            stack.callback(stop)
    columns = engine.probe(header)
    n_classes = len(columns) - 2
    clash = output_clash(parse_header(header), columns)
    if clash:
        raise ConfigError(clash)

    next_index, next_row, rows, errors, blanks = 0, 1, 0, 0, 0
    unseen: dict[str, int] = {}
    resume_bytes = None
    if checkpoint is not None:
        if (checkpoint.input, checkpoint.input_size, checkpoint.input_mtime_ns, checkpoint.header) != (
            config.input,
            size,
            mtime,
            header,
        ):
            raise ConfigError(
                f"cannot resume: {config.input} changed since the checkpoint "
                f"{Checkpoint.path_for(config.output)} was written; run again without --resume"
            )
        part = Path(config.output + ".part")
        if not part.is_file() or part.stat().st_size < checkpoint.output_bytes:
            raise ConfigError(f"cannot resume: {part} is missing or shorter than its checkpoint")
        reader.seek(checkpoint.input_offset, config.input)
        next_index, next_row = checkpoint.next_index, checkpoint.next_row
        rows, errors, blanks = checkpoint.rows, checkpoint.errors, checkpoint.blank_lines
        unseen = dict(checkpoint.unseen)
        resume_bytes = checkpoint.output_bytes

    bar = Progress(None, "rows", enabled=config.progress)
    sized = bool(size) and not config.input.endswith(".gz")
    done_ok = False
    latest: Checkpoint | None = checkpoint  # after the last chunk written so far
    saved: Checkpoint | None = checkpoint  # the last one on disk
    out: OutputFile | None = None
    try:
        out = OutputFile(config.output, resume_bytes)
        if resume_bytes is None:
            out.write_block(header + "," + ",".join(map(quote, columns)) + "\n")
        pool = ThreadPoolExecutor(config.workers, thread_name_prefix="tabserve-score")
        stack.callback(pool.shutdown, wait=False, cancel_futures=True)
        inflight: deque[tuple[Chunk, Future[Results]]] = deque()
        last_checkpoint = float("-inf")

        def write_oldest() -> None:
            nonlocal rows, errors, blanks, last_checkpoint, latest, saved
            assert out is not None
            chunk, future = inflight.popleft()
            results = future.result()
            block, failed = merge_chunk(chunk, results, width)
            written = out.write_block(block)
            rows += len(chunk.lines)
            errors += failed
            blanks += chunk.blank_lines
            # Summed here, on the one thread that writes, from each chunk's own count.
            add_counts(unseen, results.unseen)
            latest = Checkpoint(
                config.input,
                size,
                mtime,
                header,
                chunk.index + 1,
                chunk.first_row + len(chunk.lines),
                chunk.end_offset,
                written,
                rows,
                errors,
                blanks,
                unseen=dict(unseen),
            )
            now = time.monotonic()
            if out.part is not None and now - last_checkpoint >= CHECKPOINT_SECONDS:
                last_checkpoint = now
                try:
                    latest.save(config.output)
                except OSError as exc:
                    where = Checkpoint.path_for(config.output)
                    raise OutputError(f"cannot write {where}: {exc.strerror or exc}") from exc
                saved = latest
            bar.update(rows, fraction=chunk.end_offset / size if sized else None)
            if config.max_errors is not None and errors >= config.max_errors:
                raise JobFailed(
                    f"stopped after {rows:,} rows: {errors:,} rows failed (--max-errors "
                    f"{config.max_errors}); the rows so far are in {out.part or 'stdout'}"
                )

        for chunk in chunks(reader, config.chunk_rows, next_row, next_index):
            future = pool.submit(score_chunk, engine, header, chunk, n_classes, config.max_record_bytes)
            inflight.append((chunk, future))
            while len(inflight) >= 2 * config.workers:
                write_oldest()
        while inflight:
            write_oldest()
        if on_commit is not None:
            on_commit()
        out.commit()
        done_ok = True
    except JobFailed:
        _keep(latest, saved, out, config)
        raise
    except TabserveError as exc:
        raise JobFailed(f"{exc}{_how_to_resume(config, _keep(latest, saved, out, config))}") from exc
    except KeyboardInterrupt:
        raise JobFailed(f"interrupted{_how_to_resume(config, _keep(latest, saved, out, config))}") from None
    finally:
        bar.close()
        if not done_ok and out is not None:
            out.abandon()
    try:
        Checkpoint.path_for(config.output).unlink(missing_ok=True)
    except OSError:  # the output is complete: a stale checkpoint beside it is harmless
        pass
    resumed = checkpoint.rows if checkpoint else 0
    return ScoreResult(rows, errors, blanks, time.monotonic() - t0, config.output, resumed, unseen)


def output_clash(names: Sequence[str], columns: Sequence[str]) -> str | None:
    """The message when the input already has a column the output adds (label, p_<class>,
    prediction, error): the output would hold two columns of one name."""
    clash = [c for c in columns if c in {n.strip() for n in names}]
    if not clash:
        return None
    return (
        f"the input already has column(s) {', '.join(map(repr, clash))}, which the output adds: "
        "rename or remove them in the input"
    )


def score_chunk(engine: Engine, header: str, chunk: Chunk, n_classes: int, max_record_bytes: int) -> Results:
    """Result lines for every record of a chunk: a record over --max-record-bytes gets its
    error here, without an engine; the runs of records between them go to score_contained."""
    lines, first = chunk.lines, chunk.first_row
    if not chunk.oversized:
        return score_contained(engine, header, lines, first, n_classes)
    results = Results()
    start = 0
    for i in [*chunk.oversized, len(lines)]:
        if i > start:
            part = score_contained(engine, header, lines[start:i], first + start, n_classes)
            results += part
            add_counts(results.unseen, part.unseen)
        if i < len(lines):
            message = f"row {first + i}: record longer than {max_record_bytes} bytes (--max-record-bytes)"
            results.append("," * (n_classes + 1) + quote(message))
        start = i + 1
    return results


def score_contained(engine: Engine, header: str, lines: list[str], first_row: int, n_classes: int) -> Results:
    """engine.score for consecutive records, inside the job's containment boundary
    (handler.response.contained_results): records that the engine refuses as a whole
    (ChunkRefused, such as a 413) or fails on after its retries (ServerError), or that fail
    in any other way, are split in halves, recursively, the parts with SPLIT_RETRIES tries
    each, so that only the rows that cause it get the reason as their error.

    Not split: a rejected token (AuthError), and any failure after which the engine no longer
    answers a probe of the header (a dead server): those end the job, as before.

    The unseen categories are counted from the answers whose lines are kept: an attempt that
    fails counts nothing, so the rows of a split chunk are counted once, by the parts that
    score them."""
    unseen: dict[str, int] = {}

    def attempt(part: Sequence[str], first: int, depth: int) -> list[str]:
        try:
            results = engine.score(header, list(part), first, None if depth == 0 else SPLIT_RETRIES)
        except AuthError as exc:
            raise Unsplittable(str(exc)) from exc
        except (ChunkRefused, ServerError) as exc:
            if not engine.alive(header):
                raise Unsplittable(str(exc)) from exc
            raise
        # contained_results keeps every list an attempt returns (it splits only on raising).
        add_counts(unseen, getattr(results, "unseen", {}))
        return results

    try:
        return Results(contained_results(attempt, lines, first_row, n_classes), unseen)
    except Unsplittable as exc:
        cause = exc.__cause__
        if isinstance(cause, TabserveError):
            raise cause from cause.__cause__  # the engine's own error, as it was raised
        raise ServerError(str(exc)) from exc


def merge_chunk(chunk: Chunk, results: list[str], width: int) -> tuple[str, int]:
    """The chunk's output block and its number of failed rows (handler.response.merge_rows).
    A record over --max-record-bytes keeps its whole text, quoted as needed, in the first
    column, padded to the header's width, without being parsed again."""
    if not chunk.oversized:
        return merge_rows(chunk.lines, results, width)
    parts: list[str] = []
    failed = start = 0
    pad = "," * (width - 1)
    lines = chunk.lines
    for i in [*chunk.oversized, len(lines)]:
        if i > start:
            block, n = merge_rows(lines[start:i], results[start:i], width)
            parts.append(block)
            failed += n
        if i < len(lines):
            parts.append(f"{quote(lines[i])}{pad},{results[i]}\n")
            failed += 1
        start = i + 1
    return "".join(parts), failed


def _archive(config: ScoreConfig) -> Path:
    """The .mar the local and Spark engines unpack."""
    mar = Path(config.model_store) / f"{_embedded_model(config)}.mar"
    if not mar.is_file():
        raise ConfigError(f"{mar} not found; run tabserve archive first")
    return mar


def _keep(
    latest: Checkpoint | None, saved: Checkpoint | None, out: OutputFile | None, config: ScoreConfig
) -> int:
    """When a job stops early, checkpoint the last chunk it wrote (the periodic ones may lag
    behind); returns the rows that --resume will not score again. A job that wrote no chunk
    leaves no partial output."""
    if latest is None:
        if out is not None and out.part is not None:
            out.abandon()
            out.part.unlink(missing_ok=True)
        return 0
    if out is not None and out.part is not None:
        try:
            latest.save(config.output)
        except OSError:  # a full disk, say: --resume starts after the last checkpoint on disk
            return saved.rows if saved is not None else 0
    return latest.rows


def _how_to_resume(config: ScoreConfig, rows: int) -> str:
    """The line that follows a failed job's message, if any rows were written."""
    if rows == 0:
        return ""
    if config.output == "-" or config.input == "-":
        return f"\n{rows:,} rows were written before it stopped; stdin/stdout jobs cannot resume"
    return (
        f"\n{rows:,} rows are saved in {config.output}.part; run the same command with --resume "
        "to continue from there"
    )


def score_on_spark(config: ScoreConfig) -> ScoreResult:
    """--engine spark: the archive's handler on Spark executors; OUTPUT is a folder."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise ConfigError(
            "--engine spark needs pyspark: pip install 'tabserve[spark]' (and Java 17+)"
        ) from None
    from . import spark_job

    if "-" in (config.input, config.output):
        raise ConfigError("--engine spark reads and writes paths, not - (stdin/stdout)")
    mar = _archive(config)
    import sys

    from py4j.protocol import Py4JJavaError

    t0 = time.monotonic()
    # The executors' Python workers run this interpreter (the one with torch), unless the
    # cluster says otherwise (PYSPARK_PYTHON).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # Spark's console progress bar only on a terminal (piped, it runs into the summary line).
    progress = "true" if sys.stderr.isatty() else "false"
    builder = SparkSession.builder.master(config.master).appName("tabserve-score")
    spark = builder.config("spark.ui.showConsoleProgress", progress).getOrCreate()
    try:
        job = spark_job.run(spark, mar, config.input, config.output, config.partitions, config.chunk_rows)
    except spark_job.SparkJobError as exc:
        raise ConfigError(str(exc)) from exc
    except Py4JJavaError as exc:
        first = str(exc.java_exception).splitlines()[0][:500]
        raise JobFailed(f"the Spark job failed: {first}; Spark's log above says more") from exc
    finally:
        spark.stop()
    return ScoreResult(job.rows, job.errors, 0, time.monotonic() - t0, config.output, unseen=job.unseen)
