"""Scoring engines: something that turns a chunk of CSV records into result lines.

Every engine takes the input's header line and a chunk of record texts, and returns one
`label,p_<class>...,error` (regression: `prediction,error`) line per record, in order, computed
by the archive's handler code (`tabserve.handler.rows` decides what a bad row is, everywhere),
with the handler's count of the categories in the chunk that training never saw (Results). A
chunk the engine refuses as a whole raises ChunkRefused, one it could not score raises
ServerError: the scorer (one place, `scorer.score_contained`) splits it to find the rows that
cause it.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import requests

from .errors import ChunkRefused, ConfigError, ServerError, TabserveError
from .handler.response import UNSEEN_HEADER, result_lines, unseen_counts
from .handler.rows import CSV_HEADER_HEADER, FIRST_ROW_HEADER

# TorchServe answers these when a worker is busy, restarting or out of memory: try again.
RETRY_STATUS = {408, 429, 500, 502, 503, 504, 507}
TOKEN_FAILURE = "Token Authorization failed"
# TorchServe 0.12's answer to POST /invocations without a model when it serves several.
MODEL_NAME_REQUIRED = "model_name is required"
_PREDICTIONS = re.compile(r"^(?P<prefix>.*?)/predictions/(?P<model>[^/]+)(?:/(?P<version>[^/]+))?/?$")


class Results(list[str]):
    """One result line per record of a chunk, and `unseen`: {column: count} of the categories
    in the answers they came from that training never saw (empty for an engine or an archive
    that does not report them)."""

    def __init__(self, lines: Iterable[str] = (), unseen: dict[str, int] | None = None) -> None:
        super().__init__(lines)
        self.unseen: dict[str, int] = dict(unseen or {})


def add_counts(total: dict[str, int], more: dict[str, int]) -> dict[str, int]:
    """Add `more` into `total` (in place); returns `total`."""
    for k, v in more.items():
        total[k] = total.get(k, 0) + v
    return total


class Engine(Protocol):
    def probe(self, header: str) -> list[str]:
        """Check the input's header against the model; returns the output columns."""

    def score(self, header: str, lines: list[str], first_row: int, retries: int | None = None) -> list[str]:
        """One result line per record in `lines` (Results, when the engine also reports the
        unseen categories of the answer; a plain list counts none). Raises ChunkRefused when
        the chunk is refused as a whole, ServerError when it could not be scored after
        `retries` tries (None: the engine's own setting)."""

    def alive(self, header: str) -> bool:
        """Whether the engine still answers (after a chunk failed): a failure is then the
        chunk's own, not the server's."""


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


def split_url(url: str, model: str | None = None) -> tuple[str, str | None, str | None]:
    """(base URL, model, version) from --url and --model: a URL that ends in
    /predictions/NAME or /predictions/NAME/VERSION names the model itself."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"--url must be an http(s) URL such as http://127.0.0.1:8080, got {url!r}")
    m = _PREDICTIONS.match(parts.path)
    if m is None:
        return url.rstrip("/"), model, None
    base = urlunsplit((parts.scheme, parts.netloc, m["prefix"], "", "")).rstrip("/")
    if model is not None and model != m["model"]:
        raise ConfigError(f"--url names model {m['model']!r} but --model says {model!r}: give one of them")
    return base, m["model"], m["version"]


def answer_text(r: requests.Response) -> str:
    """An answer's body as UTF-8, whatever its Content-Type says (requests would read a
    text/csv answer without a charset as ISO-8859-1)."""
    return r.content.decode("utf-8", errors="replace")


class TorchServeEngine:
    """Sends each chunk as one text/csv request and asks for text/csv back. Without a model
    it posts to /invocations, which TorchServe answers with its only model."""

    def __init__(
        self,
        url: str,
        model: str | None,
        tokens: TokenSource,
        timeout: float = 300.0,
        retries: int = 8,
        backoff: float = 0.5,
        version: str | None = None,
    ) -> None:
        self.base = url.rstrip("/")
        if model:
            self.endpoint = f"{self.base}/predictions/{model}" + (f"/{version}" if version else "")
        else:
            self.endpoint = f"{self.base}/invocations"
        self.model = model
        self.tokens = tokens
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.columns: list[str] = []
        self._local = threading.local()
        self._token = tokens.get()
        self._token_lock = threading.Lock()
        self._stopped = threading.Event()

    def stop(self) -> None:
        """The job is over (done, failed or interrupted): chunks still in flight stop retrying,
        so that the process can exit instead of waiting out their backoff."""
        self._stopped.set()

    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
        return s

    def _headers(self, first_row: int) -> dict[str, str]:
        h = {
            "Content-Type": "text/csv; charset=utf-8",
            "Accept": "text/csv",
            FIRST_ROW_HEADER: str(first_row),
            CSV_HEADER_HEADER: "present",
        }
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

    def _post(self, body: bytes, first_row: int, retries: int | None = None) -> requests.Response:
        """POST with retries for connection errors and busy or restarting servers."""
        retries = self.retries if retries is None else retries
        last = ""
        for attempt in range(retries + 1):
            if attempt:
                self._stopped.wait(min(self.backoff * 2 ** (attempt - 1), 10.0))
            if self._stopped.is_set():
                raise ServerError(f"the job stopped before {self.endpoint} answered")
            used = self._token
            try:
                r = self._session().post(
                    self.endpoint, data=body, headers=self._headers(first_row), timeout=self.timeout
                )
            except requests.RequestException as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if r.status_code in (400, 401) and TOKEN_FAILURE in answer_text(r):
                if self._refresh_token(used):
                    continue
                raise AuthError(
                    f"TorchServe at {self.endpoint} rejected the token ({r.status_code}): "
                    "give the inference token with --token, --token-file or TABSERVE_TOKEN"
                )
            if r.status_code in RETRY_STATUS:
                last = f"HTTP {r.status_code}: {answer_text(r).strip()[:300]}"
                continue
            return r
        raise ServerError(f"TorchServe at {self.endpoint} failed {retries + 1} times; last error: {last}")

    def probe(self, header: str, retries: int | None = None) -> list[str]:
        r = self._post((header + "\n").encode("utf-8"), 1, retries)
        if r.status_code != 200:
            message = _message(r)
            if self.model is None and MODEL_NAME_REQUIRED in message:
                raise ConfigError(f"the server at {self.base} serves several models: choose one with --model")
            if r.status_code == 404:
                raise ConfigError(f"TorchServe at {self.base} does not serve {self.endpoint}: {message}")
            raise ConfigError(f"TorchServe refused the input's columns: {message}")
        self.columns = _columns(answer_text(r), header, self.endpoint)
        return self.columns

    def alive(self, header: str) -> bool:
        if self._stopped.is_set():
            return False
        try:
            return self.probe(header, retries=min(self.retries, 4)) == self.columns
        except AuthError:
            raise
        except TabserveError:
            return False

    def score(self, header: str, lines: list[str], first_row: int, retries: int | None = None) -> Results:
        if not lines:
            return Results()
        body = (header + "\n" + "\n".join(lines) + "\n").encode("utf-8")
        r = self._post(body, first_row, retries)
        if r.status_code != 200:
            raise ChunkRefused(_message(r))
        try:
            results = result_lines(r.content.decode("utf-8"), len(lines))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ServerError(f"{self.endpoint}, chunk starting at row {first_row}: {exc}") from exc
        return Results(results, unseen_counts(r.headers.get(UNSEEN_HEADER)))


def _message(r: requests.Response) -> str:
    text = answer_text(r)
    try:
        return str(json.loads(text)["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {r.status_code}: {text.strip()[:300]}"


def _columns(answer: str, header: str, where: str) -> list[str]:
    """The output columns from the answer to a header-only request: label, p_<class>...,
    error (classification) or prediction, error (regression). A model that read the header
    as a data row (an archive whose handler predates the header flag) answers a row for it:
    then the header names none of the model's features."""
    lines = answer.rstrip("\n").split("\n")
    columns = next(csv.reader([lines[0]]), [])  # class labels may hold commas and quotes
    classifier = len(columns) >= 2 and columns[0] == "label" and columns[-1] == "error"
    if not (classifier or columns == ["prediction", "error"]):
        raise ServerError(f"{where} is not a tabserve model: it answered {answer[:200]!r}")
    if len(lines) > 1:
        error = lines[1].split(",", len(columns) - 1)[-1]
        raise ConfigError(
            f"the input's first line is not a header the model can read ({error}): "
            f"it names none of the model's features; header was {header[:200]!r}"
        )
    return columns


# --- the archive's handler, without a server -------------------------------------------------

LOCAL_PREFIX = "tabserve-local-"


class LocalEngine:
    """The archive's own handler code, unpacked from the .mar and run in this process: no
    server, the same decoding, model and encoding as TorchServe, the same bytes out.

    The archive is unpacked into a temporary folder named for this process
    (tabserve-local-PID-...), removed by close() or, if the process dies first, by the next
    run's remove_stale_local_dirs()."""

    def __init__(self, mar: Path, gpu_id: int | None = None) -> None:
        self._tmp = Path(tempfile.mkdtemp(prefix=f"{LOCAL_PREFIX}{os.getpid()}-"))
        try:
            local = load_archive_module(mar, self._tmp, "local")
            self.model = local.LocalModel(self._tmp, gpu_id=gpu_id)
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise
        self.handler = self.model.handler
        self.columns: list[str] = []

    def _call(self, body: str, first_row: int) -> tuple[int, str, dict[str, int]]:
        """(status, answer, unseen categories) of the handler for one text/csv body."""
        try:
            respond = getattr(self.model, "respond_csv", None)
            if respond is None:  # an archive from before the handler reported unseen categories
                return (*self.model.call_csv(body, first_row), {})
            answer = respond(body, first_row)
            return answer.status, answer.body, answer.unseen
        except Exception as exc:  # the handler failed on this body: the chunk's failure
            raise ServerError(
                f"the model's handler failed on the chunk starting at row {first_row}: "
                f"{type(exc).__name__}: {str(exc)[:300]}"
            ) from exc

    def probe(self, header: str) -> list[str]:
        status, out, _ = self._call(header + "\n", 1)
        if status != 200:
            raise ConfigError(f"the model refused the input's columns: {json.loads(out)['message']}")
        self.columns = _columns(out, header, "the archive's handler")
        return self.columns

    def alive(self, header: str) -> bool:
        return True  # in this process: a failure is always the chunk's own

    def score(self, header: str, lines: list[str], first_row: int, retries: int | None = None) -> Results:
        if not lines:
            return Results()
        status, out, unseen = self._call(header + "\n" + "\n".join(lines) + "\n", first_row)
        if status != 200:
            raise ChunkRefused(json.loads(out)["message"])
        try:
            return Results(result_lines(out, len(lines)), unseen)
        except ValueError as exc:
            raise ServerError(f"the archive's handler, chunk starting at row {first_row}: {exc}") from exc

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)


def remove_stale_local_dirs() -> list[Path]:
    """Remove the temporary folders of local-engine processes that are gone (killed before
    they could clean up); returns them."""
    import psutil

    removed = []
    for d in Path(tempfile.gettempdir()).glob(f"{LOCAL_PREFIX}*-*"):
        pid = d.name[len(LOCAL_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            alive = psutil.Process(int(pid)).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            alive = False
        except psutil.Error:
            alive = True  # another user's process, say: not ours to judge
        if not alive:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


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
    from multiprocessing.util import Finalize

    _worker = LocalEngine(Path(mar))
    # Pool workers leave through multiprocessing's exit path, which runs finalizers (not
    # atexit): remove the unpacked archive there. A killed worker's folder is removed by the
    # pool (close) or the next run.
    Finalize(_worker, _worker.close, exitpriority=10)


def _worker_probe(header: str) -> list[str]:
    assert _worker is not None
    return _worker.probe(header)


def _worker_score(header: str, lines: list[str], first_row: int) -> tuple[list[str], dict[str, int]]:
    """The result lines and the unseen-category counts of one chunk, as plain data."""
    assert _worker is not None
    results = _worker.score(header, lines, first_row)
    return list(results), results.unseen


class LocalPoolEngine:
    """LocalEngine in `processes` worker processes, one handler each, so decoding and
    encoding (Python code under the GIL) run on every core. The scorer's own process only
    reads, routes and writes, and never imports torch. A pool whose worker died (killed, out
    of memory) is replaced, and the chunks it had fail with ServerError."""

    def __init__(self, mar: Path, processes: int) -> None:
        self.mar = mar
        self.processes = processes
        self.columns: list[str] = []
        self._lock = threading.Lock()
        remove_stale_local_dirs()
        self._pool = self._start("fork")

    def _start(self, method: str):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # fork: the workers start in milliseconds, and the scorer has started no threads yet.
        # A replacement pool starts mid-job, beside the scorer's threads: from a fork server.
        return ProcessPoolExecutor(
            self.processes,
            mp_context=multiprocessing.get_context(method),
            initializer=_start_worker,
            initargs=(str(self.mar),),
        )

    def _run(self, fn, *args):
        from concurrent.futures.process import BrokenProcessPool

        pool = self._pool
        try:
            return pool.submit(fn, *args).result()
        except BrokenProcessPool as exc:
            with self._lock:
                if self._pool is pool:  # the first thread to see it replaces the pool
                    pool.shutdown(wait=True, cancel_futures=True)
                    remove_stale_local_dirs()
                    self._pool = self._start("forkserver")
            raise ServerError(f"a local worker process died: {exc}") from exc

    def probe(self, header: str) -> list[str]:
        self.columns = self._run(_worker_probe, header)
        return self.columns

    def alive(self, header: str) -> bool:
        try:
            return self.probe(header) == self.columns
        except TabserveError:
            return False

    def score(self, header: str, lines: list[str], first_row: int, retries: int | None = None) -> Results:
        if not lines:
            return Results()
        return Results(*self._run(_worker_score, header, lines, first_row))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        remove_stale_local_dirs()
