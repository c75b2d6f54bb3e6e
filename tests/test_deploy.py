"""deploy/ files checked against the real tools' own models: the OCI SDK's data science
models for the Model Deployment and the Job, its Data Flow models for the Spark application,
the Kubernetes client's models for OKE."""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

import oci.data_flow.models as df
import oci.data_science.models as ds
import pytest
import yaml
from kubernetes.client import ApiClient

ROOT = Path(__file__).resolve().parent.parent
OCI_DIR = ROOT / "deploy" / "oci"
PLACEHOLDERS = {
    "PROJECT_OCID": "ocid1.datascienceproject.oc1.iad.aaaa",
    "COMPARTMENT_OCID": "ocid1.compartment.oc1..aaaa",
    "MODEL_OCID": "ocid1.datasciencemodel.oc1.iad.aaaa",
    "OCIR_IMAGE": "iad.ocir.io/mytenancy/tabserve:gpu",
    "OCIR_IMAGE_DIGEST": "sha256:" + "0" * 64,
    "LOG_GROUP_OCID": "ocid1.loggroup.oc1.iad.aaaa",
    "ACCESS_LOG_OCID": "ocid1.log.oc1.iad.aaaa",
    "PREDICT_LOG_OCID": "ocid1.log.oc1.iad.bbbb",
    "OS_NAMESPACE": "mytenancy",
    "INPUT_BUCKET": "tabserve-input",
    "OUTPUT_BUCKET": "tabserve-output",
    "INPUT_OBJECT": "in.csv",
    "OUTPUT_OBJECT": "scored.csv",
    "DATAFLOW_BUCKET": "tabserve-dataflow",
}


def render(path: Path, keep: frozenset[str] = frozenset()) -> str:
    """The file with its placeholders filled; the names in `keep` stay as they are (Data Flow
    fills its own `${name}` parameters in an application's arguments when a run starts)."""
    text = path.read_text()
    names = set(re.findall(r"\$\{(\w+)\}", text)) - keep
    assert names <= set(PLACEHOLDERS), f"undocumented placeholders {names - set(PLACEHOLDERS)}"
    assert not keep & set(PLACEHOLDERS), f"{sorted(keep & set(PLACEHOLDERS))} are also placeholders"
    return string.Template(text).substitute(PLACEHOLDERS, **{name: f"${{{name}}}" for name in keep})


def oci_model(data, type_name: str, where: str = "$", models=ds):
    """Build an OCI SDK model from REST JSON, refusing unknown keys, wrong types and enum
    values the SDK does not know: a typo in the file fails here, not in the tenancy."""
    if type_name.startswith("list["):
        assert isinstance(data, list), f"{where}: expected a list"
        return [oci_model(v, type_name[5:-1], f"{where}[{i}]", models) for i, v in enumerate(data)]
    if type_name.startswith("dict("):
        assert isinstance(data, dict), f"{where}: expected an object"
        return data
    if type_name in ("str", "int", "float", "bool", "object"):
        py = {"str": str, "int": int, "float": (int, float), "bool": bool, "object": object}[type_name]
        assert isinstance(data, py), f"{where}: expected {type_name}, got {data!r}"
        return data
    cls = getattr(models, type_name)
    assert isinstance(data, dict), f"{where}: expected an object for {type_name}"
    if hasattr(cls, "get_subtype"):
        sub = cls.get_subtype(data)
        assert sub != type_name or not cls.__subclasses__(), f"{where}: unknown {type_name} subtype"
        cls = getattr(models, sub)
    obj = cls()
    by_json = {v: k for k, v in obj.attribute_map.items()}
    unknown = set(data) - set(by_json)
    assert not unknown, f"{where}: {cls.__name__} has no field(s) {sorted(unknown)}"
    for key, value in data.items():
        attr = by_json[key]
        try:
            setattr(obj, attr, oci_model(value, obj.swagger_types[attr], f"{where}.{key}", models))
        except ValueError as exc:  # the setter of an enum field in a request model
            raise AssertionError(f"{where}.{key}: {exc}") from None
        set_to = getattr(obj, attr)
        assert not (isinstance(set_to, str) and set_to == "UNKNOWN_ENUM_VALUE"), (
            f"{where}.{key}: {value!r} is not allowed"
        )
    return obj


def test_model_deployment_is_a_valid_create_request_for_the_gpu_byoc_container():
    md = oci_model(json.loads(render(OCI_DIR / "model-deployment.json")), "CreateModelDeploymentDetails")
    config = md.model_deployment_configuration_details
    assert isinstance(config, ds.SingleModelDeploymentConfigurationDetails)
    env = config.environment_configuration_details
    assert isinstance(env, ds.OcirModelDeploymentEnvironmentConfigurationDetails)
    assert env.server_port == env.health_check_port == 8080
    variables = env.environment_variables
    # OCI forwards /predict and /health to these container paths; its health probe sends no
    # token and every call is signed with IAM, so TorchServe's own auth is off here.
    assert variables["MODEL_DEPLOY_PREDICT_ENDPOINT"] == f"/predictions/{variables['TABSERVE_MODEL']}"
    assert variables["MODEL_DEPLOY_HEALTH_ENDPOINT"] == "/ping"
    assert variables["TABSERVE_NO_AUTH"] == "1"
    assert all(len(k) < 32 and re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*[A-Za-z0-9]", k) for k in variables)
    assert len(json.dumps(variables)) < 2048
    assert config.model_configuration_details.instance_configuration.instance_shape_name.startswith("VM.GPU")
    assert env.cmd == ["serve"]


CONDA_DEPLOYMENT = OCI_DIR / "model-deployment-conda.json"


def test_conda_model_deployment_is_a_valid_create_request_for_the_managed_runtime():
    doc = json.loads(render(CONDA_DEPLOYMENT))
    md = oci_model(doc, "CreateModelDeploymentDetails")
    assert missing_required(md) == []
    assert md.display_name == "tabserve-iris-conda"
    config = md.model_deployment_configuration_details
    assert isinstance(config, ds.SingleModelDeploymentConfigurationDetails)
    # DEFAULT is OCI's managed (conda) model server: it runs the artifact's score.py in the
    # conda environment its runtime.yaml names, so there is no image, port or command to give.
    env = config.environment_configuration_details
    assert type(env) is ds.DefaultModelDeploymentEnvironmentConfigurationDetails
    assert env.environment_configuration_type == "DEFAULT"
    raw_env = doc["modelDeploymentConfigurationDetails"]["environmentConfigurationDetails"]
    assert set(raw_env) <= {"environmentConfigurationType", "environmentVariables"}
    assert not hasattr(env, "image") and "OCIR" not in CONDA_DEPLOYMENT.read_text()
    variables = env.environment_variables or {}
    assert set(variables) <= {"WEB_CONCURRENCY"}  # documented as overridable on the managed runtime
    assert all(len(k) < 32 and re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*[A-Za-z0-9]", k) for k in variables)
    assert len(json.dumps(variables)) < 2048
    model = config.model_configuration_details
    instance = model.instance_configuration
    assert instance.instance_shape_name == "VM.Standard.E4.Flex"
    shape = instance.model_deployment_instance_shape_config_details
    assert isinstance(shape, ds.ModelDeploymentInstanceShapeConfigDetails)
    assert (shape.ocpus, shape.memory_in_gbs) == (1, 16)
    assert (
        isinstance(model.scaling_policy, ds.FixedSizeScalingPolicy)
        and model.scaling_policy.instance_count == 1
    )
    assert model.bandwidth_mbps == 10
    logs = md.category_log_details
    assert logs.access.log_group_id == logs.predict.log_group_id and logs.access.log_id != logs.predict.log_id


def test_model_deployments_use_only_their_own_placeholders():
    def names(path: Path) -> set[str]:
        return set(re.findall(r"\$\{(\w+)\}", path.read_text()))

    common = {
        "PROJECT_OCID",
        "COMPARTMENT_OCID",
        "MODEL_OCID",
        "LOG_GROUP_OCID",
        "ACCESS_LOG_OCID",
        "PREDICT_LOG_OCID",
    }
    assert names(CONDA_DEPLOYMENT) == common
    assert names(OCI_DIR / "model-deployment.json") == common | {"OCIR_IMAGE", "OCIR_IMAGE_DIGEST"}


def test_job_scores_from_and_to_object_storage_on_a_gpu_shape():
    job = oci_model(json.loads(render(OCI_DIR / "job.json")), "CreateJobDetails")
    assert isinstance(
        job.job_environment_configuration_details, ds.OcirContainerJobEnvironmentConfigurationDetails
    )
    assert job.job_infrastructure_configuration_details.shape_name.startswith("VM.GPU")
    mounts = {m.destination_directory_name: m for m in job.job_storage_mount_configuration_details_list}
    assert all(isinstance(m, ds.ObjectStorageMountConfigurationDetails) for m in mounts.values())
    cmd = job.job_environment_configuration_details.cmd
    assert cmd[0] == "score"
    assert cmd[1].startswith("/mnt/input/") and cmd[2].startswith("/mnt/output/")
    assert set(mounts) == {"input", "output"}


def k8s_model(doc: dict):
    kinds = {("apps/v1", "Deployment"): "V1Deployment", ("v1", "Service"): "V1Service"}
    klass = kinds[(doc["apiVersion"], doc["kind"])]
    client = ApiClient()
    obj = client._ApiClient__deserialize(doc, klass)
    # Round trip: a misspelt or misplaced field is dropped by the client and shows up here.
    assert client.sanitize_for_serialization(obj) == doc
    return obj


@pytest.fixture(scope="module")
def k8s_docs():
    docs = {}
    for path in sorted((OCI_DIR / "oke").glob("*.yaml")):
        for doc in yaml.safe_load_all(render(path)):
            docs[doc["kind"]] = k8s_model(doc)
    return docs


def test_oke_deployment_asks_for_a_gpu_and_probes_torchserve(k8s_docs):
    dep = k8s_docs["Deployment"]
    container = dep.spec.template.spec.containers[0]
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    for probe in (container.readiness_probe, container.liveness_probe, container.startup_probe):
        assert probe._exec.command == ["tabserve", "health"]
    assert dep.spec.template.spec.security_context.run_as_non_root is True
    assert {p.container_port for p in container.ports} == {8080, 8082}


def test_oke_service_selects_the_deployment_pods(k8s_docs):
    svc, dep = k8s_docs["Service"], k8s_docs["Deployment"]
    assert svc.spec.selector == dep.spec.template.metadata.labels
    names = {p.name for p in dep.spec.template.spec.containers[0].ports}
    assert {p.target_port for p in svc.spec.ports} <= names


def test_the_checks_catch_typos_and_unknown_values():
    doc = json.loads(render(OCI_DIR / "job.json"))
    doc["jobInfrastructureConfigurationDetails"]["shapeNmae"] = "VM.GPU.A10.1"
    with pytest.raises(AssertionError, match="has no field"):
        oci_model(doc, "CreateJobDetails")
    doc = json.loads(render(OCI_DIR / "model-deployment.json"))
    doc["modelDeploymentConfigurationDetails"]["modelConfigurationDetails"]["scalingPolicy"]["policyType"] = (
        "HUGE"
    )
    with pytest.raises(AssertionError):
        oci_model(doc, "CreateModelDeploymentDetails")
    for key, value, match in [
        ("memoryInGbs", 16, "has no field"),  # in the shape config; the API spells it memoryInGBs
        ("environmentConfigurationType", "CONDA", "unknown .* subtype"),  # the conda runtime is DEFAULT
        ("image", "iad.ocir.io/mytenancy/tabserve:gpu", "has no field"),  # DEFAULT takes no image
    ]:
        doc = json.loads(render(CONDA_DEPLOYMENT))
        config = doc["modelDeploymentConfigurationDetails"]
        if key == "memoryInGbs":
            target = config["modelConfigurationDetails"]["instanceConfiguration"]
            target = target["modelDeploymentInstanceShapeConfigDetails"]
        else:
            target = config["environmentConfigurationDetails"]
        target[key] = value
        with pytest.raises(AssertionError, match=match):
            oci_model(doc, "CreateModelDeploymentDetails")
    dep = yaml.safe_load(render(OCI_DIR / "oke" / "deployment.yaml"))
    dep["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(AssertionError):
        k8s_model(dep)
    for edit, match in [
        (lambda d: d["driverShapeConfig"].update(ocpu=2), "has no field"),
        (lambda d: d["parameters"][0].update(default="x"), "has no field"),
        (lambda d: d.update(language="PYTHON3"), "language"),
        (lambda d: d.update(numExecutors="4"), "expected int"),
    ]:
        doc = dataflow_doc()
        edit(doc)
        with pytest.raises(AssertionError, match=match):
            oci_model(doc, "CreateApplicationDetails", models=df)
    doc = dataflow_doc()
    del doc["sparkVersion"]
    assert missing_required(oci_model(doc, "CreateApplicationDetails", models=df)) == ["$.sparkVersion"]


DATAFLOW_APP = OCI_DIR / "dataflow-application.json"


def dataflow_doc() -> dict:
    """The Data Flow application's request body, its own `${name}` parameters left in place."""
    keep = frozenset(p["name"] for p in json.loads(DATAFLOW_APP.read_text()).get("parameters", []))
    return json.loads(render(DATAFLOW_APP, keep))


def missing_required(obj, where: str = "$") -> list[str]:
    """The fields the SDK marks **[Required]** that `obj` (and the models in it) leaves unset."""
    missing = []
    for attr in obj.swagger_types:
        value, key = getattr(obj, attr), f"{where}.{obj.attribute_map[attr]}"
        if value is None and "**[Required]**" in (getattr(type(obj), attr).__doc__ or ""):
            missing.append(key)
        for i, v in enumerate(value if isinstance(value, list) else [value]):
            if hasattr(v, "swagger_types"):
                missing += missing_required(v, f"{key}[{i}]" if isinstance(value, list) else key)
    return missing


def dataflow_argv(app) -> list[str]:
    """The application's arguments as a run without overrides gets them: each `${name}`
    replaced by its parameter's value, as Data Flow does."""
    values = {p.name: p.value for p in app.parameters}
    return [re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], a) for a in app.arguments]


def test_dataflow_application_is_a_valid_create_request_for_the_spark_job():
    app = oci_model(dataflow_doc(), "CreateApplicationDetails", models=df)
    assert missing_required(app) == []
    assert app.language == "PYTHON" and app.type == "BATCH"
    assert tuple(int(n) for n in app.spark_version.split(".")[:2]) >= (3, 5)  # pyproject's pyspark>=3.5
    assert app.file_uri.startswith("oci://") and app.file_uri.endswith("/spark_job.py")
    # The driver finds batch/results.py and batch/spark_tasks.py in the installed tabserve: the
    # dependency archive's Python packages (tabserve, torch, numpy, pyarrow).
    assert app.archive_uri.startswith("oci://") and app.archive_uri.endswith("/archive.zip")
    assert app.logs_bucket_uri.startswith("oci://")
    for shape, config in [
        (app.driver_shape, app.driver_shape_config),
        (app.executor_shape, app.executor_shape_config),
    ]:
        assert shape.endswith(".Flex") and config.ocpus > 0 and config.memory_in_gbs > 0
    assert app.num_executors >= 1


def test_dataflow_parameters_fill_every_placeholder_in_the_arguments():
    app = oci_model(dataflow_doc(), "CreateApplicationDetails", models=df)
    names = [p.name for p in app.parameters]
    assert len(set(names)) == len(names) and all(re.fullmatch(r"\w+", n) for n in names)
    used = {m for a in app.arguments for m in re.findall(r"\$\{(\w+)\}", a)}
    # Data Flow answers 400 for an undeclared one; a declared one no argument uses is a mistake.
    assert used == set(names)
    assert all(p.value.startswith("oci://") for p in app.parameters)


def test_dataflow_arguments_name_the_archive_that_spark_files_ships():
    app = oci_model(dataflow_doc(), "CreateApplicationDetails", models=df)
    argv = dataflow_argv(app)
    archive = argv[argv.index("--archive") + 1]
    # spark.files lands in the driver's working directory (flat), where the job opens it.
    shipped = {uri.rsplit("/", 1)[-1]: uri for uri in app.configuration["spark.files"].split(",")}
    assert "/" not in archive and archive in shipped
    assert shipped[archive].startswith("oci://") and archive.endswith(".mar")


def test_dataflow_arguments_parse_with_the_spark_jobs_own_parser():
    from tabserve.spark_job import parse_args

    app = oci_model(dataflow_doc(), "CreateApplicationDetails", models=df)
    args = parse_args(dataflow_argv(app))
    assert args.archive == "iris.mar"
    assert args.input == f"oci://tabserve-input@mytenancy/{PLACEHOLDERS['INPUT_OBJECT']}"
    assert args.output == "oci://tabserve-output@mytenancy/scored.parquet"
    assert args.format == "parquet" and args.partitions == 32
    assert args.master is None  # Data Flow sets the master; the job must not
