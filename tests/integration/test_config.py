"""A policy the filter rejects must keep Envoy from serving: never fail open."""

import json

import pytest
from conftest import HARNESS_KIND, POLICIES, RUN_DIR
from harness import HarnessError, make_harness


@pytest.mark.skipif(HARNESS_KIND != "local", reason="starts its own Envoy")
def test_invalid_policy_is_refused_at_start(tmp_path):
    policy = json.loads((POLICIES / "smart-patient-app.json").read_text())
    policy["routes"][-1]["fhir"] = {"noSuchField": True}
    bad = tmp_path / "bad-policy.json"
    bad.write_text(json.dumps(policy))
    with pytest.raises(HarnessError) as err:
        harness = make_harness("local", "bad-policy", policy=bad, workdir=RUN_DIR / "bad-policy")
        harness.stop()
    assert "noSuchField" in str(err.value), str(err.value)
