"""phi-guard's metrics the Prometheus way (docs/METRICS.md), checked on a live Envoy's
/stats/prometheus: refusal reasons and rate-limit ids are labels, never part of a metric name;
counters end in `_total`; and every metric, label and label value that the shipped alert rules
(deploy/prometheus) and Grafana dashboard (deploy/grafana) use is one Envoy really exports.

Two Envoys: one with the bootstrap every shipped configuration renders (envoy_config.py), one with
what an Istio sidecar gets from deploy/istio (the bootstrap override's stats_tags and the
annotation's proxyStatsMatcher, as the only stats inclusion)."""

from __future__ import annotations

import copy
import json
import re
import time
import uuid
from pathlib import Path

import envoy_config
import pytest
import yaml
from conftest import RUN_DIR
from harness import LocalHarness
from helpers import ME, Api
from prometheus_client.parser import text_string_to_metric_families
from tokens import cli_token

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy" / "prometheus" / "phi-guard-alerts.yaml"
DASHBOARD = REPO / "deploy" / "grafana" / "phi-guard-dashboard.json"
ISTIO = REPO / "deploy" / "istio"
# Labels Prometheus adds when it scrapes (or Kubernetes service discovery adds): not Envoy's.
TARGET_LABELS = {"instance", "job", "namespace", "pod", "container", "service"}
LIMIT_ID = "metrics-burst"


def rust_reason_codes() -> set[str]:
    """The codes `DenyReason::code` returns (src/reason.rs)."""
    src = (REPO / "src" / "reason.rs").read_text()
    body = src[src.index("pub fn code(self)"):]
    body = body[:body.index("\n    }\n")]
    codes = set(re.findall(r'=> "([a-z_]+)",', body))
    assert len(codes) > 50, codes
    return codes


# ------------------------------------------------------------------------------------ PromQL
PROMQL_FUNCTION_LIKE = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*\s*\(")
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
            "offset", "bool", "inf", "nan", "atan2", "start", "end"}
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^{}]*)\}")
MATCHER = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*")\s*,?')


class Query:
    """What a PromQL expression reads: metric names, label matchers per metric, grouping labels.
    A small tokenizer, not a PromQL parser: strings, `{...}` matchers, `[...]` ranges,
    `by/without/on/ignoring/group_x (...)` label lists, numbers and durations are taken out
    first; what remains is an identifier per metric, function or keyword, and function names
    are the ones followed by `(`."""

    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.matchers: list[tuple[str | None, str, str, str]] = []  # metric, label, op, value
        self.grouping: set[str] = set()
        names: set[str] = set()
        text = re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", "1m", expr)  # Grafana variables
        for m in SELECTOR.finditer(text):
            body = m.group(2)
            pos = 0
            while pos < len(body):
                mm = MATCHER.match(body, pos)
                if not mm:
                    raise ValueError(f"unparsed label matcher in {expr!r}: {body[pos:]!r}")
                label, op, value = mm.group(1), mm.group(2), json.loads(mm.group(3))
                if label == "__name__" and op == "=":
                    names.add(value)
                self.matchers.append((m.group(1), label, op, value))
                pos = mm.end()
        text = SELECTOR.sub(lambda m: (m.group(1) or "") + " ", text)
        text = STRING.sub(" ", text)
        if "{" in text or "}" in text:
            raise ValueError(f"unbalanced braces in {expr!r}")
        for m in GROUPING.finditer(text):
            self.grouping |= {x.strip() for x in m.group(2).split(",") if x.strip()}
        text = GROUPING.sub(" ", text)
        text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
        text = re.sub(r"\b\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?:ms|[smhdwy])?\b", " ", text)
        text = PROMQL_FUNCTION_LIKE.sub("(", text)  # functions and aggregations
        for ident in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
            if ident.lower() not in KEYWORDS:
                names.add(ident)
        self.names = names


def test_promql_reader_finds_metrics_not_functions_labels_or_keywords():
    q = Query('sum by (reason, pod) (rate(foo_total{reason="x", a=~"b.*"}[5m] offset 1h)) '
              '/ on (instance) group_left (pod) bar > 3 and ignoring (x) '
              '{__name__="baz"} unless histogram_quantile(0.9, rate(qux_bucket[$__rate_interval])) '
              '> bool 2e3 or absent(quux) * 1.5')
    assert q.names == {"foo_total", "bar", "baz", "qux_bucket", "quux"}
    assert q.grouping == {"reason", "pod", "instance", "x"}
    assert ("foo_total", "reason", "=", "x") in q.matchers
    assert ("foo_total", "a", "=~", "b.*") in q.matchers
    with pytest.raises(ValueError):
        Query('foo{reason="x" oops}')


# ------------------------------------------------------------------- the shipped rules, dashboard
def alert_rules() -> list[dict]:
    doc = yaml.safe_load(ALERTS.read_text())
    assert set(doc) == {"groups"}, doc.keys()
    rules = []
    for g in doc["groups"]:
        assert isinstance(g["name"], str) and g["name"]
        assert set(g) <= {"name", "interval", "rules"}
        rules += g["rules"]
    return rules


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in doc["panels"]:
        for t in panel.get("targets", []):
            exprs.append(t["expr"])
    for var in doc["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", var["definition"]))
    return exprs


def test_alert_rules_file_shape():
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), names
    for r in rules:
        assert set(r) == {"alert", "expr", "for", "labels", "annotations"}, r
        assert re.fullmatch(r"PhiGuard[A-Za-z]+", r["alert"]), r["alert"]
        assert re.fullmatch(r"\d+[smh]", r["for"]), r
        assert r["labels"]["severity"] in ("critical", "warning"), r
        assert set(r["annotations"]) == {"summary", "description"}, r
        assert all(isinstance(v, str) and v.strip() for v in r["annotations"].values()), r
        assert Query(r["expr"]).names, r["expr"]
    # The list: audit drops and queue depth, keys_unavailable, policy staleness, VM
    # restarts, refusal spikes; and policy rejections and JWKS fetch failures.
    read = [(Query(r["expr"]), r["expr"]) for r in rules]
    for metric, needle in (("phi_guard_audit_dropped_total", ""), ("phi_guard_audit_queued", ""),
                           ("phi_guard_requests_denied_total", "keys_unavailable"),
                           ("phi_guard_policy_staleness_seconds", ""), ("envoy_wasm_vm_reload", ""),
                           ("phi_guard_requests_allowed_total", ""),
                           ("phi_guard_policy_rejected_total", ""), ("phi_guard_jwks_fetch_failures_total", "")):
        assert any(metric in q.names and needle in e for q, e in read), (metric, needle)


def test_dashboard_shape():
    doc = json.loads(DASHBOARD.read_text())
    assert doc["__inputs"][0]["name"] == "DS_PROMETHEUS" and doc["__inputs"][0]["pluginId"] == "prometheus"
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    graphs = [p for p in doc["panels"] if p["type"] != "row"]
    assert graphs
    for p in graphs:
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}" and t["refId"], p["title"]
            assert Query(t["expr"]).names, t["expr"]
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]


# ------------------------------------------------------------------------------------ live Envoys
def istio_stats() -> dict:
    """The stats_config an Istio sidecar gets from deploy/istio: the bootstrap override's
    stats_tags, and the pod annotation's proxyStatsMatcher as the stats inclusion list. Istio
    adds its own required prefixes (among them `wasm`, which as a plain string prefix also
    covers `wasmcustom.`); only `wasm.` is kept here, for Envoy's VM stats, so that the
    annotation is shown to be enough on its own."""
    (cm,) = [d for d in yaml.safe_load_all((ISTIO / "stats-bootstrap.yaml").read_text()) if d]
    override = json.loads(cm["data"]["custom_bootstrap.json"])
    patch = yaml.safe_load((ISTIO / "sidecar-secrets-patch.yaml").read_text())
    annotations = patch["spec"]["template"]["metadata"]["annotations"]
    assert annotations["sidecar.istio.io/bootstrapOverride"] == cm["metadata"]["name"]
    matcher = yaml.safe_load(annotations["proxy.istio.io/config"])["proxyStatsMatcher"]
    assert set(matcher) == {"inclusionPrefixes"}, matcher
    patterns = [{"prefix": p} for p in matcher["inclusionPrefixes"] + ["wasm."]]
    return {**override["stats_config"], "stats_matcher": {"inclusion_list": {"patterns": patterns}}}


def test_istio_override_carries_the_shipped_stats_tags():
    (cm,) = [d for d in yaml.safe_load_all((ISTIO / "stats-bootstrap.yaml").read_text()) if d]
    assert json.loads(cm["data"]["custom_bootstrap.json"]) == {"stats_config": envoy_config.stats_config()}
    kust = yaml.safe_load((ISTIO / "kustomization.yaml").read_text())
    assert "stats-bootstrap.yaml" in kust["resources"]


@pytest.fixture(scope="module", params=["envoy", "istio"])
def live(request):
    """A fresh Envoy (so every count below is this module's), with a rate limit on the FHIR
    route for one subject's burst."""
    doc = json.loads((REPO / "policies" / "smart-patient-app.json").read_text())
    doc = copy.deepcopy(doc)
    doc["name"] = "smart-patient-app-metrics"
    doc["rateLimits"] = [{"id": LIMIT_ID, "by": "subject", "requestsPerMinute": 1, "burst": 2, "routes": ["fhir"]}]
    workdir = RUN_DIR / f"metrics-{request.param}"
    workdir.mkdir(parents=True, exist_ok=True)
    policy = workdir / "policy.json"
    policy.write_text(json.dumps(doc, indent=2))
    stats = istio_stats() if request.param == "istio" else None
    h = LocalHarness(f"metrics-{request.param}", policy=policy, workdir=workdir, stats=stats).start()
    try:
        yield Api(h), traffic(Api(h))
    finally:
        h.stop()


def traffic(api: Api) -> dict[str, int]:
    """Allowed and refused requests of several reasons; returns the expected counts."""
    want = {"allowed": 0, "missing_token": 0, "token_in_query": 0, "malformed_token": 0, "rate_limited": 0}
    for _ in range(2):
        assert api.get(f"/fhir/Patient/{ME}").status == 401
        want["missing_token"] += 1
    assert api.get(f"/fhir/Patient/{ME}?access_token=abc").status in (400, 401)
    want["token_in_query"] += 1
    assert api.get(f"/fhir/Patient/{ME}", token="not-a-jwt").status == 401
    want["malformed_token"] += 1
    token = cli_token(scope="patient/*.rs", patient=ME, sub=f"metrics-{uuid.uuid4()}")
    for _ in range(6):  # a burst of 2: the rest are refused, whichever worker serves them
        status = api.get(f"/fhir/Patient/{ME}", token=token).status
        assert status in (200, 429), status
        want["allowed" if status == 200 else "rate_limited"] += 1
    assert want["allowed"] >= 1 and want["rate_limited"] >= 1, want
    return want


SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?[ \t]+(\S+)(?:[ \t]+-?\d+)?")
LABEL = re.compile(r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\\n]|\\.)*)"[ \t]*(,|$)')
UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def parse_exposition(text: str) -> tuple[dict[str, str], dict[tuple[str, tuple], float]]:
    """The Prometheus text format as Prometheus stores it: {name: type} from `# TYPE` lines and
    {(sample name, sorted labels): value}. Names are kept exactly: the Prometheus client's
    parser (used below to check the format) renames a counter sample without `_total`, which
    Prometheus itself does not."""
    types: dict[str, str] = {}
    samples: dict[tuple[str, tuple], float] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            m = re.fullmatch(r"# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)", line)
            if m:
                assert m.group(1) not in types, f"two TYPE lines for {m.group(1)}"
                types[m.group(1)] = m.group(2)
            continue
        m = SAMPLE.fullmatch(line)
        assert m, f"not a sample line: {line!r}"
        labels, body, pos = {}, m.group(2) or "", 0
        while pos < len(body):
            lm = LABEL.match(body, pos)
            assert lm and lm.end() > pos, f"bad labels in {line!r}"
            labels[lm.group(1)] = re.sub(r'\\[\\"n]', lambda e: UNESCAPE[e.group(0)], lm.group(2))
            pos = lm.end()
        key = (m.group(1), tuple(sorted(labels.items())))
        assert key not in samples, f"duplicate sample {key}"
        samples[key] = float(m.group(3))
    return types, samples


def scrape(api: Api, want: dict[str, int]) -> tuple[dict[str, str], dict[tuple[str, tuple], float]]:
    """/stats/prometheus once Envoy's flush shows every request counted. The whole text must
    also read the same through the Prometheus client's parser (the maintained reading of the
    format), up to its `_total` renaming."""
    types: dict[str, str] = {}
    samples: dict[tuple[str, tuple], float] = {}
    text = ""
    for _ in range(60):
        text = api.harness.stats_prometheus()
        types, samples = parse_exposition(text)
        denied = sum(v for (n, _), v in samples.items() if n == "phi_guard_requests_denied_total")
        allowed = samples.get(("phi_guard_requests_allowed_total", ()), 0)
        if denied >= sum(v for k, v in want.items() if k != "allowed") and allowed >= want["allowed"]:
            break
        time.sleep(0.25)
    official = {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}

    def renamed(name: str) -> str:
        counter = types.get(name) == "counter" and not name.endswith("_total")
        return name + "_total" if counter else name
    assert official == {(renamed(n), lab): v for (n, lab), v in samples.items()}
    return types, samples


def labels_of(samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels), _ in samples.items() if n == name]


def test_refusals_are_one_counter_labelled_by_reason(live):
    api, want = live
    _, samples = scrape(api, want)
    denied = {dict(labels)["reason"]: v for (n, labels), v in samples.items()
              if n == "phi_guard_requests_denied_total"}
    assert all(set(lab) == {"reason"} for lab in labels_of(samples, "phi_guard_requests_denied_total"))
    # Every reason the Rust code defines, and no other, each once (defined at VM start).
    assert set(denied) == rust_reason_codes()
    for reason in ("missing_token", "token_in_query", "malformed_token", "rate_limited"):
        assert denied[reason] == want[reason], (reason, denied[reason], want)
    assert sum(denied.values()) == sum(v for k, v in want.items() if k != "allowed"), denied
    assert samples[("phi_guard_requests_allowed_total", ())] == want["allowed"]
    limited = {dict(labels)["limit"]: v for (n, labels), v in samples.items() if n == "phi_guard_rate_limited_total"}
    assert limited == {LIMIT_ID: want["rate_limited"]}


def test_no_metric_name_carries_a_reason_and_counters_end_in_total(live):
    api, want = live
    types, samples = scrape(api, want)
    ours = {n: t for n, t in types.items() if n.startswith("phi_guard")}
    assert len(ours) >= 20, ours
    for name, kind in ours.items():
        assert kind in ("counter", "gauge"), (name, kind)
        assert name.endswith("_total") == (kind == "counter"), (name, kind)
    codes = rust_reason_codes()
    names = {n for n, _ in samples} | set(types)
    for name in names:
        if name.startswith("phi_guard") and name != "phi_guard_rate_limited_total":
            assert not [c for c in codes if c in name], name
        assert LIMIT_ID.replace("-", "_") not in name and LIMIT_ID not in name, name
    # The Envoy VM restart counters are one family per counter, the plugin a label.
    assert {"wasm_plugin": "phi-guard"} in labels_of(samples, "envoy_wasm_vm_reload")
    assert not [n for n in names if re.search(r"envoy_wasm_phi_guard", n)], names


def test_every_metric_the_alerts_and_dashboard_use_is_exported(live):
    api, want = live
    _, samples = scrape(api, want)
    live_names = {n for n, _ in samples}
    exprs = [r["expr"] for r in alert_rules()] + dashboard_exprs()
    used: set[str] = set()
    for expr in exprs:
        q = Query(expr)
        assert q.names, expr
        used |= q.names
        missing = q.names - live_names
        assert not missing, f"{sorted(missing)} in {expr!r} are not in /stats/prometheus"
        labels_here = {k for n in q.names for lab in labels_of(samples, n) for k in lab}
        for label in q.grouping - TARGET_LABELS:
            assert label in labels_here, f"no metric of {expr!r} has the label {label!r}"
        for metric, label, op, value in q.matchers:
            if label in TARGET_LABELS:
                continue
            values = {lab.get(label, "") for lab in labels_of(samples, metric)}
            assert label in {k for lab in labels_of(samples, metric) for k in lab}, (expr, metric, label)
            hits = {v for v in values if (re.fullmatch(value, v) if op in ("=~", "!~") else v == value)}
            if op in ("=", "=~"):
                assert hits, f"{metric}{{{label}{op}{value!r}}} in {expr!r} matches nothing live: {sorted(values)}"
    assert len(used) >= 20, sorted(used)
