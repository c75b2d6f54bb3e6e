"""How the drift report's flag behaves (tabserve/batch/report.py: PSI with its chance guard,
and the share of values outside the training range): on batches drawn from the training
distribution itself (false flags, and the PSI chance alone gives) and on batches whose mean
moved by half a standard deviation (how often that is flagged), for small and large training
sets and batches. Normal data in the training deciles, as `tabserve train` bins it.

    .venv/bin/python bench/drift_power.py [--trials 400]
"""

from __future__ import annotations

import argparse

import numpy as np

from tabserve.batch.report import SIGNIFICANCE, excess, level, psi, worst
from tabserve.train.export import bins

# Each check as a report of a 4-feature model makes it (Iris: 4 features and the predictions).
ALPHA = SIGNIFICANCE / 5


def trial(rng: np.random.Generator, n_train: int, n: int, shift: float) -> tuple[float, bool]:
    """(PSI, flagged): flagged by PSI or by the share outside the training range, as the
    report flags a numeric feature without missing values."""
    train = rng.normal(size=n_train)
    baseline = bins(train)
    edges = np.asarray(baseline["edges"])
    x = rng.normal(shift, 1.0, size=n)
    counts = np.bincount(np.searchsorted(edges, x, side="right"), minlength=len(edges) + 1).tolist()
    value, used = psi([*counts, 0], [*baseline["counts"], 0])  # and the (empty) missing bin
    outside = int(((x < train.min()) | (x > train.max())).sum())
    levels = (
        level(value, n, n_train, used, ALPHA),
        excess(outside, n, 2 * n_train / (n_train + 1), n_train, ALPHA),
    )
    return value, worst(levels) not in ("none", None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=400)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print("| training rows | batch rows | PSI by chance: median, p99 | false flags | 0.5-sd shift flagged |")
    print("|---|---|---|---|---|")
    for n_train in (120, 10_000):
        for n in (30, 100, 1_000, 100_000):
            null = [trial(rng, n_train, n, 0.0) for _ in range(args.trials)]
            moved = [trial(rng, n_train, n, 0.5) for _ in range(args.trials)]
            values = [v for v, _ in null]
            print(
                f"| {n_train:,} | {n:,} | {np.median(values):.3f}, {np.quantile(values, 0.99):.3f} "
                f"| {sum(f for _, f in null)}/{args.trials} | {sum(f for _, f in moved)}/{args.trials} |"
            )


if __name__ == "__main__":
    main()
