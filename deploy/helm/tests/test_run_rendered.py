"""The kubelet emulation behind `make e2e-chart` (deploy/helm/scripts/run_rendered.py),
where it needs no Docker: how it turns the rendered chart into a container's flags,
environment and files, and the Service forwarder. The runs themselves are
scripts/e2e-chart.sh's."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import socket
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from .conftest import ROOT, Manifests, Renderer, container, pod_spec

SCRIPTS = ROOT / "deploy" / "helm" / "scripts"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


rr = _load("run_rendered")
forwarder = _load("service_forwarder")


@pytest.mark.parametrize(
    ("quantity", "value"),
    [("512Mi", 512 * 2**20), ("64Mi", 64 * 2**20), ("1Gi", 2**30), ("1G", 10**9), ("100m", 0.1),
     ("1.5", 1.5), ("2", 2), ("1e3", 1000), ("250k", 250_000)],
)  # fmt: skip
def test_quantities(quantity: str, value: float) -> None:
    assert float(rr.parse_quantity(quantity)) == pytest.approx(value)


def test_a_bad_quantity_is_refused() -> None:
    with pytest.raises(rr.Fail):
        rr.parse_quantity("12 MB")


@pytest.mark.parametrize(
    ("text", "expanded"),
    [
        ("$(A)", "1"),
        ("x=$(A),y=$(B)", "x=1,y=two"),
        ("$(MISSING)", "$(MISSING)"),
        ("$$(A)", "$(A)"),
        ("$$", "$"),
        ("cost: $5", "cost: $5"),
        ("$(A", "$(A"),
        ("$", "$"),
    ],
)
def test_dependent_variables_expand_as_in_kubernetes(text: str, expanded: str) -> None:
    assert rr.expand(text, {"A": "1", "B": "two"}.get) == expanded


def test_service_links_are_the_kubelets() -> None:
    env = rr.service_link_env(
        [
            (
                "platform-downstream-mock",
                "10.0.0.7",
                [{"name": "http", "port": 80}, {"name": "closed", "port": 9}],
            )
        ]
    )
    assert env == {
        "PLATFORM_DOWNSTREAM_MOCK_SERVICE_HOST": "10.0.0.7",
        "PLATFORM_DOWNSTREAM_MOCK_SERVICE_PORT": "80",
        "PLATFORM_DOWNSTREAM_MOCK_SERVICE_PORT_HTTP": "80",
        "PLATFORM_DOWNSTREAM_MOCK_SERVICE_PORT_CLOSED": "9",
        "PLATFORM_DOWNSTREAM_MOCK_PORT": "tcp://10.0.0.7:80",
        "PLATFORM_DOWNSTREAM_MOCK_PORT_80_TCP": "tcp://10.0.0.7:80",
        "PLATFORM_DOWNSTREAM_MOCK_PORT_80_TCP_PROTO": "tcp",
        "PLATFORM_DOWNSTREAM_MOCK_PORT_80_TCP_PORT": "80",
        "PLATFORM_DOWNSTREAM_MOCK_PORT_80_TCP_ADDR": "10.0.0.7",
        "PLATFORM_DOWNSTREAM_MOCK_PORT_9_TCP": "tcp://10.0.0.7:9",
        "PLATFORM_DOWNSTREAM_MOCK_PORT_9_TCP_PROTO": "tcp",
        "PLATFORM_DOWNSTREAM_MOCK_PORT_9_TCP_PORT": "9",
        "PLATFORM_DOWNSTREAM_MOCK_PORT_9_TCP_ADDR": "10.0.0.7",
    }


def test_command_replaces_entrypoint_and_cmd_args_only_the_cmd() -> None:
    env = {"N": "3"}
    assert rr.entrypoint_args({}, env) == ([], [])
    assert rr.entrypoint_args({"args": ["app:$(N)"]}, env) == ([], ["app:3"])
    command = {"command": ["python3", "-c"], "args": ["print($(N))"]}
    assert rr.entrypoint_args(command, env) == (["--entrypoint", "python3"], ["-c", "print(3)"])


def test_the_chart_s_security_context_maps_to_docker_flags(default: Manifests) -> None:
    for deployment in default.of_kind("Deployment"):
        spec = pod_spec(deployment)
        security = rr.merged_security(spec, container(deployment))
        assert rr.user_args(security, "", "here") == ["--user", "10001:10001"]
        assert rr.hardening_args(security, "here") == [
            "--group-add", "10001", "--read-only", "--security-opt", "no-new-privileges",
            "--cap-drop", "ALL",
        ]  # fmt: skip


def test_run_as_non_root_is_enforced_as_by_the_kubelet() -> None:
    with pytest.raises(rr.Fail, match="root"):
        rr.user_args({"runAsNonRoot": True, "runAsUser": 0}, "", "here")
    with pytest.raises(rr.Fail, match="not numeric"):
        rr.user_args({"runAsNonRoot": True}, "app", "here")
    assert rr.user_args({"runAsNonRoot": True}, "10001:10001", "here") == []
    assert rr.user_args({}, "", "here") == []


def test_seccomp_unset_is_unconfined_as_without_seccomp_default() -> None:
    assert rr.hardening_args({}, "here") == ["--security-opt", "seccomp=unconfined"]
    with pytest.raises(rr.Fail):
        rr.hardening_args({"seccompProfile": {"type": "Localhost"}}, "here")


def test_the_chart_s_resources_map_to_docker_flags(default: Manifests) -> None:
    gateway = container(default.get("Deployment", "platform-gateway"))
    assert rr.resource_args(gateway["resources"]) == [
        "--memory", str(512 * 2**20), "--memory-swap", str(512 * 2**20), "--cpu-shares", "102",
    ]  # fmt: skip


def test_the_chart_s_emptydirs_are_sized_tmpfs_owned_by_fsgroup(default: Manifests) -> None:
    volumes = {
        v["name"]: v for v in pod_spec(default.get("Deployment", "platform-gateway"))["volumes"]
    }
    assert rr.emptydir_options(volumes["tmp"], 10001) == f"mode=2777,gid=10001,size={256 * 2**20}"
    assert rr.emptydir_options(volumes["metrics"], 10001).endswith(f"size={64 * 2**20}")
    assert rr.emptydir_options({"emptyDir": {}}, None) == "mode=0777"


def test_a_configmap_volume_is_laid_out_like_the_atomic_writer(tmp_path: Path) -> None:
    rr.write_projection(
        tmp_path / "v", {"routes.yaml": (b"routes: []\n", 0o644), "d/x": (b"x", 0o600)}, None
    )
    volume = tmp_path / "v"
    assert os.readlink(volume / "..data").startswith("..20")
    assert os.readlink(volume / "routes.yaml") == "..data/routes.yaml"
    assert (volume / "routes.yaml").read_text() == "routes: []\n"
    assert (volume / "d" / "x").stat().st_mode & 0o777 == 0o600


def test_volume_mounts_honour_kind_and_subpath(tmp_path: Path) -> None:
    rr.write_projection(tmp_path / "cm", {"routes.yaml": (b"r", 0o644)}, None)
    volumes = {"tmp": ("emptyDir", "p-tmp"), "routes": ("projection", str(tmp_path / "cm"))}
    assert rr.mount_spec({"name": "tmp", "mountPath": "/tmp"}, volumes, "c") == (
        "type=volume,src=p-tmp,dst=/tmp,volume-nocopy=true"
    )
    assert rr.mount_spec({"name": "routes", "mountPath": "/etc/gateway"}, volumes, "c") == (
        f"type=bind,src={tmp_path / 'cm'},dst=/etc/gateway,readonly"
    )
    single = {"name": "routes", "mountPath": "/etc/r.yaml", "subPath": "routes.yaml"}
    src = rr.mount_spec(single, volumes, "c").split(",")[1]
    assert Path(src.removeprefix("src=")).read_text() == "r"  # the file itself, not the link
    with pytest.raises(rr.Fail):
        rr.mount_spec({"name": "nope", "mountPath": "/x"}, volumes, "c")


def test_named_ports_resolve_through_the_container_ports(default: Manifests) -> None:
    gateway = container(default.get("Deployment", "platform-gateway"))
    assert rr.resolve_port("http", [gateway], "probe") == 8080
    assert rr.resolve_port(9, [gateway], "service") == 9
    with pytest.raises(rr.Fail, match="'metrics'"):
        rr.resolve_port("metrics", [gateway], "probe")


def _environment(manifests: Manifests, deployment: str) -> dict[str, str]:
    objects = rr.Manifests(list(manifests))
    state = rr.State("p", "apps", "/nonexistent", "base", [], host_ip="10.1.0.1")
    maker = rr.PodMaker(state, objects, rr.service_link_env([rr.KUBERNETES_SERVICE]))
    doc = manifests.get("Deployment", deployment)
    pod = rr.Pod("pod-1", {}, pod_spec(doc), "p-pod-1", ip="10.1.0.9")
    context = {
        "metadata.name": "pod-1", "metadata.namespace": "apps", "spec.nodeName": "node-1",
        "status.podIP": pod.ip,
    }  # fmt: skip
    env: dict[str, str] = maker.env(pod, container(doc), context)
    return env


def test_every_env_of_the_chart_resolves(default: Manifests, all_features: Manifests) -> None:
    env = _environment(default, "platform-gateway")
    assert env["GATEWAY_ROUTES_FILE"] == "/etc/gateway/routes.yaml"
    assert env["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"
    with pytest.raises(rr.Fail, match="Secret 'platform-redis' does not exist"):
        _environment(all_features, "demo-gateway")  # redis.existingSecret: the user's object
    env = _environment(all_features, "demo-downstream-mock")
    attributes = dict(kv.split("=", 1) for kv in env["OTEL_RESOURCE_ATTRIBUTES"].split(","))
    assert attributes["k8s.namespace.name"] == "apps"
    assert attributes["k8s.pod.name"] == "pod-1"
    assert attributes["k8s.node.name"] == "node-1"


def test_an_existing_secret_fills_the_redis_url(render: Renderer, tmp_path: Path) -> None:
    manifests = render(redis__existingSecret="cache")
    secret = {
        "kind": "Secret",
        "metadata": {"name": "cache"},
        "stringData": {"url": "redis://r:6379/0"},
    }
    objects = [*manifests, secret]
    state = rr.State("p", "apps", str(tmp_path), "base", [])
    maker = rr.PodMaker(state, rr.Manifests(objects), {})
    doc = manifests.get("Deployment", "platform-gateway")
    pod = rr.Pod("pod-1", {}, pod_spec(doc), "p-pod-1")
    assert maker.env(pod, container(doc), {"metadata.namespace": "apps"})["GATEWAY_REDIS_URL"] == (
        "redis://r:6379/0"
    )


def test_replicas_come_from_the_deployment_or_its_hpa(
    default: Manifests, all_features: Manifests
) -> None:
    assert rr.Manifests(list(default)).replicas(default.get("Deployment", "platform-gateway")) == 2
    scaled = all_features.get("Deployment", "demo-gateway")
    assert "replicas" not in scaled["spec"]
    assert rr.Manifests(list(all_features)).replicas(scaled) == 2  # the HPA's minReplicas


def test_the_helm_test_pod_is_found(default: Manifests) -> None:
    assert [p["metadata"]["name"] for p in rr.Manifests(list(default)).test_pods()] == [
        "platform-test-gateway"
    ]


# ---- the Service forwarder -------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(await reader.read(100))
    await writer.drain()
    writer.close()


async def _state(port: int) -> str:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return "refused"
    writer.write(b"ping")
    await writer.drain()
    data = await reader.read(100)
    writer.close()
    await writer.wait_closed()
    return data.decode() or "closed"


async def _until(port: int, want: str) -> str:
    got = ""
    for _ in range(50):
        if (got := await _state(port)) == want:
            break
        await asyncio.sleep(0.1)
    return got


async def test_the_forwarder_follows_its_endpoints(tmp_path: Path) -> None:
    upstream = await asyncio.start_server(_echo, "127.0.0.1", 0)
    target = upstream.sockets[0].getsockname()[1]
    service, closed = _free_port(), _free_port()
    config = tmp_path / "endpoints.json"

    def endpoints(targets: list[Any]) -> None:
        ports = [{"port": service, "targets": targets}, {"port": closed, "targets": []}]
        config.write_text(json.dumps({"service": "s", "ports": ports}))

    endpoints([["127.0.0.1", target]])
    stop = asyncio.Event()
    task = asyncio.create_task(forwarder.serve(config, stop))
    try:
        assert await _until(service, "ping") == "ping"
        assert await _state(closed) == "refused"  # no target: nothing listens
        endpoints([])
        assert await _until(service, "refused") == "refused"  # the pod left the Service
        endpoints([["127.0.0.1", target]])
        assert await _until(service, "ping") == "ping"
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        upstream.close()
        await upstream.wait_closed()
    assert await _state(service) == "refused"
