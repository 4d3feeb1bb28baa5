//! Pull mode: poll a policy server for signed policies; converge every worker on one revision
//! through shared data.

use std::time::Duration;

use proxy_wasm::hostcalls::{dispatch_http_call, get_shared_data, set_shared_data};
use proxy_wasm::types::BufferType;

use super::shared::{claim_lease, get_u64, header, release_lease_until, set_u64};
use super::vm::{Active, Vm};
use crate::policy::compile;
use crate::policy::source::{accept_signed, backoff, PullConfig, SIGNATURE_HEADER};

const SHARED_POLICY: &str = "phi-guard/pull/policy";
const SHARED_ETAG: &str = "phi-guard/pull/etag";
const SHARED_LAST_OK: &str = "phi-guard/pull/last-ok";
const SHARED_LEASE: &str = "phi-guard/pull/next-fetch";

/// Pull-mode state of this worker.
pub struct Pull {
    config: PullConfig,
    revision: Option<String>,
    failures: u32,
    in_flight: Option<u32>,
}

impl Pull {
    /// Start pulling with `config`.
    pub fn new(config: PullConfig) -> Self {
        Pull { config, revision: None, failures: 0, in_flight: None }
    }

    /// Adopt the verified policy in shared data if it is not the one this worker runs.
    pub fn adopt_shared(&mut self, vm: &Vm) {
        let Ok((Some(bytes), _)) = get_shared_data(SHARED_POLICY) else { return };
        // Shared data only ever holds signature-verified bytes.
        match compile(&bytes) {
            Ok(policy) if self.revision.as_deref() != Some(policy.revision.as_str()) => {
                self.revision = Some(policy.revision.clone());
                super::root::install(vm, Active::new(policy), "the policy server");
            }
            Ok(_) => {}
            Err(e) => log::error!("phi-guard: shared policy does not compile: {e}"),
        }
    }

    /// Fetch if due and this worker wins the lease.
    pub fn tick(&mut self, vm: &Vm, now: u64) {
        if self.in_flight.is_none() && claim_lease(SHARED_LEASE, now, self.config.poll_interval) {
            let etag = get_shared_data(SHARED_ETAG).ok().and_then(|(v, _)| v).and_then(|b| String::from_utf8(b).ok());
            let mut headers =
                vec![(":method", "GET"), (":path", self.config.path.as_str()), (":authority", self.config.authority.as_str())];
            if let Some(e) = etag.as_deref().filter(|e| !e.is_empty()) {
                headers.push(("if-none-match", e));
            }
            match dispatch_http_call(&self.config.cluster, headers, None, vec![], Duration::from_millis(self.config.timeout_ms)) {
                Ok(token) => self.in_flight = Some(token),
                Err(e) => {
                    log::warn!("phi-guard: policy fetch could not be dispatched: {e:?}");
                    self.failed(vm, now);
                }
            }
        }
        let last = get_u64(SHARED_LAST_OK);
        vm.metrics.policy_staleness(last.map_or(now, |l| now.saturating_sub(l)));
    }

    fn failed(&mut self, vm: &Vm, now: u64) {
        self.failures = self.failures.saturating_add(1);
        let wait = backoff(self.failures, self.config.max_backoff, super::random_u32());
        release_lease_until(SHARED_LEASE, now.saturating_add(wait));
        vm.metrics.policy_fetch_failed();
        log::warn!("phi-guard: policy fetch failed ({} in a row); keeping the last good policy, retry in {wait} s", self.failures);
    }

    /// Handle an HTTP call response; false if it was not ours.
    pub fn on_response(&mut self, vm: &Vm, token: u32, body_size: usize, headers: &[(String, String)], now: u64) -> bool {
        if self.in_flight != Some(token) {
            return false;
        }
        self.in_flight = None;
        match header(headers, ":status") {
            Some("304") => {
                self.failures = 0;
                set_u64(SHARED_LAST_OK, now);
            }
            Some("200") => {
                let body = super::abi::buffer(BufferType::HttpCallResponseBody, 0, body_size).ok().flatten().unwrap_or_default();
                match accept_signed(&body, header(headers, SIGNATURE_HEADER), &self.config) {
                    Ok(policy) => {
                        let _ = set_shared_data(SHARED_POLICY, Some(&body), None);
                        let _ = set_shared_data(SHARED_ETAG, Some(header(headers, "etag").unwrap_or("").as_bytes()), None);
                        set_u64(SHARED_LAST_OK, now);
                        self.failures = 0;
                        self.revision = Some(policy.revision.clone());
                        super::root::install(vm, Active::new(policy), "the policy server");
                    }
                    Err(e) => {
                        log::error!("phi-guard: pulled policy rejected: {e}; the last good policy stays in force");
                        vm.metrics.policy_rejected();
                        self.failed(vm, now);
                    }
                }
            }
            other => {
                log::warn!("phi-guard: policy server answered {}", other.unwrap_or("nothing (timeout or reset)"));
                self.failed(vm, now);
            }
        }
        true
    }
}
