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
    from .progress import Progress
    from .train.config import FitConfig
    from .train.data import load_builtin, load_csv
    from .train.export import export
    from .train.fit import fit

    if args.csv and not args.target:
        raise TabserveError("--csv needs --target COLUMN (the column holding the class labels)")
    if args.target and not args.csv:
        raise TabserveError("--target only applies with --csv PATH")
    data = load_csv(Path(args.csv), args.target, args.name) if args.csv else load_builtin(args.dataset)
    if args.name and not args.csv:
        data = type(data)(**{**data.__dict__, "name": args.name})
    try:
        config = FitConfig(
            hidden=tuple(args.hidden),
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            seed=args.seed,
        )
    except ValueError as exc:
        raise TabserveError(str(exc)) from exc
    out = Path(args.out) if args.out else Path("artifacts") / data.name
    bar = Progress(config.epochs, "epochs")
    result = fit(data, config, on_epoch=lambda e, n, loss: bar.update(e, f"loss {loss:.4f}"))
    bar.close()
    export(data, config, result, out)
    m = result.metrics
    print(
        f"trained {data.name}: {len(data.y)} rows, {len(data.features)} features, "
        f"{len(data.classes)} classes; train accuracy {m['train_accuracy']:.4f}, "
        f"test accuracy {m['test_accuracy']:.4f}; wrote {out}"
    )
    return 0


# --- archive ----------------------------------------------------------------------------------


def cmd_archive(args: argparse.Namespace) -> int:
    from .archive import ArchiveConfig, archive

    config = ArchiveConfig(
        artifacts=Path(args.artifacts),
        name=args.name,
        version=args.version,
        model_store=Path(args.model_store),
        batch_size=args.batch_size,
        max_batch_delay=args.max_batch_delay,
        workers=args.workers,
        response_timeout=args.response_timeout,
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
        management_port=args.management_port,
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
    print(f"TorchServe ready in {time.monotonic() - t0:.1f} s")
    for model in server.models:
        print(f"  predictions: {server.inference_url}/predictions/{model}")
    print(f"  metrics:     {server.metrics_url}")
    if server.config.auth:
        print(f'  token:       "inference" key in {server.key_file}')
        token_cmd = f"tabserve token --port {server.config.port}"
        print(f'               (curl -H "Authorization: Bearer $({token_cmd})" ...)')
    else:
        print("  token:       none (--no-auth)")
    print(f"  logs:        {server.dir / 'logs'}")
    if not args.foreground:
        print(f"stop it with: tabserve stop --port {server.config.port}")
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

    stopped = stop_recorded(tuple(args.port or ()))
    if not stopped:
        print("no tabserve-started TorchServe is running from this directory")
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
    )
    # SIGTERM (a container stop, a job runner's timeout) ends the job like Ctrl-C: the
    # embedded server is stopped and the partial output kept for --resume.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    result = score(config)
    print(result.summary(), file=sys.stderr if config.output == "-" else sys.stdout)
    if result.errors:
        print(f"{result.errors:,} rows have errors: see the error column", file=sys.stderr)
    return result.exit_code


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


# --- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from .train.config import BATCH_SIZE, EPOCHS, HIDDEN, LR, SEED
    from .train.data import BUILTIN

    p = argparse.ArgumentParser(prog="tabserve", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"tabserve {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train the MLP and export weights + schema.json")
    t.add_argument("--dataset", choices=BUILTIN, default=env("DATASET", "iris"))
    t.add_argument("--csv", help="train on this CSV instead (with --target)")
    t.add_argument("--target", help="the CSV column holding class labels")
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
    t.add_argument("--epochs", type=int, default=EPOCHS)
    t.add_argument("--lr", type=float, default=LR)
    t.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    t.add_argument("--seed", type=int, default=SEED)
    t.set_defaults(func=cmd_train)

    a = sub.add_parser("archive", help="bundle artifacts and the handler into MODEL_STORE/NAME.mar")
    a.add_argument("--artifacts", required=True, help="folder written by tabserve train")
    a.add_argument("--name", help="model name (default: the schema's)")
    a.add_argument("--version", default="1.0")
    a.add_argument("--model-store", default=env("MODEL_STORE", "model_store"))
    a.add_argument("--batch-size", type=int, default=32, help="server-side batch size")
    a.add_argument("--max-batch-delay", type=int, default=5, help="ms to wait to fill a batch")
    a.add_argument(
        "--workers",
        type=int,
        default=None,
        help="workers per model (default: TorchServe's, one per CPU core or GPU)",
    )
    a.add_argument("--response-timeout", type=int, default=120, help="seconds")
    a.set_defaults(func=cmd_archive)

    def server_options(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--model-store", default=env("MODEL_STORE", "model_store"))
        sp.add_argument(
            "--model",
            action="append",
            default=None,
            metavar="NAME",
            help="model to load (repeatable; default: every archive in the store)",
        )
        sp.add_argument("--host", default=env("HOST", "127.0.0.1"))
        sp.add_argument("--port", type=int, default=env_int("PORT", 8080))
        sp.add_argument("--management-port", type=int, default=env_int("MANAGEMENT_PORT", None))
        sp.add_argument("--metrics-port", type=int, default=env_int("METRICS_PORT", None))
        sp.add_argument(
            "--no-auth",
            action="store_true",
            default=env_flag("NO_AUTH"),
            help="turn TorchServe's token auth off (only behind a gateway that authenticates)",
        )
        sp.add_argument(
            "--config",
            default=env("CONFIG", str(_default_config())),
            help="base TorchServe config.properties",
        )
        sp.add_argument(
            "--run-dir",
            default=env("RUN_DIR"),
            help="where config, logs and key file go (default: .tabserve/run/PORT)",
        )
        sp.add_argument(
            "--workers",
            type=int,
            default=env_int("WORKERS", None),
            help="workers per model (default: the archive's)",
        )
        sp.add_argument(
            "--batch-size",
            type=int,
            default=env_int("BATCH_SIZE", None),
            help="server-side batch size (default: the archive's)",
        )
        sp.add_argument(
            "--max-batch-delay",
            type=int,
            default=env_int("MAX_BATCH_DELAY", None),
            help="ms to wait to fill a batch (default: the archive's)",
        )

    s = sub.add_parser("serve", help="start TorchServe and wait until the models answer")
    server_options(s)
    s.add_argument(
        "--foreground", action="store_true", help="stay attached; Ctrl-C or SIGTERM stops TorchServe"
    )
    s.set_defaults(func=cmd_serve)

    st = sub.add_parser("stop", help="stop TorchServe started by tabserve serve from this directory")
    st.add_argument("--port", type=int, action="append", help="only the server on this port")
    st.set_defaults(func=cmd_stop)

    sc = sub.add_parser("score", help="score a CSV file: every row in, every row out with predictions")
    sc.add_argument("input", help="CSV with a header; - for stdin; .gz is decompressed")
    sc.add_argument("-o", "--output", required=True, help="output CSV; - for stdout; .gz compresses")
    sc.add_argument(
        "--engine",
        choices=("torchserve", "local", "spark"),
        default=env("ENGINE", "torchserve"),
        help="torchserve (default): through TorchServe; local: the archive's handler "
        "in worker processes, no server; spark: the archive's handler on Spark executors "
        "(OUTPUT is a folder of part files)",
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
    sc.add_argument("--url", default=env("URL"), help="a running TorchServe (default: start one)")
    sc.add_argument("--model", default=env("MODEL"), help="model name (default: the store's only one)")
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
        help="retries per chunk on connection errors and 5xx, with exponential backoff",
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
    sc.set_defaults(func=cmd_score)

    hc = sub.add_parser("health", help="exit 0 when the local TorchServe answers /ping as Healthy")
    hc.add_argument("--port", type=int, default=env_int("PORT", 8080))
    hc.add_argument("--run-dir", default=env("RUN_DIR"))
    hc.set_defaults(func=cmd_health)

    tk = sub.add_parser("token", help="print the inference token of a running server")
    tk.add_argument("--port", type=int, default=env_int("PORT", 8080))
    tk.add_argument("--run-dir", default=env("RUN_DIR"))
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
