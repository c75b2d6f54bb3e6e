"""Integration: a real TorchServe on free loopback ports, spoken to over HTTP."""

from __future__ import annotations

import ipaddress
import json
import os
import random
import socket
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from tabserve.archive import ArchiveConfig, archive
from tabserve.cli import main
from tabserve.server import ServeConfig, exposure_warning, read_properties

from .conftest import IRIS_ROWS, Client, management, probs_of, start_server

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
    rows = [IRIS_ROWS[0], [1, 2, 3], {"sepal_length_cm": 5}, [1, "x", 3, 4], IRIS_ROWS[1], {"petal": 1}]
    r = client.post(rows, "application/json")
    assert r.status_code == 200
    preds = r.json()["predictions"]
    assert [p.get("error") for p in preds] == [
        None,
        "row 2: expected 4 features, got 3",
        None,  # the keys left out are missing values: filled with the training medians
        "row 4: feature 'sepal_width_cm' is not a number: \"x\"",
        None,
        "row 6: the object has none of the model's columns (sepal_length_cm, sepal_width_cm, "
        "petal_length_cm, petal_width_cm)",
    ]
    assert preds[0]["label"] == "setosa" and "label" in preds[2] and "label" in preds[4]
    csv_body = "5.1,3.5,1.4,0.2\n1,2,inf,4\n1,abc,3,4\n1,,NaN,4\n"
    errors = [p.get("error") for p in client.post(csv_body, "text/csv").json()["predictions"]]
    assert errors == [
        None,
        "row 2: feature 'petal_length_cm' is not finite: 'inf'",
        "row 3: feature 'sepal_width_cm' is not a number: 'abc'",
        None,  # empty and NaN are missing values
    ]


def test_without_a_token_requests_are_rejected_and_with_it_served(server):
    url = f"{server.inference_url}/predictions/iris"
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = requests.post(url, json=IRIS_ROWS, headers=headers, timeout=10)
        assert r.status_code in (400, 401)
        assert "token" in r.text.lower()
        assert requests.get(f"{server.inference_url}/ping", headers=headers, timeout=10).status_code != 200
    assert requests.post(url, json=IRIS_ROWS, headers=server.headers(), timeout=10).status_code == 200


def test_registering_and_deleting_models_stay_off_even_for_the_owner(server):
    sock, keys = server.management_socket, server.key_file
    assert management(sock, "POST", "/models?url=x.mar", keys)[0] == 405
    assert management(sock, "DELETE", "/models/iris", keys)[0] == 405
    assert management(sock, "GET", "/models/iris", keys)[0] == 200


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback


def _listeners(pid: int) -> tuple[set[tuple[str, int]], set[str]]:
    """(address, port) of every TCP socket the server's process tree listens on, and the paths
    of its Unix sockets."""
    psutil = pytest.importorskip("psutil")
    root = psutil.Process(pid)
    tcp, unix = set(), set()
    for p in [root, *root.children(recursive=True)]:
        try:
            tcp |= {
                (c.laddr.ip, c.laddr.port)
                for c in p.net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN
            }
            unix |= {c.laddr for c in p.net_connections(kind="unix") if c.laddr}
        except psutil.Error:
            pass
    return tcp, unix


SCALE_TO_ZERO = "/models/iris?min_worker=0&max_worker=0&synchronous=true"


def _try_to_scale(host: str, ports, keys: list[str]) -> list[int]:
    """Ask every HTTP port to scale iris to 0 workers; the statuses of those that answered."""
    statuses = []
    for port in ports:
        for key in keys:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            try:
                r = requests.put(f"http://{host}:{port}{SCALE_TO_ZERO}", headers=headers, timeout=10)
            except requests.ConnectionError:
                continue  # nothing listens there
            statuses.append(r.status_code)
    return statuses


def test_scaling_workers_to_zero_is_unreachable_and_predictions_keep_working(server, client):
    """TorchServe 0.12 has no setting that turns worker scaling off: its management API is on a
    Unix socket in a folder only this user can open, never on a TCP port."""
    inference, metrics = server.config.ports
    sock = server.management_socket
    conf = dict(read_properties(server.dir / "config.properties"))
    assert conf["management_address"] == f"unix:{sock}"
    assert conf["grpc_management_address"] == "127.0.0.1" and conf["enable_model_api"] == "false"
    folder = sock.parent.stat()
    assert stat.S_IMODE(folder.st_mode) == 0o700 and folder.st_uid == os.getuid()
    tcp, unix = _listeners(server.process.pid)
    assert str(sock) in unix
    assert {port for _, port in tcp} == {inference, metrics, *server.config.grpc}
    assert all(_loopback(ip) for ip, port in tcp if port in server.config.grpc)

    workers = len(management(sock, "GET", "/models/iris", server.key_file)[1][0]["workers"])
    keys = json.loads(server.key_file.read_text())
    statuses = _try_to_scale("127.0.0.1", (inference, metrics), [keys["management"]["key"], server.token()])
    assert statuses and 200 not in statuses
    assert len(management(sock, "GET", "/models/iris", server.key_file)[1][0]["workers"]) == workers > 0
    assert client.post(IRIS_ROWS, "application/json").status_code == 200


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
    """The sum of a counter's lines; NAME{Feature=X} for one feature's line only."""
    label = ""
    if "{" in name:
        name, label = name.rstrip("}").split("{")
        key, value = label.split("=")
        label = f'{key}="{value}"'
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and label in line:
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
        # Drift in online traffic, in the batch report's words: a value over the training
        # maximum, a missing value (imputed), both counted per feature.
        far = {**dict(zip(FEATURES, IRIS_ROWS[0])), "petal_length_cm": 100.0}
        gap = {f: v for f, v in zip(FEATURES, IRIS_ROWS[1]) if f != "sepal_width_cm"}
        assert client.post({"instances": [far, gap]}, "application/json").status_code == 200
        want = {
            "RowsPredicted": 4,
            "RowsRejected": 1,
            "RequestsRejected": 1,
            "FeatureOutOfRange{Feature=petal_length_cm}": 1,
            "FeatureMissing{Feature=sepal_width_cm}": 1,
            "FeatureOutOfRange": 1,
            "FeatureMissing": 1,
        }
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
        described = management(ts.management_socket, "GET", "/models/iris", ts.key_file)[1][0]
        assert (described["batchSize"], described["maxBatchDelay"], len(described["workers"])) == (4, 50, 1)
    finally:
        ts.stop()


@pytest.mark.parametrize(
    ("host", "auth", "warned"),
    [
        ("127.0.0.1", False, False),
        ("::1", False, False),
        ("localhost", False, False),
        ("0.0.0.0", True, False),
        ("0.0.0.0", False, True),
        ("::", False, True),
        ("10.1.2.3", False, True),
        ("server.example", False, True),
    ],
)
def test_only_a_server_without_auth_on_a_non_loopback_address_is_warned_about(host, auth, warned):
    sock = Path("/tmp/tabserve-x/management.sock")
    warning = exposure_warning(ServeConfig(host=host, port=9000, auth=auth), sock)
    assert (warning is not None) == warned


def _free_port_block(n: int = 5) -> int:
    """A port P with P..P+n-1 free on every address (serve puts gRPC at P+3 and P+4)."""
    for _ in range(100):
        base = random.randint(20000, 32000)  # below Linux's ephemeral range
        socks = []
        try:
            for i in range(n):
                s = socket.socket()
                s.bind(("0.0.0.0", base + i))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no block of free ports")


def _non_loopback_address() -> str | None:
    psutil = pytest.importorskip("psutil")
    for addresses in psutil.net_if_addrs().values():
        for a in addresses:
            if a.family == socket.AF_INET and not ipaddress.ip_address(a.address).is_loopback:
                return a.address
    return None


def test_no_auth_on_all_addresses_warns_and_keeps_management_off_the_network(model_store, tmp_path, capsys):
    port, run_dir = _free_port_block(), tmp_path / "run"
    argv = ["serve", "--model-store", str(model_store), "--host", "0.0.0.0", "--port", str(port)]
    try:
        assert main([*argv, "--no-auth", "--run-dir", str(run_dir)]) == 0
        err = capsys.readouterr().err
        state = json.loads((run_dir / "server.json").read_text())
        sock = state["management_socket"]
        assert err == (
            "Warning: token auth is off (--no-auth) and the server listens on 0.0.0.0: the inference "
            f"API on 0.0.0.0:{port} and the metrics on 0.0.0.0:{port + 2} answer anyone who can reach "
            f"them, without a token. Model management is not exposed: its API listens only on the "
            f"Unix socket {sock} (this user only) and its gRPC API only on 127.0.0.1:{port + 4} (this "
            "machine only, no token needed there either).\n"
        )
        conf = dict(read_properties(run_dir / "config.properties"))
        assert conf["inference_address"] == f"http://0.0.0.0:{port}"
        assert conf["metrics_address"] == f"http://0.0.0.0:{port + 2}"
        assert conf["management_address"] == f"unix:{sock}"
        assert conf["grpc_management_address"] == conf["grpc_inference_address"] == "127.0.0.1"
        tcp, unix = _listeners(state["pid"])
        assert sock in unix
        assert {p for ip, p in tcp if not _loopback(ip)} == {port, port + 2}
        assert {p for ip, p in tcp if _loopback(ip)} == {port + 3, port + 4}

        host = _non_loopback_address() or "127.0.0.1"
        statuses = _try_to_scale(host, range(port, port + 3), [""])
        assert statuses and 200 not in statuses
        status, described = management(Path(sock), "GET", "/models/iris")
        assert status == 200 and len(described[0]["workers"]) > 0
        r = requests.post(f"http://{host}:{port}/predictions/iris", json=IRIS_ROWS, timeout=10)
        assert r.status_code == 200 and len(r.json()["predictions"]) == 4
    finally:
        main(["stop", "--run-dir", str(run_dir)])


def test_stop_with_run_dir_stops_the_server_serve_started_there(model_store, tmp_path, monkeypatch, capsys):
    psutil = pytest.importorskip("psutil")
    port, run_dir = _free_port_block(), tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    try:
        assert (
            main(["serve", "--model-store", str(model_store), "--port", str(port), "--run-dir", "run"]) == 0
        )
        assert "stop it with: tabserve stop --run-dir run\n" in capsys.readouterr().out
        launcher = psutil.Process(json.loads((run_dir / "server.json").read_text())["pid"])
        procs = [launcher, *launcher.children(recursive=True)]
        assert len(procs) > 2  # launcher, Java frontend, workers
        (tmp_path / "elsewhere").mkdir()
        monkeypatch.chdir(tmp_path / "elsewhere")
        assert main(["stop"]) == 0  # not one of this directory's servers
        assert "no tabserve-started TorchServe is running from this directory" in capsys.readouterr().out
        assert main(["stop", "--run-dir", str(run_dir)]) == 0
        assert capsys.readouterr().out == f"stopped http://127.0.0.1:{port}\n"
        _, alive = psutil.wait_procs(procs, timeout=10)
        assert alive == []
        assert not (run_dir / "server.json").exists()
        assert main(["stop", "--run-dir", str(run_dir)]) == 0
        assert (
            f"no tabserve-started TorchServe is running with run directory {run_dir}"
            in capsys.readouterr().out
        )
    finally:
        main(["stop", "--run-dir", str(run_dir)])
