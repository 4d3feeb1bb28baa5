"""The policy playground in a real (headless) Chromium.

Drives the page as a user would (compile, explain, run a minimization; the shown results are
checked), saves a screenshot to target/browser/playground.png, and runs every scenario in
tests/scenarios/ through the page's core and through `phi-guard explain --json` with the same
inputs: the two Outcome JSONs must be equal, and must say what the scenario expects.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait
from tokens import PyMinter, dpop_proof  # the Envoy scenario replay mints with them too

ROOT = Path(__file__).resolve().parents[2]

CLI = Path(os.environ.get("PHI_GUARD_CLI") or ROOT / "target/release/phi-guard")
# The scenario runner's clock and keys (tests/scenarios.rs).
NOW = 1_800_000_000
AUDIT_KEY = "phi-guard-demo-audit-key-not-a-secret"
HMAC_KEY = "scenario-only hmac key, 32 bytes"
REQUEST_ID = "scenario"
SCENARIOS = sorted((ROOT / "tests/scenarios").glob("*.json"))


# ---- page helpers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def page(driver, playground_url):
    driver.get(playground_url)
    WebDriverWait(driver, 30).until(
        lambda d: d.find_element(By.ID, "wasm-status").get_attribute("data-state") in ("ready", "failed"))
    status = driver.find_element(By.ID, "wasm-status")
    assert status.get_attribute("data-state") == "ready", status.text
    return driver


def by_id(d, id_: str):
    return d.find_element(By.ID, id_)


def choose(d, select_id: str, value: str) -> None:
    Select(by_id(d, select_id)).select_by_value(value)
    d.execute_script("return window.phiGuard.idle()")


def shown(d, id_: str) -> str:
    return by_id(d, id_).text.strip()


def console_errors(d) -> list[str]:
    return [e["message"] for e in d.get_log("browser") if e["level"] == "SEVERE"]


# ---- the page, as a user drives it ---------------------------------------------------------


def test_compile_shows_the_policy_or_its_located_error(page):
    # The first ready-made request is loaded at start, with its policy compiled.
    assert by_id(page, "compile-ok").is_displayed()
    assert shown(page, "policy-name") == "smart-patient-app"
    assert shown(page, "policy-revision").startswith("sha256:")
    routes = [r.text.split()[0] for r in page.find_elements(By.CSS_SELECTOR, "#policy-routes tbody tr")]
    assert routes == ["health", "smart-config", "smart-config-fhir", "capabilities", "fhir"]

    # An invalid example: the error and its location, as `phi-guard validate` reports it.
    want = (ROOT / "tests/invalid-policies/unknown-interaction.error").read_text().strip()
    choose(page, "policy-example", "invalid-policies/unknown-interaction.json")
    assert by_id(page, "compile-error").is_displayed()
    assert not by_id(page, "compile-ok").is_displayed()
    assert shown(page, "compile-error-location") == "routes[3].fhir.interactions[1]"
    assert shown(page, "compile-error-message") == want
    assert "invalid" in by_id(page, "policy").get_attribute("class")
    by_id(page, "goto-error").click()
    selected = page.execute_script("const t = document.getElementById('policy'); return t.value.slice(t.selectionStart, t.selectionEnd)")
    assert selected == '"serach"'

    # A syntax error while typing: located by line and column, and selectable too.
    area = by_id(page, "policy")
    area.clear()
    area.send_keys('{\n  "version": 1,\n  "name": \n}')
    # Compiled as typed (debounced): wait for the new error rather than the previous one.
    WebDriverWait(page, 5).until(lambda d: "line " in shown(d, "compile-error-message"))
    assert by_id(page, "compile-error").is_displayed()
    assert "line 4 column 1" in shown(page, "compile-error-message")
    by_id(page, "goto-error").click()
    assert page.execute_script("const t = document.getElementById('policy'); return t.value.slice(0, t.selectionStart).split('\\n').length") == 4

    choose(page, "policy-example", "policies/clinician-api.json")
    assert shown(page, "policy-name") == "clinician-api"


def test_explain_shows_decision_reason_and_needed_scopes(page):
    choose(page, "preset", "patient-missing-scope")
    by_id(page, "explain").click()
    assert shown(page, "decision") == "DENY"
    assert shown(page, "status") == "403"
    assert shown(page, "reason") == "insufficient_scope"
    assert shown(page, "route") == "fhir"
    assert "patient/Observation.s" in shown(page, "needs")
    assert 'error="insufficient_scope"' in shown(page, "www-authenticate")
    assert '"reason": "insufficient_scope"' in by_id(page, "audit").get_attribute("textContent")
    # smart-patient-app logs FHIR AuditEvents: the page shows that form too.
    assert by_id(page, "audit-fhir-box").is_displayed()
    assert '"resourceType": "AuditEvent"' in by_id(page, "audit-fhir").get_attribute("textContent")

    choose(page, "preset", "no-token")
    by_id(page, "explain").click()
    assert (shown(page, "decision"), shown(page, "status"), shown(page, "reason")) == ("DENY", "401", "missing_token")
    assert shown(page, "www-authenticate").startswith("Bearer")

    choose(page, "preset", "patient-own-record")
    by_id(page, "explain").click()
    assert shown(page, "decision") == "ALLOW"
    assert shown(page, "reason") == ""
    assert "patient example" in shown(page, "caller")

    # A signed token with the demo JWKS pasted for its issuer, as a user would from `make token`.
    now = int(by_id(page, "now").get_attribute("value"))
    token = mint({"alg": "ES256", "kid": "demo-es256", "claims": {
        "iss": "https://idp.phi-guard.test", "aud": "https://fhir.phi-guard.test", "sub": "user-1",
        "iat": now - 10, "exp": now + 600, "scope": "patient/Patient.rs", "patient": "example"}})
    by_id(page, "cred-token").click()
    by_id(page, "token").clear()
    by_id(page, "explain").click()
    assert shown(page, "error").startswith("token: paste a compact JWS")
    by_id(page, "token").send_keys(token)
    assert '"kid": "demo-es256"' in by_id(page, "token-decoded").get_attribute("textContent")
    by_id(page, "load-demo-jwks").click()
    page.execute_script("return window.phiGuard.idle()")
    by_id(page, "explain").click()
    assert (shown(page, "decision"), shown(page, "reason")) == ("ALLOW", "")
    assert "scopes: patient/Patient.rs" in shown(page, "caller")
    # The same token a day later: expired.
    by_id(page, "now").clear()
    by_id(page, "now").send_keys(str(now + 86_400))
    by_id(page, "explain").click()
    assert (shown(page, "decision"), shown(page, "status"), shown(page, "reason")) == ("DENY", "401", "token_expired")
    # A whole header as a client sends it: another scheme is refused as such.
    by_id(page, "cred-header").click()
    assert not by_id(page, "token").is_displayed()
    by_id(page, "authorization").send_keys("Basic dXNlcjpwYXNz")
    by_id(page, "explain").click()
    assert (shown(page, "decision"), shown(page, "status"), shown(page, "reason")) == ("DENY", "401", "unsupported_auth_scheme")
    by_id(page, "cred-claims").click()

    # Bad claims: the error names the input, nothing else is shown.
    by_id(page, "claims").send_keys("}")
    by_id(page, "explain").click()
    assert by_id(page, "error").is_displayed()
    assert shown(page, "error").startswith("claims: trailing characters")
    assert not by_id(page, "result").is_displayed()


def test_run_minimizes_a_real_fhir_resource(page, artifacts):
    original = (ROOT / "envoy/demo-data/resources/hl7r4_Patient-example.json").read_text()
    assert "Chalmers" in original
    choose(page, "preset", "research-safe-harbor")
    assert by_id(page, "upstream-body").get_attribute("value") == original
    by_id(page, "upstream-status").clear()
    by_id(page, "upstream-status").send_keys("2000")
    by_id(page, "run").click()
    assert shown(page, "error") == "upstream status: a number from 100 to 599"
    by_id(page, "upstream-status").clear()
    by_id(page, "upstream-status").send_keys("200")
    by_id(page, "run").click()
    assert (shown(page, "decision"), shown(page, "status")) == ("ALLOW", "200")
    assert shown(page, "profile") == "research-deidentified"
    withheld = [li.text for li in page.find_elements(By.CSS_SELECTOR, "#withheld li")]
    for path in ("Patient.name", "Patient.telecom", "Patient.identifier", "Patient.birthDate", "Patient.address.city", "Patient.id"):
        assert path in withheld
    # The preset carries the demo HMAC key: the record key is a pseudonym.
    assert by_id(page, "hmac-key").get_attribute("value") != ""
    released = by_id(page, "body").get_attribute("textContent")
    assert "Chalmers" not in released and '"birthDate": "1974"' in released
    assert '"id": "example"' not in released
    assert "REDACTED" in released
    # The diff shows the withheld value as removed, and the generalized one as added.
    deleted = "\n".join(e.get_attribute("textContent") for e in page.find_elements(By.CSS_SELECTOR, "#diff .del"))
    added = "\n".join(e.get_attribute("textContent") for e in page.find_elements(By.CSS_SELECTOR, "#diff .add"))
    assert '"Chalmers"' in deleted and '"birthDate": "1974-12-25"' in deleted
    assert '"birthDate": "1974"' in added and "Chalmers" not in added
    assert shown(page, "diff-summary").startswith("−")
    assert not by_id(page, "audit-fhir-box").is_displayed(), "clinician-api logs JSON lines"
    audit = json.loads(by_id(page, "audit").get_attribute("textContent"))
    assert audit["withheld"] == withheld
    assert audit["decision"] == "allow" and audit["purposeOfUse"] == ["HRESCH"]
    assert "Chalmers" not in json.dumps(audit)
    # The artifact: the whole page, editors and results, as it stands after the run.
    path = artifacts / "playground.png"
    height = page.execute_script("return document.documentElement.scrollHeight")
    page.set_window_size(1400, min(height + 200, 10_000))
    try:
        assert page.save_screenshot(str(path))
    finally:
        page.set_window_size(1400, 2400)
    assert path.stat().st_size > 10_000


def lcs(a: list[str], b: list[str]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        prev = 0
        for j, y in enumerate(b):
            prev, row[j + 1] = row[j + 1], prev + 1 if x == y else max(row[j + 1], row[j])
    return row[-1]


def test_diff_is_a_shortest_edit_script(page):
    # The page's line diff on random line lists: it must rebuild both sides, in order, with as
    # few edits as any diff can (n + m - 2·LCS).
    rng = random.Random(9)
    cases = [([], []), (["a"], []), ([], ["a"]), (["a", "b"], ["b", "a"])]
    for _ in range(150):
        a = [rng.choice("abcde") for _ in range(rng.randint(0, 14))]
        b = [x for x in a if rng.random() > 0.3]
        for _ in range(rng.randint(0, 4)):
            b.insert(rng.randint(0, len(b)), rng.choice("abcdef"))
        cases.append((a, b))
    results = page.execute_script("return arguments[0].map(([a, b]) => window.phiGuard.diffLines(a, b))", cases)
    for (a, b), ops in zip(cases, results):
        assert [o["text"] for o in ops if o["op"] != "+"] == a
        assert [o["text"] for o in ops if o["op"] != "-"] == b
        assert [o["a"] for o in ops if o["op"] != "+"] == list(range(len(a)))
        assert [o["b"] for o in ops if o["op"] != "-"] == list(range(len(b)))
        assert sum(o["op"] != "=" for o in ops) == len(a) + len(b) - 2 * lcs(a, b), (a, b, ops)
    # Past its bound it gives up instead of stalling the page.
    assert page.execute_script("return window.phiGuard.diffLines(['a', 'b', 'c'], ['x', 'y', 'z'], 2)") is None


def test_page_loads_nothing_from_elsewhere(page, playground_url):
    urls = page.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls, "no resources recorded"
    assert all(u.startswith(playground_url) for u in urls), urls
    assert console_errors(page) == []


# ---- the page against the CLI, on every scenario --------------------------------------------


def resolve_times(v):
    if isinstance(v, str) and v[:4] in ("now+", "now-") and v[4:].isdigit():
        return NOW + int(v[3:])
    if isinstance(v, dict):
        return {k: resolve_times(x) for k, x in v.items()}
    if isinstance(v, list):
        return [resolve_times(x) for x in v]
    return v


def mint(token: dict) -> str:
    """A scenario's token: exactly its claims, signed with the demo key for its algorithm."""
    return PyMinter().token(resolve_times(token["claims"]), alg=token["alg"], kid=token.get("kid"))


# The origin DPoP scenarios' proofs name (tests/scenarios.rs and the Envoy runner use the same).
DPOP_ORIGIN = "http://fhir.phi-guard.test"


def proof_of(s: dict, token: str | None) -> str | None:
    """A scenario's DPoP proof for its request and token, made at NOW."""
    d = s.get("dpop")
    if d is None or token is None:
        return None
    overrides = resolve_times({k: d[k] for k in ("htm", "htu", "iat", "jti") if k in d})
    overrides.setdefault("iat", NOW)
    overrides.setdefault("jti", "scenario-proof")
    return dpop_proof(s["request"]["method"], DPOP_ORIGIN + s["request"]["path"], token, alg=d.get("key", "ES256"),
                      claims=overrides)


def cli_explain(tmp: Path, s: dict, token: str | None, header: str | None, jwks: bool, body: str | None) -> subprocess.CompletedProcess:
    req = s["request"]
    args = [str(CLI), "explain", s["policy"], "--method", req["method"], "--path", req["path"], "--now", str(NOW),
            "--request-id", REQUEST_ID, "--audit-key-env", "PG_TEST_AUDIT_KEY", "--hmac-key-env", "PG_TEST_HMAC_KEY", "--json"]
    if token is not None:
        args += ["--token", token]
    if header is not None:
        args += ["--authorization", header]
    if jwks:
        args += ["--jwks", "tests/keys/demo-jwks.json"]
    proof = proof_of(s, token)
    if proof is not None:
        args += ["--dpop", proof, "--origin", DPOP_ORIGIN]
    if body is not None:
        (tmp / "body.json").write_text(body, encoding="utf-8")
        args += ["--upstream-body", str(tmp / "body.json"), "--upstream-status", str(s.get("upstream", {}).get("status", 200))]
    env = {**os.environ, "PG_TEST_AUDIT_KEY": AUDIT_KEY, "PG_TEST_HMAC_KEY": HMAC_KEY}
    r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode in (0, 1, 2), r.stderr
    return r


def page_explain(page, s: dict, token: str | None, header: str | None, jwks: bool, body: str | None) -> dict:
    req = s["request"]
    inp = {"policy": (ROOT / s["policy"]).read_text(encoding="utf-8"), "method": req["method"], "path": req["path"],
           "now": NOW, "requestId": REQUEST_ID, "auditKey": AUDIT_KEY, "hmacKey": HMAC_KEY}
    if token is not None:
        inp["token"] = token
    if header is not None:
        inp["authorization"] = header
    if jwks:
        inp["jwks"] = (ROOT / "tests/keys/demo-jwks.json").read_text(encoding="utf-8")
    proof = proof_of(s, token)
    if proof is not None:
        inp["dpop"], inp["origin"] = proof, DPOP_ORIGIN
    if body is not None:
        inp["upstream"] = {"status": s.get("upstream", {}).get("status", 200), "body": body}
    # The function the page's buttons call, on the JSON text the CLI would get as files.
    return json.loads(page.execute_script("return window.phiGuard.explainJson(arguments[0])", json.dumps(inp)))


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_page_equals_cli_on_scenario(page, scenario, tmp_path):
    s = json.loads(scenario.read_text(encoding="utf-8"))
    # A literal header goes as sent (`--authorization`); else the scenario's token, minted now.
    header = (s["request"].get("headers") or {}).get("authorization")
    token = mint(s["token"]) if header is None and s.get("token") else None
    up = s.get("upstream") or {}
    if "body" in up:
        body = json.dumps(up["body"], ensure_ascii=False, separators=(",", ":"))
    elif "bodyFile" in up:
        body = (ROOT / up["bodyFile"]).read_text(encoding="utf-8")
    else:
        body = None
    trusted = token is not None and s.get("token", {}).get("claims", {}).get("iss") in {
        i["issuer"] for i in json.loads((ROOT / s["policy"]).read_text())["issuers"]}

    # With the policy's own keys, and (for a trusted issuer's token) with the pasted demo JWKS.
    for jwks in (False, True) if token is not None else (False,):
        cli = cli_explain(tmp_path, s, token, header, jwks, body)
        got = page_explain(page, s, token, header, jwks, body)
        if jwks and not trusted:
            # Keys for an issuer the policy does not trust: both refuse to install them.
            assert cli.returncode == 1 and got["ok"] is False and got["field"] == "jwks"
            assert cli.stderr.strip().endswith(got["error"]), (cli.stderr, got)
            continue
        assert got["ok"] is True, got
        want = json.loads(cli.stdout)
        assert got["outcome"] == want
        o = got["outcome"]
        exp = s["expect"]
        # Allowed without an upstream answer: the scenario runner's upstream answers 200.
        assert (o["status"] if o["status"] is not None else 200) == exp["status"]
        assert o.get("reason") == exp.get("reason")
        if "route" in exp:
            assert o.get("route") == exp["route"]
        if "profile" in exp:
            assert o.get("profile") == exp["profile"]
        if "wwwAuthenticate" in exp:
            assert exp["wwwAuthenticate"] in o.get("wwwAuthenticate", "")
        for k, v in exp.get("audit", {}).items():
            assert o["audit"].get(k) == v, k
        assert cli.returncode == (2 if o.get("reason") and o["enforced"] else 0)
