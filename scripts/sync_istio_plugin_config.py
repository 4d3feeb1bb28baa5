#!/usr/bin/env python3
"""Rewrite `pluginConfig` in deploy/istio/wasmplugin.yaml from policies/smart-patient-app.json.

pluginConfig is the last key of the manifest; everything above it (comments included) is kept.
Run after changing the demo policy (tests/integration/test_deploy.py keeps the two equal, the
policy's `$schema` aside).
Needs PyYAML (in the test venv: `.venv/bin/python scripts/sync_istio_plugin_config.py`).
"""

import json
import pathlib

import yaml

root = pathlib.Path(__file__).resolve().parent.parent
manifest = root / "deploy/istio/wasmplugin.yaml"
policy = json.loads((root / "policies/smart-patient-app.json").read_text())
# `$schema` points editors at the schema beside the file; it means nothing inside a manifest.
policy.pop("$schema", None)
text = manifest.read_text()
head = text[: text.index("  pluginConfig:\n")]
body = yaml.safe_dump(policy, sort_keys=False, width=100, allow_unicode=True)
indented = "".join("    " + line if line.strip() else line for line in body.splitlines(keepends=True))
manifest.write_text(head + "  pluginConfig:\n" + indented)
