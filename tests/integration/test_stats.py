"""phi-guard's own counters show up in Envoy's Prometheus endpoint."""

import re
import time

from helpers import ME

# define_metric names land as e.g. phi_guard_requests_allowed_total (Envoy strips its `wasmcustom`
# namespace for Prometheus); labelled families (reason, limit) are summed over their labels here,
# test_metrics.py checks the labels themselves.
METRIC = re.compile(r"^(phi_guard\w*)(?:\{[^}]*\})?\s+([0-9.eE+-]+)$")


def phi_guard_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = METRIC.match(line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


def test_prometheus_has_phi_guard_counters(patient_app, tokens):
    token = tokens.cli(scope="patient/*.rs", patient=ME)
    for _ in range(3):  # both workers may serve: send a few of each
        assert patient_app.get(f"/fhir/Patient/{ME}", token=token).status == 200
        assert patient_app.get(f"/fhir/Patient/{ME}").status == 401
    metrics: dict[str, float] = {}
    for _ in range(20):  # Envoy flushes worker stats to the admin view periodically
        metrics = phi_guard_metrics(patient_app.harness.stats_prometheus())
        if sum(v for k, v in metrics.items() if "allow" in k) and \
                sum(v for k, v in metrics.items() if "den" in k):
            break
        time.sleep(0.25)
    assert metrics, "no phi_guard* metric in /stats/prometheus"
    assert metrics.get("phi_guard_requests_allowed_total", 0) > 0, metrics
    assert metrics.get("phi_guard_requests_denied_total", 0) > 0, metrics


def _settled(app, key: str, at_least: float) -> dict[str, float]:
    """phi-guard's metrics once `key` reached `at_least` (worker stats reach the admin view
    on Envoy's flush interval)."""
    metrics: dict[str, float] = {}
    for _ in range(40):
        metrics = phi_guard_metrics(app.harness.stats_prometheus())
        if metrics.get(key, 0.0) >= at_least:
            break
        time.sleep(0.25)
    return metrics


def test_a_token_is_verified_once_per_envoy(patient_app, tokens):
    """Both workers serve the same new token; its signature is verified once, and the other
    worker takes it on the first one's attestation in shared data."""
    before = phi_guard_metrics(patient_app.harness.stats_prometheus())
    allowed = "phi_guard_requests_allowed_total"
    token = tokens.cli(scope="patient/*.rs", patient=ME)
    n = 12  # each request on a new connection: Envoy spreads them over its two workers
    for _ in range(n):
        assert patient_app.get(f"/fhir/Patient/{ME}", token=token).status == 200
    after = _settled(patient_app, allowed, before.get(allowed, 0.0) + n)
    verified = after.get("phi_guard_token_signatures_verified_total", 0.0) - before.get("phi_guard_token_signatures_verified_total", 0.0)
    attested = after.get("phi_guard_token_attestations_used_total", 0.0) - before.get("phi_guard_token_attestations_used_total", 0.0)
    assert verified == 1, (verified, attested, after)
    assert attested <= 1, "each worker caches the principal after its first use"
