"""deploy/k8s-ha: the two-replica layout on PostgreSQL, schema-validated like deploy/k8s."""

from __future__ import annotations

from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="pyyaml is not installed (pip install pyyaml)")
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate",
    reason="kubernetes-validate is not installed (pip install kubernetes-validate)")

from aki_alert import config  # noqa: E402

HA = Path(__file__).resolve().parents[2] / "deploy" / "k8s-ha"
KUBERNETES_VERSION = "1.30.0"


def docs() -> dict[str, dict]:
    files = sorted(p for p in HA.glob("*.yaml") if p.name != "kustomization.yaml")
    return {d["kind"]: d for p in files for d in yaml.safe_load_all(p.read_text()) if d}


def test_every_ha_manifest_is_valid_and_listed():
    found = docs()
    for doc in found.values():
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    kustomization = yaml.safe_load((HA / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in HA.glob("*.yaml") if p.name != "kustomization.yaml")
    assert set(found) == {"Deployment", "PodDisruptionBudget"}


def test_two_replicas_share_postgresql_and_a_disruption_budget_keeps_one():
    found = docs()
    dep, pdb = found["Deployment"], found["PodDisruptionBudget"]
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert env["STATE_URL"]["valueFrom"]["secretKeyRef"]["key"] == "url"   # never in clear
    assert set(env) <= {s.env for s in config.SETTINGS}
    # Every replica has the listener's port; only the leader binds it (service.py).
    assert {"name": "mllp", "containerPort": 2575, "protocol": "TCP"} in c["ports"]
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes["state"]      # no shared volume: the state is in PostgreSQL
