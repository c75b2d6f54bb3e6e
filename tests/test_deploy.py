"""deploy/ files checked against the real tools' own models: the OCI SDK's data science
models for the Model Deployment and the Job, the Kubernetes client's models for OKE."""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

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
}


def render(path: Path) -> str:
    text = path.read_text()
    names = set(re.findall(r"\$\{(\w+)\}", text))
    assert names <= set(PLACEHOLDERS), f"undocumented placeholders {names - set(PLACEHOLDERS)}"
    return string.Template(text).substitute(PLACEHOLDERS)


def oci_model(data, type_name: str, where: str = "$"):
    """Build an OCI SDK model from REST JSON, refusing unknown keys, wrong types and enum
    values the SDK does not know: a typo in the file fails here, not in the tenancy."""
    if type_name.startswith("list["):
        assert isinstance(data, list), f"{where}: expected a list"
        return [oci_model(v, type_name[5:-1], f"{where}[{i}]") for i, v in enumerate(data)]
    if type_name.startswith("dict("):
        assert isinstance(data, dict), f"{where}: expected an object"
        return data
    if type_name in ("str", "int", "float", "bool", "object"):
        py = {"str": str, "int": int, "float": (int, float), "bool": bool, "object": object}[type_name]
        assert isinstance(data, py), f"{where}: expected {type_name}, got {data!r}"
        return data
    cls = getattr(ds, type_name)
    assert isinstance(data, dict), f"{where}: expected an object for {type_name}"
    if hasattr(cls, "get_subtype"):
        sub = cls.get_subtype(data)
        assert sub != type_name or not cls.__subclasses__(), f"{where}: unknown {type_name} subtype"
        cls = getattr(ds, sub)
    obj = cls()
    by_json = {v: k for k, v in obj.attribute_map.items()}
    unknown = set(data) - set(by_json)
    assert not unknown, f"{where}: {cls.__name__} has no field(s) {sorted(unknown)}"
    for key, value in data.items():
        attr = by_json[key]
        setattr(obj, attr, oci_model(value, obj.swagger_types[attr], f"{where}.{key}"))
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
    dep = yaml.safe_load(render(OCI_DIR / "oke" / "deployment.yaml"))
    dep["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(AssertionError):
        k8s_model(dep)
