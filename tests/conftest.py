"""Shared fixtures: a model trained in a temp folder, its archive, and a real TorchServe."""

from __future__ import annotations

import http.client
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, settings

from tabserve.archive import ArchiveConfig, archive
from tabserve.handler.predictor import Predictor
from tabserve.server import TorchServe, start_on_free_ports
from tabserve.train.config import FitConfig
from tabserve.train.data import load_builtin
from tabserve.train.export import export
from tabserve.train.fit import fit

IRIS_ROWS = [
    [5.1, 3.5, 1.4, 0.2],
    [7.0, 3.2, 4.7, 1.4],
    [6.3, 3.3, 6.0, 2.5],
    [5.9, 3.0, 5.1, 1.8],
]


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Iris model with tabserve's default training settings."""
    out = tmp_path_factory.mktemp("artifacts") / "iris"
    data = load_builtin("iris")
    config = FitConfig()
    export(data, config, fit(data, config), out)
    return out


@pytest.fixture(scope="session")
def predictor(artifacts: Path) -> Predictor:
    return Predictor(artifacts)


@pytest.fixture(scope="session")
def model_store(artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("model_store")
    archive(ArchiveConfig(artifacts=artifacts, model_store=store))
    return store


def start_server(store: Path, run_dir: Path, auth: bool = True, **kw) -> TorchServe:
    return start_on_free_ports(store, run_dir, auth=auth, **kw)


@pytest.fixture(scope="session")
def server(model_store: Path, tmp_path_factory: pytest.TempPathFactory):
    """A real TorchServe with token auth on, shared by the integration tests."""
    ts = start_server(model_store, tmp_path_factory.mktemp("run"))
    yield ts
    ts.stop()


class Client:
    def __init__(self, server: TorchServe, model: str = "iris") -> None:
        self.server = server
        self.url = f"{server.inference_url}/predictions/{model}"

    def post(self, body, content_type: str = "application/json", **headers) -> requests.Response:
        data = body if isinstance(body, (str, bytes)) else json.dumps(body)
        return requests.post(
            self.url,
            data=data,
            headers={**self.server.headers(), "Content-Type": content_type, **headers},
            timeout=30,
        )


@pytest.fixture
def client(server: TorchServe) -> Client:
    return Client(server)


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket: how the owner reaches TorchServe's management API."""

    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=30)
        self.socket_path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def management(sock: Path, method: str, path: str, key_file: Path | None = None) -> tuple[int, object]:
    """One call to a server's management API over its Unix socket, with the management key
    from `key_file` (none for a server without token auth); returns the status and the JSON."""
    headers = {}
    if key_file is not None:
        headers["Authorization"] = f"Bearer {json.loads(key_file.read_text())['management']['key']}"
    conn = UnixHTTPConnection(sock)
    try:
        conn.request(method, path, headers=headers)
        r = conn.getresponse()
        body = r.read()
    finally:
        conn.close()
    try:
        return r.status, json.loads(body)
    except ValueError:
        return r.status, body.decode(errors="replace")


def probs_of(predictions: list[dict], classes) -> np.ndarray:
    return np.array([[p["probabilities"][c] for c in classes] for p in predictions])


# Hypothesis: "ci" (the default) keeps the fuzz suite to a fixed, modest number of examples
# per property so CI stays quick and repeatable; HYPOTHESIS_PROFILE=deep runs many more.
settings.register_profile(
    "ci",
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "deep", max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
