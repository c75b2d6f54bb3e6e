"""Batch scoring benchmark: every target of issue 11 in one run on one machine. The in-process
limit (pyarrow CSV read, torch, pyarrow CSV write), measured on each file size, against
`tabserve score` with a TorchServe already running (--url), with the embedded TorchServe (its
start included) and with --engine local, CSV to CSV and Parquet to Parquet; for every run its
rows/s, the scorer process's own CPU time and its peak RSS. Prints a table and the targets,
writes them to bench/out/batch.md and, at the default sizes, the plot docs/batch.png.

    .venv/bin/python bench/batch.py [--rows 1000000] [--big-rows 10000000] [--only JOB ...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from common import (
    OUT,
    ensure_model,
    iris_like_csv,
    iris_like_parquet,
    markdown_table,
    output_rows,
    run_measured,
    save_plot,
)
from tabserve.server import TorchServe, start_on_free_ports

ROWS, BIG_ROWS = 1_000_000, 10_000_000
# name: (engine, format, also on the big file). Run in this order: one engine after the other,
# so the --url server is started once and each engine's runs sit side by side.
JOBS = {
    "local-csv": ("local", "csv", True),
    "local-parquet": ("local", "parquet", True),
    "embedded-csv": ("embedded", "csv", True),
    "embedded-parquet": ("embedded", "parquet", False),
    "url-csv": ("url", "csv", True),
    "url-parquet": ("url", "parquet", False),
}
ENGINE_LABELS = {
    "in-process": "in-process limit (pyarrow, torch)",
    "local": "tabserve score --engine local",
    "embedded": "tabserve score, embedded TorchServe (start included)",
    "url": "tabserve score --url (TorchServe already running)",
}
SHORT_LABELS = {"local": "--engine local", "embedded": "embedded TorchServe", "url": "--url (running)"}
FORMAT_LABELS = {"csv": "CSV", "parquet": "Parquet"}
CHUNKS = [250, 500, 1000, 2000, 5000, 10000]


@dataclass
class Result:
    engine: str
    fmt: str
    rows: int
    seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    server_start: float | None = None  # the embedded TorchServe's start, from the summary line

    @property
    def rate(self) -> float:
        return self.rows / self.seconds

    @property
    def cpu_per_million(self) -> float:
        return self.cpu_seconds / self.rows * 1e6

    @property
    def label(self) -> str:
        label = f"{ENGINE_LABELS[self.engine]}, {FORMAT_LABELS[self.fmt]}"
        if self.engine == "embedded":
            start = "?" if self.server_start is None else f"{self.server_start:.1f} s"
            label += f" (server start: {start})"
        return label


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=ROWS)
    ap.add_argument("--big-rows", type=int, default=BIG_ROWS, help="0 skips the runs on the big file")
    ap.add_argument(
        "--only",
        nargs="+",
        choices=list(JOBS),
        metavar="JOB",
        help=f"run only these jobs ({', '.join(JOBS)}); the in-process limit always runs",
    )
    ap.add_argument("--sweep-rows", type=int, default=0, help="rows/s against --chunk-rows (--url) on N rows")
    ap.add_argument(
        "--report-cost",
        type=int,
        default=0,
        metavar="N",
        help="also score the --rows CSV N times with and without the drift report (--no-report), "
        "alternating, with --engine local and --url",
    )
    args = ap.parse_args()
    jobs = {name: job for name, job in JOBS.items() if name in (args.only or JOBS)}
    sizes = [args.rows] + ([args.big_rows] if args.big_rows and any(big for *_, big in jobs.values()) else [])

    store = ensure_model()
    OUT.mkdir(parents=True, exist_ok=True)
    files = {}
    for rows in sizes:
        files[rows, "csv"] = iris_like_csv(OUT / f"iris_{rows}.csv", rows)
        if any(fmt == "parquet" and (rows == sizes[0] or big) for _, fmt, big in jobs.values()):
            files[rows, "parquet"] = iris_like_parquet(files[rows, "csv"])

    results: list[Result] = []
    base: dict[int, float] = {}  # rows: the in-process limit's rows/s on that file
    for rows in sizes:
        results.append(in_process(files[rows, "csv"], rows))
        base[rows] = results[-1].rate
        show(results[-1], base)

    server: TorchServe | None = None
    sweep: list[tuple[int, float]] = []
    cost: list[list[str]] = []
    try:
        for engine, fmt, big in jobs.values():
            if engine == "url" and server is None:
                server = running_server(store)
            for rows in sizes if big else sizes[:1]:
                options = url_options(server) if engine == "url" else ["--model-store", str(store)]
                if engine == "local":
                    options += ["--engine", "local"]
                results.append(score(engine, fmt, files[rows, fmt], rows, options))
                show(results[-1], base)
        if args.report_cost:
            server = server or running_server(store)
            cost = report_cost(files[args.rows, "csv"], args.rows, store, server, args.report_cost)
        if args.sweep_rows:
            server = server or running_server(store)
            sweep = chunk_sweep(
                iris_like_csv(OUT / f"iris_{args.sweep_rows}.csv", args.sweep_rows),
                args.sweep_rows,
                url_options(server),
            )
    finally:
        if server is not None:
            server.stop()
            shutil.rmtree(server.config.run_dir, ignore_errors=True)

    md = (
        f"{os.cpu_count()} CPU cores; vs in-process: rows/s over the in-process limit's on the CSV of "
        "the same size; scorer CPU: user + system of the scorer's process only (not the "
        "TorchServe or the workers it starts).\n\n"
    )
    md += markdown_table(
        ["job", "rows", "seconds", "rows/s", "vs in-process", "scorer CPU-s per M rows", "peak RSS (MB)"],
        [
            [
                r.label,
                f"{r.rows:,}",
                f"{r.seconds:.1f}",
                f"{r.rate:,.0f}",
                f"{r.rate / base[r.rows]:.2f}",
                f"{r.cpu_per_million:.2f}",
                f"{r.peak_rss_mb:.0f}",
            ]
            for r in results
        ],
    )
    md += "\n" + markdown_table(
        ["target", "measured", "met?"], targets(results, base, args.rows, args.big_rows)
    )
    if cost:
        md += "\n" + markdown_table(
            ["engine", f"rows/s with the report ({args.rows:,} rows)", "rows/s with --no-report", "ratio"],
            cost,
        )
    if sweep:
        md += "\n" + markdown_table(
            ["--chunk-rows", f"rows/s (--url, {args.sweep_rows:,} rows)"],
            [[f"{c:,}", f"{r:,.0f}"] for c, r in sweep],
        )
    print("\n" + md)
    (OUT / "batch.md").write_text(md)
    if (args.rows, args.big_rows) == (ROWS, BIG_ROWS) and not args.only:
        print(f"wrote {plot(results, base)}")


def in_process(csv: Path, rows: int) -> Result:
    """The in-process limit in a process of its own: its seconds and CPU time without the
    imports, its peak RSS."""
    out = OUT / "in_process_out.csv"
    run = run_measured([sys.executable, str(Path(__file__).with_name("common.py")), str(csv), str(out)])
    if run.returncode != 0:
        sys.exit(f"the in-process limit failed ({run.returncode}):\n{run.stdout}")
    check_rows(out, rows, run.stdout)
    timing = json.loads(run.stdout.strip().splitlines()[-1])
    return Result("in-process", "csv", rows, timing["seconds"], timing["cpu_seconds"], run.peak_rss_mb)


def score(engine: str, fmt: str, path: Path, rows: int, options: list[str]) -> Result:
    """One `tabserve score` run, FORMAT to the same format; exits with the scorer's output if
    it fails or writes another number of rows."""
    out = OUT / f"scored.{fmt}"
    out.unlink(missing_ok=True)
    run = run_measured([sys.executable, "-m", "tabserve", "score", str(path), "-o", str(out), *options])
    if run.returncode != 0:
        sys.exit(f"tabserve score {engine} {fmt} on {rows:,} rows failed ({run.returncode}):\n{run.stdout}")
    check_rows(out, rows, run.stdout)
    start = re.search(r"TorchServe started in ([\d.]+) s", run.stdout)
    return Result(
        engine,
        fmt,
        rows,
        run.seconds,
        run.cpu_seconds,
        run.peak_rss_mb,
        float(start.group(1)) if start else None,
    )


def report_cost(csv: Path, rows: int, store: Path, server: TorchServe, reps: int) -> list[list[str]]:
    """The drift report's cost: the same job with and without it, alternating, `reps` times
    each, per engine (the median rows/s of each). Checks that the report counted every row."""
    from statistics import median

    table = []
    for engine, options in (
        ("local", ["--model-store", str(store), "--engine", "local"]),
        ("url", url_options(server)),
    ):
        rates: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(reps):
            for report in (True, False):
                out = OUT / "scored.csv"
                report_json = Path(str(out) + ".report.json")
                report_json.unlink(missing_ok=True)
                r = score(engine, "csv", csv, rows, options + ([] if report else ["--no-report"]))
                if report:
                    counted = json.loads(report_json.read_text())["job"]["profiled_rows"]
                    if counted != rows:
                        sys.exit(f"the report counted {counted:,} of {rows:,} rows ({engine})")
                elif report_json.exists():
                    sys.exit("--no-report wrote a report")
                rates[report].append(r.rate)
                which = "with" if report else "without"
                print(f"  report cost: {engine} {which} the report: {r.rate:,.0f} rows/s")
        with_, without = median(rates[True]), median(rates[False])
        table.append([SHORT_LABELS[engine], f"{with_:,.0f}", f"{without:,.0f}", f"{with_ / without:.3f}"])
    return table


def check_rows(out: Path, rows: int, stdout: str) -> None:
    written = output_rows(out)
    out.unlink()  # up to a GB at 10M rows
    if written != rows:
        sys.exit(f"{out} has {written:,} rows, the input {rows:,}:\n{stdout}")


def running_server(store: Path) -> TorchServe:
    """The --url runs' TorchServe, started once: server-side batching off, as the embedded
    server has it."""
    return start_on_free_ports(
        store, Path(tempfile.mkdtemp(prefix="tabserve-bench-run-")), models=("iris",), batch_size=1
    )


def url_options(server: TorchServe) -> list[str]:
    return ["--url", server.inference_url, "--model", "iris", "--token-file", str(server.key_file)]


def chunk_sweep(csv: Path, rows: int, url: list[str]) -> list[tuple[int, float]]:
    sweep = []
    for chunk in CHUNKS:
        out = OUT / "sweep.csv"
        run = run_measured(
            [
                sys.executable,
                "-m",
                "tabserve",
                "score",
                str(csv),
                "-o",
                str(out),
                "--chunk-rows",
                str(chunk),
                *url,
            ]
        )
        if run.returncode != 0:
            sys.exit(f"tabserve score --chunk-rows {chunk} failed ({run.returncode}):\n{run.stdout}")
        check_rows(out, rows, run.stdout)
        sweep.append((chunk, rows / run.seconds))
        print(f"--chunk-rows {chunk:,}: {sweep[-1][1]:,.0f} rows/s", flush=True)
    return sweep


def show(r: Result, base: dict[int, float]) -> None:
    print(
        f"{r.label}, {r.rows:,} rows: {r.seconds:.1f} s, {r.rate:,.0f} rows/s "
        f"({r.rate / base[r.rows]:.2f} of in-process), {r.cpu_per_million:.2f} CPU-s per M rows, "
        f"{r.peak_rss_mb:.0f} MB",
        flush=True,
    )


def targets(results: list[Result], base: dict[int, float], rows: int, big: int) -> list[list[str]]:
    """Issue 11's targets: [target, measured, met?] each; "not run" where a run is missing."""
    found = {(r.engine, r.fmt, r.rows): r for r in results}
    table = []

    def size(n: int) -> str:
        return f"{n:,} rows" if n else "the big file"

    def add(target: str, value: float | None, text: str, met: bool) -> None:
        if value is None:
            table.append([target, "not run", ""])
        else:
            table.append([target, text.format(value), "yes" if met else "**no**"])

    for engine, n, goal in [
        ("url", big, 0.7),
        ("embedded", big, 0.6),
        ("local", rows, 0.9),
        ("local", big, 0.9),
    ]:
        r = found.get((engine, "csv", n))
        value = r.rate / base[n] if r else None
        add(
            f"{SHORT_LABELS[engine]}, CSV, {size(n)}: >= {goal} of in-process",
            value,
            "{:.2f}",
            value is not None and value >= goal,
        )
    for engine, n in [("embedded", rows), ("url", rows), ("local", rows), ("local", big)]:
        csv, parquet = found.get((engine, "csv", n)), found.get((engine, "parquet", n))
        value = parquet.rate / csv.rate if csv and parquet else None
        add(
            f"{SHORT_LABELS[engine]}, {size(n)}: Parquet rows/s >= CSV's",
            value,
            "{:.2f}x",
            value is not None and value >= 1,
        )
    scorers = [r for r in results if r.engine != "in-process"]
    if scorers:
        worst = max(scorers, key=lambda r: r.cpu_per_million)
        add(
            "scorer CPU-s per M rows < 1, every tabserve run",
            worst.cpu_per_million,
            f"at most {{:.2f}} ({worst.engine}, {FORMAT_LABELS[worst.fmt]}, {worst.rows:,} rows)",
            worst.cpu_per_million < 1,
        )
    for engine, fmt in [("local", "csv"), ("embedded", "csv"), ("local", "parquet")]:
        small, large = found.get((engine, fmt, rows)), found.get((engine, fmt, big))
        value = large.peak_rss_mb / small.peak_rss_mb if small and large else None
        add(
            f"{SHORT_LABELS[engine]}, {FORMAT_LABELS[fmt]}: peak RSS, {size(big)} / {size(rows)} <= 1.2",
            value,
            "{:.2f}",
            value is not None and value <= 1.2,
        )
    return table


def plot(results: list[Result], base: dict[int, float]) -> Path:
    """rows/s per job as horizontal bars, the in-process limit of each size as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    runs = [r for r in results if r.engine != "in-process"]
    sizes = sorted(base)
    colors = dict(zip(sizes, ["tab:blue", "tab:orange"]))
    styles = dict(zip(sizes, ["--", ":"]))
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(runs) + 1.5))
    y = range(len(runs))[::-1]
    ax.barh(list(y), [r.rate for r in runs], color=[colors[r.rows] for r in runs])
    ax.set_yticks(
        list(y), [f"{SHORT_LABELS[r.engine]}, {FORMAT_LABELS[r.fmt]}, {short(r.rows)}" for r in runs]
    )
    ax.xaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))
    for n in sizes:
        ax.axvline(base[n], color=colors[n], linestyle=styles[n], label=f"in-process limit, {short(n)} rows")
    ax.set_xlabel("rows/s")
    ax.set_title("Batch scoring: rows/s per job")
    return save_plot(fig, ax, "batch.png", legend_size=8, legend_loc="lower right")


def short(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n:,}"


if __name__ == "__main__":
    main()
