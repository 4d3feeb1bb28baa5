#!/usr/bin/env python3
"""Generate docs/fhir/StructureDefinition-audit-*.json: the FHIR R4 (4.0.1) StructureDefinitions
of the extensions phi-guard writes on its `fhir` audit events (src/audit/fhir.rs, and the chain's
`mac`, src/audit/chain.rs), so that a validator can resolve every extension URL.

`cargo test extensions_are_published` checks that every extension the renderer can emit has a
file here with its URL and value type, and that no file is left without an extension;
tests/integration/test_fhir_conformance.py validates the files with the FHIR R4 models.
"""
import json
import pathlib

root = pathlib.Path(__file__).resolve().parent.parent
out_dir = root / "docs" / "fhir"
CANONICAL = "https://phi-guard.dev/fhir/StructureDefinition/"
AUDIT_EVENT = [{"type": "element", "expression": "AuditEvent"}]
ENTITY = [{"type": "element", "expression": "AuditEvent.entity"}]

# name: (value type, or None for a complex extension; max cardinality; context; title; definition)
EXTENSIONS = {
    "policy": ("string", "1", AUDIT_EVENT, "Policy",
               "The `name` of the phi-guard policy that decided the request."),
    "policy-revision": ("string", "1", AUDIT_EVENT, "Policy revision",
                        "The revision of that policy."),
    "route": ("string", "1", AUDIT_EVENT, "Route",
              "The id of the policy route that matched the request."),
    "method": ("code", "1", AUDIT_EVENT, "HTTP method",
               "The request's HTTP method (`GET`, `HEAD`, `POST`, `PUT`, `PATCH`, `DELETE`, `OPTIONS`), "
               "or `OTHER`."),
    "reason": ("code", "1", AUDIT_EVENT, "Reason",
               "phi-guard's stable reason code for the decision (`allowed`, or the refusal code, as in "
               "refusal bodies and the `urn:phi-guard:reason` subtype)."),
    "severity": ("code", "1", AUDIT_EVENT, "Severity",
                 "The event's severity: `info`, `warning` or `high` (refusals, emergency access)."),
    "status": ("integer", "1", AUDIT_EVENT, "Status",
               "The HTTP status the client received."),
    "upstream-status": ("integer", "1", AUDIT_EVENT, "Upstream status",
                        "The HTTP status the upstream FHIR server answered."),
    "patient-identifiers": ("code", "1", AUDIT_EVENT, "Patient identifiers",
                            "How the event names patients and resources: `pseudonym` (keyed pseudonyms) or "
                            "`raw` (ids, when the policy opts in)."),
    "break-glass": ("code", "1", AUDIT_EVENT, "Break-glass reason",
                    "The reason code of a break-glass (emergency access) request."),
    "restriction": (None, "*", AUDIT_EVENT, "Restriction",
                    "A privacy restriction of the policy that withheld resources from the response: its "
                    "`id` and how many resources it withheld."),
    "content-digest": ("string", "1", AUDIT_EVENT, "Content digest",
                       "The digest of the response body the client received (RFC 9530 `Content-Digest` "
                       "form)."),
    "stream": ("string", "1", AUDIT_EVENT, "Chain stream",
               "The id of the tamper-evident chain (one per filter VM) the event is sealed in."),
    "seq": ("decimal", "1", AUDIT_EVENT, "Chain sequence number",
            "The event's position in its stream: 0, 1, 2, ..."),
    "mac": ("string", "1", AUDIT_EVENT, "Chain MAC",
            "HMAC-SHA256 (64 lowercase hex digits) sealing the event into its stream; always the last "
            "extension (see docs/AUDIT.md, The chain)."),
    "withheld-path": ("string", "*", ENTITY, "Withheld path",
                      "An element path minimization withheld from the response (a path only, never a "
                      "value); on the data or query entity, which also carries the `REDACTED` security "
                      "label."),
}

# Sub-extensions of the complex ones: url -> value type.
PARTS = {"restriction": {"id": ("string", "The restriction's `id` in the policy."),
                         "count": ("unsignedInt", "How many resources it withheld.")}}


def pascal(name: str) -> str:
    return "".join(p.capitalize() for p in name.split("-"))


def value(path: str, type_code: str) -> dict:
    return {"id": f"{path}.value[x]", "path": f"{path}.value[x]", "min": 1, "type": [{"code": type_code}]}


def definition(name: str) -> dict:
    type_code, cardinality, context, title, text = EXTENSIONS[name]
    sd_id = f"audit-{name}"
    url = CANONICAL + sd_id
    elements = [{"id": "Extension", "path": "Extension", "short": title, "definition": text,
                 "min": 0, "max": cardinality}]
    if type_code is None:
        elements.append({"id": "Extension.extension", "path": "Extension.extension", "slicing": {
            "discriminator": [{"type": "value", "path": "url"}], "rules": "closed"}, "min": len(PARTS[name])})
        for part, (part_type, part_text) in PARTS[name].items():
            path = f"Extension.extension:{part}"
            elements += [
                {"id": path, "path": "Extension.extension", "sliceName": part, "short": part_text,
                 "definition": part_text, "min": 1, "max": "1"},
                {"id": f"{path}.extension", "path": "Extension.extension.extension", "max": "0"},
                {"id": f"{path}.url", "path": "Extension.extension.url", "fixedUri": part},
                value(path, part_type) | {"path": "Extension.extension.value[x]"},
            ]
        elements += [{"id": "Extension.url", "path": "Extension.url", "fixedUri": url},
                     {"id": "Extension.value[x]", "path": "Extension.value[x]", "max": "0"}]
    else:
        elements += [{"id": "Extension.extension", "path": "Extension.extension", "max": "0"},
                     {"id": "Extension.url", "path": "Extension.url", "fixedUri": url},
                     value("Extension", type_code)]
    return {
        "resourceType": "StructureDefinition",
        "id": sd_id,
        "url": url,
        "name": "Audit" + pascal(name),
        "title": f"phi-guard audit: {title}",
        "status": "active",
        "experimental": False,
        "publisher": "phi-guard",
        "description": text,
        "fhirVersion": "4.0.1",
        "kind": "complex-type",
        "abstract": False,
        "context": context,
        "type": "Extension",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Extension",
        "derivation": "constraint",
        "differential": {"element": elements},
    }


def main() -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("StructureDefinition-audit-*.json"):
        old.unlink()
    for name in EXTENSIONS:
        path = out_dir / f"StructureDefinition-audit-{name}.json"
        path.write_text(json.dumps(definition(name), indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
