"""Audit through a real Envoy: an event for every decision, no PHI in any of them, the chain
verifies (and an edit or a deletion is reported), and the collector outage behaviour: nothing
lost within the queue bound, counted drops beyond it, `auditRequired` refusals."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from envoy_config import DEMO_AUDIT_KEY
from harness import make_harness
from helpers import ME, OTHER, Api
from tokens import CLI, cli_token

REPO = Path(__file__).resolve().parents[2]


PREFIX = "phi-guard-audit: "
CLINICIAN = json.loads((REPO / "policies" / "clinician-api.json").read_text())
SYNTHEA = REPO / "envoy" / "demo-data" / "synthea" / "Clemente_Kreiger_1484a42d-0eaf-4654-9cbf-6b050a5cd73b.json"

if os.environ.get("HARNESS", "local") != "local":
    pytest.skip("reads the local Envoy's log file", allow_module_level=True)


def audit_lines(text: str) -> list[str]:
    return [ln.split(PREFIX, 1)[1] for ln in text.splitlines() if PREFIX in ln]


def verify(lines: list[str], tmp: Path) -> subprocess.CompletedProcess:
    tmp.write_text("\n".join(lines) + "\n")
    return subprocess.run([str(CLI), "audit", "verify", str(tmp), "--key-env", "PHI_GUARD_AUDIT_KEY"],
                          capture_output=True, text=True, env={**os.environ, "PHI_GUARD_AUDIT_KEY": DEMO_AUDIT_KEY})


def wait_lines(fn, n: int, timeout: float = 15) -> list[str]:
    deadline = time.monotonic() + timeout
    lines = fn()
    while len(lines) < n and time.monotonic() < deadline:
        time.sleep(0.2)
        lines = fn()
    return lines


@pytest.fixture(scope="module")
def patient_app(harnesses) -> Api:
    return Api(harnesses.get("patient-app"))


def test_every_decision_is_audited_without_phi(patient_app, tmp_path):
    h = patient_app.harness
    before = len(audit_lines(h.envoy_log_text()))
    token = cli_token(scope="patient/Patient.rs patient/Observation.rs", patient=ME)
    rid = str(uuid.uuid4())
    calls = [
        (f"/fhir/Patient/{ME}", token, 200),                       # allowed, minimized
        (f"/fhir/Patient/{OTHER}", token, 403),                    # patient mismatch
        (f"/fhir/Observation?patient={ME}&code=8867-4", token, 200),
        ("/fhir/Observation?code=Kreiger", token, 403),            # compartment escape
        ("/fhir/Observation?name=Kreiger", token, 403),            # not an Observation parameter
        (f"/fhir/Patient/{ME}", None, 401),                        # missing token
        (f"/fhir/Patient/{ME}", token + "x", 401),                 # bad signature
        ("/healthz", None, 200),                                   # public
        (f"/fhir/Patient/{ME}", token, 200, {"x-test-gzip": "1"}),  # fail-closed minimization
    ]
    for call in calls:
        path, tok, want = call[:3]
        headers = {"x-request-id": rid, **(call[3] if len(call) > 3 else {})}
        assert patient_app.get(path, token=tok, headers=headers).status == want, path
    # Envoy flushes its log file every few seconds: wait for this test's events by request id.
    lines = wait_lines(lambda: [ln for ln in audit_lines(h.envoy_log_text())[before:] if rid in ln], len(calls), timeout=30)
    mine = [json.loads(ln) for ln in lines]
    assert len(mine) == len(calls), f"{len(mine)} events for {len(calls)} requests"
    text = "\n".join(lines)
    # No PHI: nothing from the upstream record, the token, or the search values.
    patient = next(x["resource"] for x in json.loads(SYNTHEA.read_text())["entry"] if x["resource"]["resourceType"] == "Patient")
    forbidden = [token, "Kreiger", patient["birthDate"], ME, OTHER]
    forbidden += [i["value"] for i in patient["identifier"] if len(i["value"]) > 4]
    forbidden += [t["value"] for t in patient["telecom"]]
    for value in forbidden:
        assert value not in text, f"{value[:30]!r} in the audit log"
    for code in ("patient_mismatch", "compartment_escape", "search_parameter_not_allowed", "missing_token", "bad_signature", "response_encoded"):
        assert code in text, f"no event with reason {code}"
    # The whole log verifies; an edited line and a deleted line are each reported.
    all_lines = audit_lines(h.envoy_log_text())
    ok = verify(all_lines, tmp_path / "audit.log")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    edited = list(all_lines)
    ev = json.loads(edited[1])
    key = "recorded" if "recorded" in ev else "time"
    ev[key] = "2001-01-01T00:00:00.000Z"  # an auditor-visible fact changed after the fact
    edited[1] = json.dumps(ev, separators=(",", ":"))
    bad = verify(edited, tmp_path / "edited.log")
    assert bad.returncode == 1 and "line 2" in (bad.stdout + bad.stderr), bad.stdout + bad.stderr
    deleted = all_lines[:2] + all_lines[3:]
    gone = verify(deleted, tmp_path / "deleted.log")
    assert gone.returncode == 1, gone.stdout + gone.stderr


def collector_policy(**collector) -> dict:
    doc = copy.deepcopy(CLINICIAN)
    doc["name"] = "clinician-audit-" + "-".join(f"{k}{v}" for k, v in sorted(collector.items()))
    doc["audit"]["collector"].update({"flushIntervalMs": 200, "backoffInitialMs": 100, "backoffMaxMs": 500, "timeoutMs": 1000})
    audit_required = collector.pop("auditRequired", False)
    doc["audit"]["collector"].update(collector)
    doc["audit"]["auditRequired"] = audit_required
    doc["audit"]["failureLimit"] = 2
    return doc


def start(name: str, doc: dict):
    workdir = REPO / ".run" / "tests" / name
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "policy.json").write_text(json.dumps(doc))
    return make_harness("local", name, workdir=workdir, policy=workdir / "policy.json")


def stat(h, name: str) -> int:
    total = 0
    for line in h.stats_prometheus().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def clinician_token() -> str:
    return cli_token(claims={"scp": ["user/Patient.rs"], "scope": None})


def test_short_collector_outage_loses_nothing_and_chain_verifies(tmp_path):
    h = start("audit-outage", collector_policy(queueMaxEvents=1000))
    try:
        api = Api(h)
        token = clinician_token()
        for _ in range(5):
            assert api.get(f"/fhir/Patient/{ME}", token=token).status == 200
        wait_lines(h.audit_lines, 5)
        h.collector_status(503)
        for _ in range(20):
            assert api.get(f"/fhir/Patient/{ME}", token=token).status == 200
        time.sleep(1.5)
        h.collector_status(202)
        lines = wait_lines(h.audit_lines, 25, timeout=20)
        assert len(lines) == 25, len(lines)  # one event per request, none lost to the outage
        assert stat(h, "phi_guard_audit_events_total") == 25
        assert stat(h, "phi_guard_audit_dropped_total") == 0
        assert stat(h, "phi_guard_audit_retried_total") > 0
        ok = verify(lines, tmp_path / "collected.log")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "2 stream" in ok.stdout or "streams" in ok.stdout, ok.stdout  # one chain per worker
    finally:
        h.stop()


def test_beyond_the_queue_bound_drops_are_counted(tmp_path):
    h = start("audit-drops", collector_policy(queueMaxEvents=5, batchMaxEvents=5))
    try:
        api = Api(h)
        token = clinician_token()
        h.collector_status(503)
        for _ in range(30):
            assert api.get(f"/fhir/Patient/{ME}", token=token).status == 200
        time.sleep(1)
        dropped = stat(h, "phi_guard_audit_dropped_total")
        assert dropped >= 30 - 2 * (5 + 5), dropped  # per worker: five queued plus one batch in flight
        h.collector_status(202)
        lines = wait_lines(h.audit_lines, 30 - dropped, timeout=15)
        assert len(lines) + dropped == 30, (len(lines), dropped)
        # Envoy writes its log file in the background (flushed every 250 ms here): wait for it.
        deadline = time.monotonic() + 15
        while "audit queue full" not in h.envoy_log_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "audit queue full" in h.envoy_log_text()
    finally:
        h.stop()


def test_audit_required_refuses_when_the_collector_fails():
    h = start("audit-required", collector_policy(queueMaxEvents=1000, auditRequired=True))
    try:
        api = Api(h)
        token = clinician_token()
        assert api.get(f"/fhir/Patient/{ME}", token=token).status == 200
        h.collector_status(503)
        statuses = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            r = api.get(f"/fhir/Patient/{ME}", token=token)
            statuses.append(r.status)
            if r.status == 503:
                assert r.json()["issue"][0]["details"]["coding"][0]["code"] == "audit_unavailable"
                break
            time.sleep(0.3)
        assert statuses[-1] == 503, statuses
        h.collector_status(202)
        # Each worker keeps its own queue and failure count: recovered once several requests in
        # a row (spread over both workers) are served.
        deadline = time.monotonic() + 20
        streak = 0
        while time.monotonic() < deadline and streak < 6:
            streak = streak + 1 if api.get(f"/fhir/Patient/{ME}", token=token).status == 200 else 0
            time.sleep(0.2)
        assert streak >= 6, "did not recover"
    finally:
        h.stop()


def test_held_log_lines_reach_envoys_log_in_order_and_verify(tmp_path):
    """`audit.envoyLogFlushMs`: sealed lines are held and written together; every event still
    reaches Envoy's log (one line each, with the prefix), in chain order, and the log verifies."""
    doc = json.loads((REPO / "policies" / "smart-patient-app.json").read_text())
    doc["name"] = "patient-app-held-log"
    doc["audit"].update({"envoyLogFlushMs": 700, "format": "jsonl"})
    h = start("audit-held-log", doc)
    try:
        api = Api(h)
        before = len(audit_lines(h.envoy_log_text()))  # a log left by an earlier run
        token = cli_token(scope="launch/patient patient/*.rs", patient=ME)
        n = 10
        for _ in range(n):
            assert api.get(f"/fhir/Patient/{ME}", token=token).status == 200
        assert api.get(f"/fhir/Patient/{OTHER}", token=token).status == 403
        lines = wait_lines(lambda: audit_lines(h.envoy_log_text())[before:], n + 1, timeout=20)
        assert len(lines) == n + 1, len(lines)
        # Written together: a record's later lines stand on their own, without Envoy's header.
        assert any(ln.startswith(PREFIX) for ln in h.envoy_log_text().splitlines()), "no grouped write"
        ok = verify(lines, tmp_path / "held.log")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        # Per worker's chain, `seq` runs 0, 1, 2, ... with no gap.
        by_stream: dict[str, list[int]] = {}
        for ln in lines:
            rec = json.loads(ln)
            by_stream.setdefault(rec["stream"], []).append(rec["seq"])
        assert all(seqs == list(range(len(seqs))) for seqs in by_stream.values()), by_stream
    finally:
        h.stop()
