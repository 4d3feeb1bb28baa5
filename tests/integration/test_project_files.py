"""Project hygiene that a release depends on: the licence file matches the declared licence,
the changelog keeps its format, and the crate metadata is complete. No Envoy needed."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CARGO = tomllib.loads((REPO / "Cargo.toml").read_text())["package"]


def test_licence_file_is_the_declared_apache_2_0():
    assert CARGO["license"] == "Apache-2.0"
    text = (REPO / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License")
    assert "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    # All nine sections of the terms.
    for n, title in enumerate(["Definitions", "Grant of Copyright License", "Grant of Patent License",
                               "Redistribution", "Submission of Contributions", "Trademarks",
                               "Disclaimer of Warranty", "Limitation of Liability",
                               "Accepting Warranty or Additional Liability"], start=1):
        assert f"{n}. {title}." in text, title


def test_crate_metadata_is_complete():
    for key in ("description", "repository", "homepage", "readme", "keywords", "categories"):
        assert CARGO.get(key), key
    assert len(CARGO["keywords"]) <= 5  # crates.io's limit
    assert all(re.fullmatch(r"[a-z][a-z0-9_-]{0,19}", k) for k in CARGO["keywords"]), CARGO["keywords"]
    assert (REPO / CARGO["readme"]).is_file()


def test_changelog_follows_keep_a_changelog():
    text = (REPO / "CHANGELOG.md").read_text()
    lines = text.splitlines()
    assert lines[0] == "# Changelog"
    assert "keepachangelog.com/en/1.1.0" in text and "semver.org" in text
    releases = re.findall(r"^## \[([^\]]+)\](?: - (\d{4}-\d{2}-\d{2}))?$", text, re.M)
    assert releases and releases[0] == ("Unreleased", ""), releases
    assert all(date for name, date in releases[1:]), "every release has a date"
    versions = [name for name, _ in releases[1:]]
    assert all(re.fullmatch(r"\d+\.\d+\.\d+", v) for v in versions), versions
    assert CARGO["version"] in versions or releases[0][0] == "Unreleased"
    # Every `## ` heading is a release; every `### ` one a Keep a Changelog change type.
    for line in lines:
        if line.startswith("## "):
            assert re.fullmatch(r"## \[[^\]]+\](?: - \d{4}-\d{2}-\d{2})?", line), line
        if line.startswith("### "):
            assert line[4:] in {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}, line
    # Each release heading has its link reference.
    for name, _ in releases:
        assert re.search(rf"^\[{re.escape(name)}\]: https://", text, re.M), name
