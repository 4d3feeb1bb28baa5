"""Fixtures for the browser test: the playground's static server and a headless Chromium.

The server runs `playground/serve.py --port 0` (it binds a free loopback port and prints it) and
is always stopped. Chromium and chromedriver are Debian's (`make chromium`); Selenium is told
where both are, so it never tries to download a driver.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "target" / "browser"


@pytest.fixture(scope="session")
def playground_url():
    for built in ("playground/pkg/phi_guard_playground_bg.wasm", "playground/examples/index.json"):
        if not (ROOT / built).is_file():
            pytest.fail(f"{built} is missing: run `make playground-build` (or `make test-browser`)")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "playground/serve.py"), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if not m:
            pytest.fail(f"the playground server did not start: {line!r}")
        url = f"http://127.0.0.1:{m.group(1)}/"
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    assert r.status == 200
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _binary(env: str, *names: str) -> str:
    found = os.environ.get(env) or next((p for n in names if (p := shutil.which(n))), None)
    if not found:
        pytest.fail(f"{' or '.join(names)} not found (set {env}, or `make chromium` installs Debian's chromium and chromium-driver)")
    return found


@pytest.fixture(scope="session")
def driver():
    opts = webdriver.ChromeOptions()
    opts.binary_location = _binary("CHROMIUM_BIN", "chromium", "chromium-browser")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,2400", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    # Console errors (a CSP violation, an uncaught exception) fail the test.
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=_binary("CHROMEDRIVER_BIN", "chromedriver"))
    d = webdriver.Chrome(options=opts, service=service)
    d.set_script_timeout(60)
    try:
        yield d
    finally:
        d.quit()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
