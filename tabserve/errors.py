"""Errors the CLI turns into `Error: ...` and a non-zero exit code."""

from __future__ import annotations


class TabserveError(Exception):
    """Base class: a failure the user can act on, with a message that says how."""


class ConfigError(TabserveError):
    """An option or a combination of options is invalid."""


class ArchiveError(TabserveError):
    """The model archive could not be built or read."""


class JavaNotFound(TabserveError):
    """No Java 11 or newer for TorchServe's frontend."""


class ServerError(TabserveError):
    """TorchServe did not start, did not become ready, or cannot be reached."""


class ChunkRefused(TabserveError):
    """The engine refused a chunk as a whole (an HTTP 4xx such as 413): the message says why."""


class OutputError(TabserveError):
    """The output could not be written: no space left, no permission, a folder in the way."""


class OutputLocked(TabserveError):
    """Another tabserve score job is writing the same output."""


class InputError(TabserveError):
    """The input could not be read part way (an I/O error, a truncated or corrupt .gz)."""
