"""Scoring engines: something that turns a chunk of CSV records into result lines.

Every engine takes the input's header line and a chunk of record texts, and returns one
`label,p_<class>...,error` line per record, in order, computed by the archive's handler code
(`tabserve.handler.rows` decides what a bad row is, everywhere).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import requests

from .errors import ConfigError, ServerError
from .handler.response import refused_rows, result_lines
from .handler.rows import FIRST_ROW_HEADER

# TorchServe answers these when a worker is busy, restarting or out of memory: try again.
RETRY_STATUS = {408, 429, 500, 502, 503, 504, 507}
TOKEN_FAILURE = "Token Authorization failed"


class Engine(Protocol):
    def probe(self, header: str) -> list[str]:
        """Check the input's header against the model; returns the output columns."""

    def score(self, header: str, lines: list[str], first_row: int) -> list[str]:
        """One result line per record in `lines`."""


class AuthError(ServerError):
    """TorchServe rejected the token."""


@dataclass
class TokenSource:
    """A fixed token, or a file to read it from again whenever the server rejects it."""

    token: str | None = None
    token_file: Path | None = None

    def get(self) -> str | None:
        if self.token_file is None:
            return self.token
        from .server import read_inference_key

        try:
            return read_inference_key(self.token_file)
        except ServerError:
            # Not a TorchServe key file: a file holding just the token.
            try:
                return self.token_file.read_text().strip() or None
            except OSError as exc:
                raise ConfigError(f"cannot read token file {self.token_file}: {exc.strerror}") from exc

    @property
    def refreshable(self) -> bool:
        return self.token_file is not None


class TorchServeEngine:
    """Sends each chunk as one text/csv request and asks for text/csv back."""

    def __init__(
        self,
        url: str,
        model: str,
        tokens: TokenSource,
        timeout: float = 300.0,
        retries: int = 8,
        backoff: float = 0.5,
    ) -> None:
        self.endpoint = f"{url.rstrip('/')}/predictions/{model}"
        self.tokens = tokens
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.columns: list[str] = []
        self._local = threading.local()
        self._token = tokens.get()
        self._token_lock = threading.Lock()

    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
        return s

    def _headers(self, first_row: int) -> dict[str, str]:
        h = {"Content-Type": "text/csv", "Accept": "text/csv", FIRST_ROW_HEADER: str(first_row)}
        if self._token:
            h["Authorization"] = f"Bearer {self._token}"
        return h

    def _refresh_token(self, used: str | None) -> bool:
        """Re-read the token after a rejection; True if a different one is now in use."""
        if not self.tokens.refreshable:
            return False
        with self._token_lock:
            if self._token != used:
                return True  # another thread refreshed it already
            fresh = self.tokens.get()
            if fresh and fresh != used:
                self._token = fresh
                return True
            return False

    def _post(self, body: bytes, first_row: int) -> requests.Response:
        """POST with retries for connection errors and busy or restarting servers."""
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(self.backoff * 2 ** (attempt - 1), 10.0))
            used = self._token
            try:
                r = self._session().post(
                    self.endpoint, data=body, headers=self._headers(first_row), timeout=self.timeout
                )
            except requests.RequestException as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if r.status_code in (400, 401) and TOKEN_FAILURE in r.text:
                if self._refresh_token(used):
                    continue
                raise AuthError(
                    f"TorchServe at {self.endpoint} rejected the token ({r.status_code}): "
                    "give the inference token with --token, --token-file or TABSERVE_TOKEN"
                )
            if r.status_code in RETRY_STATUS:
                last = f"HTTP {r.status_code}: {r.text.strip()[:300]}"
                continue
            return r
        raise ServerError(
            f"TorchServe at {self.endpoint} failed {self.retries + 1} times; last error: {last}"
        )

    def probe(self, header: str) -> list[str]:
        r = self._post((header + "\n").encode("utf-8"), 1)
        if r.status_code != 200:
            raise ConfigError(f"TorchServe refused the input's columns: {_message(r)}")
        self.columns = r.text.split("\n", 1)[0].split(",")
        if not self.columns or self.columns[0] != "label" or self.columns[-1] != "error":
            raise ServerError(f"{self.endpoint} is not a tabserve model: it answered {r.text[:200]!r}")
        return self.columns

    def score(self, header: str, lines: list[str], first_row: int) -> list[str]:
        if not lines:
            return []
        body = (header + "\n" + "\n".join(lines) + "\n").encode("utf-8")
        r = self._post(body, first_row)
        if r.status_code != 200:
            # The whole chunk was refused (for example too large): every row says why.
            return refused_rows(first_row, len(lines), _message(r), len(self.columns) - 2)
        try:
            return result_lines(r.text, len(lines))
        except ValueError as exc:
            raise ServerError(f"{self.endpoint}, chunk starting at row {first_row}: {exc}") from exc


def _message(r: requests.Response) -> str:
    try:
        return str(r.json().get("message", r.text))
    except ValueError:
        return f"HTTP {r.status_code}: {r.text.strip()[:300]}"


class LocalEngine:
    """The archive's own handler code, unpacked from the .mar and run in this process: no
    server, the same decoding, model and encoding as TorchServe, the same bytes out."""

    def __init__(self, mar: Path, gpu_id: int | None = None) -> None:
        import shutil
        import tempfile

        self._tmp = Path(tempfile.mkdtemp(prefix="tabserve-local-"))
        try:
            local = load_archive_module(mar, self._tmp, "local")
            self.model = local.LocalModel(self._tmp, gpu_id=gpu_id)
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise
        self.handler = self.model.handler
        self.columns: list[str] = []

    def probe(self, header: str) -> list[str]:
        status, out = self.model.call_csv(header + "\n")
        if status != 200:
            raise ConfigError(f"the model refused the input's columns: {json.loads(out)['message']}")
        self.columns = out.split("\n", 1)[0].split(",")
        return self.columns

    def score(self, header: str, lines: list[str], first_row: int) -> list[str]:
        if not lines:
            return []
        status, out = self.model.call_csv(header + "\n" + "\n".join(lines) + "\n", first_row)
        if status != 200:
            return refused_rows(first_row, len(lines), json.loads(out)["message"], len(self.columns) - 2)
        return result_lines(out, len(lines))

    def close(self) -> None:
        import shutil

        shutil.rmtree(self._tmp, ignore_errors=True)


def load_archive_module(mar: Path, into: Path, module: str):
    """Unpack `mar` into `into` and import `module` of the archive's handler package under a
    package name of its own, so two archives in one process never share modules."""
    import importlib
    import importlib.util
    import sys
    import zipfile

    try:
        with zipfile.ZipFile(mar) as z:
            z.extractall(into)
        pkg_dir = Path(into) / "tabserve_handler"
        name = f"tabserve_handler_{abs(hash(str(into)))}"
        spec = importlib.util.spec_from_file_location(
            name, pkg_dir / "__init__.py", submodule_search_locations=[str(pkg_dir)]
        )
        if spec is None or spec.loader is None:
            raise ImportError("no tabserve_handler package")
        package = importlib.util.module_from_spec(spec)
        sys.modules[name] = package
        spec.loader.exec_module(package)
        return importlib.import_module(f"{name}.{module}")
    except (OSError, KeyError, zipfile.BadZipFile, ImportError) as exc:
        raise ConfigError(f"cannot load the handler from {mar}: {exc}") from exc


_worker: LocalEngine | None = None


def _start_worker(mar: str) -> None:
    global _worker
    _worker = LocalEngine(Path(mar))


def _worker_probe(header: str) -> list[str]:
    assert _worker is not None
    return _worker.probe(header)


def _worker_score(header: str, lines: list[str], first_row: int) -> list[str]:
    assert _worker is not None
    return _worker.score(header, lines, first_row)


class LocalPoolEngine:
    """LocalEngine in `processes` worker processes, one handler each, so decoding and
    encoding (Python code under the GIL) run on every core. The scorer's own process only
    reads, routes and writes, and never imports torch."""

    def __init__(self, mar: Path, processes: int) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # fork: the workers start in milliseconds; the scorer has started no threads yet.
        self._pool = ProcessPoolExecutor(
            processes,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_start_worker,
            initargs=(str(mar),),
        )
        self.columns: list[str] = []

    def probe(self, header: str) -> list[str]:
        self.columns = self._pool.submit(_worker_probe, header).result()
        return self.columns

    def score(self, header: str, lines: list[str], first_row: int) -> list[str]:
        if not lines:
            return []
        return self._pool.submit(_worker_score, header, lines, first_row).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
