"""deploy/ checked offline: YAML lint, Kubernetes schemas, cross-references, Dockerfile.

No cluster and no Docker engine here: plain Kubernetes objects are validated against the
official schemas bundled in `kubernetes-validate` (strict: unknown fields fail); custom
resources (Prometheus Operator, KServe) get structural checks; every command line written in a
manifest is parsed by our own `smoothexplain serve` parser.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dockerfile
import kubernetes_validate
import pytest
import yaml
from yamllint import linter
from yamllint.cli import find_files_recursively
from yamllint.config import YamlLintConfig

from smoothexplain.client.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
K8S, KSERVE = REPO / "deploy" / "k8s", REPO / "deploy" / "kserve"
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
CUSTOM_GROUPS = ("monitoring.coreos.com/", "serving.kserve.io/", "kustomize.config.k8s.io/")
KUBERNETES = "1.30.0"  # the oldest release we claim; later ones accept these objects too


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _manifests() -> dict[str, dict[str, Any]]:
    """kind/name → object, for every Kubernetes object kustomize applies (plus KServe's)."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    objects = [d for name in kustomization["resources"] for d in _documents(K8S / name)]
    objects += _documents(K8S / "secret-token.yaml")  # created by hand, shape documented here
    objects += [_generated_configmap(g) for g in kustomization["configMapGenerator"]]
    objects += [d for path in sorted(KSERVE.glob("*.yaml")) for d in _documents(path)]
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in objects}


def _generated_configmap(generator: dict[str, Any]) -> dict[str, Any]:
    """The ConfigMap kustomize's configMapGenerator makes (without its hash suffix)."""
    data = {Path(f).name: (K8S / f).read_text() for f in generator["files"]}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": generator["name"]},
        "data": data,
    }


MANIFESTS = _manifests()


def _lint(config: YamlLintConfig, path: Path) -> list[str]:
    problems = linter.run(path.read_text(), config, str(path))
    return [f"{path}:{p.line}:{p.column} {p.message}" for p in problems]


def test_every_deploy_yaml_file_passes_yamllint(tmp_path: Path) -> None:
    config = YamlLintConfig(file=str(REPO / ".yamllint.yaml"))
    files = [Path(f) for f in find_files_recursively([str(REPO / "deploy")], config)]
    names = {str(f.relative_to(REPO)) for f in files}
    assert {"deploy/k8s/deployment.yaml", "deploy/prometheus/alerts.yml"} <= names
    assert {"deploy/kserve/servingruntime.yaml", "deploy/model-config.yaml"} <= names
    assert [problem for f in files for problem in _lint(config, f)] == []
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1\na: 2\nb:   [1,2]\n")
    assert len(_lint(config, bad)) >= 2  # duplicated key, bracket spacing: the linter is live


@pytest.mark.parametrize(
    "key", [k for k, o in MANIFESTS.items() if not o["apiVersion"].startswith(CUSTOM_GROUPS)]
)
def test_plain_kubernetes_objects_match_the_official_schema(key: str) -> None:
    kubernetes_validate.validate(MANIFESTS[key], KUBERNETES, strict=True)


def test_a_schema_violation_is_caught() -> None:
    broken = yaml.safe_load(yaml.safe_dump(MANIFESTS["Service/smoothexplain"]))
    broken["spec"]["ports"][0]["portt"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def _pod() -> dict[str, Any]:
    pod: dict[str, Any] = MANIFESTS["Deployment/smoothexplain"]["spec"]["template"]
    return pod


def _container_ports(pod: dict[str, Any]) -> set[str | int]:
    ports: set[str | int] = set()
    for container in pod["spec"]["containers"]:
        for port in container.get("ports", []):
            ports |= {port["name"], port["containerPort"]}
    return ports


def test_service_hpa_monitor_and_policy_point_at_the_deployment() -> None:
    pod = _pod()
    labels = pod["metadata"]["labels"]
    deployment = MANIFESTS["Deployment/smoothexplain"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = MANIFESTS["Service/smoothexplain"]
    assert service["spec"]["selector"].items() <= labels.items()
    ports = _container_ports(pod)
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    monitor = MANIFESTS["PodMonitor/smoothexplain"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} == {"metrics", "ts-metrics"}
    policy = MANIFESTS["NetworkPolicy/smoothexplain"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    policy_ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert policy_ports == {"https", "metrics", "ts-metrics"} and policy_ports <= ports
    hpa = MANIFESTS["HorizontalPodAutoscaler/smoothexplain"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    adapter = yaml.safe_load((K8S / "prometheus-adapter-rules.yaml").read_text())
    assert metric in {rule["name"]["as"] for rule in adapter["rules"]["custom"]}


def test_pods_are_locked_down_and_get_a_gpu() -> None:
    spec = _pod()["spec"]
    assert spec["securityContext"]["runAsNonRoot"] and spec["automountServiceAccountToken"] is False
    for container in spec["containers"]:
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
        assert security["capabilities"]["drop"] == ["ALL"]
        assert "memory" in container["resources"]["limits"], container["name"]
    server = spec["containers"][0]["resources"]
    assert server["requests"]["nvidia.com/gpu"] == server["limits"]["nvidia.com/gpu"] == "1"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = spec["containers"][0][probe]["httpGet"]
        assert get["port"] == "metrics" and get["path"] in ("/readyz", "/healthz")


def test_secrets_and_config_maps_referenced_exist() -> None:
    spec = _pod()["spec"]
    for container in spec["containers"]:
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                secret = MANIFESTS[f"Secret/{ref['name']}"]
                assert ref["key"] in secret["stringData"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    config_map = MANIFESTS[f"ConfigMap/{volumes['gateway-config']['configMap']['name']}"]
    mounts = [m for c in spec["containers"] for m in c["volumeMounts"]]
    assert {m["subPath"] for m in mounts if m["name"] == "gateway-config"} == set(
        config_map["data"]
    )
    assert {m["name"] for m in mounts} == set(volumes)
    assert volumes["tls"]["secret"]["secretName"] == "smoothexplain-tls"  # made by the operator


def test_the_gateway_template_substitutes_only_the_token() -> None:
    template = (K8S / "gateway" / "default.conf.template").read_text()
    assert set(re.findall(r"\$\{(\w+)\}", template)) == {"SMOOTHEXPLAIN_TOKEN"}
    gateway = next(c for c in _pod()["spec"]["containers"] if c["name"] == "gateway")
    env = {e["name"]: e for e in gateway["env"]}
    assert env["NGINX_ENVSUBST_FILTER"]["value"] == "SMOOTHEXPLAIN_"


def _serve_args(args: list[str]) -> Any:
    return build_parser().parse_args(["serve", *args])


def test_every_serve_command_line_is_one_serve_accepts() -> None:
    deployment = _serve_args(_pod()["spec"]["containers"][0]["args"])
    assert deployment.host == "127.0.0.1" and deployment.token_auth is False
    assert deployment.metrics_host == "0.0.0.0" and deployment.exporter_port == 8083
    runtime = MANIFESTS["ServingRuntime/smoothexplain"]["spec"]["containers"][0]["args"]
    kserve = _serve_args([a.replace("{{.Name}}", "shapes") for a in runtime])
    assert kserve.models == ["shapes=shapes.mar"] and kserve.inference_port == 8080
    commands = {c.cmd: c for c in dockerfile.parse_file(str(DOCKERFILE))}
    entrypoint, cmd = commands["ENTRYPOINT"].value, commands["CMD"].value
    assert entrypoint[:2] == ("smoothexplain", "serve")
    docker = _serve_args([*entrypoint[2:], *cmd])
    assert docker.token_auth is True and docker.host == "127.0.0.1"  # secure by default


def test_prometheus_rule_is_alerts_yml() -> None:
    rule = MANIFESTS["PrometheusRule/smoothexplain"]
    alerts = yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"] == alerts


def test_kserve_uses_our_runtime_and_image() -> None:
    runtime = MANIFESTS["ServingRuntime/smoothexplain"]
    service = MANIFESTS["InferenceService/shapes"]
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    (container,) = runtime["spec"]["containers"]
    assert container["image"] == _pod()["spec"]["containers"][0]["image"]
    assert not container["image"].startswith("pytorch/torchserve")
    assert runtime["metadata"]["annotations"]["prometheus.kserve.io/port"] == "8083"


def _copies() -> Iterator[str]:
    for command in dockerfile.parse_file(str(DOCKERFILE)):
        if command.cmd == "COPY" and not any(f.startswith("--from") for f in command.flags):
            yield from command.value[:-1]


def test_dockerfile_runs_unprivileged_with_a_healthcheck() -> None:
    commands = dockerfile.parse_file(str(DOCKERFILE))
    stages = [c for c in commands if c.cmd == "FROM"]
    final = commands[commands.index(stages[-1]) :]
    users = [c.value[0] for c in final if c.cmd == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    (health,) = [c for c in final if c.cmd == "HEALTHCHECK"]
    assert "/healthz" in " ".join(health.value)
    ignored = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().split()
    for source in _copies():
        assert f"!{source}" in ignored, source  # the build context sends it
        if source != "model_store/":  # made by `make model`
            assert (REPO / source).exists(), source
    run = " ".join(" ".join(c.value) for c in commands if c.cmd == "RUN")
    assert "gen_protos.py" in run and shlex.quote(".[serve]") in run
