"""The Kubernetes manifests under k8s/: each kustomization renders offline, validates strictly
against the Kubernetes schemas, and keeps the deployment policies this project relies on.

Rendering needs ``kubectl`` (built-in kustomize). Without it these tests fail under CI
(``CI=true``) and are skipped elsewhere.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from ftaas_core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
TARGETS = ["base", "overlays/dev", "overlays/gpu"]
GPU_TARGETS = ["base", "overlays/gpu"]
# The oldest Kubernetes minor we support (k8s/README.md); strict schemas reject newer fields.
K8S_VERSION = "1.30"
# FTAAS_* variables that are not server settings: the SDK/CLI reads them.
SDK_VARS = {"FTAAS_BASE_URL", "FTAAS_API_KEY"}
SETTINGS_VARS = {f"FTAAS_{name.upper()}" for name in Settings.model_fields}
KEDA_GROUP = "keda.sh/"
# ScaledJob spec fields (KEDA v2 scaledjob_types.go) and the redis lists trigger's parameters.
SCALEDJOB_SPEC_KEYS = {
    "jobTargetRef",
    "pollingInterval",
    "successfulJobsHistoryLimit",
    "failedJobsHistoryLimit",
    "rolloutStrategy",
    "rollout",
    "envSourceContainerName",
    "minReplicaCount",
    "maxReplicaCount",
    "scalingStrategy",
    "triggers",
}
REDIS_TRIGGER_KEYS = {
    "address",
    "addressFromEnv",
    "host",
    "hostFromEnv",
    "port",
    "portFromEnv",
    "usernameFromEnv",
    "passwordFromEnv",
    "listName",
    "listLength",
    "activationListLength",
    "databaseIndex",
    "enableTLS",
    "unsafeSsl",
}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}


# --------------------------------------------------------------------------------- rendering


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        message = (
            "kubectl is not on PATH: it is needed to render k8s/ with its built-in kustomize "
            "(install kubectl >= 1.27)"
        )
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message)
        pytest.skip(message)
    return path


@functools.cache
def _render(target: str) -> tuple[dict[str, Any], ...]:
    return kustomize(K8S / target)


def kustomize(directory: Path) -> tuple[dict[str, Any], ...]:
    """``kubectl kustomize directory``, parsed. Any attempt to reach the network fails fast:
    rendering must be offline."""
    env = {
        **os.environ,
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "",
    }
    proc = subprocess.run(
        [kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, f"kubectl kustomize {directory} failed:\n{proc.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def render(target: str) -> list[dict[str, Any]]:
    return list(_render(target))


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc["kind"] in WORKLOAD_KINDS:
        return doc["spec"]["template"]["spec"]
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if doc["kind"] == "ScaledJob":
        return doc["spec"]["jobTargetRef"]["template"]["spec"]
    if doc["kind"] == "Pod":
        return doc["spec"]
    return None


def pod_labels(doc: dict[str, Any]) -> dict[str, str]:
    if doc["kind"] == "ScaledJob":
        return doc["spec"]["jobTargetRef"]["template"]["metadata"]["labels"]
    return doc["spec"]["template"]["metadata"]["labels"]


def pods(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        spec = pod_spec(doc)
        if spec is not None:
            yield f"{doc['kind']}/{doc['metadata']['name']}", spec


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def component(docs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """Workloads whose pods carry app.kubernetes.io/component=<name>."""
    return [
        d
        for d in docs
        if pod_spec(d) is not None and pod_labels(d).get("app.kubernetes.io/component") == name
    ]


def config_values(docs: list[dict[str, Any]]) -> dict[str, str]:
    return one(docs, "ConfigMap", "ftaas-config")["data"]


def secret_values(doc: dict[str, Any]) -> dict[str, str]:
    values = {k: base64.b64decode(v).decode() for k, v in doc.get("data", {}).items()}
    return {**values, **doc.get("stringData", {})}


def find_secret(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """A Secret by its name before kustomize's hash suffix."""
    found = [
        d
        for d in of_kind(docs, "Secret")
        if d["metadata"]["name"] == name or d["metadata"]["name"].rsplit("-", 1)[0] == name
    ]
    assert len(found) == 1, f"expected one Secret {name}, found {len(found)}"
    return found[0]


def queue_name(docs: list[dict[str, Any]]) -> str:
    return config_values(docs).get("FTAAS_QUEUE_NAME", Settings.model_fields["queue_name"].default)


def setting(docs: list[dict[str, Any]], container: dict[str, Any], name: str) -> Any:
    """A setting as ``container`` sees it: its own env, else the ConfigMap, else the default."""
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    key = f"FTAAS_{name.upper()}"
    value = env.get(key, config_values(docs).get(key))
    return Settings.model_fields[name].default if value is None else json.loads(value)


UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}


def quantity(value: str | int) -> int:
    """A Kubernetes quantity in bytes: ``2560Mi``, ``7Gi``, ``1G``, ``1024``."""
    text = str(value)
    for unit, factor in UNITS.items():
        if text.endswith(unit):
            return int(float(text.removesuffix(unit)) * factor)
    return int(text)


def disk_volumes(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The pod's emptyDirs on the node's disk (not memory-backed), by name."""
    return {
        v["name"]: v["emptyDir"]
        for v in spec.get("volumes", [])
        if "emptyDir" in v and v["emptyDir"].get("medium") != "Memory"
    }


def mount_of(container: dict[str, Any], path: str) -> str | None:
    """The volume holding ``path`` in ``container``, the deepest mount that contains it."""
    holders = [
        m
        for m in container.get("volumeMounts", [])
        if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")
    ]
    return max(holders, key=lambda m: len(m["mountPath"]))["name"] if holders else None


# --------------------------------------------------------------------- render and validation


@pytest.mark.parametrize("target", TARGETS)
def test_renders_offline(target: str) -> None:
    docs = render(target)
    assert docs, f"k8s/{target} rendered nothing"
    for path in K8S.rglob("kustomization.yaml"):
        kustomization = yaml.safe_load(path.read_text())
        for entry in kustomization.get("resources", []):
            assert "://" not in entry and not entry.startswith("github.com"), (
                f"{path.relative_to(ROOT)}: remote resource {entry!r} needs the network"
            )


def test_strict_validation_rejects_unknown_fields() -> None:
    """Guards the test below: the strict schemas really refuse a misspelt field."""
    deployment = one(render("base"), "Deployment", "ftaas-api")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


@pytest.mark.parametrize("target", TARGETS)
def test_builtin_kinds_validate_strictly(target: str) -> None:
    errors = []
    for doc in render(target):
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"].startswith(KEDA_GROUP):
            # No schema for KEDA's CRDs: its Job template is validated as a real Job instead.
            if doc["kind"] != "ScaledJob":
                continue
            doc = {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {"name": doc["metadata"]["name"]},
                "spec": doc["spec"]["jobTargetRef"],
            }
            name += " (jobTargetRef as a Job)"
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{name}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{name}: {exc.message}")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("target", TARGETS)
def test_keda_objects(target: str) -> None:
    docs = render(target)
    keda = [d for d in docs if d["apiVersion"].startswith(KEDA_GROUP)]
    assert {d["kind"] for d in keda} <= {"ScaledJob"}, "unexpected KEDA kinds"
    if target not in GPU_TARGETS:
        assert not keda, "the dev overlay runs without KEDA"
        return
    (scaled,) = keda
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert set(spec) <= SCALEDJOB_SPEC_KEYS, (
        f"unknown ScaledJob fields {set(spec) - SCALEDJOB_SPEC_KEYS}"
    )
    assert {"jobTargetRef", "triggers"} <= set(spec)
    assert spec["minReplicaCount"] == 0, "workers must scale to zero on an empty queue"
    assert spec["maxReplicaCount"] >= 1
    # rq removes a job's id from the list when a worker starts it, so running jobs are not in
    # the count: "accurate" is the strategy for such queues.
    assert spec["scalingStrategy"]["strategy"] == "accurate"
    # ... and a Job counts as pending, so no second one starts for a waiting id, until its pod
    # is Ready: until its worker is registered and taking jobs (test_one_job_per_gpu_pod).
    assert spec["scalingStrategy"]["pendingPodConditions"] == ["Ready"]
    assert spec.get("rollout", {}).get("strategy") == "gradual"

    (trigger,) = spec["triggers"]
    assert trigger["type"] == "redis"
    meta = trigger["metadata"]
    assert set(meta) <= REDIS_TRIGGER_KEYS, (
        f"unknown redis trigger keys {set(meta) - REDIS_TRIGGER_KEYS}"
    )
    assert all(isinstance(v, str) for v in meta.values()), "KEDA trigger metadata are strings"
    assert meta["listName"] == f"rq:queue:{queue_name(docs)}"
    assert meta["listName"] == "rq:queue:ftaas-training"
    assert int(meta["listLength"]) >= 1
    assert int(meta.get("activationListLength", "0")) == 0

    # The trigger reaches the in-cluster Redis Service by its cluster-wide name.
    redis = one(docs, "Service", "ftaas-redis")
    namespace = redis["metadata"]["namespace"]
    port = redis["spec"]["ports"][0]["port"]
    assert meta["address"] == f"ftaas-redis.{namespace}.svc.cluster.local:{port}"
    assert config_values(docs)["FTAAS_REDIS_URL"].startswith(f"redis://ftaas-redis:{port}/")

    job = spec["jobTargetRef"]
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    (worker,) = job["template"]["spec"]["containers"]
    assert spec["envSourceContainerName"] == worker["name"]
    assert worker["args"][:1] == ["worker"]


@pytest.mark.parametrize("target", GPU_TARGETS)
def test_one_job_per_gpu_pod(target: str) -> None:
    """A pod takes one job and exits (a burst worker would go on to a job KEDA has started
    another pod for), and it turns Ready, ending KEDA's "pending", once it takes jobs."""
    (scaled,) = of_kind(render(target), "ScaledJob")
    (worker,) = pod_spec(scaled)["containers"]
    args = worker["args"]
    assert "--one-job" in args and "--burst" not in args
    ready_file = args[args.index("--ready-file") + 1]
    assert worker["startupProbe"]["exec"]["command"] == ["test", "-e", ready_file]
    assert "readinessProbe" not in worker, "Ready must mean the startup probe passed, no more"
    assert mount_of(worker, ready_file) in disk_volumes(pod_spec(scaled))


# ------------------------------------------------------------------------------- workloads


def gpus_and_processes(docs: list[dict[str, Any]]) -> tuple[int, int, int | None]:
    """The worker's nvidia.com/gpu request and limit, and FTAAS_NPROC_PER_NODE as the worker
    and as the API see it (None: unset, one process per GPU the worker sees)."""
    (worker,) = component(docs, "worker")
    (container,) = pod_spec(worker)["containers"]
    (api,) = pod_spec(one(docs, "Deployment", "ftaas-api"))["containers"]
    resources = container["resources"]
    limit = resources["limits"]["nvidia.com/gpu"]
    request = resources["requests"].get("nvidia.com/gpu", limit)
    assert isinstance(limit, int) and isinstance(request, int), "GPU counts are integers"
    processes = setting(docs, container, "nproc_per_node")
    assert setting(docs, api, "nproc_per_node") == processes, "the API refuses QLoRA by it"
    return request, limit, processes


@pytest.mark.parametrize("target", GPU_TARGETS)
def test_gpu_workers(target: str) -> None:
    docs = render(target)
    workers = component(docs, "worker")
    assert [w["kind"] for w in workers] == ["ScaledJob"]
    request, limit, processes = gpus_and_processes(docs)
    # One GPU per pod unless the gpu overlay's knob says more (test_one_knob_sets_the_gpus...).
    assert request == limit == (processes or 1) == 1
    for worker in workers:
        spec = pod_spec(worker)
        (container,) = spec["containers"]
        resources = container["resources"]
        assert "memory" in resources["limits"] and "memory" in resources["requests"]
        assert any(
            t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule"
            for t in spec["tolerations"]
        )
        assert spec["nodeSelector"], "GPU workers need a node selector"
        shm = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
        assert shm, "GPU workers mount a larger /dev/shm"
        (volume,) = [v for v in spec["volumes"] if v["name"] == shm[0]["name"]]
        assert volume["emptyDir"]["medium"] == "Memory"
        if target == "overlays/gpu":  # NCCL between the GPUs of a pod goes through it
            assert quantity(volume["emptyDir"]["sizeLimit"]) >= quantity("16Gi")


def test_one_knob_sets_the_gpus_and_the_training_processes(tmp_path: Path) -> None:
    """The gpu overlay's FTAAS_NPROC_PER_NODE, changed in a copy of k8s/, becomes the worker's
    GPU request and limit (integers still) and the processes the workers and the API count."""
    shutil.copytree(K8S, tmp_path / "k8s")
    kustomization = tmp_path / "k8s" / "overlays" / "gpu" / "kustomization.yaml"
    text = kustomization.read_text()
    assert text.count("- FTAAS_NPROC_PER_NODE=1\n") == 1, "the knob is one line"
    kustomization.write_text(
        text.replace("- FTAAS_NPROC_PER_NODE=1\n", "- FTAAS_NPROC_PER_NODE=4\n")
    )
    request, limit, processes = gpus_and_processes(list(kustomize(kustomization.parent)))
    assert request == limit == processes == 4


def test_dev_worker_is_one_cpu_worker() -> None:
    workers = component(render("overlays/dev"), "worker")
    assert [w["kind"] for w in workers] == ["Deployment"]
    (worker,) = workers
    assert worker["spec"]["replicas"] == 1
    spec = pod_spec(worker)
    assert not spec.get("tolerations") and not spec.get("nodeSelector")
    for container in containers(spec):
        resources = container.get("resources", {})
        for section in ("requests", "limits"):
            assert "nvidia.com/gpu" not in resources.get(section, {})


@pytest.mark.parametrize("target", TARGETS)
def test_workers_drain_gracefully(target: str) -> None:
    for worker in component(render(target), "worker"):
        spec = pod_spec(worker)
        assert spec["terminationGracePeriodSeconds"] >= 120, "time to save a checkpoint"
        (container,) = spec["containers"]
        assert container["image"].split("/")[-1].startswith("ftaas-worker")
        # PID 1 must be `ftaas` itself so SIGTERM reaches it: no shell wrapper in `command`.
        assert "command" not in container
        probe = container["startupProbe"]
        assert "exec" in probe and probe["failureThreshold"] * probe["periodSeconds"] >= 300
        assert "livenessProbe" not in container, "a liveness restart would kill training"


@pytest.mark.parametrize("target", TARGETS)
def test_api(target: str) -> None:
    docs = render(target)
    deployment = one(docs, "Deployment", "ftaas-api")
    spec = pod_spec(deployment)
    (container,) = spec["containers"]
    assert container["args"] == ["serve", "--host", "0.0.0.0", "--port", "8000"]
    assert container["ports"][0]["containerPort"] == 8000
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    for section in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][section])

    labels = deployment["spec"]["selector"]["matchLabels"]
    service = one(docs, "Service", "ftaas-api")
    assert service["spec"]["selector"] == labels
    assert service["spec"]["ports"][0]["port"] == 8000
    hpa = one(docs, "HorizontalPodAutoscaler", "ftaas-api")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "ftaas-api",
    }
    assert hpa["spec"]["minReplicas"] >= (1 if target == "overlays/dev" else 2)
    pdb = one(docs, "PodDisruptionBudget", "ftaas-api")
    assert pdb["spec"]["selector"]["matchLabels"] == labels


@pytest.mark.parametrize("target", TARGETS)
def test_no_replicas_where_an_hpa_scales(target: str) -> None:
    """``kubectl apply -k`` would reset the count the HPA chose."""
    docs = render(target)
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        assert "replicas" not in one(docs, ref["kind"], ref["name"])["spec"], ref["name"]


@pytest.mark.parametrize("target", TARGETS)
def test_upload_spool_holds_the_uploads_a_replica_allows(target: str) -> None:
    docs = render(target)
    (api,) = pod_spec(one(docs, "Deployment", "ftaas-api"))["containers"]
    spool = {e["name"]: e["value"] for e in api["env"]}["FTAAS_UPLOAD_TMP_DIR"]
    volume = disk_volumes(pod_spec(one(docs, "Deployment", "ftaas-api")))[mount_of(api, spool)]
    needed = setting(docs, api, "max_upload_bytes") * setting(docs, api, "max_concurrent_uploads")
    assert quantity(volume["sizeLimit"]) > needed, "the spool needs its uploads and headroom"
    assert mount_of(api, spool) != mount_of(api, "/tmp"), "the spool is a volume of its own"


@pytest.mark.parametrize("target", TARGETS)
def test_ephemeral_storage_requests_cover_what_pods_write(target: str) -> None:
    """The scheduler places a pod where all its emptyDirs fit, and no limit evicts it sooner."""
    for doc in [*component(render(target), "api"), *component(render(target), "worker")]:
        spec = pod_spec(doc)
        (container,) = spec["containers"]
        volumes = disk_volumes(spec)
        assert all("sizeLimit" in v for v in volumes.values()), doc["metadata"]["name"]
        total = sum(quantity(v["sizeLimit"]) for v in volumes.values())
        resources = container["resources"]
        request = quantity(resources["requests"]["ephemeral-storage"])
        assert request >= total, f"{doc['metadata']['name']}: {request} < {total}"
        limit = resources.get("limits", {}).get("ephemeral-storage")
        assert limit is None or quantity(limit) >= request


# Connections a PostgreSQL accepts by default (max_connections 100), less the 3 it keeps for
# superusers (superuser_reserved_connections).
POSTGRES_CONNECTIONS = 100 - 3
# Processes with a connection pool per worker pod: the worker and its job's training process; a
# long-running (not --one-job) worker also keeps the next job's standby process.
WORKER_PROCESSES = {"ScaledJob": 2, "Deployment": 3}


def most_pods(docs: list[dict[str, Any]], doc: dict[str, Any]) -> int:
    if doc["kind"] == "ScaledJob":
        return doc["spec"]["maxReplicaCount"]
    hpas = [
        h
        for h in of_kind(docs, "HorizontalPodAutoscaler")
        if h["spec"]["scaleTargetRef"]["name"] == doc["metadata"]["name"]
    ]
    return hpas[0]["spec"]["maxReplicas"] if hpas else doc["spec"]["replicas"]


@pytest.mark.parametrize("target", TARGETS)
def test_database_connections_fit_a_default_postgres(target: str) -> None:
    """Every API and worker pod at its most, each process with its pool full, stays within
    PostgreSQL's default max_connections (k8s/README.md: Scale)."""
    docs = render(target)
    total = 0
    for doc in [*component(docs, "api"), *component(docs, "worker")]:
        (container,) = pod_spec(doc)["containers"]
        pool = setting(docs, container, "database_pool_size") + setting(
            docs, container, "database_max_overflow"
        )
        processes = WORKER_PROCESSES[doc["kind"]] if "worker" in container["args"] else 1
        total += most_pods(docs, doc) * processes * pool
    assert total <= POSTGRES_CONNECTIONS, f"{target}: up to {total} connections"


@pytest.mark.parametrize("target", TARGETS)
def test_redis(target: str) -> None:
    docs = render(target)
    redis = one(docs, "StatefulSet", "ftaas-redis")
    args = " ".join(pod_spec(redis)["containers"][0]["args"])
    assert "--appendonly yes" in args
    assert "--maxmemory-policy noeviction" in args
    assert redis["spec"]["volumeClaimTemplates"], "the append-only file needs a volume"
    assert one(docs, "Service", "ftaas-redis")["spec"]["ports"][0]["port"] == 6379
    # One replica: no voluntary eviction may take the queue down behind the operator's back.
    pdb = one(docs, "PodDisruptionBudget", "ftaas-redis")
    assert pdb["spec"]["minAvailable"] == redis["spec"]["replicas"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == redis["spec"]["selector"]["matchLabels"]


# -------------------------------------------------------------------------------- security


@pytest.mark.parametrize("target", TARGETS)
def test_restricted_security_context(target: str) -> None:
    problems = []
    for name, spec in pods(render(target)):
        pod = spec.get("securityContext", {})
        assert spec.get("automountServiceAccountToken") is False, name
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), name
        assert not any("hostPath" in v for v in spec.get("volumes", [])), name
        for c in containers(spec):
            sc = c.get("securityContext", {})
            where = f"{name} container {c['name']}"
            if not sc.get("runAsNonRoot", pod.get("runAsNonRoot")):
                problems.append(f"{where}: runAsNonRoot")
            if sc.get("runAsUser", pod.get("runAsUser")) in (None, 0):
                problems.append(f"{where}: runAsUser must be a non-zero uid")
            seccomp = sc.get("seccompProfile", pod.get("seccompProfile", {}))
            if seccomp.get("type") != "RuntimeDefault":
                problems.append(f"{where}: seccompProfile RuntimeDefault")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation false")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: readOnlyRootFilesystem true")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                problems.append(f"{where}: capabilities drop ALL")
            if sc.get("capabilities", {}).get("add") or sc.get("privileged"):
                problems.append(f"{where}: no added capabilities, not privileged")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("target", TARGETS)
def test_writable_dirs_are_volumes(target: str) -> None:
    """With a read-only root, /tmp, HF_HOME and FTAAS_DATA_DIR must be emptyDir volumes."""
    problems = []
    for doc in render(target):
        spec = pod_spec(doc)
        if spec is None:
            continue
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        serves = pod_labels(doc)["app.kubernetes.io/component"] in {"api", "worker"}
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in containers(spec):
            if "ftaas-" not in c["image"]:
                continue
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            if serves and c in spec["containers"]:
                # The API and the workers always say where their model cache and data live.
                problems += [
                    f"{name}/{c['name']}: sets no {key}"
                    for key in ("HF_HOME", "FTAAS_DATA_DIR")
                    if key not in env
                ]
            written = ("HF_HOME", "FTAAS_DATA_DIR", "FTAAS_UPLOAD_TMP_DIR")
            for path in ["/tmp", *(env[k] for k in written if k in env)]:
                holder = [m for m in mounts if path == m or path.startswith(m.rstrip("/") + "/")]
                if not holder:
                    problems.append(f"{name}/{c['name']}: {path} is not on a volume")
                elif "emptyDir" not in volumes[mounts[holder[0]]]:
                    problems.append(f"{name}/{c['name']}: {path} should be an emptyDir")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("target", TARGETS)
def test_network_policies(target: str) -> None:
    docs = render(target)
    policies = {p["metadata"]["name"]: p["spec"] for p in of_kind(docs, "NetworkPolicy")}
    deny = policies["ftaas-default-deny"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert not deny.get("ingress") and not deny.get("egress")
    dns = policies["ftaas-allow-dns"]
    assert {p["port"] for rule in dns["egress"] for p in rule["ports"]} == {53}

    api = policies["ftaas-api"]
    assert [p["port"] for rule in api["ingress"] for p in rule["ports"]] == [8000]
    redis = policies["ftaas-redis"]
    (rule,) = redis["ingress"]
    assert [p["port"] for p in rule["ports"]] == [6379]
    for peer in rule["from"]:
        assert "ipBlock" not in peer
        if "namespaceSelector" not in peer:
            (expr,) = peer["podSelector"]["matchExpressions"]
            assert expr["operator"] == "In" and set(expr["values"]) == {"api", "worker"}
    assert not redis.get("egress") and "Egress" in redis["policyTypes"]

    # Webhooks go out on exactly the ports the API accepts them for, from every process that
    # delivers them (the reconciler in the API and the workers), to any address.
    hooks = policies["ftaas-webhook-egress"]
    (expr,) = hooks["podSelector"]["matchExpressions"]
    assert expr["operator"] == "In" and set(expr["values"]) == {"api", "worker"}
    (rule,) = hooks["egress"]
    assert "to" not in rule
    allowed = json.loads(config_values(docs)["FTAAS_WEBHOOK_ALLOWED_PORTS"])
    assert sorted(p["port"] for p in rule["ports"]) == sorted(allowed)
    assert {p["protocol"] for p in rule["ports"]} == {"TCP"}

    # Every workload has a policy of its own beyond the namespace defaults.
    for doc in docs:
        if pod_spec(doc) is None:
            continue
        comp = pod_labels(doc)["app.kubernetes.io/component"]
        own = [
            p
            for n, p in policies.items()
            if n not in {"ftaas-default-deny", "ftaas-allow-dns"}
            and (
                p["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/component") == comp
                or any(comp in e["values"] for e in p["podSelector"].get("matchExpressions", []))
            )
        ]
        assert own, f"no NetworkPolicy for component {comp}"


# ---------------------------------------------------------------------------- configuration


def env_names(docs: list[dict[str, Any]]) -> dict[str, str]:
    """Every environment variable name set anywhere, mapped to where it was set."""
    names: dict[str, str] = {}
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] == "ConfigMap":
            names.update(dict.fromkeys(doc.get("data", {}), where))
        if doc["kind"] == "Secret":
            names.update(dict.fromkeys(secret_values(doc), where))
    for name, spec in pods(docs):
        for c in containers(spec):
            names.update({e["name"]: f"{name}/{c['name']}" for e in c.get("env", [])})
    return names


@pytest.mark.parametrize("target", TARGETS)
def test_ftaas_variables_are_settings(target: str) -> None:
    docs = render(target)
    example = list(yaml.safe_load_all((K8S / "base" / "secret.example.yaml").read_text()))
    unknown = {
        name: where
        for name, where in env_names(docs + example).items()
        if name.startswith("FTAAS_") and name not in SETTINGS_VARS | SDK_VARS
    }
    assert not unknown, f"not fields of ftaas.settings.Settings: {unknown}"


@pytest.mark.parametrize("target", TARGETS)
def test_settings_parse(target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ConfigMap (and any rendered Secret) load into Settings without errors."""
    docs = render(target)
    values = dict(config_values(docs))
    for secret in of_kind(docs, "Secret"):
        values.update(secret_values(secret))
    for name in list(os.environ):
        if name.startswith("FTAAS_"):
            monkeypatch.delenv(name)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.models, "FTAAS_MODELS names at least one base model"
    assert settings.storage_url and settings.storage_url.startswith("s3://")
    assert settings.redis_url and settings.s3_endpoint_url
    if target == "overlays/dev":
        assert settings.database_url and settings.database_url.startswith("postgresql://")


@pytest.mark.parametrize("target", TARGETS)
def test_env_sources_exist(target: str) -> None:
    """envFrom/valueFrom point at objects in the render, or at the Secret the operator makes."""
    docs = render(target)
    config_maps = {d["metadata"]["name"] for d in of_kind(docs, "ConfigMap")}
    secrets = {d["metadata"]["name"] for d in of_kind(docs, "Secret")}
    if target in GPU_TARGETS:
        assert not secrets, "no Secret ships with the production manifests"
        secrets = {"ftaas-secrets"}  # made by hand from base/secret.example.yaml
    for name, spec in pods(docs):
        for c in containers(spec):
            for source in c.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in config_maps, name
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets, name
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] in secrets, name


def test_secret_example_is_not_applied() -> None:
    base = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    assert "secret.example.yaml" not in base.get("resources", [])
    (example,) = yaml.safe_load_all((K8S / "base" / "secret.example.yaml").read_text())
    assert example["kind"] == "Secret" and example["metadata"]["name"] == "ftaas-secrets"
    for key, value in example["stringData"].items():
        assert "CHANGE_ME" in value, f"{key} must be a placeholder"
    assert {"FTAAS_DATABASE_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(
        example["stringData"]
    )


@pytest.mark.parametrize("target", TARGETS)
def test_images_pinned(target: str) -> None:
    for name, spec in pods(render(target)):
        for c in containers(spec):
            image = c["image"]
            repository, _, digest = image.partition("@")
            last = repository.rsplit("/", 1)[-1]
            tag = last.partition(":")[2]
            assert tag or digest.startswith("sha256:"), f"{name}: {image} has no tag or digest"
            assert tag != "latest", f"{name}: {image} is not pinned"


# -------------------------------------------------------------------------------- overlays


def test_dev_overlay_backends() -> None:
    docs = render("overlays/dev")
    one(docs, "StatefulSet", "ftaas-postgres")
    one(docs, "Service", "ftaas-postgres")
    minio = one(docs, "Deployment", "ftaas-minio")
    one(docs, "Service", "ftaas-minio")
    one(docs, "Job", "ftaas-create-bucket")

    ftaas = secret_values(find_secret(docs, "ftaas-secrets"))
    backends = secret_values(find_secret(docs, "ftaas-dev-backends"))
    url = ftaas["FTAAS_DATABASE_URL"]
    assert url.startswith("postgresql://") and "@ftaas-postgres:5432/" in url
    assert f":{backends['POSTGRES_PASSWORD']}@" in url
    assert ftaas["AWS_ACCESS_KEY_ID"] == backends["MINIO_ROOT_USER"]
    assert ftaas["AWS_SECRET_ACCESS_KEY"] == backends["MINIO_ROOT_PASSWORD"]
    for value in (*ftaas.values(), *backends.values()):
        assert "dev" in value, "dev credentials are visibly placeholders"
    assert config_values(docs)["FTAAS_S3_ENDPOINT_URL"] == "http://ftaas-minio:9000"
    assert pod_spec(minio)["containers"][0]["ports"][0]["containerPort"] == 9000


def test_dev_models_are_built_in_every_pod_that_reads_them() -> None:
    """The API (the dataset report reads the tokenizer) and the worker each have every local
    model of FTAAS_MODELS, written by an init container onto a volume the server mounts."""
    docs = render("overlays/dev")
    local = [p for p in json.loads(config_values(docs)["FTAAS_MODELS"]).values() if p[0] == "/"]
    assert local, "the dev overlay's models are built, not downloaded"
    for doc in [*component(docs, "api"), *component(docs, "worker")]:
        spec = pod_spec(doc)
        (server,) = spec["containers"]
        for path in local:
            builders = [c for c in spec.get("initContainers", []) if path in c.get("args", [])]
            assert builders, f"{doc['metadata']['name']}: nothing builds {path}"
            assert mount_of(builders[0], path) == mount_of(server, path) is not None
            assert mount_of(server, path) in disk_volumes(spec)


def test_gpu_overlay_is_bigger_and_uses_a_registry() -> None:
    base, gpu = render("base"), render("overlays/gpu")
    hpa = one(gpu, "HorizontalPodAutoscaler", "ftaas-api")["spec"]
    assert (
        hpa["minReplicas"]
        > one(base, "HorizontalPodAutoscaler", "ftaas-api")["spec"]["minReplicas"]
    )
    assert hpa["minReplicas"] >= 3
    assert (
        one(gpu, "ScaledJob", "ftaas-worker")["spec"]["maxReplicaCount"]
        >= one(base, "ScaledJob", "ftaas-worker")["spec"]["maxReplicaCount"]
    )
    for name, spec in pods(gpu):
        for c in containers(spec):
            if "ftaas-" in c["image"]:
                assert "/" in c["image"], f"{name}: {c['image']} should come from a registry"


def test_readme_covers_operations() -> None:
    readme = (K8S / "README.md").read_text()
    for needle in (
        "kubectl apply -k",
        "ftaas keys create --tenant",
        "KEDA",
        "device plugin",
        "FTAAS_DATABASE_URL",
        "FTAAS_REDIS_URL",
        "FTAAS_S3_ENDPOINT_URL",
        "SIGTERM",
        "--one-job",
        "pendingPodConditions",
        "what an outage costs",
        "max_connections",
        "FTAAS_MAX_CONCURRENT_UPLOADS",
        "FTAAS_WEBHOOK_ALLOWED_PORTS",
    ):
        assert needle in readme, f"k8s/README.md should mention {needle!r}"
