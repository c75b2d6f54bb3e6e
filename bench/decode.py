"""The handler's CSV path, rows per second: one batch chunk (header + N rows, text/csv in,
text/csv out) through TabularHandler.handle, in process, for a numbers-only model (Iris) and
a model with text columns and missing values (penguins, rows taken from the raw file).

    .venv/bin/python bench/decode.py [--rows 20000] [--repeat 5] [--handler DIR]

--handler points at another checkout's handler/ folder (e.g. a `git worktree` of an older
commit) to measure it on the same machine in the same run: the numbers-only model is then
the artifacts folder given by --iris (an older handler reads only the schema format it
knows). Prints the best of --repeat runs per model.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT

PENGUINS = ROOT / "examples" / "penguins.csv"


def load_handler(folder: Path):
    """handler/ imported as a top-level package from `folder` (its modules import each other
    relatively, as they do unpacked from a .mar)."""
    sys.path.insert(0, str(folder.parent))
    entry = importlib.import_module(f"{folder.name}.entry")
    local = importlib.import_module(f"{folder.name}.local")
    return entry, local


def body(lines: list[str], header: str, rows: int) -> str:
    out = [header]
    while len(out) <= rows:
        out.extend(lines)
    return "\n".join(out[: rows + 1]) + "\n"


def measure(entry, local, model_dir: Path, text: str, repeat: int) -> float:
    handler = entry.TabularHandler()
    ctx = local.LocalContext(model_dir, "m", {"model": {"modelVersion": "1"}}, {})
    handler.initialize(ctx)
    headers = {"Content-Type": "text/csv", "Accept": "text/csv", "X-Tabserve-Csv-Header": "present"}
    best = float("inf")
    for _ in range(repeat):
        ctx.request_processor = [local._Request(headers)]
        t0 = time.perf_counter()
        answer = handler.handle([{"body": text.encode()}], ctx)[0]
        best = min(best, time.perf_counter() - t0)
        assert ctx.request_processor[0].status == 200, answer[:300]
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--handler", type=Path, default=ROOT / "handler")
    ap.add_argument("--iris", type=Path, help="numbers-only artifacts (default: trained here)")
    args = ap.parse_args()
    entry, local = load_handler(args.handler.resolve())
    work = Path(tempfile.mkdtemp(prefix="tabserve-bench-decode-"))
    sys.path.insert(0, str(ROOT))
    from tabserve.train.config import FitConfig
    from tabserve.train.data import load_builtin, load_csv
    from tabserve.train.export import export
    from tabserve.train.fit import fit

    cfg = FitConfig(epochs=5, patience=5)
    iris_dir = args.iris
    if iris_dir is None:
        iris_dir = work / "iris"
        table = load_builtin("iris")
        export(table, cfg, fit(table, cfg), iris_dir)
    features = json.loads((iris_dir / "schema.json").read_text())["features"]
    iris_rows = body(
        ["5.1,3.5,1.4,0.2", "6.2,2.9,4.3,1.3", "7.7,3.0,6.1,2.3", "5.0,3.4,1.5,0.2"],
        ",".join(features),
        args.rows,
    )
    results = {"numbers only (iris)": measure(entry, local, iris_dir, iris_rows, args.repeat)}
    if (args.handler.resolve() / "columns.py").exists():
        table = load_csv(PENGUINS, "species")
        export(table, cfg, fit(table, cfg), work / "penguins")
        lines = PENGUINS.read_text().splitlines()
        raw = [",".join(f for k, f in enumerate(line.split(",")) if k != 0) for line in lines]
        results["text columns + missing (penguins)"] = measure(
            entry, local, work / "penguins", body(raw[1:], raw[0], args.rows), args.repeat
        )
    print(f"handler {args.handler}, {args.rows:,} rows per chunk, best of {args.repeat}")
    for name, seconds in results.items():
        print(f"  {name:36s} {args.rows / seconds:12,.0f} rows/s  ({seconds * 1000:.1f} ms per chunk)")


if __name__ == "__main__":
    main()
