//! Remote JWKS fetching: one fetch per issuer across all workers (lease in shared data), keys
//! shared through shared data, refresh before expiry, unknown-kid refetch, staleness limit.

use std::time::Duration;

use proxy_wasm::hostcalls::{dispatch_http_call, get_shared_data, set_shared_data};
use proxy_wasm::types::BufferType;

use super::shared::{claim_lease, header, release_lease_until};
use super::vm::Vm;
use crate::auth::remote::parse_remote_jwks;
use crate::policy::source::backoff;

/// Fetches in flight on this worker: (call token, issuer index).
#[derive(Default)]
pub struct Jwks {
    in_flight: Vec<(u32, usize)>,
    failures: Vec<u32>,
}

fn keys_key(issuer: &str) -> String {
    format!("phi-guard/jwks/{issuer}")
}

fn lease_key(issuer: &str) -> String {
    format!("phi-guard/jwks-lease/{issuer}")
}

impl Jwks {
    /// Adopt newer shared keys, drop stale ones, start due fetches, and expire waiters.
    pub fn tick(&mut self, vm: &Vm, now_ms: u64) {
        let now = now_ms / 1000;
        let mut woke = Vec::new();
        let mut fetch = Vec::new();
        {
            let mut guard = vm.active.borrow_mut();
            let Some(active) = guard.as_mut() else { return };
            let issuers: Vec<_> =
                active.policy.issuers.iter().map(|i| (i.issuer.clone(), i.remote.clone(), i.algorithms.clone())).collect();
            self.failures.resize(issuers.len(), 0);
            for (i, (iss, remote, algs)) in issuers.into_iter().enumerate() {
                let Some(remote) = remote else { continue };
                // Keys another worker fetched: 8-byte fetch time, then the JWKS bytes.
                if let Ok((Some(v), _)) = get_shared_data(&keys_key(&iss)) {
                    let (at, body) = v.split_at(8.min(v.len()));
                    let at = <[u8; 8]>::try_from(at).map_or(0, u64::from_be_bytes);
                    let newer = active.keys.get(i).is_none_or(|k| k.fetched_at().is_none_or(|f| at > f));
                    if newer {
                        if let Ok(keys) = parse_remote_jwks(body, &algs) {
                            if let Some(state) = active.keys.get_mut(i) {
                                state.update(keys.clone(), at);
                            }
                            active.set_keys(i, keys);
                            woke.push(i);
                        }
                    }
                }
                let Some(state) = active.keys.get(i) else { continue };
                let usable = state.usable(&remote, now).is_some();
                let refresh_due = state.refresh_due(&remote, now);
                let has_keys = active.policy.issuers.get(i).is_some_and(|x| !x.keys.is_empty());
                if has_keys && !usable {
                    log::error!(
                        "phi-guard: keys of `{iss}` are stale past {} s without a successful fetch; refusing its tokens",
                        remote.max_staleness
                    );
                    active.set_keys(i, Vec::new());
                    vm.metrics.keys_dropped();
                }
                let wanted = active.refetch_wanted.get(i).copied().unwrap_or(false);
                let due = refresh_due || wanted;
                let busy = self.in_flight.iter().any(|(_, x)| *x == i);
                if due && !busy {
                    if let Some(w) = active.refetch_wanted.get_mut(i) {
                        *w = false;
                    }
                    // An unknown-kid refetch may take the lease early; a periodic one waits for it.
                    let period = remote.refetch_interval.min(remote.refresh);
                    if wanted || claim_lease(&lease_key(&iss), now, period) {
                        fetch.push((i, iss, remote));
                    }
                }
            }
        }
        for (i, iss, remote) in fetch {
            let headers = vec![
                (":method", "GET"),
                (":path", remote.path.as_str()),
                (":authority", remote.authority.as_str()),
                ("accept", "application/json"),
            ];
            match dispatch_http_call(&remote.cluster, headers, None, vec![], Duration::from_millis(remote.timeout_ms)) {
                Ok(token) => {
                    vm.metrics.jwks_fetch();
                    self.in_flight.push((token, i));
                }
                Err(e) => {
                    log::warn!("phi-guard: JWKS fetch for `{iss}` could not be dispatched: {e:?}");
                    self.failed(vm, i, &iss, now, remote.refresh);
                    woke.push(i);
                }
            }
        }
        for i in woke {
            vm.wake(Some(i), now_ms);
        }
        vm.wake(None, now_ms);
    }

    fn failed(&mut self, vm: &Vm, i: usize, iss: &str, now: u64, max: u64) {
        let n = self.failures.get(i).copied().unwrap_or(0).saturating_add(1);
        if let Some(f) = self.failures.get_mut(i) {
            *f = n;
        }
        let wait = backoff(n, max.min(60), super::random_u32());
        release_lease_until(&lease_key(iss), now.saturating_add(wait));
        vm.metrics.jwks_fetch_failed();
        log::warn!("phi-guard: JWKS fetch for `{iss}` failed ({n} in a row); retry in {wait} s");
    }

    /// Handle an HTTP call response; false if it was not ours.
    pub fn on_response(&mut self, vm: &Vm, token: u32, body_size: usize, headers: &[(String, String)], now_ms: u64) -> bool {
        let Some(pos) = self.in_flight.iter().position(|(t, _)| *t == token) else { return false };
        let (_, i) = self.in_flight.swap_remove(pos);
        let now = now_ms / 1000;
        let issuer = vm
            .active
            .borrow()
            .as_ref()
            .and_then(|a| a.policy.issuers.get(i).map(|x| (x.issuer.clone(), x.algorithms.clone(), x.remote.clone())));
        let Some((iss, algs, Some(remote))) = issuer else { return true };
        let body = super::abi::buffer(BufferType::HttpCallResponseBody, 0, body_size).ok().flatten().unwrap_or_default();
        let parsed = match header(headers, ":status") {
            Some("200") => parse_remote_jwks(&body, &algs).map_err(|e| e.to_string()),
            other => Err(format!("status {}", other.unwrap_or("none (timeout or reset)"))),
        };
        match parsed {
            Ok(keys) => {
                if let Some(f) = self.failures.get_mut(i) {
                    *f = 0;
                }
                let mut stored = now.to_be_bytes().to_vec();
                stored.extend_from_slice(&body);
                let _ = set_shared_data(&keys_key(&iss), Some(&stored), None);
                if let Some(active) = vm.active.borrow_mut().as_mut() {
                    if let Some(state) = active.keys.get_mut(i) {
                        state.update(keys.clone(), now);
                    }
                    active.set_keys(i, keys);
                }
                log::info!("phi-guard: JWKS of `{iss}` loaded");
            }
            Err(e) => {
                log::warn!("phi-guard: JWKS of `{iss}` not usable: {e}; keeping the last good keys");
                self.failed(vm, i, &iss, now, remote.refresh);
            }
        }
        // Keys arrived or the attempt failed: waiters are decided again now, either way.
        vm.wake(Some(i), now_ms);
        true
    }
}
