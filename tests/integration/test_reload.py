"""Hot reload and key rotation through a real Envoy: ECDS policy edits, signed pull-mode policies,
remote JWKS rotation, JWKS outages and the unknown-kid refetch rate limit.

Each test starts its own Envoy (these tests change the running configuration) and a keyserver
(tests/support/keyserver.py) that plays the identity provider and the policy server.
"""

from __future__ import annotations

import copy
import http.client
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from harness import LocalHarness, malformed_log_lines, phi_guard_log_entries
from helpers import ME
from tokens import CLI, cli_token

REPO = Path(__file__).resolve().parents[2]


POLICY = json.loads((REPO / "policies" / "smart-patient-app.json").read_text())
JWKS = json.loads((REPO / "tests" / "keys" / "demo-jwks.json").read_text())
KEY = {k["kid"]: k for k in JWKS["keys"]}
SCOPE = "patient/Patient.rs patient/Observation.rs"

if os.environ.get("HARNESS", "local") != "local":
    pytest.skip("reload tests drive a local Envoy's files directly", allow_module_level=True)


class KeyServer:
    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = open(workdir / "keyserver.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, str(REPO / "tests/support/keyserver.py"), "0"],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("LISTENING "), line
        self.port = int(line.split()[1])

    def set(self, what: str, **update) -> None:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/__set/{what}", method="POST",
                                     data=json.dumps(update).encode())
        urllib.request.urlopen(req, timeout=5).read()  # noqa: S310

    def count(self) -> dict:
        return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{self.port}/__count", timeout=5).read())  # noqa: S310

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=5)
        self.log.close()


def get(conn_or_harness, path: str, token: str | None = None):
    """One request; `conn_or_harness` is a keep-alive HTTPConnection or a harness."""
    own = not isinstance(conn_or_harness, http.client.HTTPConnection)
    conn = http.client.HTTPConnection("127.0.0.1", int(conn_or_harness.base_url.rsplit(":", 1)[1]),
                                      timeout=20) if own else conn_or_harness
    headers = {"Host": "fhir.phi-guard.test"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, body
    finally:
        if own:
            conn.close()


def reason(body: bytes) -> str | None:
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if "issue" in doc:
        return doc["issue"][0]["details"]["coding"][0]["code"]
    return doc.get("error")


def wait_for(predicate, timeout: float, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


@pytest.fixture
def workdir(request) -> Path:
    d = REPO / ".run" / "tests" / f"reload-{request.node.name}"
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture
def keyserver(workdir):
    ks = KeyServer(workdir)
    yield ks
    ks.stop()


def start(workdir: Path, policy_doc: dict, **kw) -> LocalHarness:
    path = workdir / "policy.json"
    path.write_text(json.dumps(policy_doc, indent=2))
    # Envoy appends to its log: start from an empty one, so that assertions on it see this run.
    (workdir / "envoy.log").unlink(missing_ok=True)
    return LocalHarness(workdir.name, policy=path, workdir=workdir, **kw).start()


def stat(harness, name: str) -> int:
    for line in harness.stats_prometheus().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def logged(h, msg: str, timeout: float = 10) -> list[dict]:
    """phi-guard's operational lines with `msg` in Envoy's log (written in the background: waits
    for at least one)."""
    def found():
        return [e for e in phi_guard_log_entries(h.envoy_log_text()) if e["msg"] == msg]
    wait_for(found, timeout=timeout)
    return found()


def test_ecds_edit_applies_on_an_open_keepalive_connection(workdir):
    h = start(workdir, POLICY, ecds=True)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", int(h.base_url.rsplit(":", 1)[1]), timeout=20)
        assert get(conn, "/healthz")[0] == 200
        sock = conn.sock
        edited = copy.deepcopy(POLICY)
        edited["routes"] = [r for r in edited["routes"] if r["id"] != "health"]
        (workdir / "policy.json").write_text(json.dumps(edited))
        t0 = time.monotonic()
        h.write_ecds(workdir / "policy.json")
        assert wait_for(lambda: get(conn, "/healthz")[0] == 404, timeout=10), "edit not applied"
        elapsed = time.monotonic() - t0
        assert conn.sock is sock, "the keep-alive connection was replaced"
        assert elapsed < 5, f"edit took {elapsed:.1f}s"
        assert stat(h, "phi_guard_policy_loaded_total") >= 2
    finally:
        h.stop()


def test_invalid_policy_edit_is_rejected_and_old_policy_stays(workdir):
    h = start(workdir, POLICY, ecds=True)
    try:
        token = cli_token(scope=SCOPE, patient=ME)
        assert get(h, f"/fhir/Patient/{ME}", token)[0] == 200
        before = stat(h, "phi_guard_policy_rejected_total")
        broken = copy.deepcopy(POLICY)
        broken["routes"][0]["pubilc"] = True  # typo: unknown field
        broken["routes"] = [r for r in broken["routes"] if r["id"] != "fhir"]  # would open nothing, but...
        (workdir / "policy.json").write_text(json.dumps(broken))
        h.write_ecds(workdir / "policy.json")
        assert wait_for(lambda: stat(h, "phi_guard_policy_rejected_total") > before, timeout=10), "not rejected"
        # Old policy still enforced: own record allowed, no token refused, health still public.
        assert get(h, f"/fhir/Patient/{ME}", token)[0] == 200
        status, body = get(h, f"/fhir/Patient/{ME}")
        assert (status, reason(body)) == (401, "missing_token")
        assert get(h, "/healthz")[0] == 200
        log = (workdir / "envoy.log").read_text(errors="replace")
        rejected = [e for e in phi_guard_log_entries(log) if e["msg"] == "policy rejected; the previous policy stays in force"]
        assert rejected and rejected[-1]["level"] == "error", log[-2000:]
        assert "routes[0].pubilc: unknown field" in rejected[-1]["error"]
        loaded = [e for e in phi_guard_log_entries(log) if e["msg"] == "policy loaded"]
        assert loaded and loaded[0]["policy"] == POLICY["name"] and loaded[0]["source"] == "plugin configuration"
        assert malformed_log_lines(log) == [], "every phi-guard operational line is one JSON object"
    finally:
        h.stop()


def sign(policy_path: Path) -> str:
    out = subprocess.run([str(CLI), "sign", str(policy_path), "--key", str(REPO / "tests/keys/demo-eddsa.key.pem")],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_pull_mode_signed_policy_bad_signature_and_server_down(workdir, keyserver):
    a = copy.deepcopy(POLICY)
    b = copy.deepcopy(POLICY)
    b["name"] = "policy-b"
    b["routes"] = [r for r in b["routes"] if r["id"] != "health"]
    (workdir / "a.json").write_text(json.dumps(a))
    (workdir / "b.json").write_text(json.dumps(b))
    keyserver.set("policy", body=(workdir / "a.json").read_text(), signature=sign(workdir / "a.json"), status=200)
    pull = {"policySource": {"cluster": "policy_server", "path": "/policy.json", "publicKey": KEY["demo-eddsa"],
                             "pollIntervalSeconds": 1, "maxBackoffSeconds": 2}}
    h = start(workdir, pull, cluster_ports={"policy_server": keyserver.port})
    try:
        assert wait_for(lambda: get(h, "/healthz")[0] == 200, timeout=10), "signed policy A not applied"
        assert logged(h, "pulling signed policies")[0]["cluster"] == "policy_server"
        assert any(e["source"] == "policy server" and e["policy"] == a["name"] for e in logged(h, "policy loaded"))
        token = cli_token(scope=SCOPE, patient=ME)
        assert get(h, f"/fhir/Patient/{ME}", token)[0] == 200
        # B with a signature over A's bytes: refused, A stays.
        rejected = stat(h, "phi_guard_policy_rejected_total")
        keyserver.set("policy", body=(workdir / "b.json").read_text(), signature=sign(workdir / "a.json"))
        assert wait_for(lambda: stat(h, "phi_guard_policy_rejected_total") > rejected, timeout=10)
        assert get(h, "/healthz")[0] == 200
        bad = logged(h, "pulled policy rejected; the last good policy stays in force")
        assert bad and bad[0]["level"] == "error" and "signature" in bad[0]["error"], bad
        # Policy server down: A stays, failures counted, staleness grows.
        keyserver.set("policy", status=503)
        failures = stat(h, "phi_guard_policy_fetch_failures_total")
        assert wait_for(lambda: stat(h, "phi_guard_policy_fetch_failures_total") > failures, timeout=10)
        assert get(h, "/healthz")[0] == 200
        assert get(h, f"/fhir/Patient/{ME}", token)[0] == 200
        assert any(e["status"] == 503 for e in logged(h, "policy server answer not usable"))
        failed = logged(h, "policy fetch failed; keeping the last good policy")
        assert all(e["level"] == "warn" and e["failures"] >= 1 and e["retryInS"] >= 0 for e in failed) and failed
        # B properly signed: applied by every worker.
        keyserver.set("policy", status=200, signature=sign(workdir / "b.json"))
        assert wait_for(lambda: all(get(h, "/healthz")[0] == 404 for _ in range(6)), timeout=15), "B not applied"
    finally:
        h.stop()


def remote_policy(**jwks_uri) -> dict:
    doc = copy.deepcopy(POLICY)
    iss = doc["issuers"][0]
    del iss["jwks"]
    iss["jwksUri"] = {"cluster": "idp", "path": "/jwks.json", **jwks_uri}
    return doc


def test_jwks_rotation_without_restart(workdir, keyserver):
    keyserver.set("jwks", body=json.dumps({"keys": [KEY["demo-rs256"]]}), status=200)
    h = start(workdir, remote_policy(unknownKidRefetchSeconds=1), cluster_ports={"idp": keyserver.port})
    try:
        rs = cli_token(scope=SCOPE, patient=ME)
        assert wait_for(lambda: get(h, f"/fhir/Patient/{ME}", rs)[0] == 200, timeout=10)
        es = cli_token(scope=SCOPE, patient=ME, alg="ES256")
        status, body = get(h, f"/fhir/Patient/{ME}", es)
        assert (status, reason(body)) == (401, "unknown_key")
        # Publish the new key: a token signed with it is accepted (unknown kid triggers a refetch).
        keyserver.set("jwks", body=json.dumps({"keys": [KEY["demo-rs256"], KEY["demo-es256"]]}))
        time.sleep(1.1)
        assert wait_for(lambda: get(h, f"/fhir/Patient/{ME}", es)[0] == 200, timeout=10), "rotated key not accepted"
        # Remove the old key: after the refresh period, its tokens stop verifying.
        keyserver.set("jwks", body=json.dumps({"keys": [KEY["demo-es256"]]}))
    finally:
        h.stop()


def test_removed_key_stops_verifying_after_refresh(workdir, keyserver):
    keyserver.set("jwks", body=json.dumps({"keys": [KEY["demo-rs256"], KEY["demo-es256"]]}), status=200)
    h = start(workdir, remote_policy(refreshSeconds=10), cluster_ports={"idp": keyserver.port})
    try:
        rs = cli_token(scope=SCOPE, patient=ME)
        assert wait_for(lambda: get(h, f"/fhir/Patient/{ME}", rs)[0] == 200, timeout=10)
        keyserver.set("jwks", body=json.dumps({"keys": [KEY["demo-es256"]]}))
        # Refresh at 80 % of 10 s; the cache is cleared with the new key set.
        assert wait_for(lambda: get(h, f"/fhir/Patient/{ME}", rs)[0] == 401, timeout=20), "removed key still accepted"
        assert all(get(h, f"/fhir/Patient/{ME}", rs)[0] == 401 for _ in range(4)), "a worker kept the old key"
    finally:
        h.stop()


def test_jwks_down_at_start_is_a_bounded_503_never_200(workdir, keyserver):
    keyserver.set("jwks", status=503)
    h = start(workdir, remote_policy(waitMs=1500), cluster_ports={"idp": keyserver.port})
    try:
        token = cli_token(scope=SCOPE, patient=ME)
        for _ in range(3):
            t0 = time.monotonic()
            status, body = get(h, f"/fhir/Patient/{ME}", token)
            elapsed = time.monotonic() - t0
            assert (status, reason(body)) == (503, "keys_unavailable"), (status, body[:200])
            assert elapsed < 1.5 + 2.5, f"waited {elapsed:.1f}s"
        issuer = POLICY["issuers"][0]["issuer"]
        unusable = logged(h, "JWKS not usable; keeping the last good keys")
        assert unusable and all(e["issuer"] == issuer and e["error"] == "status 503" for e in unusable), unusable
        failed = logged(h, "JWKS fetch failed")
        assert failed and all(e["issuer"] == issuer and e["failures"] >= 1 for e in failed), failed
        # The identity provider comes back: the same token is accepted without a restart.
        keyserver.set("jwks", status=200, body=json.dumps(JWKS))
        assert wait_for(lambda: get(h, f"/fhir/Patient/{ME}", token)[0] == 200, timeout=15)
        assert logged(h, "JWKS loaded")[0]["issuer"] == issuer
        assert malformed_log_lines(h.envoy_log_text()) == []
    finally:
        h.stop()


def test_waiting_request_is_released_when_keys_arrive(workdir, keyserver):
    # The first fetch is slow (1 s) but within the wait: the request waits, then succeeds.
    keyserver.set("jwks", status=200, body=json.dumps(JWKS), delay=1)
    h = start(workdir, remote_policy(waitMs=5000, timeoutMs=4000), cluster_ports={"idp": keyserver.port})
    try:
        token = cli_token(scope=SCOPE, patient=ME)
        status, body = get(h, f"/fhir/Patient/{ME}", token)
        assert status == 200, body[:200]
    finally:
        h.stop()


def test_unknown_kid_burst_is_rate_limited(workdir, keyserver):
    keyserver.set("jwks", status=200, body=json.dumps(JWKS))
    h = start(workdir, remote_policy(unknownKidRefetchSeconds=30), cluster_ports={"idp": keyserver.port})
    try:
        good = cli_token(scope=SCOPE, patient=ME)
        assert wait_for(lambda: get(h, f"/fhir/Patient/{ME}", good)[0] == 200, timeout=10)
        before = keyserver.count()["jwks"]
        statuses = set()
        for i in range(40):
            forged = cli_token(scope=SCOPE, patient=ME, kid=f"forged-{i}")
            statuses.add(get(h, f"/fhir/Patient/{ME}", forged)[0])
        assert statuses == {401}, statuses
        fetched = keyserver.count()["jwks"] - before
        assert fetched <= 1, f"{fetched} JWKS fetches for 40 forged kids"
    finally:
        h.stop()


def test_openid_discovery_finds_the_keys_and_trusts_only_its_issuers_document(workdir, keyserver):
    iss = POLICY["issuers"][0]["issuer"]

    def discovery(jwks_path: str, issuer: str = iss) -> str:
        return json.dumps({"issuer": issuer, "jwks_uri": f"{issuer}{jwks_path}"})

    keyserver.set("discovery", body=discovery("/jwks.json"), status=200)
    keyserver.set("jwks", body=json.dumps({"keys": [KEY["demo-rs256"]]}), status=200)
    doc = copy.deepcopy(POLICY)
    del doc["issuers"][0]["jwks"]
    doc["issuers"][0]["discovery"] = {"cluster": "idp", "refreshSeconds": 10}
    h = start(workdir, doc, cluster_ports={"idp": keyserver.port})
    try:
        rs = cli_token(scope=SCOPE, patient=ME)
        assert wait_for(lambda: get(h, f"/fhir/Patient/{ME}", rs)[0] == 200, timeout=10)
        counts = keyserver.count()
        assert counts["discovery"] >= 1 and counts["jwks"] >= 1, counts
        # A document that names another issuer is not trusted: the keys it points at are never
        # fetched, and the last good keys stay until they are stale.
        keyserver.set("discovery", body=discovery("/jwks.json", issuer="https://evil.example"))
        keyserver.set("jwks", body=json.dumps({"keys": [KEY["demo-es256"]]}))
        time.sleep(9)  # past a refresh at 80 % of 10 s
        assert get(h, f"/fhir/Patient/{ME}", rs)[0] == 200, "last good keys dropped on a bad document"
        es = cli_token(scope=SCOPE, patient=ME, alg="ES256")
        assert get(h, f"/fhir/Patient/{ME}", es)[0] == 401
    finally:
        h.stop()
