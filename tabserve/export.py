"""`tabserve export oci-artifact`: an OCI Data Science model artifact over the archive's handler.

The artifact is the .mar's own content (tabserve_handler/, schema.json, the weights as a
state_dict, MAR-INF/MANIFEST.json, model-config.yaml with the handler's limits) plus what OCI
Model Deployment's managed conda runtime needs at the top level: score.py (tabserve/oci_score.py:
load_model() and predict(data, model) calling that handler), runtime.yaml (the conda environment
to serve in), and input_schema.json / output_schema.json (the features and the answer's
columns, in the schema format oracle-ads writes). A folder, or a .zip with those files at its
top level.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import TabserveError
from .handler.columns import CATEGORICAL
from .handler.response import output_columns

# The OCI Data Science service conda environment for PyTorch that the artifact names by default:
# PyTorch 2.1 for GPU on Python 3.9, whose slug and Object Storage path we could cite (README,
# "Deploying on OCI"). Its torch runs on a CPU shape too (no GPU: the CPU); for another pack
# (a CPU-only one is smaller), give its oci:// path from the notebook's Environment Explorer.
PYTORCH_PACK = (
    "pytorch21_p39_gpu_v1",
    "oci://service-conda-packs@id19sfcrra6z/service_pack/gpu/PyTorch_2.1_for_GPU_on_Python_3.9/1.0/"
    "pytorch21_p39_gpu_v1",
    "3.9",
)
CONDA_ENVS = {"cpu": PYTORCH_PACK, "gpu": PYTORCH_PACK}
SERVICE_PACKS = "oci://service-conda-packs@"
ANSWERS = ("tabserve", "tutorial")
SETTINGS_FILE = "tabserve_artifact.json"


class ExportError(TabserveError):
    """The artifact cannot be written: the message says why."""


@dataclass(frozen=True)
class ArtifactConfig:
    out: Path
    mar: Path | None = None
    artifacts: Path | None = None
    conda_env: str | None = None  # a service slug, or an oci:// path of a published environment
    gpu: bool = False
    answer: str = "tabserve"
    python_version: str | None = None  # with a conda_env of your own


def export_oci_artifact(config: ArtifactConfig) -> Path:
    """Write the artifact; returns its path."""
    if (config.mar is None) == (config.artifacts is None):
        raise ExportError("give the model as --artifacts DIR or --mar FILE (one of them)")
    if config.answer not in ANSWERS:
        raise ExportError(f"--answer must be one of {', '.join(ANSWERS)}, got {config.answer!r}")
    out = Path(config.out)
    if out.exists() and (out.is_file() or any(out.iterdir())):
        raise ExportError(f"{out} exists: remove it or name another")
    with tempfile.TemporaryDirectory(prefix="tabserve-export-") as tmp:
        mar = config.mar
        if config.artifacts is not None:
            from .archive import ArchiveConfig, ArchiveError, archive

            try:
                mar = archive(ArchiveConfig(artifacts=config.artifacts, model_store=Path(tmp) / "store"))
            except ArchiveError as exc:
                raise ExportError(str(exc)) from exc
        assert mar is not None
        stage = Path(tmp) / "artifact"
        stage.mkdir()
        _unpack(Path(mar), stage)
        schema = json.loads((stage / "schema.json").read_text())
        shutil.copyfile(Path(__file__).with_name("oci_score.py"), stage / "score.py")
        (stage / "runtime.yaml").write_text(runtime_yaml(config))
        (stage / SETTINGS_FILE).write_text(json.dumps({"answer": config.answer}, indent=2) + "\n")
        (stage / "input_schema.json").write_text(json.dumps(input_schema(schema), indent=2) + "\n")
        (stage / "output_schema.json").write_text(json.dumps(output_schema(schema), indent=2) + "\n")
        try:
            return _write(stage, out)
        except OSError as exc:
            raise ExportError(f"cannot write {out}: {exc}") from exc


def _unpack(mar: Path, into: Path) -> None:
    try:
        with zipfile.ZipFile(mar) as z:
            names = z.namelist()
            if "schema.json" not in names or "tabserve_handler/local.py" not in names:
                raise ExportError(f"{mar} is not a tabserve archive (no schema.json and handler)")
            if b"def request(" not in z.read("tabserve_handler/local.py"):
                raise ExportError(
                    f"{mar}'s handler predates answering requests outside TorchServe: archive the "
                    "model again with this tabserve (`tabserve archive`), or export --artifacts"
                )
            z.extractall(into)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ExportError(f"cannot read {mar}: {exc}") from exc


def runtime_yaml(config: ArtifactConfig) -> str:
    """runtime.yaml (MODEL_ARTIFACT_VERSION 3.0): the conda environment Model Deployment
    serves in (a service pack by its slug or oci:// path, or a published one by its path), and
    the MODEL_PROVENANCE block that oracle-ads requires (empty: the model was not trained in a
    Data Science notebook; schema.json says where it comes from)."""
    slug, path, python = conda_env(config)
    kind = "data_science" if path.startswith(SERVICE_PACKS) else "published"
    provenance = {
        "PROJECT_OCID": "",
        "TENANCY_OCID": "",
        "TRAINING_CODE": {"ARTIFACT_DIRECTORY": ""},
        "TRAINING_COMPARTMENT_OCID": "",
        "TRAINING_CONDA_ENV": {
            "TRAINING_ENV_PATH": "",
            "TRAINING_ENV_SLUG": "",
            "TRAINING_ENV_TYPE": "",
            "TRAINING_PYTHON_VERSION": "",
        },
        "TRAINING_REGION": "",
        "TRAINING_RESOURCE_OCID": "",
        "USER_OCID": "",
        "VM_IMAGE_INTERNAL_ID": "",
    }
    import yaml

    document = {
        "MODEL_ARTIFACT_VERSION": "3.0",
        "MODEL_DEPLOYMENT": {
            "INFERENCE_CONDA_ENV": {
                "INFERENCE_ENV_SLUG": slug,
                "INFERENCE_ENV_TYPE": kind,
                "INFERENCE_ENV_PATH": path,
                "INFERENCE_PYTHON_VERSION": python,
            }
        },
        "MODEL_PROVENANCE": provenance,
    }
    return yaml.safe_dump(document, sort_keys=False)


def conda_env(config: ArtifactConfig) -> tuple[str, str, str]:
    """(slug, oci:// path, Python version) of the environment to serve in."""
    env = config.conda_env
    python = config.python_version
    if python is not None and not re.fullmatch(r"3\.\d{1,2}", python):
        raise ExportError(f"--python-version must be like 3.11, got {python!r}")
    if python is not None and not (env or "").startswith("oci://"):
        raise ExportError("--python-version goes with --conda-env oci://... (a pack named by its path)")
    if env is None:
        return CONDA_ENVS["gpu" if config.gpu else "cpu"]
    known = {s: (s, p, v) for s, p, v in CONDA_ENVS.values()}
    if env in known:
        return known[env]
    if not env.startswith("oci://"):
        raise ExportError(
            f"unknown service conda environment {env!r}: give {', '.join(known)}, or the oci:// path "
            "of a pack (a service pack's from the notebook's Environment Explorer, or a published one)"
        )
    slug = env.rstrip("/").rsplit("/", 1)[-1]
    if not python:
        found = re.search(r"_p(3)(\d+)_", slug)  # service slugs name their Python: _p39_, _p311_
        if not found:
            raise ExportError(f"give --python-version for {env} (its name does not say)")
        python = f"{found[1]}.{found[2]}"
    return slug, env, python


def input_schema(schema: dict) -> dict:
    """The features, in the schema format oracle-ads writes (version 1.1)."""
    roles = {c.get("name"): c.get("role") for c in schema.get("columns") or []}
    return _schema_document([(name, roles.get(name) == CATEGORICAL) for name in schema["features"]])


def output_schema(schema: dict) -> dict:
    """The answer's columns: label and a probability per class, or the prediction."""
    classes = [] if schema.get("task") == "regression" else list(schema.get("classes") or [])
    return _schema_document([(name, name == "label") for name in output_columns(classes)[:-1]])


def _schema_document(columns: list[tuple[str, bool]]) -> dict:
    """(name, is it a category) per column, as oracle-ads' schema document."""
    fields = [
        {
            "name": name,
            "dtype": "object" if categorical else "float64",
            "feature_type": "Category" if categorical else "Continuous",
            "required": True,
            "order": order,
            "description": name,
            "domain": {"values": "", "stats": {}, "constraints": []},
        }
        for order, (name, categorical) in enumerate(columns)
    ]
    return {"schema": fields, "version": "1.1"}


def _write(stage: Path, out: Path) -> Path:
    """The staged artifact as OUT: a .zip with the files at its top level, or a folder."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".zip":
        part = out.with_name(out.name + ".part")
        with zipfile.ZipFile(part, "w", zipfile.ZIP_DEFLATED) as z:
            for f in sorted(stage.rglob("*")):
                if f.is_file():
                    z.write(f, f.relative_to(stage).as_posix())
        os.replace(part, out)
        return out
    if out.exists():
        out.rmdir()  # empty (checked above)
    shutil.copytree(stage, out)
    return out
