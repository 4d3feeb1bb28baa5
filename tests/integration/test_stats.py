"""phi-guard's own counters show up in Envoy's Prometheus endpoint."""

import re
import time

from helpers import ME

# define_metric names land as e.g. phi_guard_requests_allowed (Envoy strips its custom-namespace
# prefix for Prometheus); accept the envoy_/wasmcustom_ prefixed forms too.
METRIC = re.compile(r"^(?:envoy_)?(?:wasmcustom_)?(phi_guard\w*)(?:\{[^}]*\})?\s+([0-9.eE+-]+)$")


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
    assert any("allow" in k and v > 0 for k, v in metrics.items()), metrics
    assert any("den" in k and v > 0 for k, v in metrics.items()), metrics
