"""deploy/kubernetes: every manifest validates against the Kubernetes API schemas (offline, from
kubernetes-validate, strict: unknown fields are errors), the kustomization ties them all
together, the ConfigMap's config passes `lbcdn check-config`, and the pieces agree with each
other (ports, probes, selectors, the drain timing, the image's user) and with the Dockerfile.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

import lbcdn
from tests.deploy.helpers import (DEPLOY, REPO, check_config, commented_block,
                                  variables_without_default)

K8S = DEPLOY / "kubernetes"
# The oldest Kubernetes the manifests promise to work on (mixed UDP/TCP LoadBalancer Services
# are GA since 1.26, autoscaling/v2 since 1.23) and the newest the validator knows.
VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def load_all() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


DOCS = load_all()


def find(kind: str, name: str) -> dict[str, Any]:
    found = [d for _, d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def validate(doc: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def lbcdn_container() -> dict[str, Any]:
    containers = find("Deployment", "lbcdn")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["lbcdn"]
    return dict(containers[0])


def container_ports() -> dict[str, tuple[int, str]]:
    return {p["name"]: (p["containerPort"], p.get("protocol", "TCP"))
            for p in lbcdn_container()["ports"]}


def config_text() -> str:
    return str(find("ConfigMap", "lbcdn-config")["data"]["config.yaml"])


def config() -> dict[str, Any]:
    data = yaml.safe_load(config_text())
    assert isinstance(data, dict)
    return data


# -- schema validation -------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("doc", [d for _, d in DOCS],
                         ids=[f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in DOCS])
def test_manifest_validates_against_the_kubernetes_schema(doc: dict[str, Any],
                                                          version: str) -> None:
    validate(doc, version)


def test_the_expected_objects_exist() -> None:
    kinds = sorted((d["kind"], d["metadata"]["name"]) for _, d in DOCS)
    assert kinds == sorted([
        ("ConfigMap", "lbcdn-config"), ("Deployment", "lbcdn"), ("Service", "lbcdn"),
        ("Service", "lbcdn-dns"), ("Service", "lbcdn-peers"), ("Service", "app-backends"),
        ("Deployment", "app-backends"), ("HorizontalPodAutoscaler", "lbcdn"),
        ("PodDisruptionBudget", "lbcdn")])


def _mutations() -> list[tuple[str, dict[str, Any], str]]:
    """(what, broken document, JSON path the error must name)."""
    out = []
    dep = copy.deepcopy(find("Deployment", "lbcdn"))
    dep["spec"]["replicas"] = "2"
    out.append(("string replicas", dep, "spec.replicas"))
    dep = copy.deepcopy(find("Deployment", "lbcdn"))
    c = dep["spec"]["template"]["spec"]["containers"][0]
    c["livenessProbe"]["httpGet"]["port"] = 9901.5
    out.append(("fractional probe port", dep, "livenessProbe"))
    dep = copy.deepcopy(find("Deployment", "lbcdn"))
    dep["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    out.append(("misspelt field (strict)", dep, "containers"))
    hpa = copy.deepcopy(find("HorizontalPodAutoscaler", "lbcdn"))
    hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] = "70%"
    out.append(("percent string", hpa, "averageUtilization"))
    svc = copy.deepcopy(find("Service", "lbcdn-dns"))
    del svc["spec"]["ports"][0]["port"]
    out.append(("missing port", svc, "spec.ports.0"))
    return out


@pytest.mark.parametrize("what,doc,where", _mutations(), ids=[m[0] for m in _mutations()])
def test_a_broken_manifest_is_rejected(what: str, doc: dict[str, Any], where: str) -> None:
    with pytest.raises(kubernetes_validate.ValidationError) as err:
        validate(doc, VERSIONS[-1])
    path = ".".join(str(p) for p in err.value.path)
    assert where in f"{path} {err.value.message}", (what, path, err.value.message)


def test_kustomization_lists_every_manifest_once() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kust["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kust["kind"] == "Kustomization"
    resources = kust["resources"]
    assert len(resources) == len(set(resources))
    assert sorted(resources) == [p.name for p in MANIFESTS]
    names = [(d["kind"], d["metadata"]["name"]) for _, d in DOCS]
    assert len(names) == len(set(names))


def test_image_tag_is_the_package_version() -> None:
    """One image, tagged by kustomize with the version being deployed."""
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kust["images"] == [{"name": "lbcdn", "newTag": lbcdn.__version__}]
    for _, doc in DOCS:
        if doc["kind"] == "Deployment":
            for c in doc["spec"]["template"]["spec"]["containers"]:
                assert c["image"] == "lbcdn", doc["metadata"]["name"]


# -- the config in the ConfigMap ---------------------------------------------------------


def test_configmap_config_passes_check_config(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(config_text())
    env = {name: "token-from-the-secret" for name in variables_without_default(config_text())}
    result = check_config(path, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{path}: ok"


def test_configmap_config_fails_without_the_deployment_env(tmp_path: Path) -> None:
    """The check above is not vacuous: without the Secret's variable the config is refused."""
    path = tmp_path / "config.yaml"
    path.write_text(config_text())
    result = check_config(path, {})
    assert result.returncode == 1
    assert "LBCDN_ADMIN_TOKEN is not set" in result.stderr


def test_every_required_variable_comes_from_the_deployment() -> None:
    needed = variables_without_default(config_text())
    assert needed == {"LBCDN_ADMIN_TOKEN"}
    env = {e["name"]: e for e in lbcdn_container()["env"]}
    for name in needed:
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "lbcdn-admin", "key": "token"}  # a secret, not a literal


def test_config_is_mounted_where_the_container_reads_it() -> None:
    pod = find("Deployment", "lbcdn")["spec"]["template"]["spec"]
    c = lbcdn_container()
    assert c["args"] == ["serve", "--config", "/etc/lbcdn/config.yaml"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["config"]["mountPath"] == "/etc/lbcdn"
    assert mounts["config"].get("readOnly") is True
    assert "subPath" not in mounts["config"]  # a subPath mount never sees ConfigMap updates
    assert volumes["config"]["configMap"] == {
        "name": "lbcdn-config", "items": [{"key": "config.yaml", "path": "config.yaml"}]}
    # State and /tmp are the only writable places (the root filesystem is read-only).
    assert mounts["state"]["mountPath"] == "/var/lib/lbcdn"
    assert "emptyDir" in volumes["state"]
    assert mounts["tmp"]["mountPath"] == "/tmp"
    assert "emptyDir" in volumes["tmp"]


# -- ports, probes, Services -------------------------------------------------------------


def test_container_ports_match_the_config() -> None:
    cfg = config()
    ports = container_ports()
    [listener] = cfg["listeners"]
    assert listener["address"] == "0.0.0.0"  # reachable on the pod IP
    assert ports["http"] == (listener["port"], "TCP")
    assert cfg["admin"]["address"] == "0.0.0.0"  # the kubelet probes the pod IP
    assert ports["admin"] == (cfg["admin"]["port"], "TCP") == (9901, "TCP")
    assert ports["dns-udp"] == (5353, "UDP")
    assert ports["dns-tcp"] == (5353, "TCP")


def test_dns_listens_on_the_container_port() -> None:
    from lbcdn.dns.config import load_dns_config
    dns = load_dns_config(config()["dns"])
    assert [(x.address, x.port) for x in dns.listeners] == [("0.0.0.0", 5353)]
    assert [z.name for z in dns.zones] == ["example.internal"]


def test_admin_calls_fan_out_to_the_peers_service() -> None:
    assert config()["admin"]["peers"] == {"dns_name": "lbcdn-peers"}
    assert find("Service", "lbcdn-peers")["spec"]["clusterIP"] == "None"


def test_probes_ask_admin_healthz() -> None:
    c = lbcdn_container()
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "admin"}, probe


def test_services_route_to_named_container_ports() -> None:
    ports = container_ports()
    labels = find("Deployment", "lbcdn")["spec"]["template"]["metadata"]["labels"]
    for name in ("lbcdn", "lbcdn-dns", "lbcdn-peers"):
        spec = find("Service", name)["spec"]
        assert spec["selector"].items() <= labels.items(), name
        for p in spec["ports"]:
            number, protocol = ports[p["targetPort"]]
            assert p.get("protocol", "TCP") == protocol, (name, p)
    web = {p["name"]: (p["port"], ports[p["targetPort"]][0])
           for p in find("Service", "lbcdn")["spec"]["ports"]}
    assert web == {"http": (80, 8080), "admin": (9901, 9901)}
    dns = sorted((p["port"], p["protocol"], ports[p["targetPort"]])
                 for p in find("Service", "lbcdn-dns")["spec"]["ports"])
    assert dns == [(53, "TCP", (5353, "TCP")), (53, "UDP", (5353, "UDP"))]


def test_peers_service_is_headless_and_includes_starting_pods() -> None:
    spec = find("Service", "lbcdn-peers")["spec"]
    assert spec["clusterIP"] == "None"
    assert spec["publishNotReadyAddresses"] is True


def test_pool_targets_the_headless_app_backends_service() -> None:
    svc = find("Service", "app-backends")["spec"]
    assert svc["clusterIP"] == "None"
    [port] = svc["ports"]
    app = find("Deployment", "app-backends")["spec"]["template"]
    assert svc["selector"].items() <= app["metadata"]["labels"].items()
    [c] = app["spec"]["containers"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]}[port["targetPort"]] == 8000
    assert c["args"][c["args"].index("--port") + 1] == "8000"
    assert "targets" not in config()["pools"]["app"]
    discovery = config()["pools"]["app"]["discovery"]
    assert discovery["dns_name"] == "app-backends"
    assert discovery["port"] == port["port"]
    assert discovery["interval_s"] > 0


def test_hpa_and_pdb_point_at_the_deployment() -> None:
    dep = find("Deployment", "lbcdn")
    hpa = find("HorizontalPodAutoscaler", "lbcdn")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": "lbcdn"}
    assert hpa["minReplicas"] == dep["spec"]["replicas"] == 2
    assert hpa["maxReplicas"] > hpa["minReplicas"]
    [metric] = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    # Utilization is a share of the request, so there must be one.
    assert lbcdn_container()["resources"]["requests"]["cpu"]
    pdb = find("PodDisruptionBudget", "lbcdn")["spec"]
    assert pdb["selector"] == dep["spec"]["selector"]


# -- shutdown timing ---------------------------------------------------------------------


def test_grace_period_covers_prestop_and_the_whole_drain() -> None:
    pod = find("Deployment", "lbcdn")["spec"]["template"]["spec"]
    c = lbcdn_container()
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    sleep_s = float(command[1])
    assert 2 <= sleep_s <= 15  # long enough for endpoints to update, short enough to matter
    drain_s = float(config()["shutdown"]["drain_timeout_s"])
    grace_s = pod["terminationGracePeriodSeconds"]
    assert grace_s > sleep_s + drain_s
    # /healthz answers 503 while draining: liveness must not kill a draining pod first.
    live = c["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] > sleep_s + drain_s
    # A rollout never goes below the current capacity.
    assert find("Deployment", "lbcdn")["spec"]["strategy"]["rollingUpdate"][
        "maxUnavailable"] == 0


# -- security ----------------------------------------------------------------------------


def dockerfile_uid() -> int:
    text = (REPO / "Dockerfile").read_text()
    uid = re.search(r"useradd [^\n]*--uid (\d+)", text)
    user = re.search(r"^USER (\d+):(\d+)$", text, re.M)
    assert uid and user, "the Dockerfile must create lbcdn with a fixed uid and USER uid:gid"
    assert user.group(1) == uid.group(1)
    return int(uid.group(1))


def test_pods_run_as_the_images_non_root_user_with_a_read_only_root() -> None:
    uid = dockerfile_uid()
    assert uid != 0
    for name in ("lbcdn", "app-backends"):
        pod = find("Deployment", name)["spec"]["template"]["spec"]
        sec = pod["securityContext"]
        assert sec["runAsNonRoot"] is True
        assert sec["runAsUser"] == uid
        assert sec["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        assert pod["enableServiceLinks"] is False  # no LBCDN_PORT & co. injected
        for c in pod["containers"]:
            csec = c["securityContext"]
            assert csec["readOnlyRootFilesystem"] is True
            assert csec["allowPrivilegeEscalation"] is False
            assert csec["capabilities"] == {"drop": ["ALL"]}
            for kind in ("requests", "limits"):
                assert set(c["resources"][kind]) == {"cpu", "memory"}, (name, kind)
