//! OpenID Connect discovery (OpenID Connect Discovery 1.0 §4; RFC 8414 for the same document
//! of an OAuth server): an issuer given only by its `issuer` URL and a cluster has its JWKS
//! location read from `<issuer>/.well-known/openid-configuration`. The document is trusted
//! only for the issuer it names exactly (§4.3), and the keys are fetched only from the issuer's
//! own host: a document cannot send the filter to another host.

use serde_json::Value;
use thiserror::Error;

/// Largest discovery document read, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// Why a discovery document was not used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DiscoveryError {
    /// Not a JSON object, or too large.
    #[error("not a discovery document")]
    NotADocument,
    /// Its `issuer` is not exactly the configured one (OpenID Connect Discovery §4.3).
    #[error("its `issuer` is not `{0}`")]
    IssuerMismatch(String),
    /// `jwks_uri` is missing or not an absolute http(s) URL.
    #[error("no usable `jwks_uri`")]
    NoJwksUri,
    /// `jwks_uri` is on another host than the issuer (the filter only calls the issuer's
    /// cluster).
    #[error("`jwks_uri` is on another host than the issuer")]
    ForeignJwksUri,
}

/// The path of the discovery document of `issuer` (its path, if any, then
/// `/.well-known/openid-configuration`); `None` if `issuer` is not an http(s) URL without query
/// or fragment.
pub fn document_path(issuer: &str) -> Option<String> {
    let (_, path) = split_url(issuer)?;
    if issuer.contains(['?', '#']) {
        return None;
    }
    Some(format!("{}/.well-known/openid-configuration", path.trim_end_matches('/')))
}

/// The JWKS path (with query) a discovery document names for `issuer`.
pub fn jwks_path(body: &[u8], issuer: &str) -> Result<String, DiscoveryError> {
    if body.len() > MAX_DOCUMENT_BYTES {
        return Err(DiscoveryError::NotADocument);
    }
    let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(body) else { return Err(DiscoveryError::NotADocument) };
    if doc.get("issuer").and_then(Value::as_str) != Some(issuer) {
        return Err(DiscoveryError::IssuerMismatch(issuer.to_owned()));
    }
    let uri = doc.get("jwks_uri").and_then(Value::as_str).ok_or(DiscoveryError::NoJwksUri)?;
    let (origin, path) = split_url(uri).ok_or(DiscoveryError::NoJwksUri)?;
    let (issuer_origin, _) = split_url(issuer).ok_or(DiscoveryError::NoJwksUri)?;
    if !origin.eq_ignore_ascii_case(issuer_origin) {
        return Err(DiscoveryError::ForeignJwksUri);
    }
    let path = path.split('#').next().unwrap_or("");
    if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(DiscoveryError::NoJwksUri);
    }
    Ok(path.to_owned())
}

/// (`scheme://authority`, the rest) of an absolute http(s) URL.
fn split_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"))?;
    let scheme_len = url.len() - rest.len();
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if end == 0 || rest.get(..end)?.contains('@') {
        return None;
    }
    Some((url.get(..scheme_len + end)?, rest.get(end..)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ISS: &str = "https://idp.example.org/realms/hospital";

    fn doc(patch: Value) -> Vec<u8> {
        let mut d = json!({"issuer": ISS, "jwks_uri": "https://idp.example.org/realms/hospital/protocol/openid-connect/certs",
                           "introspection_endpoint": "https://idp.example.org/realms/hospital/introspect"});
        for (k, v) in patch.as_object().unwrap() {
            d[k] = v.clone();
        }
        serde_json::to_vec(&d).unwrap()
    }

    #[test]
    fn the_document_lives_under_the_issuers_path() {
        assert_eq!(document_path(ISS).as_deref(), Some("/realms/hospital/.well-known/openid-configuration"));
        assert_eq!(document_path("https://idp.example.org").as_deref(), Some("/.well-known/openid-configuration"));
        assert_eq!(document_path("https://idp.example.org/").as_deref(), Some("/.well-known/openid-configuration"));
        assert_eq!(document_path("ftp://idp.example.org"), None);
        assert_eq!(document_path("https://idp.example.org?x=1"), None);
    }

    #[test]
    fn only_the_exact_issuers_document_on_its_own_host_is_used() {
        assert_eq!(jwks_path(&doc(json!({})), ISS).as_deref(), Ok("/realms/hospital/protocol/openid-connect/certs"));
        assert_eq!(jwks_path(&doc(json!({"jwks_uri": "https://IDP.example.org/k?v=2"})), ISS).as_deref(), Ok("/k?v=2"));
        let cases = [
            (json!({"issuer": "https://idp.example.org/realms/other"}), DiscoveryError::IssuerMismatch(ISS.into())),
            (json!({"issuer": format!("{ISS}/")}), DiscoveryError::IssuerMismatch(ISS.into())),
            (json!({"issuer": null}), DiscoveryError::IssuerMismatch(ISS.into())),
            (json!({"jwks_uri": "https://evil.example/certs"}), DiscoveryError::ForeignJwksUri),
            (json!({"jwks_uri": "http://idp.example.org/certs"}), DiscoveryError::ForeignJwksUri),
            (json!({"jwks_uri": "https://idp.example.org:8443/certs"}), DiscoveryError::ForeignJwksUri),
            (json!({"jwks_uri": "https://idp.example.org@evil.example/certs"}), DiscoveryError::NoJwksUri),
            (json!({"jwks_uri": "/relative"}), DiscoveryError::NoJwksUri),
            (json!({"jwks_uri": 5}), DiscoveryError::NoJwksUri),
            (json!({"jwks_uri": "https://idp.example.org"}), DiscoveryError::NoJwksUri),
        ];
        for (patch, want) in cases {
            assert_eq!(jwks_path(&doc(patch.clone()), ISS), Err(want), "{patch}");
        }
        assert_eq!(jwks_path(b"[]", ISS), Err(DiscoveryError::NotADocument));
        assert_eq!(jwks_path(&vec![b' '; MAX_DOCUMENT_BYTES + 1], ISS), Err(DiscoveryError::NotADocument));
    }
}
