//! Root context: turns the plugin configuration into the active policy, either directly (inline
//! policy: static config, ECDS, Istio) or by pulling signed policies from a policy server.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls::{dispatch_http_call, get_buffer, get_map, get_shared_data, set_shared_data, set_tick_period};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, MapType};

use super::http::Stream;
use super::metrics::Metrics;
use super::now_secs;
use crate::auth::TokenCache;
use crate::policy::source::{accept_signed, backoff, parse_plugin_config, PluginConfig, PullConfig, SIGNATURE_HEADER};
use crate::policy::{compile, Policy};

/// The policy in force on this VM and its verified-token cache (cleared with every new policy).
pub struct Active {
    /// Compiled policy.
    pub policy: Rc<Policy>,
    /// Verified tokens for this policy.
    pub cache: TokenCache,
}

/// Shared between the root context and every stream on this VM.
pub type Shared = Rc<RefCell<Option<Active>>>;

/// Shared-data keys (per VM id, visible to every worker).
const SHARED_POLICY: &str = "phi-guard/pull/policy";
const SHARED_ETAG: &str = "phi-guard/pull/etag";
const SHARED_LAST_OK: &str = "phi-guard/pull/last-ok";
const SHARED_LEASE: &str = "phi-guard/pull/next-fetch";

/// Pull-mode state of this worker.
struct Pull {
    config: PullConfig,
    /// Revision of the policy this worker runs.
    revision: Option<String>,
    /// Consecutive failed fetches (this worker).
    failures: u32,
    /// Token of the fetch in flight, if any.
    in_flight: Option<u32>,
}

/// Root context of the plugin.
pub struct Root {
    active: Shared,
    metrics: Rc<Metrics>,
    pull: Option<Pull>,
}

impl Root {
    /// A root with no policy: until one compiles, every request is refused (503 `no_policy`).
    pub fn new() -> Self {
        Root { active: Rc::new(RefCell::new(None)), metrics: Rc::new(Metrics::define()), pull: None }
    }

    fn install(&mut self, policy: Policy, how: &str) {
        log::info!(
            "phi-guard: policy `{}` revision {} loaded from {how} ({} routes{})",
            policy.name,
            policy.revision,
            policy.routes.len(),
            if policy.shadow { ", SHADOW mode: not enforced" } else { "" }
        );
        self.metrics.policy_loaded(policy.revision_number());
        let cache = TokenCache::new(policy.token_cache_entries);
        *self.active.borrow_mut() = Some(Active { policy: Rc::new(policy), cache });
    }

    /// Adopt the policy another worker (or this one) verified and stored in shared data.
    fn adopt_shared(&mut self) {
        let Some(pull) = self.pull.as_mut() else { return };
        let Ok((Some(bytes), _)) = get_shared_data(SHARED_POLICY) else { return };
        // Shared data only ever holds signature-verified bytes; compile them here (cheap, and
        // the compiled form cannot cross VMs).
        match compile(&bytes) {
            Ok(policy) if pull.revision.as_deref() != Some(policy.revision.as_str()) => {
                pull.revision = Some(policy.revision.clone());
                self.install(policy, "the policy server");
            }
            Ok(_) => {}
            Err(e) => log::error!("phi-guard: shared policy does not compile: {e}"),
        }
    }

    /// Claim the next fetch across workers (CAS on the lease), then fetch.
    fn maybe_fetch(&mut self, now: u64) {
        let Some(pull) = self.pull.as_mut() else { return };
        if pull.in_flight.is_some() {
            return;
        }
        let (next, cas) = match get_shared_data(SHARED_LEASE) {
            Ok((v, cas)) => (v.and_then(|b| b.try_into().ok()).map_or(0, u64::from_be_bytes), cas),
            Err(_) => return,
        };
        if now < next {
            return;
        }
        // Whoever wins the CAS fetches; the others adopt the result from shared data.
        let lease = now.saturating_add(pull.config.poll_interval);
        if set_shared_data(SHARED_LEASE, Some(&lease.to_be_bytes()), cas).is_err() {
            return;
        }
        let etag = get_shared_data(SHARED_ETAG).ok().and_then(|(v, _)| v).and_then(|b| String::from_utf8(b).ok());
        let mut headers = vec![(":method", "GET"), (":path", pull.config.path.as_str()), (":authority", pull.config.authority.as_str())];
        if let Some(e) = etag.as_deref() {
            headers.push(("if-none-match", e));
        }
        match dispatch_http_call(&pull.config.cluster, headers, None, vec![], Duration::from_millis(pull.config.timeout_ms)) {
            Ok(token) => pull.in_flight = Some(token),
            Err(e) => {
                log::warn!("phi-guard: policy fetch could not be dispatched: {e:?}");
                self.fetch_failed(now);
            }
        }
    }

    fn fetch_failed(&mut self, now: u64) {
        let Some(pull) = self.pull.as_mut() else { return };
        pull.failures = pull.failures.saturating_add(1);
        let mut r = [0u8; 4];
        let random = getrandom::getrandom(&mut r).map_or(0, |()| u32::from_le_bytes(r));
        let wait = backoff(pull.failures, pull.config.max_backoff, random);
        let retry_at = now.saturating_add(wait);
        if let Ok((_, cas)) = get_shared_data(SHARED_LEASE) {
            let _ = set_shared_data(SHARED_LEASE, Some(&retry_at.to_be_bytes()), cas);
        }
        self.metrics.policy_fetch_failed();
        log::warn!("phi-guard: policy fetch failed ({} in a row); keeping the last good policy, retry in {wait} s", pull.failures);
    }

    fn fetch_succeeded(&mut self, now: u64) {
        if let Some(pull) = self.pull.as_mut() {
            pull.failures = 0;
        }
        let _ = set_shared_data(SHARED_LAST_OK, Some(&now.to_be_bytes()), None);
    }

    fn report_staleness(&self, now: u64) {
        if self.pull.is_none() {
            return;
        }
        let last = get_shared_data(SHARED_LAST_OK).ok().and_then(|(v, _)| v).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
        // Never fetched: stale since the epoch of this VM is unknown; report the full age.
        self.metrics.policy_staleness(last.map_or(now, |l| now.saturating_sub(l)));
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token_id: u32, _num_headers: usize, body_size: usize, _num_trailers: usize) {
        let now = now_secs();
        let Some(pull) = self.pull.as_mut() else { return };
        if pull.in_flight != Some(token_id) {
            return;
        }
        pull.in_flight = None;
        let headers = get_map(MapType::HttpCallResponseHeaders).unwrap_or_default();
        let header = |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
        match header(":status").as_deref() {
            Some("304") => {
                self.fetch_succeeded(now);
            }
            Some("200") => {
                let body = get_buffer(BufferType::HttpCallResponseBody, 0, body_size).ok().flatten().unwrap_or_default();
                match accept_signed(&body, header(SIGNATURE_HEADER).as_deref(), &pull.config) {
                    Ok(policy) => {
                        let _ = set_shared_data(SHARED_POLICY, Some(&body), None);
                        let etag = header("etag").unwrap_or_default();
                        let _ = set_shared_data(SHARED_ETAG, Some(etag.as_bytes()), None);
                        pull.revision = Some(policy.revision.clone());
                        self.fetch_succeeded(now);
                        self.install(policy, "the policy server");
                    }
                    Err(e) => {
                        log::error!("phi-guard: pulled policy rejected: {e}; the last good policy stays in force");
                        self.metrics.policy_rejected();
                        self.fetch_failed(now);
                    }
                }
            }
            other => {
                log::warn!("phi-guard: policy server answered {}", other.unwrap_or("nothing (timeout or reset)"));
                self.fetch_failed(now);
            }
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        let bytes = match get_buffer(BufferType::PluginConfiguration, 0, size) {
            Ok(Some(b)) => b,
            _ => {
                log::error!("phi-guard: no plugin configuration; the previous policy (if any) stays in force");
                self.metrics.policy_rejected();
                return false;
            }
        };
        match parse_plugin_config(&bytes) {
            Ok(PluginConfig::Inline(policy)) => {
                self.pull = None;
                self.install(*policy, "the plugin configuration");
                true
            }
            Ok(PluginConfig::Pull(config)) => {
                log::info!("phi-guard: pulling signed policies from cluster `{}` path `{}`", config.cluster, config.path);
                self.pull = Some(Pull { config, revision: None, failures: 0, in_flight: None });
                if set_tick_period(Duration::from_secs(1)).is_err() {
                    log::error!("phi-guard: cannot schedule policy polling");
                    return false;
                }
                self.adopt_shared();
                true
            }
            Err(e) => {
                log::error!("phi-guard: policy rejected: {e}; the previous policy (if any) stays in force");
                self.metrics.policy_rejected();
                false
            }
        }
    }

    fn on_tick(&mut self) {
        let now = now_secs();
        self.adopt_shared();
        self.maybe_fetch(now);
        self.report_staleness(now);
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream::new(Rc::clone(&self.active), Rc::clone(&self.metrics))))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
