"""Where a batch job's CPU goes, stage by stage, on one core: the scorer's own stages (read,
build request bodies, render the output text, write) and the handler's (decode, model, the
drift report's counts, batch answer), in microseconds per row, each measured alone over the
same Iris rows. The floor under `tabserve score`'s CPU per million rows is the sum of the
scorer's stages.

    .venv/bin/python bench/stages.py [--rows 200000] [--chunk-rows 5000]
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np

from common import OUT, ensure_model, iris_like_csv, markdown_table


def per_row(fn, rows: int, repeat: int = 3) -> float:
    """Best of `repeat` runs of fn(), in microseconds per row."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best / rows * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--chunk-rows", type=int, default=5000)
    args = ap.parse_args()

    import pyarrow as pa
    import pyarrow.compute as pc
    import torch

    from tabserve.batch.engines.local import LocalEngine
    from tabserve.batch.readers import CsvReader
    from tabserve.batch.results import _field_columns, from_batch, render_rows
    from tabserve.handler.response import to_batch

    torch.set_num_threads(1)
    store = ensure_model()
    data = iris_like_csv(OUT / f"iris_{args.rows}.csv", args.rows)
    n = args.rows

    def read():
        return list(CsvReader(str(data), args.chunk_rows, 1 << 20).batches())

    batches = read()
    engine = LocalEngine(store / "iris.mar")
    columns = engine.probe(batches[0].header)
    bodies = [b.body() for b in batches]
    results = [engine.score(body, b.n, b.first_row) for body, b in zip(bodies, batches)]
    predictor = engine.handler.predictor
    decoded = [_decode(engine, body, b.first_row) for body, b in zip(bodies, batches)]
    answers = [to_batch(r.values, [None] * len(r), predictor.classes) for r in results]
    predicted = [predictor.predict_rows(r) for r in decoded]

    def numbers_only():
        for r in results:
            for k in range(r.values.shape[1]):
                pc.cast(pa.array(np.ascontiguousarray(r.values[:, k])), pa.string())

    sink = io.BytesIO()
    blocks = [render_rows(b.records, r, columns) for b, r in zip(batches, results)]
    scorer = [
        ("read: records and offsets (csvio.RecordReader)", per_row(read, n)),
        ("request bodies (header + records)", per_row(lambda: [b.body() for b in batches], n)),
        (
            "read the batch answer (.npy + JSON)",
            per_row(lambda: [from_batch(a, b.n) for a, b in zip(answers, batches)], n),
        ),
        (
            "render the output text (all)",
            per_row(lambda: [render_rows(b.records, r, columns) for b, r in zip(batches, results)], n),
        ),
        ("  of which the numbers' text (pyarrow, 3 floats)", per_row(numbers_only, n)),
        (
            "  of which the output fields (labels, numbers, errors)",
            per_row(lambda: [_field_columns(r, columns) for r in results], n),
        ),
        ("write (to memory)", per_row(lambda: [sink.write(b) for b in blocks], n)),
    ]
    handler = [
        (
            "decode the CSV body (handler.rows)",
            per_row(lambda: [_decode(engine, body, b.first_row) for body, b in zip(bodies, batches)], n),
        ),
        (
            "the model (scale, MLP, softmax; 1 thread)",
            per_row(lambda: [predictor.predict_rows(r) for r in decoded], n),
        ),
        (
            "the batch answer (to_batch)",
            per_row(lambda: [to_batch(r.values, [None] * len(r), predictor.classes) for r in results], n),
        ),
        (
            "the drift report's counts (handler.profile)",
            per_row(lambda: [_profile(engine, d, p) for d, p in zip(decoded, predicted)], n),
        ),
        (
            "the whole handler call (LocalModel.respond)",
            per_row(lambda: [engine.score(body, b.n, b.first_row) for body, b in zip(bodies, batches)], n),
        ),
        (
            "  the same with the report's counts",
            per_row(lambda: _scored_with_counts(engine, bodies, batches), n),
        ),
    ]
    rows = [[name, f"{us:.2f}"] for name, us in scorer]
    total = sum(us for name, us in scorer if not name.startswith("  ") and not name.startswith("write"))
    rows.append(["scorer stages, sum (read, bodies, answer, render)", f"{total:.2f}"])
    rows += [[name, f"{us:.2f}"] for name, us in handler]
    md = f"{n:,} Iris rows in chunks of {args.chunk_rows:,}, one core, best of 3\n\n"
    md += markdown_table(["stage", "us per row"], rows)
    print(md)
    (OUT / "stages.md").write_text(md)
    engine.close()


def _profile(engine, rows, predicted):
    """The handler's counts of one decoded, predicted body, as its batch answer makes them."""
    probs, errors = predicted
    return engine.handler.profiler.profile(
        rows.values, errors, probs, rows.missing, rows.new, rows.new_values
    )


def _scored_with_counts(engine, bodies, batches) -> list:
    engine.profile = True
    try:
        return [engine.score(body, b.n, b.first_row) for body, b in zip(bodies, batches)]
    finally:
        engine.profile = False


def _decode(engine, body: bytes, first_row: int):
    """The handler's own decoding of one body (as its entry point calls it)."""
    from importlib import import_module

    entry = import_module(type(engine.handler).__module__)
    return entry._decode(
        body, "text/csv", engine.handler.predictor.encoder, first_row, engine.handler.limits, True
    )


if __name__ == "__main__":
    main()
