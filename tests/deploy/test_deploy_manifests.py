"""deploy/k8s: every manifest schema-validated offline (kubernetes-validate, strict: an unknown or
misspelt field fails), then what the deployment must guarantee: one pod replaced by Recreate,
probes on the ops endpoint, non-root and read-only, the state on a claim at STATE_DIR, the
history mounted read-only where HISTORY_PATH points, and settings that `aki-alert serve` loads.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="pyyaml is not installed (pip install pyyaml)")
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate",
    reason="kubernetes-validate is not installed (pip install kubernetes-validate)")

from aki_alert import config  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
# The oldest Kubernetes minor still in common support whose schemas the validator ships: a
# manifest valid there is valid on later versions for these kinds.
KUBERNETES_VERSION = "1.30.0"


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def load_all() -> list[dict]:
    docs = []
    for path in manifest_files():
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def one(kind: str, name: str | None = None) -> dict:
    found = [d for d in load_all() if d["kind"] == kind
             and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def deployment() -> dict:
    return one("Deployment")


@pytest.fixture(scope="module")
def pod(deployment) -> dict:
    return deployment["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def container(pod) -> dict:
    (c,) = pod["containers"]
    return c


@pytest.fixture(scope="module")
def settings() -> dict[str, str]:
    return one("ConfigMap")["data"]


def mount(container: dict, path: str) -> dict:
    found = [m for m in container.get("volumeMounts", []) if m["mountPath"] == path]
    assert len(found) == 1, f"no single volume mounted at {path}"
    return found[0]


def volume(pod: dict, name: str) -> dict:
    (v,) = [v for v in pod["volumes"] if v["name"] == name]
    return v


# --- schema ---------------------------------------------------------------------------------

@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_manifest_is_valid_against_the_kubernetes_schema(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs, f"{path.name} is empty"
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validator_rejects_a_misspelt_field(deployment):
    """The schema check can fail: a typo in a probe is caught, not silently ignored."""
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(p.name for p in manifest_files())
    images = {i["name"] for i in kustomization.get("images", [])}
    assert images <= {c["image"].split(":")[0] for c in one("Deployment")["spec"]["template"]
                      ["spec"]["containers"]}


def test_kustomize_builds_the_manifests():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    done = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(done.stdout) if d)
    assert kinds == sorted(d["kind"] for d in load_all())
    built = [d for d in yaml.safe_load_all(done.stdout) if d and d["kind"] == "Deployment"][0]
    image = built["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.startswith("aki-alert:") and not image.endswith(":latest")


# --- the deployment -------------------------------------------------------------------------

def test_one_pod_replaced_by_recreate(deployment):
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_probes_ask_the_ops_endpoint_on_the_metrics_port(container, settings):
    port = int(settings["METRICS_PORT"])
    assert port == 8000
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [
        ("metrics", port), ("mllp", 2575)]


def test_liveness_is_not_stricter_than_readiness(container):
    """A liveness probe that gives up quickly would restart a pod in the middle of its import."""
    live, ready = container["livenessProbe"], container["readinessProbe"]
    live_window = live.get("periodSeconds", 10) * live.get("failureThreshold", 3)
    ready_window = ready.get("periodSeconds", 10) * ready.get("failureThreshold", 3)
    assert live_window >= ready_window


def test_runs_as_non_root_with_a_read_only_root_filesystem(pod, container):
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    # the only writable places: the state and an emptyDir for SQLite's temporary files
    writable = [m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")]
    assert sorted(writable) == ["/state", "/tmp"]
    assert "emptyDir" in volume(pod, mount(container, "/tmp")["name"])


def test_image_user_matches_the_pod_user(pod):
    dockerfile_parse = pytest.importorskip("dockerfile_parse")

    parsed = dockerfile_parse.DockerfileParser(str(REPO / "deploy" / "Dockerfile"))
    users = [i["value"] for i in parsed.structure if i["instruction"] == "USER"]
    sc = pod["securityContext"]
    assert users[-1] == f'{sc["runAsUser"]}:{sc["runAsGroup"]}'


def test_state_is_a_persistent_claim_at_state_dir(pod, container, settings):
    claim = one("PersistentVolumeClaim")
    m = mount(container, settings["STATE_DIR"])
    assert settings["STATE_DIR"] == "/state"
    assert not m.get("readOnly")
    v = volume(pod, m["name"])
    assert v["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_history_is_a_read_only_volume_where_history_path_points(pod, container, settings):
    m = mount(container, "/data")
    assert m["readOnly"] is True
    assert settings["HISTORY_PATH"].startswith(m["mountPath"] + "/")
    v = volume(pod, m["name"])
    # a volume (the hospital's read-only claim), not a ConfigMap: see deployment.yaml
    assert v["persistentVolumeClaim"]["readOnly"] is True
    state_claim = one("PersistentVolumeClaim")["metadata"]["name"]
    assert v["persistentVolumeClaim"]["claimName"] != state_claim


def test_resources_fit_a_100_mb_python_process(container):
    def mebibytes(q: str) -> float:
        units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
        for suffix, factor in units.items():
            if q.endswith(suffix):
                return float(q[:-2]) * factor
        return float(q) / 2**20

    def cores(q: str) -> float:
        return float(q[:-1]) / 1000 if q.endswith("m") else float(q)

    r = container["resources"]
    assert 100 <= mebibytes(r["requests"]["memory"]) <= mebibytes(r["limits"]["memory"]) <= 1024
    # room above the ~100 MB steady state for the history import
    assert mebibytes(r["limits"]["memory"]) >= 256
    assert 0 < cores(r["requests"]["cpu"]) <= cores(r["limits"]["cpu"]) <= 2


def test_no_service_links_to_shadow_the_settings(pod):
    """Service links inject NAME_PORT variables: a Service `metrics` would set METRICS_PORT."""
    assert pod["enableServiceLinks"] is False


# --- settings -------------------------------------------------------------------------------

def test_configmap_keys_are_real_settings(settings, container):
    names = {s.env for s in config.SETTINGS}
    assert set(settings) <= names, f"not settings of aki-alert serve: {set(settings) - names}"
    for env in container.get("env", []):
        assert env["name"] in names, env["name"]
    refs = [e["configMapRef"]["name"] for e in container["envFrom"]]
    assert refs == [one("ConfigMap")["metadata"]["name"]]


def test_configmap_sets_every_required_setting_and_the_environment(settings):
    required = {s.env for s in config.SETTINGS if s.default is None}
    assert required <= set(settings)
    assert settings["AKI_ENVIRONMENT"], "each hospital environment must be named"


def test_configmap_settings_load(settings):
    cfg = config.load(argparse.Namespace(), environ=dict(settings))
    assert cfg.state_dir == "/state"
    assert cfg.metrics_port == 8000
    assert cfg.environment == settings["AKI_ENVIRONMENT"]


def test_service_exposes_the_metrics_port_for_prometheus(deployment, settings):
    service = one("Service", "aki-alert")
    port = int(settings["METRICS_PORT"])
    (p,) = service["spec"]["ports"]
    assert p["port"] == port and p["targetPort"] == port
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    # scraped while alive but not ready, so AkiAlertNotReady can see it
    assert service["spec"]["publishNotReadyAddresses"] is True


def test_the_listener_is_a_service_port_of_ready_pods(deployment, container, settings):
    """MLLP_LISTEN's port is the container's `mllp` port, behind a Service of its own that
    publishes ready pods only (the metrics Service also publishes unready ones)."""
    service = one("Service", "aki-alert-mllp")
    (p,) = service["spec"]["ports"]
    (mllp,) = [c for c in container["ports"] if c["name"] == "mllp"]
    assert p["targetPort"] == "mllp" and p["port"] == mllp["containerPort"]
    assert not service["spec"].get("publishNotReadyAddresses", False)
    assert "prometheus.io/scrape" not in service["metadata"].get("annotations", {})
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    # The ConfigMap's example setting (commented out) listens on that port, and loads.
    example = f"0.0.0.0:{mllp['containerPort']}"
    assert f'# MLLP_LISTEN: "{example}"' in (K8S / "configmap.yaml").read_text()
    cfg = config.load(argparse.Namespace(), environ={**settings, "MLLP_LISTEN": example})
    assert cfg.mllp_listen == ("0.0.0.0", mllp["containerPort"])
