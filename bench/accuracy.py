"""Why tabserve's training defaults: test accuracy of the tutorial's settings (100 full-batch
epochs at lr 0.001) against tabserve's (200 epochs of mini-batches of 16 at lr 0.001) on the
bundled data sets, over several seeds (each seed is another 80/20 split and initialisation).

    .venv/bin/python bench/accuracy.py [--seeds 10]
"""

from __future__ import annotations

import argparse

import numpy as np

from common import OUT, markdown_table
from tabserve.train.config import FitConfig
from tabserve.train.data import BUILTIN, load_builtin
from tabserve.train.fit import fit

SETTINGS = {
    "tutorial: 100 full-batch epochs, lr 0.001": FitConfig(epochs=100, lr=0.001, batch_size=1_000_000),
    "tabserve default: 200 epochs, batch 16, lr 0.001": FitConfig(),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    args = ap.parse_args()
    rows = []
    for dataset in BUILTIN:
        data = load_builtin(dataset)
        for label, config in SETTINGS.items():
            accs = [
                fit(data, FitConfig(**{**config.__dict__, "seed": seed})).metrics["test_accuracy"]
                for seed in range(args.seeds)
            ]
            rows.append(
                [
                    dataset,
                    label,
                    f"{np.mean(accs):.3f}",
                    f"{min(accs):.3f}",
                    f"{max(accs):.3f}",
                    f"{accs[0]:.3f}",
                ]
            )
            print(rows[-1], flush=True)
    md = markdown_table(
        ["data set", "settings", f"mean test accuracy, seeds 0-{args.seeds - 1}", "min", "max", "seed 0"],
        rows,
    )
    print(md)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "accuracy.md").write_text(md)


if __name__ == "__main__":
    main()
