"""Batch scoring benchmark, all in one run on one machine: the in-process limit (pyarrow read,
numpy, torch, pyarrow write) against `tabserve score` through an embedded TorchServe (its start
included), against a TorchServe already running (steady state), and with `--engine local`;
rows/s against chunk size; the scorer's peak RSS for 1M and 10M rows.

    .venv/bin/python bench/batch.py [--rows 1000000] [--big-rows 10000000] [--sweep-rows 300000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import (
    OUT,
    ROOT,
    ensure_model,
    in_process_score,
    iris_like_csv,
    markdown_table,
    run_measured,
    save_plot,
)
from tabserve.server import TorchServe, start_on_free_ports

CHUNKS = [250, 500, 1000, 2000, 5000, 10000]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--big-rows", type=int, default=10_000_000, help="0 skips the 10M memory run")
    ap.add_argument("--sweep-rows", type=int, default=300_000, help="0 skips the chunk-size sweep")
    args = ap.parse_args()

    store = ensure_model()
    data = iris_like_csv(OUT / f"iris_{args.rows}.csv", args.rows)
    base_s = in_process_score(data, OUT / "in_process_out.csv", ROOT / "artifacts" / "iris")
    base = args.rows / base_s
    table = [
        [
            "in-process limit (pyarrow, numpy, torch)",
            f"{args.rows:,}",
            f"{base_s:.1f}",
            f"{base:,.0f}",
            "1.00",
            "",
        ]
    ]

    def scorer(label: str, path: Path, rows: int, *extra: str):
        argv = [
            sys.executable,
            "-m",
            "tabserve",
            "score",
            str(path),
            "-o",
            str(OUT / "scored.csv"),
            "--model-store",
            str(store),
            *extra,
        ]
        run = run_measured(argv)
        if run.returncode != 0:
            sys.exit(f"tabserve score failed ({run.returncode}):\n{run.stdout}")
        rate = rows / run.seconds
        table.append(
            [
                label,
                f"{rows:,}",
                f"{run.seconds:.1f}",
                f"{rate:,.0f}",
                f"{rate / base:.2f}",
                f"{run.peak_rss_mb:.0f}",
            ]
        )
        print(table[-1], flush=True)
        return run

    small = scorer("tabserve score (embedded TorchServe, start included)", data, args.rows)
    scorer("tabserve score --engine local", data, args.rows, "--engine", "local")

    def running_server(**overrides) -> TorchServe:
        run_dir = Path(tempfile.mkdtemp(prefix="tabserve-bench-run-"))
        return start_on_free_ports(store, run_dir, models=("iris",), **overrides)

    def url_options(server: TorchServe) -> list[str]:
        return ["--url", server.inference_url, "--model", "iris", "--token-file", str(server.key_file)]

    # Why the embedded server turns server-side batching off: the same job against the
    # archive's online settings (batchSize 32, maxBatchDelay 5).
    server = running_server()
    try:
        batched = scorer(
            "tabserve score --url (running, the archive's batching 32/5)",
            data,
            args.rows,
            *url_options(server),
        )
    finally:
        server.stop()
    server = running_server(batch_size=1)
    sweep = []
    try:
        url = url_options(server)
        unbatched = scorer("tabserve score --url (TorchServe already running)", data, args.rows, *url)
        if args.sweep_rows:
            part = iris_like_csv(OUT / f"iris_{args.sweep_rows}.csv", args.sweep_rows)
            for chunk in CHUNKS:
                run = run_measured(
                    [
                        sys.executable,
                        "-m",
                        "tabserve",
                        "score",
                        str(part),
                        "-o",
                        str(OUT / "sweep.csv"),
                        "--chunk-rows",
                        str(chunk),
                        *url,
                    ]
                )
                sweep.append((chunk, args.sweep_rows / run.seconds))
                print(f"chunk {chunk}: {sweep[-1][1]:,.0f} rows/s", flush=True)
    finally:
        server.stop()

    if args.big_rows:
        big = iris_like_csv(OUT / f"iris_{args.big_rows}.csv", args.big_rows)
        large = scorer("tabserve score (embedded TorchServe, start included)", big, args.big_rows)
    md = markdown_table(["job", "rows", "seconds", "rows/s", "vs in-process", "scorer peak RSS (MB)"], table)
    gain = batched.seconds / unbatched.seconds
    md += f"\nRunning server, batchSize 1 / the archive's batching: {gain:.2f}x rows/s\n"
    if args.big_rows:
        md += (
            f"\nScorer peak RSS, {args.big_rows:,} rows / {args.rows:,} rows: "
            f"{large.peak_rss_mb / small.peak_rss_mb:.2f}\n"
        )
    if sweep:
        md += "\n" + markdown_table(
            ["chunk rows", "rows/s (TorchServe running)"], [[f"{c:,}", f"{r:,.0f}"] for c, r in sweep]
        )
        _plot(sweep, base)
    print(md)
    (OUT / "batch.md").write_text(md)


def _plot(sweep: list[tuple[int, float]], base: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([c for c, _ in sweep], [r for _, r in sweep], "-o", label="tabserve score through TorchServe")
    ax.axhline(base, color="gray", linestyle="--", label="in-process limit")
    ax.axhline(base / 2, color="gray", linestyle=":", label="50% of the limit")
    ax.set_xscale("log")
    ax.set_xlabel("rows per request (--chunk-rows)")
    ax.set_ylabel("rows/s")
    ax.set_title("Batch: rows/s against chunk size")
    save_plot(fig, ax, "batch.png", legend_size=8)


if __name__ == "__main__":
    main()
