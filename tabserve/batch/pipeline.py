"""The pipeline: batches from a reader, through an engine, to a writer, in order.

It owns what every job needs whatever it reads, scores with and writes: concurrency (batches
go to the engine side by side, at most 2 x workers in flight, so memory does not grow with the
input), order (results are written in input order), containment (a batch the engine refuses
or fails on is split until the rows that cause it are found: they get the reason as their
error, every other row is scored), checkpoints (at most one per writer interval, and one when
the job stops early), --max-errors, and progress. It knows no engine, file format or server.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..errors import ChunkRefused, OutputError, ServerError, TabserveError
from .engines import Engine
from .readers import Batch
from .results import Results, add_counts, count_kinds, merge_profile

# Tries per part while a failed batch is split to find its bad rows: a 5,000-row batch with
# one bad row takes about 13 splits, each at most this many tries plus a liveness probe.
SPLIT_RETRIES = 1


class JobFailed(TabserveError):
    """The job stopped before the end; its partial output is kept for --resume."""


class Unsplittable(Exception):
    """A failure that splitting a batch cannot help (a rejected token, a server that no
    longer answers): it ends the job."""


@dataclass
class Totals:
    """What a job has written so far."""

    rows: int = 0
    errors: int = 0
    blank_lines: int = 0
    unseen: dict[str, int] = field(default_factory=dict)
    # The drift report's counts (handler/profile.py), added up over the answers written; None
    # without a report. `unprofiled`: rows scored whose answer had no counts (an archive from
    # before the report, say). `error_kinds`: rows failed, per kind (results.error_kind).
    profile: dict[str, Any] | None = None
    unprofiled: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)

    def count(self, results: Results, features: tuple[str, ...] = ()) -> None:
        """Add a batch's results to the report's counts."""
        count_kinds(self.error_kinds, results.errors.values(), features)
        scored = len(results) - len(results.errors)
        if self.profile is not None and results.profile is not None:
            try:
                self.profile = merge_profile(self.profile, results.profile)
                return
            except ValueError:  # not the baseline's layout: these rows are not counted
                pass
        self.unprofiled += scored


@dataclass
class Options:
    workers: int
    max_errors: int | None = None
    max_record_bytes: int = 1 << 20
    checkpoints: Any = None  # checkpoint.Checkpointer: told after every batch written
    progress: Any = None  # a tqdm-like bar: update(n)
    report: bool = False  # count every batch for the drift report (Totals.count)
    features: tuple[str, ...] = ()  # the model's features, for the kinds of row errors


def score_batch(engine: Engine, batch: Batch, width: int, classifier: bool, max_record_bytes: int) -> Results:
    """Results for every row of a batch: a record over --max-record-bytes gets its error
    here, without an engine; the runs of rows between them go to score_contained."""
    if not batch.oversized:
        return score_contained(engine, batch, 0, batch.n, width, classifier)
    parts: list[Results] = []
    start = 0
    for i in [*batch.oversized, batch.n]:
        if i > start:
            parts.append(score_contained(engine, batch, start, i, width, classifier))
        if i < batch.n:
            too_long = f"record longer than {max_record_bytes} bytes (--max-record-bytes)"
            message = batch.reasons.get(i) or too_long
            parts.append(Results.refused(1, batch.first_row + i, message, width, classifier))
        start = i + 1
    return Results.concat(parts)


def score_contained(
    engine: Engine, batch: Batch, start: int, stop: int, width: int, classifier: bool
) -> Results:
    """engine.score for rows start..stop of a batch, inside the job's containment boundary:
    rows that the engine refuses as a whole (ChunkRefused, such as a 413) or fails on after
    its retries (ServerError), or that fail in any other way, are split in halves,
    recursively, the parts with SPLIT_RETRIES tries each, so that only the rows that cause it
    get the reason as their error. At most about 2 * log2(n) calls per bad row.

    Not split: a rejected token (AuthError), and any failure after which the engine no longer
    answers a probe of the header (a dead server): those end the job. The unseen categories
    are those of the answers kept: a failed attempt counts nothing."""

    def attempt(lo: int, hi: int, depth: int) -> Results:
        from .engines.torchserve import AuthError

        try:
            try:
                return engine.score(
                    batch.body(lo, hi), hi - lo, batch.first_row + lo, None if depth == 0 else SPLIT_RETRIES
                )
            except AuthError as exc:
                raise Unsplittable(str(exc)) from exc
            except (ChunkRefused, ServerError) as exc:
                if not engine.alive(batch.header):
                    raise Unsplittable(str(exc)) from exc
                raise
        except Unsplittable:
            raise
        except Exception as exc:  # the boundary: any failure is these rows' own
            if hi - lo == 1:
                reason = f"chunk refused: {exc}" if str(exc) else f"chunk refused: {type(exc).__name__}"
                return Results.refused(1, batch.first_row + lo, reason, width, classifier)
            mid = (lo + hi) // 2
            return Results.concat([attempt(lo, mid, depth + 1), attempt(mid, hi, depth + 1)])

    try:
        return attempt(start, stop, 0)
    except Unsplittable as exc:
        cause = exc.__cause__
        if isinstance(cause, TabserveError):
            raise cause from cause.__cause__  # the engine's own error, as it was raised
        raise ServerError(str(exc)) from exc


def run(
    batches: Any, engine: Engine, writer: Any, columns: list[str], totals: Totals, options: Options
) -> Totals:
    """Score every batch and write it in order; `totals` start where a resumed job stood.
    Raises JobFailed (--max-errors) or the engine's or writer's error; the caller keeps what
    was written (see the checkpoint callback)."""
    classifier = columns[0] == "label"
    width = len(columns) - 2 if classifier else 1
    pool = ThreadPoolExecutor(options.workers, thread_name_prefix="tabserve-score")
    inflight: deque[tuple[Batch, Future[tuple[Results, Any]]]] = deque()

    def score_and_render(batch: Batch) -> tuple[Results, Any]:
        results = score_batch(engine, batch, width, classifier, options.max_record_bytes)
        try:
            return results, writer.render(batch, results)
        except Exception as exc:  # a writer that cannot render a batch: the job's error, named
            raise OutputError(
                f"cannot write the rows {batch.first_row:,} to {batch.first_row + batch.n - 1:,}: "
                f"{type(exc).__name__}: {str(exc)[:300]}"
            ) from exc

    def write_oldest() -> None:
        batch, future = inflight.popleft()
        results, rendered = future.result()
        writer.write(rendered)
        totals.rows += batch.n
        totals.errors += len(results.errors)
        totals.blank_lines += batch.blank_lines
        add_counts(totals.unseen, results.unseen)
        if options.report:
            totals.count(results, options.features)
        if options.checkpoints is not None:
            options.checkpoints.after(totals, batch.position)
        if options.progress is not None:
            options.progress.update(batch.n)
        if options.max_errors is not None and totals.errors >= options.max_errors:
            raise JobFailed(
                f"stopped after {totals.rows:,} rows: {totals.errors:,} rows failed (--max-errors "
                f"{options.max_errors})"
            )

    try:
        for batch in batches:
            future = pool.submit(score_and_render, batch)
            inflight.append((batch, future))
            while len(inflight) >= 2 * options.workers:
                write_oldest()
        while inflight:
            write_oldest()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return totals
