"""The local engine: the archive's own handler, unpacked from the .mar, in worker processes
(one handler each, so decoding runs on every core); no server, the same decoding, model and
answer as TorchServe. The scorer's process only reads, routes and writes, and never imports
torch."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import ChunkRefused, ConfigError, ServerError, TabserveError
from ..results import HandlerFailed, Results, call_handler, load_handler_module, read_batch
from . import archive_path

if TYPE_CHECKING:
    from ...scorer import ScoreConfig

LOCAL_PREFIX = "tabserve-local-"


def open(config: ScoreConfig, stack: ExitStack) -> LocalPoolEngine:  # noqa: A001 (the registry's name)
    engine = LocalPoolEngine(archive_path(config), config.concurrency or os.cpu_count() or 1)
    stack.callback(engine.close)
    return engine


class LocalEngine:
    """The archive's handler in this process.

    The archive is unpacked into a temporary folder named for this process
    (tabserve-local-PID-...), removed by close() or, if the process dies first, by the next
    run's remove_stale_local_dirs()."""

    def __init__(self, mar: Path, gpu_id: int | None = None) -> None:
        self.profile = False  # ask for the drift report's counts (handler/profile.py)
        self.baseline: dict | None = None  # the report's baseline, from probe()
        self._tmp = Path(tempfile.mkdtemp(prefix=f"{LOCAL_PREFIX}{os.getpid()}-"))
        try:
            local = load_archive_module(mar, self._tmp, "local")
            self.model = local.LocalModel(self._tmp, gpu_id=gpu_id)
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise
        self.handler = self.model.handler
        self.columns: list[str] = []

    def _call(self, body: bytes, n: int, first_row: int) -> tuple[int, Results | str]:
        try:
            return call_handler(self.model, body, n, first_row, self.profile)
        except HandlerFailed as exc:
            raise ServerError(str(exc)) from exc

    def probe(self, header: bytes) -> list[str]:
        respond = getattr(self.model, "respond", None)
        if respond is None:  # an archive from before the batch answer
            from ..results import csv_answer
            from .torchserve import csv_columns

            answer = csv_answer(self.model, header.decode("utf-8") + "\n", 1)
            if answer.status != 200:
                raise ConfigError(f"the model refused the input's columns: {_message(answer.body)}")
            self.columns = csv_columns(answer.body, header.decode("utf-8"), "the archive's handler")
            return self.columns
        from ..results import BATCH_TYPE, takes_profile

        if takes_profile(self.model):  # the baseline always (it names the model)
            answer = respond(header + b"\n", 1, accept=BATCH_TYPE, profile="baseline")
        else:
            answer = respond(header + b"\n", 1, accept=BATCH_TYPE)
        if answer.status != 200:
            raise ConfigError(f"the model refused the input's columns: {_message(answer.body)}")
        read = read_batch(answer.body)
        self.columns, self.baseline = read.columns, read.baseline
        return self.columns

    def alive(self, header: bytes) -> bool:
        return True  # in this process: a failure is always the batch's own

    def score(self, body: bytes, n: int, first_row: int, retries: int | None = None) -> Results:
        status, results = self._call(body, n, first_row)
        if status != 200:
            raise ChunkRefused(str(results))
        assert isinstance(results, Results)
        return results

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)


def _message(body: Any) -> str:
    from ..results import message_of

    return message_of(body)


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
    """results.load_handler_module, its failures as ConfigError."""
    import zipfile

    try:
        return load_handler_module(mar, into, module)
    except (OSError, KeyError, zipfile.BadZipFile, ImportError) as exc:
        raise ConfigError(f"cannot load the handler from {mar}: {exc}") from exc


_worker: LocalEngine | None = None


def _start_worker(mar: str) -> None:
    global _worker
    import signal
    from multiprocessing.util import Finalize

    # Ctrl-C reaches the terminal's whole process group, and a forked worker inherits the
    # CLI's handler, which raises KeyboardInterrupt: in a worker sending back its answer that
    # left the pool (and the job) hung. The scorer stops the pool; a worker only ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent()
    _worker = LocalEngine(Path(mar))
    # Pool workers leave through multiprocessing's exit path, which runs finalizers (not
    # atexit): remove the unpacked archive there. A killed worker's folder is removed by the
    # pool (close) or the next run.
    Finalize(_worker, _worker.close, exitpriority=10)


def _die_with_parent(every: float = 0.5) -> None:
    """End this worker when the scorer that started it is gone (killed with SIGKILL, say: it
    cannot shut its pool down then), so no worker outlives the job. Its unpacked archive is
    removed by the next run's remove_stale_local_dirs()."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(every)
            if os.getppid() != parent:  # re-parented: the scorer is gone
                os._exit(1)

    threading.Thread(target=watch, name="tabserve-parent-watch", daemon=True).start()


def _worker_probe(header: bytes, profile: bool = False) -> tuple[list[str], dict | None]:
    assert _worker is not None
    _worker.profile = profile
    return _worker.probe(header), _worker.baseline


def _worker_score(body: bytes, n: int, first_row: int, profile: bool = False) -> Results:
    assert _worker is not None
    _worker.profile = profile
    return _worker.score(body, n, first_row)


class LocalPoolEngine:
    """LocalEngine in `processes` worker processes. A pool whose worker died (killed, out of
    memory) is replaced, and the batches it had fail with ServerError."""

    def __init__(self, mar: Path, processes: int) -> None:
        self.mar = mar
        self.processes = processes
        self.profile = False  # ask for the drift report's counts (the scorer sets it)
        self.baseline: dict | None = None
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

    def probe(self, header: bytes) -> list[str]:
        self.columns, self.baseline = self._run(_worker_probe, header, self.profile)
        return self.columns

    def alive(self, header: bytes) -> bool:
        try:
            return self.probe(header) == self.columns
        except TabserveError:
            return False

    def score(self, body: bytes, n: int, first_row: int, retries: int | None = None) -> Results:
        return self._run(_worker_score, body, n, first_row, self.profile)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        remove_stale_local_dirs()
