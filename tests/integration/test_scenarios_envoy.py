"""Every scenario file (tests/scenarios/*.json) replayed through a real Envoy and compared with
`phi-guard explain` on the same inputs.

`tests/scenarios.rs` runs the files through the core; this runs them through the filter as Envoy
loads it: the token is minted at the real current time, the demo upstream is made to answer with
the scenario's upstream response (`Harness.upstream_respond`), and the request goes through the
proxy. The filter's answer (status, body bytes, WWW-Authenticate, whether the upstream saw the
request) and its audit record (found in Envoy's log by the `x-request-id` sent) must equal what
`explain --json` computes for the same token, request, upstream answer, keys, request id and time,
and both must meet the scenario's own expectations.

Envoy's path hardening (`normalize_path`, `merge_slashes`, escaped slashes rejected) changes some
requests before any filter sees them. Such a scenario is replayed on the harness of the same
policy with that hardening off, where the filter gets the exact request the scenario describes;
on the hardened harness the filter's answer is compared with `explain` on the path Envoy handed it,
or, for a path Envoy refuses itself, it is checked that Envoy answered 400 without the filter
(no audit record) and forwarded nothing.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from envoy_config import DEMO_AUDIT_KEY, DEMO_HMAC_KEY
from fhir_audit import check_audit_event
from fhir_audit import ext as ext_url
from helpers import Api, Response, reason_codes
from tokens import CLI, PyMinter, dpop_proof

REPO = Path(__file__).resolve().parents[2]


SCENARIOS = sorted((REPO / "tests" / "scenarios").glob("*.json"))
# The harness fixtures (conftest.py) that run each policy: Envoy's path hardening on, and off
# (None: no such harness yet; a scenario that needs one fails and says so).
HARNESSES = {
    "policies/smart-patient-app.json": ("patient_app", "patient_app_raw"),
    "policies/clinician-api.json": ("clinician", None),
}
AUDIT_PREFIX = "phi-guard-audit: "
# The origin of the plain listener as the filter sees it (`:scheme`, the Host sent), which DPoP
# proofs name (tests/scenarios.rs uses the same).
DPOP_ORIGIN = "http://fhir.phi-guard.test"
AUDIT_EXT = ext_url("")
FHIR_JSON = "application/fhir+json"
# The keys the filter's VM has (envoy_config.py, the compose file's defaults). The scenario
# runner's audit key is the same demo key: the shipped policies name restricted patients by
# pseudonyms under it.
KEY_ENV = {"PHI_GUARD_AUDIT_KEY": DEMO_AUDIT_KEY, "PHI_GUARD_HMAC_KEY": DEMO_HMAC_KEY}
# JSON-lines members that depend on the time, the audit chain or the network, not the decision.
VOLATILE_JSONL = {"v", "stream", "seq", "mac", "time", "source", "destination"}
CHAIN_EXTENSIONS = {f"{AUDIT_EXT}stream", f"{AUDIT_EXT}seq", f"{AUDIT_EXT}mac"}
ESCAPED_SLASH = re.compile(r"%(2f|5c)", re.IGNORECASE)


def resolve_times(value, now: int):
    """Claim strings `now+N` / `now-N` -> seconds since the epoch, as tests/scenarios.rs does."""
    if isinstance(value, str):
        m = re.fullmatch(r"now([+-])(\d+)", value)
        return value if m is None else now + int(m[2]) * (1 if m[1] == "+" else -1)
    if isinstance(value, dict):
        return {k: resolve_times(v, now) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_times(v, now) for v in value]
    return value


def remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4 on an absolute path."""
    out: list[str] = []
    segments = path.split("/")[1:]
    for seg in segments:
        if seg == "..":
            if out:
                out.pop()
        elif seg != ".":
            out.append(seg)
    trailing = "/" if segments and segments[-1] in (".", "..") else ""
    return "/" + "/".join(out) + trailing


def hardened_path(path: str) -> str | None:
    """The `:path` the filter sees behind the harness's path hardening (envoy_config.py:
    `normalize_path`, `merge_slashes`, `path_with_escaped_slashes_action: REJECT_REQUEST`);
    None when Envoy itself refuses the request."""
    raw, sep, query = path.partition("?")
    if ESCAPED_SLASH.search(raw):
        return None
    return remove_dot_segments(re.sub("/{2,}", "/", raw)) + sep + query


@dataclass
class Exchange:
    """One scenario's inputs, as both the proxy and `explain` get them."""

    method: str
    path: str
    authorization: str | None
    upstream_status: int
    upstream_body: bytes
    now: int
    request_id: str
    dpop: str | None = None  # a DPoP proof (the `DPoP` header)


@dataclass
class Replay:
    """What the filter did, and what `explain` says it does with the request it received."""

    response: Response
    forwarded: list[dict]
    record: dict  # the filter's audit record (JSON lines event or FHIR AuditEvent)
    cli: dict
    seen: Exchange  # the exchange as the filter received it (and as `explain` was given it)


def exchange_of(scenario: dict, path: str) -> Exchange:
    now = int(time.time())
    token = scenario.get("token")
    header = (scenario["request"].get("headers") or {}).get("authorization")
    proof = None
    if header is None and token is not None:
        claims = resolve_times(token["claims"], now)
        minted = PyMinter().token(claims, alg=token["alg"], kid=token.get("kid"))
        header = "Bearer " + minted
        if scenario.get("dpop") is not None:
            # The plain listener: Envoy sees `:scheme` http and the Host the client sent.
            d = scenario["dpop"]
            overrides = resolve_times({k: d[k] for k in ("htm", "htu", "iat", "jti") if k in d}, now)
            header = "DPoP " + minted
            proof = dpop_proof(scenario["request"]["method"], f"{DPOP_ORIGIN}{scenario['request']['path']}", minted,
                               alg=d.get("key", "ES256"), claims=overrides)
    upstream = scenario.get("upstream")
    if upstream is None:
        # The scenario decides the request only (tests/scenarios.rs releases nothing): the
        # upstream answers 200 with the smallest body a checked route releases unchanged (an
        # empty 2xx is refused on checked routes: `response_not_json`), in the filter and in
        # `explain` alike.
        status, body = 200, minimal_body(scenario["request"]["path"])
    else:
        status = upstream.get("status", 200)
        if "body" in upstream:
            body = json.dumps(upstream["body"], ensure_ascii=False, separators=(",", ":")).encode()
        else:
            body = (REPO / upstream["bodyFile"]).read_bytes()
    return Exchange(scenario["request"]["method"], path, header, status, body, now, str(uuid.uuid4()), proof)


def explain(policy: str, x: Exchange, tmp: Path) -> dict:
    body_file = tmp / f"upstream-{x.request_id}.json"
    body_file.write_bytes(x.upstream_body)
    argv = [str(CLI), "explain", str(REPO / policy), "--method", x.method, "--path", x.path,
            "--upstream-body", str(body_file), "--upstream-status", str(x.upstream_status),
            "--upstream-content-type", FHIR_JSON, "--hmac-key-env", "PHI_GUARD_HMAC_KEY",
            "--audit-key-env", "PHI_GUARD_AUDIT_KEY", "--request-id", x.request_id,
            "--now", str(x.now), "--json"]
    if x.authorization is not None:
        argv += ["--authorization", x.authorization]
    if x.dpop is not None:
        argv += ["--dpop", x.dpop, "--origin", DPOP_ORIGIN]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **KEY_ENV}, cwd=REPO)
    # Exit 2: the request or the response is refused (the outcome is printed all the same).
    assert proc.returncode in (0, 2), f"explain failed ({proc.returncode}): {proc.stderr}"
    return json.loads(proc.stdout)


def audit_records(harness, request_id: str) -> list[dict]:
    return [json.loads(line.split(AUDIT_PREFIX, 1)[1]) for line in harness.envoy_log_text().splitlines()
            if AUDIT_PREFIX in line and request_id in line]


def wait_record(harness, request_id: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while not (found := audit_records(harness, request_id)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(found) == 1, f"{len(found)} audit records for request {request_id} in Envoy's log"
    return found[0]


def through_proxy(api: Api, x: Exchange) -> tuple[Response, list[dict]]:
    """Send the request with the scenario's upstream answer in place; what came back, and what
    reached the upstream."""
    harness = api.harness
    # Also for requests that must be refused: one that leaks through gets an answer, not an error.
    harness.upstream_respond(x.upstream_status, x.upstream_body, FHIR_JSON)
    try:
        headers = {"x-request-id": x.request_id}
        if x.authorization is not None:
            headers["Authorization"] = x.authorization
        if x.dpop is not None:
            headers["DPoP"] = x.dpop
        resp = api.request(x.method, x.path, headers=headers)
        return resp, api.upstream_requests()
    finally:
        # The upstream is shared with every other test on this harness.
        harness.upstream_reset()


def replay(api: Api, policy: str, x: Exchange, tmp: Path, seen_path: str | None = None) -> Replay:
    """Through the proxy, then `explain` on the request as the filter received it: `seen_path`
    when Envoy's hardening rewrote the path before the filter ran."""
    resp, forwarded = through_proxy(api, x)
    seen = x if seen_path is None else replace(x, path=seen_path)
    return Replay(resp, forwarded, wait_record(api.harness, x.request_id), explain(policy, seen, tmp), seen)


# ------------------------------------------------------------------------------ audit records
def ext(record: dict, name: str) -> dict | None:
    return next((e for e in record.get("extension", []) if e.get("url") == AUDIT_EXT + name), None)


def is_fhir(record: dict) -> bool:
    return record.get("resourceType") == "AuditEvent"


def record_reason(record: dict) -> str | None:
    if is_fhir(record):
        return (ext(record, "reason") or {}).get("valueCode")
    return record.get("reason")


def record_route(record: dict) -> str | None:
    if is_fhir(record):
        return (ext(record, "route") or {}).get("valueString")
    return record.get("route")


def record_withheld(record: dict) -> list[str]:
    if is_fhir(record):
        return [x["valueString"] for e in record.get("entity", []) for x in e.get("extension", [])
                if x.get("url") == AUDIT_EXT + "withheld-path"]
    return record.get("withheld", [])


def comparable(record: dict) -> dict:
    """The record less what depends on the time, the chain or the network: the JSON-lines `time`,
    `v`, `stream`, `seq`, `mac`, `source`, `destination`; the FHIR `recorded`, the chain's
    extensions and the agents' `network` (addresses the CLI does not have)."""
    if not is_fhir(record):
        return {k: v for k, v in record.items() if k not in VOLATILE_JSONL}
    out = copy.deepcopy(record)
    out.pop("recorded", None)
    out["extension"] = [e for e in out.get("extension", []) if e.get("url") not in CHAIN_EXTENSIONS]
    for agent in out.get("agent", []):
        agent.pop("network", None)
    return out


def cli_record(cli: dict) -> dict:
    """The record `explain` says the filter logs: the FHIR form where the policy asks for it."""
    return cli["auditFhir"] if "auditFhir" in cli else cli["audit"]


# ------------------------------------------------------------------------------ comparisons
def assert_filter_matches_cli(r: Replay) -> None:
    x = r.seen
    cli, resp, where = r.cli, r.response, f"{x.method} {x.path}"
    # Status, refusal code and route.
    assert resp.status == cli["status"], f"{where}: filter {resp.status}, explain {cli['status']}: {resp.describe()}"
    assert record_reason(r.record) == (cli.get("reason") or "allowed"), (where, r.record, cli.get("reason"))
    assert record_route(r.record) == cli.get("route"), (where, record_route(r.record), cli.get("route"))
    if x.method == "HEAD":
        # A HEAD answer carries no body (RFC 9110 9.3.2); the audit record says why.
        assert resp.body == b"", f"{where}: a body in a HEAD answer: {resp.describe()}"
    else:
        if cli.get("reason") and cli["enforced"]:
            assert cli["reason"] in reason_codes(resp), f"{where}: body lacks {cli['reason']}: {resp.describe()}"
        # The released (or refusal) body, byte for byte; unchanged means the upstream's own bytes.
        assert resp.body == cli["body"].encode(), (f"{where}: filter sent {resp.body[:300]!r}, "
                                                   f"explain {cli['body'][:300]!r}")
        if not cli["bodyChanged"]:
            assert resp.body == x.upstream_body, f"{where}: body changed though explain says it is not"
    # The challenge of a request refusal.
    assert resp.header("www-authenticate") == cli.get("wwwAuthenticate"), where
    # Refused in the request phase: nothing reached the upstream; otherwise exactly this request.
    if cli.get("phase") == "request" and cli["enforced"]:
        assert r.forwarded == [], f"{where}: refused request reached the upstream: {r.forwarded}"
    else:
        assert [f["method"] for f in r.forwarded] == [x.method], f"{where}: upstream saw {r.forwarded}"
    # Withheld paths, then the whole audit record (restrictions, break-glass, patients, digest...);
    # a FHIR record passes the FHIR R4 models and the BALP checks.
    assert record_withheld(r.record) == cli["withheld"], where
    if is_fhir(r.record):
        check_audit_event(r.record)
    want = comparable(cli_record(cli))
    got = comparable(r.record)
    assert got == want, f"{where}: audit records differ:\nfilter:  {json.dumps(got)}\nexplain: {json.dumps(want)}"


def released_entries(body: dict) -> list[str]:
    return [f"{e['resource'].get('resourceType', '?')}/{e['resource'].get('id', '?')}"
            for e in body.get("entry", []) if isinstance(e, dict) and isinstance(e.get("resource"), dict)]


def minimal_body(path: str) -> bytes:
    """A FHIR read of Type/id: that resource with that id; a FHIR search: an empty searchset;
    anything else: an empty JSON object."""
    route, _, query = path.partition("?")
    parts = [p for p in route.split("/") if p]
    if "fhir" in parts:
        rest = parts[parts.index("fhir") + 1:]
        if len(rest) == 2 and not query:
            return json.dumps({"resourceType": rest[0], "id": rest[1]}, separators=(",", ":")).encode()
        return b'{"resourceType":"Bundle","type":"searchset"}'
    return b"{}"


def assert_meets_expectations(r: Replay, expect: dict) -> None:
    """The scenario's `expect`, as tests/scenarios.rs reads it, on what went through Envoy."""
    cli, resp = r.cli, r.response
    assert resp.status == expect["status"], resp.describe()
    assert cli.get("reason") == expect.get("reason"), (cli.get("reason"), expect.get("reason"))
    if "route" in expect:
        assert record_route(r.record) == expect["route"]
    if "wwwAuthenticate" in expect:
        assert expect["wwwAuthenticate"] in (resp.header("www-authenticate") or ""), resp.headers
    if expect.get("bodyReplaced"):
        # A response-phase refusal, or an upstream error scrubbed on a rewriting route.
        assert cli["bodyChanged"] and (cli.get("phase") == "response" or not 200 <= resp.status < 300), cli
        assert resp.body == cli["body"].encode(), "the filter's replacement differs from explain's"
    if "profile" in expect:
        # The profile is not in the audit record; the filter's released bytes equal those of the
        # profile `explain` applied (assert_filter_matches_cli).
        assert cli.get("profile") == expect["profile"]
    if "entries" in expect or "absent" in expect:
        released = json.loads(resp.body)
        if "entries" in expect:
            assert released_entries(released) == expect["entries"]
        for member in expect.get("absent", []):
            assert member not in released, f"released body still has {member!r}"
    if "notInBody" in expect or "inBody" in expect:
        text = resp.body.decode()
        for s in expect.get("notInBody", []):
            assert s not in text, f"released body contains {s!r}"
        for s in expect.get("inBody", []):
            assert s in text, f"released body lacks {s!r}"
    for member, value in (expect.get("audit") or {}).items():
        assert cli["audit"].get(member) == value, f"audit {member}: {cli['audit'].get(member)!r}, expected {value!r}"


def assert_envoy_refused_itself(api: Api, x: Exchange) -> None:
    """Envoy answers without running the filter: 400, nothing forwarded, no audit record. A
    request sent afterwards is audited, so the log is known to be written past this one."""
    resp, forwarded = through_proxy(api, x)
    assert resp.status == 400, resp.describe()
    assert forwarded == [], forwarded
    marker = str(uuid.uuid4())
    api.request("GET", "/healthz", headers={"x-request-id": marker})
    wait_record(api.harness, marker)
    assert audit_records(api.harness, x.request_id) == [], "the filter audited a request Envoy refused"


@pytest.mark.parametrize("scenario_file", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario_through_envoy_matches_explain(scenario_file: Path, request, tmp_path):
    scenario = json.loads(scenario_file.read_text())
    policy, path = scenario["policy"], scenario["request"]["path"]
    if policy not in HARNESSES:
        pytest.fail(f"no harness runs {policy}: add one to conftest.py and HARNESSES", pytrace=False)
    hardened, raw = HARNESSES[policy]
    through = hardened_path(path)
    if through == path:
        r = replay(request.getfixturevalue(hardened), policy, exchange_of(scenario, path), tmp_path)
        assert_filter_matches_cli(r)
        assert_meets_expectations(r, scenario["expect"])
        return
    # Envoy's path hardening changes this request before any filter runs: without the hardening
    # the filter gets the scenario's exact request and must refuse it itself (the filter must not
    # rely on Envoy's normalization: Istio and other hosts may not set it).
    if raw is None:
        pytest.fail(f"{path!r} is changed by Envoy's path hardening and no harness runs {policy} "
                    "without it: add one to conftest.py and HARNESSES", pytrace=False)
    r = replay(request.getfixturevalue(raw), policy, exchange_of(scenario, path), tmp_path)
    assert_filter_matches_cli(r)
    assert_meets_expectations(r, scenario["expect"])
    # With the hardening, the filter decides on the path Envoy hands it (not the scenario's, so
    # the scenario's expectations do not apply), or Envoy refuses the request itself.
    api = request.getfixturevalue(hardened)
    if through is None:
        assert_envoy_refused_itself(api, exchange_of(scenario, path))
    else:
        r = replay(api, policy, exchange_of(scenario, path), tmp_path, seen_path=through)
        assert_filter_matches_cli(r)
