"""deploy/ manifests and the Helm chart's values, validated offline against their schemas."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from cluster.config import ClusterConfig

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = ROOT / "helm" / "prism"
CRD = ROOT.parent / "shared" / "k8s" / "ray.io_rayservices.yaml"


def load(path: Path):
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", sorted((DEPLOY / "k8s").glob("*.yaml")), ids=lambda p: p.name)
def test_plain_manifests_validate_against_kubernetes_schemas(path):
    import kubernetes_validate

    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_a_broken_manifest_is_rejected():
    import kubernetes_validate

    bad = load(DEPLOY / "k8s" / "service.yaml")
    bad["spec"]["ports"][0]["port"] = "eighty"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, kubernetes_validate.latest_version(), strict=True)


def crd_schema() -> dict:
    if not CRD.exists():
        pytest.skip(f"KubeRay RayService CRD not present at {CRD}")
    crd = load(CRD)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return version["schema"]["openAPIV3Schema"]


@functools.cache
def crd_validator():
    """The CRD's validator, built once: `jsonschema.validate` checks the (large) schema against its meta-schema on
    every call, 10-35 s each on this machine, while validating a RayService against it takes milliseconds."""
    schema = crd_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def validate_crd(doc: dict) -> None:
    crd_validator().validate(doc)


def test_rayservice_validates_against_the_kuberay_crd():
    svc = load(DEPLOY / "rayservice.yaml")
    validate_crd(svc)
    broken = load(DEPLOY / "rayservice.yaml")
    broken["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        validate_crd(broken)


def test_rayservice_serves_exactly_the_serve_config_and_it_is_a_valid_prism_config():
    svc = load(DEPLOY / "rayservice.yaml")
    serve_config = load(DEPLOY / "serve-config.yaml")
    assert yaml.safe_load(svc["spec"]["serveConfigV2"]) == serve_config
    app = serve_config["applications"][0]
    assert app["import_path"] == "router.serving.app:build_app"
    cfg = ClusterConfig.model_validate(app["args"]["config"])
    assert cfg.milvus.mode == "server" and cfg.elasticsearch.mode == "external"
    head = svc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["readinessProbe"]["httpGet"]["path"] == "/health"
    assert head["envFrom"][0]["secretRef"]["name"] == "prism-credentials"
    gpu = svc["spec"]["rayClusterConfig"]["workerGroupSpecs"][1]
    assert gpu["rayStartParams"]["num-gpus"] == "1" and gpu["replicas"] == 0


def values_schema() -> dict:
    return json.loads((CHART / "values.schema.json").read_text())


@pytest.mark.parametrize("path", [CHART / "values.yaml", *sorted((CHART / "examples").glob("*.yaml"))],
                         ids=lambda p: p.name)
def test_values_files_validate(path):
    values = load(CHART / "values.yaml")
    override = load(path)
    values.update(override)  # top-level merge is enough for the schema's per-section checks
    jsonschema.validate(values, values_schema())


@pytest.mark.parametrize("patch", [
    {"gpu": {"enabled": "yes"}},
    {"gpu": {"enabled": True, "indexType": "HNSW"}},
    {"workers": {"replicas": -1}},
    {"milvus": {"bundled": False, "uri": "milvus:19530"}},
    {"prism": {"collections": [{"name": "bad-name", "spaces": {"t": {"dim": 4}}}]}},
    {"prism": {"collections": [{"name": "ok", "spaces": {"t": {"dim": 0}}}]}},
    {"prism": {"collections": [{"name": "ok", "spaces": {"t": {"dim": 4, "indexType": "DISKANN"}}}]}},
    {"service": {"port": 70000}},
    {"auth": {"keys": [{"id": "k1", "role": "root", "salt": "s", "hash": "h"}]}},
    {"auth": {"metrics": "public"}},
    {"auth": {"rateLimits": {"readPerS": 0}}},
    {"head": {"resources": {"requests": {"cpu": "lots"}}}},
    {"unknownKey": 1},
])
def test_bad_values_are_rejected(patch):
    values = load(CHART / "values.yaml")
    values.update(patch)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(values, values_schema())


def test_dockerfile_is_multistage_non_root_with_healthcheck():
    text = (DEPLOY / "Dockerfile").read_text()
    assert "FROM python:${PYTHON_VERSION}-slim AS build" in text
    assert "AS runtime-cpu" in text and "AS runtime-cuda" in text and "FROM runtime-${VARIANT} AS final" in text
    assert "USER prism" in text and "useradd --create-home --uid 10001 prism" in text
    assert "HEALTHCHECK" in text and "/health" in text
    assert "torch==2.13.0" in text
    assert 'pip wheel --wheel-dir /wheels ".[s3]"' in text and '"prism-search[s3]"' in text  # S3 snapshots work


KEYED = {"auth": {"existingSecret": "prism-api-keys"}}  # the chart refuses to render without API keys


def render(values: dict | None = None) -> list[dict]:
    """The chart rendered offline by Helm v4's own engine (helm-python-sdk); its Milvus / ECK dependency charts
    cannot be fetched offline, so what they would add is not rendered here."""
    from helm_python import Chart

    out = Chart.load(str(CHART)).render(values=KEYED if values is None else values, name="prism",
                                        namespace="search")
    return [d for path, text in out.items() if path.endswith(".yaml") for d in yaml.safe_load_all(text) if d]


def serve_config(docs: list[dict]) -> ClusterConfig:
    svc = next(d for d in docs if d.get("kind") == "RayService")
    validate_crd(svc)
    return ClusterConfig.model_validate(yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"][0]["args"]["config"])


def test_helm_lint_passes():
    from helm_python import lint

    for path in [None, *sorted((CHART / "examples").glob("*.yaml"))]:
        result = lint(str(CHART), load(path) if path else KEYED)
        errors = [m for m in result.get("messages") or [] if m.get("severity") == 3] + (result.get("errors") or [])
        # Only the absent dependency charts may be reported: they cannot be fetched offline.
        assert all("charts/ directory" in str(e) or "dependenc" in str(e) for e in errors), (path, errors)


@pytest.mark.parametrize("path", [None, *sorted((CHART / "examples").glob("*.yaml"))],
                         ids=lambda p: p.name if p else "defaults")
def test_every_values_file_renders_to_valid_manifests(path):
    docs = render(load(path) if path else None)
    cfg = serve_config(docs)
    kinds = {d["kind"] for d in docs}
    assert {"RayService", "Service", "ConfigMap"} <= kinds
    svc = next(d for d in docs if d.get("kind") == "RayService")
    groups = svc["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    if cfg.milvus.gpu:  # gpu.enabled: encoders get GPUs, shard actors none, indexes are GPU types
        assert cfg.placement.encoder_num_gpus > 0
        assert any(g["groupName"] == "gpu" for g in groups)
        assert all(s.index.type in ("GPU_CAGRA", "GPU_IVF_PQ") for c in cfg.collections for s in c.spaces.values())
    else:
        assert cfg.placement.encoder_num_gpus == 0 and not any(g["groupName"] == "gpu" for g in groups)


def test_gpu_with_a_bundled_milvus_needs_its_gpu_image_and_gpu_nodes():
    from helm_python.errors import HelmError

    good = load(CHART / "examples" / "values-gpu-bundled.yaml")
    assert serve_config(render(good)).milvus.gpu is True
    no_image = {**good, "milvus": {**good["milvus"], "image": {"all": {"tag": "v2.4.17"}}}}
    with pytest.raises(HelmError, match="milvus.image.all.tag to a -gpu image"):
        render(no_image)
    no_gpu_nodes = {**good, "milvus": {k: v for k, v in good["milvus"].items() if k != "indexNode"}}
    with pytest.raises(HelmError, match="milvus.indexNode.resources.limits needs nvidia.com/gpu"):
        render(no_gpu_nodes)


def _ray_env(svc: dict) -> list[dict[str, str]]:
    spec = svc["spec"]["rayClusterConfig"]
    pods = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    containers = [c for p in pods for c in p["template"]["spec"]["containers"]]
    return [{e["name"]: e.get("value") for e in c.get("env", [])} for c in containers]


@pytest.mark.parametrize("haproxy, want", [(None, "1"), (True, "1"), (False, "0")])
def test_every_ray_pod_runs_the_configured_http_ingress(haproxy, want):
    """Serve's controller and replicas read RAY_SERVE_ENABLE_HA_PROXY from their pod: every Ray pod must agree."""
    values = KEYED if haproxy is None else {**KEYED, "service": {"haproxy": haproxy}}
    svc = next(d for d in render(values) if d.get("kind") == "RayService")
    assert [env.get("RAY_SERVE_ENABLE_HA_PROXY") for env in _ray_env(svc)] == [want] * len(_ray_env(svc))
    # HAProxy runs through the request-deadline guard (the image's `prism-haproxy`, pyproject's console script).
    guarded = {"RAY_SERVE_HAPROXY_BINARY_PATH": "/usr/local/bin/prism-haproxy", "PRISM_HAPROXY_HTTP_REQUEST_TIMEOUT_S": "10"}
    assert all((env.items() >= guarded.items()) == (want == "1") for env in _ray_env(svc))
    manifests = yaml.safe_load_all((DEPLOY / "rayservice.yaml").read_text())
    plain = next(d for d in manifests if d and d.get("kind") == "RayService")
    assert all(env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1" and env.items() >= guarded.items() for env in _ray_env(plain))
    assert 'prism-haproxy = "cluster.haproxy_guard:main"' in (ROOT / "pyproject.toml").read_text()


def test_insecure_is_the_explicit_way_to_serve_without_keys():
    docs = by_kind(render({"auth": {"insecure": True}}))
    assert serve_config(docs["RayService"]).insecure is True
    assert not any("PRISM_ADMIN_KEY" in e or "PRISM_API_KEYS" in e for e in _ray_env_from(docs["RayService"]))


def test_ray_control_plane_is_token_authenticated_and_fenced_by_a_network_policy():
    docs = render()
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    svc = by[("RayService", "prism")]
    assert svc["spec"]["rayClusterConfig"]["authOptions"] == {"mode": "token", "secretName": "prism-ray-token"}
    token = by[("Secret", "prism-ray-token")]["data"]["auth_token"]
    assert len(token) >= 48  # base64 of a 48-character random token
    policy = by[("NetworkPolicy", "prism-ray")]
    kubernetes_validate_doc(policy)
    release = {"app.kubernetes.io/name": "prism", "app.kubernetes.io/instance": "prism"}
    assert policy["spec"]["podSelector"]["matchLabels"] == release
    rules = policy["spec"]["ingress"]
    assert rules[0] == {"from": [{"podSelector": {"matchLabels": release}}]}  # Ray's ports: the release's pods only
    # prism HTTP and gRPC from anywhere
    assert rules[1] == {"ports": [{"port": 8000, "protocol": "TCP"}, {"port": 9000, "protocol": "TCP"}]}
    pods = [svc["spec"]["rayClusterConfig"]["headGroupSpec"], *svc["spec"]["rayClusterConfig"]["workerGroupSpecs"]]
    assert all(p["template"]["metadata"]["labels"].items() >= release.items() for p in pods)
    service = next(d for d in docs if d["kind"] == "Service")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [8000, 9000]   # nothing of Ray is exposed
    own = by_kind(render({**KEYED, "rayAuth": {"existingSecret": "mine"}, "networkPolicy": {"enabled": False}}))
    assert own["RayService"][0]["spec"]["rayClusterConfig"]["authOptions"]["secretName"] == "mine"
    assert "NetworkPolicy" not in own and not any(d["metadata"]["name"].endswith("ray-token") for d in own["Secret"])


def by_kind(docs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for d in docs:
        out.setdefault(d["kind"], []).append(d)
    return out


def kubernetes_validate_doc(doc: dict) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_api_keys_rate_and_strict_limits_reach_the_ingress():
    from cluster.auth import new_key

    _, rec = new_key("admin")
    values = {"auth": {"keys": [rec.model_dump()], "metrics": "keyed",
                       "rateLimits": {"readPerS": 500, "writePerS": 50, "burstS": 2},
                       "limits": {"max_limit": 200, "max_upsert_points": 500}}}
    docs = by_kind(render(values))
    creds = next(d for d in docs["Secret"] if d["metadata"]["name"] == "prism-credentials")
    assert json.loads(creds["stringData"]["PRISM_API_KEYS"]) == [rec.model_dump()]
    cfg = serve_config(docs["RayService"])
    assert cfg.auth.metrics == "keyed" and cfg.auth.rate_limits.read_per_s == 500
    assert cfg.auth.rate_limits.write_per_s == 50 and cfg.auth.rate_limits.burst_s == 2
    assert cfg.limits.max_limit == 200 and cfg.limits.max_upsert_points == 500
    env = _ray_env_from(render(KEYED))
    assert all(e.get("PRISM_API_KEYS") == {"secretKeyRef": {"name": "prism-api-keys", "key": "PRISM_API_KEYS"}}
               for e in env)


def test_snapshot_storage_and_its_credentials_reach_every_ray_pod():
    assert serve_config(by_kind(render(KEYED))["RayService"]).snapshots.url is None  # the data volume
    values = {**KEYED, "snapshots": {"url": "s3://backups/prism", "endpointUrl": "http://minio:9000",
                                     "existingSecret": "prism-s3"}}
    docs = by_kind(render(values))
    cfg = serve_config(docs["RayService"])
    assert cfg.snapshots.url == "s3://backups/prism" and cfg.snapshots.options == {"endpoint_url": "http://minio:9000"}
    spec = docs["RayService"][0]["spec"]["rayClusterConfig"]
    pods = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    for c in (c for p in pods for c in p["template"]["spec"]["containers"]):
        assert {"secretRef": {"name": "prism-s3"}} in c["envFrom"]
    for bad in ({"url": "ftp://x"}, {"url": "s3://"}, {"existingSecret": "Not_A_Name"}, {"endpointUrl": "minio"},
                {"bucket": "x"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"snapshots": bad}, values_schema())


def _ray_env_from(docs: list[dict]) -> list[dict]:
    spec = next(d for d in docs if d["kind"] == "RayService")["spec"]["rayClusterConfig"]
    pods = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    return [{e["name"]: e.get("valueFrom") for e in c.get("env", [])} for p in pods
            for c in p["template"]["spec"]["containers"]]


def test_the_plain_rayservice_enables_ray_token_auth():
    svc = load(DEPLOY / "rayservice.yaml")
    assert svc["spec"]["rayClusterConfig"]["authOptions"] == {"mode": "token", "secretName": "prism-ray-token"}
    validate_crd(svc)


def test_grpc_is_served_with_the_servicers_prism_registers_and_exposed_by_the_service():
    """(Serve's own parsing of these grpc_options is checked in tests/integration/test_serve_config.py: it imports
    Ray, which unit tests do not.)"""
    import importlib

    from router.serving.grpc_api import SERVICER_FUNCTIONS

    serve_cfg = load(DEPLOY / "serve-config.yaml")
    opts = serve_cfg["grpc_options"]
    assert opts["grpc_servicer_functions"] == SERVICER_FUNCTIONS
    for path in opts["grpc_servicer_functions"]:
        module, _, name = path.rpartition(".")
        assert callable(getattr(importlib.import_module(module), name)), path
    assert ClusterConfig.model_validate(serve_cfg["applications"][0]["args"]["config"]).grpc_port == opts["port"]
    svc = load(DEPLOY / "k8s" / "service.yaml")
    assert {"name": "grpc", "port": 9000, "targetPort": 9000, "protocol": "TCP", "appProtocol": "grpc"} in \
        svc["spec"]["ports"]
    docs = render()
    rs = next(d for d in docs if d["kind"] == "RayService")
    cfg = yaml.safe_load(rs["spec"]["serveConfigV2"])
    assert cfg["grpc_options"]["grpc_servicer_functions"] == SERVICER_FUNCTIONS
    assert serve_config([rs]).grpc_port == 9000
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"].endswith("-http"))
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [8000, 9000]
    head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"containerPort": 9000, "name": "grpc"} in head["ports"]
    assert head["startupProbe"]["grpc"] == {"port": 9000}  # the standard health service gates start-up
    plain = load(DEPLOY / "rayservice.yaml")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    assert plain["containers"][0]["startupProbe"]["grpc"] == {"port": 9000}
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "HealthCheckRequest" in dockerfile and "127.0.0.1:9000" in dockerfile and "EXPOSE 8000 9000" in dockerfile
    off = render({**KEYED, "grpc": {"enabled": False}})
    rs_off = next(d for d in off if d["kind"] == "RayService")
    assert "startupProbe" not in rs_off["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "grpc_options" not in yaml.safe_load(rs_off["spec"]["serveConfigV2"])
    assert serve_config([rs_off]).grpc_port == 0
    service_off = next(d for d in off if d["kind"] == "Service" and d["metadata"]["name"].endswith("-http"))
    assert [p["targetPort"] for p in service_off["spec"]["ports"]] == [8000]


def test_ingress_replicas_and_their_autoscaling_range_reach_the_serve_deployment():
    fixed = serve_config(by_kind(render())["RayService"])
    assert fixed.ingress_options() == {"num_replicas": 1, "ray_actor_options": {  # on the head, with the data volume
        "num_cpus": 0, "resources": {"node:__internal_head__": 0.001}}}
    scaled = serve_config(by_kind(render({**load(CHART / "examples" / "values-external.yaml"),
                                           "auth": KEYED["auth"]}))["RayService"])
    assert scaled.ingress_options() == {"autoscaling_config": {"min_replicas": 2, "max_replicas": 6}}
    with pytest.raises(ValueError, match="ingress_max_replicas"):
        ClusterConfig(ingress_replicas=3, ingress_max_replicas=2)


def test_the_example_secret_ships_no_open_api_and_no_fixed_token():
    """H2/Low: the Serve config binds 0.0.0.0 without `insecure`: an empty key list would start an API that refuses
    everything (the guard requires keys there), and a placeholder must fail loudly rather than pass as keys. Ray's
    token is made per cluster, never copied from an example."""
    from cluster.auth import env_keys
    from cluster.errors import ConfigError

    docs = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "secret.example.yaml").read_text()) if d]
    creds = next(d for d in docs if d["metadata"]["name"] == "prism-credentials")["stringData"]
    assert creds["PRISM_API_KEYS"].strip() not in ("", "[]"), creds["PRISM_API_KEYS"]
    with pytest.raises(ConfigError):
        env_keys({"PRISM_API_KEYS": creds["PRISM_API_KEYS"]})
    assert all(d["metadata"]["name"] != "prism-ray-token" for d in docs), "a fixed Ray token in an example"
    text = (DEPLOY / "k8s" / "secret.example.yaml").read_text()
    assert "prism-ray-token" in text and "openssl rand" in text  # how to make one is said instead


def test_the_grpc_message_bound_reaches_every_ray_pod():
    """Medium: Serve's gRPC servers take their size bound from RAY_SERVE_GRPC_MAX_MESSAGE_SIZE (default 2 GiB);
    every Ray pod of the plain RayService sets it to the config's grpc_max_message_bytes."""
    svc = load(DEPLOY / "rayservice.yaml")
    cfg = ClusterConfig.model_validate(load(DEPLOY / "serve-config.yaml")["applications"][0]["args"]["config"])
    envs = _ray_env(svc)
    assert envs and all(env.get("RAY_SERVE_GRPC_MAX_MESSAGE_SIZE") == str(cfg.grpc_max_message_bytes)
                        for env in envs), envs


@pytest.mark.parametrize("values", [{}, {"grpc": {"maxMessageBytes": 65536}}], ids=["default", "set"])
def test_the_chart_sets_the_grpc_message_bound_in_every_ray_pod(values):
    """Medium (issue 33): under Helm too, every Ray pod's RAY_SERVE_GRPC_MAX_MESSAGE_SIZE is the ingress's
    grpc_max_message_bytes (before: unset, so Serve read gRPC messages up to 2 GiB before prism refused them)."""
    svc = by_kind(render({**KEYED, **values}))["RayService"][0]
    cfg = serve_config([svc])
    assert cfg.grpc_max_message_bytes == values.get("grpc", {}).get("maxMessageBytes", 8 << 20)
    envs = _ray_env(svc)
    assert envs and all(env.get("RAY_SERVE_GRPC_MAX_MESSAGE_SIZE") == str(cfg.grpc_max_message_bytes)
                        for env in envs), envs


def test_a_default_install_renders_and_generates_an_admin_key_the_ingress_accepts():
    """`helm install` with no values: an admin key is generated into a Secret (kept across upgrades by `lookup`),
    every Ray container gets it as PRISM_ADMIN_KEY, NOTES.txt says how to read it, and the key the Secret holds is
    one the ingress accepts as admin when loaded as the pod loads it (cluster.auth through router.serving.access)."""
    import base64

    from helm_python import Chart

    from cluster.auth import ADMIN_KEY_ENV, KeySource, split_key
    from router.serving.access import Guard

    docs = by_kind(render({}))
    secret = next(d for d in docs["Secret"] if d["metadata"]["name"] == "prism-admin-key")
    kubernetes_validate_doc(secret)
    key = base64.b64decode(secret["data"]["admin-key"]).decode()
    kid, secret_part = split_key(key)
    assert len(kid) == 8 and int(kid, 16) >= 0 and len(secret_part) >= 32
    assert serve_config(docs["RayService"]).insecure is False
    ref = {"secretKeyRef": {"name": "prism-admin-key", "key": "admin-key"}}
    assert all(env.get(ADMIN_KEY_ENV) == ref for env in _ray_env_from(docs["RayService"]))
    # The pod: the Secret's value in its environment, read by the same KeySource the ingress builds.
    guard = Guard(KeySource([], None, environ={ADMIN_KEY_ENV: key}))
    delete = [(b"authorization", f"Bearer {key}".encode())]
    principal = guard.check("DELETE", "/v1/collections/products", delete, "10.0.0.1")
    assert principal is not None and principal.role == "admin" and principal.key_id == kid
    assert guard.check("DELETE", "/v1/collections/products", [], "10.0.0.1").status == 401
    wrong = [(b"authorization", f"Bearer {key[:-1]}{'A' if key[-1] != 'A' else 'B'}".encode())]
    assert guard.check("DELETE", "/v1/collections/products", wrong, "10.0.0.1").status == 401
    # A second render (a new install elsewhere) gets another key; the template keeps an existing one via lookup.
    again = next(d for d in by_kind(render({}))["Secret"] if d["metadata"]["name"] == "prism-admin-key")
    assert again["data"]["admin-key"] != secret["data"]["admin-key"]
    template = (CHART / "templates" / "secret.yaml").read_text()
    assert 'lookup "v1" "Secret" .Release.Namespace $adminName' in template
    notes = Chart.load(str(CHART)).render(values={}, name="prism", namespace="search")
    text = next(t for p, t in notes.items() if p.endswith("NOTES.txt"))
    assert "kubectl get secret prism-admin-key -n search -o jsonpath='{.data.admin-key}' | base64 -d" in text
    # Keys given (or insecure) generate none.
    for values in (KEYED, {"auth": {"insecure": True}}):
        assert not any(d["metadata"]["name"] == "prism-admin-key" for d in by_kind(render(values))["Secret"])


def test_a_malformed_generated_key_is_refused_at_load():
    from cluster.auth import ADMIN_KEY_ENV, env_keys
    from cluster.errors import ConfigError

    for bad in ("prism_deadbeef_short", "prism_XYZ12345_" + "a" * 40, "not-a-key"):
        with pytest.raises(ConfigError, match=ADMIN_KEY_ENV):
            env_keys({ADMIN_KEY_ENV: bad})


HARDENED = {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True, "seccompProfile": {"type": "RuntimeDefault"}}


def _pods(rayservice: dict) -> list[tuple[str, dict]]:
    spec = rayservice["spec"]["rayClusterConfig"]
    return [("head", spec["headGroupSpec"]["template"]["spec"]),
            *((g["groupName"], g["template"]["spec"]) for g in spec.get("workerGroupSpecs", []))]


def _check_hardened_pod(name: str, pod: dict) -> dict[str, dict]:
    """Every container hardened, the pod spec a valid Kubernetes Pod; returns {mount path: its volume}."""
    kubernetes_validate_doc({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": pod})
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts: dict[str, dict] = {}
    for c in pod["containers"]:
        assert c["securityContext"] == HARDENED, (name, c["name"])
        for m in c["volumeMounts"]:
            mounts[m["mountPath"]] = volumes[m["name"]]
    # With a read-only root, everything Ray, HAProxy and prism write has a volume.
    assert {"/var/lib/prism", "/tmp", "/home/prism"} <= set(mounts), (name, sorted(mounts))
    return mounts


def test_every_ray_container_is_hardened_and_the_data_dir_is_a_persistent_volume():
    docs = by_kind(render({**KEYED, "gpu": {"enabled": True}}))
    svc = docs["RayService"][0]
    pods = dict(_pods(svc))
    assert set(pods) == {"head", "cpu", "gpu"}
    mounts = {name: _check_hardened_pod(name, pod) for name, pod in pods.items()}
    # ReadWriteOnce (default): the claim on the head, where the sequencers keep their journals; the ingress (the
    # catalog's writer) is placed there too; the workers' data dir is scratch.
    pvc = next(d for d in docs["PersistentVolumeClaim"] if d["metadata"]["name"] == "prism-data")
    kubernetes_validate_doc(pvc)
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"] and pvc["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert mounts["head"]["/var/lib/prism"]["persistentVolumeClaim"] == {"claimName": "prism-data"}
    assert all("emptyDir" in mounts[w]["/var/lib/prism"] for w in ("cpu", "gpu"))
    cfg = serve_config(docs["RayService"])
    assert cfg.data_dir == "/var/lib/prism" and cfg.placement.ingress_on_head is True
    assert cfg.ingress_options()["ray_actor_options"] == {"num_cpus": 0, "resources": {"node:__internal_head__": 0.001}}

    shared = by_kind(render({**KEYED, "persistence": {"enabled": True, "accessMode": "ReadWriteMany", "size": "50Gi",
                                                      "storageClass": "nfs", "existingClaim": ""}}))
    pods = dict(_pods(shared["RayService"][0]))
    assert all(_check_hardened_pod(n, p)["/var/lib/prism"]["persistentVolumeClaim"]["claimName"] == "prism-data"
               for n, p in pods.items())
    assert shared["PersistentVolumeClaim"][0]["spec"]["storageClassName"] == "nfs"
    assert serve_config(shared["RayService"]).placement.ingress_on_head is False
    assert "ray_actor_options" not in serve_config(shared["RayService"]).ingress_options()

    mine = by_kind(render({**KEYED, "persistence": {"enabled": True, "existingClaim": "my-data"}}))
    assert "PersistentVolumeClaim" not in mine
    head = dict(_pods(mine["RayService"][0]))["head"]
    assert _check_hardened_pod("head", head)["/var/lib/prism"]["persistentVolumeClaim"]["claimName"] == "my-data"

    off = by_kind(render({**KEYED, "persistence": {"enabled": False}, "securityContext": {"readOnlyRootFilesystem": False}}))
    assert "PersistentVolumeClaim" not in off
    head = dict(_pods(off["RayService"][0]))["head"]
    assert head["volumes"][0] == {"name": "data", "emptyDir": {}}
    assert head["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is False


def test_the_plain_manifests_are_hardened_and_keep_the_data_dir_on_a_claim():
    svc = load(DEPLOY / "rayservice.yaml")
    pods = dict(_pods(svc))
    mounts = {name: _check_hardened_pod(name, pod) for name, pod in pods.items()}
    claim = load(DEPLOY / "k8s" / "pvc.yaml")
    assert claim["kind"] == "PersistentVolumeClaim" and claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert mounts["head"]["/var/lib/prism"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    cfg = ClusterConfig.model_validate(load(DEPLOY / "serve-config.yaml")["applications"][0]["args"]["config"])
    assert cfg.placement.ingress_on_head is True
