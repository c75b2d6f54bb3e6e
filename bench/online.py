"""Online benchmark: single-row requests/s and latency with wrk, tabserve's handler against
TorchServe's floor (a do-nothing handler) under the same settings, and tabserve's default
serving settings (batchSize 32, maxBatchDelay 5 ms) against TorchServe's stock ones
(batchSize 1), all in one run on one machine.

    .venv/bin/python bench/online.py [--seconds 10] [--connections 16 64]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import OUT, ROOT, ensure_model, markdown_table, save_plot
from tabserve.archive import with_settings
from tabserve.server import start_on_free_ports

SETTINGS = {
    "tabserve default (batchSize 32, maxBatchDelay 5)": {},
    "TorchServe stock (batchSize 1)": {"batch_size": 1, "max_batch_delay": 100},
}
# What the handler's metrics throttle buys: the default settings, but the row counters handed
# to TorchServe's metrics API after every batch (metrics_interval_s 0 in model-config.yaml).
COUNTERS_EVERY_BATCH = "tabserve default, counters every batch"


def noop_archive(store: Path) -> None:
    """The do-nothing handler with the same model-config.yaml as the iris archive."""
    import zipfile

    with zipfile.ZipFile(store / "iris.mar") as z:
        config = z.read("model-config.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "model-config.yaml").write_bytes(config)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "model_archiver.model_packaging",
                "--model-name",
                "noop",
                "--version",
                "1.0",
                "--handler",
                str(ROOT / "bench" / "noop_handler.py"),
                "--config-file",
                str(Path(tmp) / "model-config.yaml"),
                "--export-path",
                str(store),
                "--force",
            ],
            check=True,
            env={**os.environ, "TMPDIR": tmp},
        )


def wrk(url: str, token: str, connections: int, seconds: int) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(ROOT / "bench" / "post.lua"),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TOKEN": token},
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)

    def pct(p: str) -> float:
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    return {"rps": rps, "p50": pct("50"), "p99": pct("99"), "errors": int(errors.group(1)) if errors else 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, nargs="+", default=[16, 64])
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, stdout=subprocess.DEVNULL)
    store = Path(tempfile.mkdtemp(prefix="tabserve-bench-store-"))
    shutil.copy(ensure_model() / "iris.mar", store / "iris.mar")
    noop_archive(store)

    every_batch = Path(tempfile.mkdtemp(prefix="tabserve-bench-store-"))
    with_settings(
        store / "iris.mar",
        every_batch / "iris.mar",
        {"handler": {"torch_threads": 1, "metrics_interval_s": 0}},
    )
    shutil.copy(store / "noop.mar", every_batch / "noop.mar")

    results: dict[tuple[str, str, int], dict[str, float]] = {}
    for setting, overrides in [*SETTINGS.items(), (COUNTERS_EVERY_BATCH, {})]:
        server = start_on_free_ports(
            every_batch if setting == COUNTERS_EVERY_BATCH else store,
            Path(tempfile.mkdtemp(prefix="tabserve-bench-run-")),
            **overrides,
        )
        try:
            for model in ("noop", "iris"):
                url = f"{server.inference_url}/predictions/{model}"
                wrk(url, server.token(), 16, 2)  # warm-up
                for c in args.connections:
                    results[(setting, model, c)] = r = wrk(url, server.token(), c, args.seconds)
                    print(
                        f"{setting:50} {model:5} c={c:3}: {r['rps']:8,.0f} req/s p50 {r['p50']:.2f} ms "
                        f"p99 {r['p99']:.2f} ms errors {r['errors']}",
                        flush=True,
                    )
        finally:
            server.stop()
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(every_batch, ignore_errors=True)

    rows = []
    default, stock = list(SETTINGS)
    for setting in [*SETTINGS, COUNTERS_EVERY_BATCH]:
        for c in args.connections:
            noop, iris = results[(setting, "noop", c)], results[(setting, "iris", c)]
            rows.append(
                [
                    setting,
                    str(c),
                    f"{noop['rps']:,.0f}",
                    f"{iris['rps']:,.0f}",
                    f"{iris['rps'] / noop['rps']:.2f}",
                    f"{iris['p50']:.2f}",
                    f"{iris['p99']:.2f}",
                    f"{noop['p50']:.2f}",
                    f"{noop['p99']:.2f}",
                ]
            )
    md = markdown_table(
        [
            "settings",
            "connections",
            "do-nothing req/s",
            "tabserve req/s",
            "tabserve / do-nothing",
            "tabserve p50 ms",
            "tabserve p99 ms",
            "do-nothing p50 ms",
            "do-nothing p99 ms",
        ],
        rows,
    )
    c = max(args.connections)
    gain = results[(default, "iris", c)]["rps"] / results[(stock, "iris", c)]["rps"]
    md += f"\ntabserve default settings / stock settings at {c} connections: {gain:.2f}x requests/s\n"
    throttle = results[(default, "iris", c)]["rps"] / results[(COUNTERS_EVERY_BATCH, "iris", c)]["rps"]
    md += (
        f"counters at most once a second / after every batch at {c} connections: {throttle:.2f}x requests/s\n"
    )
    print(md)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "online.md").write_text(md)
    _plot(results, args.connections)


def _plot(results, connections) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for setting in SETTINGS:
        for model, style in (("iris", "-o"), ("noop", "--s")):
            ax.plot(
                connections,
                [results[(setting, model, c)]["rps"] for c in connections],
                style,
                label=f"{'tabserve' if model == 'iris' else 'do-nothing'}, {setting.split(' (')[0]}",
            )
    ax.set_xlabel("connections")
    ax.set_ylabel("single-row requests/s")
    ax.set_title("Online: tabserve vs TorchServe's floor")
    save_plot(fig, ax, "online.png", legend_size=7)


if __name__ == "__main__":
    main()
