"""Training and export: data checks, determinism, what schema.json holds, no pickle."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tabserve.cli import main
from tabserve.handler.schema import Schema
from tabserve.train.config import FitConfig
from tabserve.train.data import DataError, load_builtin, load_csv
from tabserve.train.export import export
from tabserve.train.fit import fit


def test_same_seed_gives_the_same_weights():
    data = load_builtin("iris")
    cfg = FitConfig(epochs=5)
    a, b = fit(data, cfg).model.state_dict(), fit(data, cfg).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = fit(data, FitConfig(epochs=5, seed=1)).model.state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_training_twice_with_the_same_seed_writes_byte_identical_weights_and_hash(tmp_path: Path):
    for name in ("a", "b"):
        assert main(["train", "--epochs", "3", "--seed", "7", "--out", str(tmp_path / name)]) == 0
    a, b = (tmp_path / "a" / "model.pt").read_bytes(), (tmp_path / "b" / "model.pt").read_bytes()
    assert a == b
    recorded = [Schema.load(tmp_path / name).weights_sha256 for name in ("a", "b")]
    assert recorded == [hashlib.sha256(a).hexdigest()] * 2
    assert b".model-" not in a  # no temporary file name inside the zip
    state = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    assert sorted(state) == ["0.bias", "0.weight", "2.bias", "2.weight", "4.bias", "4.weight"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["model.pt", "schema.json"]


def test_default_settings_reach_095_test_accuracy_on_iris(artifacts: Path):
    assert Schema.load(artifacts).metrics["test_accuracy"] >= 0.95


def test_schema_describes_the_model_completely(artifacts: Path):
    d = json.loads((artifacts / "schema.json").read_text())
    assert d["features"] == ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]
    assert d["classes"] == ["setosa", "versicolor", "virginica"]
    assert d["architecture"] == {
        "inputs": 4,
        "hidden": [50, 50],
        "outputs": 3,
        "activation": "relu",
        "type": "mlp",
    }
    assert len(d["scaler"]["mean"]) == len(d["scaler"]["scale"]) == 4
    assert set(d["feature_stats"]["petal_width_cm"]) == {"min", "max", "mean", "std", "missing", "bins"}
    assert d["format_version"] == 2 and d["task"] == "classification" and d["missing"] == "impute"
    assert [c["role"] for c in d["columns"]] == ["numeric"] * 4
    assert not any(c["indicator"] for c in d["columns"])  # no missing values in Iris
    assert set(d["metrics"]["test_accuracy_per_class"]) == set(d["classes"])
    assert len(d["training"]["data_sha256"]) == 64 and d["training"]["seed"] == 0
    assert {"torch", "scikit_learn"} <= set(d["versions"])
    # 120 training rows: 102 to fit, 18 to stop early on; 30 to test.
    assert d["metrics"]["train_rows"] + d["metrics"]["valid_rows"] == 120 and d["metrics"]["test_rows"] == 30


def test_scaler_is_fitted_on_the_training_split_only(artifacts: Path):
    d = json.loads((artifacts / "schema.json").read_text())
    iris = load_builtin("iris")
    full_mean = np.array(iris.records, dtype=np.float64).mean(axis=0).tolist()
    assert d["scaler"]["mean"] != pytest.approx(full_mean, abs=1e-9)
    assert d["scaler"]["mean"] == pytest.approx([s["mean"] for s in d["feature_stats"].values()])


def test_weights_load_with_weights_only(artifacts: Path):
    state = torch.load(artifacts / "model.pt", weights_only=True)
    assert sorted(state) == ["0.bias", "0.weight", "2.bias", "2.weight", "4.bias", "4.weight"]


def test_csv_training_with_string_labels_and_custom_hidden_layers(tmp_path: Path):
    data = load_builtin("iris")
    lines = ["f1,label,f2,f3,f4"]
    for x, y in zip(data.records, data.y):
        lines.append(f"{x[0]},{data.classes[y]},{x[1]},{x[2]},{x[3]}")
    (tmp_path / "flowers.csv").write_text("\n".join(lines) + "\n")
    ds = load_csv(tmp_path / "flowers.csv", "label")
    assert ds.features == ("f1", "f2", "f3", "f4") and ds.classes == data.classes
    cfg = FitConfig(hidden=(8,), epochs=3)
    schema = export(ds, cfg, fit(ds, cfg), tmp_path / "out")
    assert schema.architecture.hidden == (8,) and schema.name == "flowers"


@pytest.mark.parametrize(
    ("text", "target", "message"),
    [
        ("a,b,y\n1,2,x\n", "label", "target column 'label' not found; columns are a, b, y"),
        ("a,y\n" + "1,p\n" * 10 + "2,q\n" * 3, "y", "class(es) with fewer than 5 rows ('q' has 3)"),
        (
            "a,y\n" + "1,p\n" * 10,
            "y",
            "need at least 2 classes, found 1 ('p' in every row): 'y' has nothing to tell apart",
        ),
        ("a,b,y\n1,2\n", "y", "1 line(s) do not have the header's 3 fields: line 2 has 2"),
        ("a,b,y\n" + "1,,p\n2,,q\n" * 5, "y", "column 'b' is empty in every row: --drop b"),
    ],
)
def test_bad_training_csv_is_a_clear_error_before_training(tmp_path, text, target, message):
    path = tmp_path / "d.csv"
    path.write_text(text)
    with pytest.raises(DataError) as info:
        load_csv(path, target)
    assert message in str(info.value)


def test_schema_holds_the_training_baseline_for_drift(artifacts: Path):
    """Per numeric feature, the training split's values in decile bins (each bin about a tenth
    of the rows, every value counted once); the model's predictions on the training split per
    class. Old schemas without them still load."""
    from tabserve.handler.schema import Schema

    d = json.loads((artifacts / "schema.json").read_text())
    iris = load_builtin("iris")
    train_rows = d["metrics"]["train_rows"] + d["metrics"]["valid_rows"]
    for j, name in enumerate(d["features"]):
        b = d["feature_stats"][name]["bins"]
        assert b["edges"] == sorted(b["edges"]) and len(b["counts"]) == len(b["edges"]) + 1
        assert sum(b["counts"]) == train_rows
        assert max(b["counts"]) <= 0.3 * train_rows  # decile bins (ties may merge a few)
        assert b["edges"][0] >= min(float(r[j]) for r in iris.records)
    p = d["prediction_stats"]
    assert p["rows"] == train_rows and sum(p["counts"].values()) == train_rows
    assert list(p["counts"]) == d["classes"] and min(p["counts"].values()) >= 0.2 * train_rows
    old = {k: v for k, v in d.items() if k != "prediction_stats"}
    assert Schema.from_dict(old).prediction_stats == {}
