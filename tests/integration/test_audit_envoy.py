"""Audit through a real Envoy: an event for every decision, no PHI in any of them, every FHIR
AuditEvent passes the FHIR R4 models and the BALP checks (`fhir_audit`), the chain verifies (and
an edit or a deletion is reported), and the collector outage behaviour: nothing lost within the
queue bound, counted drops beyond it, `auditRequired` refusals."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from conftest import RUN_DIR
from envoy_config import DEMO_AUDIT_KEY
from fhir_audit import check_audit_lines
from harness import make_harness, malformed_log_lines, phi_guard_log_entries
from helpers import ME, OTHER, Api
from tokens import CLI, cli_token

REPO = Path(__file__).resolve().parents[2]


PREFIX = "phi-guard-audit: "
CARGO_VERSION = re.search(r'^version = "([^"]+)"', (REPO / "Cargo.toml").read_text(), re.M).group(1)
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
    # The patient app logs FHIR AuditEvents: each conforms (R4 models, BALP, published extensions).
    assert len(check_audit_lines(lines)) == len(calls)
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
    workdir = RUN_DIR / name
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "policy.json").write_text(json.dumps(doc))
    # Envoy appends to its log: start from an empty one, so that assertions on it see this run.
    (workdir / "envoy.log").unlink(missing_ok=True)
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
        def full():
            return [e for e in phi_guard_log_entries(h.envoy_log_text())
                    if e["msg"] == "audit queue full; event not queued for the collector"]
        deadline = time.monotonic() + 15
        while not full() and time.monotonic() < deadline:
            time.sleep(0.2)
        entries = full()
        assert entries, h.envoy_log_text()[-2000:]
        assert all(e["level"] == "error" and e["queueMaxEvents"] == 5 and isinstance(e["seq"], int)
                   and e["stream"] and e["loggedInstead"] is False for e in entries), entries
        # The collector outage is logged as structured lines too: one JSON object each.
        log = h.envoy_log_text()
        assert any(e["msg"] == "audit batch kept for retry" and e["status"] == 503 for e in phi_guard_log_entries(log))
        assert malformed_log_lines(log) == []
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


def test_otlp_batches_parse_strictly_as_export_logs_service_requests():
    """Every batch the collector received is an OTLP/JSON `ExportLogsServiceRequest` as the
    OpenTelemetry protobuf definitions read it (unknown fields refused), with the resource and
    record fields the specification and its semantic conventions name."""
    from google.protobuf import json_format
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    doc = collector_policy(queueMaxEvents=1000)
    assert doc["audit"]["collector"]["format"] == "otlp"
    h = start("audit-otlp", doc)
    try:
        api = Api(h)
        token = clinician_token()
        for _ in range(4):
            assert api.get(f"/fhir/Patient/{ME}", token=token).status == 200
        assert api.get(f"/fhir/Patient/{ME}").status == 401
        wait_lines(h.audit_lines, 5)
        bodies = h.collector_bodies()
        assert bodies
        seen = 0
        for b in bodies:
            assert b["contentType"] == "application/json"
            msg = json_format.Parse(b["body"], ExportLogsServiceRequest(), ignore_unknown_fields=False)
            for rl in msg.resource_logs:
                attrs = {a.key: a.value.string_value for a in rl.resource.attributes}
                assert attrs["service.name"] == "phi-guard"
                assert attrs["service.version"] == CARGO_VERSION
                assert len(attrs["service.instance.id"]) == 32
                for sl in rl.scope_logs:
                    assert sl.scope.name == "phi-guard.audit"
                    for rec in sl.log_records:
                        seen += 1
                        assert rec.event_name == "phi_guard.audit.decision"
                        assert rec.time_unix_nano > 1_700_000_000 * 10**9
                        assert rec.observed_time_unix_nano >= rec.time_unix_nano
                        assert rec.severity_number in (9, 13, 17)  # INFO, WARN, ERROR
                        assert json.loads(rec.body.string_value)["stream"] == attrs["service.instance.id"]
        assert seen >= 5
    finally:
        h.stop()


def test_a_batch_refused_for_good_is_counted_logged_and_does_not_block_the_queue():
    """A 400 is not retried (OTLP/HTTP): the refused events are counted and logged with their
    chain positions, and the events after them are delivered once the collector accepts."""
    h = start("audit-refused", collector_policy(queueMaxEvents=1000))
    try:
        api = Api(h)
        token = clinician_token()
        h.collector_status(400)
        for _ in range(6):
            assert api.get(f"/fhir/Patient/{ME}", token=token).status == 200
        deadline = time.monotonic() + 15
        while stat(h, "phi_guard_audit_refused_total") < 6 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert stat(h, "phi_guard_audit_refused_total") == 6
        assert stat(h, "phi_guard_audit_retried_total") == 0, "a refusal for good is never retried"
        attempts = h.collector_attempts()
        h.collector_status(202)
        for _ in range(4):
            assert api.get(f"/fhir/Patient/{ME}", token=token).status == 200
        lines = wait_lines(h.audit_lines, 4, timeout=15)
        assert len(lines) == 4, "the refused batches do not hold the later ones"
        assert attempts <= 6
        # Every chain position the refusals name is in Envoy's log, sealed (Envoy writes its log
        # file in the background: wait for it).
        deadline = time.monotonic() + 15
        while True:
            log = h.envoy_log_text()
            logged = {(e["stream"], e["seq"]) for e in
                      (json.loads(line.split("phi-guard-audit: ", 1)[1]) for line in log.splitlines()
                       if "phi-guard-audit: " in line)}
            named = set()
            for e in phi_guard_log_entries(log):
                if e["msg"] != "audit batch not delivered" or e.get("cause") != "refused":
                    continue
                assert (e["level"], e["status"], e["loggedInstead"]) == ("error", 400, False), e
                for part in e["seq"].split(","):
                    lo, _, hi = part.partition("-")
                    named.update((e["stream"], n) for n in range(int(lo), int(hi or lo) + 1))
            if len(named) >= 6 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(named) == 6, (named, log[-2000:])
        assert named <= logged
    finally:
        h.stop()


def test_retry_after_holds_retries_back():
    """429 with `Retry-After: 3`: each worker waits for it instead of its 100 ms backoff."""
    h = start("audit-retry-after", collector_policy(queueMaxEvents=1000))
    try:
        api = Api(h)
        token = clinician_token()
        h.collector_status(429, retry_after="3")
        for _ in range(6):
            assert api.get(f"/fhir/Patient/{ME}", token=token).status == 200
        time.sleep(2.5)
        # At most one attempt per worker in 2.5 s (with the 100-500 ms backoff alone, each
        # would have tried about five times).
        assert 1 <= h.collector_attempts() <= 2, h.collector_attempts()
        h.collector_status(202)
        lines = wait_lines(h.audit_lines, 6, timeout=15)
        assert len(lines) == 6, "retried after the wait, nothing lost"
        assert stat(h, "phi_guard_audit_refused_total") == 0
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
