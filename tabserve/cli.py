"""The `tabserve` command: train -> archive -> serve -> score.

`main(argv) -> int` does the work and is what tests call; `console_main` is the console entry.
Every option a container needs to set also reads an environment variable (TABSERVE_*).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from . import __version__
from .errors import TabserveError


def env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"TABSERVE_{name}", default)


def env_flag(name: str) -> bool:
    return (env(name, "") or "").lower() in ("1", "true", "yes", "on")


def env_int(name: str, default: int | None) -> int | None:
    value = env(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise TabserveError(f"TABSERVE_{name} must be an integer, got {value!r}") from None


# --- train ------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .train.config import FitConfig
    from .train.data import load_builtin, load_csv
    from .train.export import export
    from .train.fit import fit

    if args.csv and not args.target:
        raise TabserveError("--csv needs --target COLUMN (the column to predict)")
    csv_only = {
        "--target": args.target,
        "--task": args.task,
        "--categorical": args.categorical,
        "--drop": args.drop,
        "--keep": args.keep,
    }
    if not args.csv:
        given = [flag for flag, value in csv_only.items() if value]
        if given:
            raise TabserveError(
                f"{', '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} with --csv PATH"
            )
    if args.csv:
        data = load_csv(
            Path(args.csv),
            args.target,
            args.name,
            task=args.task,
            categorical=args.categorical or (),
            drop=args.drop or (),
            keep=args.keep or (),
            max_categories=args.max_categories,
            missing=args.missing,
        )
    else:
        data = load_builtin(args.dataset)
        if args.name:
            data = type(data)(**{**data.__dict__, "name": args.name})
        if args.missing != "impute":
            data = type(data)(**{**data.__dict__, "missing": args.missing})
    try:
        config = FitConfig(
            hidden=tuple(args.hidden),
            epochs=args.epochs,
            lr=args.lr,
            batch_size=None if args.batch_size == "auto" else _positive_int(args.batch_size, "--batch-size"),
            seed=args.seed,
            patience=args.patience,
            class_weight=args.class_weight,
        )
    except ValueError as exc:
        raise TabserveError(str(exc)) from exc
    for note in data.notes:
        print(note)
    roles = ", ".join(f"{f} ({r})" for f, r in zip(data.features, data.roles))
    print(f"columns: {roles}")
    out = Path(args.out) if args.out else Path("artifacts") / data.name
    # A progress bar on a terminal only (tqdm draws it; nothing when stderr is piped).
    bar = tqdm(total=config.epochs, unit=" epochs", disable=not sys.stderr.isatty(), leave=False)

    def on_epoch(epoch: int, n: int, loss: float) -> None:
        bar.update(epoch - bar.n)
        bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)

    result = fit(data, config, on_epoch=on_epoch)
    bar.close()
    export(data, config, result, out)
    m = result.metrics
    if data.task == "classification":
        scores = (
            f"{len(data.classes)} classes; train accuracy {m['train_accuracy']:.4f}, "
            f"test accuracy {m['test_accuracy']:.4f}"
        )
    else:
        scores = f"regression; test RMSE {m['test_rmse']:.4g}, MAE {m['test_mae']:.4g}, R2 {m['test_r2']:.4f}"
    print(
        f"trained {data.name}: {len(data.y)} rows, {len(data.features)} features, {scores} "
        f"(best epoch {m['best_epoch']} of {m['epochs_run']}); wrote {out}"
    )
    return 0


def _positive_int(value: str, flag: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise TabserveError(f"{flag} must be a whole number or auto, got {value!r}") from None
    if n < 1:
        raise TabserveError(f"{flag} must be at least 1, got {n}")
    return n


# --- describe ---------------------------------------------------------------------------------


def cmd_describe(args: argparse.Namespace) -> int:
    from .describe import describe

    print(describe(Path(args.path)), end="")
    return 0


# --- export -----------------------------------------------------------------------------------


def cmd_export_oci(args: argparse.Namespace) -> int:
    from .export import ArtifactConfig, export_oci_artifact

    out = export_oci_artifact(
        ArtifactConfig(
            out=args.out,
            mar=args.mar,
            artifacts=args.artifacts,
            conda_env=args.conda_env,
            gpu=args.gpu,
            answer=args.answer,
            python_version=args.python_version,
        )
    )
    print(f"wrote {out}: an OCI Data Science model artifact (score.py, runtime.yaml, the handler)")
    return 0


# --- archive ----------------------------------------------------------------------------------


def cmd_archive(args: argparse.Namespace) -> int:
    from .archive import ArchiveConfig, archive
    from .handler.rows import Limits

    try:
        limits = Limits.from_settings(
            {
                "max_rows": args.max_rows,
                "max_depth": args.max_depth,
                "max_field_bytes": args.max_field_bytes,
                "max_answer_bytes": args.max_answer_bytes,
            }
        )
    except ValueError as exc:
        raise TabserveError(str(exc).replace("handler setting ", "--").replace("_", "-")) from exc
    config = ArchiveConfig(
        artifacts=Path(args.artifacts),
        name=args.name,
        version=args.version,
        model_store=Path(args.model_store),
        batch_size=args.batch_size,
        max_batch_delay=args.max_batch_delay,
        workers=args.workers,
        response_timeout=args.response_timeout,
        limits=limits,
    )
    path = archive(config)
    print(f"wrote {path}")
    return 0


# --- serve / stop -----------------------------------------------------------------------------


def serve_config(args: argparse.Namespace):
    from .server import ServeConfig

    return ServeConfig(
        model_store=Path(args.model_store),
        models=tuple(args.model or ()),
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port,
        auth=not args.no_auth,
        config_file=Path(args.config),
        run_dir=Path(args.run_dir) if args.run_dir else None,
        workers=args.workers,
        batch_size=args.batch_size,
        max_batch_delay=args.max_batch_delay,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    import time

    from .server import TorchServe

    server = TorchServe(serve_config(args))
    t0 = time.monotonic()
    server.start()
    warning = server.exposure_warning()
    if warning:
        print(warning, file=sys.stderr)
    # The commands that find this server again: by its run directory when it was given.
    where = f"--run-dir {args.run_dir}" if args.run_dir else f"--port {server.config.port}"
    print(f"TorchServe ready in {time.monotonic() - t0:.1f} s")
    for model in server.models:
        print(f"  predictions: {server.inference_url}/predictions/{model}")
    print(f"  metrics:     {server.metrics_url}")
    if server.config.auth:
        print(f'  token:       "inference" key in {server.key_file}')
        print(f'               (curl -H "Authorization: Bearer $(tabserve token {where})" ...)')
    else:
        print("  token:       none (--no-auth)")
    print(f"  management:  Unix socket {server.management_socket} (this user only)")
    print(f"  logs:        {server.dir / 'logs'}")
    if not args.foreground:
        print(f"stop it with: tabserve stop {where}")
        server.process = None  # leave it running, detached; `tabserve stop` finds it
        return 0
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    try:
        while not stopped.is_set() and server.process is not None and server.process.poll() is None:
            stopped.wait(1.0)
    finally:
        code = server.process.poll() if server.process else None
        server.stop()
    if code not in (None, 0):
        raise TabserveError(f"TorchServe exited with code {code}; logs in {server.dir / 'logs'}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from .server import stop_recorded

    run_dir = Path(args.run_dir) if args.run_dir else None
    stopped = stop_recorded(tuple(args.port or ()), run_dir=run_dir)
    if not stopped:
        where = f"with run directory {run_dir}" if run_dir else "from this directory"
        print(f"no tabserve-started TorchServe is running {where}")
        return 0
    for url in stopped:
        print(f"stopped {url}")
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 when TorchServe answers /ping as Healthy (the container's HEALTHCHECK)."""
    import requests

    from .server import ServeConfig, read_inference_key

    run_dir = Path(args.run_dir) if args.run_dir else ServeConfig(port=args.port).directory
    key_file = run_dir / "key_file.json"
    headers = {"Authorization": f"Bearer {read_inference_key(key_file)}"} if key_file.exists() else {}
    try:
        r = requests.get(f"http://127.0.0.1:{args.port}/ping", headers=headers, timeout=5)
        healthy = r.status_code == 200 and r.json().get("status") == "Healthy"
    except (requests.RequestException, ValueError) as exc:
        raise TabserveError(f"TorchServe on port {args.port} does not answer: {exc}") from exc
    if not healthy:
        raise TabserveError(f"TorchServe on port {args.port} is not healthy: {r.status_code} {r.text[:200]}")
    print("healthy")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from .server import ServeConfig, read_inference_key

    run_dir = Path(args.run_dir) if args.run_dir else ServeConfig(port=args.port).directory
    print(read_inference_key(run_dir / "key_file.json"))
    return 0


# --- score ------------------------------------------------------------------------------------


def cmd_score(args: argparse.Namespace) -> int:
    from .scorer import ScoreConfig, score

    config = ScoreConfig(
        input=args.input,
        output=args.output,
        url=args.url,
        model=args.model,
        token=args.token,
        token_file=Path(args.token_file) if args.token_file else None,
        model_store=Path(args.model_store),
        chunk_rows=args.chunk_rows,
        concurrency=args.concurrency,
        resume=args.resume,
        max_errors=args.max_errors,
        config_file=Path(args.config),
        retries=args.retries,
        engine=args.engine,
        master=args.master,
        partitions=args.partitions,
        multiline=args.multiline,
        max_record_bytes=args.max_record_bytes,
        input_format=args.input_format,
        output_format=args.format,
        report=not args.no_report,
        fail_on_drift=args.fail_on_drift,
    )
    # SIGTERM (a container stop, a job runner's timeout) ends the job like Ctrl-C: the
    # embedded server is stopped and the partial output kept for --resume. Once every row is
    # written the job has succeeded: an interrupt from then on (the final rename, the summary)
    # is ignored, so it cannot turn a finished job into a failed one.
    committed = threading.Event()

    def interrupt(signum: int, frame: object) -> None:
        if not committed.is_set():
            raise KeyboardInterrupt

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = score(config, on_commit=committed.set)
        out = sys.stderr if config.output == "-" else sys.stdout
        print(result.summary(), file=out)
        for line in result.report_lines():
            print(line, file=out)
        if result.errors:
            print(f"{result.errors:,} rows have errors: see the error column", file=sys.stderr)
        return result.exit_code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_report(args: argparse.Namespace) -> int:
    from .batch import report
    from .errors import ConfigError

    try:
        data = report.load(args.path)
    except report.ReportError as exc:
        raise ConfigError(str(exc)) from exc
    print(report.summary(data))
    for line in report.drift_lines(data):
        print(line)
    return report.DRIFT_EXIT if args.fail_on_drift and report.drifted(data) else 0


def _score_usage_error(message: str) -> NoReturn:
    """argparse's error() for `score`: its exit code 2 means "finished, some rows have
    errors", so a bad option is one `Error:` line and exit 1, like every other failure."""
    raise TabserveError(f"{message} (see tabserve score --help)")


# --- parser -----------------------------------------------------------------------------------


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Ends each option's help with its default: `(default: 8080)`, `(default: 50 50)`, `(default:
    off)` for a flag, merged with a trailing `(TABSERVE_...)` into `(default: 8080; TABSERVE_PORT)`.
    Help that already names its default, and options without one, are left as they are. A
    default read from a TABSERVE_* variable shows as the value it gives."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if not action.option_strings or default in (None, argparse.SUPPRESS) or "default" in text:
            return text
        if isinstance(default, bool):
            shown = "on" if default else "off"
        elif isinstance(default, (list, tuple)):
            shown = " ".join(map(str, default)).replace("%", "%%")
        else:
            shown = "%(default)s"
        head, sep, variable = text.rpartition(" (TABSERVE_")
        if sep and variable.endswith(")"):
            return f"{head} (default: {shown}; TABSERVE_{variable}"
        return f"{text} (default: {shown})".strip()


def build_parser() -> argparse.ArgumentParser:
    from .handler.rows import Limits
    from .train.config import CLASS_WEIGHTS, EPOCHS, HIDDEN, LR, PATIENCE, SEED
    from .train.data import BUILTIN, MAX_CATEGORIES, MISSING_POLICIES

    LIMITS = Limits()  # noqa: N806 (the handler's defaults, shown in archive --help)

    p = argparse.ArgumentParser(prog="tabserve", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"tabserve {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    helpful = {"formatter_class": DefaultsHelpFormatter}
    t = sub.add_parser("train", help="train the MLP and export weights + schema.json", **helpful)
    t.add_argument(
        "--dataset", choices=BUILTIN, default=env("DATASET", "iris"), help="a bundled scikit-learn data set"
    )
    t.add_argument("--csv", help="train on this CSV instead (with --target)")
    t.add_argument("--target", help="the CSV column to predict (class labels or numbers)")
    t.add_argument(
        "--task",
        choices=("classification", "regression"),
        help="default: classification when the target is text or at most 20 distinct integers, "
        "else regression",
    )
    t.add_argument(
        "--categorical", action="append", metavar="COL", help="read this column as categories (repeatable)"
    )
    t.add_argument("--drop", action="append", metavar="COL", help="leave this column out (repeatable)")
    t.add_argument(
        "--keep",
        action="append",
        metavar="COL",
        help="use this column although it looks like an identifier (repeatable)",
    )
    t.add_argument(
        "--max-categories",
        type=int,
        default=MAX_CATEGORIES,
        help="refuse a categorical column with more distinct values",
    )
    t.add_argument(
        "--missing",
        choices=MISSING_POLICIES,
        default="impute",
        help="impute: missing values are filled (median or a missing category); error: they are row errors",
    )
    t.add_argument(
        "--class-weight", choices=CLASS_WEIGHTS, default="none", help="balanced: weigh classes by 1/frequency"
    )
    t.add_argument("--name", help="model name (default: the dataset or CSV file name)")
    t.add_argument("--out", help="artifacts folder (default: artifacts/NAME)")
    t.add_argument(
        "--hidden",
        type=int,
        nargs="+",
        default=list(HIDDEN),
        metavar="N",
        help=f"hidden layer widths (default: {' '.join(map(str, HIDDEN))})",
    )
    t.add_argument(
        "--epochs", type=int, default=EPOCHS, help="at most this many passes over the training split"
    )
    t.add_argument("--lr", type=float, default=LR, help="Adam's learning rate")
    t.add_argument(
        "--batch-size",
        default="auto",
        help="rows per optimiser step; auto: 16, or 1%% of the training rows (at most 512) on large tables",
    )
    t.add_argument(
        "--patience",
        type=int,
        default=PATIENCE,
        help="stop after this many epochs without a better validation loss",
    )
    t.add_argument(
        "--seed", type=int, default=SEED, help="split and initialisation; same seed and data, same weights"
    )
    t.set_defaults(func=cmd_train)

    d = sub.add_parser(
        "describe", help="print a model's columns, roles, missing-value handling and metrics", **helpful
    )
    d.add_argument("path", help="an artifacts folder (tabserve train --out) or a .mar archive")
    d.set_defaults(func=cmd_describe)

    a = sub.add_parser(
        "archive", help="bundle artifacts and the handler into MODEL_STORE/NAME.mar", **helpful
    )
    a.add_argument("--artifacts", required=True, help="folder written by tabserve train")
    a.add_argument("--name", help="model name (default: the schema's)")
    a.add_argument("--version", default="1.0", help="model version, answered with every prediction")
    a.add_argument(
        "--model-store",
        default=env("MODEL_STORE", "model_store"),
        help="folder the .mar is written to (TABSERVE_MODEL_STORE)",
    )
    a.add_argument("--batch-size", type=int, default=32, help="server-side batch size")
    a.add_argument("--max-batch-delay", type=int, default=5, help="ms to wait to fill a batch")
    a.add_argument(
        "--workers",
        type=int,
        default=None,
        help="workers per model (default: TorchServe's, one per CPU core or GPU)",
    )
    a.add_argument(
        "--response-timeout", type=int, default=120, help="seconds TorchServe waits for a worker's answer"
    )
    a.add_argument(
        "--max-rows", type=int, default=LIMITS.max_rows, help="rows per request; more is answered 413"
    )
    a.add_argument("--max-depth", type=int, default=LIMITS.max_depth, help="JSON nesting of a request")
    a.add_argument(
        "--max-field-bytes", type=int, default=LIMITS.max_field_bytes, help="length of one CSV field"
    )
    a.add_argument(
        "--max-answer-bytes",
        type=int,
        default=LIMITS.max_answer_bytes,
        help="largest answer; keep it under max_response_size in config.properties (413 beyond it)",
    )
    a.set_defaults(func=cmd_archive)

    def server_options(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--model-store",
            default=env("MODEL_STORE", "model_store"),
            help="folder of .mar archives (TABSERVE_MODEL_STORE)",
        )
        sp.add_argument(
            "--model",
            action="append",
            default=None,
            metavar="NAME",
            help="model to load (repeatable; default: every archive in the store)",
        )
        sp.add_argument(
            "--host",
            default=env("HOST", "127.0.0.1"),
            help="address of the inference and metrics APIs; management never leaves this "
            "machine (TABSERVE_HOST)",
        )
        sp.add_argument(
            "--port",
            type=int,
            default=env_int("PORT", 8080),
            help="inference port; gRPC (loopback) uses PORT+3 and PORT+4 (TABSERVE_PORT)",
        )
        sp.add_argument(
            "--metrics-port",
            type=int,
            default=env_int("METRICS_PORT", None),
            help="Prometheus metrics port (default: PORT+2; TABSERVE_METRICS_PORT)",
        )
        sp.add_argument(
            "--no-auth",
            action="store_true",
            default=env_flag("NO_AUTH"),
            help="turn TorchServe's token auth off, only behind a gateway that authenticates "
            "(TABSERVE_NO_AUTH=1)",
        )
        sp.add_argument(
            "--config",
            default=env("CONFIG", str(_default_config())),
            help="base TorchServe config.properties (TABSERVE_CONFIG)",
        )
        sp.add_argument(
            "--run-dir",
            default=env("RUN_DIR"),
            help="where config, logs and key file go (default: .tabserve/run/PORT; TABSERVE_RUN_DIR)",
        )
        sp.add_argument(
            "--workers",
            type=int,
            default=env_int("WORKERS", None),
            help="workers per model (default: the archive's; TABSERVE_WORKERS)",
        )
        sp.add_argument(
            "--batch-size",
            type=int,
            default=env_int("BATCH_SIZE", None),
            help="server-side batch size (default: the archive's; TABSERVE_BATCH_SIZE)",
        )
        sp.add_argument(
            "--max-batch-delay",
            type=int,
            default=env_int("MAX_BATCH_DELAY", None),
            help="ms to wait to fill a batch (default: the archive's; TABSERVE_MAX_BATCH_DELAY)",
        )

    s = sub.add_parser("serve", help="start TorchServe and wait until the models answer", **helpful)
    server_options(s)
    s.add_argument(
        "--foreground", action="store_true", help="stay attached; Ctrl-C or SIGTERM stops TorchServe"
    )
    s.set_defaults(func=cmd_serve)

    st = sub.add_parser(
        "stop", help="stop TorchServe started by tabserve serve (from this directory or --run-dir)", **helpful
    )
    st.add_argument(
        "--port",
        type=int,
        action="append",
        help="only the server on this port (repeatable; default: every server started from this directory)",
    )
    st.add_argument(
        "--run-dir",
        default=env("RUN_DIR"),
        help="the server started with serve --run-dir DIR (default: those in .tabserve/run; "
        "TABSERVE_RUN_DIR)",
    )
    st.set_defaults(func=cmd_stop)

    from .csvio import DEFAULT_MAX_RECORD_BYTES

    sc = sub.add_parser(
        "score", help="score a CSV or Parquet file: every row in, every row out with predictions"
    )
    sc.error = _score_usage_error  # type: ignore[method-assign]
    parse_known = sc.parse_known_args

    def parse_score_args(args=None, namespace=None):  # unknown options too: exit 1, not 2
        known, extra = parse_known(args, namespace)
        if extra:
            _score_usage_error(f"unrecognized arguments: {' '.join(extra)}")
        return known, extra

    sc.parse_known_args = parse_score_args  # type: ignore[method-assign]
    sc.add_argument(
        "input", help="CSV with a header (- for stdin; .gz is decompressed) or Parquet (.parquet)"
    )
    sc.add_argument(
        "-o",
        "--output",
        required=True,
        help="output CSV (- for stdout; .gz compresses) or Parquet (.parquet, or --format parquet)",
    )
    sc.add_argument(
        "--format",
        choices=("csv", "parquet"),
        default=env("FORMAT", None),
        help="the output's format (default: from its extension: .parquet or .pq is Parquet, "
        "anything else CSV; TABSERVE_FORMAT)",
    )
    sc.add_argument(
        "--input-format",
        choices=("csv", "parquet"),
        default=env("INPUT_FORMAT", None),
        help="the input's format (default: from its extension, as --format)",
    )
    from .batch.engines import ENGINES

    sc.add_argument(
        "--engine",
        choices=tuple(ENGINES),
        default=env("ENGINE", "torchserve"),
        help="; ".join(f"{name}: {spec.summary}" for name, spec in ENGINES.items())
        + " (default: torchserve)",
    )
    sc.add_argument(
        "--master",
        default=env("SPARK_MASTER", "local[*]"),
        help="--engine spark: the Spark master (default local[*])",
    )
    sc.add_argument(
        "--partitions",
        type=int,
        default=env_int("PARTITIONS", None),
        help="--engine spark: split the input into about N partitions",
    )
    sc.add_argument(
        "--multiline",
        action="store_true",
        default=env_flag("SPARK_MULTILINE"),
        help="--engine spark: read CSV with Spark's CSV reader, whose quoted fields may span lines "
        "(each file is then read by one task; the other engines always read them)",
    )
    sc.add_argument(
        "--url",
        default=env("URL"),
        help="a running TorchServe: http://HOST:PORT, or .../predictions/NAME[/VERSION] for a model "
        "(default: start an embedded one from --model-store; TABSERVE_URL)",
    )
    sc.add_argument(
        "--model",
        default=env("MODEL"),
        help="model name (default: the store's only model, or with --url the server's only model; "
        "TABSERVE_MODEL)",
    )
    sc.add_argument("--token", default=env("TOKEN"), help="inference token for --url")
    sc.add_argument(
        "--token-file",
        default=env("TOKEN_FILE"),
        help="file with the token (TorchServe's key_file.json or the bare token), "
        "read again when the server rejects the token",
    )
    sc.add_argument("--model-store", default=env("MODEL_STORE", "model_store"))
    sc.add_argument(
        "--chunk-rows", type=int, default=env_int("CHUNK_ROWS", 5000), help="rows per request (default 5000)"
    )
    sc.add_argument(
        "--concurrency",
        type=int,
        default=env_int("CONCURRENCY", None),
        help="requests in flight (default: 2 per CPU core)",
    )
    sc.add_argument("--resume", action="store_true", help="continue an interrupted job")
    sc.add_argument(
        "--retries",
        type=int,
        default=env_int("RETRIES", 8),
        help="retries per chunk on connection errors and 5xx, with exponential backoff; a chunk "
        "that still fails is split to find its bad rows (default: 8; TABSERVE_RETRIES)",
    )
    sc.add_argument(
        "--max-record-bytes",
        type=int,
        default=env_int("MAX_RECORD_BYTES", DEFAULT_MAX_RECORD_BYTES),
        help="a longer record (line, or quoted record over several lines) is malformed: kept in the "
        f"output with an error, never scored (default: {DEFAULT_MAX_RECORD_BYTES}; "
        "TABSERVE_MAX_RECORD_BYTES)",
    )
    sc.add_argument(
        "--max-errors",
        type=int,
        default=env_int("MAX_ERRORS", None),
        help="stop once this many rows have failed",
    )
    sc.add_argument(
        "--config",
        default=env("CONFIG", str(_default_config())),
        help="base TorchServe config.properties for the embedded server",
    )
    sc.add_argument(
        "--no-report",
        action="store_true",
        default=env_flag("NO_REPORT"),
        help="write no drift report (OUTPUT.report.json and .html) and count nothing for it "
        "(TABSERVE_NO_REPORT)",
    )
    sc.add_argument(
        "--fail-on-drift",
        action="store_true",
        default=env_flag("FAIL_ON_DRIFT"),
        help="exit with code 3 when a feature or the predictions drifted from the training data, "
        "even when no row failed (TABSERVE_FAIL_ON_DRIFT)",
    )
    sc.set_defaults(func=cmd_score)

    rp = sub.add_parser(
        "report", help="print a batch job's drift report again (OUTPUT.report.json)", **helpful
    )
    rp.add_argument("path", help="OUTPUT.report.json, written beside a batch job's output")
    rp.add_argument("--fail-on-drift", action="store_true", help="exit with code 3 when the report has drift")
    rp.set_defaults(func=cmd_report)

    hc = sub.add_parser("health", help="exit 0 when the local TorchServe answers /ping as Healthy", **helpful)
    hc.add_argument(
        "--port", type=int, default=env_int("PORT", 8080), help="inference port on 127.0.0.1 (TABSERVE_PORT)"
    )
    hc.add_argument(
        "--run-dir",
        default=env("RUN_DIR"),
        help="the server's run directory, for its key file (default: .tabserve/run/PORT; TABSERVE_RUN_DIR)",
    )
    hc.set_defaults(func=cmd_health)

    ex = sub.add_parser("export", help="write the model in another platform's format", **helpful)
    targets = ex.add_subparsers(dest="target", required=True, metavar="TARGET")
    oa = targets.add_parser(
        "oci-artifact",
        help="an OCI Data Science model artifact (score.py + runtime.yaml) over the archive's handler",
        **helpful,
    )
    source = oa.add_mutually_exclusive_group(required=True)
    source.add_argument("--artifacts", type=Path, help="a trained model's folder (weights + schema.json)")
    source.add_argument("--mar", type=Path, help="a model archive made by tabserve archive")
    oa.add_argument("-o", "--out", type=Path, required=True, help="OUT.zip, or a folder to write")
    env_choice = oa.add_mutually_exclusive_group()
    env_choice.add_argument(
        "--conda-env", help="a service conda environment's slug, or a published one's oci:// path"
    )
    env_choice.add_argument(
        "--gpu",
        action="store_true",
        help="the PyTorch service environment for GPU shapes (today the default's pack: README)",
    )
    oa.add_argument("--python-version", help="the Python of a published conda environment (e.g. 3.11)")
    oa.add_argument(
        "--answer",
        choices=["tabserve", "tutorial"],
        default="tabserve",
        help="predict()'s answer: tabserve's, or the tutorial's {\"prediction\": [[p, ...]]}",
    )
    oa.set_defaults(func=cmd_export_oci)

    tk = sub.add_parser("token", help="print the inference token of a running server", **helpful)
    tk.add_argument(
        "--port", type=int, default=env_int("PORT", 8080), help="the server's inference port (TABSERVE_PORT)"
    )
    tk.add_argument(
        "--run-dir",
        default=env("RUN_DIR"),
        help="the server's run directory (default: .tabserve/run/PORT; TABSERVE_RUN_DIR)",
    )
    tk.set_defaults(func=cmd_token)
    return p


def _default_config() -> Path:
    from .server import DEFAULT_CONFIG

    return DEFAULT_CONFIG


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; errors become `Error: ...` on stderr and exit code 1."""
    from .handler.schema import SchemaError
    from .train.data import DataError

    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except (TabserveError, DataError, SchemaError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Error: interrupted", file=sys.stderr)
        return 130


def console_main() -> None:
    sys.exit(main())
