"""GPU check (run where a GPU is): the archive's handler on cuda against the CPU (same
predictions within 1e-5, same errors), and rows/s of in-process GPU scoring of a 1,000,000-row
CSV (`tabserve score --engine local` code path) next to the CPU in the same run.

    python3 bench/gpu_check.py model_store/iris.mar [--rows 1000000] [--out DIR]

Needs numpy, torch, requests, psutil and PyYAML; imports tabserve from this checkout.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tabserve.batch.engines.local import LocalEngine  # noqa: E402
from tabserve.scorer import ScoreConfig, score  # noqa: E402

FEATURES = "sepal_length_cm,sepal_width_cm,petal_length_cm,petal_width_cm"


def make_csv(path: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(rows, 4)) * [0.8, 0.4, 1.7, 0.7] + [5.8, 3.0, 3.7, 1.2]).round(2)
    with open(path, "w") as f:
        f.write("id," + FEATURES + "\n")
        for start in range(0, rows, 100_000):
            block = x[start : start + 100_000]
            f.write(
                "".join(f"{start + i},{a},{b},{c},{d}\n" for i, (a, b, c, d) in enumerate(block.tolist()))
            )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mar", type=Path)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--out", type=Path, default=Path("."))
    args = ap.parse_args()
    report: dict = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name(0)
    cpu = LocalEngine(args.mar)
    gpu = LocalEngine(args.mar, gpu_id=0)
    report["gpu_device"] = str(gpu.handler.predictor.device)

    # 1. Same answers: random rows plus malformed ones, through the handler on both devices.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5000, 4)) * [0.8, 0.4, 1.7, 0.7] + [5.8, 3.0, 3.7, 1.2]
    lines = [",".join(map(repr, r)) for r in x.tolist()] + ["1,2,3", "1,x,3,4", "1,,3,4", "nan,1,2,3"]
    body = "\n".join([FEATURES, *lines, ""]).encode()
    for engine in (cpu, gpu):
        engine.probe(FEATURES.encode())
    a, b = cpu.score(body, len(lines), 1), gpu.score(body, len(lines), 1)
    # Every row's numbers, the malformed lines' too (NaN where a row failed: the same rows).
    report["max_abs_diff_gpu_vs_cpu"] = float(np.nanmax(np.abs(a.values - b.values)))
    report["labels_equal"] = bool(np.array_equal(a.labels, b.labels))
    report["errors_equal"] = bool(
        a.errors and a.errors == b.errors and np.array_equal(np.isnan(a.values), np.isnan(b.values))
    )
    report["same_within_1e-5"] = bool(report["max_abs_diff_gpu_vs_cpu"] <= 1e-5)

    # 2. rows/s of in-process scoring of a 1M-row CSV, GPU and CPU, same file, same run.
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "in.csv"
        make_csv(data, args.rows)
        for name, engine in (("gpu", gpu), ("cpu", cpu)):
            for chunk in (10_000, 100_000):
                t = time.perf_counter()
                res = score(
                    ScoreConfig(
                        str(data),
                        str(Path(tmp) / f"{name}.csv"),
                        engine="local",
                        chunk_rows=chunk,
                        progress=False,
                    ),
                    engine=engine,
                )
                report[f"{name}_rows_per_s_chunk_{chunk}"] = round(res.rows / (time.perf_counter() - t))
        # The model alone on the GPU, to show what the rest costs.
        model = gpu.handler.predictor
        xs = np.tile(x, (args.rows // len(x) + 1, 1))[: args.rows]
        model.predict_proba(xs[:1000])
        t = time.perf_counter()
        model.predict_proba(xs)
        report["gpu_model_only_rows_per_s"] = round(args.rows / (time.perf_counter() - t))
    cpu.close()
    gpu.close()
    text = json.dumps(report, indent=2)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(text + "\n")
    sys.exit(0 if report["same_within_1e-5"] and report["labels_equal"] and report["errors_equal"] else 1)


if __name__ == "__main__":
    main()
