"""Run the chart's rendered manifests on Docker the way a kubelet would (`make e2e-chart`).

    run_rendered.py up --manifests FILE... --state DIR --project NAME [--publish SVC:PORT=HOSTPORT]
    run_rendered.py helm-test --state DIR   the helm test pods, to completion; each must exit 0
    run_rendered.py kubelet --state DIR     keep probing on the probes' periods until SIGTERM
    run_rendered.py stop --state DIR        delete the pods: preStop, SIGTERM, grace period
    run_rendered.py logs --project NAME     state and logs of every container
    run_rendered.py down --project NAME     remove every container, volume and network

Nothing is written per service: every pod is made from what `helm template` rendered, so
a wrong probe path or port, an env name the service does not read, or a file system the
service cannot live with fails here before any cluster sees it. scripts/e2e-chart.sh
drives it. How each part of a pod is emulated:

- Pods. A Deployment runs `spec.replicas` pods (unset: the minReplicas of an HPA that
  targets it, else 1), named `<deployment>-<pod-template-hash>-<5 chars>`. A pod is a
  pause container that holds the network namespace (hostname = pod name; DNS search
  `<ns>.svc.cluster.local svc.cluster.local cluster.local`, ndots:5), which the pod's
  containers join: one IP per pod. Init containers run to completion first. Containers
  are never restarted: an exit is a failure (the kubelet would restart it).
- Containers. The image (imagePullPolicy IfNotPresent/Never/Always = `--pull
  missing/never/always`); `command` replaces the entrypoint and drops the image's CMD,
  `args` replaces the CMD; `$(VAR)` is expanded as Kubernetes does; workingDir; the
  image's HEALTHCHECK is off (a kubelet ignores it); the stop timeout is the pod's
  terminationGracePeriodSeconds.
- Environment. `value`; `valueFrom` configMapKeyRef/secretKeyRef from the rendered
  ConfigMaps and Secrets (plus --manifests files of objects a user creates, such as an
  existing Secret), fieldRef (metadata.name/namespace/uid/labels['k']/annotations['k'],
  spec.nodeName = this host's name, spec.serviceAccountName, status.podIP = the pod's
  real IP, status.hostIP = the network's gateway, i.e. the "node"), resourceFieldRef
  (the host's CPUs/memory where no value is set); `envFrom` with `prefix`; the Service
  link variables (`<SVC>_SERVICE_HOST`, `<SVC>_PORT_80_TCP`, ... of every Service, and
  `KUBERNETES_SERVICE_*` with a placeholder address) unless `enableServiceLinks: false`.
  A missing object or key is an error unless `optional` (CreateContainerConfigError).
- Volumes. configMap and secret volumes are written as the kubelet's atomic writer does
  (`..data` -> `..<timestamp>/`, a symlink per key; `items`, `defaultMode`, `mode`,
  group fsGroup) and bind-mounted read-only, at `subPath` when given. An emptyDir is a
  Docker volume on tmpfs (`sizeLimit` = its size, whatever the medium), empty, mode 0777,
  or 2777 root:fsGroup with an fsGroup, as the kubelet makes it; nested mounts (/tmp,
  then /tmp/metrics) are mounted parents first. Other volume types are refused.
- Security context, the pod's overridden by the container's: runAsUser/runAsGroup
  (`--user`; without runAsUser, the image's USER, which runAsNonRoot requires to be
  numeric and non-zero, as the kubelet does), fsGroup and supplementalGroups
  (`--group-add`), readOnlyRootFilesystem (`--read-only`), allowPrivilegeEscalation
  false (`no-new-privileges`), capabilities (`--cap-drop`/`--cap-add`), privileged,
  seccompProfile (RuntimeDefault: Docker's default profile; Unconfined or unset:
  unconfined, as a kubelet without --seccomp-default; Localhost: refused), sysctls.
- Resources. limits.memory -> `--memory` (no swap), limits.cpu -> `--cpus`,
  requests.cpu -> `--cpu-shares` (1024 per CPU, like the kubelet's cgroup weights).
- Services. One forwarder container per Service (service_forwarder.py, on the base
  image) whose network aliases are `<svc>`, `<svc>.<ns>`, `<svc>.<ns>.svc` and
  `<svc>.<ns>.svc.cluster.local`; its IP is the ClusterIP. Endpoints are the ready pods
  the selector matches; each Service port goes to its targetPort (a name is looked up in
  the pod's container ports and must exist). A port without a listening target is not
  listened on, so it refuses connections: kube-proxy REJECTs a Service port without
  endpoints, and behind its DNAT the pod's kernel sends the RST when nothing listens on
  the target port (the chart's `closed` mock port 9 relies on that). Unlike kube-proxy,
  the forwarder is a proxy: the pod sees the forwarder's address as the client's. A
  Service that selects no pod is an error. `--publish` publishes a Service port on the
  host's 127.0.0.1.
- Probes. Called as declared from the host to the pod IP, as the kubelet calls them from
  the node: httpGet (scheme, host, path, port, httpHeaders; a named port resolved
  through the container's ports; 200-399 is success, redirects are not followed),
  tcpSocket, exec (`docker exec`); grpc is refused. initialDelaySeconds, periodSeconds,
  timeoutSeconds, successThreshold and failureThreshold as the kubelet uses them. `up`
  waits for each startupProbe, then for liveness and readiness (after a startupProbe, a
  readinessProbe failing failureThreshold times in a row is a failure too);
  `kubelet` goes on probing while the tests run, takes a pod out of its Services while
  it is not ready, and fails if any liveness or readiness probe reached its
  failureThreshold or a container stopped.
- Pod deletion (`stop`): the pods leave their Services, each container's preStop exec
  hook runs, then SIGTERM with what is left of terminationGracePeriodSeconds; every
  container must exit 0 within it.

Not emulated, and reported when rendered: NetworkPolicy, PodDisruptionBudget,
HorizontalPodAutoscaler (beyond minReplicas), ServiceMonitor; nor ServiceAccount tokens,
imagePullSecrets, scheduling (nodeSelector, affinity, tolerations, topology spread,
priority) or NodePorts. Every container, volume and network this makes carries the label
io.platform.e2e-chart.project=<project>, and `down` removes exactly those.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import math
import os
import random
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
FORWARDER = HERE / "service_forwarder.py"
LABEL = "io.platform.e2e-chart.project"
ROLE_LABEL = "io.platform.e2e-chart.role"
POD_LABEL = "io.platform.e2e-chart.pod"
K8S_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
CLUSTER_DOMAIN = "cluster.local"
# Every pod gets the `kubernetes` Service's variables; nothing listens at this address.
KUBERNETES_SERVICE = ("kubernetes", "10.96.0.1", [{"name": "https", "port": 443}])
PROBE_USER_AGENT = "kube-probe/1.32"
# The pause container holds the pod's network namespace. As PID 1 it would ignore a
# SIGTERM it has no handler for.
PAUSE = "import signal, sys; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); signal.pause()"
HELPER_USER = "65534:65534"
PROBE_KINDS = ("startupProbe", "livenessProbe", "readinessProbe")
PULL = {"IfNotPresent": "missing", "Never": "never", "Always": "always"}

Obj = dict[str, Any]
Lookup = Callable[[str], str | None]


class Fail(Exception):
    """What a kubelet would refuse or report; the message says what."""


def say(message: str) -> None:
    print(f"[run-rendered] {message}", file=sys.stderr, flush=True)


def opts(flag: str, values: Iterable[object]) -> list[str]:
    """`--flag a --flag b` for each value."""
    return [item for value in values for item in (flag, str(value))]


# ---------------------------------------------------------------------------------------
# Pure helpers (deploy/helm/tests/test_run_rendered.py)

_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([KMGTPE]i|[numkMGTPE])?$")
_SUFFIX = {
    **{s: Decimal(10) ** e for s, e in {"n": -9, "u": -6, "m": -3, "": 0}.items()},
    **{s: Decimal(10) ** (3 * (i + 1)) for i, s in enumerate("kMGTPE")},
    **{f"{s}i": Decimal(2) ** (10 * (i + 1)) for i, s in enumerate("KMGTPE")},
}


def parse_quantity(value: str | float) -> Decimal:
    """A Kubernetes resource quantity ("512Mi", "100m", "1.5", "1e3") as a number."""
    match = _QUANTITY.match(str(value).strip())
    if not match:
        raise Fail(f"not a Kubernetes quantity: {value!r}")
    return Decimal(match.group(1)) * _SUFFIX[match.group(2) or ""]


def quantity_int(value: str | float) -> int:
    return math.ceil(parse_quantity(value))


def expand(text: str, lookup: Lookup) -> str:
    """Kubernetes' $(VAR) expansion: `$(NAME)` becomes NAME's value when NAME is known
    and stays as written when not; `$$` is a literal `$`, so `$$(NAME)` stays `$(NAME)`."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("$(", i) and (end := text.find(")", i + 2)) != -1:
            value = lookup(text[i + 2 : end])
            out.append(text[i : end + 1] if value is None else value)
            i = end + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def env_var_name(name: str) -> str:
    """A Service or port name as the kubelet turns it into part of a variable name."""
    return name.upper().replace("-", "_")


_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


def service_link_env(services: Iterable[tuple[str, str, list[Obj]]]) -> dict[str, str]:
    """The docker-link style variables the kubelet gives each pod for the Services of
    its namespace, from (name, cluster IP, ports)."""
    env: dict[str, str] = {}
    for name, ip, ports in services:
        if not ports:
            continue
        prefix = env_var_name(name)
        env[f"{prefix}_SERVICE_HOST"] = ip
        env[f"{prefix}_SERVICE_PORT"] = str(ports[0]["port"])
        for port in ports:
            if port.get("name"):
                env[f"{prefix}_SERVICE_PORT_{env_var_name(port['name'])}"] = str(port["port"])
        first = ports[0]
        env[f"{prefix}_PORT"] = f"{first.get('protocol', 'TCP').lower()}://{ip}:{first['port']}"
        for port in ports:
            proto = port.get("protocol", "TCP")
            key = f"{prefix}_PORT_{port['port']}_{proto.upper()}"
            env[key] = f"{proto.lower()}://{ip}:{port['port']}"
            env[f"{key}_PROTO"] = proto.lower()
            env[f"{key}_PORT"] = str(port["port"])
            env[f"{key}_ADDR"] = ip
    return env


def selector_matches(selector: Obj | None, labels: Obj) -> bool:
    """A Service's selector (a plain map); an empty or missing one selects nothing here."""
    return bool(selector) and all(labels.get(k) == v for k, v in (selector or {}).items())


def resolve_port(port: int | str, containers: Iterable[Obj], what: str) -> int:
    """A port number, or a port name looked up in the containers' `ports`."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for container in containers:
        for declared in container.get("ports") or []:
            if declared.get("name") == port:
                return int(declared["containerPort"])
    raise Fail(f"{what}: port name {port!r} is not a port of the container(s)")


def pod_template_hash(template: Obj) -> str:
    """Shaped like the Deployment controller's pod-template-hash (FNV-32a, safe-encoded)."""
    value = 0x811C9DC5
    for byte in json.dumps(template, sort_keys=True).encode():
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return "".join(K8S_ALPHABET[ord(c) % len(K8S_ALPHABET)] for c in str(value))


def random_suffix(length: int = 5) -> str:
    return "".join(random.choice(K8S_ALPHABET) for _ in range(length))  # noqa: S311


def merged_security(pod_spec: Obj, container: Obj) -> Obj:
    """The effective security context: the pod's, overridden key by key by the container's."""
    pod = pod_spec.get("securityContext") or {}
    shared = ("runAsUser", "runAsGroup", "runAsNonRoot", "seccompProfile")
    merged = {key: pod[key] for key in shared if key in pod}
    merged |= container.get("securityContext") or {}
    merged |= {k: pod[k] for k in ("fsGroup", "supplementalGroups") if k in pod}
    return merged


def write_projection(target: Path, files: dict[str, tuple[bytes, int]], group: int | None) -> None:
    """A configMap/secret volume as the kubelet's atomic writer lays it out: the files in
    `..<timestamp>/`, `..data` pointing at it, each top-level name a link through `..data`."""
    target.mkdir(parents=True, exist_ok=True)
    stamp = f"..{datetime.now(UTC):%Y_%m_%d_%H_%M_%S}.{random.randrange(10**9)}"  # noqa: S311
    tops: set[str] = set()
    for rel, (content, mode) in sorted(files.items()):
        path = target / stamp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(mode)
        tops.add(rel.split("/", 1)[0])
    (target / stamp).mkdir(exist_ok=True)
    (target / "..data").symlink_to(stamp)
    for top in sorted(tops):
        (target / top).symlink_to(f"..data/{top}")
    for path in [target, *target.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
        if group is not None and os.geteuid() == 0:
            os.lchown(path, 0, group)


def entrypoint_args(container: Obj, env: dict[str, str]) -> tuple[list[str], list[str]]:
    """(docker run options, arguments after the image) for `command` and `args`:
    `command` replaces the image's ENTRYPOINT and CMD, `args` only the CMD."""
    command = [expand(str(a), env.get) for a in container.get("command") or []]
    args = [expand(str(a), env.get) for a in container.get("args") or []]
    if command:
        return ["--entrypoint", command[0]], command[1:] + args
    return [], args


def pull_policy(container: Obj) -> str:
    image = container["image"]
    default = "Always" if image.endswith(":latest") or ":" not in image.rsplit("/", 1)[-1] else ""
    return PULL[container.get("imagePullPolicy") or default or "IfNotPresent"]


def hardening_args(sec: Obj, where: str) -> list[str]:
    """Docker options for the security context, but the user (see user_args)."""
    args = opts("--group-add", [sec["fsGroup"]] if "fsGroup" in sec else [])
    args += opts("--group-add", sec.get("supplementalGroups") or [])
    if sec.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    if sec.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    if sec.get("privileged"):
        args.append("--privileged")
    caps = sec.get("capabilities") or {}
    args += opts("--cap-drop", caps.get("drop") or []) + opts("--cap-add", caps.get("add") or [])
    seccomp = (sec.get("seccompProfile") or {}).get("type", "Unconfined")
    if seccomp == "Unconfined":
        args += ["--security-opt", "seccomp=unconfined"]
    elif seccomp != "RuntimeDefault":
        raise Fail(f"{where}: seccompProfile {seccomp} is not emulated")
    return args


def user_args(sec: Obj, image_user: str, where: str) -> list[str]:
    """`--user` for runAsUser/runAsGroup, checked against runAsNonRoot as the kubelet does."""
    uid, gid = sec.get("runAsUser"), sec.get("runAsGroup")
    if uid is None:
        user = image_user.split(":", 1)[0] or "0"
        if sec.get("runAsNonRoot") and not user.isdigit():
            raise Fail(f"{where}: runAsNonRoot, and the image's user {user!r} is not numeric")
        uid = user if gid is not None else None
    if sec.get("runAsNonRoot") and uid is not None and str(uid) in ("0", "root"):
        raise Fail(f"{where}: runAsNonRoot, but it would run as root")
    if uid is None:
        return []
    return ["--user", f"{uid}" if gid is None else f"{uid}:{gid}"]


def resource_args(resources: Obj | None) -> list[str]:
    limits = (resources or {}).get("limits") or {}
    requests = (resources or {}).get("requests") or {}
    args: list[str] = []
    if "memory" in limits:
        memory = str(quantity_int(limits["memory"]))
        args += ["--memory", memory, "--memory-swap", memory]
    if "cpu" in limits:
        args += ["--cpus", str(parse_quantity(limits["cpu"]))]
    if (cpu := requests.get("cpu", limits.get("cpu"))) is not None:
        args += ["--cpu-shares", str(max(2, int(parse_quantity(cpu) * 1024)))]
    return args


def emptydir_options(volume: Obj, fs_group: int | None) -> str:
    """tmpfs mount options of an emptyDir, with the kubelet's ownership and mode."""
    options = ["mode=0777"] if fs_group is None else ["mode=2777", f"gid={fs_group}"]
    if size := (volume["emptyDir"] or {}).get("sizeLimit"):
        options.append(f"size={quantity_int(size)}")
    return ",".join(options)


# ---------------------------------------------------------------------------------------
# The rendered objects


@dataclass
class Manifests:
    objects: list[Obj]

    @classmethod
    def load(cls, paths: Iterable[Path | str]) -> Manifests:
        objects: list[Obj] = []
        for path in paths:
            objects += [doc for doc in yaml.safe_load_all(Path(path).read_text()) if doc]
        return cls(objects)

    def of_kind(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o.get("kind") == kind]

    def config_data(self, kind: str, name: str) -> dict[str, bytes] | None:
        """The keys of a ConfigMap or Secret, as bytes; None when there is none."""
        obj = next((o for o in self.of_kind(kind) if o["metadata"]["name"] == name), None)
        if obj is None:
            return None
        text, encoded = ("data", "binaryData") if kind == "ConfigMap" else ("stringData", "data")
        data = {k: base64.b64decode(v) for k, v in (obj.get(encoded) or {}).items()}
        return data | {k: str(v).encode() for k, v in (obj.get(text) or {}).items()}

    def test_pods(self) -> list[Obj]:
        def hook(pod: Obj) -> str:
            return str((pod["metadata"].get("annotations") or {}).get("helm.sh/hook", ""))

        return [pod for pod in self.of_kind("Pod") if "test" in hook(pod).split(",")]

    def replicas(self, deployment: Obj) -> int:
        if "replicas" in deployment["spec"]:
            return int(deployment["spec"]["replicas"])
        name = deployment["metadata"]["name"]
        for hpa in self.of_kind("HorizontalPodAutoscaler"):
            ref = hpa["spec"]["scaleTargetRef"]
            if (ref.get("kind"), ref.get("name")) == ("Deployment", name):
                return int(hpa["spec"].get("minReplicas", 1))
        return 1


# ---------------------------------------------------------------------------------------
# Docker


def run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)  # noqa: S603


def docker(*args: str, timeout: float = 120, check: bool = True) -> str:
    result = run(["docker", *args], timeout)
    if check and result.returncode != 0:
        detail = result.stderr.strip() or result.stdout.strip()
        raise Fail(f"docker {shlex.join(args[:2])} ...: {detail}")
    return result.stdout.strip()


def container_ip(name: str, network: str) -> str:
    template = f"{{{{(index .NetworkSettings.Networks {json.dumps(network)}).IPAddress}}}}"
    if not (ip := docker("inspect", "-f", template, name)):
        raise Fail(f"container {name} has no address on network {network}")
    return ip


def container_state(name: str) -> Obj:
    state: Obj = json.loads(docker("inspect", "-f", "{{json .State}}", name))
    return state


def docker_logs(name: str, tail: int | None = None) -> str:
    result = run(["docker", "logs", *(["--tail", str(tail)] if tail else []), name], 60)
    return result.stdout + result.stderr


# ---------------------------------------------------------------------------------------
# What the subcommands share, in <state>/state.json


@dataclass
class Container:
    name: str
    docker_name: str
    spec: Obj
    init: bool = False
    started: float = 0.0  # time.monotonic() in the `up` process


@dataclass
class Pod:
    name: str
    labels: Obj
    spec: Obj
    pause: str
    ip: str = ""
    containers: list[Container] = field(default_factory=list)
    ready: bool = False

    @property
    def grace(self) -> int:
        return int(self.spec.get("terminationGracePeriodSeconds", 30))

    def app_containers(self) -> list[Container]:
        return [c for c in self.containers if not c.init]

    def where(self, container: Container) -> str:
        return f"{self.name}/{container.name}"


@dataclass
class Service:
    name: str
    docker_name: str
    ip: str
    ports: list[Obj]
    selector: Obj | None
    endpoints_file: str


@dataclass
class State:
    project: str
    namespace: str
    workdir: str
    base_image: str
    manifests: list[str]
    host_ip: str = ""
    pods: list[Pod] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)

    def save(self) -> None:
        def encode(obj: object) -> object:
            return obj.__dict__

        path = Path(self.workdir) / "state.json"
        path.with_suffix(".tmp").write_text(json.dumps(self.__dict__, default=encode, indent=1))
        path.with_suffix(".tmp").replace(path)

    @classmethod
    def load(cls, workdir: str) -> State:
        raw = json.loads((Path(workdir) / "state.json").read_text())
        pods = [
            Pod(**{**p, "containers": [Container(**c) for c in p["containers"]]})
            for p in raw.pop("pods")
        ]
        services = [Service(**s) for s in raw.pop("services")]
        return cls(**raw, pods=pods, services=services)

    def service_env(self) -> dict[str, str]:
        links = [(s.name, s.ip, s.ports) for s in self.services]
        return service_link_env([*links, KUBERNETES_SERVICE])


# ---------------------------------------------------------------------------------------
# Pods


@dataclass
class PodMaker:
    """Makes the pods of one run: their pause containers, volumes and containers."""

    state: State
    manifests: Manifests
    service_env: dict[str, str]
    image_users: dict[str, str] = field(default_factory=dict)

    def make(self, name: str, template: Obj, role: str) -> Pod:
        meta, spec = template.get("metadata") or {}, template["spec"]
        if spec.get("hostNetwork"):
            raise Fail(f"pod {name}: hostNetwork is not emulated")
        pod = Pod(name, dict(meta.get("labels") or {}), spec, f"{self.state.project}-{name}")
        self.start_pause(pod)
        context = {
            "metadata.name": name,
            "metadata.namespace": self.state.namespace,
            "metadata.uid": str(uuid.uuid4()),
            "spec.nodeName": socket.gethostname(),
            "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
            "status.hostIP": self.state.host_ip,
            "status.hostIPs": self.state.host_ip,
            "status.podIP": pod.ip,
            "status.podIPs": pod.ip,
        }
        context |= {f"metadata.labels['{k}']": str(v) for k, v in pod.labels.items()}
        annotations = meta.get("annotations") or {}
        context |= {f"metadata.annotations['{k}']": str(v) for k, v in annotations.items()}
        volumes = self.volumes(pod)
        for container in spec.get("initContainers") or []:
            pod.containers.append(
                self.start(pod, container, context, volumes, role=role, init=True)
            )
        for container in spec["containers"]:
            pod.containers.append(self.start(pod, container, context, volumes, role=role))
        names = ", ".join(c.name for c in pod.app_containers())
        say(f"pod {name}: IP {pod.ip}, containers {names}")
        return pod

    def labels(self, pod: Pod, role: str) -> list[str]:
        project = self.state.project
        return opts(
            "--label", [f"{LABEL}={project}", f"{POD_LABEL}={pod.name}", f"{ROLE_LABEL}={role}"]
        )

    def start_pause(self, pod: Pod) -> None:
        ns = self.state.namespace
        search = [f"{ns}.svc.{CLUSTER_DOMAIN}", f"svc.{CLUSTER_DOMAIN}", CLUSTER_DOMAIN]
        sysctls = (pod.spec.get("securityContext") or {}).get("sysctls") or []
        docker(
            "run", "-d", "--name", pod.pause, *self.labels(pod, "pause"),
            "--network", self.state.project, "--hostname", pod.name[:63],
            *opts("--dns-search", search), "--dns-option", "ndots:5",
            *opts("--sysctl", [f"{s['name']}={s['value']}" for s in sysctls]),
            *helper_hardening(32), "--entrypoint", "python3", self.state.base_image, "-c", PAUSE,
        )  # fmt: skip
        pod.ip = container_ip(pod.pause, self.state.project)

    def volumes(self, pod: Pod) -> dict[str, tuple[str, str]]:
        """Each volume of the pod, once (its containers share it): name -> (kind, source)."""
        fs_group = (pod.spec.get("securityContext") or {}).get("fsGroup")
        volumes: dict[str, tuple[str, str]] = {}
        for volume in pod.spec.get("volumes") or []:
            name = volume["name"]
            if "emptyDir" in volume:
                docker_name = f"{self.state.project}-{pod.name}-{name}"
                docker(
                    "volume", "create", "--label", f"{LABEL}={self.state.project}",
                    "--driver", "local", "--opt", "type=tmpfs", "--opt", "device=tmpfs",
                    "--opt", f"o={emptydir_options(volume, fs_group)}", docker_name,
                )  # fmt: skip
                volumes[name] = ("emptyDir", docker_name)
            elif "configMap" in volume or "secret" in volume:
                target = Path(self.state.workdir) / "volumes" / pod.name / name
                self.project_volume(volume, target, pod.name, fs_group)
                volumes[name] = ("projection", str(target))
            else:
                kinds = sorted(set(volume) - {"name"})
                raise Fail(f"pod {pod.name}: volume {name!r} of type {kinds} is not emulated")
        return volumes

    def project_volume(self, volume: Obj, target: Path, pod: str, group: int | None) -> None:
        kind = "ConfigMap" if "configMap" in volume else "Secret"
        source = volume.get("configMap") or volume.get("secret") or {}
        name = str(source.get("name") or source.get("secretName"))
        where = f"pod {pod}: volume {volume['name']!r}: {kind} {name!r}"
        data = self.manifests.config_data(kind, name)
        if data is None and not source.get("optional"):
            raise Fail(f"{where} does not exist (the pod would stay ContainerCreating)")
        data = data or {}
        mode = int(source.get("defaultMode", 0o644))
        files = {key: (value, mode) for key, value in data.items()}
        if source.get("items"):
            files = {}
            for item in source["items"]:
                if item["key"] in data:
                    files[item["path"]] = (data[item["key"]], int(item.get("mode", mode)))
                elif not source.get("optional"):
                    raise Fail(f"{where} has no key {item['key']!r}")
        write_projection(target, files, group)

    def env(self, pod: Pod, container: Obj, context: dict[str, str]) -> dict[str, str]:
        """The container's environment, in the kubelet's order and precedence."""
        where = f"container {container['name']!r} of pod {pod.name}"
        links = self.service_env
        if not pod.spec.get("enableServiceLinks", True):
            links = {k: v for k, v in links.items() if k.startswith("KUBERNETES_")}
        env: dict[str, str] = {}

        def lookup(name: str) -> str | None:
            return env.get(name, links.get(name))

        for source in container.get("envFrom") or []:
            kind = "ConfigMap" if "configMapRef" in source else "Secret"
            ref = source.get("configMapRef") or source.get("secretRef") or {}
            data = self.manifests.config_data(kind, ref["name"])
            if data is None and not ref.get("optional"):
                raise Fail(f"{where}: envFrom {kind} {ref['name']!r} does not exist")
            for key, content in (data or {}).items():
                if _ENV_NAME.match(var_name := source.get("prefix", "") + key):
                    env[var_name] = content.decode()
        for var in container.get("env") or []:
            value = self.env_value(var, pod, container, context, lookup)
            if value is not None:
                env[var["name"]] = value
        return links | env

    def env_value(
        self, var: Obj, pod: Pod, container: Obj, context: dict[str, str], lookup: Lookup
    ) -> str | None:
        where = f"container {container['name']!r} of pod {pod.name}: env {var['name']}"
        source = var.get("valueFrom")
        if not source:
            return expand(str(var.get("value", "")), lookup)
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            if path.startswith(("metadata.labels[", "metadata.annotations[")):
                return context.get(path.replace('"', "'"), "")
            if path not in context:
                raise Fail(f"{where}: fieldRef {path!r} is not emulated")
            return context[path]
        if "resourceFieldRef" in source:
            return resource_field(source["resourceFieldRef"], pod.spec["containers"], container)
        kind = "ConfigMap" if "configMapKeyRef" in source else "Secret"
        ref = source.get("configMapKeyRef") or source.get("secretKeyRef")
        if ref is None:
            raise Fail(f"{where}: valueFrom {sorted(source)} is not emulated")
        data = self.manifests.config_data(kind, ref["name"])
        if data is not None and ref["key"] in data:
            return data[ref["key"]].decode()
        if ref.get("optional"):
            return None
        missing = "does not exist" if data is None else f"has no key {ref['key']!r}"
        raise Fail(f"{where}: {kind} {ref['name']!r} {missing} (CreateContainerConfigError)")

    def image_user(self, image: str) -> str:
        if image not in self.image_users:
            self.image_users[image] = docker(
                "image", "inspect", "-f", "{{.Config.User}}", image, check=False
            )
        return self.image_users[image]

    def start(
        self, pod: Pod, spec: Obj, context: dict[str, str], volumes: dict[str, tuple[str, str]],
        *, role: str, init: bool = False,
    ) -> Container:  # fmt: skip
        where = f"container {spec['name']!r} of pod {pod.name}"
        docker_name = f"{pod.pause}-{spec['name']}"
        env = self.env(pod, spec, context)
        security = merged_security(pod.spec, spec)
        args = [
            "--name", docker_name, *self.labels(pod, role), "--network", f"container:{pod.pause}",
            "--no-healthcheck", "--pull", pull_policy(spec), "--stop-timeout", str(pod.grace),
        ]  # fmt: skip
        if pod.spec.get("shareProcessNamespace"):
            args += ["--pid", f"container:{pod.pause}"]
        args += user_args(security, self.image_user(spec["image"]), where)
        args += hardening_args(security, where) + resource_args(spec.get("resources"))
        args += ["--workdir", spec["workingDir"]] if spec.get("workingDir") else []
        args += opts("--env", [f"{k}={v}" for k, v in env.items()])
        args += opts(
            "--mount", [mount_spec(m, volumes, where) for m in spec.get("volumeMounts") or []]
        )
        entry, positional = entrypoint_args(spec, env)
        if init:
            docker("run", *args, *entry, spec["image"], *positional, timeout=600, check=False)
            if (code := container_state(docker_name)["ExitCode"]) != 0:
                raise Fail(f"init {where} exited {code}:\n{docker_logs(docker_name, 50)}")
        else:
            docker("run", "-d", *args, *entry, spec["image"], *positional)
        return Container(spec["name"], docker_name, spec, init=init, started=time.monotonic())


def mount_spec(mount: Obj, volumes: dict[str, tuple[str, str]], where: str) -> str:
    if mount["name"] not in volumes:
        raise Fail(f"{where}: volumeMount {mount['name']!r} names no volume of the pod")
    kind, source = volumes[mount["name"]]
    dst = mount["mountPath"]
    if kind == "emptyDir":
        if mount.get("subPath"):
            raise Fail(f"{where}: subPath on an emptyDir is not emulated")
        spec = f"type=volume,src={source},dst={dst},volume-nocopy=true"
        return spec + (",readonly" if mount.get("readOnly") else "")
    src = Path(source).resolve()
    if mount.get("subPath"):
        src = (src / mount["subPath"]).resolve()
        if not src.is_relative_to(Path(source).resolve()) or not src.exists():
            raise Fail(f"{where}: subPath {mount['subPath']!r} is not in volume {mount['name']!r}")
    # configMap and secret volumes are always read-only in Kubernetes.
    return f"type=bind,src={src},dst={dst},readonly"


def resource_field(ref: Obj, containers: list[Obj], own: Obj) -> str:
    name = ref.get("containerName")
    container = next((c for c in containers if c["name"] == name), own) if name else own
    kind, _, resource = ref["resource"].partition(".")
    value = ((container.get("resources") or {}).get(kind) or {}).get(resource)
    if value is not None:
        amount = parse_quantity(value)
    elif resource == "cpu":  # unset: the node's allocatable, as the kubelet answers
        amount = Decimal(os.cpu_count() or 1)
    elif resource == "memory":
        amount = Decimal(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    else:
        raise Fail(f"resourceFieldRef {ref['resource']} has no value")
    return str(math.ceil(amount / parse_quantity(ref.get("divisor", "1"))))


def helper_hardening(memory_mb: int) -> list[str]:
    """The pause and forwarder containers: not the chart's, but as locked down."""
    return [
        "--user", HELPER_USER, "--read-only", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges", "--memory", f"{memory_mb}m", "--no-healthcheck",
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------
# Probes


@dataclass
class ProbeResult:
    ok: bool
    detail: str


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls = 0
        self.failures = 0

    def add(self, ok: bool) -> None:
        with self.lock:
            self.calls += 1
            self.failures += 0 if ok else 1


PROBES = Tally()


def describe_probe(probe: Obj, pod: Pod, container: Container) -> str:
    what = f"container {container.name}"
    if "httpGet" in probe:
        h = probe["httpGet"]
        port = resolve_port(h["port"], [container.spec], what)
        scheme = h.get("scheme", "HTTP").lower()
        return f"GET {scheme}://{h.get('host') or pod.ip}:{port}{h.get('path', '/')}"
    if "tcpSocket" in probe:
        t = probe["tcpSocket"]
        return f"TCP {t.get('host') or pod.ip}:{resolve_port(t['port'], [container.spec], what)}"
    if "exec" in probe:
        return f"exec {shlex.join(probe['exec']['command'])}"
    raise Fail(f"{pod.where(container)}: probe {sorted(probe)} is not emulated (grpc?)")


def call_probe(probe: Obj, pod: Pod, container: Container) -> ProbeResult:
    """One call of a probe, as the kubelet makes it; never raises for a failed call."""
    what = describe_probe(probe, pod, container)
    timeout = float(probe.get("timeoutSeconds", 1))
    try:
        if "httpGet" in probe:
            result = http_probe(probe["httpGet"], pod, container, timeout)
        elif "tcpSocket" in probe:
            t = probe["tcpSocket"]
            port = resolve_port(t["port"], [container.spec], container.name)
            with socket.create_connection((t.get("host") or pod.ip, port), timeout=timeout):
                result = ProbeResult(True, "connected")
        else:
            done = run(
                ["docker", "exec", container.docker_name, *probe["exec"]["command"]], timeout + 5
            )
            result = ProbeResult(
                done.returncode == 0, f"exit {done.returncode} {done.stdout[-80:]!r}"
            )
    except (OSError, http.client.HTTPException, subprocess.TimeoutExpired) as exc:
        result = ProbeResult(False, repr(exc))
    PROBES.add(result.ok)
    return ProbeResult(result.ok, f"{what} -> {result.detail}")


def http_probe(h: Obj, pod: Pod, container: Container, timeout: float) -> ProbeResult:
    host = h.get("host") or pod.ip
    port = resolve_port(h["port"], [container.spec], container.name)
    headers = {"User-Agent": PROBE_USER_AGENT, "Accept": "*/*"}
    headers |= {x["name"]: x["value"] for x in h.get("httpHeaders") or []}
    conn: http.client.HTTPConnection
    if h.get("scheme", "HTTP").upper() == "HTTPS":
        # The kubelet does not verify a probe's certificate either.
        context = ssl._create_unverified_context()  # noqa: S323
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", h.get("path") or "/", headers=headers)
        response = conn.getresponse()
        body = response.read(200)
    finally:
        conn.close()
    return ProbeResult(200 <= response.status < 400, f"{response.status} {body[:60]!r}")


def check_running(pod: Pod, container: Container) -> None:
    status = container_state(container.docker_name)
    if status["Status"] != "running":
        raise Fail(
            f"{pod.where(container)} is {status['Status']} (exit {status['ExitCode']}, "
            f"OOMKilled {status['OOMKilled']}): the kubelet would restart it\n"
            + docker_logs(container.docker_name, 40)
        )


@dataclass
class Prober:
    """One probe of one container, with the kubelet's counting."""

    pod: Pod
    container: Container
    kind: str

    @property
    def probe(self) -> Obj:
        probe: Obj = self.container.spec[self.kind]
        return probe

    def seconds(self, key: str, default: float) -> float:
        return float(self.probe.get(key, default))

    def wait_ok(self, started: float, deadline: float, *, threshold_fails: bool) -> str:
        """Probe on the period until it succeeds successThreshold times in a row.
        Fails after failureThreshold failures in a row when `threshold_fails`, and at the
        deadline in any case."""
        where = f"{self.pod.where(self.container)} {self.kind}"
        threshold = int(self.seconds("failureThreshold", 3))
        needed = int(self.seconds("successThreshold", 1))
        time.sleep(max(0.0, started + self.seconds("initialDelaySeconds", 0) - time.monotonic()))
        calls = failures = in_a_row = successes = 0
        while True:
            check_running(self.pod, self.container)
            result = call_probe(self.probe, self.pod, self.container)
            calls += 1
            if result.ok:
                in_a_row, successes = 0, successes + 1
                if successes >= needed:
                    return f"{where}: {result.detail} ({calls} call(s), {failures} failed)"
            else:
                failures, in_a_row, successes = failures + 1, in_a_row + 1, 0
                if threshold_fails and in_a_row >= threshold:
                    raise Fail(f"{where} failed {in_a_row} times in a row; last: {result.detail}")
            if time.monotonic() > deadline:
                raise Fail(f"{where} did not succeed in {calls} call(s); last: {result.detail}")
            time.sleep(self.seconds("periodSeconds", 10))


def bring_up(pod: Pod, container: Container, deadline: float) -> list[str]:
    """Wait for one container as the kubelet does: the startupProbe, then liveness and
    readiness at once. Fails where the kubelet would kill the container (a startup or
    liveness probe reaching failureThreshold), and where the pod would not get ready."""
    spec, lines = container.spec, []
    started = container.started  # initialDelaySeconds count from the container's start
    startup = "startupProbe" in spec
    if startup:
        lines.append(
            Prober(pod, container, "startupProbe").wait_ok(started, deadline, threshold_fails=True)
        )
    after = time.monotonic() if startup else started
    kinds = [k for k in ("livenessProbe", "readinessProbe") if k in spec]
    lines += parallel(
        [
            partial(
                Prober(pod, container, kind).wait_ok,
                after,
                deadline,
                threshold_fails=kind == "livenessProbe" or startup,
            )
            for kind in kinds
        ]
    )
    missing = [k for k in PROBE_KINDS if k not in spec]
    if missing:
        lines.append(f"{pod.where(container)}: no {', no '.join(missing)}")
    return lines


def parallel(jobs: Sequence[Callable[[], Any]]) -> list[Any]:
    """Run the jobs in threads, wait for all; re-raise the first failure."""
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = jobs[i]()
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


# ---------------------------------------------------------------------------------------
# Services


def tcp_state(host: str, port: int, timeout: float = 2.0) -> str:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return "open"
    except ConnectionRefusedError:
        return "refused"
    except OSError as exc:
        return f"unreachable ({exc!r})"


def update_endpoints(state: State, leaving: Iterable[str] = (), verbose: bool = False) -> None:
    """Point every Service at the ready pods it selects (but `leaving`), as the endpoints
    controller does; a target the pod refuses is left out (see the module docstring)."""
    gone = set(leaving)
    for service in state.services:
        ready = [
            pod
            for pod in state.pods
            if selector_matches(service.selector, pod.labels) and pod.ready and pod.name not in gone
        ]
        ports = []
        for port in service.ports:
            targets = []
            for pod in ready:
                what = f"Service {service.name} port {port.get('name') or port['port']}"
                number = resolve_port(
                    port.get("targetPort") or port["port"],
                    [c.spec for c in pod.app_containers()],
                    what,
                )
                if (status := tcp_state(pod.ip, number)) == "open":
                    targets.append([pod.ip, number])
                if verbose:
                    target = f"{pod.name} {pod.ip}:{number}"
                    say(f"endpoints: {service.name}:{port['port']} -> {target} ({status})")
            ports.append({"name": port.get("name", ""), "port": port["port"], "targets": targets})
        path = Path(service.endpoints_file)
        path.with_suffix(".tmp").write_text(json.dumps({"service": service.name, "ports": ports}))
        path.with_suffix(".tmp").chmod(0o644)
        path.with_suffix(".tmp").replace(path)


def start_services(state: State, manifests: Manifests, publish: dict[tuple[str, int], int]) -> None:
    """A forwarder container per Service, with no endpoints yet (every port refuses)."""
    script = Path(state.workdir) / "forwarder" / "service_forwarder.py"
    script.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    shutil.copyfile(FORWARDER, script)
    script.chmod(0o644)
    ns = state.namespace
    for svc in manifests.of_kind("Service"):
        name, spec = svc["metadata"]["name"], svc["spec"]
        if spec.get("type") == "ExternalName" or spec.get("clusterIP") == "None":
            say(f"Service {name}: {spec.get('type') or 'headless'} is not emulated")
            continue
        config = Path(state.workdir) / "services" / name
        config.mkdir(mode=0o755, parents=True, exist_ok=True)
        aliases = [name, f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.{CLUSTER_DOMAIN}"]
        published = [
            f"127.0.0.1:{publish[(name, int(p['port']))]}:{p['port']}"
            for p in spec["ports"]
            if (name, int(p["port"])) in publish
        ]
        service = Service(
            name, f"{state.project}-svc-{name}", "", spec["ports"], spec.get("selector"),
            str(config / "endpoints.json"),
        )  # fmt: skip
        state.services.append(service)
        update_endpoints(state)
        docker(
            "run", "-d", "--name", service.docker_name, "--label", f"{LABEL}={state.project}",
            "--label", f"{ROLE_LABEL}=service", "--network", state.project,
            *opts("--network-alias", aliases), *opts("--publish", published),
            *helper_hardening(128),
            "--mount", f"type=bind,src={script},dst=/forwarder.py,readonly",
            "--mount", f"type=bind,src={config},dst=/config,readonly",
            "--entrypoint", "python3", state.base_image, "/forwarder.py", "/config/endpoints.json",
        )  # fmt: skip
        service.ip = container_ip(service.docker_name, state.project)
        ports = ", ".join(str(p["port"]) for p in spec["ports"])
        say(f"Service {name}: ClusterIP {service.ip}, ports {ports}, names {', '.join(aliases)}")


def check_services(state: State) -> list[str]:
    """Each Service port from the host: open with endpoints, refused without; and every
    Service name resolving to its ClusterIP inside a pod."""
    lines: list[str] = []
    for service in state.services:
        if service.selector and not any(
            selector_matches(service.selector, p.labels) for p in state.pods
        ):
            raise Fail(f"Service {service.name} selects no pod: selector {service.selector}")
        for port in json.loads(Path(service.endpoints_file).read_text())["ports"]:
            want = "open" if port["targets"] else "refused"
            deadline = time.monotonic() + 10
            while (
                got := tcp_state(service.ip, port["port"])
            ) != want and time.monotonic() < deadline:
                time.sleep(0.2)
            if got != want:
                raise Fail(f"Service {service.name} port {port['port']}: {got}, expected {want}")
            behind = (
                f"{len(port['targets'])} endpoint(s)" if port["targets"] else "nothing listening"
            )
            lines.append(
                f"Service {service.name}:{port['port']} ({port['name'] or '-'}) {got}: {behind}"
            )
    pod = next((p for p in state.pods if p.app_containers()), None)
    if pod is not None and state.services:
        ns = state.namespace
        names = {
            name: s.ip
            for s in state.services
            for name in (
                s.name,
                f"{s.name}.{ns}",
                f"{s.name}.{ns}.svc",
                f"{s.name}.{ns}.svc.{CLUSTER_DOMAIN}",
            )
        }
        code = (
            "import json, socket, sys; "
            "print(json.dumps({n: socket.gethostbyname(n) for n in sys.argv[1:]}))"
        )
        got = json.loads(
            docker("exec", pod.app_containers()[0].docker_name, "python3", "-c", code, *names)
        )
        if wrong := {n: (got.get(n), ip) for n, ip in names.items() if got.get(n) != ip}:
            raise Fail(f"Service names resolve wrongly in pod {pod.name} (got, want): {wrong}")
        lines.append(
            f"DNS in pod {pod.name}: all {len(names)} Service names resolve to their ClusterIPs"
        )
    return lines


# ---------------------------------------------------------------------------------------
# Subcommands


def cmd_up(args: argparse.Namespace) -> None:
    manifests = Manifests.load(args.manifests)
    Path(args.state).mkdir(parents=True, exist_ok=True)
    state = State(
        args.project, args.namespace, str(args.state), args.base_image,
        [str(Path(p).resolve()) for p in args.manifests],
    )  # fmt: skip
    kinds = sorted({o["kind"] for o in manifests.objects})
    say(f"rendered: {', '.join(kinds)}")
    if ignored := sorted(
        set(kinds) - {"Deployment", "Service", "ConfigMap", "Secret", "Pod", "ServiceAccount"}
    ):
        say(f"not emulated: {', '.join(ignored)}")
    for obj in manifests.objects:
        if obj["metadata"].get("namespace") not in (None, args.namespace):
            raise Fail(
                f"{obj['kind']} {obj['metadata']['name']} is not in namespace {args.namespace}"
            )
    publish = {}
    for item in args.publish:
        service_port, _, host_port = item.partition("=")
        service, _, port = service_port.rpartition(":")
        publish[(service, int(port))] = int(host_port)

    docker("network", "create", "--label", f"{LABEL}={state.project}", state.project)
    state.host_ip = docker(
        "network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", state.project
    )
    state.save()
    start_services(state, manifests, publish)
    state.save()
    if unknown := set(publish) - {
        (s.name, int(p["port"])) for s in state.services for p in s.ports
    }:
        raise Fail(f"--publish names no Service port: {sorted(unknown)}")
    maker = PodMaker(state, manifests, state.service_env())
    for deployment in manifests.of_kind("Deployment"):
        name = deployment["metadata"]["name"]
        template = json.loads(json.dumps(deployment["spec"]["template"]))
        pod_hash = pod_template_hash(template)
        template.setdefault("metadata", {}).setdefault("labels", {})["pod-template-hash"] = pod_hash
        selector = deployment["spec"]["selector"].get("matchLabels") or {}
        if not selector_matches(selector, template["metadata"]["labels"]):
            raise Fail(
                f"Deployment {name}: its selector {selector} does not match its pods' labels"
            )
        replicas = manifests.replicas(deployment)
        say(f"Deployment {name}: {replicas} pod(s)")
        for _ in range(replicas):
            state.pods.append(
                maker.make(f"{name}-{pod_hash}-{random_suffix()}", template, "container")
            )
            state.save()

    # Every container at once, each on its own clock, as the kubelets of a cluster would.
    deadline = time.monotonic() + args.timeout
    jobs = [partial(bring_up, p, c, deadline) for p in state.pods for c in p.app_containers()]
    for lines in parallel(jobs):
        for line in lines:
            say(f"probe {line}")
    for pod in state.pods:
        pod.ready = True
    update_endpoints(state, verbose=True)
    state.save()
    for line in check_services(state):
        say(line)
    write_env(state, args.publish, Path(args.state) / "e2e.env")
    containers = sum(len(p.app_containers()) for p in state.pods)
    declared = sum(k in c.spec for p in state.pods for c in p.app_containers() for k in PROBE_KINDS)
    say(
        f"up: {len(state.pods)} pod(s), {containers} container(s), {len(state.services)} "
        f"Service(s); all {declared} declared probes passed ({PROBES.calls} calls, "
        f"{PROBES.failures} failed while starting)"
    )


def write_env(state: State, publish: list[str], path: Path) -> None:
    """For the caller's shell: the published Service, and the first pod behind it."""
    values = {"E2E_CHART_NETWORK": state.project}
    if publish:
        service_port, _, host_port = publish[0].partition("=")
        name, _, port = service_port.rpartition(":")
        service = next(s for s in state.services if s.name == name)
        declared = next(p for p in service.ports if int(p["port"]) == int(port))
        pod = next(p for p in state.pods if selector_matches(service.selector, p.labels))
        containers = [c.spec for c in pod.app_containers()]
        target = resolve_port(declared.get("targetPort", port), containers, name)
        values |= {
            "E2E_BASE_URL": f"http://127.0.0.1:{host_port}",
            "E2E_POD_NAME": pod.name,
            "E2E_POD_CONTAINER": pod.app_containers()[0].docker_name,
            "E2E_POD_URL": f"http://127.0.0.1:{target}",
        }
    path.write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items()))


def cmd_helm_test(args: argparse.Namespace) -> None:
    state = State.load(args.state)
    manifests = Manifests.load(state.manifests)
    if not (pods := manifests.test_pods()):
        raise Fail("no helm test pod was rendered")
    maker = PodMaker(state, manifests, state.service_env())
    for obj in pods:
        name, spec = obj["metadata"]["name"], obj["spec"]
        if spec.get("restartPolicy") not in ("Never", "OnFailure"):
            raise Fail(f"helm test pod {name}: restartPolicy {spec.get('restartPolicy')!r}")
        started = time.monotonic()
        pod = maker.make(name, {"metadata": obj["metadata"], "spec": spec}, "test")
        limit = float(spec.get("activeDeadlineSeconds", args.timeout))
        for container in pod.app_containers():
            while (status := container_state(container.docker_name))["Status"] == "running":
                if time.monotonic() - started > limit:
                    raise Fail(f"helm test pod {name}: still running after {limit:.0f} s")
                time.sleep(0.5)
            for line in docker_logs(container.docker_name).strip().splitlines():
                say(f"  {pod.where(container)} | {line}")
            took = time.monotonic() - started
            say(f"helm test {pod.where(container)}: exit {status['ExitCode']} after {took:.1f} s")
            if status["ExitCode"] != 0:
                raise Fail(f"helm test {pod.where(container)} failed")
        # helm.sh/hook-delete-policy: hook-succeeded
        docker("rm", "-f", *[c.docker_name for c in pod.containers], pod.pause, check=False)
    say(f"helm test: {len(pods)} pod(s) passed")


class Kubelet:
    """Liveness and readiness probes on their periods, as the kubelet runs them; a pod
    that is not ready leaves its Services and comes back when it is."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.problems: list[str] = []
        self.tallies: dict[str, Tally] = {}

    def problem(self, text: str) -> None:
        with self.lock:
            if text not in self.problems:
                self.problems.append(text)
                say(f"kubelet: {text}")

    def set_ready(self, pod: Pod, ready: bool) -> None:
        with self.lock:
            pod.ready = ready
            update_endpoints(self.state)

    def watch(self, prober: Prober) -> None:
        pod = prober.pod
        key = f"{pod.where(prober.container)} {prober.kind}"
        tally = self.tallies[key] = Tally()
        threshold = int(prober.seconds("failureThreshold", 3))
        needed = int(prober.seconds("successThreshold", 1))
        in_a_row = successes = 0
        while not self.stop.wait(prober.seconds("periodSeconds", 10)):
            result = call_probe(prober.probe, pod, prober.container)
            tally.add(result.ok)
            if result.ok:
                in_a_row, successes = 0, successes + 1
                if prober.kind == "readinessProbe" and not pod.ready and successes >= needed:
                    self.set_ready(pod, True)
                    say(f"kubelet: {key}: ready again, back in its Services")
                continue
            in_a_row, successes = in_a_row + 1, 0
            say(f"kubelet: {key} failed ({in_a_row}/{threshold}): {result.detail}")
            if in_a_row == threshold and prober.kind == "livenessProbe":
                self.problem(f"{key} reached failureThreshold: the kubelet would restart it")
            elif in_a_row == threshold:
                self.problem(f"{key} reached failureThreshold: the pod left its Services")
                self.set_ready(pod, False)

    def alive(self) -> None:
        while not self.stop.wait(2):
            for pod in self.state.pods:
                for container in pod.app_containers():
                    try:
                        check_running(pod, container)
                    except Fail as exc:
                        self.problem(str(exc))

    def run(self) -> int:
        probers = [
            Prober(pod, container, kind)
            for pod in self.state.pods
            for container in pod.app_containers()
            for kind in ("livenessProbe", "readinessProbe")
            if kind in container.spec
        ]
        threads = [threading.Thread(target=self.alive, daemon=True)]
        threads += [threading.Thread(target=self.watch, args=(p,), daemon=True) for p in probers]
        for thread in threads:
            thread.start()
        say(f"kubelet: {len(probers)} liveness and readiness probes on their periods")
        while not self.stop.wait(0.5):
            pass
        for thread in threads:
            thread.join(timeout=15)
        calls = sum(t.calls for t in self.tallies.values())
        failures = sum(t.failures for t in self.tallies.values())
        say(f"kubelet: {calls} probe calls while the tests ran, {failures} failed")
        for key, tally in sorted(self.tallies.items()):
            say(f"kubelet:   {key}: {tally.calls} call(s), {tally.failures} failed")
        for problem in self.problems:
            say(f"kubelet: FAIL {problem}")
        return 1 if self.problems else 0


def cmd_kubelet(args: argparse.Namespace) -> int:
    """Probe until SIGTERM (see Kubelet); exit 1 if a probe reached its failureThreshold."""
    kubelet = Kubelet(State.load(args.state))
    signal.signal(signal.SIGTERM, lambda *_: kubelet.stop.set())
    signal.signal(signal.SIGINT, lambda *_: kubelet.stop.set())
    return kubelet.run()


def cmd_stop(args: argparse.Namespace) -> None:
    """Delete every pod as Kubernetes does: out of its Services, preStop, SIGTERM, grace."""
    state = State.load(args.state)
    update_endpoints(state, leaving=[p.name for p in state.pods])
    say("stop: every pod has left its Services; preStop hooks, then SIGTERM")

    def pre_stop(pod: Pod, container: Container) -> str:
        hook = (container.spec.get("lifecycle") or {}).get("preStop") or {}
        if not hook:
            return f"{pod.where(container)}: no preStop hook"
        if "exec" not in hook:
            raise Fail(f"{pod.where(container)}: preStop {sorted(hook)} is not emulated")
        command = hook["exec"]["command"]
        started = time.monotonic()
        done = run(["docker", "exec", container.docker_name, *command], pod.grace + 5)
        if done.returncode != 0:
            output = (done.stdout + done.stderr).strip()[-300:]
            raise Fail(f"{pod.where(container)}: preStop exited {done.returncode}: {output}")
        took = time.monotonic() - started
        return f"{pod.where(container)} preStop {shlex.join(command)}: exit 0 after {took:.1f} s"

    def terminate(pod: Pod, container: Container, grace_left: int) -> str:
        started = time.monotonic()
        docker("stop", "--time", str(grace_left), container.docker_name, timeout=grace_left + 30)
        code = container_state(container.docker_name)["ExitCode"]
        took = time.monotonic() - started
        line = f"{pod.where(container)} SIGTERM: exit {code} after {took:.1f} s"
        line += f" ({grace_left} s of the grace period left)"
        if code != 0 or took >= grace_left:
            raise Fail(f"{line}: not a clean stop within terminationGracePeriodSeconds {pod.grace}")
        return line

    def delete(pod: Pod) -> list[str]:
        started = time.monotonic()
        lines = parallel([partial(pre_stop, pod, c) for c in pod.app_containers()])
        grace_left = max(2, math.ceil(pod.grace - (time.monotonic() - started)))
        lines += parallel([partial(terminate, pod, c, grace_left) for c in pod.app_containers()])
        docker("stop", "--time", "5", pod.pause, check=False)
        return lines

    for lines in parallel([partial(delete, p) for p in state.pods]):
        for line in lines:
            say(f"stop: {line}")
    say(f"stop: {len(state.pods)} pod(s) deleted, each within its grace period")


def project_objects(kind: str, project: str) -> list[str]:
    listing = {
        "container": ["ps", "-aq"],
        "volume": ["volume", "ls", "-q"],
        "network": ["network", "ls", "-q"],
    }
    return docker(*listing[kind], "--filter", f"label={LABEL}={project}", check=False).split()


def cmd_logs(args: argparse.Namespace) -> None:
    for cid in project_objects("container", args.project):
        info = json.loads(docker("inspect", cid))[0]
        role = info["Config"]["Labels"].get(ROLE_LABEL, "")
        st = info["State"]
        head = f"{info['Name'].lstrip('/')} [{role}] {st['Status']}"
        head += f" exit={st['ExitCode']} oom={st['OOMKilled']}"
        print(f"===== {head} =====", file=sys.stderr)
        if role != "pause":
            sys.stderr.write(docker_logs(cid, args.tail))
    sys.stderr.flush()


def cmd_down(args: argparse.Namespace) -> None:
    containers = project_objects("container", args.project)
    if containers:
        docker("rm", "-f", "-v", *containers, timeout=180, check=False)
    volumes = project_objects("volume", args.project)
    if volumes:
        docker("volume", "rm", "-f", *volumes, check=False)
    networks = project_objects("network", args.project)
    if networks:
        docker("network", "rm", *networks, check=False)
    counts = f"{len(containers)} container(s), {len(volumes)} volume(s), {len(networks)} network(s)"
    say(f"down: removed {counts}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="network, Services and pods; wait for every probe")
    up.add_argument(
        "--manifests", nargs="+", required=True, help="rendered objects (+ existing ones)"
    )
    up.add_argument("--project", required=True, help="names the network and labels everything")
    up.add_argument("--namespace", default="platform")
    up.add_argument(
        "--base-image", default=os.environ.get("BASE_IMAGE", "platform-python-base:3.13-trixie")
    )
    up.add_argument("--publish", action="append", default=[], metavar="SERVICE:PORT=HOSTPORT")
    up.add_argument("--timeout", type=float, default=180, help="seconds for every probe to pass")
    test = sub.add_parser("helm-test", help="the helm test pods; each must exit 0")
    test.add_argument("--timeout", type=float, default=300)
    sub.add_parser("kubelet", help="probe until SIGTERM; exit 1 on a restart or NotReady")
    sub.add_parser("stop", help="delete the pods: preStop, SIGTERM, grace period")
    for name in ("up", "helm-test", "kubelet", "stop"):
        sub.choices[name].add_argument("--state", required=True, help="the run's work directory")
    for name, help_ in (
        ("logs", "state and logs of every container"),
        ("down", "remove everything"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--project", required=True)
    sub.choices["logs"].add_argument("--tail", type=int, default=200)
    args = parser.parse_args(argv)
    commands: dict[str, Callable[[argparse.Namespace], int | None]] = {
        "up": cmd_up, "helm-test": cmd_helm_test, "kubelet": cmd_kubelet,
        "stop": cmd_stop, "logs": cmd_logs, "down": cmd_down,
    }  # fmt: skip
    try:
        return commands[args.command](args) or 0
    except Fail as exc:
        say(f"FAIL: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
