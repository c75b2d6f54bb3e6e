"""Batch scoring through a real TorchServe: every row accounted for, faults survived."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from tabserve.archive import ArchiveConfig, archive
from tabserve.cli import main
from tabserve.scorer import ScoreConfig, score
from tabserve.server import free_ports

from .conftest import start_server

pytestmark = pytest.mark.integration

FEATURES = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]
MALFORMED = [
    ("bad-1,1.0,2.0", "expected 6 fields, got 3"),
    ("bad-2,0.2,5.1,abc,1.4,bad", "feature 'sepal_width_cm' is not a number: 'abc'"),
    ("bad-3,1e999,5.1,3.5,1.4,overflow", "feature 'petal_width_cm' is not finite: '1e999'"),
    ("bad-4,inf,5,3,1,inf", "feature 'petal_width_cm' is not finite: 'inf'"),
    ("bad-5,1,2,3,4,5,6,7", "expected 6 fields, got 8"),
]


def write_csv(path: Path, n: int, malformed: bool = True, seed: int = 0) -> np.ndarray:
    """IDs, shuffled feature columns and a comment column; malformed lines spread through.
    Returns the features of the good rows in schema order."""
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, 4)) * [0.8, 0.4, 1.7, 0.7] + [5.8, 3.0, 3.7, 1.2]).round(2)
    lines = ["id,petal_width_cm,sepal_length_cm,sepal_width_cm,petal_length_cm,comment"]
    spots = {(k + 1) * n // (len(MALFORMED) + 1): m for k, (m, _) in enumerate(MALFORMED)}
    for i, r in enumerate(x):
        lines.append(f'{i},{r[3]},{r[0]},{r[1]},{r[2]},"note, {i}"')
        if malformed and i in spots:
            lines.append(spots[i])
    path.write_text("\n".join(lines) + "\n")
    return x


def read_rows(path: Path) -> list[list[str]]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        return list(csv.reader(f))


def check_output(out: Path, inp: Path, x: np.ndarray, predictor) -> list[list[str]]:
    rows = read_rows(out)
    src = read_rows(inp)
    header = rows[0]
    assert header == src[0] + ["label", "p_setosa", "p_versicolor", "p_virginica", "error"]
    assert len(rows) == len(src), "one output row per input data row"
    good = [r for r in rows[1:] if r[-1] == ""]
    malformed_ids = {m.split(",")[0] for m, _ in MALFORMED}
    assert [r[:6] for r in good] == [s for s in src[1:] if s[0] not in malformed_ids]
    probs = np.array([[float(v) for v in r[7:10]] for r in good])
    np.testing.assert_allclose(probs, predictor.predict_proba(x), rtol=0, atol=1e-6)
    assert [r[6] for r in good] == [predictor.classes[k] for k in probs.argmax(1)]
    return rows


def url_options(server) -> list[str]:
    """The options that point tabserve score at a running TorchServe."""
    return ["--url", server.inference_url, "--model", "iris", "--token-file", str(server.key_file)]


def leftover_servers() -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if any("tabserve-score-" in part for part in p.info["cmdline"] or []):
            out.append(p)
    return out


@pytest.fixture(autouse=True)
def no_leftover_torchserve():
    yield
    deadline = time.monotonic() + 20
    while leftover_servers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leftover_servers() == [], "an embedded TorchServe outlived its job"


def test_score_keeps_every_row_in_order_with_ids_and_errors(tmp_path, model_store, predictor, capsys):
    inp, out = tmp_path / "in.csv", tmp_path / "out.csv"
    x = write_csv(inp, 300)
    assert (
        main(["score", str(inp), "-o", str(out), "--model-store", str(model_store), "--chunk-rows", "40"])
        == 2
    )
    rows = check_output(out, inp, x, predictor)
    bad = [r for r in rows[1:] if r[-1]]
    assert len(bad) == len(MALFORMED)
    for (line, message), r in zip(MALFORMED, bad):
        assert r[-1].endswith(message)
        assert r[-1].startswith("row ")
        if message.startswith("expected"):
            assert r[0] == line and r[1:6] == [""] * 5  # whole text kept in the first column
        else:
            assert ",".join(r[:6]) == line
        assert r[6:10] == ["", "", "", ""]
    captured = capsys.readouterr()
    assert "scored 305 rows: 300 ok, 5 errors" in captured.out
    assert "5 rows have errors" in captured.err
    assert not list(tmp_path.glob("*.part*")), "temporary files must be gone after success"


def test_row_numbers_in_errors_count_data_rows_of_the_whole_file(tmp_path, model_store):
    inp, out = tmp_path / "in.csv", tmp_path / "out.csv"
    inp.write_text(
        "a,sepal_length_cm,sepal_width_cm,petal_length_cm,petal_width_cm\n"
        + "x,5.1,3.5,1.4,0.2\n" * 7
        + "\n"
        + "y,5.1,oops,1.4,0.2\n"
    )
    assert (
        main(["score", str(inp), "-o", str(out), "--model-store", str(model_store), "--chunk-rows", "3"]) == 2
    )
    rows = read_rows(out)
    assert len(rows) == 9
    assert rows[-1][-1] == "row 8: feature 'sepal_width_cm' is not a number: 'oops'"


def test_score_against_a_running_server_agrees_with_the_embedded_one(
    tmp_path, server, model_store, predictor
):
    inp = tmp_path / "in.csv"
    write_csv(inp, 500)
    embedded, remote = tmp_path / "a.csv", tmp_path / "b.csv"
    assert main(["score", str(inp), "-o", str(embedded), "--model-store", str(model_store)]) == 2
    argv = [
        "score",
        str(inp),
        "-o",
        str(remote),
        *url_options(server),
        "--chunk-rows",
        "37",
        "--concurrency",
        "3",
    ]
    assert main(argv) == 2
    a, b = read_rows(embedded), read_rows(remote)
    assert [r[:7] + r[10:] for r in a] == [r[:7] + r[10:] for r in b]  # columns, labels, errors
    pa = np.array([[float(v or "nan") for v in r[7:10]] for r in a[1:]])
    pb = np.array([[float(v or "nan") for v in r[7:10]] for r in b[1:]])
    np.testing.assert_allclose(pa, pb, rtol=0, atol=1e-6)  # other chunking: last bits may differ


def test_clean_file_exits_0_and_stdin_to_gzip_works(tmp_path, server, predictor, monkeypatch):
    inp, out = tmp_path / "in.csv", tmp_path / "out.csv.gz"
    x = write_csv(inp, 200, malformed=False)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(inp.read_bytes())))
    argv = [
        "score",
        "-",
        "-o",
        str(out),
        "--url",
        server.inference_url,
        "--model",
        "iris",
        f"--token={server.token()}",  # one argument: a token may start with "-"
    ]
    assert main(argv) == 0
    check_output(out, inp, x, predictor)


def test_a_missing_feature_column_fails_before_any_work_is_sent(tmp_path, model_store, capsys):
    inp, out = tmp_path / "in.csv", tmp_path / "out.csv"
    inp.write_text("id,sepal_length_cm,petal_length_cm\n1,5.1,1.4\n")
    assert main(["score", str(inp), "-o", str(out), "--model-store", str(model_store)]) == 1
    err = capsys.readouterr().err
    assert "CSV header lacks feature column(s) 'sepal_width_cm', 'petal_width_cm'" in err
    assert not out.exists() and not list(tmp_path.glob("out.csv.part*"))


def test_server_down_exits_1_saying_so(tmp_path, capsys):
    inp = tmp_path / "in.csv"
    write_csv(inp, 10)
    port = free_ports(1)[0]
    argv = [
        "score",
        str(inp),
        "-o",
        str(tmp_path / "o.csv"),
        "--url",
        f"http://127.0.0.1:{port}",
        "--model",
        "iris",
        "--token",
        "x",
        "--retries",
        "1",
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"Error: TorchServe at http://127.0.0.1:{port}/predictions/iris failed 2 times")
    assert "ConnectionError" in err


def test_wrong_token_exits_1_saying_so(tmp_path, server, capsys):
    inp = tmp_path / "in.csv"
    write_csv(inp, 10)
    argv = [
        "score",
        str(inp),
        "-o",
        str(tmp_path / "o.csv"),
        "--url",
        server.inference_url,
        "--model",
        "iris",
        "--token",
        "wrong",
    ]
    assert main(argv) == 1
    assert "rejected the token" in capsys.readouterr().err


def test_a_rotated_token_file_is_read_again(tmp_path, server, predictor):
    inp, out, token_file = tmp_path / "in.csv", tmp_path / "out.csv", tmp_path / "token"
    write_csv(inp, 50, malformed=False)
    token_file.write_text("stale")
    from tabserve.batch.engines.torchserve import TokenSource, TorchServeEngine

    engine = TorchServeEngine(server.inference_url, "iris", TokenSource(token_file=token_file))
    token_file.write_text(server.token())  # the operator rotates the token mid-job
    result = score(ScoreConfig(str(inp), str(out), url=server.inference_url, model="iris"), engine=engine)
    assert result.rows == 50 and result.errors == 0


def test_max_errors_stops_early_and_says_where_the_rows_are(tmp_path, model_store, capsys):
    inp, out = tmp_path / "in.csv", tmp_path / "out.csv"
    inp.write_text("sepal_length_cm,sepal_width_cm,petal_length_cm,petal_width_cm\n" + "1,2,x,4\n" * 500)
    argv = [
        "score",
        str(inp),
        "-o",
        str(out),
        "--model-store",
        str(model_store),
        "--chunk-rows",
        "10",
        "--max-errors",
        "20",
        "--concurrency",
        "1",
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "stopped after 20 rows: 20 rows failed (--max-errors 20); the 20 rows so far are in" in err
    assert "--resume continues with the errors counted so far" in err
    assert not out.exists()
    # The job stopped within a second of starting: the checkpoint is the one it wrote on stopping.
    assert json.loads(Path(str(out) + ".part.json").read_text())["rows"] == 20


def test_killing_a_worker_mid_job_loses_no_row(tmp_path, artifacts, predictor):
    store = tmp_path / "store"
    archive(ArchiveConfig(artifacts=artifacts, model_store=store, workers=2))
    ts = start_server(store, tmp_path / "run")
    try:
        inp, out = tmp_path / "in.csv", tmp_path / "out.csv"
        x = write_csv(inp, 60_000, malformed=False)
        config = ScoreConfig(
            str(inp),
            str(out),
            url=ts.inference_url,
            model="iris",
            token_file=ts.key_file,
            chunk_rows=300,
            concurrency=4,
        )
        result: dict = {}

        def run() -> None:
            try:
                result["r"] = score(config)
            except Exception as exc:  # reported by the assertion below
                result["error"] = exc

        job = threading.Thread(target=run)
        job.start()
        checkpoint = Path(str(out) + ".part.json")
        while not checkpoint.exists() and job.is_alive():
            time.sleep(0.01)
        workers = [
            p
            for p in psutil.Process(ts.process.pid).children(recursive=True)
            if "model_service_worker" in " ".join(p.cmdline())
        ]
        assert job.is_alive(), "the job ended before a worker could be killed"
        workers[0].send_signal(signal.SIGKILL)
        job.join(120)
        assert "error" not in result, f"the job failed: {result.get('error')}"
        assert result["r"].rows == 60_000 and result["r"].errors == 0
        check_output(out, inp, x, predictor)
    finally:
        ts.stop()


def test_a_killed_job_resumes_to_byte_identical_output(tmp_path, model_store):
    inp = tmp_path / "in.csv"
    write_csv(inp, 150_000)
    whole, resumed = tmp_path / "whole.csv", tmp_path / "resumed.csv"
    base = [
        sys.executable,
        "-m",
        "tabserve",
        "score",
        str(inp),
        "--model-store",
        str(model_store),
        "--chunk-rows",
        "500",
    ]
    assert subprocess.run([*base, "-o", str(whole)], capture_output=True).returncode == 2

    job = subprocess.Popen([*base, "-o", str(resumed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    checkpoint = Path(str(resumed) + ".part.json")
    while not checkpoint.exists() and job.poll() is None:
        time.sleep(0.01)
    assert job.poll() is None, "the job ended before it could be killed"
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    assert not resumed.exists() and Path(str(resumed) + ".part").exists()
    deadline = time.monotonic() + 20
    while leftover_servers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leftover_servers() == [], "the killed job's TorchServe must be stopped by its watchdog"

    proc = subprocess.run([*base, "-o", str(resumed), "--resume"], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "of them by the interrupted run" in proc.stdout
    assert resumed.read_bytes() == whole.read_bytes()
    assert not checkpoint.exists()


def test_ctrl_c_stops_the_job_keeps_the_partial_output_and_stops_the_server(tmp_path, model_store):
    inp, out = tmp_path / "in.csv", tmp_path / "out.csv"
    write_csv(inp, 150_000)
    job = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tabserve",
            "score",
            str(inp),
            "-o",
            str(out),
            "--model-store",
            str(model_store),
            "--chunk-rows",
            "500",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    checkpoint = Path(str(out) + ".part.json")
    while not checkpoint.exists() and job.poll() is None:
        time.sleep(0.01)
    job.send_signal(signal.SIGINT)
    _, err = job.communicate(timeout=60)
    assert job.returncode == 1
    assert "interrupted" in err and "--resume" in err
    assert Path(str(out) + ".part").exists()


def test_local_engine_writes_the_same_bytes_as_torchserve(tmp_path, model_store, server):
    inp = tmp_path / "in.csv"
    write_csv(inp, 3000)
    local, remote = tmp_path / "local.csv", tmp_path / "remote.csv"
    common = ["--model-store", str(model_store), "--chunk-rows", "500"]
    assert main(["score", str(inp), "-o", str(local), "--engine", "local", *common]) == 2
    argv = [
        "score",
        str(inp),
        "-o",
        str(remote),
        *url_options(server),
        *common,
    ]
    assert main(argv) == 2
    assert local.read_bytes() == remote.read_bytes()


def test_local_engine_refuses_a_url(tmp_path, capsys):
    assert (
        main(["score", "x.csv", "-o", str(tmp_path / "o.csv"), "--engine", "local", "--url", "http://x"]) == 1
    )
    assert capsys.readouterr().err == "Error: --url applies to --engine torchserve, not local\n"
