"""Checks of the built image, run by bin/container-test (CI): serve mode answers correct
predictions over HTTP, score mode scores a CSV with malformed rows and exits 2, the container
runs as non-root, its health check passes, metrics are scraped, and `podman stop` is quick.

    python tests/container_check.py --image localhost/tabserve:ci-cpu --name tabserve-ci-serve
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tabserve.handler.predictor import Predictor  # noqa: E402
from tabserve.server import free_ports  # noqa: E402

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


def podman(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], check=check, capture_output=True, text=True, **kw)


def fail(msg: str) -> None:
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def check_serve(image: str, name: str, predictor: Predictor) -> None:
    port, mport = free_ports(2)
    t0 = time.monotonic()
    podman(
        "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080", "-p", f"127.0.0.1:{mport}:8082", image
    )
    url = f"http://127.0.0.1:{port}/predictions/iris"
    deadline = t0 + 120
    while True:
        token = podman("exec", name, "tabserve", "token", check=False).stdout.strip()
        try:
            r = requests.post(url, json=ROWS, headers={"Authorization": f"Bearer {token}"}, timeout=5)
            if r.status_code == 200:
                break
        except requests.RequestException:
            pass
        running = podman("inspect", "-f", "{{.State.Running}}", name, check=False).stdout.strip()
        if running != "true" or time.monotonic() > deadline:
            logs = podman("logs", name, check=False)
            fail(f"no prediction (running: {running}):\n{(logs.stdout + logs.stderr)[-3000:]}")
        time.sleep(0.2)
    first = time.monotonic() - t0
    got = np.array([[p["probabilities"][c] for c in predictor.classes] for p in r.json()["predictions"]])
    np.testing.assert_allclose(got, predictor.predict_proba(np.array(ROWS)), atol=1e-6)
    print(f"serve: first prediction {first:.1f} s after podman run; predictions match in-process")

    if requests.post(url, json=ROWS, timeout=5).status_code == 200:
        fail("the container served a request without a token")
    uid = podman("exec", name, "id", "-u").stdout.strip()
    if uid == "0":
        fail("the container runs as root")
    health = podman("healthcheck", "run", name, check=False)
    if health.returncode != 0:
        fail(f"health check failed: {health.stdout}{health.stderr}")
    metrics = requests.get(f"http://127.0.0.1:{mport}/metrics", timeout=5).text
    if "RowsPredicted" not in metrics:
        fail("the handler's RowsPredicted counter is not on the metrics port")
    print(f"serve: uid {uid}, health check passed, RowsPredicted scraped, no token -> refused")

    t1 = time.monotonic()
    podman("stop", "-t", "10", name)
    stop = time.monotonic() - t1
    if stop > 5:
        fail(f"podman stop took {stop:.1f} s: SIGTERM did not stop TorchServe")
    print(f"serve: podman stop took {stop:.1f} s")
    podman("rm", "-f", name)


def check_score(image: str) -> None:
    data = Path(tempfile.mkdtemp(prefix="tabserve-ci-data-"))
    try:
        os.chmod(data, 0o777)  # the container's non-root user writes the output here
        shutil.copy(ROOT / "examples" / "iris_sample.csv", data / "in.csv")
        t0 = time.monotonic()
        proc = podman(
            "run", "--rm", "-v", f"{data}:/data", image, "score", "/data/in.csv", "/data/out.csv", check=False
        )
        if proc.returncode != 2:
            fail(
                f"score mode exited {proc.returncode}, expected 2 (rows with errors):\n"
                f"{proc.stdout}{proc.stderr}"
            )
        with open(data / "out.csv", newline="") as f:
            rows = list(csv.reader(f))
        with open(data / "in.csv", newline="") as f:
            n_in = sum(1 for _ in csv.reader(f))
        errors = [r for r in rows[1:] if r[-1]]
        if (
            len(rows) != n_in
            or len(errors) != 4
            or rows[0][-5:] != ["label", "p_setosa", "p_versicolor", "p_virginica", "error"]
        ):
            fail(f"score output is wrong: {len(rows)} rows for {n_in}, {len(errors)} errors")
        print(
            f"score: {len(rows) - 1} rows, {len(errors)} with errors, exit 2, {time.monotonic() - t0:.1f} s"
        )
    finally:
        shutil.rmtree(data, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", required=True)
    ap.add_argument("--name", required=True)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(ROOT / "model_store" / "iris.mar") as z:
            z.extractall(tmp)
        predictor = Predictor(Path(tmp))
        check_serve(args.image, args.name, predictor)
    check_score(args.image)
    print("container checks passed")


if __name__ == "__main__":
    main()
