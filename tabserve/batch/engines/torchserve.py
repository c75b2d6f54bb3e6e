"""The TorchServe engine: each batch is one HTTP request to a TorchServe, answered in the
handler's binary batch form (an .npy array and a JSON trailer: no number is formatted or
parsed as text on either side). Without --url, a private TorchServe is started on free
loopback ports for the job (server.start_on_free_ports) and stopped when it ends."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import requests

from ...errors import ChunkRefused, ConfigError, ServerError, TabserveError
from ...handler.rows import CSV_HEADER_HEADER, FIRST_ROW_HEADER
from ..results import (
    BATCH_TYPE,
    PROFILE_HEADER,
    UNSEEN_HEADER,
    AnswerError,
    Results,
    from_batch,
    from_csv_answer,
    read_batch,
    unseen_counts,
)
from . import model_name

if TYPE_CHECKING:
    from ...scorer import ScoreConfig

# TorchServe answers these when a worker is busy, restarting or out of memory: try again.
RETRY_STATUS = {408, 429, 500, 502, 503, 504, 507}
TOKEN_FAILURE = "Token Authorization failed"
# TorchServe 0.12's answer to POST /invocations without a model when it serves several.
MODEL_NAME_REQUIRED = "model_name is required"
_PREDICTIONS = re.compile(r"^(?P<prefix>.*?)/predictions/(?P<model>[^/]+)(?:/(?P<version>[^/]+))?/?$")
# The embedded server is private (loopback, its own key file, gone when the job ends), so its
# keys may outlive any job instead of TorchServe's 60 minutes.
EMBEDDED_TOKEN_MINUTES = 60 * 24 * 365
# The embedded server's JVM (unless --config sets vmargs): a short-lived frontend that only
# passes bytes on does best without the C2 compiler and G1's threads, which compete with the
# workers for the cores. bench/jvm.py on 2 cores: start 2.6-3.2 s instead of 3.1-3.6 s, and
# 1M rows through a running server at 381-398k rows/s instead of 277-286k.
EMBEDDED_VMARGS = "-XX:+UseSerialGC -XX:TieredStopAtLevel=1"


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
        from ...server import read_inference_key

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
    """An answer's body as UTF-8, whatever its Content-Type says."""
    return r.content.decode("utf-8", errors="replace")


def open(config: ScoreConfig, stack: ExitStack) -> TorchServeEngine:  # noqa: A001 (the registry's name)
    """--url: that server; else a private TorchServe for this job (its start is timed:
    engine.started_in)."""
    if config.url:
        base, model, version = split_url(config.url, config.model)
        tokens = TokenSource(config.token, config.token_file)
        engine = TorchServeEngine(base, model, tokens, config.timeout, config.retries, version=version)
    else:
        t0 = time.monotonic()
        model = model_name(config)
        url, tokens = start_embedded(config, model, stack)
        engine = TorchServeEngine(url, model, tokens, config.timeout, config.retries)
        engine.started_in = time.monotonic() - t0
    stack.callback(engine.close)  # first as the job ends: before the embedded server stops
    return engine


def start_embedded(config: ScoreConfig, model: str, stack: ExitStack) -> tuple[str, TokenSource]:
    """A private TorchServe on free loopback ports, stopped when `stack` closes."""
    from ...server import read_properties, start_on_free_ports

    run_dir = Path(tempfile.mkdtemp(prefix="tabserve-score-"))
    stack.callback(shutil.rmtree, run_dir, True)
    extra = {"token_expiration_min": str(EMBEDDED_TOKEN_MINUTES)}
    if not any(key == "vmargs" for key, _ in read_properties(config.config_file)):
        extra["vmargs"] = EMBEDDED_VMARGS
    server = start_on_free_ports(
        Path(config.model_store),
        run_dir,
        models=(model,),
        auth=True,
        config_file=config.config_file,
        extra_properties=extra,
        tied_to_owner=True,
        # The scorer's requests are whole batches already, so server-side batching has
        # nothing to gain and would only add its delay and tie several batches to one worker.
        batch_size=1,
    )
    # Stopped with SIGKILL: a private server with nothing left to save once the job is over
    # (TorchServe's graceful shutdown would add about 2.5 s to every job).
    stack.callback(server.stop, kill=True)
    return server.inference_url, TokenSource(token_file=server.key_file)


class TorchServeEngine:
    """Sends each batch as one text/csv request and asks for the batch answer. Without a
    model it posts to /invocations, which TorchServe answers with its only model. An archive
    whose handler predates the batch answer is asked for text/csv instead."""

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
        self.accept = BATCH_TYPE
        # Ask the handler for the drift report's counts (PROFILE_HEADER); probe() keeps the
        # baseline its answer holds (None from a handler that predates the report).
        self.profile = False
        self.baseline: dict | None = None
        self.started_in: float | None = None  # seconds to start an embedded server
        self._local = threading.local()
        self._token = tokens.get()
        self._token_lock = threading.Lock()
        self._stopped = threading.Event()

    def close(self) -> None:
        """The job is over (done, failed or interrupted): batches still in flight stop
        retrying, so that the process can exit instead of waiting out their backoff."""
        self._stopped.set()

    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
        return s

    def _headers(self, first_row: int, profile: str = "rows") -> dict[str, str]:
        h = {
            "Content-Type": "text/csv; charset=utf-8",
            "Accept": self.accept,
            FIRST_ROW_HEADER: str(first_row),
            CSV_HEADER_HEADER: "present",
        }
        if self.profile or profile == "baseline":  # the baseline always (it names the model)
            h[PROFILE_HEADER] = profile
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

    def _post(
        self, body: bytes, first_row: int, retries: int | None = None, profile: str = "rows"
    ) -> requests.Response:
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
                    self.endpoint, data=body, headers=self._headers(first_row, profile), timeout=self.timeout
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

    def probe(self, header: bytes, retries: int | None = None) -> list[str]:
        r = self._post(header + b"\n", 1, retries, "baseline")
        if r.status_code != 200:
            message = _message(r)
            if self.model is None and MODEL_NAME_REQUIRED in message:
                raise ConfigError(f"the server at {self.base} serves several models: choose one with --model")
            if r.status_code == 404:
                raise ConfigError(f"TorchServe at {self.base} does not serve {self.endpoint}: {message}")
            raise ConfigError(f"TorchServe refused the input's columns: {message}")
        ctype = r.headers.get("Content-Type", "")
        if self.accept == BATCH_TYPE and ctype.startswith(BATCH_TYPE):
            try:
                answer = read_batch(r.content)
            except AnswerError as exc:
                raise ServerError(f"{self.endpoint} is not a tabserve model: {exc}") from exc
            self.columns, self.baseline = answer.columns, answer.baseline
            return self.columns
        if self.accept == BATCH_TYPE and "json" in ctype:
            # A handler from before the batch answer answers JSON: ask it for text/csv.
            self.accept = "text/csv"
            return self.probe(header, retries)
        self.columns = csv_columns(answer_text(r), header.decode("utf-8", "replace"), self.endpoint)
        return self.columns

    def alive(self, header: bytes) -> bool:
        if self._stopped.is_set():
            return False
        try:
            return self.probe(header, retries=min(self.retries, 4)) == self.columns
        except AuthError:
            raise
        except TabserveError:
            return False

    def score(self, body: bytes, n: int, first_row: int, retries: int | None = None) -> Results:
        r = self._post(body, first_row, retries)
        if r.status_code != 200:
            raise ChunkRefused(_message(r))
        unseen = unseen_counts(r.headers.get(UNSEEN_HEADER))
        try:
            if self.accept == BATCH_TYPE:
                return from_batch(r.content, n, unseen)
            return from_csv_answer(r.content.decode("utf-8"), n, self.columns, unseen)
        except (AnswerError, UnicodeDecodeError) as exc:
            raise ServerError(f"{self.endpoint}, batch starting at row {first_row}: {exc}") from exc


def _message(r: requests.Response) -> str:
    text = answer_text(r)
    try:
        return str(json.loads(text)["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {r.status_code}: {text.strip()[:300]}"


def csv_columns(answer: str, header: str, where: str) -> list[str]:
    """The output columns from a text/csv answer to a header-only request: label,
    p_<class>..., error (classification) or prediction, error (regression). A model that read
    the header as a data row (an archive whose handler predates the header flag) answers a
    row for it: then the header names none of the model's features."""
    import csv

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
