"""Batch scoring benchmark: `tabserve score` through an embedded TorchServe (its start
included) against the in-process limit on the same file in the same run, and the scorer's
peak RSS for 1M and 10M rows.

    .venv/bin/python bench/batch.py [--rows 1000000] [--big-rows 10000000] [--engine torchserve]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import OUT, ROOT, ensure_model, in_process_score, iris_like_csv, markdown_table, run_measured


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--big-rows", type=int, default=10_000_000, help="0 skips the memory run")
    ap.add_argument("--engine", default="torchserve")
    ap.add_argument("--score-args", default="", help="extra tabserve score options, quoted")
    args = ap.parse_args()

    store = ensure_model()
    data = iris_like_csv(OUT / f"iris_{args.rows}.csv", args.rows)
    base_s = in_process_score(data, OUT / "in_process_out.csv", ROOT / "artifacts" / "iris")
    base_rate = args.rows / base_s

    def scorer(path: Path, rows: int):
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
            *([] if args.engine == "torchserve" else ["--engine", args.engine]),
            *args.score_args.split(),
        ]
        run = run_measured(argv)
        if run.returncode != 0:
            sys.exit(f"tabserve score failed ({run.returncode}):\n{run.stdout}")
        return run, rows / run.seconds

    run1, rate1 = scorer(data, args.rows)
    table = [
        [
            "in-process (pyarrow, numpy, torch)",
            f"{args.rows:,}",
            f"{base_s:.1f}",
            f"{base_rate:,.0f}",
            "1.00",
            "",
        ],
        [
            f"tabserve score --engine {args.engine}",
            f"{args.rows:,}",
            f"{run1.seconds:.1f}",
            f"{rate1:,.0f}",
            f"{rate1 / base_rate:.2f}",
            f"{run1.peak_rss_mb:.0f}",
        ],
    ]
    if args.big_rows:
        big = iris_like_csv(OUT / f"iris_{args.big_rows}.csv", args.big_rows)
        run2, rate2 = scorer(big, args.big_rows)
        table.append(
            [
                f"tabserve score --engine {args.engine}",
                f"{args.big_rows:,}",
                f"{run2.seconds:.1f}",
                f"{rate2:,.0f}",
                f"{rate2 / base_rate:.2f}",
                f"{run2.peak_rss_mb:.0f}",
            ]
        )
    md = markdown_table(["job", "rows", "seconds", "rows/s", "vs in-process", "scorer peak RSS (MB)"], table)
    if args.big_rows:
        ratio = run2.peak_rss_mb / run1.peak_rss_mb
        md += f"\nPeak RSS, {args.big_rows:,} rows / {args.rows:,} rows: {ratio:.2f}\n"
    print(md)
    (OUT / f"batch_{args.engine}.md").write_text(md)


if __name__ == "__main__":
    main()
