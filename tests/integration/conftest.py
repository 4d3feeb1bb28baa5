"""Session fixtures: a demo upstream + a real Envoy per policy, started once, always stopped.

Builds nothing: `make integration` builds the wasm and the CLI first. Set HARNESS=compose to run
against envoy/docker-compose.yaml instead (`make compose-test`), ENVOY_BIN to use another Envoy.
Logs of each harness stay in .run/tests/<name>/ (envoy.log, access.log, upstream.log).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import harness as harness_module
import pytest
from harness import HarnessError, make_harness
from helpers import Api
from tokens import CLI, PyMinter, cli_token, py_token

REPO = Path(__file__).resolve().parents[2]


POLICIES = REPO / "policies"
# PHI_GUARD_TEST_RUN_DIR lets two suites run side by side from one checkout (ports are chosen at
# run time; only the working directories would collide).
RUN_DIR = Path(os.environ.get("PHI_GUARD_TEST_RUN_DIR") or REPO / ".run" / "tests")
HARNESS_KIND = os.environ.get("HARNESS", "local")

def patient_writes_policy() -> Path:
    """smart-patient-app with patient-context writes confined by a pre-flight read
    (`fhir.patientWrites` on cluster `upstream`, the demo FHIR server)."""
    import json

    doc = json.loads((POLICIES / "smart-patient-app.json").read_text())
    doc["name"] = "smart-patient-app-writes"
    fhir = next(r for r in doc["routes"] if r["id"] == "fhir")
    fhir["methods"] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
    fhir["fhir"]["patientWrites"] = {"cluster": "upstream", "timeoutMs": 1000}
    path = RUN_DIR / "policies" / "patient-writes.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))
    return path


def discovery_policy() -> Path:
    """smart-patient-app whose issuer gives no keys: they are found by OpenID discovery on
    cluster `idp` (the demo upstream serves the demo identity provider's document and JWKS)."""
    import json

    doc = json.loads((POLICIES / "smart-patient-app.json").read_text())
    doc["name"] = "smart-patient-app-discovery"
    issuer = doc["issuers"][0]
    del issuer["jwks"]
    issuer["discovery"] = {"cluster": "idp", "waitMs": 3000}
    path = RUN_DIR / "policies" / "discovery.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))
    return path


HARNESSES = {
    # name: options
    "no-filter": {"policy": None, "filter": "none"},
    "patient-app": {"policy": POLICIES / "smart-patient-app.json"},
    # Envoy's path normalization off: the filter alone must refuse path tricks.
    "patient-app-raw": {"policy": POLICIES / "smart-patient-app.json", "normalize": False},
    "clinician": {"policy": POLICIES / "clinician-api.json"},
    # Patient apps that change their own data: writes confined by a pre-flight read.
    "patient-writes": {"policy": patient_writes_policy()},
    # Keys located by OpenID discovery.
    "discovery": {"policy": discovery_policy(), "extra_clusters": ("idp",)},
    # Opaque tokens introspected at the harness's introspection server (RFC 7662).
    "introspected": {"policy": POLICIES / "introspected-tokens.json"},
}


class Harnesses:
    """Starts each harness on first use; remembers a failed start so it is not retried per test."""

    def __init__(self) -> None:
        self.running: dict = {}
        self.failed: dict[str, str] = {}

    def get(self, name: str):
        if name in self.failed:
            pytest.fail(f"harness {name!r} failed to start earlier:\n{self.failed[name]}",
                        pytrace=False)
        if name not in self.running:
            workdir = RUN_DIR / name
            shutil.rmtree(workdir, ignore_errors=True)
            try:
                self.running[name] = make_harness(HARNESS_KIND, name, workdir=workdir,
                                                  **HARNESSES[name])
            except (HarnessError, OSError) as err:
                self.failed[name] = str(err)
                pytest.fail(f"harness {name!r} failed to start:\n{err}", pytrace=False)
        return self.running[name]

    def stop_all(self) -> None:
        for harness in self.running.values():
            harness.stop()
        self.running.clear()


@pytest.fixture(scope="session")
def harnesses():
    registry = Harnesses()
    try:
        yield registry
    finally:
        registry.stop_all()


@pytest.fixture(scope="session")
def no_filter(harnesses) -> Api:
    return Api(harnesses.get("no-filter"))


@pytest.fixture(scope="session")
def patient_app(harnesses) -> Api:
    return Api(harnesses.get("patient-app"))


@pytest.fixture(scope="session")
def patient_app_raw(harnesses) -> Api:
    return Api(harnesses.get("patient-app-raw"))


@pytest.fixture(scope="session")
def clinician(harnesses) -> Api:
    return Api(harnesses.get("clinician"))


@pytest.fixture(scope="session")
def patient_writes(harnesses) -> Api:
    return Api(harnesses.get("patient-writes"))


@pytest.fixture(scope="session")
def discovery(harnesses) -> Api:
    return Api(harnesses.get("discovery"))


@pytest.fixture(scope="session")
def introspected(harnesses) -> Api:
    return Api(harnesses.get("introspected"))


class Tokens:
    """`tokens.cli(...)` runs `phi-guard token`; `tokens.py` signs in Python (attack tokens).

    PHI_GUARD_MINTER=python makes `tokens.cli` sign in Python too (same claims), e.g. to test the
    filter before the CLI exists.
    """

    py = PyMinter()

    @staticmethod
    def cli(**options) -> str:
        if os.environ.get("PHI_GUARD_MINTER") == "python":
            return py_token(**options)
        if not CLI.exists():
            pytest.fail(f"{CLI} does not exist: run `make cli` first", pytrace=False)
        return cli_token(**options)


@pytest.fixture(scope="session")
def tokens() -> Tokens:
    return Tokens()


# A test that expects Envoy or the filter's VM to fail (none should): the guard then only
# moves its marks forward.
EXPECT_FAILURE = "expect_envoy_failure"


def pytest_configure(config):
    config.addinivalue_line("markers", f"{EXPECT_FAILURE}(reason): this test expects a harness to "
                            "crash, restart its wasm VM or stop being ready; the health guard "
                            "skips it")


@pytest.fixture(autouse=True)
def envoy_stays_healthy(request):
    """After every test, every running harness (and any the test started and stopped) is still
    ready, its wasm VMs were not restarted, and Envoy's log has no panic, trap or crash line
    since the guard last looked. One bad input must never take a worker's VM (or Envoy) down."""
    harness_module.STOPPED_PROBLEMS.clear()
    yield
    problems = list(harness_module.STOPPED_PROBLEMS)
    harness_module.STOPPED_PROBLEMS.clear()
    expected = request.node.get_closest_marker(EXPECT_FAILURE) is not None
    for h in list(harness_module.LIVE):
        try:
            found = h.health_problems()
        except (HarnessError, OSError) as err:
            found = [f"health check failed: {err}"]
        problems += [f"{h.name}: {p}" for p in found]
    if problems and not expected:
        pytest.fail("harness health guard:\n  " + "\n  ".join(problems), pytrace=False)


def pytest_report_header(config):
    return [f"phi-guard harness: {HARNESS_KIND}; logs in {RUN_DIR}"]
