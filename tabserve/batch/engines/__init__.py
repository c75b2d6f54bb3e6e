"""Engines: what turns a batch's CSV body into Results. The pipeline knows only this
interface; each engine lives in a module of its own, with its setup (an embedded server, the
archive it unpacks), and one entry in ENGINES.

A batch engine (`open(config, stack)` gives one) answers:
- probe(header): check the input's header line against the model; returns the output
  columns (label, p_<class>..., error, or prediction, error);
- score(body, n, first_row, retries): Results for the body's n records, computed by the
  archive's handler (tabserve.handler decides what a bad row is, everywhere); raises
  ChunkRefused when the body is refused as a whole, ServerError when it could not be scored:
  the pipeline splits it to find the rows that cause it;
- alive(header): whether the engine still answers after a failure;
- close().

A job engine (`run_job(config)`, Spark) reads and writes the files itself.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..results import Results

if TYPE_CHECKING:
    from ...scorer import ScoreConfig


class Engine(Protocol):
    columns: list[str]

    def probe(self, header: bytes) -> list[str]: ...

    def score(self, body: bytes, n: int, first_row: int, retries: int | None = None) -> Results: ...

    def alive(self, header: bytes) -> bool: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class EngineSpec:
    name: str
    module: str  # tabserve.batch.engines.<module>, imported when the engine is chosen
    summary: str

    def load(self) -> Any:
        import importlib

        return importlib.import_module(f"{__name__}.{self.module}")

    def open(self, config: ScoreConfig, stack: ExitStack) -> Engine:
        """A batch engine for this job, closed when `stack` closes."""
        return self.load().open(config, stack)

    @property
    def runs_job(self) -> bool:
        return hasattr(self.load(), "run_job")

    def run_job(self, config: ScoreConfig) -> Any:
        return self.load().run_job(config)


ENGINES: dict[str, EngineSpec] = {
    "torchserve": EngineSpec(
        "torchserve", "torchserve", "a TorchServe: --url, or one started from --model-store"
    ),
    "local": EngineSpec("local", "local", "the archive's handler in worker processes, no server"),
    "spark": EngineSpec(
        "spark", "spark", "the archive's handler on Spark executors (OUTPUT is a folder of part files)"
    ),
}


def model_name(config: ScoreConfig) -> str:
    """--model, or the only archive in --model-store."""
    from pathlib import Path

    from ...errors import ConfigError

    if config.model:
        return config.model
    store = Path(config.model_store)
    names = sorted(p.stem for p in store.glob("*.mar")) if store.is_dir() else []
    if len(names) == 1:
        return names[0]
    if not names:
        raise ConfigError(f"no .mar archives in {store}; run tabserve archive first, or give --url")
    raise ConfigError(f"{store} holds several models ({', '.join(names)}): choose one with --model")


def archive_path(config: ScoreConfig):
    """The .mar that the in-process engines unpack."""
    from pathlib import Path

    from ...errors import ConfigError

    mar = Path(config.model_store) / f"{model_name(config)}.mar"
    if not mar.is_file():
        raise ConfigError(f"{mar} not found; run tabserve archive first")
    return mar
