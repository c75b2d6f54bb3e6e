"""Shared fixtures: a model trained in a temp folder, its archive, and a real TorchServe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import requests

from tabserve.archive import ArchiveConfig, archive
from tabserve.handler.predictor import Predictor
from tabserve.server import ServeConfig, TorchServe, free_ports
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
    port, mport, xport, g1, g2 = free_ports(5)
    server = TorchServe(
        ServeConfig(
            model_store=store,
            port=port,
            management_port=mport,
            metrics_port=xport,
            grpc_ports=(g1, g2),
            auth=auth,
            run_dir=run_dir,
            **kw,
        )
    )
    server.start()
    return server


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


def probs_of(predictions: list[dict], classes) -> np.ndarray:
    return np.array([[p["probabilities"][c] for c in classes] for p in predictions])
