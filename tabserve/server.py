"""TorchServe's lifecycle: configure, start, wait until the models answer, stop.

Each server gets a run directory of its own (config, logs, key file, pid file), so several
servers on one machine never share state: TorchServe keeps its pid file in TMPDIR and writes
key_file.json to its working directory, and both are pointed into the run directory.

Nothing on the network can change what is served. Registering and deleting models are off
(enable_model_api=false), but TorchServe 0.12 has no setting that turns off worker scaling
(`PUT /models/NAME?min_worker=0` on the management API). So the management API listens on a
Unix socket in the server's private temporary folder (mode 0700): only the user who started the
server can reach it. TorchServe's gRPC management API cannot use a socket file and cannot be
turned off; it stays on 127.0.0.1 and needs the management key (key_file.json, mode 0600).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests

from .archive import read_schema, with_settings
from .errors import ArchiveError, ConfigError, ServerError
from .java import find_java_home

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The top-level config.properties of a source checkout (editable install). An installed wheel
# has none: then TorchServe's defaults apply under tabserve's overrides (addresses, auth on,
# model API off), unless --config / TABSERVE_CONFIG names a file.
DEFAULT_CONFIG = PROJECT_ROOT / "config.properties"
STATE_FILE = "server.json"
LOG_TAIL = 3000
# How often a starting server is asked whether it answers: the wait for it ends at most this
# long after it does.
READY_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class ServeConfig:
    """One TorchServe: where the models are, which to load, where it listens."""

    model_store: Path = Path("model_store")
    models: tuple[str, ...] = ()  # empty: every .mar in the store
    host: str = "127.0.0.1"
    port: int = 8080
    metrics_port: int | None = None  # None: port + 2 (port + 1 was management's)
    # TorchServe 0.12 always opens gRPC ports too (7070/7071 by default, which a second
    # server on the machine would collide with); tabserve does not use them and keeps them on
    # loopback. None: port + 3 and port + 4.
    grpc_ports: tuple[int, int] | None = None
    auth: bool = True
    config_file: Path = DEFAULT_CONFIG
    run_dir: Path | None = None  # None: .tabserve/run/<port>
    startup_timeout: float = 180.0
    extra_properties: dict[str, str] = field(default_factory=dict)
    # Override the archives' model-config.yaml at start-up (a container sets these from
    # TABSERVE_WORKERS, TABSERVE_BATCH_SIZE, TABSERVE_MAX_BATCH_DELAY). None: the archive's.
    workers: int | None = None
    batch_size: int | None = None
    max_batch_delay: int | None = None
    # Stop the server when this process dies, even by SIGKILL (the batch scorer's embedded
    # server); a server from `tabserve serve` outlives the command that started it.
    tied_to_owner: bool = False

    @property
    def ports(self) -> tuple[int, int]:
        """The TCP ports on `host`: inference and metrics."""
        return (self.port, self.metrics_port if self.metrics_port is not None else self.port + 2)

    @property
    def grpc(self) -> tuple[int, int]:
        """gRPC inference and management ports, on loopback."""
        return self.grpc_ports or (self.port + 3, self.port + 4)

    @property
    def directory(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path(".tabserve") / "run" / str(self.port)


def start_on_free_ports(model_store: Path, run_dir: Path, **settings: Any) -> TorchServe:
    """A TorchServe on free loopback ports (inference, metrics and both gRPC ports), started
    and answering: the scorer's embedded server, the tests' and the benches'. `settings` are
    ServeConfig's other fields. The caller stops it."""
    port, metrics, grpc_inference, grpc_management = free_ports(4)
    server = TorchServe(
        ServeConfig(
            model_store=Path(model_store),
            port=port,
            metrics_port=metrics,
            grpc_ports=(grpc_inference, grpc_management),
            run_dir=Path(run_dir),
            **settings,
        )
    )
    server.start()  # stops what it started if it fails
    return server


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct ports that were free a moment ago."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def read_properties(path: Path) -> list[tuple[str, str]]:
    """key=value lines of a Java properties file, comments dropped, order kept."""
    props = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, _, value = line.partition("=")
        props.append((key.strip(), value.strip()))
    return props


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def is_loopback(host: str) -> bool:
    """Whether an address to bind to is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def exposure_warning(config: ServeConfig, management_socket: Path) -> str | None:
    """What a server without token auth on a non-loopback address lets anyone do, or None."""
    if config.auth or is_loopback(config.host):
        return None
    inference, metrics = config.ports
    host = url_host(config.host)
    return (
        f"Warning: token auth is off (--no-auth) and the server listens on {config.host}: the "
        f"inference API on {host}:{inference} and the metrics on {host}:{metrics} answer anyone "
        "who can reach them, without a token. Model management is not exposed: its API listens "
        f"only on the Unix socket {management_socket} (this user only) and its gRPC API only on "
        f"127.0.0.1:{config.grpc[1]} (this machine only, no token needed there either)."
    )


class TorchServe:
    """A TorchServe process tree started by tabserve and owned by it."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.dir = config.directory.resolve()
        self.store = Path(config.model_store).resolve()
        self.process: subprocess.Popen | None = None
        self.tmp: Path | None = None
        self.models = self._resolve_models()

    def _resolve_models(self) -> tuple[str, ...]:
        if not self.store.is_dir():
            raise ConfigError(f"model store {self.store} does not exist; run tabserve archive first")
        available = sorted(p.stem for p in self.store.glob("*.mar"))
        if not self.config.models:
            if not available:
                raise ConfigError(f"no .mar archives in {self.store}; run tabserve archive first")
            return tuple(available)
        missing = [m for m in self.config.models if m not in available]
        if missing:
            raise ConfigError(
                f"model(s) {', '.join(missing)} not in {self.store} (found: {', '.join(available) or 'none'})"
            )
        return tuple(self.config.models)

    # --- URLs and token -----------------------------------------------------------------------

    @property
    def inference_url(self) -> str:
        host = "127.0.0.1" if self.config.host in ("0.0.0.0", "::") else self.config.host
        return f"http://{url_host(host)}:{self.config.ports[0]}"

    @property
    def metrics_url(self) -> str:
        host = "127.0.0.1" if self.config.host in ("0.0.0.0", "::") else self.config.host
        return f"http://{url_host(host)}:{self.config.ports[1]}/metrics"

    @property
    def key_file(self) -> Path:
        return self.dir / "key_file.json"

    @property
    def management_socket(self) -> Path | None:
        """The management API's Unix socket, in the private temp folder; None before start."""
        return self.tmp / "management.sock" if self.tmp else None

    def exposure_warning(self) -> str | None:
        assert self.management_socket is not None, "start the server first"
        return exposure_warning(self.config, self.management_socket)

    def token(self) -> str | None:
        """The current inference key, or None when auth is off."""
        if not self.config.auth:
            return None
        return read_inference_key(self.key_file)

    def headers(self) -> dict[str, str]:
        token = self.token()
        return {"Authorization": f"Bearer {token}"} if token else {}

    # --- lifecycle ----------------------------------------------------------------------------

    def write_config(self) -> Path:
        assert self.management_socket is not None, "the private temp folder comes first"
        inference, metrics = self.config.ports
        host = url_host(self.config.host)
        grpc = self.config.grpc
        overrides = {
            "inference_address": f"http://{host}:{inference}",
            "metrics_address": f"http://{host}:{metrics}",
            "model_store": str(self.store),
            "load_models": ",".join(f"{m}.mar" for m in self.models),
            "grpc_inference_port": str(grpc[0]),
            "grpc_management_port": str(grpc[1]),
            "disable_token_authorization": "false" if self.config.auth else "true",
            **self.config.extra_properties,
        }
        conf_file = self.config.config_file
        base = read_properties(conf_file) if conf_file and Path(conf_file).is_file() else []
        if conf_file and not Path(conf_file).is_file() and Path(conf_file) != DEFAULT_CONFIG:
            raise ConfigError(f"config file {conf_file} not found")
        merged = dict(base)
        merged.update(overrides)
        # Whatever the base file or extra_properties say, nothing on the network can change
        # what is served: no client registers code into the server (model API off), and the
        # management API, whose worker scaling cannot be turned off, is on a Unix socket that
        # only this user can reach (a socket needs TorchServe's native transport). gRPC cannot
        # use a socket file: both its APIs stay on loopback.
        merged["enable_model_api"] = "false"
        merged["management_address"] = f"unix:{self.management_socket}"
        merged["use_native_io"] = "true"
        merged["grpc_inference_address"] = "127.0.0.1"
        merged["grpc_management_address"] = "127.0.0.1"
        path = self.dir / "config.properties"
        path.write_text(
            "# Written by tabserve from "
            + str(self.config.config_file)
            + "\n"
            + "".join(f"{k}={v}\n" for k, v in merged.items())
        )
        return path

    def _apply_overrides(self) -> None:
        """Serve copies of the archives with the overridden settings in their
        model-config.yaml (which TorchServe prefers over config.properties' models=)."""
        settings = {
            k: v
            for k, v in (
                ("minWorkers", self.config.workers),
                ("maxWorkers", self.config.workers),
                ("batchSize", self.config.batch_size),
                ("maxBatchDelay", self.config.max_batch_delay),
            )
            if v is not None
        }
        if not settings:
            return
        store = self.dir / "store"
        store.mkdir(exist_ok=True)
        for m in self.models:
            with_settings(self.store / f"{m}.mar", store / f"{m}.mar", settings)
        self.store = store

    def start(self) -> None:
        """Start TorchServe in its own process group and return once every model answers."""
        java_home = find_java_home()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key_file.unlink(missing_ok=True)
        # TorchServe's pid file (Python's TMPDIR) and its workers' Unix sockets (Java's TEMP)
        # go in a short private folder: socket paths are limited to about 100 bytes, and two
        # servers sharing /tmp would find each other's pid file and sockets.
        # The management socket lives there too: mkdtemp makes the folder 0700, so only this
        # user can reach the management API.
        self.tmp = Path(tempfile.mkdtemp(prefix="tabserve-"))
        self._apply_overrides()
        conf = self.write_config()
        logs = self.dir / "logs"
        logs.mkdir(exist_ok=True)
        env = {
            **os.environ,
            "JAVA_HOME": str(java_home),
            "TMPDIR": str(self.tmp),
            "TEMP": str(self.tmp),
            "LOG_LOCATION": str(logs),
            "METRICS_LOCATION": str(logs),
        }
        env.pop("TS_CONFIG_FILE", None)
        torchserve = Path(sys.executable).parent / "torchserve"
        cmd = [
            str(torchserve) if torchserve.exists() else "torchserve",
            "--start",
            "--foreground",
            "--ncs",
            "--ts-config",
            str(conf),
            "--model-store",
            str(self.store),
        ]
        with open(logs / "launcher.log", "ab") as out:
            self.process = subprocess.Popen(
                cmd,
                cwd=self.dir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._write_state()
        if self.config.tied_to_owner:
            subprocess.Popen(
                [sys.executable, "-m", "tabserve.watchdog", str(os.getpid()), str(self.process.pid)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def _write_state(self) -> None:
        assert self.process is not None
        state = {
            "pid": self.process.pid,
            "inference_url": self.inference_url,
            "ports": list(self.config.ports),
            "management_socket": str(self.management_socket),
            "models": list(self.models),
            "key_file": str(self.key_file) if self.config.auth else None,
            "tmp": str(self.tmp),
        }
        (self.dir / STATE_FILE).write_text(json.dumps(state, indent=2))

    def log_tail(self) -> str:
        parts = []
        for name in ("launcher.log", "ts_log.log", "model_log.log"):
            p = self.dir / "logs" / name
            if p.is_file():
                parts.append(f"--- {p} ---\n" + p.read_text(errors="replace")[-LOG_TAIL:])
        return "\n".join(parts)

    def sample_row(self, model: str) -> dict[str, float | str] | None:
        """A row of training means to ask the model for, or None for an archive that is not
        tabserve's (then readiness is TorchServe's own /ping)."""
        try:
            schema = read_schema(self.store / f"{model}.mar")
        except ArchiveError:
            return None
        if not schema.columns:  # numbers only: the training means
            stats = schema.feature_stats
            return {
                f: float(stats.get(f, {}).get("mean", m)) for f, m in zip(schema.features, schema.scaler_mean)
            }
        # A row every model answers: the fill value of each numeric column, the first
        # category (or any text: OTHER) of each categorical one.
        return {
            c.name: (c.fill if c.fill is not None else 0.0)
            if c.role == "numeric"
            else (c.categories[0] if c.categories else "x")
            for c in schema.columns
        }

    def wait_ready(self) -> float:
        """Block until each model answers a real prediction (or, for archives that are not
        tabserve's, until /ping says Healthy); returns the seconds it took."""
        t0 = time.monotonic()
        deadline = t0 + self.config.startup_timeout
        pending = list(self.models)
        samples = {m: self.sample_row(m) for m in pending}
        while pending:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(
                    f"TorchServe exited with code {self.process.returncode} while starting\n"
                    + self.log_tail()
                )
            if time.monotonic() > deadline:
                raise ServerError(
                    f"TorchServe did not answer within {self.config.startup_timeout:.0f} s\n"
                    + self.log_tail()
                )
            model = pending[0]
            try:
                headers = self.headers()  # the key file appears (and is filled) during start-up
            except ServerError:
                time.sleep(READY_POLL_SECONDS)
                continue
            try:
                if samples[model] is None:
                    r = requests.get(f"{self.inference_url}/ping", headers=headers, timeout=10)
                    ready = r.status_code == 200 and r.json().get("status") == "Healthy"
                else:
                    r = requests.post(
                        f"{self.inference_url}/predictions/{model}",
                        json=samples[model],
                        headers=headers,
                        timeout=10,
                    )
                    ready = r.status_code == 200 and "predictions" in r.json()
                if ready:
                    pending.pop(0)
                    continue
            except (requests.RequestException, ValueError):
                pass
            time.sleep(READY_POLL_SECONDS)
        return time.monotonic() - t0

    def stop(self, timeout: float = 30.0, kill: bool = False) -> None:
        """Stop the whole process tree: frontend, workers and launcher. `kill`: at once, with
        SIGKILL, for a private server whose clients are done (a batch job's embedded server:
        TorchServe's own shutdown takes about 2.5 s and has nothing left to save)."""
        if self.process is None:
            return
        if kill:
            kill_tree(self.process.pid)
        else:
            stop_tree(self.process.pid, timeout=timeout)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.process = None
        _forget(self.dir, str(self.tmp) if self.tmp else None)

    def __enter__(self) -> TorchServe:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _forget(run_dir: Path, tmp: str | None) -> None:
    """Remove what a stopped server leaves: its state, its key file, its private temp folder."""
    (run_dir / STATE_FILE).unlink(missing_ok=True)
    (run_dir / "key_file.json").unlink(missing_ok=True)
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)


def read_inference_key(key_file: Path) -> str:
    """TorchServe's key_file.json: {"inference": {"key": ...}, "management": {...}, ...}."""
    try:
        data = json.loads(Path(key_file).read_text())
        return str(data["inference"]["key"])
    except FileNotFoundError as exc:
        raise ServerError(f"token file {key_file} not found") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise ServerError(f"{key_file} is not a TorchServe key file") from exc


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while (left := _alive(procs)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def kill_tree(pid: int) -> None:
    """SIGKILL the launcher `pid` and everything under it, and wait until they are gone."""
    try:
        launcher = psutil.Process(pid)
        procs = [launcher, *launcher.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    _wait_gone(procs, 5.0)


def stop_tree(pid: int, timeout: float = 30.0) -> None:
    """Stop the launcher `pid` and everything under it.

    SIGTERM goes to TorchServe's Java frontend first: it stops its workers and exits, and the
    launcher, its parent, reaps it and exits too. Whatever is left after `timeout` is killed.
    """
    try:
        launcher = psutil.Process(pid)
        procs = [launcher, *launcher.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    frontends = [p for p in procs[1:] if _name(p) == "java"] or procs
    for p in frontends:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _wait_gone(frontends, timeout)
    for p in _alive(procs):
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    for p in _wait_gone(procs, 5.0):
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def _name(p: psutil.Process) -> str:
    try:
        return p.name()
    except psutil.Error:
        return ""


def recorded_servers(root: Path = Path(".tabserve") / "run") -> list[Path]:
    return sorted(p for p in root.glob(f"*/{STATE_FILE}"))


def stop_recorded(
    ports: Sequence[int] = (), root: Path = Path(".tabserve") / "run", run_dir: Path | None = None
) -> list[str]:
    """Stop servers that `tabserve serve` left running: the one whose run directory is
    `run_dir`, or else those under `root` (the default run directories of this directory)."""
    stopped = []
    state_files = [Path(run_dir) / STATE_FILE] if run_dir else recorded_servers(root)
    for state_file in state_files:
        if not state_file.is_file():
            continue
        state = json.loads(state_file.read_text())
        if ports and state["ports"][0] not in ports:
            continue
        stop_tree(int(state["pid"]))
        _forget(state_file.parent, state.get("tmp"))
        stopped.append(state["inference_url"])
    return stopped
