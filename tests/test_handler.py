"""The TorchServe handler called directly, with TorchServe's own Context object."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from ts.context import Context, RequestProcessor

from tabserve.handler.entry import TabularHandler
from tabserve.handler.predictor import Predictor
from tabserve.handler.schema import Schema, SchemaError

from .conftest import IRIS_ROWS, probs_of


def make_context(model_dir: Path, headers: list[dict[str, str]]) -> Context:
    ctx = Context(
        "iris",
        str(model_dir),
        {"model": {"modelVersion": "2.0"}},
        8,
        None,
        "0.12.0",
        model_yaml_config={"handler": {"torch_threads": 1}},
    )
    ctx.request_processor = [RequestProcessor(h) for h in headers]
    return ctx


@pytest.fixture(scope="module")
def handler(artifacts: Path) -> TabularHandler:
    h = TabularHandler()
    h.initialize(make_context(artifacts, []))
    return h


def call(handler: TabularHandler, artifacts: Path, bodies: list, types: list[str], accept=None):
    headers = [{"Content-Type": t, **({"Accept": accept} if accept else {})} for t in types]
    ctx = make_context(artifacts, headers)
    out = handler.handle([{"body": b} for b in bodies], ctx)
    return out, ctx


def test_handler_answers_every_request_of_a_batch_with_its_own_status(handler, artifacts, predictor):
    bodies = [IRIS_ROWS[:2], b"not json", "5.1,3.5,1.4,0.2\n", {"instances": [IRIS_ROWS[2], [1]]}]
    types = ["application/json", "application/json", "text/csv", "application/json"]
    out, ctx = call(handler, artifacts, bodies, types)
    assert len(out) == 4
    assert [ctx.get_response_status(i)[0] for i in range(4)] == [200, 400, 200, 200]
    first = json.loads(out[0])
    assert first["model"] == {"name": "iris", "version": "2.0"}
    np.testing.assert_allclose(
        probs_of(first["predictions"], predictor.classes),
        predictor.predict_proba(np.array(IRIS_ROWS[:2])),
        atol=1e-6,
    )
    assert json.loads(out[1])["code"] == 400 and "not valid JSON" in json.loads(out[1])["message"]
    assert json.loads(out[2])["predictions"][0]["label"] == "setosa"
    last = json.loads(out[3])["predictions"]
    assert "label" in last[0] and last[1] == {"error": "row 2: expected 4 features, got 1"}


def test_handler_answers_csv_when_asked(handler, artifacts, predictor):
    out, ctx = call(handler, artifacts, ["1,2\n5.1,3.5,1.4,0.2\n"], ["text/csv"], accept="text/csv")
    lines = list(csv.reader(io.StringIO(out[0])))
    assert lines[0] == ["label", "p_setosa", "p_versicolor", "p_virginica", "error"]
    assert lines[1] == ["", "", "", "", "row 1: expected 4 fields, got 2"]
    label, *p, err = lines[2]
    assert label == "setosa" and err == ""
    np.testing.assert_allclose(
        [float(v) for v in p], predictor.predict_proba(np.array([[5.1, 3.5, 1.4, 0.2]]))[0]
    )
    assert ctx.get_response_content_type(0) == "text/csv; charset=utf-8"


def test_probabilities_are_a_softmax_over_the_classes(predictor):
    p = predictor.predict_proba(np.array(IRIS_ROWS))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
    assert (p >= 0).all()


def test_weights_that_do_not_match_the_schema_hash_are_refused(artifacts, tmp_path):
    for f in artifacts.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    weights = tmp_path / "model.pt"
    weights.write_bytes(weights.read_bytes() + b"x")
    with pytest.raises(SchemaError, match="does not match the sha256"):
        Predictor(tmp_path)


def test_schema_round_trips_through_json(artifacts):
    schema = Schema.load(artifacts)
    assert Schema.from_dict(json.loads(json.dumps(schema.to_dict()))) == schema


def test_handler_from_the_unpacked_archive_imports_and_predicts(model_store, tmp_path, predictor):
    """What TorchServe runs: the .mar unpacked, its entry module on sys.path, no tabserve."""
    with zipfile.ZipFile(model_store / "iris.mar") as z:
        z.extractall(tmp_path)
    script = f"""
import json, sys
sys.path.insert(0, {str(tmp_path)!r})
from ts.context import Context, RequestProcessor
import tabserve_entry
ctx = Context("iris", {str(tmp_path)!r}, {{"model": {{"modelVersion": "1.0"}}}}, 1, None, "0.12.0")
tabserve_entry.handle(None, ctx)
ctx.request_processor = [RequestProcessor({{"Content-Type": "application/json"}})]
print(tabserve_entry.handle([{{"body": {IRIS_ROWS!r}}}], ctx)[0])
assert not any(m == "tabserve" or m.startswith("tabserve.") for m in sys.modules), "imported tabserve"
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    got = probs_of(json.loads(proc.stdout)["predictions"], predictor.classes)
    np.testing.assert_allclose(got, predictor.predict_proba(np.array(IRIS_ROWS)), atol=1e-6)


class RecordingMetrics:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def add_counter(self, name: str, value: int) -> None:
        self.calls.append((name, value))


def test_row_counters_are_summed_and_handed_over_at_most_once_per_interval(artifacts, monkeypatch):
    import tabserve.handler.entry as entry

    clock = [100.0]
    monkeypatch.setattr(entry.time, "monotonic", lambda: clock[0])
    h = TabularHandler()
    h.initialize(make_context(artifacts, []))
    metrics = RecordingMetrics()

    def send(bodies):
        ctx = make_context(artifacts, [{"Content-Type": "application/json"}] * len(bodies))
        ctx.metrics = metrics
        h.handle([{"body": b} for b in bodies], ctx)

    send([IRIS_ROWS[:2]])  # the first batch is handed over at once
    assert metrics.calls == [("RowsPredicted", 2)]
    send([[IRIS_ROWS[0], [1]], b"not json"])  # within the interval: kept
    clock[0] += 0.5
    send([IRIS_ROWS[:3]])
    assert len(metrics.calls) == 1
    clock[0] += 1.0
    send([IRIS_ROWS[:1]])
    assert sorted(metrics.calls[1:]) == [("RequestsRejected", 1), ("RowsPredicted", 5), ("RowsRejected", 1)]


POISON = [
    # (what TorchServe hands over, content type, status, words in the answer)
    ([10**400, 3.5, 1.4, 0.2], "application/json", 200, "feature 'sepal_length_cm' is a number too large"),
    (b"[" + b"9" * 4400 + b", 3.5, 1.4, 0.2]", "application/json", 400, "number too long"),
    (b"[" * 20_000 + b"]" * 20_000, "application/json", 400, "JSON nesting deeper than 8 levels"),
    ([[[[[[[[[[1]]]]]]]]]], "application/json", 400, "JSON nesting deeper than 8 levels"),
    (b"1,2,3,4\n" + b"7" * 200_000 + b"\n", "text/csv", 200, "row 2: a field is longer than 131,072 bytes"),
    (b'5.1,3.5,1.4,0.2\n"5.1,3.5,1.4,0.2\n6,3,5,2\n', "text/csv", 200, "is a quote left open?"),
    ([1e39, 3.5, 1.4, 0.2], "application/json", 200, "is out of float32 range once scaled"),
    (b"x\n" * 1_500_000, "text/csv", 413, "more than the limit of 100,000 per request"),
    (b"1,2\r3,4\n", "text/csv", 200, "row 1: a carriage return inside an unquoted field"),
    (None, "application/json", 400, "the request has no body"),
]


@pytest.mark.parametrize("body, ctype, status, words", POISON)
def test_each_poison_request_gets_its_own_answer_and_its_batch_neighbours_succeed(
    handler, artifacts, predictor, body, ctype, status, words
):
    ctx = make_context(artifacts, [{"Content-Type": "application/json"}, {"Content-Type": ctype}] * 2)
    data = [{"body": IRIS_ROWS}, {"body": body}, {"body": IRIS_ROWS[:1]}, {"body": body}]
    out = handler.handle(data, ctx)
    assert [ctx.get_response_status(i)[0] for i in range(4)] == [200, status, 200, status]
    assert words in out[1]
    assert "NaN" not in out[1] and "Infinity" not in out[1]
    for i, rows in ((0, IRIS_ROWS), (2, IRIS_ROWS[:1])):
        np.testing.assert_allclose(
            probs_of(json.loads(out[i])["predictions"], predictor.classes),
            predictor.predict_proba(np.array(rows)),
            atol=1e-6,
        )


def test_form_encoded_bodies_are_read_as_the_json_or_csv_they_hold(handler, artifacts, predictor):
    """`curl -d '[[5.1, 3.5, 1.4, 0.2]]'` sends a form; TorchServe hands over its fields."""
    ctx = make_context(artifacts, [{"Content-Type": "application/x-www-form-urlencoded"}] * 2)
    out = handler.handle([{"[[5.1, 3.5, 1.4, 0.2]]": b""}, {"5.1,3.5,1.4,0.2\n7,3.2,4.7,1.4": b""}], ctx)
    assert [ctx.get_response_status(i)[0] for i in range(2)] == [200, 200]
    assert len(json.loads(out[0])["predictions"]) == 1 and len(json.loads(out[1])["predictions"]) == 2
    np.testing.assert_allclose(
        probs_of(json.loads(out[1])["predictions"], predictor.classes),
        predictor.predict_proba(np.array([[5.1, 3.5, 1.4, 0.2], [7, 3.2, 4.7, 1.4]])),
        atol=1e-6,
    )


def limited_handler(artifacts: Path, **limits) -> TabularHandler:
    h = TabularHandler()
    ctx = make_context(artifacts, [])
    ctx.model_yaml_config = {"handler": {"torch_threads": 1, **limits}}
    h.initialize(ctx)
    return h


def test_limits_come_from_model_config_and_an_answer_over_its_limit_is_refused_with_413(artifacts):
    h = limited_handler(artifacts, max_rows=50, max_answer_bytes=2_000)
    assert (h.limits.max_rows, h.limits.max_answer_bytes) == (50, 2_000)
    body = "\n".join(["x"] * 45)  # 45 error rows: over 2,000 bytes of answer
    ctx = make_context(artifacts, [{"Content-Type": "text/csv"}] * 3)
    out = h.handle([{"body": body}, {"body": "\n".join(["1,2,3,4"] * 51)}, {"body": "1,2,3,4"}], ctx)
    assert [ctx.get_response_status(i)[0] for i in range(3)] == [413, 413, 200]
    assert "max_answer_bytes" in json.loads(out[0])["message"]
    assert "51 rows, more than the limit of 50" in json.loads(out[1])["message"]


def test_a_failing_model_pass_fails_only_the_request_whose_rows_broke_it(artifacts, predictor):
    h = limited_handler(artifacts)
    real = h.predictor.predict_proba

    def fragile(x):
        if (x == 66.6).any():
            raise RuntimeError("simulated failure on one row")
        return real(x)

    h.predictor.predict_proba = fragile
    ctx = make_context(artifacts, [{"Content-Type": "application/json"}] * 3)
    out = h.handle([{"body": IRIS_ROWS}, {"body": [66.6, 1, 1, 1]}, {"body": IRIS_ROWS[:2]}], ctx)
    assert [ctx.get_response_status(i)[0] for i in range(3)] == [200, 500, 200]
    assert "simulated failure on one row" in json.loads(out[1])["message"]
    np.testing.assert_allclose(
        probs_of(json.loads(out[2])["predictions"], predictor.classes),
        predictor.predict_proba(np.array(IRIS_ROWS[:2])),
        atol=1e-6,
    )


def test_the_csv_header_flag_refuses_a_header_without_features(handler, artifacts):
    headers = {"Content-Type": "text/csv", "X-Tabserve-Csv-Header": "present"}
    ctx = make_context(artifacts, [headers, headers])
    out = handler.handle([{"body": "a,b,c,d\n1,2,3,4\n"}, {"body": "id,petal_width_cm\n"}], ctx)
    assert [ctx.get_response_status(i)[0] for i in range(2)] == [400, 400]
    assert "lacks feature column(s) 'sepal_length_cm'" in json.loads(out[0])["message"]
