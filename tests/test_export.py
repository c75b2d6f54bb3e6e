"""`tabserve export oci-artifact`: the artifact's layout, runtime.yaml, and score.py's answers
(imported from the artifact as OCI Model Deployment imports it) against the handler's own, for
every request form the handler reads; the tutorial's answer shape; refusals."""

from __future__ import annotations

import importlib.util
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tabserve.cli import main
from tabserve.export import CONDA_ENVS, ArtifactConfig, ExportError, export_oci_artifact

from .tables import write_penguins, write_price

FEATURES = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


def load_score(folder: Path, name: str):
    """score.py of an artifact folder, imported as a module of its own (as Model Deployment
    imports it: the folder on sys.path)."""
    spec = importlib.util.spec_from_file_location(name, folder / "score.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def handler_answer(mar_folder: Path, body: bytes, content_type: str) -> dict:
    """The handler's own answer to a request (its LocalModel, the TorchServe code path)."""
    from tabserve.batch.results import load_handler_module

    model = load_handler_module(mar_folder / "iris.mar", mar_folder / "unpacked", "local").LocalModel(
        mar_folder / "unpacked"
    )
    answer = model.request(body, content_type=content_type)
    assert answer.status == 200, answer.body
    return json.loads(answer.body)


@pytest.fixture(scope="module")
def iris_zip(artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "iris.zip"
    assert main(["export", "oci-artifact", "--artifacts", str(artifacts), "-o", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def iris_folder(iris_zip: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("unzipped")
    with zipfile.ZipFile(iris_zip) as z:
        z.extractall(folder)
    return folder


def test_the_zip_has_score_py_and_runtime_yaml_at_its_top_level_and_no_pickle(iris_zip):
    with zipfile.ZipFile(iris_zip) as z:
        names = set(z.namelist())
        runtime = yaml.safe_load(z.read("runtime.yaml"))
        weights = z.read("model.pt")
    assert {"score.py", "runtime.yaml", "schema.json", "input_schema.json", "output_schema.json"} <= names
    assert {"tabserve_handler/local.py", "MAR-INF/MANIFEST.json", "model.pt"} <= names
    assert not [n for n in names if n.endswith((".pkl", ".pickle", ".joblib"))]
    assert runtime["MODEL_ARTIFACT_VERSION"] == "3.0"
    env = runtime["MODEL_DEPLOYMENT"]["INFERENCE_CONDA_ENV"]
    slug, path, python = CONDA_ENVS["cpu"]
    assert env == {
        "INFERENCE_ENV_SLUG": slug,
        "INFERENCE_ENV_TYPE": "data_science",
        "INFERENCE_ENV_PATH": path,
        "INFERENCE_PYTHON_VERSION": python,
    }
    assert path.startswith("oci://service-conda-packs@id19sfcrra6z/service_pack/") and path.endswith(slug)
    assert set(runtime["MODEL_PROVENANCE"]) >= {"TRAINING_CONDA_ENV", "TRAINING_CODE", "PROJECT_OCID"}
    # The weights are a state_dict that loads with weights_only=True (no arbitrary objects).
    import io

    import torch

    state = torch.load(io.BytesIO(weights), weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


@pytest.mark.parametrize(
    ("data", "body", "content_type"),
    [
        (ROWS, json.dumps(ROWS).encode(), "application/json"),
        (ROWS[0], json.dumps(ROWS[0]).encode(), "application/json"),
        (
            [dict(zip(FEATURES, r)) for r in ROWS],
            json.dumps([dict(zip(FEATURES, r)) for r in ROWS]).encode(),
            "application/json",
        ),
        (
            {"instances": [dict(zip(FEATURES, r)) for r in ROWS]},
            json.dumps({"instances": [dict(zip(FEATURES, r)) for r in ROWS]}).encode(),
            "application/json",
        ),
        (
            ",".join(FEATURES) + "\n" + "\n".join(",".join(map(str, r)) for r in ROWS) + "\n",
            (",".join(FEATURES) + "\n" + "\n".join(",".join(map(str, r)) for r in ROWS) + "\n").encode(),
            "text/csv",
        ),
        (
            ("\n".join(",".join(map(str, r)) for r in ROWS) + "\n1,2\n").encode(),
            ("\n".join(",".join(map(str, r)) for r in ROWS) + "\n1,2\n").encode(),
            "text/csv",
        ),
    ],
    ids=["rows", "one-row", "objects", "instances", "csv-with-header", "csv-bytes-with-a-bad-row"],
)
def test_predict_answers_as_the_handler_for_every_request_form(
    iris_folder, tmp_path, artifacts, data, body, content_type
):
    from tabserve.archive import ArchiveConfig, archive

    archive(ArchiveConfig(artifacts=artifacts, model_store=tmp_path))
    score = load_score(iris_folder, f"score_{tmp_path.name}")
    got = score.predict(data, score.load_model())
    assert got == handler_answer(tmp_path, body, content_type)
    assert len(got["predictions"]) in (1, 3, 4)


def test_the_tutorial_answer_shape(artifacts, tmp_path):
    out = tmp_path / "tutorial"
    export_oci_artifact(ArtifactConfig(out=out, artifacts=artifacts, answer="tutorial"))
    score = load_score(out, "score_tutorial")
    full = load_score(out, "score_tutorial_full")
    got = score.predict([*ROWS, [1, 2]], score.load_model())
    assert len(got["prediction"]) == 4 and got["prediction"][3] is None
    assert got["errors"] == {"4": "row 4: expected 4 features, got 2"}
    probs = np.array(got["prediction"][:3])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=0, atol=1e-6)
    # The same numbers as tabserve's answer, in the schema's class order.
    (out / "tabserve_artifact.json").write_text('{"answer": "tabserve"}')
    answer = full.predict(ROWS, full.load_model())
    assert [list(p["probabilities"].values()) for p in answer["predictions"]] == got["prediction"][:3]


def test_regression_and_text_categories(tmp_path):
    """A regression model (price) and a classifier with text categories and missing values
    (penguins): named objects in, the handler's errors out, input_schema with the categories."""
    write_price(tmp_path / "price")
    write_penguins(tmp_path / "penguins")
    for name in ("price", "penguins"):
        export_oci_artifact(ArtifactConfig(out=tmp_path / f"{name}.art", artifacts=tmp_path / name))
    price = load_score(tmp_path / "price.art", "score_price")
    got = price.predict(
        [{"size": 2.5, "colour": "red", "age": 3}, {"size": "big", "colour": "red", "age": 3}]
    )
    assert isinstance(got["predictions"][0]["prediction"], float)
    assert got["predictions"][1] == {"error": "row 2: feature 'size' is not a number: \"big\""}
    penguins = load_score(tmp_path / "penguins.art", "score_penguins")
    got = penguins.predict({"island": "Dream", "bill_length": None, "sex": "female", "flipper": 190})
    assert got["predictions"][0]["label"] in ("Adelie", "Chinstrap", "Gentoo")
    fields = json.loads((tmp_path / "penguins.art" / "input_schema.json").read_text())["schema"]
    assert {f["name"]: f["feature_type"] for f in fields}["island"] == "Category"
    out_fields = json.loads((tmp_path / "price.art" / "output_schema.json").read_text())["schema"]
    assert [f["name"] for f in out_fields] == ["prediction"]


def test_gpu_and_published_conda_environments(artifacts, tmp_path):
    export_oci_artifact(ArtifactConfig(out=tmp_path / "gpu", artifacts=artifacts, gpu=True))
    env = yaml.safe_load((tmp_path / "gpu" / "runtime.yaml").read_text())["MODEL_DEPLOYMENT"][
        "INFERENCE_CONDA_ENV"
    ]
    assert env["INFERENCE_ENV_SLUG"] == CONDA_ENVS["gpu"][0] and "/gpu/" in env["INFERENCE_ENV_PATH"]
    published = "oci://my-bucket@my-namespace/conda_environments/cpu/tabserve/1.0/tabserve_v1"
    export_oci_artifact(
        ArtifactConfig(out=tmp_path / "pub", artifacts=artifacts, conda_env=published, python_version="3.11")
    )
    env = yaml.safe_load((tmp_path / "pub" / "runtime.yaml").read_text())["MODEL_DEPLOYMENT"][
        "INFERENCE_CONDA_ENV"
    ]
    assert env == {
        "INFERENCE_ENV_SLUG": "tabserve_v1",
        "INFERENCE_ENV_TYPE": "published",
        "INFERENCE_ENV_PATH": published,
        "INFERENCE_PYTHON_VERSION": "3.11",
    }


def test_refusals(artifacts, model_store, tmp_path):
    cases = [
        (ArtifactConfig(out=tmp_path / "a"), "one of them"),
        (
            ArtifactConfig(out=tmp_path / "a", artifacts=artifacts, conda_env="nope_v1"),
            "unknown service conda",
        ),
        (
            ArtifactConfig(out=tmp_path / "a", artifacts=artifacts, conda_env="oci://b@n/x/env"),
            "--python-version",
        ),
        (ArtifactConfig(out=tmp_path / "a", artifacts=artifacts, answer="pickle"), "--answer"),
        (ArtifactConfig(out=tmp_path / "a", mar=tmp_path / "missing.mar"), "cannot read"),
    ]
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    cases.append((ArtifactConfig(out=tmp_path / "taken", artifacts=artifacts), "exists"))
    for config, message in cases:
        with pytest.raises(ExportError, match=message):
            export_oci_artifact(config)
    assert not (tmp_path / "a").exists()
    # An archive made by this tabserve exports as it is.
    export_oci_artifact(ArtifactConfig(out=tmp_path / "m.zip", mar=model_store / "iris.mar"))
    assert zipfile.ZipFile(tmp_path / "m.zip").read("score.py").startswith(b'"""score.py of an OCI')


@pytest.fixture
def offline_oci(tmp_path, monkeypatch):
    """A throwaway OCI config with a freshly generated key (oracle-ads reads one even for
    local work) and a guard that refuses, and records, any connection beyond this machine:
    nothing reaches OCI."""
    import socket

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "oci_key.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashes.Hash(hashes.MD5())
    digest.update(der)
    config = tmp_path / "oci_config"
    config.write_text(
        "[DEFAULT]\n"
        "user=ocid1.user.oc1..aaaaaaaaexampleexampleexampleexampleexampleexample\n"
        f"fingerprint={':'.join(f'{b:02x}' for b in digest.finalize())}\n"
        "tenancy=ocid1.tenancy.oc1..aaaaaaaaexampleexampleexampleexampleexampleexample\n"
        "region=us-ashburn-1\n"
        f"key_file={key_file}\n"
    )
    monkeypatch.setenv("OCI_CONFIG_LOCATION", str(config))
    monkeypatch.setenv("OCI_IAM_TYPE", "api_key")
    attempts: list = []
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def guarded_connect(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and (host.startswith("127.") or host in ("::1", "localhost")):
            return connect(sock, address)
        attempts.append(address)
        raise OSError(f"no network in this test: {address}")

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host not in (None, "localhost", "127.0.0.1", "::1"):
            attempts.append(host)
            raise socket.gaierror(f"no network in this test: {host}")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    yield config
    assert attempts == []


def test_oracle_ads_loads_and_verifies_the_artifact_as_model_deployment_does(
    iris_folder, offline_oci, tmp_path
):
    """OCI's own tooling: oracle-ads' GenericModel loads the exported artifact (runtime.yaml parsed,
    score.py's functions checked), and verify() imports score.py and calls load_model() and
    predict() as Model Deployment does: JSON rows, named objects and CSV text get the answers of
    the handler in this process within 1e-6."""
    import ads
    from ads.model.generic_model import GenericModel

    ads.set_auth("api_key", oci_config_location=str(offline_oci))
    # The zip's content, unpacked (oracle-ads 2.16 copies a local .zip without unpacking it;
    # Model Deployment unpacks the uploaded zip).
    model = GenericModel.from_model_artifact(
        uri=str(iris_folder), artifact_dir=str(tmp_path / "ads"), force_overwrite=True, reload=True
    )
    env = model.runtime_info.model_deployment.inference_conda_env
    assert env.inference_env_slug == CONDA_ENVS["cpu"][0] and env.inference_python_version == "3.9"
    local = load_score(iris_folder, "score_ads_reference")  # the same zip, unpacked
    csv_text = ",".join(FEATURES) + "\n" + "\n".join(",".join(map(str, r)) for r in ROWS) + "\n1,2,3\n"
    payloads = [ROWS, [dict(zip(FEATURES, r)) for r in ROWS], csv_text.encode()]
    for payload in payloads:
        got = model.verify(payload)
        want = local.predict(payload, local.load_model())
        assert [p.get("label") or p["error"] for p in got["predictions"]] == [
            p.get("label") or p["error"] for p in want["predictions"]
        ]
        probs = [list(p["probabilities"].values()) for p in got["predictions"] if "probabilities" in p]
        want_probs = [list(p["probabilities"].values()) for p in want["predictions"] if "probabilities" in p]
        np.testing.assert_allclose(probs, want_probs, rtol=0, atol=1e-6)
    assert got["predictions"][-1] == {"error": "row 4: expected 4 fields, got 3"}


def test_score_py_passes_oracle_ads_checks_and_the_shipped_code_parses_as_python_3_9(iris_folder):
    """The checks oracle-ads runs on score.py offline (the functions, `data` first, every other
    argument with a default), and the handler and score.py parse as Python 3.9, the default
    conda environment's."""
    import ast
    import inspect

    score = load_score(iris_folder, "score_checked")
    params = list(inspect.signature(score.predict).parameters.values())
    assert params[0].name == "data" and all(p.default is not inspect.Parameter.empty for p in params[1:])
    assert all(
        p.default is not inspect.Parameter.empty
        for p in inspect.signature(score.load_model).parameters.values()
    )
    for f in [iris_folder / "score.py", *sorted((iris_folder / "tabserve_handler").glob("*.py"))]:
        tree = ast.parse(f.read_text(), filename=str(f), feature_version=(3, 9))
        # What parses as 3.9 but fails when 3.9 runs it: a type alias written with `|`
        # (evaluated as the module loads; annotations are not, with postponed evaluation).
        aliases = [
            node.lineno
            for node in tree.body
            if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.BinOp)
            and isinstance(node.value.op, ast.BitOr)
        ]
        assert aliases == [], (f, aliases)
        assert "from __future__ import annotations" in f.read_text() or f.name in (
            "score.py",
            "__init__.py",
        ), f


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200) | st.text(max_size=200) | json_values)
def test_predict_on_anything_answers_or_refuses_with_the_handlers_message(data, iris_folder):
    """Arbitrary bytes, text or JSON values: an answer with one entry per row the handler read,
    or ValueError with the handler's message (Model Deployment's error answer); nothing else."""
    score = load_score(iris_folder, "score_fuzzed")
    try:
        got = score.predict(data, score.load_model())
    except ValueError as exc:
        assert str(exc).startswith("HTTP 4"), exc
        return
    assert set(got) == {"predictions", "model"}
    for p in got["predictions"]:
        assert set(p) in ({"error"}, {"label", "probabilities"}) and (
            "error" not in p or p["error"].startswith("row ")
        )


def test_python_values_unseen_categories_and_more_refusals(artifacts, tmp_path):
    """numpy arrays and pandas DataFrames are sent as their rows; the count of unseen
    categories (a header under TorchServe) is in the answer; --python-version only with a
    pack's path, and like 3.11; an output that cannot be written is an ExportError."""
    import pandas as pd

    out = tmp_path / "art"
    export_oci_artifact(ArtifactConfig(out=out, artifacts=artifacts))
    score = load_score(out, "score_values")
    model = score.load_model()
    want = score.predict(ROWS, model)
    assert score.predict(np.array(ROWS), model) == want
    assert score.predict([np.float32(v) for v in ROWS[0]], model)["predictions"][0]["label"] == "setosa"
    assert score.predict(pd.DataFrame(ROWS, columns=FEATURES), model) == want
    with pytest.raises(ValueError, match="not a row"):
        score.predict({1, 2}, model)
    # NaN and infinity reach the handler as JSON's NaN and Infinity: its rules apply (this
    # model imputes a missing value; infinity is a row error).
    got = score.predict([[float("nan"), 1, 2, 3], [float("inf"), 1, 2, 3]], model)["predictions"]
    assert "label" in got[0] and got[1] == {"error": "row 2: feature 'sepal_length_cm' is not finite: inf"}
    write_penguins(tmp_path / "penguins")
    export_oci_artifact(ArtifactConfig(out=tmp_path / "p", artifacts=tmp_path / "penguins"))
    penguins = load_score(tmp_path / "p", "score_unseen")
    got = penguins.predict([{"island": "Atlantis", "bill_length": 40, "sex": "female", "flipper": 190}])
    assert got["unseen"] == {"island": 1} and "label" in got["predictions"][0]
    for python, env, message in [
        ("3.11", None, "goes with --conda-env oci://"),
        ("banana", "oci://b@n/x/env_p311_v1", "like 3.11"),
    ]:
        with pytest.raises(ExportError, match=message):
            export_oci_artifact(
                ArtifactConfig(out=tmp_path / "x", artifacts=artifacts, conda_env=env, python_version=python)
            )
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="cannot write"):
        export_oci_artifact(ArtifactConfig(out=tmp_path / "file" / "sub.zip", artifacts=artifacts))
