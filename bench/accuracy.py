"""How good tabserve's defaults are on real tables: held-out accuracy (classification) or R^2
(regression) of `tabserve train`'s defaults over several seeds (each seed is another split and
initialisation), beside scikit-learn's LogisticRegression / Ridge and HistGradientBoosting
fitted on the very same training split and encoded matrix (tabserve's one-hot, imputed inputs)
and scored on the very same test split. The tables are in bench/tables.py. For scikit-learn's
bundled sets it also keeps the tutorial's settings (100 full-batch epochs at lr 0.001) beside
the defaults, which is why the defaults moved away from them.

    .venv/bin/python bench/accuracy.py [--seeds 5] [--tables iris,diamonds,...]

Writes bench/out/accuracy.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field, replace

import numpy as np
from tables import TABLES, Table

from common import OUT, markdown_table
from tabserve.train.config import FitConfig
from tabserve.train.data import DataError, encode_rows
from tabserve.train.fit import fit

# The tutorial: 100 full-batch epochs at lr 0.001, never stopped early (fit still keeps the
# best validation epoch's weights, and trains on the split less its validation part).
TUTORIAL = FitConfig(epochs=100, lr=0.001, batch_size=1_000_000, patience=100)


@dataclass
class Scores:
    tabserve: list[float] = field(default_factory=list)
    linear: list[float] = field(default_factory=list)
    boosting: list[float] = field(default_factory=list)
    tutorial: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)
    inputs: int = 0


def baselines(table, result, seed: int) -> tuple[float, float]:
    """LogisticRegression / Ridge (on standardised inputs) and HistGradientBoosting, fitted on
    tabserve's encoded training split (validation part included) and scored on its test split."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    x_train = encode_rows(table, result.encoder, result.train_index)
    x_test = encode_rows(table, result.encoder, result.test_index)
    y_train, y_test = table.y[result.train_index], table.y[result.test_index]
    if table.task == "classification":
        models = [
            make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
            HistGradientBoostingClassifier(random_state=seed),
        ]
        score = accuracy_score
    else:
        models = [make_pipeline(StandardScaler(), Ridge()), HistGradientBoostingRegressor(random_state=seed)]
        score = r2_score
    # One OpenMP thread: with two, HistGradientBoosting spin-waits for cores that other
    # processes hold and was 10x slower (ames: 27 s against 2.5 s) on a busy 2-core machine.
    with threadpool_limits(1):
        linear, boosting = (float(score(y_test, m.fit(x_train, y_train).predict(x_test))) for m in models)
    return linear, boosting


def measure(spec: Table, seeds: int) -> tuple[object, Scores]:
    table = spec.load()
    metric = "test_accuracy" if table.task == "classification" else "test_r2"
    scores = Scores()
    for seed in range(seeds):
        t0 = time.perf_counter()
        result = fit(table, FitConfig(seed=seed))
        scores.seconds.append(time.perf_counter() - t0)
        scores.tabserve.append(result.metrics[metric])
        scores.epochs.append(result.metrics["epochs_run"])
        scores.inputs = result.encoder.width
        linear, boosting = baselines(table, result, seed)
        scores.linear.append(linear)
        scores.boosting.append(boosting)
        if spec.builtin:  # the tutorial's settings on the bundled sets, where they came from
            scores.tutorial.append(fit(table, replace(TUTORIAL, seed=seed)).metrics[metric])
        print(
            f"{spec.name} seed {seed}: tabserve {scores.tabserve[-1]:.3f} ({scores.seconds[-1]:.1f} s, "
            f"{scores.epochs[-1]} epochs), linear {linear:.3f}, boosting {boosting:.3f}",
            file=sys.stderr,
            flush=True,
        )
    return table, scores


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    ap.add_argument("--tables", default=",".join(TABLES), help=f"comma-separated, of: {', '.join(TABLES)}")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.tables.split(",") if n.strip()]
    unknown = [n for n in names if n not in TABLES]
    if unknown:
        ap.error(f"unknown table(s) {', '.join(unknown)}; choose from {', '.join(TABLES)}")

    start = time.perf_counter()
    rows, tutorial_rows, setups, failures = [], [], [], []
    for name in names:
        spec = TABLES[name]
        setups.append([name, spec.source, f"`tabserve train {spec.train_args()}`"])
        try:
            table, s = measure(spec, args.seeds)
        except DataError as exc:
            print(f"{name}: {exc}", file=sys.stderr, flush=True)
            failures.append(f"{name}: {exc}")
            rows.append([name, "", spec.task, "", "load_csv refused it (below)", "", "", "", "", ""])
            continue
        metric = "accuracy" if table.task == "classification" else "R^2"
        rows.append(
            [
                name,
                f"{len(table.y):,}",
                table.task,
                metric,
                f"{np.mean(s.tabserve):.3f} [{min(s.tabserve):.3f}-{max(s.tabserve):.3f}]",
                f"{np.mean(s.linear):.3f}",
                f"{np.mean(s.boosting):.3f}",
                f"{np.mean(s.seconds):.1f}",
                f"{np.mean(s.epochs):.0f}",
                f"{s.inputs}",
            ]
        )
        if s.tutorial:
            tutorial_rows.append(
                [
                    name,
                    f"{np.mean(s.tutorial):.3f} [{min(s.tutorial):.3f}-{max(s.tutorial):.3f}]",
                    rows[-1][4],
                ]
            )
    seeds = f"seeds 0-{args.seeds - 1}"
    md = markdown_table(
        [
            "table",
            "rows",
            "task",
            "metric",
            f"tabserve mean [min-max], {seeds}",
            "LogisticRegression / Ridge",
            "HistGradientBoosting",
            "tabserve train s/seed",
            "epochs run",
            "inputs",
        ],
        rows,
    )
    if tutorial_rows:
        md += "\nThe tutorial's settings (100 full-batch epochs, lr 0.001) against the defaults:\n\n"
        md += markdown_table(
            ["table", "tutorial mean [min-max]", "tabserve defaults mean [min-max]"], tutorial_rows
        )
    md += "\nHow each table was trained:\n\n" + markdown_table(["table", "source", "command"], setups)
    for failure in failures:
        md += f"\n```\n{failure}\n```\n"
    total = time.perf_counter() - start
    md += f"\nWhole bench: {total:.0f} s ({seeds}; baselines and data loading included).\n"
    print(md)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "accuracy.md").write_text(md)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
