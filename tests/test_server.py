"""Integration: a real TorchServe on free loopback ports, spoken to over HTTP."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from tabserve.archive import ArchiveConfig, archive

from .conftest import IRIS_ROWS, Client, probs_of, start_server

pytestmark = pytest.mark.integration

FEATURES = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]


def as_objects(rows):
    return [dict(zip(FEATURES, r)) for r in rows]


def csv_with_shuffled_header(rows):
    order = [2, 0, 3, 1]
    lines = ["id," + ",".join(FEATURES[j] for j in order) + ",note"]
    lines += [f"{i}," + ",".join(str(r[j]) for j in order) + ",x" for i, r in enumerate(rows)]
    return "\n".join(lines) + "\n"


FORMS = {
    "json list of rows": (lambda rows: rows, "application/json"),
    "json list of objects": (as_objects, "application/json"),
    "json instances": (lambda rows: {"instances": rows}, "application/json"),
    "json instances of objects": (lambda rows: {"instances": as_objects(rows)}, "application/json"),
    "csv without header": (lambda rows: "".join(",".join(map(str, r)) + "\n" for r in rows), "text/csv"),
    "csv with shuffled header and extra columns": (csv_with_shuffled_header, "text/csv"),
}


@pytest.mark.parametrize("form", FORMS)
def test_every_request_form_gives_the_in_process_probabilities(client, predictor, form):
    encode, ctype = FORMS[form]
    r = client.post(encode(IRIS_ROWS), ctype)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == {"name": "iris", "version": "1.0"}
    got = probs_of(body["predictions"], predictor.classes)
    np.testing.assert_allclose(got, predictor.predict_proba(np.array(IRIS_ROWS)), rtol=0, atol=1e-6)
    want = [predictor.classes[k] for k in predictor.predict_proba(np.array(IRIS_ROWS)).argmax(1)]
    assert [p["label"] for p in body["predictions"]] == want


@pytest.mark.parametrize(
    ("single", "ctype"),
    [(IRIS_ROWS[0], "application/json"), (as_objects(IRIS_ROWS)[0], "application/json")],
)
def test_a_single_row_gets_a_single_prediction(client, predictor, single, ctype):
    body = client.post(single, ctype).json()
    assert len(body["predictions"]) == 1
    np.testing.assert_allclose(
        probs_of(body["predictions"], predictor.classes),
        predictor.predict_proba(np.array(IRIS_ROWS[:1])),
        atol=1e-6,
    )


BAD_BODIES = [
    ("not json", "application/json", 400, "body is not valid JSON"),
    ("", "application/json", 400, "empty body"),
    ("[]", "application/json", 400, "empty list"),
    ('{"foo": 1}', "application/json", 400, "object has none of the model's features"),
    ('"hello"', "application/json", 400, "got a JSON str"),
    ("sepal_length_cm,b\n1,2\n", "text/csv", 400, "CSV header lacks feature column(s)"),
]


@pytest.mark.parametrize(("body", "ctype", "status", "message"), BAD_BODIES)
def test_unreadable_body_gets_400_with_a_clear_message_and_the_server_keeps_serving(
    client, body, ctype, status, message
):
    r = client.post(body, ctype)
    assert r.status_code == status
    assert message in r.json()["message"]
    assert client.post(IRIS_ROWS, "application/json").status_code == 200


def test_bad_rows_get_their_error_in_their_slot_and_good_rows_are_predicted(client):
    rows = [IRIS_ROWS[0], [1, 2, 3], {"sepal_length_cm": 5}, [1, "x", 3, 4], IRIS_ROWS[1]]
    r = client.post(rows, "application/json")
    assert r.status_code == 200
    preds = r.json()["predictions"]
    assert [p.get("error") for p in preds] == [
        None,
        "row 2: expected 4 features, got 3",
        "row 3: missing feature 'sepal_width_cm', 'petal_length_cm', 'petal_width_cm'",
        "row 4: feature 'sepal_width_cm' is not a number: \"x\"",
        None,
    ]
    assert preds[0]["label"] == "setosa" and "label" in preds[4]
    csv_body = "5.1,3.5,1.4,0.2\n1,2,nan,4\n1,,3,4\n"
    errors = [p.get("error") for p in client.post(csv_body, "text/csv").json()["predictions"]]
    assert errors == [
        None,
        "row 2: feature 'petal_length_cm' is not finite: 'nan'",
        "row 3: feature 'sepal_width_cm' is empty",
    ]


def test_without_a_token_requests_are_rejected_and_with_it_served(server):
    url = f"{server.inference_url}/predictions/iris"
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = requests.post(url, json=IRIS_ROWS, headers=headers, timeout=10)
        assert r.status_code in (400, 401)
        assert "token" in r.text.lower()
        assert requests.get(f"{server.inference_url}/ping", headers=headers, timeout=10).status_code != 200
    assert requests.post(url, json=IRIS_ROWS, headers=server.headers(), timeout=10).status_code == 200


def test_model_management_stays_off(server):
    key = json.loads(server.key_file.read_text())["management"]["key"]
    mgmt = f"http://127.0.0.1:{server.config.ports[1]}/models"
    headers = {"Authorization": f"Bearer {key}"}
    assert requests.post(f"{mgmt}?url=x.mar", headers=headers, timeout=10).status_code == 405
    assert requests.delete(f"{mgmt}/iris", headers=headers, timeout=10).status_code == 405


@pytest.fixture(scope="module")
def batching_server(artifacts, tmp_path_factory):
    """One worker and a long batch delay, so concurrent requests share handler calls."""
    store = tmp_path_factory.mktemp("batch_store")
    archive(
        ArchiveConfig(artifacts=artifacts, model_store=store, batch_size=8, max_batch_delay=100, workers=1)
    )
    ts = start_server(store, tmp_path_factory.mktemp("batch_run"))
    yield ts
    ts.stop()


def test_concurrent_good_and_bad_requests_in_one_batch_each_get_their_own_answer(batching_server, predictor):
    client = Client(batching_server)
    rng = np.random.default_rng(0)
    jobs = []
    for i in range(48):
        kind = i % 4
        if kind == 3:
            jobs.append(("bad", "not json at all", "application/json"))
        elif kind == 2:
            jobs.append(("badrow", [[1, 2, 3]], "application/json"))
        else:
            rows = (rng.normal(size=(1 + i % 5, 4)) + [5.8, 3.0, 3.7, 1.2]).round(3).tolist()
            jobs.append(("good", rows, "application/json"))

    def send(job):
        return client.post(job[1], job[2])

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(send, jobs))
    batch_sizes = [int(r.headers.get("x-tabserve-batch", 0)) for r in responses]
    assert max(batch_sizes) > 1, "TorchServe never batched: the test did not test batching"
    for (kind, body, _), r in zip(jobs, responses):
        if kind == "bad":
            assert r.status_code == 400 and "not valid JSON" in r.json()["message"]
        elif kind == "badrow":
            assert r.status_code == 200
            assert r.json()["predictions"] == [{"error": "row 1: expected 4 features, got 3"}]
        else:
            assert r.status_code == 200, r.text
            got = probs_of(r.json()["predictions"], predictor.classes)
            np.testing.assert_allclose(got, predictor.predict_proba(np.array(body)), atol=1e-6)


def test_no_auth_server_serves_without_a_token(model_store, tmp_path):
    ts = start_server(model_store, tmp_path / "run", auth=False)
    try:
        r = requests.post(f"{ts.inference_url}/predictions/iris", json=IRIS_ROWS, timeout=10)
        assert r.status_code == 200 and len(r.json()["predictions"]) == 4
        assert not (tmp_path / "run" / "key_file.json").exists()
    finally:
        ts.stop()


def test_stop_leaves_no_torchserve_process(model_store, tmp_path):
    psutil = pytest.importorskip("psutil")
    ts = start_server(model_store, tmp_path / "run")
    pid = ts.process.pid
    children = psutil.Process(pid).children(recursive=True)
    assert children, "TorchServe should have a frontend and workers"
    ts.stop()
    _, alive = psutil.wait_procs(children, timeout=5)
    assert alive == []
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_port_shows_the_handlers_row_counters(artifacts, tmp_path):
    store = tmp_path / "store"
    archive(ArchiveConfig(artifacts=artifacts, model_store=store, metrics_interval_s=0))
    ts = start_server(store, tmp_path / "run")
    try:
        client = Client(ts)
        before = requests.get(ts.metrics_url, timeout=10).text
        r = client.post([IRIS_ROWS[0], [1, 2], IRIS_ROWS[1]], "application/json")
        assert r.status_code == 200
        assert client.post("not json", "application/json").status_code == 400
        want = {"RowsPredicted": 2, "RowsRejected": 1, "RequestsRejected": 1}
        deadline = time.monotonic() + 10  # the frontend picks metrics up from the worker's log
        while True:
            after = requests.get(ts.metrics_url, timeout=10).text
            got = {name: _metric(after, name) - _metric(before, name) for name in want}
            if got == want or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        ts.stop()
    assert got == want
    assert 'ModelName="iris"' in after


def test_serve_settings_override_the_archives(model_store, tmp_path):
    ts = start_server(model_store, tmp_path / "run", workers=1, batch_size=4, max_batch_delay=50)
    try:
        key = json.loads(ts.key_file.read_text())["management"]["key"]
        r = requests.get(
            f"http://127.0.0.1:{ts.config.ports[1]}/models/iris",
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
        described = r.json()[0]
        assert (described["batchSize"], described["maxBatchDelay"], len(described["workers"])) == (4, 50, 1)
    finally:
        ts.stop()
