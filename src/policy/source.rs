//! Where the filter's policy comes from. The plugin configuration is either a policy document
//! (pushed by Envoy: static config, ECDS, Istio `pluginConfig`) or a `policySource` telling the
//! filter to pull signed policies from an Envoy cluster.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::Value;

use super::Policy;
use super::{compile, CompileError};
use crate::auth::keys::{parse_jwks, VerifyKey};

/// The plugin configuration, compiled.
#[derive(Debug)]
pub enum PluginConfig {
    /// A policy delivered in the configuration itself.
    Inline(Box<Policy>),
    /// Poll a policy server for signed policies.
    Pull(PullConfig),
}

/// Wire form of a pull configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PluginDoc {
    policy_source: PullDoc,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PullDoc {
    cluster: String,
    path: String,
    #[serde(default)]
    authority: Option<String>,
    public_key: Value,
    #[serde(default)]
    poll_interval_seconds: Option<u64>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    max_backoff_seconds: Option<u64>,
}

/// A compiled pull configuration.
#[derive(Debug, Clone)]
pub struct PullConfig {
    /// Envoy cluster serving the policy.
    pub cluster: String,
    /// Request path of the policy document.
    pub path: String,
    /// `:authority` sent (default: the cluster name).
    pub authority: String,
    /// The only key that may sign policies (Ed25519 or P-256), from the plugin configuration.
    pub key: VerifyKey,
    /// Algorithm of that key (`EdDSA` or `ES256`).
    pub alg: Algorithm,
    /// Seconds between polls when healthy.
    pub poll_interval: u64,
    /// Deadline of one fetch, in milliseconds.
    pub timeout_ms: u64,
    /// Longest wait between retries after failures.
    pub max_backoff: u64,
}

/// Response header carrying the detached signature (base64url or base64 of the raw signature
/// over the exact policy bytes).
pub const SIGNATURE_HEADER: &str = "x-phi-guard-signature";

fn err(location: &str, message: impl Into<String>) -> CompileError {
    CompileError { location: location.into(), message: message.into() }
}

/// Parse the plugin configuration: a `policySource` object, or else a policy document.
pub fn parse_plugin_config(bytes: &[u8]) -> Result<PluginConfig, CompileError> {
    let is_pull = serde_json::from_slice::<Value>(bytes).ok().is_some_and(|v| v.get("policySource").is_some());
    if !is_pull {
        return compile(bytes).map(|p| PluginConfig::Inline(Box::new(p)));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let doc: PluginDoc = serde_path_to_error::deserialize(de).map_err(|e| err(&e.path().to_string(), e.into_inner().to_string()))?;
    let d = doc.policy_source;
    if d.cluster.is_empty() {
        return Err(err("policySource.cluster", "must not be empty"));
    }
    if !d.path.starts_with('/') {
        return Err(err("policySource.path", format!("`{}` must start with `/`", d.path)));
    }
    let keys = parse_jwks(&serde_json::json!({ "keys": [d.public_key] })).map_err(|e| err("policySource.publicKey", e.to_string()))?;
    let Some(key) = keys.into_iter().next() else {
        return Err(err("policySource.publicKey", "a public key is required"));
    };
    let alg = [Algorithm::EdDSA, Algorithm::ES256]
        .into_iter()
        .find(|a| key.accepts(*a))
        .ok_or_else(|| err("policySource.publicKey", "must be an Ed25519 (OKP) or P-256 (EC) key"))?;
    let poll_interval = d.poll_interval_seconds.unwrap_or(30);
    if !(1..=86_400).contains(&poll_interval) {
        return Err(err("policySource.pollIntervalSeconds", format!("`{poll_interval}` must be between 1 and 86400")));
    }
    Ok(PluginConfig::Pull(PullConfig {
        authority: d.authority.unwrap_or_else(|| d.cluster.clone()),
        cluster: d.cluster,
        path: d.path,
        key,
        alg,
        poll_interval,
        timeout_ms: d.timeout_ms.unwrap_or(5_000).clamp(100, 60_000),
        max_backoff: d.max_backoff_seconds.unwrap_or(300).max(1),
    }))
}

/// Why a pulled policy was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// No signature header.
    #[error("the policy response carries no `x-phi-guard-signature`")]
    MissingSignature,
    /// The signature does not verify with the configured key.
    #[error("the policy signature does not verify")]
    BadSignature,
    /// The signed policy does not compile.
    #[error("the signed policy does not compile: {0}")]
    Compile(CompileError),
}

/// Verify the detached signature over the exact policy bytes, then compile them.
pub fn accept_signed(bytes: &[u8], signature: Option<&str>, config: &PullConfig) -> Result<Policy, BundleError> {
    let sig = signature.map(str::trim).filter(|s| !s.is_empty()).ok_or(BundleError::MissingSignature)?;
    // Accept standard or URL-safe base64, padded or not; re-encode as the verifier expects.
    let raw = URL_SAFE_NO_PAD.decode(sig.trim_end_matches('=')).or_else(|_| STANDARD.decode(sig)).map_err(|_| BundleError::BadSignature)?;
    if !crate::auth::crypto::verify_raw(&raw, bytes, &config.key.key, config.alg) {
        return Err(BundleError::BadSignature);
    }
    compile(bytes).map_err(BundleError::Compile)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::EncodingKey;
    use serde_json::json;

    fn root() -> String {
        env!("CARGO_MANIFEST_DIR").to_owned()
    }

    fn pull_config() -> Vec<u8> {
        let jwks: Value = serde_json::from_str(&std::fs::read_to_string(format!("{}/tests/keys/demo-jwks.json", root())).unwrap()).unwrap();
        let ed = jwks["keys"][2].clone();
        serde_json::to_vec(&json!({"policySource": {"cluster": "policy_server", "path": "/policy.json", "publicKey": ed}})).unwrap()
    }

    fn sign(bytes: &[u8]) -> String {
        let key = EncodingKey::from_ed_pem(&std::fs::read(format!("{}/tests/keys/demo-eddsa.key.pem", root())).unwrap()).unwrap();
        jsonwebtoken::crypto::sign(bytes, &key, Algorithm::EdDSA).unwrap()
    }

    #[test]
    fn signed_policies() {
        let PluginConfig::Pull(cfg) = parse_plugin_config(&pull_config()).unwrap() else { panic!() };
        assert_eq!((cfg.alg, cfg.poll_interval, cfg.authority.as_str()), (Algorithm::EdDSA, 30, "policy_server"));
        let policy = std::fs::read(format!("{}/policies/smart-patient-app.json", root())).unwrap();
        let sig = sign(&policy);
        assert!(accept_signed(&policy, Some(&sig), &cfg).is_ok());
        // Standard base64 with padding is accepted too.
        let std_sig = STANDARD.encode(URL_SAFE_NO_PAD.decode(&sig).unwrap());
        assert!(accept_signed(&policy, Some(&std_sig), &cfg).is_ok());
        let mut tampered = policy.clone();
        tampered.push(b' ');
        assert_eq!(accept_signed(&tampered, Some(&sig), &cfg).unwrap_err(), BundleError::BadSignature);
        assert_eq!(accept_signed(&policy, None, &cfg).unwrap_err(), BundleError::MissingSignature);
        assert_eq!(accept_signed(&policy, Some("!!"), &cfg).unwrap_err(), BundleError::BadSignature);
        let bad = b"{\"version\": 2}";
        assert!(matches!(accept_signed(bad, Some(&sign(bad)), &cfg), Err(BundleError::Compile(_))));
    }

    #[test]
    fn inline_and_errors() {
        let policy = std::fs::read(format!("{}/policies/smart-patient-app.json", root())).unwrap();
        assert!(matches!(parse_plugin_config(&policy), Ok(PluginConfig::Inline(_))));
        let e = parse_plugin_config(br#"{"policySource": {"cluster": "c", "path": "/p", "publicKey": {"kty": "oct", "k": "AA"}}}"#)
            .unwrap_err();
        assert_eq!(e.location, "policySource.publicKey");
        let e = parse_plugin_config(br#"{"policySource": {"cluster": "c", "path": "/p", "publicKey": {}, "extra": 1}}"#).unwrap_err();
        assert!(e.location.starts_with("policySource"), "{e}");
        let rsa: Value = serde_json::from_str(&std::fs::read_to_string(format!("{}/tests/keys/demo-jwks.json", root())).unwrap()).unwrap();
        let doc = json!({"policySource": {"cluster": "c", "path": "/p", "publicKey": rsa["keys"][0]}});
        assert!(parse_plugin_config(&serde_json::to_vec(&doc).unwrap()).unwrap_err().message.contains("Ed25519"));
    }
}

/// Seconds to wait before the next fetch after `failures` consecutive failures: exponential from
/// 1 s, capped at `max`, with ±50 % jitter from `random` so workers and proxies spread out.
pub fn backoff(failures: u32, max: u64, random: u32) -> u64 {
    let base = 1u64.checked_shl(failures.min(20)).unwrap_or(u64::MAX).min(max.max(1));
    // jitter in [0.5, 1.5)
    let scaled = base.saturating_mul(512 + u64::from(random % 1024)) / 1024;
    scaled.max(1)
}

#[cfg(test)]
mod backoff_tests {
    use super::backoff;

    #[test]
    fn grows_caps_and_jitters() {
        assert_eq!(backoff(0, 300, 512), 1);
        assert_eq!(backoff(3, 300, 512), 8);
        assert_eq!(backoff(30, 300, 512), 300);
        assert!(backoff(30, 300, 0) >= 150 && backoff(30, 300, 1023) < 450);
        assert_eq!(backoff(0, 0, 0), 1);
    }
}
