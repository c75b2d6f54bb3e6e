"""The drift report of a batch job (tabserve/batch/report.py, handler/profile.py): what it
says about the training data itself, about a shifted feature in every engine, about an unseen
category; its HTML; --fail-on-drift and `tabserve report`; archives without a baseline; and
the counts' containment (any bytes, any profile a server sends)."""

from __future__ import annotations

import copy
import csv
import importlib
import json
import re
import shutil
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tabserve.archive import ArchiveConfig, archive
from tabserve.batch import report as R
from tabserve.batch.engines.local import LocalEngine
from tabserve.batch.pipeline import Totals
from tabserve.batch.results import BATCH_TYPE, Results, merge_profile, read_batch, start_profile
from tabserve.cli import main
from tabserve.handler.profile import Profiler
from tabserve.handler.schema import Schema
from tabserve.scorer import ScoreConfig, score
from tabserve.train.config import FitConfig
from tabserve.train.data import load_builtin, load_csv
from tabserve.train.export import export
from tabserve.train.fit import fit

from .test_batch_io import StopAfter
from .test_fuzz import json_values

ROOT = Path(__file__).resolve().parents[1]
SHIFTED = "petal_length_cm"
JOB_KEYS = ("input", "output", "engine", "finished")


def write_rows(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def iris_csv(tmp_path_factory) -> Path:
    """All 150 Iris rows: the data the model was trained on (its training split is 120 of them)."""
    data = load_builtin("iris")
    return write_rows(tmp_path_factory.mktemp("report") / "iris.csv", list(data.features), data.records)


@pytest.fixture(scope="module")
def shifted_csv(iris_csv: Path) -> Path:
    """The Iris rows with petal_length_cm in millimetres (x 10), the other features as they were."""
    with open(iris_csv, newline="") as f:
        header, *rows = list(csv.reader(f))
    j = header.index(SHIFTED)
    for r in rows:
        r[j] = repr(float(r[j]) * 10)
    return write_rows(iris_csv.with_name("shifted.csv"), header, rows)


@pytest.fixture(scope="module")
def penguins_store(tmp_path_factory) -> Path:
    """A model trained on examples/penguins.csv (text categories, missing values)."""
    root = tmp_path_factory.mktemp("penguins")
    data = load_csv(ROOT / "examples" / "penguins.csv", "species", name="penguins")
    config = FitConfig(epochs=60)
    export(data, config, fit(data, config), root / "artifacts")
    archive(ArchiveConfig(artifacts=root / "artifacts", model_store=root / "store"))
    return root / "store"


def job(inp: Path, out: Path, store: Path, engine: str = "local", **options):
    return score(ScoreConfig(str(inp), str(out), model_store=store, engine=engine, **options))


def report_of(output: Path) -> dict:
    report = json.loads(Path(f"{output}.report.json").read_text())
    for key in JOB_KEYS:
        report["job"].pop(key)
    return report


def test_scoring_the_training_data_reports_no_drift(iris_csv, model_store, penguins_store, tmp_path):
    result = job(iris_csv, tmp_path / "iris.csv", model_store)
    report = result.report
    assert report["drifted"] == [] and not R.drifted(report)
    assert report["lacks"] == []
    assert report["job"]["profiled_rows"] == 150
    for name, f in report["features"].items():
        assert f["level"] == "none" and f["psi"] < 0.05, (name, f["psi"])
        assert f["above_max"] == f["below_min"] == 0  # the training range holds its own data
        assert sum(f["bins"]["batch"]) == 150
    assert report["predictions"]["level"] == "none"
    assert [line for line in result.report_lines() if line.startswith("drift")] == []

    penguins = job(ROOT / "examples" / "penguins.csv", tmp_path / "penguins.csv", penguins_store).report
    assert penguins["drifted"] == [] and penguins["predictions"]["level"] == "none"
    assert penguins["features"]["sex"]["missing"] > 0  # the file's own missing values, as in training
    assert penguins["features"]["island"]["unseen"] == 0


def test_a_shifted_feature_is_flagged_alone_with_the_same_numbers_in_every_engine(
    shifted_csv, model_store, tmp_path
):
    reports = {}
    for engine, options in [
        ("local", {}),
        ("torchserve", {}),
        ("spark", {"partitions": 3, "master": "local[2]"}),
    ]:
        out = tmp_path / f"{engine}.csv" if engine != "spark" else tmp_path / "spark_out"
        result = job(shifted_csv, out, model_store, engine, **options)
        assert result.rows == 150
        reports[engine] = report_of(out)
        lines = [x for x in result.report_lines() if x.startswith("drift:")]
        assert (
            lines[0].startswith(f"drift: {SHIFTED} PSI ")
            and "(high), 100% above the training maximum" in lines[0]
        )
    assert reports["local"] == reports["torchserve"] == reports["spark"]
    report = reports["local"]
    assert report["drifted"] == [SHIFTED]
    f = report["features"][SHIFTED]
    assert f["level"] == "high" and f["above_max_share"] == 1.0 and f["mean_shift_in_training_stds"] > 10
    assert f["bins"]["batch"][-2] == 150  # every value in the last bin (over the last decile's edge)
    others = [n for n in report["features"] if n != SHIFTED]
    assert all(report["features"][n]["level"] == "none" for n in others)


def test_a_category_training_never_saw_is_flagged_with_its_share(penguins_store, tmp_path):
    with open(ROOT / "examples" / "penguins.csv", newline="") as f:
        header, *rows = list(csv.reader(f))
    j = header.index("island")
    for k, r in enumerate(rows):
        if k % 2 == 0:
            r[j] = "Atlantis"
    inp = write_rows(tmp_path / "atlantis.csv", header, rows)
    result = job(inp, tmp_path / "out.csv", penguins_store)
    report = result.report
    assert report["drifted"] == ["island"]
    island = report["features"]["island"]
    assert island["unseen"] == result.unseen["island"] == (len(rows) + 1) // 2
    assert island["unseen_share"] == pytest.approx(0.5, abs=0.01)
    line = next(x for x in result.report_lines() if x.startswith("drift: island"))
    assert "unseen categories" in line


class _Page(HTMLParser):
    """The page's text and its charts: each <figure class="chart"> with its inline <svg>."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.page = page
        self.figures: list[str] = []
        self.text: list[str] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        if tag == "figure":
            self.figures.append(dict(attrs)["data-name"])

    def handle_data(self, data):
        self.text.append(data)

    def charts(self) -> list[ET.Element]:
        return [ET.fromstring(svg) for svg in re.findall(r"<svg .*?</svg>", self.page, re.S)]


def test_the_html_report_renders_a_chart_per_feature_drifted_first(shifted_csv, model_store, tmp_path):
    out = tmp_path / "out.csv"
    report = job(shifted_csv, out, model_store).report
    page = Path(f"{out}.report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    parsed = _Page(page)
    assert "1 of 4 features drifted: petal_length_cm" in " ".join(parsed.text)
    assert parsed.figures[:2] == ["predictions", SHIFTED]
    assert sorted(parsed.figures[2:]) == sorted(set(report["features"]) - {SHIFTED})
    ns = {"svg": "http://www.w3.org/2000/svg"}
    for name, svg in zip(parsed.figures, parsed.charts(), strict=True):
        bars = svg.findall("svg:rect[@class='bar']", ns)
        bins = report["predictions"]["bins"] if name == "predictions" else report["features"][name]["bins"]
        assert len(bars) == 2 * len(bins["labels"])  # training and batch, side by side
        assert svg.find("svg:text", ns).text.startswith(name)
        shares = [float(b.find("svg:title", ns).text.rsplit(": ", 1)[1].rstrip("%")) for b in bars[1::2]]
        assert sum(shares) == pytest.approx(100, abs=0.1 * len(shares))  # the batch's shares


def test_a_report_escapes_what_the_input_and_the_model_name(tmp_path):
    """Feature names and categories are the user's text: the page escapes them."""
    rows = [
        [f"{x:.2f}", "<b>a</b>" if k % 3 else "x&y", str(k % 2)] for k, x in enumerate(np.linspace(0, 9, 90))
    ]
    data = write_rows(tmp_path / "t.csv", ["<script>alert(1)</script>", "c<i>", "y"], rows)
    table = load_csv(data, "y", name="odd", categorical=["c<i>"])
    config = FitConfig(epochs=5)
    export(table, config, fit(table, config), tmp_path / "art")
    archive(ArchiveConfig(artifacts=tmp_path / "art", model_store=tmp_path / "store"))
    rows = [[r[0], "<img src=x onerror=alert(2)>", r[2]] for r in rows]
    inp = write_rows(tmp_path / "in.csv", ["<script>alert(1)</script>", "c<i>", "y"], rows)
    job(inp, tmp_path / "out.csv", tmp_path / "store")
    page = Path(f"{tmp_path / 'out.csv'}.report.html").read_text()
    assert "<script>" not in page and "<img" not in page and "&lt;script&gt;" in page
    parsed = _Page(page)
    assert "&lt;img src=x onerror=alert(2)&gt;: 90" in page  # the unseen category, listed
    assert len(parsed.charts()) == len(parsed.figures) == 3


def test_fail_on_drift_exits_3_and_tabserve_report_prints_the_lines_again(
    shifted_csv, iris_csv, model_store, tmp_path, capsys
):
    out = tmp_path / "out.csv"
    argv = ["score", str(shifted_csv), "-o", str(out), "--engine", "local", "--model-store", str(model_store)]
    assert main([*argv, "--fail-on-drift"]) == R.DRIFT_EXIT
    printed = capsys.readouterr().out.splitlines()
    drift = [x for x in printed if x.startswith("drift:")]
    assert drift[0].startswith(f"drift: {SHIFTED} PSI ") and drift[-1].startswith("drift: predictions PSI")
    assert printed[-1] == f"report: {out}.report.json and {out}.report.html"

    assert main(["report", f"{out}.report.json"]) == 0
    again = capsys.readouterr().out.splitlines()
    assert again[1:] == drift and "1 of 4 features drifted" in again[0]
    assert main(["report", f"{out}.report.json", "--fail-on-drift"]) == R.DRIFT_EXIT

    same = tmp_path / "same.csv"  # no drift: --fail-on-drift changes nothing
    assert (
        main(
            [
                "score",
                str(iris_csv),
                "-o",
                str(same),
                "--engine",
                "local",
                "--model-store",
                str(model_store),
                "--fail-on-drift",
            ]
        )
        == 0
    )
    assert main(["report", str(iris_csv)]) == 1
    assert "is not JSON" in capsys.readouterr().err


def test_no_report_writes_none_and_fail_on_drift_needs_one(shifted_csv, model_store, tmp_path, capsys):
    out = tmp_path / "out.csv"
    argv = ["score", str(shifted_csv), "-o", str(out), "--engine", "local", "--model-store", str(model_store)]
    assert main([*argv, "--no-report"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]
    assert "drift" not in capsys.readouterr().out
    assert main([*argv, "--no-report", "--fail-on-drift"]) == 1
    assert capsys.readouterr().err == (
        "Error: --fail-on-drift (TABSERVE_FAIL_ON_DRIFT) needs the drift report: leave out --no-report "
        "(TABSERVE_NO_REPORT)\n"
    )


def test_an_archive_without_a_baseline_still_scores_and_its_report_says_what_it_lacks(
    artifacts, shifted_csv, tmp_path
):
    old = tmp_path / "old"
    shutil.copytree(artifacts, old)
    schema = json.loads((old / "schema.json").read_text())
    for stats in schema["feature_stats"].values():
        stats.pop("bins")
    schema.pop("prediction_stats")
    (old / "schema.json").write_text(json.dumps(schema))
    archive(ArchiveConfig(artifacts=old, model_store=tmp_path / "store"))
    result = job(shifted_csv, tmp_path / "out.csv", tmp_path / "store")
    report = result.report
    assert result.rows == 150 and report["drifted"] == [] and not R.drifted(report)
    assert len(report["lacks"]) == 2 and "training distributions of sepal_length_cm" in report["lacks"][0]
    f = report["features"][SHIFTED]
    assert f["psi"] is None and f["above_max"] == 150  # the training range is still known
    assert any(x.startswith("report: lacks training distributions of ") for x in result.report_lines())


class NoCounts:
    """An engine whose handler predates the report: answers without counts or a baseline."""

    def __init__(self, inner: LocalEngine) -> None:
        self.inner = inner
        self.columns: list[str] = []

    def probe(self, header: bytes) -> list[str]:
        self.columns = self.inner.probe(header)
        return self.columns

    def score(self, body, n, first_row, retries=None) -> Results:
        return self.inner.score(body, n, first_row)

    def alive(self, header: bytes) -> bool:
        return True

    def close(self) -> None:
        pass


def test_a_handler_without_counts_gives_a_report_that_says_so(iris_csv, model_store, tmp_path):
    inner = LocalEngine(model_store / "iris.mar")
    try:
        result = score(ScoreConfig(str(iris_csv), str(tmp_path / "out.csv")), engine=NoCounts(inner))
    finally:
        inner.close()
    assert result.rows == 150 and result.report["features"] == {}
    assert "the handler's counts" in result.report["lacks"][0]


# --- the counts: added up exactly, whatever the batches; containment ----------------------------


@pytest.fixture(scope="module")
def profiler(artifacts) -> Profiler:
    return Profiler(Schema.load(artifacts))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=6),
    scale=st.sampled_from([1.0, 10.0, 1e6]),
    seed=st.integers(0, 2**16),
)
def test_profiles_of_any_batches_add_up_to_the_whole_jobs(profiler, cuts, scale, seed):
    rng = np.random.default_rng(seed)
    n = 300
    values = rng.normal([5.8, 3.0, 3.7, 1.2], [0.8, 0.4, 1.7, 0.7], size=(n, 4)) * scale
    probs = rng.dirichlet([1, 1, 1], size=n)
    errors = [None if rng.random() > 0.1 else "row: bad" for _ in range(n)]
    whole = profiler.profile(values, errors, probs)
    bounds = [0, *sorted(cuts), n]
    total = start_profile(profiler.baseline())
    for lo, hi in zip(bounds, bounds[1:]):
        total = merge_profile(total, profiler.profile(values[lo:hi], errors[lo:hi], probs[lo:hi]))
    for name, f in whole["features"].items():
        g = total["features"][name]
        assert {k: v for k, v in f.items() if k not in ("mean", "m2")} == {
            k: v for k, v in g.items() if k not in ("mean", "m2")
        }
        assert g["mean"] == pytest.approx(f["mean"], rel=1e-12)
        assert g["m2"] == pytest.approx(f["m2"], rel=1e-9)
    assert total["predictions"] == whole["predictions"] and total["rows"] == whole["rows"]
    one, many = Totals(rows=n, profile=whole), Totals(rows=n, profile=total)
    assert R.build(profiler.baseline(), one, {}) == R.build(profiler.baseline(), many, {})


profile_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**400) | st.floats() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=12)
        | st.dictionaries(
            st.sampled_from(
                [
                    "rows",
                    "version",
                    "features",
                    "predictions",
                    "counts",
                    "mean",
                    "m2",
                    "present",
                    "values",
                    "min",
                    "max",
                    "bins",
                    SHIFTED,
                    "x",
                ]
            ),
            children,
            max_size=6,
        )
    ),
    max_leaves=30,
)


def _mutations(profile):
    """Profiles one change away from a valid one: a value replaced anywhere in it."""
    paths = []

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, (*path, k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, (*path, i))
        paths.append(path)

    walk(profile, ())
    return st.tuples(st.sampled_from(paths[:-1]), profile_values)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
@example(data=None)
def test_any_profile_a_server_sends_is_counted_or_refused_never_fails_the_job(profiler, data):
    """A batch answer's profile comes over HTTP: whatever it holds, adding it up either works
    (same layout) or counts its rows as unprofiled; the job goes on."""
    baseline = profiler.baseline()
    good = profiler.profile(np.tile([5.8, 3.0, 3.7, 1.2], (3, 1)), [None] * 3, np.full((3, 3), 1 / 3))
    if data is None:
        hostile = {**good, "rows": -1}
    elif data.draw(st.booleans(), label="anything"):
        hostile = data.draw(profile_values, label="profile")
    else:
        hostile = copy.deepcopy(good)
        path, value = data.draw(_mutations(good), label="mutation")
        node = hostile
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    totals = Totals(profile=start_profile(baseline))
    results = Results(np.zeros((3, 3)), np.zeros(3, np.int32), {}, {}, hostile)
    totals.count(results)
    if totals.unprofiled == 0:  # it was taken: it has the baseline's layout, counts not negative
        assert totals.profile.keys() == good.keys() and totals.profile["rows"] >= 0
        R.build(baseline, totals, {})
    else:
        assert totals.unprofiled == 3 and totals.profile == start_profile(baseline)


@pytest.fixture(scope="module")
def penguin_model(penguins_store):
    engine = LocalEngine(penguins_store / "penguins.mar")
    yield engine.model
    engine.close()


HEADER = b"species,island,bill_length_mm,bill_depth_mm,flipper_length_mm,body_mass_g,sex,year"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=2000))
@example(body=b"\n,Dream,,,,,,\nx,Atlantis,1e308,NA,nan,-0,female,2007\n")
@example(body=b"\n" + b",Biscoe,39,18,181,3750,male,2007\n" * 3)
def test_any_bytes_get_an_answer_whose_counts_are_exactly_its_predicted_rows(penguin_model, body):
    """The handler's counts for a batch job are inside its containment boundary: any body
    gets its answer, and the counts cover exactly the rows the answer predicted."""
    answer = penguin_model.respond(HEADER + b"\n" + body, 1, accept=BATCH_TYPE, profile="rows")
    if answer.status != 200:
        assert answer.status in (400, 413)
        return
    read = read_batch(answer.body)
    predicted = len(read.values) - len(read.errors)
    profile = read.profile
    assert profile["rows"] == predicted
    assert sum(profile["predictions"]["counts"]) == predicted
    for f in profile["features"].values():
        assert f["present"] + f["missing"] == predicted
        assert sum(f.get("bins") or f.get("slots")) == f["present"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=json_values)
@example(value={"instances": [{"island": None}, {"island": "Atlantis", "sex": 3}, [], {}]})
def test_any_json_rows_give_online_counts_within_their_rows(penguin_model, value):
    """The online counters (FeatureMissing, FeatureOutOfRange, FeatureUnseen) come from the
    rows of any JSON value the handler decodes: never an exception, never more than the rows
    predicted; and the batch counts of the same rows agree with them."""
    predictor = penguin_model.handler.predictor
    profiler = penguin_model.handler.profiler
    # The archive's own modules (unpacked under a package name of their own).
    own = importlib.import_module(type(penguin_model).__module__.rsplit(".", 1)[0] + ".rows")
    try:
        rows = own.from_json(value, predictor.encoder)
    except own.BadRequest:
        return
    probs, errors = predictor.predict_rows(rows)
    predicted = errors.count(None)
    counts = profiler.counts(rows.values, errors, rows.missing, rows.new)
    profile = profiler.profile(rows.values, errors, probs, rows.missing, rows.new)
    for name, (missing, outside, unseen) in counts.items():
        f = profile["features"][name]
        assert 0 <= missing + unseen <= predicted and 0 <= outside <= predicted
        assert missing == f["missing"]
        assert outside == f.get("below", 0) + f.get("above", 0)
        assert unseen == f.get("unseen", 0)
    json.dumps(profile)  # it travels as JSON


def test_a_small_batch_in_other_units_is_flagged_by_its_share_outside_the_training_range(
    shifted_csv, model_store, tmp_path
):
    """Ten rows are too few for PSI to tell from chance; ten of ten values over the training
    maximum are not."""
    with open(shifted_csv, newline="") as f:
        header, *rows = list(csv.reader(f))
    inp = write_rows(tmp_path / "ten.csv", header, rows[:10])
    result = job(inp, tmp_path / "out.csv", model_store)
    f = result.report["features"][SHIFTED]
    assert f["psi_level"] == "none" and f["psi"] < f["psi_flagged_from"]
    assert f["flags"]["range"] == "high" and f["level"] == "high"
    assert result.report["drifted"] == [SHIFTED]
    line = next(x for x in result.report_lines() if x.startswith("drift:"))
    assert line.startswith(f"drift: {SHIFTED} PSI ") and "100% above the training maximum (high)" in line


def test_a_job_with_no_row_scored_compares_nothing_and_says_so(model_store, tmp_path):
    inp = write_rows(
        tmp_path / "bad.csv",
        ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"],
        [["a", "b", "c", "d"]] * 20,
    )
    out = tmp_path / "out.csv"
    result = job(inp, out, model_store)
    report = result.report
    assert result.errors == 20 and report["drifted"] == []
    assert all(f["psi"] is None and f["level"] is None for f in report["features"].values())
    assert report["lacks"] == ["scored rows: no row was predicted, so nothing was compared"]
    assert "nothing compared: no row was scored" in Path(f"{out}.report.html").read_text()
    assert report["errors"]["kinds"] == {"feature 'sepal_length_cm' is not a number": 20}


def test_the_report_files_are_readable_like_the_output(iris_csv, model_store, tmp_path):
    out = tmp_path / "out.csv"
    job(iris_csv, out, model_store)
    mode = out.stat().st_mode & 0o777
    for suffix in (".report.json", ".report.html"):
        assert Path(f"{out}{suffix}").stat().st_mode & 0o777 == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "out.csv",
        "out.csv.report.html",
        "out.csv.report.json",
    ]


def test_the_spread_of_values_far_from_the_training_mean_is_right_whatever_the_batches(profiler):
    """Values around 12,345,678.9 with a spread of 0.029 (a column in other units): the mean
    and spread come out right and the same for one batch as for batches of 7 rows."""
    rng = np.random.default_rng(1)
    n = 3000
    values = np.tile([5.8, 3.0, 3.7, 1.2], (n, 1))
    values[:, 0] = 12345678.9 + rng.uniform(0, 0.1, n)
    probs = np.full((n, 3), 1 / 3)
    errors = [None] * n
    whole = profiler.profile(values, errors, probs)
    total = start_profile(profiler.baseline())
    for lo in range(0, n, 7):
        total = merge_profile(
            total, profiler.profile(values[lo : lo + 7], errors[lo : lo + 7], probs[lo : lo + 7])
        )
    reports = [R.build(profiler.baseline(), Totals(rows=n, profile=p), {}) for p in (whole, total)]
    assert reports[0] == reports[1]
    f = reports[0]["features"]["sepal_length_cm"]
    assert f["std"] == pytest.approx(np.std(values[:, 0]), rel=1e-5)
    assert f["mean"] == pytest.approx(12345678.95, rel=5e-6)  # 6 significant digits


def test_a_report_that_cannot_be_written_is_a_warning_and_the_output_is_committed(
    iris_csv, model_store, tmp_path, capsys
):
    out = tmp_path / "out.csv"
    Path(f"{out}.report.html").mkdir()  # in the way of the report, not of the output
    argv = ["score", str(iris_csv), "-o", str(out), "--engine", "local", "--model-store", str(model_store)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert out.read_text().count("\n") == 151 and not Path(f"{out}.part").exists()
    assert f"report: warning: the drift report could not be written beside {out}: " in printed


def test_resume_refuses_another_model_and_goes_on_with_the_same(iris_csv, model_store, tmp_path):
    """The checkpoint names the model (its baseline's digest): a job resumed with another
    model would write two models' predictions into one output, and add up counts that do
    not belong together."""
    out = tmp_path / "out.csv"
    inner = LocalEngine(model_store / "iris.mar")
    try:
        from tabserve.scorer import JobFailed

        with pytest.raises(JobFailed, match="--resume"):
            score(
                ScoreConfig(str(iris_csv), str(out), chunk_rows=16, concurrency=1),
                engine=StopAfter(inner, 50),
            )
    finally:
        inner.close()
    other = tmp_path / "other"
    data = load_builtin("iris")
    config = FitConfig(seed=7, epochs=20)
    export(data, config, fit(data, config), other / "art")
    archive(ArchiveConfig(artifacts=other / "art", model_store=other / "store"))
    from tabserve.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot resume: the model is not the one"):
        score(
            ScoreConfig(
                str(iris_csv),
                str(out),
                chunk_rows=16,
                model_store=other / "store",
                engine="local",
                resume=True,
            )
        )
    resumed = score(
        ScoreConfig(
            str(iris_csv), str(out), chunk_rows=16, model_store=model_store, engine="local", resume=True
        )
    )
    assert resumed.resumed_rows > 0 and resumed.report["job"]["profiled_rows"] == 150
    whole = job(iris_csv, tmp_path / "whole.csv", model_store, chunk_rows=16)
    assert report_of(out) == report_of(tmp_path / "whole.csv") and whole.rows == 150


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_baseline_a_server_sends_gives_a_report_or_a_warning_never_a_failure(profiler, data):
    """The baseline comes over HTTP too: whatever it holds, the job's report is built, or
    its failure is a warning line."""
    from tabserve.scorer import finish_report, start_report

    baseline = copy.deepcopy(profiler.baseline())
    if data.draw(st.booleans(), label="anything"):
        baseline = data.draw(profile_values, label="baseline")
    else:
        path, value = data.draw(_mutations(baseline), label="mutation")
        node = baseline
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    totals = Totals(rows=3)
    good = start_profile(baseline)
    start_report(totals, baseline if good is not None else None, False)
    report, paths, problem = finish_report(
        ScoreConfig("in.csv", "-", engine="local"), baseline if good else None, totals
    )
    assert paths is None
    assert (report is None) == (problem is not None)
    if report is not None:
        R.to_json(report)  # strict JSON
        R.drift_lines(report)


@pytest.mark.parametrize(
    "text",
    [
        '{"report_version": 1}',
        '{"report_version": true, "job": {}}',
        '{"report_version": 1.0}',
        "[" * 100_000,
        '{"report_version": 1, "job": {"rows": 1e400, "ok": NaN, "errors": 0}}',
        "not json",
    ],
)
def test_tabserve_report_refuses_what_is_not_a_report_in_one_line(text, tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(text)
    assert main(["report", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_a_drift_line_is_one_line_and_metric_labels_stay_apart():
    from tabserve.batch.results import count_kinds
    from tabserve.handler.entry import label_value

    report = {
        "features": {
            "a\nb\x1b[31m": {
                "role": "categorical",
                "level": "high",
                "psi": 1.0,
                "psi_level": "high",
                "flags": {"psi": "high"},
                "unseen_share": 0.5,
                "unseen_values": {"x\ny": 3},
                "missing_share": 0.0,
                "training_missing_share": 0.0,
            }
        },
        "predictions": None,
        "lacks": [],
    }
    [line] = R.drift_lines(report)
    assert "\n" not in line and "\x1b" not in line and line.startswith("drift: a\\nb")
    labels = [label_value(n) for n in ["价格", "重量", "a b", "a_b", "a.b"]]
    assert len(set(labels)) == 5 and labels[3:] == ["a_b", "a.b"]
    assert all(re.fullmatch(r"[A-Za-z0-9_.~-]+", x) for x in labels)
    kinds = count_kinds({}, [f"row {i}: expected 4 fields, got {i}" for i in range(5, 300)])
    assert kinds == {"expected 4 fields": 295}
