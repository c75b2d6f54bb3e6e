"""Checkpoints and resume: where a job stands, in OUTPUT.part.json beside the partial output.

A checkpoint names the input (path, size, modification time, header), where its reader stands
after the last batch written (a byte offset for CSV, a row for Parquet), where the writer
stands (bytes of OUTPUT.part for CSV, closed segments for Parquet) and the totals so far.
`--resume` checks that the input is the same file, puts reader and writer back there and goes
on: a resumed CSV output is byte-identical to an uninterrupted one, a resumed Parquet output
holds the same rows and values.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, OutputError

VERSION = 2


@dataclass
class Checkpoint:
    """Where a job stands after its last written batch."""

    input: dict[str, Any]  # the reader's fingerprint: path, size, mtime_ns, header
    reader: dict[str, int]  # where the reader goes on (Batch.position)
    writer: dict[str, int]  # where the writer goes on (Writer.position)
    rows: int
    errors: int
    blank_lines: int
    formats: tuple[str, str] = ("csv", "csv")  # input and output format
    # Rows per batch: a resumed job must cut its batches as the first did (a float32 matmul's
    # last bits depend on a row's batch, so another size would give other last digits).
    chunk_rows: int = 0
    # Unseen categories so far, per column.
    unseen: dict[str, int] = field(default_factory=dict)
    # The drift report's counts so far (pipeline.Totals): a resumed job's report covers the
    # whole job. None: the job had no report (or a tabserve from before it wrote this).
    profile: dict[str, Any] | None = None
    unprofiled: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    # The model's digest (scorer.model_digest): a job resumes with the model it started with.
    model: str = ""
    version: int = VERSION

    @staticmethod
    def path_for(output: str) -> Path:
        return Path(output + ".part.json")

    def save(self, output: str) -> None:
        path = self.path_for(output)
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(asdict(self)))
            os.replace(tmp, path)
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc

    @classmethod
    def load(cls, output: str) -> Checkpoint | None:
        """The checkpoint beside `output`, or None when there is none (or one from another
        version of tabserve, which cannot be continued)."""
        path = cls.path_for(output)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or data.get("version") != VERSION:
                return None
            data["formats"] = tuple(data.get("formats", ("csv", "csv")))
            return cls(**data)
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
        except (ValueError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{path} is not a tabserve checkpoint: {exc}") from exc

    @classmethod
    def remove(cls, output: str) -> None:
        try:
            cls.path_for(output).unlink(missing_ok=True)
        except OSError:  # the output is complete: a stale checkpoint beside it is harmless
            pass

    def check_model(self, model: str, output: str) -> None:
        """ConfigError when the model answering now is not the one the job started with (its
        output would hold two models' predictions); unknown on either side: no check."""
        if self.model and model and self.model != model:
            raise ConfigError(
                f"cannot resume: the model is not the one that wrote {output}.part (another archive, "
                "or the same name trained again); give the first model, or run again without --resume"
            )

    def check(
        self, fingerprint: dict[str, Any], formats: tuple[str, str], output: str, chunk_rows: int
    ) -> None:
        """ConfigError unless this checkpoint continues a job on the same input, formats and
        partial output."""
        if self.input != fingerprint:
            raise ConfigError(
                f"cannot resume: {fingerprint.get('input')} changed since the checkpoint "
                f"{self.path_for(output)} was written; run again without --resume"
            )
        if tuple(self.formats) != formats:
            raise ConfigError(
                f"cannot resume: the checkpoint is for {self.formats[0]} to {self.formats[1]}, "
                f"this job is {formats[0]} to {formats[1]}; run again without --resume"
            )
        if self.chunk_rows != chunk_rows:
            raise ConfigError(
                f"cannot resume: the job was started with --chunk-rows {self.chunk_rows}, not "
                f"{chunk_rows}: give --chunk-rows {self.chunk_rows} (the output's last digits "
                "depend on it), or run again without --resume"
            )
        part = Path(output + ".part")
        if "bytes" in self.writer and (not part.is_file() or part.stat().st_size < self.writer["bytes"]):
            raise ConfigError(f"cannot resume: {part} is missing or shorter than its checkpoint")


class Checkpointer:
    """Keeps a job's checkpoint: told after every batch written, it saves one when the
    writer's interval has passed (a Parquet writer first closes its segment), and keeps the
    latest when the job stops early (keep)."""

    def __init__(
        self,
        output: str,
        fingerprint: dict[str, Any],
        formats: tuple[str, str],
        writer: Any,
        enabled: bool,
        chunk_rows: int = 0,
        model: str = "",
    ) -> None:
        self.chunk_rows = chunk_rows
        self.model = model
        self.output = output
        self.fingerprint = fingerprint
        self.formats = formats
        self.writer = writer
        self.enabled = enabled  # not for stdout or stdin
        self.every = getattr(writer, "checkpoint_seconds", 1.0)
        self.last = time.monotonic()
        self.latest: tuple[Any, dict[str, int]] | None = None  # (totals copy, reader position)
        self.saved: Checkpoint | None = None

    def resume_from(self, checkpoint: Checkpoint) -> None:
        self.saved = checkpoint

    def after(self, totals: Any, position: dict[str, int]) -> None:
        self.latest = (_copy(totals), dict(position))
        now = time.monotonic()
        if self.enabled and now - self.last >= self.every:
            self.last = now
            self._save()

    def _save(self) -> Checkpoint:
        assert self.latest is not None
        totals, position = self.latest
        self.writer.ready()
        cp = Checkpoint(
            self.fingerprint,
            position,
            self.writer.position(),
            totals.rows,
            totals.errors,
            totals.blank_lines,
            self.formats,
            self.chunk_rows,
            dict(totals.unseen),
            totals.profile,
            totals.unprofiled,
            dict(totals.error_kinds),
            self.model,
        )
        cp.save(self.output)
        self.saved = cp
        return cp

    def keep(self) -> int:
        """When the job stops early: checkpoint the last batch written (the periodic ones
        may lag behind); returns the rows that --resume will not score again. A job that
        wrote no batch leaves no partial output."""
        if self.latest is None:
            if self.saved is None:
                self.writer.discard()
                return 0
            return self.saved.rows
        if not self.enabled:
            return self.latest[0].rows
        try:
            return self._save().rows
        except Exception:  # a full disk, say: --resume starts after the last checkpoint on disk
            return self.saved.rows if self.saved is not None else 0

    def done(self) -> None:
        if self.enabled:
            Checkpoint.remove(self.output)


def _copy(totals: Any) -> Any:
    import copy

    return copy.deepcopy(totals)


def how_to_resume(output: str, input: str, rows: int) -> str:
    """The line that follows a failed job's message, if any rows were written."""
    if rows == 0:
        return ""
    if output == "-" or input == "-":
        return f"\n{rows:,} rows were written before it stopped; stdin/stdout jobs cannot resume"
    return (
        f"\n{rows:,} rows are saved in {output}.part; run the same command with --resume "
        "to continue from there"
    )
