"""`tabserve archive`: artifacts + the handler package -> MODEL_STORE/NAME.mar."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path

from . import handler as _handler_pkg
from .errors import ArchiveError
from .handler.rows import Limits
from .handler.schema import SCHEMA_FILE, Schema, SchemaError

# Inside the archive the handler package is called tabserve_handler: TorchServe puts the
# unpacked archive on sys.path, and a plain "handler" could shadow another module.
PACKAGE_IN_MAR = "tabserve_handler"
ENTRY_MODULE = "tabserve_entry"
ENTRY_SOURCE = f"from {PACKAGE_IN_MAR}.entry import handle  # noqa: F401  (TorchServe entry)\n"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class ArchiveConfig:
    """What to archive and the serving settings written into the archive's model-config.yaml."""

    artifacts: Path
    name: str | None = None
    version: str = "1.0"
    model_store: Path = Path("model_store")
    # Server-side batching: TorchServe gathers up to batch_size requests, waiting at most
    # max_batch_delay ms, and hands them to one handler call (one model pass for all).
    batch_size: int = 32
    max_batch_delay: int = 5
    workers: int | None = None  # None: TorchServe's default, one per CPU core or GPU
    response_timeout: int = 120  # seconds; a 100,000-row CSV request takes well under this
    torch_threads: int = 1
    # The handler hands its row counters to TorchServe's metrics API at most this
    # often; 0 counts every batch at once.
    metrics_interval_s: float = 1.0
    # The handler's containment limits (handler/rows.py Limits): what one request may hold.
    limits: Limits = Limits()


def model_config_yaml(config: ArchiveConfig) -> str:
    lines = [
        "# Written by tabserve archive: TorchServe's per-model settings for this archive.",
        f"batchSize: {config.batch_size}",
        f"maxBatchDelay: {config.max_batch_delay}",
        f"responseTimeout: {config.response_timeout}",
    ]
    if config.workers is not None:
        lines += [f"minWorkers: {config.workers}", f"maxWorkers: {config.workers}"]
    lines += [
        "handler:",
        f"  torch_threads: {config.torch_threads}",
        f"  metrics_interval_s: {config.metrics_interval_s}",
        "  # Containment limits: one request may not exceed these (README, Limits).",
        *(f"  {f.name}: {getattr(config.limits, f.name)}" for f in fields(config.limits)),
    ]
    return "\n".join(lines) + "\n"


def archive(config: ArchiveConfig) -> Path:
    """Build the archive; returns its path. The previous archive, if any, stays in place
    until the new one is complete."""
    from .handler.predictor import Predictor  # imports torch: only when archiving

    artifacts = Path(config.artifacts)
    try:
        schema = Schema.load(artifacts)
        Predictor(artifacts)  # refuse weights that do not load into the schema's network
    except (SchemaError, OSError, RuntimeError) as exc:
        raise ArchiveError(f"cannot archive {artifacts}: {exc}") from exc
    name = config.name or schema.name
    if not NAME_RE.match(name):
        raise ArchiveError(f"model name {name!r} must be letters, digits, '_', '.' or '-'")
    for value, what in ((config.batch_size, "batch size"), (config.max_batch_delay + 1, "delay")):
        if value < 1:
            raise ArchiveError(f"{what} must be positive")
    store = Path(config.model_store)
    store.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=store) as tmp:
        stage = Path(tmp) / "stage"
        pkg = stage / "extra" / PACKAGE_IN_MAR
        pkg.mkdir(parents=True)
        for src in Path(_handler_pkg.__file__).parent.glob("*.py"):
            shutil.copy2(src, pkg / src.name)
        shutil.copy2(artifacts / SCHEMA_FILE, stage / "extra" / SCHEMA_FILE)
        (stage / f"{ENTRY_MODULE}.py").write_text(ENTRY_SOURCE)
        (stage / "model-config.yaml").write_text(model_config_yaml(config))
        out = Path(tmp) / "out"
        out.mkdir()
        cmd = [
            sys.executable,
            "-m",
            "model_archiver.model_packaging",
            "--model-name",
            name,
            "--version",
            config.version,
            "--handler",
            str(stage / f"{ENTRY_MODULE}.py"),
            "--serialized-file",
            str(artifacts / schema.weights_file),
            "--extra-files",
            str(stage / "extra"),
            "--config-file",
            str(stage / "model-config.yaml"),
            "--export-path",
            str(out),
            "--force",
        ]
        # torch-model-archiver stages files in TMPDIR/<model name>: give each run its own.
        env = {**os.environ, "TMPDIR": tmp}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        built = out / f"{name}.mar"
        if proc.returncode != 0 or not built.is_file():
            raise ArchiveError(f"torch-model-archiver failed: {(proc.stderr or proc.stdout).strip()[-2000:]}")
        target = store / f"{name}.mar"
        os.replace(built, target)
    return target


def read_schema(mar: Path) -> Schema:
    """The schema inside an archive, read without unpacking or running anything."""
    try:
        with zipfile.ZipFile(mar) as z:
            return Schema.from_dict(json.loads(z.read(SCHEMA_FILE)))
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError, SchemaError) as exc:
        raise ArchiveError(f"{mar} is not a tabserve model archive: {exc}") from exc


def with_settings(mar: Path, out: Path, settings: dict[str, int]) -> Path:
    """Copy an archive with `settings` merged into its model-config.yaml."""
    import yaml

    tmp = out.with_name(out.name + ".tmp")
    with zipfile.ZipFile(mar) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "model-config.yaml":
                config = yaml.safe_load(data) or {}
                config.update(settings)
                data = yaml.safe_dump(config, sort_keys=False).encode()
            dst.writestr(item, data)
    os.replace(tmp, out)
    return out
