"""Static checks of the KubeRay manifests in k8s/ (no Kubernetes needed: we have none to apply them to).

Every k8s/*.yaml is read with yaml.safe_load_all. The checks are the fields the KubeRay operator (API
ray.io/v1) requires or validates (names, head / worker groups, replica bounds, RayJob spec rules), and
steprl's own rules for running there: nothing exposed outside the cluster, requests and limits on every
container, one thread per process, the shared ReadWriteMany claim mounted at the same path on every Ray pod,
and RayJob entrypoints that attach to their cluster and resume from a run_dir on that claim.
"""

import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
DOC = REPO / "docs" / "cluster.md"
DOCKERFILE = K8S / "Dockerfile.cpu"

REQUIRED = ["raycluster-cpu.yaml", "rayjob-cpu-demo.yaml", "raycluster-gpu.yaml", "rayjob-gpu.yaml"]
# RayJob file -> the RayCluster file whose spec it embeds (they must not drift apart).
EMBEDS = {"rayjob-cpu-demo.yaml": "raycluster-cpu.yaml", "rayjob-gpu.yaml": "raycluster-gpu.yaml"}
API_VERSIONS = {
    "RayCluster": "ray.io/v1",
    "RayJob": "ray.io/v1",
    "PersistentVolumeClaim": "v1",
    "Pod": "v1",
    "Service": "v1",
}
# KubeRay's limits: a RayJob's cluster is named <job>-<5 chars>, and cluster names feed Service names.
MAX_NAME = {"RayCluster": 53, "RayJob": 47}
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
GPU = "nvidia.com/gpu"
SHARED = "/shared"
# KubeRay v1 fields (RayJobSpec, RayClusterSpec, HeadGroupSpec, WorkerGroupSpec types). The API server prunes
# unknown fields of a custom resource, so a typo would be dropped without a word: list new ones here on purpose.
KNOWN_FIELDS = {
    "RayJob.spec": {
        "entrypoint",
        "rayClusterSpec",
        "clusterSelector",
        "backoffLimit",
        "activeDeadlineSeconds",
        "shutdownAfterJobFinishes",
        "ttlSecondsAfterFinished",
        "runtimeEnvYAML",
        "submissionMode",
        "submitterPodTemplate",
        "submitterConfig",
        "jobId",
        "metadata",
        "suspend",
        "entrypointNumCpus",
        "entrypointNumGpus",
        "entrypointResources",
        "deletionStrategy",
    },
    "rayClusterSpec": {
        "rayVersion",
        "enableInTreeAutoscaling",
        "autoscalerOptions",
        "authOptions",
        "headGroupSpec",
        "workerGroupSpecs",
        "headServiceAnnotations",
        "suspend",
        "gcsFaultToleranceOptions",
        "managedBy",
    },
    "headGroupSpec": {"serviceType", "headService", "enableIngress", "rayStartParams", "template"},
    "workerGroupSpec": {
        "groupName",
        "replicas",
        "minReplicas",
        "maxReplicas",
        "rayStartParams",
        "template",
        "idleTimeoutSeconds",
        "scaleStrategy",
        "numOfHosts",
        "suspend",
    },
}


def _load():
    """[(file name, document)] for every non-empty YAML document in k8s/."""
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        with open(path) as f:
            docs += [(path.name, d) for d in yaml.safe_load_all(f) if d is not None]
    return docs


DOCS = _load()
RAYJOBS = [(n, d) for n, d in DOCS if d.get("kind") == "RayJob"]
# Every RayCluster spec, standalone or embedded in a RayJob.
CLUSTER_SPECS = [(n, d.get("spec") or {}) for n, d in DOCS if d.get("kind") == "RayCluster"] + [
    (n, d["spec"]["rayClusterSpec"]) for n, d in RAYJOBS if "rayClusterSpec" in d.get("spec", {})
]


def _ray_pods(spec):
    """[(label, pod template)] for the head and each worker group of a RayCluster spec. Missing parts come
    back empty, so collection never crashes and the test about that part names it."""
    pods = [("headGroupSpec", (spec.get("headGroupSpec") or {}).get("template") or {})]
    pods += [
        (f"workerGroupSpecs[{g.get('groupName')}]", g.get("template") or {}) for g in spec.get("workerGroupSpecs") or []
    ]
    return pods


def _all_pods():
    """[(label, pod template)] for every pod any manifest creates."""
    pods = [(f"{n}: {lbl}", t) for n, s in CLUSTER_SPECS for lbl, t in _ray_pods(s)]
    pods += [(f"{n}: Pod {d['metadata']['name']}", d) for n, d in DOCS if d.get("kind") == "Pod"]
    return pods


def _pod_spec(template):
    return template.get("spec") or {}


def _containers():
    return [
        (f"{lbl} container {c.get('name')}", c) for lbl, t in _all_pods() for c in _pod_spec(t).get("containers") or []
    ]


def parse_cpu(q) -> float:
    """Kubernetes CPU quantity -> cores: 2, "2", "500m"."""
    s = str(q)
    return float(s[:-1]) / 1000 if s.endswith("m") else float(s)


_MEM_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def parse_memory(q) -> int:
    """Kubernetes memory quantity -> bytes: "8Gi", "512Mi", "1G", 1024."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i|[kMGT])?", str(q))
    if m is None:
        raise ValueError(f"not a memory quantity: {q!r}")
    return int(float(m.group(1)) * _MEM_UNITS.get(m.group(2) or "", 1))


def _entrypoint(job):
    """(config path, {key: value} overrides) of `steprl train CONFIG key=value ...`."""
    tokens = shlex.split(job["spec"]["entrypoint"])
    assert tokens[:2] == ["steprl", "train"], f"entrypoint must start with `steprl train`: {tokens}"
    assert len(tokens) >= 3 and not tokens[2].count("="), f"entrypoint names no config file: {tokens}"
    bad = [t for t in tokens[3:] if t.count("=") != 1]
    assert not bad, f"entrypoint overrides must be key=value: {bad}"
    return tokens[2], dict(t.split("=") for t in tokens[3:])


def test_quantity_parsers_against_hand_values():
    # 500m = 500/1000 = 0.5 cores; "2" = 2 cores.
    assert parse_cpu("500m") == 0.5 and parse_cpu("2") == 2.0 and parse_cpu(4) == 4.0
    # 8Gi = 8 * 1024^3 = 8589934592; 512Mi = 512 * 1024^2 = 536870912; 1G = 10^9; bare 1024 = 1024 bytes.
    assert parse_memory("8Gi") == 8589934592 and parse_memory("512Mi") == 536870912
    assert parse_memory("1G") == 10**9 and parse_memory(1024) == 1024
    with pytest.raises(ValueError, match="8GB"):
        parse_memory("8GB")


def test_required_manifests_exist():
    missing = [f for f in REQUIRED if not (K8S / f).is_file()]
    assert not missing, f"missing manifests in k8s/: {missing}"
    assert CLUSTER_SPECS and RAYJOBS


@pytest.mark.parametrize("name,doc", DOCS, ids=[f"{n}:{d.get('kind')}" for n, d in DOCS])
def test_kind_api_version_and_name(name, doc):
    kind = doc.get("kind")
    assert kind in API_VERSIONS, f"{name}: unexpected kind {kind!r} (known: {sorted(API_VERSIONS)})"
    assert doc.get("apiVersion") == API_VERSIONS[kind], f"{name}: {kind} needs apiVersion {API_VERSIONS[kind]}"
    meta_name = (doc.get("metadata") or {}).get("name")
    assert meta_name, f"{name}: {kind} has no metadata.name"
    if kind in MAX_NAME:
        assert DNS1035.match(meta_name), f"{name}: {kind} name {meta_name!r} is not a DNS-1035 label"
        assert len(meta_name) <= MAX_NAME[kind], f"{name}: {kind} name longer than {MAX_NAME[kind]} chars"


@pytest.mark.parametrize("name,spec", CLUSTER_SPECS, ids=[n for n, _ in CLUSTER_SPECS])
def test_raycluster_spec_has_what_kuberay_requires(name, spec):
    assert spec.get("rayVersion"), f"{name}: rayVersion missing (must match the image's Ray)"
    head = spec.get("headGroupSpec") or {}
    params = head.get("rayStartParams")
    assert isinstance(params, dict), f"{name}: headGroupSpec.rayStartParams must be a mapping"
    groups = spec.get("workerGroupSpecs")
    assert groups, f"{name}: workerGroupSpecs is empty"
    names = [g.get("groupName") for g in groups]
    assert all(names) and len(set(names)) == len(names), f"{name}: groupName missing or repeated: {names}"
    for g in groups:
        where = f"{name}: workerGroupSpecs[{g['groupName']}]"
        assert isinstance(g.get("rayStartParams", {}), dict), f"{where}: rayStartParams must be a mapping"
        params = {**params, **g.get("rayStartParams", {})}
        r, lo, hi = g.get("replicas"), g.get("minReplicas"), g.get("maxReplicas")
        assert all(isinstance(v, int) for v in (r, lo, hi)), f"{where}: replicas/minReplicas/maxReplicas"
        assert 0 <= lo <= r <= hi, f"{where}: needs minReplicas {lo} <= replicas {r} <= maxReplicas {hi}"
    # ray start takes strings; a bare YAML number or bool here is rejected by the CRD schema.
    bad = {k: v for k, v in params.items() if not isinstance(v, str)}
    assert not bad, f"{name}: rayStartParams values must be strings: {bad}"
    images = set()
    for lbl, t in _ray_pods(spec):
        containers = _pod_spec(t).get("containers")
        assert containers, f"{name}: {lbl}.template has no containers"
        assert containers[0].get("image"), f"{name}: {lbl}: the Ray container (first) has no image"
        images.add(containers[0]["image"])
    assert len(images) == 1, f"{name}: head and workers must run one image (one Ray version): {images}"


@pytest.mark.parametrize("name,spec", CLUSTER_SPECS, ids=[n for n, _ in CLUSTER_SPECS])
def test_no_unknown_kuberay_fields(name, spec):
    parts = [("rayClusterSpec", spec), ("headGroupSpec", spec.get("headGroupSpec") or {})]
    parts += [("workerGroupSpec", g) for g in spec.get("workerGroupSpecs") or []]
    parts += [("RayJob.spec", d["spec"]) for n, d in RAYJOBS if n == name]
    for part, fields in parts:
        unknown = set(fields) - KNOWN_FIELDS[part]
        assert not unknown, f"{name}: {part} has fields KubeRay does not define (typo?): {sorted(unknown)}"


@pytest.mark.parametrize("where,c", _containers(), ids=[w for w, _ in _containers()])
def test_container_resources_and_threads(where, c):
    res = c.get("resources") or {}
    req, lim = res.get("requests") or {}, res.get("limits") or {}
    for key in ("cpu", "memory"):
        assert key in req and key in lim, f"{where}: resources.requests and .limits both need {key}"
    assert parse_cpu(req["cpu"]) <= parse_cpu(lim["cpu"]), f"{where}: cpu request above its limit"
    assert parse_memory(req["memory"]) <= parse_memory(lim["memory"]), f"{where}: memory request above limit"
    if GPU in lim:
        assert isinstance(lim[GPU], int) and lim[GPU] > 0, f"{where}: {GPU} limit must be a positive integer"
        assert req.get(GPU, lim[GPU]) == lim[GPU], f"{where}: {GPU} request must equal its limit"
    env = {e["name"]: e.get("value") for e in c.get("env") or []}
    assert env.get("OMP_NUM_THREADS") == "1", f'{where}: env OMP_NUM_THREADS must be "1"'


def test_nothing_is_exposed_outside_the_cluster():
    for name, doc in DOCS:
        assert doc.get("kind") != "Ingress", f"{name}: no Ingress: the job API runs arbitrary code"
        if doc.get("kind") == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", f"{name}: Service must be ClusterIP"
    for name, spec in CLUSTER_SPECS:
        head = spec["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP", f"{name}: headGroupSpec.serviceType"
        assert not head.get("enableIngress"), f"{name}: headGroupSpec.enableIngress makes an Ingress"
    for lbl, t in _all_pods():
        assert not _pod_spec(t).get("hostNetwork"), f"{lbl}: hostNetwork exposes every port on the node"
    for where, c in _containers():
        ports = [p for p in c.get("ports") or [] if "hostPort" in p]
        assert not ports, f"{where}: hostPort exposes the port on the node: {ports}"


def _shared_claim(label, template):
    """Claim name of the volume mounted at /shared in a pod template's first container."""
    containers = _pod_spec(template).get("containers") or [{}]
    mounts = {m["mountPath"]: m["name"] for m in containers[0].get("volumeMounts") or []}
    assert SHARED in mounts, f"{label}: nothing mounted at {SHARED} (run_dir, checkpoints and data live there)"
    vols = {v["name"]: v for v in _pod_spec(template).get("volumes") or []}
    vol = vols.get(mounts[SHARED])
    assert vol and "persistentVolumeClaim" in vol, f"{label}: {SHARED} must be a persistentVolumeClaim volume"
    return vol["persistentVolumeClaim"]["claimName"]


@pytest.mark.parametrize("name,spec", CLUSTER_SPECS, ids=[n for n, _ in CLUSTER_SPECS])
def test_one_shared_claim_on_head_and_every_worker(name, spec):
    claims = {_shared_claim(f"{name}: {lbl}", t) for lbl, t in _ray_pods(spec)}
    assert len(claims) == 1, f"{name}: head and workers must mount the same claim at {SHARED}: {claims}"


def test_every_claim_is_declared_read_write_many_or_documented():
    declared = {d["metadata"]["name"]: d for _, d in DOCS if d.get("kind") == "PersistentVolumeClaim"}
    doc_text = DOC.read_text() if DOC.is_file() else ""
    referenced = {
        v["persistentVolumeClaim"]["claimName"]: lbl
        for lbl, t in _all_pods()
        for v in _pod_spec(t).get("volumes") or []
        if "persistentVolumeClaim" in v
    }
    assert referenced, "no manifest mounts a PersistentVolumeClaim"
    for claim, lbl in referenced.items():
        if claim in declared:
            modes = declared[claim]["spec"].get("accessModes", [])
            assert "ReadWriteMany" in modes, f"claim {claim}: head and workers on many nodes need ReadWriteMany"
        else:
            assert claim in doc_text, f"{lbl}: claim {claim!r} is neither in k8s/ nor documented in {DOC}"


@pytest.mark.parametrize("name,job", RAYJOBS, ids=[n for n, _ in RAYJOBS])
def test_rayjob_spec(name, job):
    spec = job["spec"]
    assert isinstance(spec.get("entrypoint"), str) and spec["entrypoint"], f"{name}: entrypoint missing"
    # Retries need a fresh cluster per attempt, which only rayClusterSpec gives (not clusterSelector).
    assert "rayClusterSpec" in spec, f"{name}: use rayClusterSpec (retries recreate the cluster)"
    assert "clusterSelector" not in spec, f"{name}: set rayClusterSpec or clusterSelector, not both"
    b, dl = spec.get("backoffLimit"), spec.get("activeDeadlineSeconds")
    assert isinstance(b, int) and b >= 1, f"{name}: backoffLimit must be an integer >= 1 (retry + resume)"
    assert isinstance(dl, int) and dl > 0, f"{name}: activeDeadlineSeconds must be a positive integer"
    assert spec.get("shutdownAfterJobFinishes") is True, f"{name}: shutdownAfterJobFinishes must be true"
    assert spec.get("ttlSecondsAfterFinished", 0) >= 0, f"{name}: ttlSecondsAfterFinished must be >= 0"


@pytest.mark.parametrize("name,job", RAYJOBS, ids=[n for n, _ in RAYJOBS])
def test_rayjob_entrypoint_attaches_and_resumes_from_shared_storage(name, job):
    config, overrides = _entrypoint(job)
    assert config.startswith("configs/") and config.endswith(".yaml"), f"{name}: config {config!r}"
    assert overrides.get("cluster.address") == "auto", f"{name}: needs cluster.address=auto (else a local Ray)"
    assert overrides.get("resume") == "true", f"{name}: needs resume=true so a retried job resumes"
    run_dir = overrides.get("run_dir", "")
    assert run_dir.startswith(SHARED + "/"), f"{name}: run_dir {run_dir!r} must be under {SHARED}/"
    # A relative config path resolves in the head container's working directory (where `ray start` ran):
    # it must be where the image keeps the repository (k8s/Dockerfile.cpu; the GPU image in the doc too).
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    workdir = re.search(r"^WORKDIR\s+(\S+)", DOCKERFILE.read_text(), re.M).group(1)
    assert head.get("workingDir") == workdir, f"{name}: head workingDir must be the image's WORKDIR {workdir}"


@pytest.mark.parametrize("name,job", RAYJOBS, ids=[n for n, _ in RAYJOBS])
def test_rayjob_config_file_exists(name, job):
    config, _ = _entrypoint(job)
    if not (REPO / config).is_file():
        pytest.skip(f"{name}: entrypoint config {config} is not in the repo yet")
    assert yaml.safe_load((REPO / config).read_text()), f"{name}: {config} is empty"


@pytest.mark.parametrize("job_file,cluster_file", sorted(EMBEDS.items()))
def test_rayjob_embeds_the_standalone_cluster_spec(job_file, cluster_file):
    job = next(d for n, d in RAYJOBS if n == job_file)
    cluster = next(d for n, d in DOCS if n == cluster_file and d["kind"] == "RayCluster")
    assert job["spec"]["rayClusterSpec"] == cluster["spec"], f"{job_file} drifted from {cluster_file}"


def test_gpu_job_counts_match_its_worker_groups():
    # One vLLM engine per generator GPU and one DeepSpeed rank per learner GPU (k8s/raycluster-gpu.yaml).
    job = next(d for n, d in RAYJOBS if n == "rayjob-gpu.yaml")
    _, overrides = _entrypoint(job)
    groups = {g["groupName"]: g for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]}
    for group, key in (("generator", "rollout.num_generators"), ("learner", "learner.num_ranks")):
        g = groups[group]
        gpus = g["replicas"] * g["template"]["spec"]["containers"][0]["resources"]["limits"][GPU]
        assert int(overrides[key]) == gpus, f"rayjob-gpu.yaml: {key}={overrides[key]}, group {group}: {gpus} GPUs"


def test_cpu_dockerfile_installs_cpu_extra_and_drops_torchvision():
    text = DOCKERFILE.read_text()
    assert 'pip install --no-cache-dir ".[cpu]"' in text, "k8s/Dockerfile.cpu must install .[cpu]"
    uninstall = re.search(r"pip uninstall -y ([^\n]+)", text)
    assert uninstall, "k8s/Dockerfile.cpu must uninstall torchvision, torchaudio and torchcodec"
    assert {"torchvision", "torchaudio", "torchcodec"} <= set(uninstall.group(1).split())


def test_doc_describes_every_manifest():
    assert DOC.is_file(), f"{DOC} is missing"
    text = DOC.read_text()
    missing = [p.name for p in sorted(K8S.glob("*.yaml")) + [DOCKERFILE] if f"k8s/{p.name}" not in text]
    assert not missing, f"{DOC} does not mention: {missing}"
