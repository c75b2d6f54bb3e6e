"""The embedded server's JVM flags against TorchServe's defaults, in one run: server start
(launch to the first answer of a real prediction, three starts each) and rows/s of
`tabserve score --url` on the same file through a server of each kind (two jobs each).

    .venv/bin/python bench/jvm.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import OUT, ensure_model, iris_like_csv, markdown_table
from tabserve.batch.engines.torchserve import EMBEDDED_VMARGS
from tabserve.server import start_on_free_ports


def start(store: Path, vmargs: str | None):
    run_dir = Path(tempfile.mkdtemp(prefix="tabserve-bench-jvm-"))
    extra = {"vmargs": vmargs} if vmargs else {}
    t0 = time.perf_counter()
    server = start_on_free_ports(store, run_dir, models=("iris",), batch_size=1, extra_properties=extra)
    return server, time.perf_counter() - t0, run_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    store = ensure_model()
    data = iris_like_csv(OUT / f"iris_{args.rows}.csv", args.rows)
    rows = []
    for label, vmargs in (("TorchServe's JVM defaults", None), (EMBEDDED_VMARGS, EMBEDDED_VMARGS)):
        starts, rates = [], []
        for attempt in range(3):
            server, seconds, run_dir = start(store, vmargs)
            starts.append(seconds)
            try:
                if attempt == 0:
                    for _ in range(2):
                        out = subprocess.run(
                            [
                                sys.executable,
                                "-m",
                                "tabserve",
                                "score",
                                str(data),
                                "-o",
                                str(OUT / "jvm.csv"),
                                "--url",
                                server.inference_url,
                                "--model",
                                "iris",
                                "--token-file",
                                str(server.key_file),
                            ],
                            capture_output=True,
                            text=True,
                            check=True,
                        ).stdout
                        rates.append(float(re.search(r"([\d,]+) rows/s", out).group(1).replace(",", "")))
            finally:
                server.stop(kill=True)
                shutil.rmtree(run_dir, ignore_errors=True)
        rows.append(
            [
                label,
                " / ".join(f"{s:.2f}" for s in starts),
                " / ".join(f"{r:,.0f}" for r in rates),
            ]
        )
        print(rows[-1], flush=True)
    md = markdown_table(["JVM", "start, s (3 starts)", f"rows/s, --url, {args.rows:,} rows (2 jobs)"], rows)
    print(md)
    (OUT / "jvm.md").write_text(md)


if __name__ == "__main__":
    main()
