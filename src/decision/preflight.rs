//! Patient-context writes confined by a pre-flight read: before a patient-context token may
//! update, patch or delete `[base]/Type/id`, the filter reads that resource from the upstream
//! and lets the write through only if the stored resource is in the token patient's
//! compartment, pinned with `If-Match` to the version it checked, so a change in between makes
//! the upstream refuse the write (412) instead of applying it to a resource that was never
//! checked. The upstream must version its resources (ETag or `meta.versionId`); one that does
//! not gets no write.

use serde_json::Value;

use crate::fhir::compartment::{patient_paths, resource_belongs_to};
use crate::policy::PatientWrites;
use crate::reason::DenyReason;

/// A write waiting for its pre-flight read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preflight {
    /// The read's path: the write's own path without its query (`/fhir/Observation/o1`).
    pub path: String,
    /// The resource type the path names.
    pub resource_type: &'static str,
    /// The id the path names.
    pub id: String,
    /// The token's patient.
    pub patient: String,
    /// The route's settings.
    pub settings: PatientWrites,
}

impl Preflight {
    /// Judge the upstream's answer to the read: the `If-Match` value to send with the write
    /// (the version checked), or why the write is refused.
    ///
    /// - No answer or an upstream error: 503 `write_check_unavailable`.
    /// - Anything but 200 with the resource the path names (404, 410, another type or id,
    ///   not JSON), or no version: 403 `write_not_verified`.
    /// - Outside the patient's compartment: 403 `patient_mismatch`.
    /// - A client `If-Match` for another version: 412 `precondition_failed`.
    pub fn judge(&self, status: Option<u16>, etag: Option<&str>, body: &[u8], client_if_match: Option<&str>) -> Result<String, DenyReason> {
        let status = status.ok_or(DenyReason::WriteCheckUnavailable)?;
        if status >= 500 || status == 429 {
            return Err(DenyReason::WriteCheckUnavailable);
        }
        if status != 200 {
            return Err(DenyReason::WriteNotVerified);
        }
        let Ok(resource) = serde_json::from_slice::<Value>(body) else { return Err(DenyReason::WriteNotVerified) };
        let text = |k: &str| resource.get(k).and_then(Value::as_str);
        if text("resourceType") != Some(self.resource_type) || text("id") != Some(self.id.as_str()) {
            return Err(DenyReason::WriteNotVerified);
        }
        if !resource_belongs_to(&resource, &self.patient) {
            return Err(DenyReason::PatientMismatch);
        }
        let meta_version = resource.pointer("/meta/versionId").and_then(Value::as_str);
        let version = etag.and_then(version_of).or_else(|| meta_version.filter(|v| valid_version(v)).map(str::to_owned));
        let version = version.ok_or(DenyReason::WriteNotVerified)?;
        if let Some(sent) = client_if_match {
            if version_of(sent).as_deref() != Some(version.as_str()) {
                return Err(DenyReason::PreconditionFailed);
            }
        }
        Ok(format!("W/\"{version}\""))
    }
}

/// The version in an ETag (`W/"3"` or `"3"`), if it is one.
fn version_of(etag: &str) -> Option<String> {
    let e = etag.trim();
    let e = e.strip_prefix("W/").unwrap_or(e);
    let v = e.strip_prefix('"')?.strip_suffix('"')?;
    valid_version(v).then(|| v.to_owned())
}

/// A FHIR id-shaped version (what `meta.versionId` holds), safe to write into a header.
fn valid_version(v: &str) -> bool {
    (1..=64).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
}

/// Check a JSON Patch (RFC 6902) body of a patient-context `PATCH`: it may not touch what
/// places the resource in a compartment (its patient links), its identity (`id`,
/// `resourceType`), `contained` resources or the whole document. FHIRPath Patch and other
/// forms are refused: what they change cannot be told here.
pub fn check_json_patch(resource_type: &str, body: &[u8]) -> Result<(), DenyReason> {
    let Ok(Value::Array(ops)) = serde_json::from_slice::<Value>(body) else { return Err(DenyReason::InvalidRequestBody) };
    let links: Vec<&str> = patient_paths(resource_type).iter().map(|p| p.split('.').next().unwrap_or(p)).collect();
    let touches = |pointer: &str| {
        let first = pointer.strip_prefix('/').map(|r| r.split('/').next().unwrap_or(""));
        match first {
            None | Some("") => true,
            Some(m) => {
                let m = m.replace("~1", "/").replace("~0", "~");
                let m = m.strip_prefix('_').unwrap_or(&m);
                matches!(m, "id" | "resourceType" | "contained" | "meta") || links.contains(&m)
            }
        }
    };
    for op in &ops {
        let Some(kind) = op.get("op").and_then(Value::as_str) else { return Err(DenyReason::InvalidRequestBody) };
        let Some(path) = op.get("path").and_then(Value::as_str) else { return Err(DenyReason::InvalidRequestBody) };
        if !matches!(kind, "add" | "remove" | "replace" | "move" | "copy" | "test") {
            return Err(DenyReason::InvalidRequestBody);
        }
        if kind != "test" && touches(path) {
            return Err(DenyReason::CompartmentEscape);
        }
        // `move` takes its value away from `from`; `copy` reads it (a patient link copied
        // elsewhere changes nothing that places the resource).
        if kind == "move" && op.get("from").and_then(Value::as_str).is_none_or(touches) {
            return Err(DenyReason::CompartmentEscape);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PreflightCredential;
    use serde_json::json;

    fn preflight() -> Preflight {
        Preflight {
            path: "/fhir/Observation/o1".into(),
            resource_type: "Observation",
            id: "o1".into(),
            patient: "p1".into(),
            settings: PatientWrites {
                cluster: "upstream".into(),
                authority: None,
                timeout_ms: 1000,
                credential: PreflightCredential::Caller,
            },
        }
    }

    fn stored(patch: Value) -> Vec<u8> {
        let mut r = json!({"resourceType": "Observation", "id": "o1", "meta": {"versionId": "3"}, "subject": {"reference": "Patient/p1"}});
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                r.as_object_mut().unwrap().remove(k);
            } else {
                r[k] = v.clone();
            }
        }
        serde_json::to_vec(&r).unwrap()
    }

    #[test]
    fn the_write_is_pinned_to_the_version_checked() {
        let p = preflight();
        assert_eq!(p.judge(Some(200), None, &stored(json!({})), None).as_deref(), Ok("W/\"3\""));
        assert_eq!(p.judge(Some(200), Some("W/\"7\""), &stored(json!({})), None).as_deref(), Ok("W/\"7\""), "the ETag wins");
        assert_eq!(p.judge(Some(200), Some("\"7\""), &stored(json!({})), Some("W/\"7\"")).as_deref(), Ok("W/\"7\""));
    }

    #[test]
    fn anything_unproven_refuses() {
        let p = preflight();
        use DenyReason::*;
        type Case<'a> = (Option<u16>, Option<&'a str>, Vec<u8>, Option<&'a str>, DenyReason);
        let cases: Vec<Case<'_>> = vec![
            (None, None, stored(json!({})), None, WriteCheckUnavailable),
            (Some(503), None, stored(json!({})), None, WriteCheckUnavailable),
            (Some(404), None, b"{}".to_vec(), None, WriteNotVerified),
            (Some(410), None, b"{}".to_vec(), None, WriteNotVerified),
            (Some(200), None, stored(json!({"subject": {"reference": "Patient/p2"}})), None, PatientMismatch),
            (Some(200), None, stored(json!({"subject": null})), None, PatientMismatch),
            (Some(200), None, stored(json!({"id": "o2"})), None, WriteNotVerified),
            (Some(200), None, stored(json!({"resourceType": "Condition"})), None, WriteNotVerified),
            (Some(200), None, b"<html/>".to_vec(), None, WriteNotVerified),
            (Some(200), None, stored(json!({"meta": null})), None, WriteNotVerified),
            (Some(200), None, stored(json!({"meta": {"versionId": "3\r\nx: y"}})), None, WriteNotVerified),
            (Some(200), Some("W/\"3\""), stored(json!({})), Some("W/\"2\""), PreconditionFailed),
            (Some(200), Some("W/\"3\""), stored(json!({})), Some("*"), PreconditionFailed),
        ];
        for (n, (status, etag, body, sent, want)) in cases.into_iter().enumerate() {
            assert_eq!(p.judge(status, etag, &body, sent), Err(want), "case {n}");
        }
    }

    #[test]
    fn a_patch_may_not_touch_what_places_the_resource() {
        let ok = json!([{"op": "replace", "path": "/status", "value": "final"}, {"op": "test", "path": "/subject/reference", "value": "Patient/p1"},
                        {"op": "copy", "from": "/subject", "path": "/focus/0"}]);
        assert_eq!(check_json_patch("Observation", &serde_json::to_vec(&ok).unwrap()), Ok(()));
        for op in [
            json!({"op": "replace", "path": "/subject/reference", "value": "Patient/p2"}),
            json!({"op": "remove", "path": "/subject"}),
            json!({"op": "add", "path": "/performer/-", "value": {"reference": "Patient/p2"}}),
            json!({"op": "replace", "path": "", "value": {}}),
            json!({"op": "replace", "path": "/id", "value": "x"}),
            json!({"op": "add", "path": "/contained/-", "value": {}}),
            json!({"op": "move", "from": "/subject", "path": "/note"}),
            json!({"op": "replace", "path": "/_subject", "value": {}}),
        ] {
            let body = serde_json::to_vec(&json!([op])).unwrap();
            assert!(check_json_patch("Observation", &body).is_err(), "{op}");
        }
        for bad in [&b"{}"[..], b"[{\"path\": \"/status\"}]", b"[{\"op\": \"evil\", \"path\": \"/status\"}]", b"not json"] {
            assert_eq!(check_json_patch("Observation", bad), Err(DenyReason::InvalidRequestBody));
        }
    }
}
