//! An in-memory [`Host`] for native tests: header maps, buffers and properties per stream,
//! shared data ([`MemoryStore`], which can lose compare-and-swap races), a settable clock, and
//! a record of everything the filter did (local replies, resumed streams, callouts, log lines,
//! stats). [`Worker`] wraps a [`Root`] on it with helpers to run requests and answer callouts.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use serde_json::Value;

use super::host::{Action, Buffer, HeaderMap, HeaderPair, Host, HostError, Level, MetricKind};
use super::root::Root;
use super::stream::Stream;
use crate::audit::LOG_PREFIX;
use crate::shared::{SharedStore, StoreError};
use crate::testing::MemoryStore;
use crate::time::UnixMillis;

/// The status of a call the mock refuses (the ABI's `BadArgument`).
const REFUSED: HostError = HostError(2);

/// What the mock holds for one stream.
#[derive(Debug, Clone, Default)]
pub struct MockStream {
    /// Request headers; `None`: the host cannot read them.
    pub request_headers: Option<Vec<HeaderPair>>,
    /// The request body buffered so far.
    pub request_body: Vec<u8>,
    /// The upstream's response headers.
    pub response_headers: Vec<HeaderPair>,
    /// The response body buffered so far.
    pub response_body: Vec<u8>,
    /// The upstream's response trailers.
    pub trailers: Vec<HeaderPair>,
    /// Stream attributes (`source.address` is `"source\0address"`).
    pub properties: BTreeMap<String, Vec<u8>>,
    /// The filter's local reply, if it sent one.
    pub reply: Option<LocalReply>,
    /// How often the paused request was resumed.
    pub resumed: usize,
}

/// A local reply the filter sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    /// HTTP status.
    pub status: u16,
    /// Headers, as sent.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl LocalReply {
    /// A header of the reply.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The reason code the body names (`error` of the JSON body, or the `urn:phi-guard:reason`
    /// coding of a FHIR `OperationOutcome`).
    pub fn reason(&self) -> Option<String> {
        let v = self.json();
        v["error"].as_str().or_else(|| v["issue"][0]["details"]["coding"][0]["code"].as_str()).map(str::to_owned)
    }
}

/// A callout the filter dispatched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatched {
    /// Its token.
    pub token: u32,
    /// Envoy cluster.
    pub cluster: String,
    /// Request headers.
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: Option<Vec<u8>>,
    /// Deadline.
    pub timeout_ms: u64,
}

impl Dispatched {
    /// A header of the callout.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A stat as the mock recorded it.
#[derive(Debug, Clone)]
struct Stat {
    name: String,
    kind: MetricKind,
    value: u64,
}

/// Hook run from inside a re-entrant hostcall, as Envoy may call back into the filter there.
pub type Reenter = Box<dyn Fn()>;

/// The in-memory host.
pub struct MockHost {
    /// Shared data; give several hosts the same store to model the workers of one Envoy.
    pub store: Rc<MemoryStore>,
    /// The clock.
    pub now_ms: Cell<UnixMillis>,
    /// Every random byte is this one; `None`: the host has no randomness.
    pub random_byte: Cell<Option<u8>>,
    /// The VM's environment.
    pub env: RefCell<BTreeMap<String, String>>,
    /// The plugin configuration.
    pub config: RefCell<Vec<u8>>,
    /// Streams by context id.
    pub streams: RefCell<BTreeMap<u32, MockStream>>,
    /// Callouts dispatched, in order.
    pub dispatched: RefCell<Vec<Dispatched>>,
    /// Refuse every dispatch.
    pub fail_dispatch: Cell<bool>,
    /// Refuse every `set_buffer`.
    pub fail_set_buffer: Cell<bool>,
    /// The callout answer being delivered: headers and body.
    pub call_response: RefCell<(Vec<HeaderPair>, Vec<u8>)>,
    /// Log lines, in order.
    pub logs: RefCell<Vec<(Level, String)>>,
    /// The tick period asked for.
    pub tick_period_ms: Cell<Option<u64>>,
    /// Run from inside `set_buffer`, `send_response` and `resume_request`.
    pub reenter: RefCell<Option<Reenter>>,
    current: Cell<u32>,
    next_token: Cell<u32>,
    stats: RefCell<Vec<Stat>>,
    /// Hostcalls made, by name (shared data as `shared_get`/`shared_set`).
    pub calls: RefCell<BTreeMap<&'static str, usize>>,
}

impl MockHost {
    fn count(&self, name: &'static str) {
        *self.calls.borrow_mut().entry(name).or_default() += 1;
    }

    /// Hostcalls made since the last call, by name; the count starts again.
    pub fn take_calls(&self) -> BTreeMap<&'static str, usize> {
        std::mem::take(&mut *self.calls.borrow_mut())
    }

    /// A host on its own shared data.
    pub fn new() -> Self {
        MockHost::sharing(Rc::new(MemoryStore::default()))
    }

    /// A host on `store`, shared with other hosts (workers).
    pub fn sharing(store: Rc<MemoryStore>) -> Self {
        MockHost {
            store,
            now_ms: Cell::new(UnixMillis::default()),
            random_byte: Cell::new(Some(0x80)),
            env: RefCell::new(BTreeMap::new()),
            config: RefCell::new(Vec::new()),
            streams: RefCell::new(BTreeMap::new()),
            dispatched: RefCell::new(Vec::new()),
            fail_dispatch: Cell::new(false),
            fail_set_buffer: Cell::new(false),
            call_response: RefCell::new((Vec::new(), Vec::new())),
            logs: RefCell::new(Vec::new()),
            tick_period_ms: Cell::new(None),
            reenter: RefCell::new(None),
            current: Cell::new(0),
            next_token: Cell::new(1),
            stats: RefCell::new(Vec::new()),
            calls: RefCell::new(BTreeMap::new()),
        }
    }

    /// Make `context_id` the current stream (the host does this before each callback).
    pub fn enter(&self, context_id: u32) {
        self.current.set(context_id);
    }

    /// A copy of the stream `context_id`.
    pub fn stream(&self, context_id: u32) -> MockStream {
        self.streams.borrow().get(&context_id).cloned().unwrap_or_default()
    }

    /// Edit the stream `context_id`.
    pub fn edit(&self, context_id: u32, f: impl FnOnce(&mut MockStream)) {
        f(self.streams.borrow_mut().entry(context_id).or_default());
    }

    /// The value of the stat `name` (0 if never defined or touched).
    pub fn stat(&self, name: &str) -> u64 {
        self.stats.borrow().iter().find(|s| s.name == name).map_or(0, |s| s.value)
    }

    /// Every stat defined so far, with its kind, in order of definition.
    pub fn defined_stats(&self) -> Vec<(String, MetricKind)> {
        self.stats.borrow().iter().map(|s| (s.name.clone(), s.kind)).collect()
    }

    /// The audit lines written to the log, parsed.
    pub fn audit_events(&self) -> Vec<Value> {
        self.logs
            .borrow()
            .iter()
            .flat_map(|(_, l)| l.split('\n').filter_map(|l| l.strip_prefix(LOG_PREFIX)).map(str::to_owned).collect::<Vec<_>>())
            .map(|l| serde_json::from_str(&l).unwrap_or(Value::Null))
            .collect()
    }

    /// The operational log lines (all but the audit lines), parsed.
    pub fn log_entries(&self) -> Vec<Value> {
        self.logs
            .borrow()
            .iter()
            .filter(|(_, l)| !l.starts_with(LOG_PREFIX))
            .map(|(_, l)| serde_json::from_str(l).unwrap_or(Value::Null))
            .collect()
    }

    /// The last operational line whose `msg` is `msg`, parsed.
    pub fn log_entry(&self, msg: &str) -> Option<Value> {
        self.log_entries().into_iter().rev().find(|e| e["msg"] == msg)
    }

    /// Assert that an operational line with `msg` and `level` was written, carrying (at least)
    /// the members of `fields`, equal.
    #[track_caller]
    pub fn assert_log(&self, level: &str, msg: &str, fields: Value) {
        let found = self
            .log_entries()
            .into_iter()
            .rev()
            .filter(|e| e["msg"] == msg && e["level"] == level)
            .any(|e| fields.as_object().is_some_and(|f| f.iter().all(|(k, v)| e.get(k) == Some(v))));
        assert!(found, "no {level} line {msg:?} with {fields}; operational lines: {:#?}", self.log_entries());
    }

    fn reenter(&self) {
        if let Some(f) = self.reenter.borrow().as_ref() {
            f();
        }
    }

    fn with_map<T>(&self, map: HeaderMap, f: impl FnOnce(&mut Vec<HeaderPair>) -> T) -> Result<T, HostError> {
        if map == HeaderMap::CallResponseHeaders {
            return Ok(f(&mut self.call_response.borrow_mut().0));
        }
        let mut streams = self.streams.borrow_mut();
        let s = streams.entry(self.current.get()).or_default();
        match map {
            HeaderMap::RequestHeaders => s.request_headers.as_mut().map(f).ok_or(REFUSED),
            HeaderMap::ResponseHeaders => Ok(f(&mut s.response_headers)),
            HeaderMap::ResponseTrailers => Ok(f(&mut s.trailers)),
            HeaderMap::CallResponseHeaders => Err(REFUSED),
        }
    }

    fn with_buffer<T>(&self, kind: Buffer, f: impl FnOnce(&mut Vec<u8>) -> T) -> T {
        match kind {
            Buffer::CallResponseBody => f(&mut self.call_response.borrow_mut().1),
            Buffer::PluginConfiguration => f(&mut self.config.borrow_mut()),
            Buffer::RequestBody | Buffer::ResponseBody => {
                let mut streams = self.streams.borrow_mut();
                let s = streams.entry(self.current.get()).or_default();
                f(if kind == Buffer::RequestBody { &mut s.request_body } else { &mut s.response_body })
            }
        }
    }
}

impl Default for MockHost {
    fn default() -> Self {
        MockHost::new()
    }
}

fn pair(k: &[u8], v: &[u8]) -> (String, String) {
    (String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned())
}

impl SharedStore for MockHost {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
        self.count("shared_get");
        self.store.get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        self.count("shared_set");
        self.store.set(key, value, cas)
    }
}

impl Host for MockHost {
    fn header_pairs(&self, map: HeaderMap) -> Result<Vec<HeaderPair>, HostError> {
        self.count("header_pairs");
        self.with_map(map, |m| m.clone())
    }

    fn header(&self, map: HeaderMap, name: &str) -> Result<Option<Vec<u8>>, HostError> {
        self.count("header");
        self.with_map(map, |m| m.iter().find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes())).map(|(_, v)| v.clone()))
    }

    fn set_header(&self, map: HeaderMap, name: &str, value: &[u8]) -> Result<(), HostError> {
        self.count("set_header");
        self.with_map(map, |m| {
            m.retain(|(k, _)| !k.eq_ignore_ascii_case(name.as_bytes()));
            m.push((name.as_bytes().to_vec(), value.to_vec()));
        })
    }

    fn remove_header(&self, map: HeaderMap, name: &str) -> Result<(), HostError> {
        self.count("remove_header");
        self.with_map(map, |m| m.retain(|(k, _)| !k.eq_ignore_ascii_case(name.as_bytes())))
    }

    fn buffer(&self, kind: Buffer, start: usize, max: usize) -> Result<Option<Vec<u8>>, HostError> {
        self.count("buffer");
        Ok(self.with_buffer(kind, |b| Some(b.iter().skip(start).take(max).copied().collect())))
    }

    fn set_buffer(&self, kind: Buffer, start: usize, size: usize, value: &[u8]) -> Result<(), HostError> {
        self.count("set_buffer");
        if self.fail_set_buffer.get() {
            return Err(HostError(2));
        }
        self.with_buffer(kind, |b| {
            let start = start.min(b.len());
            let end = start.saturating_add(size).min(b.len());
            b.splice(start..end, value.iter().copied());
        });
        self.reenter();
        Ok(())
    }

    fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, HostError> {
        self.count("property");
        Ok(self.stream(self.current.get()).properties.get(&path.join("\0")).cloned())
    }

    fn send_response(&self, status: u16, headers: &[(&str, &str)], body: &[u8]) -> Result<(), HostError> {
        self.count("send_response");
        let reply =
            LocalReply { status, headers: headers.iter().map(|(k, v)| pair(k.as_bytes(), v.as_bytes())).collect(), body: body.to_vec() };
        self.edit(self.current.get(), |s| s.reply = Some(reply));
        self.reenter();
        Ok(())
    }

    fn set_effective_context(&self, context_id: u32) -> Result<(), HostError> {
        self.count("set_effective_context");
        if !self.streams.borrow().contains_key(&context_id) {
            return Err(REFUSED);
        }
        self.current.set(context_id);
        Ok(())
    }

    fn resume_request(&self) -> Result<(), HostError> {
        self.count("resume_request");
        self.edit(self.current.get(), |s| s.resumed += 1);
        self.reenter();
        Ok(())
    }

    fn dispatch(&self, cluster: &str, headers: &[(&str, &str)], body: Option<&[u8]>, timeout_ms: u64) -> Result<u32, HostError> {
        self.count("dispatch");
        if self.fail_dispatch.get() {
            return Err(REFUSED);
        }
        let token = self.next_token.get();
        self.next_token.set(token + 1);
        self.dispatched.borrow_mut().push(Dispatched {
            token,
            cluster: cluster.to_owned(),
            headers: headers.iter().map(|(k, v)| pair(k.as_bytes(), v.as_bytes())).collect(),
            body: body.map(<[u8]>::to_vec),
            timeout_ms,
        });
        Ok(token)
    }

    fn set_tick_period(&self, period_ms: u64) -> Result<(), HostError> {
        self.count("set_tick_period");
        self.tick_period_ms.set(Some(period_ms));
        Ok(())
    }

    fn log(&self, level: Level, message: &str) {
        self.count("log");
        // Every operational line is one JSON object with its level, as `oplog` writes it; only
        // audit lines (sealed, verified as written) are not.
        if !message.starts_with(LOG_PREFIX) {
            let entry: Value = serde_json::from_str(message).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {message:?}"));
            assert!(!message.contains('\n'), "one line: {message:?}");
            assert_eq!(entry["level"], super::oplog::level_name(level), "{message}");
            assert_eq!(entry["logger"], super::oplog::LOGGER, "{message}");
            assert!(entry["msg"].as_str().is_some_and(|m| !m.is_empty()), "{message}");
        }
        self.logs.borrow_mut().push((level, message.to_owned()));
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        self.count("define_metric");
        let mut stats = self.stats.borrow_mut();
        if let Some(i) = stats.iter().position(|s| s.name == name) {
            return Ok(u32::try_from(i).unwrap_or(u32::MAX));
        }
        stats.push(Stat { name: name.to_owned(), kind, value: 0 });
        Ok(u32::try_from(stats.len() - 1).unwrap_or(u32::MAX))
    }

    fn increment_metric(&self, id: u32, by: u64) -> Result<(), HostError> {
        self.count("increment_metric");
        let mut stats = self.stats.borrow_mut();
        let stat = stats.get_mut(id as usize).ok_or(REFUSED)?;
        stat.value += by;
        Ok(())
    }

    fn record_metric(&self, id: u32, value: u64) -> Result<(), HostError> {
        self.count("record_metric");
        let mut stats = self.stats.borrow_mut();
        stats.get_mut(id as usize).ok_or(REFUSED)?.value = value;
        Ok(())
    }

    fn now_ms(&self) -> UnixMillis {
        self.count("now_ms");
        self.now_ms.get()
    }

    fn random(&self, out: &mut [u8]) -> Result<(), HostError> {
        self.count("random");
        let byte = self.random_byte.get().ok_or(REFUSED)?;
        out.fill(byte);
        Ok(())
    }

    fn env_var(&self, name: &str) -> Option<String> {
        self.count("env_var");
        self.env.borrow().get(name).cloned()
    }
}

/// The audit secret tests configure (the shared fixtures' secret, as the VM environment has it).
pub const AUDIT_SECRET: &str = crate::testing::SECRET_TEXT;

/// One worker: a root on a [`MockHost`], with helpers that play Envoy's part.
pub struct Worker {
    /// The root context.
    pub root: Root<MockHost>,
    next_context: Cell<u32>,
}

/// A request the worker is handling.
pub struct Exchange {
    /// Its context id.
    pub id: u32,
    /// The filter's stream.
    pub stream: Rc<Stream<MockHost>>,
    /// What the request-headers callback answered.
    pub action: Action,
}

impl Worker {
    /// A worker with the audit secret set and nothing configured, on `host`.
    pub fn on(host: MockHost) -> Self {
        host.env.borrow_mut().insert(crate::audit::KEY_ENV.to_owned(), AUDIT_SECRET.to_owned());
        Worker { root: Root::new(host), next_context: Cell::new(100) }
    }

    /// A worker with the audit secret set and nothing configured.
    pub fn new() -> Self {
        Worker::on(MockHost::new())
    }

    /// A worker running `policy` (configured at `now_ms`).
    pub fn with_policy(policy: &Value, now_ms: UnixMillis) -> Self {
        let mut w = Worker::new();
        w.host().now_ms.set(now_ms);
        assert!(w.configure(policy), "the policy is accepted: {:?}", w.host().logs.borrow());
        w
    }

    /// A worker of the same Envoy as the others on `store`, running `config` (configured at
    /// `now_ms`).
    pub fn sharing(store: &Rc<MemoryStore>, config: &Value, now_ms: UnixMillis) -> Self {
        let mut w = Worker::on(MockHost::sharing(Rc::clone(store)));
        w.host().now_ms.set(now_ms);
        assert!(w.configure(config), "the configuration is accepted: {:?}", w.host().logs.borrow());
        w
    }

    /// Move this worker's clock forward.
    pub fn advance(&self, ms: u64) {
        self.host().now_ms.set(self.host().now_ms.get().add_ms(ms));
    }

    /// The host.
    pub fn host(&self) -> &MockHost {
        &self.root.vm().host
    }

    /// Deliver `config` as the plugin configuration.
    pub fn configure(&mut self, config: &Value) -> bool {
        let bytes = serde_json::to_vec(config).unwrap_or_default();
        let size = bytes.len();
        *self.host().config.borrow_mut() = bytes;
        self.host().enter(0);
        self.root.on_configure(size)
    }

    /// Run the root's tick at the host's current time.
    pub fn tick(&mut self) {
        self.host().enter(0);
        self.root.on_tick();
    }

    /// Answer the callout `token` with `status`, `headers` and `body`.
    pub fn answer(&mut self, token: u32, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        let mut pairs = vec![(b":status".to_vec(), status.to_string().into_bytes())];
        pairs.extend(headers.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())));
        *self.host().call_response.borrow_mut() = (pairs, body.to_vec());
        self.host().enter(0);
        self.root.on_http_call_response(token, body.len());
    }

    /// Callouts dispatched to `cluster` so far.
    pub fn calls_to(&self, cluster: &str) -> Vec<Dispatched> {
        self.host().dispatched.borrow().iter().filter(|d| d.cluster == cluster).cloned().collect()
    }

    /// A new stream whose request has these headers (raw bytes; `None`: unreadable), before
    /// any callback.
    pub fn open(&self, headers: Option<Vec<HeaderPair>>) -> (u32, Rc<Stream<MockHost>>) {
        let id = self.next_context.get();
        self.next_context.set(id + 1);
        self.host().edit(id, |s| {
            s.request_headers = headers;
            s.properties.insert("source\0address".into(), b"10.1.2.3:5555".to_vec());
            s.properties.insert("destination\0address".into(), b"[::1]:8080".to_vec());
        });
        (id, Rc::new(self.root.stream(id)))
    }

    /// Start a request with these headers and run its request-headers callback.
    pub fn send(&self, headers: Option<Vec<HeaderPair>>) -> Exchange {
        let (id, stream) = self.open(headers);
        self.host().enter(id);
        let action = stream.on_request_headers();
        Exchange { id, stream, action }
    }

    /// A request with `:method`, `:path`, `accept-encoding: gzip` and (if any)
    /// `Authorization: Bearer <token>`.
    pub fn request(&self, method: &str, path: &str, token: Option<&str>) -> Exchange {
        let mut headers = vec![
            (b":method".to_vec(), method.as_bytes().to_vec()),
            (b":path".to_vec(), path.as_bytes().to_vec()),
            (b":authority".to_vec(), b"fhir.phi-guard.test".to_vec()),
            (b"x-request-id".to_vec(), b"0f3c2a9e-1b7d-4c55-9a0e-3c2f1b7d4c55".to_vec()),
            (b"accept-encoding".to_vec(), b"gzip".to_vec()),
        ];
        if let Some(t) = token {
            headers.push((b"authorization".to_vec(), format!("Bearer {t}").into_bytes()));
        }
        self.send(Some(headers))
    }

    /// The upstream answers `ex` with `status`, `headers` and a complete `body`; Envoy then runs
    /// the response callbacks and the end of the stream. Returns the body actions.
    pub fn respond(&self, ex: &Exchange, status: u16, headers: &[(&str, &str)], body: &[u8]) -> (Action, Action) {
        let mut pairs = vec![(b":status".to_vec(), status.to_string().into_bytes())];
        pairs.extend(headers.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())));
        self.host().edit(ex.id, |s| {
            s.response_headers = pairs;
            s.response_body = body.to_vec();
        });
        self.host().enter(ex.id);
        let head = ex.stream.on_response_headers(body.is_empty());
        let body_action = if body.is_empty() { Action::Continue } else { ex.stream.on_response_body(body.len(), true) };
        ex.stream.on_log();
        ex.stream.on_done();
        (head, body_action)
    }

    /// The request's stream as the host holds it.
    pub fn seen(&self, ex: &Exchange) -> MockStream {
        self.host().stream(ex.id)
    }
}

impl Default for Worker {
    fn default() -> Self {
        Worker::new()
    }
}

/// The tests' clock: [`crate::testing::NOW`] in milliseconds.
pub const NOW_MS: UnixMillis = crate::testing::NOW.to_millis();

/// The demo JWKS (`tests/keys/demo-jwks.json`): what the test issuer's tokens verify with.
pub fn demo_jwks() -> Vec<u8> {
    serde_json::to_vec(&crate::testing::demo_jwks()).unwrap_or_default()
}

/// `policies/smart-patient-app.json` with JSON-lines audit events (easier to read in tests),
/// edited by `patch`.
pub fn policy(patch: impl FnOnce(&mut Value)) -> Value {
    let mut p = crate::testing::policy_doc("smart-patient-app");
    if let Some(doc) = p.as_object_mut() {
        doc.remove("audit");
    }
    patch(&mut p);
    p
}

/// The test issuer's remote-JWKS variant of [`policy`]: its keys come from cluster `idp`.
pub fn remote_policy(jwks_uri: Value) -> Value {
    policy(|p| {
        if let Some(issuer) = p["issuers"][0].as_object_mut() {
            issuer.remove("jwks");
            issuer.insert("jwksUri".into(), jwks_uri);
        }
    })
}

/// A token of the test issuer (patient `p1`, `patient/Patient.rs patient/Observation.rs`), with
/// claims replaced by `patch`, signed with the demo RS256 key under `kid`.
pub fn token_with_kid(kid: &str, patch: Value) -> String {
    crate::testing::token_with_kid(kid, patch)
}

/// [`token_with_kid`] with the demo key's own `kid`.
pub use crate::testing::token;
