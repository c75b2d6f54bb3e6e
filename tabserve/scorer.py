"""`tabserve score`: a CSV or Parquet file in, the same rows with predictions out.

This module is the job's assembly: it checks the options and paths, takes the output's lock,
and connects a reader (batch.readers), an engine (batch.engines, by name) and a writer
(batch.writers) through the pipeline (batch.pipeline), with checkpoints (batch.checkpoint).
Streaming, concurrent, resumable, and nothing lost: one output row per input data row.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from .batch import pipeline
from .batch.checkpoint import Checkpoint, Checkpointer, how_to_resume
from .batch.engines import ENGINES
from .batch.pipeline import SPLIT_RETRIES, JobFailed, Totals
from .batch.readers import input_format, open_reader
from .batch.results import start_profile
from .batch.writers import WRITERS, output_format
from .csvio import DEFAULT_MAX_RECORD_BYTES, OutputLock
from .errors import ConfigError, TabserveError
from .server import DEFAULT_CONFIG

__all__ = ["SPLIT_RETRIES", "Checkpoint", "JobFailed", "ScoreConfig", "ScoreResult", "score"]


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
    multiline: bool = False  # --engine spark: Spark's CSV reader, records over several lines
    timeout: float = 300.0
    retries: int = 8
    progress: bool | None = None  # None: on a terminal only
    # A longer record (a physical line, or a quoted record over several) is malformed: kept
    # in the output with an error, never sent to an engine (csvio.DEFAULT_MAX_RECORD_BYTES).
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    input_format: str | None = None  # None: from the input's extension (.parquet), else CSV
    output_format: str | None = None  # None: from the output's extension (.parquet), else CSV
    # The drift report (tabserve/batch/report.py): OUTPUT.report.json and .html beside the output.
    report: bool = True
    fail_on_drift: bool = False  # exit with report.DRIFT_EXIT when a feature drifted

    def __post_init__(self) -> None:
        if self.chunk_rows < 1:
            raise ConfigError(f"--chunk-rows must be at least 1, got {self.chunk_rows}")
        if self.max_record_bytes < 1:
            raise ConfigError(f"--max-record-bytes must be at least 1, got {self.max_record_bytes}")
        if self.retries < 0:
            raise ConfigError(f"--retries must be 0 or more, got {self.retries}")
        if self.multiline and self.engine != "spark":
            raise ConfigError(
                "--multiline is for --engine spark (the other engines always read quoted fields "
                "that span lines)"
            )
        if self.partitions is not None and self.partitions < 1:
            raise ConfigError(f"--partitions must be at least 1, got {self.partitions}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError(f"--concurrency must be at least 1, got {self.concurrency}")
        if self.max_errors is not None and self.max_errors < 1:
            raise ConfigError(f"--max-errors must be at least 1, got {self.max_errors}")
        if self.fail_on_drift and not self.report:
            raise ConfigError(
                "--fail-on-drift (TABSERVE_FAIL_ON_DRIFT) needs the drift report: leave out "
                "--no-report (TABSERVE_NO_REPORT)"
            )
        if self.resume and "-" in (self.input, self.output):
            raise ConfigError("--resume needs a file for both input and output, not - (stdin/stdout)")
        if self.token and self.token_file:
            raise ConfigError("give --token or --token-file, not both")
        if self.engine not in ENGINES:  # the registry: tabserve.batch.engines
            raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.engine != "torchserve" and self.url:
            raise ConfigError(f"--url applies to --engine torchserve, not {self.engine}")
        if self.url:
            from .batch.engines.torchserve import split_url

            split_url(self.url, self.model)  # a malformed URL, or one that names another model
        input_format(self.input, self.input_format)  # an unknown --input-format
        output_format(self.output, self.output_format)  # an unknown --format

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
    server_start: float | None = None  # seconds to start the embedded TorchServe
    report: dict | None = None  # the drift report (tabserve/batch/report.py), None with --no-report
    report_paths: tuple[str, str] | None = None  # where it was written (None: stdout jobs)
    fail_on_drift: bool = False
    report_problem: str | None = None  # why the report could not be built or written

    @property
    def exit_code(self) -> int:
        from .batch.report import DRIFT_EXIT, drifted

        if self.fail_on_drift and self.report is not None and drifted(self.report):
            return DRIFT_EXIT
        return 0 if self.errors == 0 else 2

    def report_lines(self) -> list[str]:
        """The lines after the summary: one per feature that drifted, and where the report is."""
        from .batch.report import drift_lines

        lines = [] if self.report is None else drift_lines(self.report)
        if self.report_paths:
            lines.append(f"report: {self.report_paths[0]} and {self.report_paths[1]}")
        if self.report_problem:
            lines.append(f"report: warning: {self.report_problem}")
        return lines

    def summary(self) -> str:
        rate = (self.rows - self.resumed_rows) / self.seconds if self.seconds > 0 else 0.0
        blank = f", {self.blank_lines:,} blank lines skipped" if self.blank_lines else ""
        resumed = f" ({self.resumed_rows:,} of them by the interrupted run)" if self.resumed_rows else ""
        start = f" (TorchServe started in {self.server_start:.1f} s)" if self.server_start else ""
        return (
            f"scored {self.rows:,} rows{resumed}: {self.rows - self.errors:,} ok, {self.errors:,} errors"
            f"{blank}{unseen_summary(self.unseen)}; {rate:,.0f} rows/s, {self.seconds:.1f} s{start}; "
            f"wrote {self.output}"
        )


def unseen_summary(unseen: dict[str, int]) -> str:
    """The summary's "; unseen categories: island 3, sex 1" (columns by name), or "" if none."""
    counts = [f"{name} {n:,}" for name, n in sorted(unseen.items()) if n]
    return f"; unseen categories: {', '.join(counts)}" if counts else ""


def check_paths(config: ScoreConfig) -> None:
    """Refuse, before anything is written, what would fail part way or destroy the input."""
    if config.input != "-":
        if os.path.isdir(config.input):
            raise ConfigError(f"input {config.input} is a folder: expected a CSV or Parquet file")
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
    for side in (
        f"{out}.part",
        f"{out}.part.json",
        f"{out}.lock",
        f"{out}.report.json",
        f"{out}.report.html",
    ):
        if os.path.exists(side) and os.path.samefile(config.input, side):
            raise ConfigError(
                f"{side}, which tabserve score writes beside the output, is the input "
                f"{config.input}: choose another -o"
            )


def score(config: ScoreConfig, engine=None, on_commit: Callable[[], None] | None = None) -> ScoreResult:
    """Run the job. Raises JobFailed (partial output kept) or another TabserveError.

    `engine`: a batch engine to use instead of the one --engine names (tests). `on_commit`
    is called once every row is written, just before the output is renamed into place: from
    then on the job has succeeded (the CLI ignores Ctrl-C and SIGTERM)."""
    spec = ENGINES[config.engine]
    if engine is None and spec.runs_job:
        return spec.run_job(config)
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


def _run(config: ScoreConfig, engine, on_commit, stack: ExitStack, t0: float) -> ScoreResult:
    formats = (
        input_format(config.input, config.input_format),
        output_format(config.output, config.output_format),
    )
    checkpoint = Checkpoint.load(config.output) if config.resume else None
    reader = open_reader(config.input, formats[0], config.chunk_rows, config.max_record_bytes)
    stack.callback(reader.close)
    if engine is None:
        engine = ENGINES[config.engine].open(config, stack)
    if hasattr(engine, "profile"):  # ask the handler for the drift report's counts, or not
        engine.profile = config.report
    columns = engine.probe(reader.header)
    clash = output_clash(reader.columns, columns)
    if clash:
        raise ConfigError(clash)
    fingerprint = reader.fingerprint()
    totals = Totals()
    if checkpoint is not None:
        checkpoint.check(fingerprint, formats, config.output, config.chunk_rows)
        totals = Totals(
            checkpoint.rows,
            checkpoint.errors,
            checkpoint.blank_lines,
            dict(checkpoint.unseen),
            checkpoint.profile,
            checkpoint.unprofiled,
            dict(checkpoint.error_kinds),
        )
    baseline = getattr(engine, "baseline", None)
    if start_profile(baseline) is None:  # none, or not one this tabserve can count with
        baseline = None
    model = model_digest(baseline)
    if checkpoint is not None:
        checkpoint.check_model(model, config.output)
    if not config.report:
        baseline = None
    else:
        start_report(totals, baseline, checkpoint is not None)
    writer = WRITERS[formats[1]](config.output)
    resumable = "-" not in (config.input, config.output)
    checkpoints = Checkpointer(
        config.output, fingerprint, formats, writer, resumable, config.chunk_rows, model
    )
    if checkpoint is not None:
        checkpoints.resume_from(checkpoint)
    bar = _progress(config, reader)
    done = False
    report: dict | None = None
    report_paths: tuple[str, str] | None = None
    report_problem: str | None = None
    try:
        resume = None if checkpoint is None else checkpoint.writer
        writer.start(reader.columns, reader.header, columns, resume, getattr(reader, "schema", None))
        features = tuple(baseline["features"]) if baseline else ()
        options = pipeline.Options(
            config.workers,
            config.max_errors,
            config.max_record_bytes,
            checkpoints,
            bar,
            config.report,
            features,
        )
        batches = reader.batches(None if checkpoint is None else checkpoint.reader)
        pipeline.run(batches, engine, writer, columns, totals, options)
        if config.report:
            # Before the output is renamed into place: a finished output has its report. A
            # report that cannot be built or written is a warning, never the job's failure.
            report, report_paths, report_problem = finish_report(config, baseline, totals)
        if on_commit is not None:
            on_commit()
        writer.commit()
        done = True
    except JobFailed as exc:  # --max-errors
        rows = checkpoints.keep()
        where = ""
        if resumable and rows:
            where = (
                f"; the {rows:,} rows so far are in {config.output}.part: --resume continues "
                "with the errors counted so far (give a larger --max-errors, or none, to go on)"
            )
        raise JobFailed(f"{exc}{where}") from None
    except TabserveError as exc:
        raise JobFailed(f"{exc}{how_to_resume(config.output, config.input, checkpoints.keep())}") from exc
    except KeyboardInterrupt:
        raise JobFailed(
            f"interrupted{how_to_resume(config.output, config.input, checkpoints.keep())}"
        ) from None
    finally:
        if bar is not None:
            bar.close()
        if not done:
            writer.abandon()
    checkpoints.done()
    resumed = checkpoint.rows if checkpoint else 0
    return ScoreResult(
        totals.rows,
        totals.errors,
        totals.blank_lines,
        time.monotonic() - t0,
        config.output,
        resumed,
        totals.unseen,
        getattr(engine, "started_in", None),
        report,
        report_paths,
        config.fail_on_drift,
        report_problem,
    )


def model_digest(baseline: dict | None) -> str:
    """What a checkpoint records of the model: the SHA-256 of its baseline (which holds its
    name, weights' SHA-256 and training statistics); "" when the handler sends none."""
    if baseline is None:
        return ""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(baseline, sort_keys=True).encode()).hexdigest()


def start_report(totals: Totals, baseline: dict | None, resumed: bool) -> None:
    """The report's counts start from the baseline's empty profile, or go on from a resumed
    job's. Rows a resumed job scored without counts (run with --no-report) are `unprofiled`,
    and its failed rows a kind of their own."""
    from .batch.results import merge_profile

    start = start_profile(baseline)
    if start is None:
        totals.profile = None
        return
    if totals.profile is not None:
        try:
            totals.profile = merge_profile(start, totals.profile)
            return
        except ValueError:  # counts of another layout (the checkpoint's model is this one)
            pass
    totals.profile = start
    if resumed and totals.rows:
        totals.unprofiled += totals.rows - totals.errors
        if totals.errors and not totals.error_kinds:
            totals.error_kinds[NOT_COUNTED] = totals.errors


NOT_COUNTED = "(rows before --resume: scored with --no-report, their kinds not counted)"


def finish_report(
    config: ScoreConfig, baseline: dict | None, totals: Totals
) -> tuple[dict | None, tuple[str, str] | None, str | None]:
    """(the report, where it was written, the problem that kept it from being built or
    written): never raises."""
    from .batch import report as R

    job = {"input": config.input, "output": config.output, "engine": config.engine, "finished": R.stamp()}
    try:
        report = R.build(baseline, totals, job)
    except Exception as exc:  # the report's own failure: the job's rows are all written
        return None, None, f"the drift report could not be built: {type(exc).__name__}: {str(exc)[:200]}"
    if config.output == "-":
        return report, None, None
    try:
        return report, R.write(report, config.output), None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)[:200]
        return report, None, f"the drift report could not be written beside {config.output}: {reason}"


def _progress(config: ScoreConfig, reader):
    """A tqdm bar on stderr when it is a terminal (or --progress), else None."""
    import sys

    enabled = sys.stderr.isatty() if config.progress is None else config.progress
    if not enabled:
        return None
    from tqdm import tqdm

    total = getattr(reader, "rows", None)
    return tqdm(total=total, unit=" rows", unit_scale=True, file=sys.stderr, mininterval=0.2)


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
