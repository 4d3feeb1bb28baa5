"""The harness itself, with Envoy but without phi-guard (`filter: none`).

These pass whatever the filter does: they prove the upstream, the proxy and the request log work,
so a failure elsewhere is the filter's.
"""

from helpers import ME, OTHER, assert_forwarded


def test_proxy_forwards_fhir_read(no_filter):
    resp = no_filter.get(f"/fhir/Patient/{ME}")
    assert resp.status == 200, resp.describe()
    assert resp.header("content-type") == "application/fhir+json"
    assert resp.json()["id"] == ME
    assert_forwarded(no_filter, resp, f"/fhir/Patient/{ME}")


def test_upstream_search_returns_searchset(no_filter):
    resp = no_filter.get(f"/fhir/Observation?patient={OTHER}&_count=2")
    assert resp.status == 200, resp.describe()
    bundle = resp.json()
    assert bundle["type"] == "searchset" and bundle["total"] > 2 and len(bundle["entry"]) == 2
    assert bundle["link"][0]["relation"] == "self"
    for entry in bundle["entry"]:
        assert entry["resource"]["subject"]["reference"] == f"Patient/{OTHER}"
        assert entry["search"]["mode"] == "match"
        assert entry["fullUrl"].endswith(f"/Observation/{entry['resource']['id']}")


def test_upstream_compartment_search(no_filter):
    resp = no_filter.get(f"/fhir/Patient/{ME}/Observation")
    assert resp.status == 200, resp.describe()
    assert resp.json()["total"] > 0


def test_request_log_is_not_reachable_through_envoy(no_filter):
    resp = no_filter.get("/__requests")
    assert resp.status == 404
    assert no_filter.upstream_requests() == []


def test_canned_response_hook_is_not_reachable_through_envoy(no_filter):
    resp = no_filter.request("POST", "/__respond", body=b'{"status": 200, "body": "pwned"}')
    assert resp.status == 404
    assert no_filter.upstream_requests() == []
    # Nothing was set: the upstream still serves its data.
    assert no_filter.get("/fhir/metadata").json()["resourceType"] == "CapabilityStatement"


def test_canned_response_replaces_every_answer_until_reset(no_filter):
    harness = no_filter.harness
    body = b'{"resourceType": "Patient", "id": "canned"}'
    harness.upstream_respond(203, body, "application/fhir+json; charset=utf-8")
    try:
        for path in (f"/fhir/Patient/{ME}", "/fhir/Observation?code=x", "/admin/reports/1"):
            resp = no_filter.get(path)
            assert (resp.status, resp.body) == (203, body), resp.describe()
            assert resp.header("content-type") == "application/fhir+json; charset=utf-8"
            assert [r["path"] for r in no_filter.upstream_requests()] == [path]
    finally:
        harness.upstream_reset()
    resp = no_filter.get(f"/fhir/Patient/{ME}")
    assert resp.status == 200 and resp.json()["id"] == ME, resp.describe()


def test_unknown_resource_is_operation_outcome(no_filter):
    resp = no_filter.get("/fhir/Patient/does-not-exist")
    assert resp.status == 404
    assert resp.json()["resourceType"] == "OperationOutcome"


def test_admin_stats_reachable(no_filter):
    assert "envoy_cluster_upstream_rq" in no_filter.harness.stats_prometheus()


def test_upstream_serves_demo_jwks(no_filter):
    resp = no_filter.get("/jwks.json")
    assert resp.status == 200, resp.describe()
    kids = {k["kid"] for k in resp.json()["keys"]}
    assert kids == {"demo-rs256", "demo-es256", "demo-eddsa"}
    assert all("d" not in k for k in resp.json()["keys"]), "private key material in the JWKS"
