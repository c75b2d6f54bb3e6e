"""Shared pieces of the benchmarks: data, the in-process baseline, process measurement."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
DOCS = ROOT / "docs"  # the README's plots
FEATURES = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]


def ensure_model(store: Path = ROOT / "model_store", artifacts: Path = ROOT / "artifacts" / "iris") -> Path:
    """The Iris model archive, trained and archived with the defaults if missing, or made from
    another handler than this source tree's, or without training bins."""
    if not (store / "iris.mar").exists() or not _has_baseline(store / "iris.mar"):
        tabserve = [sys.executable, "-m", "tabserve"]
        subprocess.run([*tabserve, "train", "--out", str(artifacts)], check=True)
        subprocess.run(
            [*tabserve, "archive", "--artifacts", str(artifacts), "--model-store", str(store)], check=True
        )
    return store


def _has_baseline(mar: Path) -> bool:
    """Whether the archive holds this source tree's handler and a schema with training bins."""
    import json
    import zipfile

    with zipfile.ZipFile(mar) as z:
        names = set(z.namelist())
        schema = json.loads(z.read("schema.json"))
        for source in (ROOT / "handler").glob("*.py"):
            name = f"tabserve_handler/{source.name}"
            if name not in names or z.read(name) != source.read_bytes():
                return False
    stats = schema.get("feature_stats", {})
    return all("bins" in s for s in stats.values())


def iris_like_csv(path: Path, rows: int, seed: int = 0) -> Path:
    """An Iris-like CSV with an id column: written once, reused by later runs."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp")
    block = 1_000_000
    with pacsv.CSVWriter(tmp, pa.schema([("id", pa.int64())] + [(f, pa.float64()) for f in FEATURES])) as w:
        for start in range(0, rows, block):
            n = min(block, rows - start)
            x = (rng.normal(size=(n, 4)) * [0.8, 0.4, 1.7, 0.7] + [5.8, 3.0, 3.7, 1.2]).round(2)
            cols = [pa.array(np.arange(start, start + n))] + [pa.array(x[:, j]) for j in range(4)]
            w.write_table(pa.table(cols, names=["id", *FEATURES]))
    # pyarrow quotes header names; plain names are what users' files have.
    with open(tmp, "rb") as src, open(path, "wb") as dst:
        dst.write(src.readline().replace(b'"', b""))
        while block_bytes := src.read(1 << 24):
            dst.write(block_bytes)
    tmp.unlink()
    return path


def iris_like_parquet(csv: Path, row_group_rows: int = 131_072) -> Path:
    """The same rows as `csv` in Parquet (row groups of about 128k rows), beside it: written
    once, reused by later runs."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = csv.with_suffix(".parquet")
    if not path.exists():
        tmp = path.with_suffix(".parquet.tmp")
        pq.write_table(pacsv.read_csv(csv), tmp, row_group_size=row_group_rows)
        tmp.rename(path)
    return path


def output_rows(path: Path) -> int:
    """Data rows in a scorer's output: Parquet from its metadata, CSV by counting newlines in
    blocks (minus the header; the benchmarks' outputs have no quoted newlines)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    lines = 0
    last = b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n") - 1


def in_process_score(inp: Path, out: Path, artifacts: Path) -> float:
    """The fastest honest CSV-to-CSV job in one process: pyarrow read, numpy scaling, one
    torch pass per 100,000 rows, pyarrow write. Same output columns as tabserve score.
    Returns seconds."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import torch

    from tabserve.handler.predictor import Predictor

    t0 = time.perf_counter()
    torch.set_num_threads(os.cpu_count() or 1)
    predictor = Predictor(artifacts)
    table = pacsv.read_csv(inp)
    x = np.column_stack([table.column(f).to_numpy() for f in predictor.features])
    probs = np.concatenate([predictor.predict_proba(x[i : i + 100_000]) for i in range(0, len(x), 100_000)])
    labels = np.asarray(predictor.classes)[probs.argmax(axis=1)]
    for k, c in enumerate(predictor.classes):
        table = table.append_column(f"p_{c}", pa.array(probs[:, k]))
    table = table.add_column(table.num_columns - len(predictor.classes), "label", pa.array(labels))
    table = table.append_column("error", pa.array([""] * len(x)))
    pacsv.write_csv(table, out, pacsv.WriteOptions(quoting_style="needed"))
    return time.perf_counter() - t0


@dataclass
class Run:
    seconds: float
    peak_rss_mb: float
    returncode: int
    stdout: str
    cpu_seconds: float = 0.0  # user + system of the process itself (its threads, not its children)


def run_measured(argv: list[str], env: dict[str, str] | None = None) -> Run:
    """Run a command; wall time, the peak RSS and the CPU time of that process (not its
    children: the scorer's own memory and CPU, without the TorchServe or the workers it
    starts). Both sampled every 20 ms: the CPU time is the last sample, up to 20 ms short."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}
    )
    peak = 0
    cpu = 0.0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak, cpu
        try:
            p = psutil.Process(proc.pid)
            while not stop.is_set():
                with p.oneshot():
                    peak = max(peak, p.memory_info().rss)
                    times = p.cpu_times()
                # max: a zombie's last reading may come back lower.
                cpu = max(cpu, times.user + times.system)
                time.sleep(0.02)
        except psutil.Error:
            return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    stop.set()
    sampler.join()
    return Run(time.perf_counter() - t0, peak / 2**20, proc.returncode, out, cpu)


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def save_plot(fig, ax, name: str, legend_size: int = 8, legend_loc: str = "best") -> Path:
    """Legend, grid and layout as every README plot has them; written to docs/NAME."""
    ax.legend(fontsize=legend_size, loc=legend_loc)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    DOCS.mkdir(exist_ok=True)
    fig.savefig(DOCS / name, dpi=120)
    return DOCS / name


if __name__ == "__main__":
    # `python bench/common.py IN OUT`: the in-process limit in a process of its own (so its
    # memory can be measured like the scorer's); prints its seconds and CPU seconds as JSON,
    # both without the imports.
    import json

    # Imported before the clocks start, as in a warm process.
    import pyarrow.csv  # noqa: F401
    import torch  # noqa: F401

    from tabserve.handler.predictor import Predictor  # noqa: F401

    cpu0 = time.process_time()
    seconds = in_process_score(Path(sys.argv[1]), Path(sys.argv[2]), ROOT / "artifacts" / "iris")
    print(json.dumps({"seconds": seconds, "cpu_seconds": time.process_time() - cpu0}))
