//! Pre-flight reads of patient-context writes (see `decision::preflight`): queued by the
//! stream that was allowed, dispatched and answered in the root context (where answering a
//! paused stream is safe), each bounded by its deadline.

use std::cell::RefCell;
use std::rc::Rc;

use super::vm::StreamState;
use crate::decision::preflight::Preflight;
use crate::time::UnixMillis;

/// One write waiting for its read.
pub struct PendingWrite {
    /// The stream's context id.
    pub context_id: u32,
    /// What to read and check.
    pub preflight: Preflight,
    /// The `Authorization` value of the read.
    pub authorization: String,
    /// The read's `:authority`.
    pub authority: String,
    /// The client's own `If-Match`, if it sent one.
    pub client_if_match: Option<String>,
    /// The stream's state, to refuse the write.
    pub state: Rc<RefCell<StreamState>>,
    /// Answered 503 at this time if the read has not come back.
    pub deadline_ms: UnixMillis,
}

/// The writes of one worker waiting for their reads.
#[derive(Default)]
pub struct PendingWrites {
    /// Not dispatched yet.
    pub queued: Vec<PendingWrite>,
    /// Dispatched: (callout token, write).
    pub calls: Vec<(u32, PendingWrite)>,
}

impl PendingWrites {
    /// Whether nothing is queued or in flight.
    pub fn idle(&self) -> bool {
        self.queued.is_empty() && self.calls.is_empty()
    }

    /// The write a callout answers, removed.
    pub fn finished(&mut self, callout: u32) -> Option<PendingWrite> {
        let i = self.calls.iter().position(|(c, _)| *c == callout)?;
        Some(self.calls.swap_remove(i).1)
    }

    /// Writes past their deadline, removed.
    pub fn expired(&mut self, now_ms: UnixMillis) -> Vec<PendingWrite> {
        let (gone, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.calls).into_iter().partition(|(_, w)| now_ms >= w.deadline_ms);
        self.calls = keep;
        gone.into_iter().map(|(_, w)| w).collect()
    }

    /// Forget a stream that ended.
    pub fn forget(&mut self, context_id: u32) {
        self.queued.retain(|w| w.context_id != context_id);
        self.calls.retain(|(_, w)| w.context_id != context_id);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use crate::runtime::testing::{policy, token, Worker, NOW_MS};
    use crate::runtime::Action;

    fn writes_policy() -> Value {
        policy(|p| {
            p["routes"][4]["methods"] = json!(["GET", "HEAD", "PUT", "PATCH", "DELETE"]);
            p["routes"][4]["fhir"]["patientWrites"] = json!({"cluster": "upstream", "timeoutMs": 500});
        })
    }

    fn writer() -> String {
        token(json!({"scope": "patient/Observation.ruds patient/Patient.rs"}))
    }

    fn stored(patient: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({"resourceType": "Observation", "id": "o1", "meta": {"versionId": "4"},
                                   "subject": {"reference": format!("Patient/{patient}")}}))
        .unwrap()
    }

    fn header(w: &Worker, ex: &crate::runtime::testing::Exchange, name: &str) -> Option<String> {
        let headers = w.seen(ex).request_headers.unwrap_or_default();
        headers.iter().find(|(k, _)| k.as_slice() == name.as_bytes()).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    #[test]
    fn a_write_goes_only_after_its_resource_is_read_and_pinned_to_that_version() {
        let mut w = Worker::with_policy(&writes_policy(), NOW_MS);
        let t = writer();
        let ex = w.request("DELETE", "/fhir/Observation/o1", Some(&t));
        assert_eq!(ex.action, Action::Pause);
        assert!(w.calls_to("upstream").is_empty());
        w.tick();
        let call = w.calls_to("upstream").pop().unwrap();
        assert_eq!((call.header(":method"), call.header(":path")), (Some("GET"), Some("/fhir/Observation/o1")));
        assert_eq!(call.header("authorization"), Some(format!("Bearer {t}").as_str()), "the caller's own credential");
        w.answer(call.token, 200, &[("etag", "W/\"4\"")], &stored("p1"));
        assert_eq!(w.seen(&ex).resumed, 1);
        assert_eq!(header(&w, &ex, "if-match").as_deref(), Some("W/\"4\""));
        assert_eq!(w.host().tick_period_ms.get(), Some(5), "the read is dispatched on a tick soon");
        w.tick();
        assert_eq!(w.host().tick_period_ms.get(), Some(0), "this policy has no background work: the tick stops again");
    }

    #[test]
    fn a_write_to_anything_unproven_is_refused() {
        let mut w = Worker::with_policy(&writes_policy(), NOW_MS);
        let t = writer();
        let cases: Vec<(u16, Vec<u8>, u16, &str)> = vec![
            (200, stored("p2"), 403, "patient_mismatch"),
            (404, b"{}".to_vec(), 403, "write_not_verified"),
            (200, br#"{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p1"}}"#.to_vec(), 403, "write_not_verified"),
            (502, b"".to_vec(), 503, "write_check_unavailable"),
        ];
        for (n, (status, body, want, reason)) in cases.into_iter().enumerate() {
            let ex = w.request("DELETE", "/fhir/Observation/o1", Some(&t));
            w.tick();
            let call = w.calls_to("upstream").pop().unwrap();
            w.answer(call.token, status, &[], &body);
            let reply = w.seen(&ex).reply.unwrap_or_else(|| panic!("case {n} answered"));
            assert_eq!((reply.status, reply.reason().as_deref()), (want, Some(reason)), "case {n}");
            assert_eq!(w.seen(&ex).resumed, 0);
            ex.stream.on_done();
        }
        // No answer: refused at the deadline.
        let ex = w.request("DELETE", "/fhir/Observation/o1", Some(&t));
        w.tick();
        w.advance(800);
        w.tick();
        assert_eq!(w.seen(&ex).reply.unwrap().status, 503);
        // The events record each refusal.
        let events = w.host().audit_events();
        assert!(events.iter().any(|e| e["reason"] == "patient_mismatch"), "{events:?}");
        assert!(events.iter().any(|e| e["reason"] == "write_not_verified"), "{events:?}");
    }

    #[test]
    fn without_patient_writes_the_route_refuses_as_before() {
        let mut p = writes_policy();
        p["routes"][4]["fhir"].as_object_mut().unwrap().remove("patientWrites");
        let w = Worker::with_policy(&p, NOW_MS);
        let ex = w.request("DELETE", "/fhir/Observation/o1", Some(&writer()));
        assert_eq!(w.seen(&ex).reply.unwrap().reason().as_deref(), Some("compartment_escape"));
    }
}
